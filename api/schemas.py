"""Request schemas (marshmallow). Unknown fields are ignored, as the contract asks; a missing
required field answers errcode 2001 and a wrong one 2002, both naming the field."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from flask import g, request
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from shared.errors import E, FaceLibError
from shared.idnum import is_valid_id_num, normalize_id_num

PERSON_TYPES = ("normal", "vip", "inner")
ORIGINS = ("self", "fds", "uri")
_MISSING = "Missing data for required field."
_DATA_URL = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,", re.IGNORECASE)
# requestId and the Idempotency-Key header: what fits the idempotency index and a log line
REQUEST_ID = validate.Regexp(
    r"^[\x21-\x7e]{1,128}$", error="1-128 visible ASCII characters (no spaces)"
)


def _tcp_port(url: str) -> None:
    """A URL's port, if it names one, is 1-65535 (urlsplit raises on 99999)."""
    try:
        port = urlsplit(url).port
    except ValueError:
        raise ValidationError("port must be 1-65535") from None
    if port == 0:
        raise ValidationError("port must be 1-65535")


class LenientBoolean(fields.Boolean):
    """A JSON boolean, or the strings "true"/"false" (the seed writes booleans as strings);
    nothing else (1, "yes", ...) - the OpenAPI document says exactly this."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if isinstance(value, bool):
            return value
        if value in ("true", "false"):
            return value == "true"
        raise self.make_error("invalid")


class JsonNumber(fields.Float):
    """A JSON number only (not a numeric string, not a boolean)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class PersonTypeFilter(fields.Raw):
    """recong's personType filter: one type, or a non-empty list of them."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values or any(v not in PERSON_TYPES for v in values):
            raise ValidationError("normal, vip, inner or a list of them")
        return value


# the 18-character resident ID's shape (the check digit and birth date are checked in code: 2003)
ID_NUM = {"pattern": r"^\s*[0-9]{17}[0-9Xx]\s*$", "description": "18-character resident ID"}


class FaceImageSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    type = fields.String(load_default="image", validate=validate.OneOf(["image"]))
    origin = fields.String(load_default="self", validate=validate.OneOf(ORIGINS))
    data = fields.String(required=True, validate=validate.Length(min=1))


class _JobRequestSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    async_ = LenientBoolean(data_key="async", load_default=False)
    faceImage = fields.Nested(FaceImageSchema, required=True)
    requestId = fields.String(load_default=None, validate=REQUEST_ID)
    qualityControl = fields.String(
        load_default=None,
        validate=validate.OneOf(["NONE", "LOW", "NORMAL", "HIGH"]),
        metadata={
            "description": "quality gates: NONE, LOW (frame, size), NORMAL (+ pose, blur), HIGH"
            " (stricter); default NORMAL for reg, LOW for recong and verify (docs/engine.md)"
        },
    )
    callbackUrl = fields.Url(
        load_default=None,
        schemes={"http", "https"},
        require_tld=False,
        validate=[
            validate.Length(max=2048),
            _tcp_port,
        ],
    )


LIB_ID = validate.Regexp(r"^[A-Za-z0-9_-]{1,64}$", error="letters, digits, - and _ (1-64)")
_LIB_IDS = fields.List(
    fields.String(validate=LIB_ID), load_default=None, validate=validate.Length(min=1, max=50)
)
_THRESHOLD = JsonNumber(
    load_default=None,
    validate=validate.Range(min=0, max=100),
    metadata={"description": "may only raise the client's floor (FACELIB_MATCH_THRESHOLD)"},
)


class RegisterSchema(_JobRequestSchema):
    idNum = fields.String(required=True, metadata=ID_NUM)
    name = fields.String(
        required=True,
        validate=[validate.Length(min=1, max=100), validate.Predicate("strip", error="blank")],
    )
    personType = fields.String(required=True, validate=validate.OneOf(PERSON_TYPES))
    customerID = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))
    libIds = _LIB_IDS


class RecognizeSchema(_JobRequestSchema):
    threshold = _THRESHOLD
    libIds = _LIB_IDS
    personType = PersonTypeFilter(load_default=None)  # "vip" or ["vip", "inner"]
    matchMode = fields.String(load_default=None, validate=validate.OneOf(["gallery", "seed"]))
    galleryTarget = JsonNumber(load_default=None, validate=validate.Range(min=1e-9, max=0.5))


class VerifySchema(_JobRequestSchema):
    idNum = fields.String(required=True, metadata=ID_NUM)
    threshold = _THRESHOLD


class LibrarySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    libId = fields.String(required=True, validate=LIB_ID)
    name = fields.String(load_default="", validate=validate.Length(max=200))


def person_types(value: Any) -> list[str] | None:
    """The recong personType filter: one type or a list of them."""
    if value is None:
        return None
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or any(v not in PERSON_TYPES for v in values):
        raise FaceLibError(
            E.PARAM_INVALID,
            detail="personType: normal, vip, inner or a list of them",
            data={"field": "personType"},
        )
    return list(dict.fromkeys(values))


def _first_error(messages: Any, prefix: str = "") -> tuple[str, str]:
    if isinstance(messages, dict):
        for key, value in messages.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                return _first_error(value, path)
            text = value[0] if isinstance(value, list) and value else str(value)
            if isinstance(text, dict):
                return _first_error(text, path)
            return path, str(text)
    return prefix or "body", str(messages)


# --- the one input-validation layer -----------------------------------------------------------
# Every endpoint reads its body through `json_body()` and its parameters through `load()`, and
# `check_request_strings` runs before every view: so a NUL byte, a lone surrogate (neither can
# reach Postgres) or a pathologically nested document gets its 4xx here, whichever field or
# endpoint it is sent to.

MAX_JSON_DEPTH = 32  # our documents nest 3 deep; 32 leaves room and bounds the parser's recursion
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # unrolled: C-speed runs
_DEPTH = np.zeros(256, dtype=np.int8)
_DEPTH[[ord("["), ord("{")]] = 1
_DEPTH[[ord("]"), ord("}")]] = -1


def json_depth(raw: bytes) -> int:
    """How deep the arrays/objects of a JSON text nest (strings skipped), without parsing it."""
    steps = _DEPTH[np.frombuffer(_STRINGS.sub(b"", raw), dtype=np.uint8)]
    return int(np.cumsum(steps, dtype=np.int64).max()) if steps.size else 0


def string_problem(value: str) -> str | None:
    """Why a client string cannot be stored (PostgreSQL text holds neither), or None."""
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (lone surrogate)"
    return None


def _check_strings(value: Any, path: str) -> None:
    if isinstance(value, str):
        problem = string_problem(value)
        if problem:
            raise FaceLibError(
                E.PARAM_INVALID, detail=f"{path or 'body'} {problem}", data={"field": path}
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, path or "body")
            _check_strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_strings(item, f"{path}[{i}]")


def check_request_strings() -> None:
    """Before every view: query parameters, path parameters and the headers we read."""
    for name, value in request.args.items(multi=True):
        _check_strings(name, "query")
        _check_strings(value, name)
    for name, value in (request.view_args or {}).items():
        if isinstance(value, str):
            _check_strings(value, name)


def json_body() -> Any:
    """The request's JSON, whatever its Content-Type says (legacy clients often send none or
    text/plain); None when the body is not JSON. Nesting deeper than MAX_JSON_DEPTH answers
    2004 before parsing; a string that cannot be stored answers 2002 naming its field."""
    if "json_body" in g:
        return g.json_body
    raw = request.get_data(cache=True)
    body = None
    if raw.strip():
        # no deeper than its opening brackets, strings included: a body with a few of them
        # (a base64 image has none) is not scanned (json_depth costs ~1 ms on 137 KB)
        openers = raw.count(b"[") + raw.count(b"{")
        if openers > MAX_JSON_DEPTH and json_depth(raw) > MAX_JSON_DEPTH:
            raise FaceLibError(
                E.BODY_NOT_JSON, detail=f"nested deeper than {MAX_JSON_DEPTH} levels"
            )
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            body = None
    _check_strings(body, "")
    g.json_body = body
    return body


def idempotency_key() -> str | None:
    """The Idempotency-Key header, held to the same rule as the body's requestId."""
    value = request.headers.get("Idempotency-Key")
    if value is None or value == "":
        return None
    try:
        REQUEST_ID(value)
    except ValidationError as exc:
        raise FaceLibError(
            E.PARAM_INVALID,
            detail=f"Idempotency-Key: {exc.messages[0]}",
            data={"field": "Idempotency-Key"},
        ) from None
    return value


