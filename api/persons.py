"""Person management: read, update, list and erase enrolled persons, and list/delete their faces.

Every endpoint is a POST with a JSON body, so idNums never appear in URLs, proxy or access logs.
Persons are shared by the bank (not per client): person:read lets a client read every person,
person:write change or erase every person; the audit row of each request records which client.
Lookups by idNum go through the blind index. Responses never carry embeddings, the blind index
or the ciphertext; the decrypted idNum is returned only by `get` (the caller already knows it),
lists show the masked form.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, g
from marshmallow import EXCLUDE, Schema, fields, validate

from api.auth import require_scope
from api.envelope import respond
from api.schemas import (
    ID_NUM,
    PERSON_TYPES,
    FaceDeleteData,
    FacesData,
    PersonData,
    PersonDeleteData,
    PersonGetData,
    PersonListData,
    documented,
    json_body,
    load,
    load_with_id_num,
)
from shared import db, persons
from shared.db import transaction
from shared.errors import E, FaceLibError
from shared.settings import get_settings

# The blueprint keeps the name it had when this module was api/manage.py: endpoint names (and
# the OpenAPI operationIds made from them) stay "manage.get_person" and so on.
bp = Blueprint("manage", __name__, url_prefix="/tech/ai/face/faceLib/person")


class _Body(Schema):
    class Meta:
        unknown = EXCLUDE


class PersonLookupSchema(_Body):
    idNum = fields.String(required=True, metadata=ID_NUM)


class PersonUpdateSchema(PersonLookupSchema):
    name = fields.String(load_default=None, validate=validate.Length(min=1, max=100))
    personType = fields.String(load_default=None, validate=validate.OneOf(PERSON_TYPES))
    customerID = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))


class PersonListSchema(_Body):
    personType = fields.String(load_default=None, validate=validate.OneOf(PERSON_TYPES))
    customerID = fields.String(load_default=None, validate=validate.Length(max=64))
    namePrefix = fields.String(load_default=None, validate=validate.Length(min=1, max=100))
    createdFrom = fields.AwareDateTime(load_default=None, default_timezone=UTC)
    createdTo = fields.AwareDateTime(load_default=None, default_timezone=UTC)
    page = fields.Integer(
        load_default=1, strict=True, validate=validate.Range(min=1, max=1_000_000)
    )
    pageSize = fields.Integer(
        load_default=20,
        strict=True,
        validate=validate.Range(min=1, max=persons.LIST_MAX_PAGE_SIZE),
    )


class FaceDeleteSchema(_Body):
    faceId = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _person_data(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "personId": row["id"],
        "idNumMasked": row["id_num_masked"],
        "name": row["name"],
        "personType": row["person_type"],
        "customerID": row["customer_id"],
        "faces": int(row["faces"]),
        "createdAt": _timestamp(row["created_at"]),
        "updatedAt": _timestamp(row["updated_at"]),
    }


def _face_data(row: dict[str, Any]) -> dict[str, Any]:
    sha = row["image_sha256"]
    return {
        "faceId": row["id"],
        "box": list(row["box"]),
        "quality": row["quality"],
        "model": row["model"],
        "backend": row["backend"],
        "imageSha256": bytes(sha).hex() if sha is not None else None,
        "createdAt": _timestamp(row["created_at"]),
    }


def _lookup(conn: Any, id_num: str) -> dict[str, Any]:
    """The person with this idNum, or 5001; the audit row points at them (p:<id>) only once
    found: a lookup of an idNum that is not enrolled (or was erased) leaves no blind index."""
    settings = get_settings()
    person = db.persons.find_person_summary(conn, settings, id_num)
    if person is None:
        raise FaceLibError(E.PERSON_NOT_FOUND)
    g.audit_person_ref = f"p:{person['id']}"
    return person


@bp.post("/get")
@require_scope("person:read")
@documented(body=PersonLookupSchema, data=PersonGetData)
def get_person() -> Response:
    """A person's record by idNum: fields, number of faces, timestamps."""
    _, id_num = load_with_id_num(PersonLookupSchema(), json_body())
    with transaction() as conn:
        person = _lookup(conn, id_num)
        data = {"idNum": db.persons.decrypt_id_num(get_settings(), person), **_person_data(person)}
    return respond(data)


