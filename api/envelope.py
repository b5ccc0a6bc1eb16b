"""The one response envelope and the one place exceptions become errcodes."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import psycopg
import redis
from flask import Flask, Response, g, jsonify, request
from limits.errors import StorageError
from psycopg_pool import PoolTimeout
from werkzeug.exceptions import (
    HTTPException,
    InternalServerError,
    MethodNotAllowed,
    NotFound,
    RequestEntityTooLarge,
    TooManyRequests,
)

from shared.errors import E, ErrCode, FaceLibError, envelope
from shared.logs import request_id_var

log = logging.getLogger("api")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def respond(
    data: dict[str, Any] | None = None,
    err: ErrCode = E.SUCCESS,
    errmsg: str | None = None,
    status: int | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    resp = jsonify(envelope(data, err, errmsg))
    resp.status_code = status or err.http_status
    resp.headers["X-Errcode"] = str(err.code)  # for metrics and audit, without re-parsing
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def error_response(exc: FaceLibError) -> Response:
    headers = {}
    if exc.err is E.RATE_LIMITED and "retryAfter" in exc.data:
        headers["Retry-After"] = str(exc.data["retryAfter"])
    return respond(exc.data, exc.err, exc.errmsg, headers=headers)


def init_app(app: Flask) -> None:
    @app.before_request
    def _request_id() -> None:
        rid = request.headers.get("X-Request-Id", "")[:64]
        if not _REQUEST_ID.fullmatch(rid):  # it reaches logs and the audit row: keep it tame
            rid = uuid.uuid4().hex
        g.request_id = rid
        request_id_var.set(rid)

    @app.before_request
    def _request_strings() -> None:
        from api.schemas import check_request_strings

        check_request_strings()

    @app.after_request
    def _headers(resp: Response) -> Response:
        resp.headers["X-Request-Id"] = g.get("request_id", "")
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.errorhandler(FaceLibError)
    def _facelib_error(exc: FaceLibError) -> Response:
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        if isinstance(exc, NotFound):
            return respond(err=E.NOT_FOUND_ROUTE)
        if isinstance(exc, MethodNotAllowed):
            allow = ", ".join(sorted(exc.valid_methods or ()))
            return respond(err=E.METHOD_NOT_ALLOWED, headers={"Allow": allow})
        if isinstance(exc, RequestEntityTooLarge):
            return respond(err=E.BODY_TOO_LARGE)
        if isinstance(exc, TooManyRequests):
            return respond(err=E.RATE_LIMITED)
        if isinstance(exc, InternalServerError) or (exc.code or 400) >= 500:
            # An exception outside the view (an after-request hook: the rate limiter's headers
            # while Redis is down) reaches Flask wrapped in a 500: answer for what it wraps
            # (9001 for a backing service, else 9000), never as the client's fault.
            original = getattr(exc, "original_exception", None)
            return _unexpected(original if isinstance(original, Exception) else exc)
        return respond(err=E.PARAM_INVALID, errmsg=exc.description, status=exc.code or 400)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if isinstance(
            exc, psycopg.OperationalError | PoolTimeout | redis.RedisError | StorageError
        ):
            log.error("backing service unavailable: %s", type(exc).__name__)
            return respond(err=E.UNAVAILABLE)
        log.exception("unhandled %s on %s", type(exc).__name__, request.path)
        return respond(err=E.INTERNAL)