def load(schema: Schema, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise FaceLibError(E.BODY_NOT_JSON)
    try:
        return schema.load(body)
    except ValidationError as exc:
        field, message = _first_error(exc.messages)
        field = "async" if field == "async_" else field
        if message == _MISSING:
            raise FaceLibError(E.PARAM_MISSING, detail=field, data={"field": field}) from None
        raise FaceLibError(
            E.PARAM_INVALID, detail=f"{field}: {message}", data={"field": field}
        ) from None


def validated_id_num(value: str) -> str:
    id_num = normalize_id_num(value)
    if not is_valid_id_num(id_num):
        raise FaceLibError(E.IDNUM_INVALID, data={"field": "idNum"})
    return id_num


def load_with_id_num(schema: Schema, body: Any) -> tuple[dict[str, Any], str]:
    """A request's parameters (`load`) and its checked, normalised idNum (2003 if invalid)."""
    params = load(schema, body)
    return params, validated_id_num(params["idNum"])


def base64_text(data: str) -> str:
    """Base64 image text as clients send it, without an optional `data:image/...;base64,`
    prefix and without line breaks (MIME-style base64)."""
    return "".join(_DATA_URL.sub("", data.strip(), count=1).split())


def decode_base64(text: str, field: str, *, urlsafe: bool = False) -> bytes:
    """The bytes of base64 text (`base64_text`); 3002 naming `field` if it is not base64.
    `urlsafe`: the URL-safe alphabet, padding optional, is accepted too."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        if urlsafe and re.fullmatch(r"[A-Za-z0-9_-]+=*", text):
            try:
                return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            except (binascii.Error, ValueError):
                pass
        raise FaceLibError(E.IMAGE_BASE64_INVALID, data={"field": field}) from None


def decode_self_image(data: str, max_base64_bytes: int) -> bytes:
    """Check and decode base64 image data. The 400 KB limit counts the base64 text (as the seed
    says: "base64内容需在400k以内"), after an optional `data:image/...;base64,` prefix."""
    text = base64_text(data)
    if len(text) > max_base64_bytes:
        raise FaceLibError(
            E.IMAGE_TOO_LARGE,
            detail=f"{len(text)} bytes of base64, limit {max_base64_bytes}",
            data={"field": "faceImage.data"},
        )
    raw = decode_base64(text, "faceImage.data", urlsafe=True)
    if len(raw) < 16:
        raise FaceLibError(E.IMAGE_UNDECODABLE, detail="image data too short")
    return raw


# --- response data (the `data` of the envelope), for the OpenAPI document ----------------------
# Fields present only sometimes are not `required`; the document types each one that appears.

_BOOL_STR = {"enum": ["true", "false"]}


class AsyncData(Schema):
    taskId = fields.String(required=True, metadata={"format": "uuid"})
    status = fields.String(required=True, validate=validate.OneOf(["queued", "running"]))


class RegisterData(Schema):
    ok = fields.String(required=True, metadata=_BOOL_STR)
    duplicateWarning = fields.String(metadata=_BOOL_STR)


_MODEL = fields.String(
    metadata={"description": "the model that decided: dlib or mobilefacenet (docs/models.md)"}
)


class RecognizeData(Schema):
    isMatch = fields.String(required=True, metadata=_BOOL_STR)
    model = _MODEL
    score = fields.String(metadata={"description": "0-100; 70 = FAR 1/1,000, 80 = 1/10,000"})
    galleryFaces = fields.Integer(metadata={"description": "faces searched"})
    falseMatchRate = fields.String(
        metadata={"description": "chance a stranger scores this high against the gallery"}
    )
    idNum = fields.String(metadata={"description": "only when isMatch is true"})
    customerID = fields.String(allow_none=True, metadata={"description": "when isMatch is true"})
    name = fields.String(metadata={"description": "only when isMatch is true"})
    personType = fields.String(validate=validate.OneOf(PERSON_TYPES))


class VerifyData(Schema):
    isMatch = fields.String(required=True, metadata=_BOOL_STR)
    model = _MODEL
    score = fields.String(
        metadata={"description": "absent on a no-match for clients without person:read"}
    )


class PersonData(Schema):
    personId = fields.Integer(required=True)
    idNumMasked = fields.String(required=True)
    name = fields.String(required=True)
    personType = fields.String(required=True, validate=validate.OneOf(PERSON_TYPES))
    customerID = fields.String(required=True, allow_none=True)
    faces = fields.Integer(required=True)
    createdAt = fields.String(required=True, metadata={"format": "date-time"})
    updatedAt = fields.String(required=True, metadata={"format": "date-time"})


class PersonGetData(PersonData):
    idNum = fields.String(required=True)


class PersonDeleteData(Schema):
    deleted = fields.String(required=True, metadata=_BOOL_STR)
    faces = fields.Integer(required=True)
    images = fields.Integer(required=True)


class PersonListData(Schema):
    total = fields.Integer(required=True)
    page = fields.Integer(required=True)
    pageSize = fields.Integer(required=True)
    persons = fields.List(fields.Nested(PersonData), required=True)


class FaceData(Schema):
    faceId = fields.Integer(required=True)
    box = fields.List(fields.Integer(), required=True)
    quality = fields.Float(required=True, allow_none=True)
    model = fields.String(required=True)
    backend = fields.String(required=True)
    imageSha256 = fields.String(required=True, allow_none=True)
    createdAt = fields.String(required=True, metadata={"format": "date-time"})


class FacesData(Schema):
    personId = fields.Integer(required=True)
    faces = fields.List(fields.Nested(FaceData), required=True)


class FaceDeleteData(Schema):
    faceId = fields.Integer(required=True)
    personId = fields.Integer(required=True)
    deleted = fields.String(required=True, metadata=_BOOL_STR)
    facesLeft = fields.Integer(required=True)


class LibraryData(Schema):
    libId = fields.String(required=True)
    name = fields.String(required=True)


class LibraryItem(LibraryData):
    persons = fields.Integer(required=True)


class LibraryListData(Schema):
    items = fields.List(fields.Nested(LibraryItem), required=True)


class LibraryDeleteData(Schema):
    libId = fields.String(required=True)
    deleted = fields.String(required=True, metadata=_BOOL_STR)


class UploadData(Schema):
    path = fields.String(required=True)
    sha256 = fields.String(required=True)
    size = fields.Integer(required=True)
    originalSize = fields.Integer(required=True)
    width = fields.Integer(required=True)
    height = fields.Integer(required=True)
    contentType = fields.String(required=True)
    created = fields.String(required=True, metadata=_BOOL_STR)


class FileDeleteData(Schema):
    path = fields.String(required=True)
    deleted = fields.String(required=True, metadata=_BOOL_STR)


class TokenData(Schema):
    token = fields.String(required=True)
    tokenType = fields.String(required=True)
    expiresAt = fields.String(required=True, metadata={"format": "date-time"})
    expiresIn = fields.Integer(required=True)
    scopes = fields.List(fields.String(), required=True)


class DeliveryData(Schema):
    deliveryId = fields.Integer(required=True)
    taskId = fields.String(required=True)
    status = fields.String(
        required=True, validate=validate.OneOf(["pending", "delivering", "delivered", "dead"])
    )
    attempts = fields.Integer(required=True)
    lastHttpStatus = fields.Integer(required=True, allow_none=True)
    lastError = fields.String(required=True, allow_none=True)
    createdAt = fields.String(required=True, metadata={"format": "date-time"})


class ResultEnvelope(Schema):
    errcode = fields.Integer(required=True)
    errmsg = fields.String(required=True)
    data = fields.Dict(required=True)


class TaskData(Schema):
    taskId = fields.String(required=True)
    kind = fields.String(
        required=True, validate=validate.OneOf(["register", "recognize", "verify"])
    )
    status = fields.String(
        required=True, validate=validate.OneOf(["queued", "running", "done", "failed"])
    )
    requestId = fields.String(required=True, allow_none=True)
    attempts = fields.Integer(required=True)
    createdAt = fields.String(required=True, metadata={"format": "date-time"})
    finishedAt = fields.String(required=True, allow_none=True, metadata={"format": "date-time"})
    result = fields.Nested(ResultEnvelope)
    callback = fields.Nested(DeliveryData)


class DeliveriesData(Schema):
    items = fields.List(fields.Nested(DeliveryData), required=True)


class ReplayData(Schema):
    deliveryId = fields.Integer(required=True)
    status = fields.String(required=True)


class LiveData(Schema):
    status = fields.String(required=True)


class ReadyData(Schema):
    ready = fields.String(required=True, metadata=_BOOL_STR)
    checks = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


def documented(
    *,
    body: type[Schema] | None = None,
    data: type[Schema] | None = None,
    query: type[Schema] | None = None,
    job: bool = False,
    produces: str = "application/json",
    envelope: bool = True,
) -> Any:
    """What the OpenAPI document says of a view (api/openapi.py builds it from the registered
    routes, so a route without this fails the build): its request body schema, the schema of
    `data` in its success envelope, its query parameters, whether it is a job (async answers
    202 with taskId), or the media type it answers with when it is not the envelope."""

    def decorator(view: Any) -> Any:
        view.openapi = {
            "body": body,
            "data": data,
            "query": query,
            "job": job,
            "produces": produces,
            "envelope": envelope,
        }
        return view

    return decorator


class CallbackQuery(Schema):
    status = fields.String(validate=validate.OneOf(["pending", "delivering", "delivered", "dead"]))
    limit = fields.Integer(validate=validate.Range(min=1, max=500))


class UploadRequest(Schema):
    """JSON form of an upload (multipart/form-data with a `file` field works too)."""

    class Meta:
        unknown = EXCLUDE

    data = fields.String(
        required=True, validate=validate.Length(min=1), metadata={"description": "base64 image"}
    )
