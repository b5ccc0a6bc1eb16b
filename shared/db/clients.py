"""API clients and their bearer tokens. Tables: api_clients, api_tokens.

Secrets are stored as SHA-256 hashes only; a client's secret and a token are shown once, when
made.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from shared import crypto
from shared.errors import E, FaceLibError
from shared.settings import rate_limit_valid

ALL_SCOPES = (
    "face:register",
    "face:recognize",
    "person:read",
    "person:write",
    "file:write",
    "metrics:read",
    "admin",
)


def create_client(
    conn: psycopg.Connection,
    name: str,
    scopes: list[str] | None = None,
    callback_url: str | None = None,
    rate_limit: str | None = None,
    match_floor: float | None = None,
) -> dict[str, Any]:
    scopes = list(scopes or ["face:register", "face:recognize"])
    unknown = set(scopes) - set(ALL_SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes: {sorted(unknown)}")
    if rate_limit is not None and not rate_limit_valid(rate_limit):
        raise ValueError(f"rate limit {rate_limit!r} does not parse (e.g. 20/second;500/minute)")
    if match_floor is not None and not 0 <= match_floor <= 100:
        raise ValueError("match floor must be a score from 0 to 100")
    client_key = "flk_" + crypto.new_secret(12)
    client_secret = crypto.new_secret(32)
    row = conn.execute(
        "INSERT INTO api_clients (name, scopes, callback_url, callback_secret, client_key,"
        " secret_hash, rate_limit, match_floor) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " RETURNING *",
        (
            name,
            scopes,
            callback_url,
            crypto.new_webhook_secret(),
            client_key,
            crypto.sha256(client_secret),
            rate_limit,
            match_floor,
        ),
    ).fetchone()
    assert row is not None
    return {**row, "client_secret": client_secret}  # the secret is shown once, never stored


def client_by_credentials(
    conn: psycopg.Connection, client_key: str, client_secret: str
) -> dict[str, Any]:
    """The active client with this key and secret, or FaceLibError(1005)."""
    row = conn.execute(
        "SELECT * FROM api_clients WHERE client_key = %s AND status = 'active'", (client_key,)
    ).fetchone()
    presented = crypto.sha256(client_secret)
    stored = bytes(row["secret_hash"]) if row and row["secret_hash"] else b"\0" * 32
    if not hmac.compare_digest(presented, stored) or row is None:
        raise FaceLibError(E.CLIENT_CREDENTIALS_INVALID)
    return row


def rotate_callback_secret(conn: psycopg.Connection, client_id: int) -> str:
    """New signing secret; the one it replaces keeps signing too until the overlap ends
    (`drop_previous_callback_secret`) or the next rotation replaces it."""
    secret = crypto.new_webhook_secret()
    conn.execute(
        "UPDATE api_clients SET callback_secret_previous = callback_secret,"
        " callback_secret = %s, updated_at = now() WHERE id = %s",
        (secret, client_id),
    )
    return secret


def drop_previous_callback_secret(conn: psycopg.Connection, client_id: int) -> None:
    """End a rotation's overlap: callbacks are signed with the current secret only."""
    conn.execute(
        "UPDATE api_clients SET callback_secret_previous = NULL, updated_at = now() WHERE id = %s",
        (client_id,),
    )


def get_client_by_name(conn: psycopg.Connection, name: str) -> dict[str, Any] | None:
    return conn.execute("SELECT * FROM api_clients WHERE name = %s", (name,)).fetchone()


def issue_token(conn: psycopg.Connection, client_id: int, ttl_seconds: int) -> dict[str, Any]:
    token = crypto.new_token()
    expires = datetime.now(UTC) + timedelta(seconds=ttl_seconds)
    conn.execute(
        "INSERT INTO api_tokens (client_id, token_hash, token_prefix, expires_at)"
        " VALUES (%s, %s, %s, %s)",
        (client_id, crypto.sha256(token), token[:8], expires),
    )
    return {"token": token, "expires_at": expires}


def revoke_token(conn: psycopg.Connection, token: str) -> bool:
    cur = conn.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE token_hash = %s AND revoked_at IS NULL",
        (crypto.sha256(token),),
    )
    return cur.rowcount == 1


def authenticate(conn: psycopg.Connection, token: str) -> dict[str, Any]:
    """The client behind a token, or FaceLibError (missing/invalid/expired).

    Lookup is by SHA-256 of the token (an index hit on a hash, so timing reveals nothing about
    the token); a malformed token (bad prefix or checksum) is refused before any query.
    """
    if not crypto.token_well_formed(token):
        raise FaceLibError(E.TOKEN_INVALID)
    row = conn.execute(
        "SELECT t.id AS token_id, t.expires_at, t.revoked_at, t.last_used_at, c.*"
        " FROM api_tokens t JOIN api_clients c ON c.id = t.client_id"
        " WHERE t.token_hash = %s",
        (crypto.sha256(token),),
    ).fetchone()
    if row is None or row["revoked_at"] is not None or row["status"] != "active":
        raise FaceLibError(E.TOKEN_INVALID)
    now = datetime.now(UTC)
    if row["expires_at"] <= now:
        raise FaceLibError(E.TOKEN_EXPIRED)
    if row["last_used_at"] is None or now - row["last_used_at"] > timedelta(minutes=1):
        conn.execute("UPDATE api_tokens SET last_used_at = now() WHERE id = %s", (row["token_id"],))
    return row
