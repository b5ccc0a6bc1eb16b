"""Token issuance: a client trades its key and secret for a bearer token (docs/tokens.md)."""

from __future__ import annotations

from flask import Blueprint, Response, g, request
from marshmallow import EXCLUDE, Schema, fields, validate

from api.envelope import respond
from api.extensions import limiter
from api.schemas import json_body, load
from shared import repo
from shared.db import transaction
from shared.settings import get_settings

bp = Blueprint("tokens", __name__, url_prefix="/tech/ai/core")


class TokenRequestSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    clientKey = fields.String(required=True, validate=validate.Length(min=1, max=128))
    clientSecret = fields.String(required=True, validate=validate.Length(min=1, max=256))


@bp.post("/token")
@limiter.limit("10/minute", key_func=lambda: f"token-ip:{request.remote_addr}")
def issue_token() -> Response:
    """Issue a bearer token for `Authorization` (valid FACELIB_TOKEN_TTL_SECONDS)."""
    params = load(TokenRequestSchema(), json_body())
    settings = get_settings()
    with transaction() as conn:
        client = repo.client_by_credentials(conn, params["clientKey"], params["clientSecret"])
        issued = repo.issue_token(conn, client["id"], settings.token_ttl_seconds)
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
