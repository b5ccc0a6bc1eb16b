"""Token issuance: a client trades its key and secret for a bearer token (docs/tokens.md)."""

from __future__ import annotations

from flask import Blueprint, Response, g, request
from marshmallow import EXCLUDE, Schema, fields, validate

from api.envelope import respond
from api.extensions import exhausted, spend
from api.schemas import TokenData, documented, json_body, load
from shared import crypto, db
from shared.db import transaction
from shared.errors import E, FaceLibError
from shared.settings import get_settings

bp = Blueprint("tokens", __name__, url_prefix="/tech/ai/core")


class TokenRequestSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    clientKey = fields.String(required=True, validate=validate.Length(min=1, max=128))
    clientSecret = fields.String(required=True, validate=validate.Length(min=1, max=256))


@bp.post("/token")
@documented(body=TokenRequestSchema, data=TokenData)
def issue_token() -> Response:
    """Issue a bearer token for `Authorization` (valid FACELIB_TOKEN_TTL_SECONDS).

    Limited per source IP (every request, FACELIB_UNAUTH_RATE_LIMIT) and per client key (failed
    tries, FACELIB_TOKEN_KEY_RATE_LIMIT): guessing one client's secret from many addresses is
    bounded, and a neighbour behind the same NAT mistyping a secret does not lock a client out."""
    settings = get_settings()
    spend(settings.unauth_rate_limit, f"token-ip:{request.remote_addr}")
    params = load(TokenRequestSchema(), json_body())
    key = f"token-key:{crypto.sha256(params['clientKey']).hex()}"
    retry = exhausted(settings.token_key_rate_limit, key)
    if retry is not None:
        raise FaceLibError(E.RATE_LIMITED, data={"retryAfter": retry})
    try:
        with transaction() as conn:
            client = db.clients.client_by_credentials(
                conn, params["clientKey"], params["clientSecret"]
            )
            issued = db.clients.issue_token(conn, client["id"], settings.token_ttl_seconds)
    except FaceLibError:
        spend(settings.token_key_rate_limit, key)
        raise
    g.client = client
    return respond(
        {
            "token": issued["token"],
            "tokenType": "Bearer",
            "expiresAt": issued["expires_at"].isoformat(),
            "expiresIn": settings.token_ttl_seconds,
            "scopes": client["scopes"],
        }
    )