@bp.post("/update")
@require_scope("person:write")
@documented(body=PersonUpdateSchema, data=PersonData)
def update_person() -> Response:
    """Change name, personType and/or customerID of a person ("" clears customerID)."""
    params, id_num = load_with_id_num(PersonUpdateSchema(), json_body())
    name = params["name"].strip() if params["name"] is not None else None
    if name == "":
        raise FaceLibError(E.PARAM_INVALID, detail="name: empty", data={"field": "name"})
    if name is None and params["personType"] is None and params["customerID"] is None:
        raise FaceLibError(
            E.PARAM_MISSING,
            detail="one of name, personType, customerID",
            data={"field": "name"},
        )
    settings = get_settings()
    with transaction() as conn:
        person = _lookup(conn, id_num)
        db.persons.update_person(
            conn,
            person["id"],
            name=name,
            person_type=params["personType"],
            customer_id=params["customerID"],
        )
        person = db.persons.find_person_summary(conn, settings, id_num)
    assert person is not None
    return respond(_person_data(person))


@bp.post("/delete")
@require_scope("person:write")
@documented(body=PersonLookupSchema, data=PersonDeleteData)
def delete_person() -> Response:
    """Erase a person: record, faces, stored images, and every link to them (see shared/persons)."""
    _, id_num = load_with_id_num(PersonLookupSchema(), json_body())
    # the audit row of an erasure does not point at the person it erased: it records who and when
    settings = get_settings()
    with transaction() as conn:
        person = db.persons.find_person_summary(conn, settings, id_num)
        erased = persons.erase_person(conn, settings, person["id"]) if person else None
    if erased is None:
        raise FaceLibError(E.PERSON_NOT_FOUND)
    return respond({"deleted": "true", "faces": erased["faces"], "images": erased["files"]})


@bp.post("/list")
@require_scope("person:read")
@documented(body=PersonListSchema, data=PersonListData)
def list_persons() -> Response:
    """Persons page by page, filtered by personType, customerID, name prefix, creation range."""
    params = load(PersonListSchema(), json_body())
    with transaction() as conn:
        rows, total = db.persons.list_persons(
            conn,
            person_type=params["personType"],
            customer_id=params["customerID"],
            name_prefix=params["namePrefix"],
            created_from=params["createdFrom"],
            created_to=params["createdTo"],
            page=params["page"],
            page_size=params["pageSize"],
        )
    return respond(
        {
            "total": total,
            "page": params["page"],
            "pageSize": params["pageSize"],
            "persons": [_person_data(r) for r in rows],
        }
    )


@bp.post("/faces")
@require_scope("person:read")
@documented(body=PersonLookupSchema, data=FacesData)
def list_faces() -> Response:
    """The faces of a person (ids, boxes, quality, model; never the embeddings)."""
    _, id_num = load_with_id_num(PersonLookupSchema(), json_body())
    with transaction() as conn:
        person = _lookup(conn, id_num)
        faces = db.faces.list_faces(conn, person["id"])
    return respond({"personId": person["id"], "faces": [_face_data(f) for f in faces]})


@bp.post("/face/delete")
@require_scope("person:write")
@documented(body=FaceDeleteSchema, data=FaceDeleteData)
def delete_face() -> Response:
    """Delete one face (and its stored image); the person stays, even with no face left."""
    params = load(FaceDeleteSchema(), json_body())
    with transaction() as conn:
        face = persons.delete_face(conn, params["faceId"])
        if face is None:
            raise FaceLibError(E.PERSON_NOT_FOUND, errmsg="face not found")
        left = db.faces.count_faces(conn, face["person_id"])
    g.audit_person_ref = f"p:{face['person_id']}"
    return respond(
        {"faceId": face["id"], "personId": face["person_id"], "deleted": "true", "facesLeft": left}
    )
