"""Submitting jobs and waiting for them: the API's side of the queue.

A job row (with its inputs and a send deadline) is committed in one transaction, then its
message is sent to the broker, and nothing more is written: a job no worker has claimed by its
deadline (publish failed, process killed in between, broker lost the message) is re-sent by the
sweeper. Once that commit succeeded the client gets its taskId whatever happens next (a failed
send, a database error while a sync request waits). A synchronous request waits on a Redis
pub/sub channel that the worker publishes on after it commits, with the database as the source
of truth. docs/reliability.md has the whole state machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import redis
from psycopg_pool import PoolTimeout

from shared import crypto, db
from shared.db import transaction
from shared.errors import E, FaceLibError
from shared.queue import (
    QUEUE_FACES,
    QUEUE_FACES_SYNC,
    TASK_FOR_KIND,
    get_celery,
    get_redis,
    job_channel,
)
from shared.recognition import render_result
from shared.settings import get_settings

log = logging.getLogger(__name__)


def send_job(job_id: str, kind: str, interactive: bool = False) -> bool:
    """Hand a committed job to the broker; False (and a warning) if the broker is unreachable.

    `interactive` (a sync call: someone waits for the answer) sends it to the sync queue, which
    workers empty before the async backlog. Never raises and writes nothing: the job's send
    deadline was committed with it.
    """
    queue = QUEUE_FACES_SYNC if interactive else QUEUE_FACES
    try:
        get_celery().send_task(TASK_FOR_KIND[kind], args=[job_id], retry=False, queue=queue)
    except Exception as exc:  # noqa: BLE001 - any broker failure: the sweeper will re-send
        log.warning(
            "job %s not sent to the broker (%s); the sweeper will re-send it",
            job_id,
            type(exc).__name__,
        )
        return False
    return True


def submit_job(
    audit: Callable[[dict[str, Any], bool], dict[str, Any]] | None = None, **fields: Any
) -> tuple[dict[str, Any], bool]:
    """Persist a job (idempotent on requestId) in one commit and send it. Returns (job, created).

    `audit(job, created)`, when given, returns the request's audit row, which is written in the
    same transaction (an async submission: job, inputs and audit row in one durable commit).
    """
    fields.setdefault("send_timeout_seconds", get_settings().job_send_timeout_seconds)
    with transaction() as conn:
        job, created = db.jobs.create_job(**fields, conn=conn)
        if audit is not None:
            db.audit.write_row(conn, **audit(job, created))
    if created:
        interactive = fields.get("meta", {}).get("async") is False
        send_job(str(job["id"]), job["kind"], interactive)
    return job, created


def request_hash(body: dict[str, Any]) -> bytes:
    """Identity of a request for idempotency: the body without `async` and `requestId`."""
    canonical = {k: v for k, v in body.items() if k not in ("async", "requestId")}
    return hashlib.sha256(
        json.dumps(canonical, sort_keys=True, ensure_ascii=False, default=str).encode()
    ).digest()


def submit_registration(
    *,
    id_num: str,
    person: dict[str, Any],
    library_ids: list[int],
    meta: dict[str, Any],
    **fields: Any,
) -> tuple[dict[str, Any], bool]:
    """Submit a registration job (the API's reg and the bulk enrolment both come here).

    The worker needs the idNum: it waits in job_inputs encrypted with AES-GCM bound to this
    job id, and is deleted when the job ends.
    """
    settings = get_settings()
    job_id = uuid.uuid4()
    return submit_job(
        kind="register",
        job_id=job_id,
        person=person,
        id_num_encrypted=crypto.encrypt(settings.encryption_key, id_num, aad=job_id.bytes),
        meta={"libraryIds": library_ids, "duplicatePolicy": settings.duplicate_policy, **meta},
        max_attempts=settings.job_max_attempts,
        **fields,
    )


def job_envelope(conn: psycopg.Connection, job: dict[str, Any]) -> dict[str, Any]:
    """The response a finished job gives (the same for sync answers, polls and callbacks)."""
    data = render_result(conn, get_settings(), job["result"] or {})
    return {"errcode": job["errcode"], "errmsg": job["errmsg"], "data": data}


def finished_envelope(job: dict[str, Any]) -> dict[str, Any]:
    """A sync answer's envelope, read in its own transaction. The job is finished and stored, so
    a database error here answers RESULT_TIMEOUT with the taskId (poll it), never 9001."""
    try:
        with transaction() as conn:
            return job_envelope(conn, job)
    except (psycopg.Error, PoolTimeout) as exc:
        raise FaceLibError(
            E.RESULT_TIMEOUT, data={"taskId": str(job["id"]), "status": job["status"]}
        ) from exc


def wait_for_job(job_id: str, client_id: int, timeout: float) -> dict[str, Any]:
    """Block until the job is done or failed; FaceLibError(RESULT_TIMEOUT) past the timeout.

    The job is committed: a database error while waiting answers RESULT_TIMEOUT with the taskId
    too (the job still runs; the client polls it), never "unavailable".
    """
    deadline = time.monotonic() + timeout
    pubsub = None
    try:
        try:
            pubsub = get_redis().pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(job_channel(job_id))  # before reading the row: no lost wake-up
        except redis.RedisError:
            pubsub = None
        while True:
            try:
                with transaction() as conn:
                    job = db.jobs.get_job(conn, job_id, client_id)
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning(
                    "job %s: database unavailable while waiting (%s)", job_id, type(exc).__name__
                )
                raise FaceLibError(
                    E.RESULT_TIMEOUT, data={"taskId": job_id, "status": "queued"}
                ) from None
            if job is None:
                raise FaceLibError(E.TASK_NOT_FOUND)
            if job["status"] in ("done", "failed"):
                return job
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FaceLibError(
                    E.RESULT_TIMEOUT, data={"taskId": job_id, "status": job["status"]}
                )
            if pubsub is not None:
                try:
                    pubsub.get_message(timeout=min(remaining, 1.0))
                    continue
                except redis.RedisError:
                    pubsub = None
            time.sleep(min(remaining, 0.2))
    finally:
        if pubsub is not None:
            try:
                pubsub.close()
            except redis.RedisError:
                pass
