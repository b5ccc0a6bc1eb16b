"""One audit row per API request (table audit_log): who, what, when, outcome; no raw PII.

Views put what they know in `g`: `g.client` (auth), `g.audit_person_ref` (p:<id> or
b:<blind index hex>), `g.audit_task_id`. The row is written after the response is built, in
its own transaction; a failure to write it is logged and does not change the response.
An async job submission is the exception: its row (errcode 0, the taskId, HTTP 202, or 200 for
an idempotent repeat) is written by `job_row` inside the job's accepting transaction, so the
job, its inputs and its audit row are one durable commit (and an accepted job always has its
row); the view sets `g.audit_written` once that commit succeeded and no second row is written.
Unauthenticated requests write one row per source IP and minute, not one each.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, Response, g, request

from shared import db
from shared.db import transaction
from shared.queue import get_redis

log = logging.getLogger("api.audit")

# Registrations' rows name the idNum's blind index until it is enrolled; rows of those that never
# enrolled lose it after this grace period (see sql/0006_security.sql).
BLIND_REF_GRACE = "1 day"
_next_purge = {"at": 0.0}


def _first_unauthenticated_of_minute() -> bool:
    """Requests without an authenticated client leave one audit row per source IP and minute
    (the flood itself is rate limited and counted in /metrics): a flood of bad tokens must not
    write a row per request."""
    key = f"facelib-audit-unauth:{request.remote_addr}:{int(time.time() // 60)}"
    try:
        return bool(get_redis().set(key, 1, nx=True, ex=120))
    except Exception:  # noqa: BLE001 - without Redis, keep every row rather than lose them
        return True


def _forget_unenrolled_hourly() -> None:
    """At most once an hour per process, and once an hour over all processes (Redis lock)."""
    now = time.monotonic()
    if now < _next_purge["at"]:
        return
    _next_purge["at"] = now + 3600
    try:
        if not get_redis().set("facelib-audit-forget", 1, nx=True, ex=3600):
            return
        with transaction() as conn:
            db.audit.forget_unenrolled(conn, BLIND_REF_GRACE)
    except Exception as exc:  # noqa: BLE001 - the next hour tries again
        log.error("audit blind-index purge failed: %s", type(exc).__name__)


def _row(errcode: int, http_status: int, task_id: str | None) -> dict[str, Any]:
    client = g.get("client")
    started = g.get("request_started", time.monotonic())
    return {
        "client_id": client["id"] if client else None,
        "method": request.method,
        "endpoint": request.url_rule.rule if request.url_rule else request.path[:200],
        "person_ref": g.get("audit_person_ref"),
        "errcode": errcode,
        "http_status": http_status,
        "task_id": task_id,
        "source_ip": request.remote_addr,
        "request_id": g.get("request_id"),
        "duration_ms": int((time.monotonic() - started) * 1000),
    }


def job_row(job: dict[str, Any], created: bool) -> dict[str, Any]:
    """The audit row of an async submission, written in the job's accepting transaction: the
    answer is already decided (errcode 0, 202 for a new job, 200 for an idempotent repeat).
    duration_ms is the time to acceptance."""
    return _row(0, 202 if created else 200, str(job["id"]))


def init_app(app: Flask) -> None:
    @app.after_request
    def _write(resp: Response) -> Response:
        if not request.path.startswith("/tech/"):
            return resp
        if g.get("client") is None and not _first_unauthenticated_of_minute():
            return resp
        _forget_unenrolled_hourly()
        if g.get("audit_written"):  # committed with the job it accepted (job_row)
            return resp
        errcode = int(resp.headers.get("X-Errcode", "9000"))
        task_id = resp.headers.get("X-Task-Id") or g.get("audit_task_id")
        row = _row(errcode, resp.status_code, task_id)
        try:
            with transaction() as conn:
                db.audit.write_row(conn, **row)
        except Exception as exc:  # noqa: BLE001 - auditing must not break the answer
            log.error("audit row not written: %s", type(exc).__name__)
        return resp
