"""The face endpoints: register a verified person's face (reg), recognise a face (recong, 1:N)
and verify a face against one person (verify, 1:1). Each runs as a job on the worker."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, g

from api import audit
from api.auth import require_scope
from api.envelope import respond
from api.schemas import (
    RecognizeData,
    RecognizeSchema,
    RegisterData,
    RegisterSchema,
    VerifyData,
    VerifySchema,
    decode_self_image,
    documented,
    idempotency_key,
    json_body,
    load,
    load_with_id_num,
    person_types,
)
from shared import crypto, db
from shared.callbacks import callback_url_problem
from shared.db import transaction
from shared.errors import ERRCODES, E, FaceLibError
from shared.image_sources import check_image_ref
from shared.jobs import (
    finished_envelope,
    request_hash,
    submit_job,
    submit_registration,
    wait_for_job,
)
from shared.queue import queue_depth
from shared.recognition import PERSON_REF
from shared.settings import get_settings

# The blueprint keeps the name it had when this module was api/persons.py: endpoint names (and
# the OpenAPI operationIds made from them) stay "persons.register" and so on.
bp = Blueprint("persons", __name__, url_prefix="/tech/ai/face/faceLib/person")


def _submit_and_answer(
    params: dict[str, Any],
    body: dict[str, Any],
    meta: dict[str, Any],
    submit: Callable[..., tuple[dict[str, Any], bool]],
) -> Response:
    """What reg, recong and verify share: image checks, callback, idempotency, back-pressure,
    submission (`submit`), then the async answer or the wait for the result."""
    settings = get_settings()
    client = g.client
    image = params["faceImage"]
    origin = image["origin"]
    if origin == "self":
        raw = decode_self_image(image["data"], settings.max_base64_bytes)
    else:
        raw = None
        check_image_ref(origin, image["data"])  # syntax only: the worker fetches
    callback_url = params["callbackUrl"] or (client["callback_url"] if params["async_"] else None)
    if callback_url and params["callbackUrl"]:
        problem = callback_url_problem(callback_url, settings.callback_allow_private)
        if problem:
            raise FaceLibError(E.PARAM_INVALID, detail=f"callbackUrl: {problem}")
    request_id = params["requestId"] or idempotency_key()
    if params["async_"] and queue_depth() > settings.queue_max_depth:
        raise FaceLibError(E.BUSY, detail=f"more than {settings.queue_max_depth} jobs waiting")
    meta = {
        **meta,
        "requestId": g.get("request_id"),
        "async": params["async_"],
        "origin": origin,
        "imageBytes": len(raw) if raw is not None else None,
    }
    if params["qualityControl"] is not None:  # absent: today's gates (docs/engine.md)
        meta["qualityControl"] = params["qualityControl"]
    # async: the audit row commits with the job (api/audit.py); sync: after the answer, which
    # carries the job's outcome
    audit_row = audit.job_row if params["async_"] else None
    job, created = submit(
        audit=audit_row,
        client_id=client["id"],
        request_id=request_id,
        request_hash=request_hash(body),
        meta=meta,
        callback_url=callback_url,
        origin=origin,
        image=raw,
        ref=None if origin == "self" else image["data"],
    )
    g.audit_written = audit_row is not None
    task_id = str(job["id"])
    headers = {"X-Task-Id": task_id}
    if params["async_"]:
        data = {"taskId": task_id, "status": job["status"]}
        return respond(data, status=202 if created else 200, headers=headers)
    job = wait_for_job(task_id, client["id"], settings.sync_timeout_seconds)
    person_id = (job["result"] or {}).get(PERSON_REF)
    if person_id is not None:
        g.audit_person_ref = f"p:{person_id}"
    env = finished_envelope(job)
    err = ERRCODES.get(env["errcode"], E.INTERNAL)
    return respond(env["data"], err, env["errmsg"], headers=headers)


def _submit_job(kind: str, **fields: Any) -> tuple[dict[str, Any], bool]:
    return submit_job(kind=kind, max_attempts=get_settings().job_max_attempts, **fields)


@bp.post("/reg")
@require_scope("face:register")
@documented(body=RegisterSchema, data=RegisterData, job=True)
def register() -> Response:
    """Register a verified person's face (sync, or async with a callback)."""
    body = json_body()
    params, id_num = load_with_id_num(RegisterSchema(), body)
    settings = get_settings()
    g.audit_person_ref = "b:" + crypto.blind_index(settings.index_key, id_num).hex()
    person = {
        "name": params["name"].strip(),
        "personType": params["personType"],
        "customerID": params["customerID"],
    }

    with transaction() as conn:
        libraries = db.libraries.library_ids(conn, params["libIds"] or ["default"])
    submit = functools.partial(
        submit_registration, id_num=id_num, person=person, library_ids=libraries
    )
    return _submit_and_answer(params, body, {}, submit)


@bp.post("/recong")
@require_scope("face:recognize")
@documented(body=RecognizeSchema, data=RecognizeData, job=True)
def recognize() -> Response:
    """Recognise a face: the enrolled person it belongs to, and the score."""
    body = json_body()
    params = load(RecognizeSchema(), body)
    client = g.client
    meta: dict[str, Any] = {
        **decision_floor(client, params["threshold"]),
        "personTypes": person_types(params["personType"]),
        "matchMode": params["matchMode"],
        "galleryTarget": params["galleryTarget"] or client.get("gallery_target"),
    }
    if params["libIds"]:
        with transaction() as conn:
            meta["libraryIds"] = db.libraries.library_ids(conn, params["libIds"])
    return _submit_and_answer(params, body, meta, functools.partial(_submit_job, "recognize"))


@bp.post("/verify")
@require_scope("face:recognize")
@documented(body=VerifySchema, data=VerifyData, job=True)
def verify() -> Response:
    """1:1 verification: is this face the person with this idNum?"""
    body = json_body()
    params, id_num = load_with_id_num(VerifySchema(), body)
    with transaction() as conn:
        person = db.persons.find_person(conn, get_settings(), id_num)
    # A client that may not read persons must not learn whether an idNum is enrolled: for it an
    # unknown idNum runs the same job and answers exactly as a face that does not match
    # (isMatch "false", no score); clients with person:read get 5001.
    conceal = not _may_read_persons(g.client)
    if person is None and not conceal:
        raise FaceLibError(E.PERSON_NOT_FOUND, data={"isMatch": "false"})
    if person is not None:
        g.audit_person_ref = f"p:{person['id']}"
    meta = {
        "personId": person["id"] if person is not None else None,
        "concealAbsence": conceal,
        **decision_floor(g.client, params["threshold"]),
    }
    return _submit_and_answer(params, body, meta, functools.partial(_submit_job, "verify"))


def _may_read_persons(client: dict[str, Any]) -> bool:
    return bool({"person:read", "admin"} & set(client["scopes"]))


def decision_floor(client: dict[str, Any], threshold: float | None) -> dict[str, float]:
    """The match rule of a request: its `threshold` may only tighten the client's floor
    (api_clients.match_floor, default FACELIB_MATCH_THRESHOLD); below the floor no answer
    names a person, whatever the request sends (the worker applies the floor again)."""
    floor = client.get("match_floor")
    floor = get_settings().match_threshold if floor is None else float(floor)
    meta: dict[str, float] = {"floor": floor}
    if threshold is not None:
        meta["threshold"] = max(float(threshold), floor)
    return meta
