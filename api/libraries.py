"""Sub-libraries: create, list, delete (persons join them with `libIds` at reg)."""

from __future__ import annotations

from flask import Blueprint, Response, g

from api.auth import require_scope
from api.envelope import respond
from api.schemas import (
    LibraryData,
    LibraryDeleteData,
    LibraryListData,
    LibrarySchema,
    documented,
    json_body,
    load,
)
from shared import db
from shared.db import transaction
from shared.errors import E, FaceLibError

bp = Blueprint("libraries", __name__, url_prefix="/tech/ai/face/faceLib/library")


@bp.post("/create")
@require_scope("person:write")
@documented(body=LibrarySchema, data=LibraryData)
def create_library() -> Response:
    params = load(LibrarySchema(), json_body())
    with transaction() as conn:
        row = db.libraries.create_library(conn, params["libId"], params["name"], g.client["id"])
    return respond({"libId": row["lib_id"], "name": row["name"]})


@bp.get("/list")
@require_scope("person:read", "face:recognize")
@documented(data=LibraryListData)
def list_libraries() -> Response:
    with transaction() as conn:
        rows = db.libraries.list_libraries(conn)
    return respond(
        {
            "items": [
                {"libId": r["lib_id"], "name": r["name"], "persons": r["persons"]} for r in rows
            ]
        }
    )


@bp.post("/delete")
@require_scope("person:write")
@documented(body=LibrarySchema, data=LibraryDeleteData)
def delete_library() -> Response:
    body = json_body()
    params = load(LibrarySchema(), body)
    with transaction() as conn:
        if not db.libraries.delete_library(conn, params["libId"]):
            raise FaceLibError(
                E.PARAM_INVALID, detail="libId: no such library", data={"field": "libId"}
            )
    return respond({"libId": params["libId"], "deleted": "true"})
