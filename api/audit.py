"""One audit row per API request (table audit_log): who, what, when, outcome; no raw PII.

Views put what they know in `g`: `g.client` (auth), `g.audit_person_ref` (p:<id> or
b:<blind index hex>), `g.audit_task_id`. The row is written after the response is built, in
its own transaction; a failure to write it is logged and does not change the response.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request

from shared.db import transaction

log = logging.getLogger("api.audit")


def init_app(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        g.audit_started = time.monotonic()

    @app.after_request
    def _write(resp: Response) -> Response:
        if not request.path.startswith("/tech/"):
            return resp
        errcode = int(resp.headers.get("X-Errcode", "9000"))
        client = g.get("client")
        rule = request.url_rule.rule if request.url_rule else request.path[:200]
        try:
            with transaction() as conn:
                conn.execute(
                    "INSERT INTO audit_log (client_id, method, endpoint, person_ref, errcode,"
                    " http_status, task_id, source_ip, request_id, duration_ms)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        client["id"] if client else None,
                        request.method,
                        rule,
                        g.get("audit_person_ref"),
                        errcode,
                        resp.status_code,
                        resp.headers.get("X-Task-Id") or g.get("audit_task_id"),
                        request.remote_addr,
                        g.get("request_id"),
                        int((time.monotonic() - g.get("audit_started", time.monotonic())) * 1000),
                    ),
                )
        except Exception as exc:  # noqa: BLE001 - auditing must not break the answer
            log.error("audit row not written: %s", type(exc).__name__)
        return resp
