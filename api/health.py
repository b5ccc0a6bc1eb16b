"""Liveness and readiness. Readiness checks the database, the broker and live workers.

Readiness answers within about 2 s whatever is down: the database check fails fast (shared.db),
the broker ping has a 0.5 s socket timeout, the worker ping 1 s (a success is cached 5 s).
"""

from __future__ import annotations

import time

import redis
from flask import Blueprint, Response

from api.envelope import respond
from api.schemas import LiveData, ReadyData, documented
from shared import db
from shared.db import transaction
from shared.errors import E
from shared.queue import get_celery
from shared.settings import get_settings

bp = Blueprint("health", __name__, url_prefix="/health")

_workers_cache: dict[str, float | int] = {"at": 0.0, "count": 0}
_ping_client: redis.Redis | None = None


def _broker_ping() -> None:
    global _ping_client
    if _ping_client is None:
        _ping_client = redis.Redis.from_url(
            get_settings().redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
        )
    _ping_client.ping()


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
            db.ops.ping(conn)
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - report, don't raise
        checks["database"] = f"down: {type(exc).__name__}"
    try:
        _broker_ping()
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
