"""Liveness and readiness. Readiness checks the database, the broker and live workers."""

from __future__ import annotations

import time

from flask import Blueprint, Response

from api.envelope import respond
from api.schemas import LiveData, ReadyData, documented
from shared.db import transaction
from shared.errors import E
from shared.queue import get_celery, get_redis

bp = Blueprint("health", __name__, url_prefix="/health")

_workers_cache: dict[str, float | int] = {"at": 0.0, "count": 0}


def _worker_count() -> int:
    now = time.monotonic()
    if now - float(_workers_cache["at"]) > 5:  # a ping costs up to a second: cache a success
        replies = get_celery().control.ping(timeout=1.0) or []
        if not replies:
            return 0
        _workers_cache.update(at=now, count=len(replies))
    return int(_workers_cache["count"])


@bp.get("/live")
@documented(data=LiveData)
def live() -> Response:
    return respond({"status": "alive"})


@bp.get("/ready")
@documented(data=ReadyData)
def ready() -> Response:
    checks: dict[str, str] = {}
    try:
        with transaction() as conn:
            conn.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - report, don't raise
        checks["database"] = f"down: {type(exc).__name__}"
    try:
        get_redis().ping()
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = f"down: {type(exc).__name__}"
    try:
        n = _worker_count() if checks["broker"] == "ok" else 0
        checks["workers"] = f"{n} live" if n else "none"
    except Exception as exc:  # noqa: BLE001
        checks["workers"] = f"down: {type(exc).__name__}"
    ok = checks["database"] == "ok" and checks["broker"] == "ok" and checks["workers"] != "none"
    ok = ok and not checks["workers"].startswith("down")
    return respond(
        {"ready": "true" if ok else "false", "checks": checks}, E.SUCCESS if ok else E.UNAVAILABLE
    )
