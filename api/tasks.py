"""Polling a job, and the callback deliveries a client can inspect and replay."""

from __future__ import annotations

from flask import Blueprint, Response, g, request

from api.auth import require_scope
from api.envelope import respond
from api.schemas import (
    CallbackQuery,
    DeliveriesData,
    ReplayData,
    TaskData,
    documented,
    load,
)
from shared import db
from shared.db import transaction
from shared.errors import E, FaceLibError
from shared.jobs import job_envelope

bp = Blueprint("tasks", __name__, url_prefix="/tech/ai/face/faceLib")


def _delivery_json(row: dict) -> dict:
    """One callback delivery as clients see it (in a poll and in the deliveries list)."""
    return {
        "deliveryId": row["id"],
        "taskId": str(row["job_id"]),
        "status": row["status"],
        "attempts": row["attempts"],
        "lastHttpStatus": row["last_http_status"],
        "lastError": row["last_error"],
        "createdAt": row["created_at"].isoformat(),
    }


@bp.get("/task/<task_id>")
@require_scope("face:register", "face:recognize")
@documented(data=TaskData)
def get_task(task_id: str) -> Response:
    """Status of a job; once finished, `result` holds the envelope the sync call would give."""
    with transaction() as conn:
        job = db.jobs.get_job(conn, task_id, g.client["id"])
        result = job_envelope(conn, job) if job and job["status"] in ("done", "failed") else None
        delivery = db.deliveries.delivery_for_job(conn, job["id"]) if job else None
    if job is None:
        raise FaceLibError(E.TASK_NOT_FOUND)
    data = {
        "taskId": str(job["id"]),
        "kind": job["kind"],
        "status": job["status"],
        "requestId": job["request_id"],
        "attempts": job["attempts"],
        "createdAt": job["created_at"].isoformat(),
        "finishedAt": job["finished_at"].isoformat() if job["finished_at"] else None,
    }
    if result is not None:
        data["result"] = result
    if delivery:
        data["callback"] = _delivery_json(delivery)
    return respond(data)


@bp.get("/callbacks")
@require_scope("face:register", "face:recognize")
@documented(query=CallbackQuery, data=DeliveriesData)
def list_callbacks() -> Response:
    """This client's callback deliveries, newest first; `?status=dead` for the dead letters."""
    params = load(CallbackQuery(), request.args.to_dict())
    with transaction() as conn:
        rows = db.deliveries.list_deliveries(
            conn, g.client["id"], params.get("status"), params.get("limit", 50)
        )
    items = [_delivery_json(r) for r in rows]
    return respond({"items": items})


@bp.post("/callbacks/<int:delivery_id>/replay")
@require_scope("face:register", "face:recognize")
@documented(data=ReplayData)
def replay_callback(delivery_id: int) -> Response:
    """Send a dead-lettered (or already delivered) callback again, with a fresh retry series."""
    with transaction() as conn:
        ok = db.deliveries.replay_delivery(conn, delivery_id, g.client["id"])
    if not ok:
        raise FaceLibError(E.CALLBACK_NOT_FOUND)
    from shared.queue import TASK_DELIVER_CALLBACK, get_celery

    get_celery().send_task(TASK_DELIVER_CALLBACK, args=[delivery_id])
    return respond({"deliveryId": delivery_id, "status": "pending"})
