"""Unbound extension instances, bound to the app in `create_app` (cookiecutter-flask style),
and the rate-limit budgets that are not a view decorator (failed authentication per IP, token
requests per client key).

Rate limiting fails closed: a limit string that does not parse is refused when a client is
created and read as the service default if found in the database; a Redis error while
counting answers 9001 (retry later), never "no limit".
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache

from flask import g, request
from flask_limiter import Limiter
from limits import RateLimitItem, parse_many

from shared.errors import E, FaceLibError
from shared.settings import rate_limit_valid

log = logging.getLogger("api.limits")


def client_key() -> str:
    """Rate limits are per client (branches share NAT, so never per IP once authenticated)."""
    client = g.get("client")
    return f"client:{client['id']}" if client else f"ip:{request.remote_addr}"


limiter = Limiter(key_func=client_key, headers_enabled=True, strategy="fixed-window")


def checked_limit(value: str | None, default: str) -> str:
    """A client's stored limit, or the default when it is unset or does not parse."""
    if value is None or value == "":
        return default
    if not rate_limit_valid(value):
        log.warning("a client's rate_limit does not parse; the service default applies")
        return default
    return value


@lru_cache(maxsize=64)
def _items(limit: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(limit))


def spend(limit: str, key: str) -> None:
    """Count one request against `limit` for `key`; 7001 with Retry-After once it is spent."""
    for item in _items(limit):
        if not limiter.limiter.hit(item, "facelib-rl", key):
            reset = limiter.limiter.get_window_stats(item, "facelib-rl", key).reset_time
            retry = max(1, int(reset - time.time()) + 1)
            raise FaceLibError(E.RATE_LIMITED, data={"retryAfter": retry})


def exhausted(limit: str, key: str) -> int | None:
    """Seconds until `key` may spend again under `limit`, or None when it has budget left."""
    for item in _items(limit):
        if not limiter.limiter.test(item, "facelib-rl", key):
            reset = limiter.limiter.get_window_stats(item, "facelib-rl", key).reset_time
            return max(1, int(reset - time.time()) + 1)
    return None
