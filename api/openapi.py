"""OpenAPI 3 spec generated from the marshmallow schemas (apispec), at /openapi.json, and a
self-contained docs page at /docs (no CDN: bank networks often have no internet access)."""

from __future__ import annotations

import html
from functools import lru_cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, jsonify
from marshmallow import Schema, fields

from api.manage import (
    FaceDeleteSchema,
    PersonListSchema,
    PersonLookupSchema,
    PersonUpdateSchema,
)
from api.schemas import LibrarySchema, RecognizeSchema, RegisterSchema, VerifySchema
from api.tokens import TokenRequestSchema
from shared.errors import ERRCODES

bp = Blueprint("openapi", __name__)


class EnvelopeSchema(Schema):
    errcode = fields.Integer(required=True, metadata={"description": "0 success; see errcodes"})
    errmsg = fields.String(required=True, metadata={"description": '"SUCCESS" or the error'})
    data = fields.Dict(required=True)


class RegisterDataSchema(Schema):
    ok = fields.String(metadata={"enum": ["true", "false"]})


class RecognizeDataSchema(Schema):
    idNum = fields.String(metadata={"description": "when isMatch is true"})
    customerID = fields.String(metadata={"description": "when isMatch is true"})
    name = fields.String(metadata={"description": "when isMatch is true"})
    personType = fields.String(metadata={"enum": ["normal", "vip", "inner"]})
    isMatch = fields.String(metadata={"enum": ["true", "false"]})
    score = fields.String(metadata={"description": "0-100; 70 = FAR 1/1,000, 80 = 1/10,000"})
    galleryFaces = fields.Integer(metadata={"description": "faces searched"})
    falseMatchRate = fields.String(
        metadata={"description": "chance a stranger scores this high against the gallery"}
    )


class AsyncDataSchema(Schema):
    taskId = fields.String()
    status = fields.String(metadata={"enum": ["queued", "running", "done", "failed"]})


def _op(summary: str, body: type[Schema] | None, data: str, scopes: str) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "security": [{"token": []}],
        "description": f"Scope: {scopes}. Errcodes: see components.x-errcodes.",
        "responses": {
            "200": {
                "description": "The envelope; `data` as below (async: taskId and status).",
                "content": {
                    "application/json": {
                        "schema": {
                            "allOf": [
                                {"$ref": "#/components/schemas/Envelope"},
                                {"properties": {"data": {"$ref": f"#/components/schemas/{data}"}}},
                            ]
                        }
                    }
                },
            },
            "default": {
                "description": "An error envelope (errcode != 0)",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}}
                },
            },
        },
    }
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    return op


@lru_cache(maxsize=1)
def build_spec() -> dict[str, Any]:
    spec = APISpec(
        title="faceLib",
        version="1.0.0",
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Face library: enrol verified persons, recognise faces (1:N)."},
    )
    spec.components.security_scheme(
        "token", {"type": "apiKey", "in": "header", "name": "Authorization"}
    )
    for name, schema in (
        ("Envelope", EnvelopeSchema),
        ("RegisterRequest", RegisterSchema),
        ("RecognizeRequest", RecognizeSchema),
        ("RegisterData", RegisterDataSchema),
        ("RecognizeData", RecognizeDataSchema),
        ("AsyncData", AsyncDataSchema),
        ("TokenRequest", TokenRequestSchema),
    ):
        spec.components.schema(name, schema=schema)
    base = "/tech/ai/face/faceLib"
    spec.path(
        f"{base}/person/reg",
        operations={
            "post": _op(
                "Register a verified person's face", RegisterSchema, "RegisterData", "face:register"
            )
        },
    )
    spec.path(
        f"{base}/person/recong",
        operations={
            "post": _op(
                "Recognise a face (1:N)", RecognizeSchema, "RecognizeData", "face:recognize"
            )
        },
    )
    spec.path(
        f"{base}/person/verify",
        operations={
            "post": _op(
                "1:1: is this face the person with this idNum?",
                VerifySchema,
                "RecognizeData",
                "face:recognize",
            )
        },
    )
    for path, summary, body, scope in (
        (
            "person/get",
            "A person's record by idNum (never embeddings)",
            PersonLookupSchema,
            "person:read",
        ),
        (
            "person/update",
            "Update name, personType, customerID",
            PersonUpdateSchema,
            "person:write",
        ),
        (
            "person/delete",
            "Erase a person: record, faces, images, links",
            PersonLookupSchema,
            "person:write",
        ),
        (
            "person/list",
            "List persons with paging and filters (idNum masked)",
            PersonListSchema,
            "person:read",
        ),
        ("person/faces", "A person's faces (no embeddings)", PersonLookupSchema, "person:read"),
        ("person/face/delete", "Delete one face", FaceDeleteSchema, "person:write"),
        ("library/create", "Create a sub-library", LibrarySchema, "person:write"),
        (
            "library/delete",
            "Delete a sub-library and its memberships",
            LibrarySchema,
            "person:write",
        ),
    ):
        spec.path(f"{base}/{path}", operations={"post": _op(summary, body, "Envelope", scope)})
    spec.path(
        f"{base}/library/list",
        operations={
            "get": _op("List sub-libraries", None, "Envelope", "person:read or face:recognize")
        },
    )
    spec.path(
        "/tech/file/upload",
        operations={
            "post": _op(
                "Upload an image to the file server (multipart `file` or JSON `data` base64); "
                "returns the `path` to send with origin fds",
                None,
                "Envelope",
                "file:write",
            )
        },
    )
    spec.path(
        "/tech/file/{path}",
        parameters=[{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
        operations={
            "get": _op("Download an uploaded image (owner only)", None, "Envelope", "file:write"),
            "delete": _op("Delete an uploaded image (owner only)", None, "Envelope", "file:write"),
        },
    )
    spec.path(
        f"{base}/task/{{taskId}}",
        parameters=[
            {"name": "taskId", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        operations={"get": _op("Poll a job", None, "AsyncData", "face:register or face:recognize")},
    )
    spec.path(
        "/tech/ai/core/token",
        operations={
            "post": _op(
                "Issue a token from client key and secret", TokenRequestSchema, "AsyncData", "none"
            )
        },
    )
    out = spec.to_dict()
    out["components"]["x-errcodes"] = [
        {"errcode": e.code, "http": e.http_status, "errmsg": e.message} for e in ERRCODES.values()
    ]
    return out


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(build_spec())


@bp.get("/docs")
def docs() -> Response:
    spec = build_spec()
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
                f"<h2>{method.upper()} {html.escape(path)}</h2><p>{html.escape(op['summary'])}. {html.escape(op['description'])}</p>"
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
