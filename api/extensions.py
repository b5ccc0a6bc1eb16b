"""Unbound extension instances, bound to the app in `create_app` (cookiecutter-flask style)."""

from __future__ import annotations

from flask import g, request
from flask_limiter import Limiter


def client_key() -> str:
    """Rate limits are per client (branches share NAT, so never per IP once authenticated)."""
    client = g.get("client")
    return f"client:{client['id']}" if client else f"ip:{request.remote_addr}"


limiter = Limiter(key_func=client_key, headers_enabled=True, strategy="fixed-window")
