"""Token check and scopes for every /tech/... route.

The token comes in `Authorization: <token>` (as the seed says) or `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import g, request

from api.extensions import checked_limit, client_key, limiter, spend
from shared import db
from shared.db import transaction
from shared.errors import E, FaceLibError
from shared.settings import get_settings

F = TypeVar("F", bound=Callable[..., Any])


def bearer_token() -> str:
    raw = request.headers.get("Authorization", "").strip()
    if raw[:7].lower() == "bearer ":
        raw = raw[7:].strip()
    if not raw:
        raise FaceLibError(E.TOKEN_MISSING)
    return raw


def _client_rate_limit() -> str:
    client = g.get("client")
    return checked_limit(client and client.get("rate_limit"), get_settings().rate_limit)


def authenticated_client(token: str) -> dict:
    """The client of a token. Failed authentications are limited per source IP
    (FACELIB_UNAUTH_RATE_LIMIT): past the limit they answer 7001, and valid tokens from the same
    address (branches share NAT) are never held back by them."""
    try:
        with transaction() as conn:
            return db.clients.authenticate(conn, token)
    except FaceLibError:
        spend(get_settings().unauth_rate_limit, f"unauth-ip:{request.remote_addr}")
        raise


def require_scope(*scopes: str) -> Callable[[F], F]:
    """The view needs a valid token whose client holds one of `scopes` (or `admin`)."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                token = bearer_token()
            except FaceLibError:
                spend(get_settings().unauth_rate_limit, f"unauth-ip:{request.remote_addr}")
                raise
            client = authenticated_client(token)
            granted = set(client["scopes"])
            if "admin" not in granted and not granted.intersection(scopes):
                raise FaceLibError(E.SCOPE_FORBIDDEN, detail=" or ".join(scopes))
            g.client = client
            return limited(*args, **kwargs)

        # checked after authentication (inside the wrapper), so the limit is the client's own
        limited = limiter.limit(_client_rate_limit, key_func=client_key)(view)
        wrapper.required_scopes = scopes  # type: ignore[attr-defined] - read by api/openapi.py
        return wrapper  # type: ignore[return-value]

    return decorator
