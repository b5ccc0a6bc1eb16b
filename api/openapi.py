"""The OpenAPI 3 document at /openapi.json, and a self-contained docs page at /docs (no CDN:
bank networks often have no internet access).

The document is built from the application itself, so it cannot drift: every registered route
and method is a path operation; its request body, query parameters and the type of `data` in
its success envelope come from the marshmallow schemas its view declares with
`api.schemas.documented`, its scopes from `api.auth.require_scope`, its summary from the view's
docstring. A route whose view declares nothing stops the build (and the tests).
"""

from __future__ import annotations

import html
import re
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, Response, current_app, jsonify
from marshmallow import Schema

from api.schemas import (
    PERSON_TYPES,
    AsyncData,
    JsonNumber,
    LenientBoolean,
    PersonTypeFilter,
    documented,
)
from shared.errors import ERRCODES

bp = Blueprint("openapi", __name__)

_METHODS = ("get", "post", "put", "patch", "delete")
_CONVERTER = re.compile(r"<(?:(?P<conv>[a-z_]+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
_PARAM_TYPES = {"int": {"type": "integer", "minimum": 0}, "path": {"type": "string"}}


def _field_rules(self: Any, field: Any, ret: dict[str, Any], **_: Any) -> dict[str, Any]:
    """What apispec cannot read from our own field classes."""
    if isinstance(field, LenientBoolean):
        ret.pop("type", None)
        return {"anyOf": [{"type": "boolean"}, {"type": "string", "enum": ["true", "false"]}]}
    if isinstance(field, JsonNumber):
        return {"type": "number"}
    if isinstance(field, PersonTypeFilter):
        one = {"type": "string", "enum": list(PERSON_TYPES)}
        out: dict[str, Any] = {
            "anyOf": [one, {"type": "array", "items": one, "minItems": 1}],
        }
        if field.allow_none:
            out["nullable"] = True
        return out
    return {}


def _envelope(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["errcode", "errmsg", "data"],
        "properties": {
            "errcode": {"type": "integer"},
            "errmsg": {"type": "string"},
            "data": data,
        },
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(spec: APISpec, schema: type[Schema]) -> dict[str, Any]:
    name = re.sub(r"Schema$", "Request", schema.__name__)  # RegisterSchema -> RegisterRequest
    if name not in spec.components.schemas:
        spec.components.schema(name, schema=schema)
    return {"$ref": f"#/components/schemas/{name}"}


def _operation(
    spec: APISpec, endpoint: str, view: Any, path_params: list[dict[str, Any]]
) -> dict[str, Any]:
    meta = getattr(view, "openapi", None)
    if meta is None:
        raise RuntimeError(f"view {view.__module__}.{view.__name__} is not @documented")
    scopes = getattr(view, "required_scopes", None)
    doc = (view.__doc__ or view.__name__).strip().split("\n\n")[0]
    op: dict[str, Any] = {
        "summary": " ".join(doc.split()),
        "operationId": endpoint,  # blueprint.view: stable whatever module the view lives in
        "parameters": list(path_params),
    }
    if scopes:
        op["security"] = [{"token": []}]
        op["description"] = f"Scope: {' or '.join(scopes)} (or admin)."
    error = _json(_envelope({"type": "object"}), "An error envelope (errcode != 0)")
    if meta["envelope"] and meta["produces"] == "application/json":
        data = _ref(spec, meta["data"]) if meta["data"] else {"type": "object"}
        ok = _envelope(data)
        if meta["job"]:
            op["responses"] = {
                "200": _json(
                    _envelope({"anyOf": [data, _ref(spec, AsyncData)]}),
                    "The result (sync), or the job of a repeated async request",
                ),
                "201": _json(ok, "Created"),
                "202": _json(
                    _envelope({"type": "object", "required": ["taskId"]}),
                    "async: the job was queued; or 6002: not finished in time, poll taskId",
                ),
                "default": error,
            }
        else:
            op["responses"] = {"200": _json(ok, "Success"), "201": _json(ok, "Created")}
            op["responses"]["default"] = error
    else:
        op["responses"] = {
            "200": {
                "description": "Success",
                "content": {
                    meta["produces"]: {
                        "schema": {"type": "object"}
                        if meta["produces"] == "application/json"
                        else {"type": "string"}
                    }
                },
            },
            "default": error,
        }
    if meta["body"] is not None:
        body_ref = _ref(spec, meta["body"])
        content = {"application/json": {"schema": body_ref}}
        if meta["body"].__name__ == "UploadRequest":
            content["multipart/form-data"] = {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        op["requestBody"] = {"required": True, "content": content}
    if meta["query"] is not None:
        op["parameters"] += [{"in": "query", "schema": meta["query"]}]
    if not op["parameters"]:
        del op["parameters"]
    return op


def build_spec(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of `app`'s registered routes."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="faceLib",
        version="1.0.0",
        openapi_version="3.0.3",
        plugins=[plugin],
        info={"description": "Face library: enrol verified persons, recognise faces (1:N)."},
    )
    plugin.converter.add_attribute_function(_field_rules)
    spec.components.security_scheme(
        "token", {"type": "apiKey", "in": "header", "name": "Authorization"}
    )
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        params = [
            {
                "name": m["name"],
                "in": "path",
                "required": True,
                "schema": _PARAM_TYPES.get(m["conv"] or "", {"type": "string"}),
            }
            for m in _CONVERTER.finditer(rule.rule)
        ]
        path = _CONVERTER.sub(lambda m: "{" + m["name"] + "}", rule.rule)
        for method in sorted(rule.methods or ()):
            if method.lower() in _METHODS:
                paths.setdefault(path, {})[method.lower()] = _operation(
                    spec, rule.endpoint, view, params
                )
    for path, operations in paths.items():
        spec.path(path, operations=operations)
    out = spec.to_dict()
    out["components"]["x-errcodes"] = [
        {"errcode": e.code, "http": e.http_status, "errmsg": e.message} for e in ERRCODES.values()
    ]
    return out


def _spec() -> dict[str, Any]:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if "facelib.openapi" not in app.extensions:
        app.extensions["facelib.openapi"] = build_spec(app)
    return app.extensions["facelib.openapi"]


@bp.get("/openapi.json")
@documented(envelope=False)
def openapi_json() -> Response:
    """This document."""
    return jsonify(_spec())


@bp.get("/docs")
@documented(produces="text/html")
def docs() -> Response:
    """A readable page of this document."""
    spec = _spec()
    parts = [
        "<!doctype html><meta charset=utf-8><title>faceLib API</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}td,th{border:1px solid #ccc;"
        "padding:2px 6px}table{border-collapse:collapse}</style>",
        f"<h1>{html.escape(spec['info']['title'])} API</h1>",
        f"<p>{html.escape(spec['info']['description'])} Spec: <a href=/openapi.json>/openapi.json</a></p>",
    ]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if method == "parameters":
                continue
            parts.append(
                f"<h2>{method.upper()} {html.escape(path)}</h2><p>{html.escape(op['summary'])} "
                f"{html.escape(op.get('description', ''))}</p>"
            )
    for name, schema in spec["components"]["schemas"].items():
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v.get('type', '')))}</td>"
            f"<td>{'yes' if k in schema.get('required', []) else ''}</td>"
            f"<td>{html.escape(str(v.get('description', v.get('enum', ''))))}</td></tr>"
            for k, v in schema.get("properties", {}).items()
        )
        parts.append(
            f"<h3>{name}</h3><table><tr><th>field<th>type<th>required<th>notes</tr>{rows}</table>"
        )
    rows = "".join(
        f"<tr><td>{e['errcode']}</td><td>{e['http']}</td><td>{html.escape(e['errmsg'])}</td></tr>"
        for e in spec["components"]["x-errcodes"]
    )
    parts.append(f"<h2>Errcodes</h2><table><tr><th>errcode<th>HTTP<th>errmsg</tr>{rows}</table>")
    return Response("".join(parts), mimetype="text/html")
