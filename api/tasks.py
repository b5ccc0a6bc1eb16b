"""Polling a job, and the callback deliveries a client can inspect and replay."""

from __future__ import annotations

from flask import Blueprint, Response, g, request

from api.auth import require_scope
from api.envelope import respond
from shared import repo
from shared.db import transaction
from shared.errors import E, FaceLibError
from shared.jobs import job_envelope

bp = Blueprint("tasks", __name__, url_prefix="/tech/ai/face/faceLib")


@bp.get("/task/<task_id>")
@require_scope("face:register", "face:recognize")
def get_task(task_id: str) -> Response:
    """Status of a job; once finished, `result` holds the envelope the sync call would give."""
    with transaction() as conn:
        job = repo.get_job(conn, task_id, g.client["id"])
        result = job_envelope(conn, job) if job and job["status"] in ("done", "failed") else None
        delivery = (
            conn.execute(
                "SELECT id, status, attempts, last_http_status, last_error"
                " FROM callback_deliveries WHERE job_id = %s",
                (job["id"],),
            ).fetchone()
            if job
            else None
        )
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
        data["callback"] = {
            "deliveryId": delivery["id"],
            "status": delivery["status"],
            "attempts": delivery["attempts"],
            "lastHttpStatus": delivery["last_http_status"],
            "lastError": delivery["last_error"],
        }
    return respond(data)


@bp.get("/callbacks")
@require_scope("face:register", "face:recognize")
def list_callbacks() -> Response:
    """This client's callback deliveries, newest first; `?status=dead` for the dead letters."""
    status = request.args.get("status")
    if status not in (None, "pending", "delivering", "delivered", "dead"):
        raise FaceLibError(E.PARAM_INVALID, detail="status")
    try:
        limit = min(max(int(request.args.get("limit", 50)), 1), 500)
    except ValueError:
        raise FaceLibError(E.PARAM_INVALID, detail="limit") from None
    with transaction() as conn:
        rows = conn.execute(
            "SELECT id, job_id, status, attempts, last_http_status, last_error, created_at,"
            " delivered_at, dead_at FROM callback_deliveries WHERE client_id = %s"
            " AND (%s::text IS NULL OR status = %s) ORDER BY id DESC LIMIT %s",
            (g.client["id"], status, status, limit),
        ).fetchall()
    items = [
        {
            "deliveryId": r["id"],
            "taskId": str(r["job_id"]),
            "status": r["status"],
            "attempts": r["attempts"],
            "lastHttpStatus": r["last_http_status"],
            "lastError": r["last_error"],
            "createdAt": r["created_at"].isoformat(),
        }
        for r in rows
    ]
    return respond({"items": items})


@bp.post("/callbacks/<int:delivery_id>/replay")
@require_scope("face:register", "face:recognize")
def replay_callback(delivery_id: int) -> Response:
    """Send a dead-lettered (or already delivered) callback again, with a fresh retry series."""
    with transaction() as conn:
        ok = repo.replay_delivery(conn, delivery_id, g.client["id"])
    if not ok:
        raise FaceLibError(E.CALLBACK_NOT_FOUND)
    from shared.queue import TASK_DELIVER_CALLBACK, get_celery

    get_celery().send_task(TASK_DELIVER_CALLBACK, args=[delivery_id])
    return respond({"deliveryId": delivery_id, "status": "pending"})
