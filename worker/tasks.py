"""Celery tasks: registration, recognition, callback delivery and the sweeper.

Every task takes ids only (the job's inputs live in Postgres) and is idempotent on them: a
redelivered message for a finished job does nothing, and a registration inserts its face with
`ON CONFLICT (job_id) DO NOTHING`. Errors no retry can fix (bad image, no face...) fail the job at
once with their errcode; transient ones (database, broker, file fetch) are retried with
exponential backoff and jitter until the job's attempt cap.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from typing import Any

import numpy as np
import psycopg
import redis
from celery.exceptions import Retry, SoftTimeLimitExceeded

from shared import crypto, db
from shared.callbacks import CallbackPolicy, post_callback
from shared.db import transaction
from shared.errors import E, FaceLibError
from shared.jobs import send_job
from shared.logs import request_id_var, task_id_var
from shared.queue import (
    TASK_DELIVER_CALLBACK,
    TASK_PURGE_EXPIRED,
    TASK_RECOGNIZE,
    TASK_REGISTER,
    TASK_SWEEP,
    TASK_VERIFY,
    get_redis,
    job_channel,
)
from shared.recognition import (
    duplicate_of,
    recognition_result,
    render_result,
    verification_result,
)
from shared.settings import get_settings
from worker.celery_app import app
from worker.engine import (
    Analysis,
    BackendUnavailableError,
    EngineConfig,
    FaceEngine,
    get_engine,
)

log = logging.getLogger(__name__)

TRANSIENT = (psycopg.OperationalError, psycopg.errors.SerializationFailure, redis.RedisError)


def enabled_models() -> tuple[str, ...]:
    """The optional models this worker computes: those of FACELIB_MODELS that are installed.

    One enabled but not installed is skipped with a warning (the service runs as before); the
    deciding model (FACELIB_MATCH_MODEL) not installed stops the worker at start, naming the
    install command, rather than answer by another model than the one configured."""
    global _enabled
    from shared.models import installed

    s = get_settings()
    if _enabled is not None:  # looked up once per process: `installed` hashes the model file
        return _enabled
    found = []
    for name in s.models:
        if installed(name) is not None:
            found.append(name)
        elif name == s.match_model:
            raise BackendUnavailableError(
                f"FACELIB_MATCH_MODEL={name} but {name} is not installed: an operator runs "
                f"`facelib models install {name} --accept-license` first (docs/models.md)"
            )
        else:
            log.warning("FACELIB_MODELS names %s, which is not installed: not computed", name)
    _enabled = tuple(found)
    return _enabled


_enabled: tuple[str, ...] | None = None


def engine() -> FaceEngine:
    s = get_settings()
    return get_engine(
        EngineConfig(
            max_pixels=s.max_image_pixels,
            max_decode_bytes=s.max_decode_bytes,
            min_face_px=s.min_face_px,
            num_jitters=s.num_jitters,
            backend=s.embedding_backend,
            backend_threads=s.backend_threads,
            model_cache_dir=s.model_cache_dir,
            extra_models=enabled_models(),
        )
    )


def deciding_embedding(analysis: Analysis) -> np.ndarray:
    """The probe's vector by the deciding model (FACELIB_MATCH_MODEL)."""
    model = get_settings().match_model
    face = analysis.faces[0]
    return face.embedding if model == "dlib" else face.embeddings[model]


def _backoff(attempt: int) -> float:
    return min(60.0, 2.0**attempt) * random.uniform(0.5, 1.5)  # noqa: S311 - jitter only


def _failure_data(kind: str) -> dict[str, Any]:
    return {"ok": "false"} if kind == "register" else {"isMatch": "false"}


def _after_commit(job_id: str, status: str, delivery: dict[str, Any] | None) -> None:
    try:
        get_redis().publish(job_channel(job_id), status)
    except redis.RedisError:
        log.warning("could not publish completion of job %s (waiters fall back to polling)", job_id)
    if delivery is not None:
        deliver_callback.apply_async(args=[delivery["id"]], retry=False)


def _load_image(job: dict[str, Any], inputs: dict[str, Any]) -> bytes:
    from shared.image_sources import load_image

    return load_image(inputs["origin"], inputs["data"], inputs["ref"], client_id=job["client_id"])


def _register(conn: psycopg.Connection, job: dict, inputs: dict, analysis: Analysis, image: bytes):
    s = get_settings()
    id_num = crypto.decrypt(s.encryption_key, bytes(inputs["id_num_encrypted"]), job["id"].bytes)
    fields = inputs["person"]
    person = db.persons.upsert_person(
        conn,
        s,
        id_num=id_num,
        name=fields["name"],
        person_type=fields["personType"],
        customer_id=fields.get("customerID"),
        client_id=job["client_id"],
    )
    if db.faces.count_faces(conn, person["id"]) >= s.faces_per_person:
        raise FaceLibError(E.FACE_LIMIT_REACHED, detail=f"at most {s.faces_per_person}")
    meta = job["request_meta"] or {}
    db.libraries.add_to_libraries(conn, person["id"], meta.get("libraryIds") or [])
    face = analysis.faces[0]
    result = {"ok": "true"}
    policy = meta.get("duplicatePolicy") or s.duplicate_policy
    if policy != "allow":
        duplicate = duplicate_of(conn, s, deciding_embedding(analysis), person["id"])
        if duplicate is not None and policy == "refuse":
            raise FaceLibError(E.DUPLICATE_IDENTITY, detail=f"score {duplicate:.1f}")
        if duplicate is not None:
            result["duplicateWarning"] = "true"
    added = db.faces.add_face(
        conn,
        person_id=person["id"],
        embedding=face.embedding,
        box=[int(v) for v in face.box],
        quality={k: float(v) for k, v in face.quality.items()},
        model=analysis.model,
        # backend and its version (e.g. onnx + the .dat hash), so a model change can re-embed
        backend=f"{analysis.backend}/{getattr(engine().backend, 'version', '')}",
        job_id=job["id"],
        image_sha256=hashlib.sha256(image).digest(),
    )
    if added:  # every enabled model's vector, and the photo when kept (docs/models.md)
        face_id = db.faces.face_id_for_job(conn, job["id"])
        assert face_id is not None
        versions = engine().versions
        for name, vector in face.embeddings.items():
            if name in db.faces.EMBEDDING_COLUMNS and name != "dlib":
                db.faces.set_face_embedding(conn, face_id, name, vector, versions[name])
        if s.keep_enrolment_photos:
            db.faces.store_face_photo(conn, s, face_id, image)
    return result


def _lease_seconds() -> float:
    # Celery kills the attempt at the hard time limit (soft + 30 s): a lease that outlives it
    # means the holder is gone, whatever the broker thinks
    return get_settings().job_time_limit_seconds + 60


CLAIM_RETRIES = 5  # then the message is dropped; the job's send deadline brings it back

# Jobs this process failed to give back (database down at the time): released by its next task
# (a job, or the sweep every few seconds) once the database answers, so they do not wait for
# their lease to run out. Should this process die first, the lease still brings them back.
_pending_releases: dict[str, float] = {}


def _flush_pending_releases() -> None:
    for job_id, resend_after in list(_pending_releases.items()):
        try:
            with transaction() as conn:
                db.jobs.release_job(conn, job_id, resend_after)
        except TRANSIENT:
            return
        del _pending_releases[job_id]
        log.info("job %s released after the database came back", job_id)


def _fail(job: dict[str, Any], kind: str, err: FaceLibError, errmsg: str | None = None) -> None:
    with transaction() as conn:
        delivery = db.jobs.finish_job(
            conn,
            job,
            errcode=err.errcode,
            errmsg=errmsg or err.errmsg,
            result={**_failure_data(kind), **err.data},
        )
    _after_commit(str(job["id"]), "failed", delivery)


def run_job(task: Any, job_id: str, kind: str) -> None:
    """One attempt at a job under a Postgres lease (docs/reliability.md).

    The claim decides, not the broker: a message for a job another live worker holds, or for a
    finished job, is dropped. A job is failed by its own attempts only: `failed_attempts`
    (transient errors, cap `max_attempts`) or `lost_attempts` (its worker died holding it, cap
    FACELIB_JOB_MAX_LOST_ATTEMPTS, a guard against an image that kills the worker).
    """
    task_id_var.set(job_id)
    request_id_var.set(None)  # a pool process runs many tasks: no id from the previous one
    s = get_settings()
    started = time.monotonic()
    _flush_pending_releases()
    try:
        with transaction() as conn:
            outcome, job = db.jobs.claim_job(conn, job_id, _lease_seconds())
            inputs = db.jobs.load_job_input(conn, job_id) if job is not None else None
    except TRANSIENT as exc:
        if task.request.retries >= CLAIM_RETRIES:
            log.warning(
                "job %s: database unavailable, message dropped; the sweeper re-sends it", job_id
            )
            return
        raise task.retry(
            countdown=_backoff(task.request.retries), exc=exc, max_retries=None
        ) from exc
    if job is None:
        if outcome == "busy":
            log.info("job %s: held by another live worker, duplicate message dropped", job_id)
        return
    request_id_var.set((job["request_meta"] or {}).get("requestId"))
    if inputs is None:
        _fail(job, kind, FaceLibError(E.INTERNAL), "job inputs missing")
        return
    if job["lost_attempts"] >= s.job_max_lost_attempts:
        log.error("job %s: worker lost %d times; failing it", job_id, job["lost_attempts"])
        err = FaceLibError(E.JOB_ATTEMPTS_EXHAUSTED)
        _fail(job, kind, err, f"{err.errmsg} (worker lost {job['lost_attempts']} times)")
        return

    timings: dict[str, float] = {"queue_wait": float(job.get("queue_wait") or 0.0)}
    try:
        t = time.monotonic()
        image = _load_image(job, inputs)
        timings["fetch"] = time.monotonic() - t
        analysis = engine().analyze(
            image,
            "register" if kind == "register" else "recognize",
            (job["request_meta"] or {}).get("qualityControl"),
        )
        timings.update(analysis.timings)
        t = time.monotonic()
        with transaction() as conn:
            if kind == "register":
                result = _register(conn, job, inputs, analysis, image)
            elif kind == "verify":
                result = verification_result(conn, s, deciding_embedding(analysis), job)
            else:
                result = recognition_result(conn, s, deciding_embedding(analysis), job)
            timings["db"] = time.monotonic() - t
            timings["total"] = time.monotonic() - started
            delivery = db.jobs.finish_job(
                conn, job, errcode=0, errmsg="SUCCESS", result=result, timings=timings
            )
        _after_commit(job_id, "done", delivery)
        log.info("job %s (%s) done in %.2f s", job_id, kind, timings["total"])
        return
    except FaceLibError as err:
        if err.err.retryable and job["failed_attempts"] + 1 < job["max_attempts"]:
            failure: BaseException = err
        else:
            with transaction() as conn:
                delivery = db.jobs.finish_job(
                    conn,
                    job,
                    errcode=err.errcode,
                    errmsg=err.errmsg,
                    result={**_failure_data(kind), **err.data},
                    timings=timings,
                )
            _after_commit(job_id, "failed", delivery)
            log.info("job %s (%s) failed: errcode %d", job_id, kind, err.errcode)
            return
    except (*TRANSIENT, SoftTimeLimitExceeded) as exc:
        failure = exc
    except Exception as exc:  # noqa: BLE001 - a bug must not lose the job: retry, then fail
        log.exception("job %s (%s) raised %s", job_id, kind, type(exc).__name__)
        failure = exc
    log.warning("job %s (%s): attempt failed (%s)", job_id, kind, type(failure).__name__)
    # transient failure: give the job back and retry later, until the attempt cap. If the
    # database is down too, nothing is written: the lease runs out and the sweeper re-sends it.
    if job["failed_attempts"] + 1 >= job["max_attempts"]:
        with transaction() as conn:
            delivery = db.jobs.finish_job(
                conn,
                job,
                errcode=E.JOB_ATTEMPTS_EXHAUSTED.code,
                errmsg=f"{E.JOB_ATTEMPTS_EXHAUSTED.message} ({type(failure).__name__})",
                result=_failure_data(kind),
                timings=timings,
            )
        _after_commit(job_id, "failed", delivery)
        return
    countdown = _backoff(job["failed_attempts"] + 1)
    try:
        with transaction() as conn:
            # if the retry message below is lost, the send deadline brings the job back
            db.jobs.release_job(conn, job_id, countdown + s.job_send_timeout_seconds)
    except TRANSIENT as exc:
        log.warning("job %s: not released yet (%s)", job_id, type(exc).__name__)
        _pending_releases[job_id] = countdown + s.job_send_timeout_seconds
        return
    try:
        task.retry(countdown=countdown, exc=failure, max_retries=None)
    except Retry:
        raise
    except Exception as exc:  # noqa: BLE001 - publish failed: the sweeper re-sends the job
        log.warning("job %s: retry not published (%s)", job_id, type(exc).__name__)


@app.task(name=TASK_REGISTER, bind=True)
def register_person(self: Any, job_id: str) -> None:
    run_job(self, job_id, "register")


@app.task(name=TASK_RECOGNIZE, bind=True)
def recognize_face(self: Any, job_id: str) -> None:
    run_job(self, job_id, "recognize")


@app.task(name=TASK_VERIFY, bind=True)
def verify_face(self: Any, job_id: str) -> None:
    run_job(self, job_id, "verify")


@app.task(name=TASK_DELIVER_CALLBACK)
def deliver_callback(delivery_id: int) -> str | None:
    s = get_settings()
    with transaction() as conn:
        delivery = db.deliveries.claim_delivery(conn, delivery_id)
        if delivery is None:
            return None  # delivered, dead, or being delivered by another worker
        payload = dict(delivery["payload"])
        payload["data"] = render_result(conn, s, payload.get("data") or {})
    # address-pinned, one overall deadline, status line only (shared/callbacks.py)
    http_status, error, duration_ms = post_callback(
        delivery["url"],
        payload,
        webhook_id=delivery["webhook_id"],
        secrets=[delivery["callback_secret"], delivery["callback_secret_previous"]],
        policy=CallbackPolicy.from_settings(s),
    )
    with transaction() as conn:
        return db.deliveries.record_attempt(
            conn,
            delivery,
            http_status=http_status,
            error=error,
            duration_ms=duration_ms,
            schedule=s.callback_schedule,
            jitter=random.uniform(0.8, 1.2),  # noqa: S311 - jitter only
        )


@app.task(name=TASK_SWEEP)
def sweep() -> dict[str, int]:
    """Re-send jobs past their send deadline or lease, and dispatch callback attempts due."""
    task_id_var.set(None)
    request_id_var.set(None)
    s = get_settings()
    _flush_pending_releases()
    with transaction() as conn:
        jobs = db.jobs.jobs_to_resend(conn, s.job_send_timeout_seconds)
        deliveries = db.deliveries.due_deliveries(
            conn, stale_after_seconds=2 * s.callback_timeout_seconds + 30
        )
    for job in jobs:
        send_job(str(job["id"]), job["kind"], bool(job["interactive"]))
    if jobs:
        log.warning("sweeper re-sent %d job(s) past their send deadline or lease", len(jobs))
    for delivery_id in deliveries:
        deliver_callback.apply_async(args=[delivery_id], retry=False)
    return {"jobs": len(jobs), "callbacks": len(deliveries)}


@app.task(name=TASK_PURGE_EXPIRED)
def purge_expired() -> dict[str, int]:
    """Delete finished jobs, callback attempts and audit rows past their retention."""
    s = get_settings()
    with transaction() as conn:
        counts = db.ops.purge_expired(
            conn,
            jobs_days=s.jobs_retention_days,
            audit_days=s.audit_retention_days,
            callback_attempts_days=s.callback_attempts_retention_days,
        )
    if any(counts.values()):
        log.info("retention purge: %s", counts)
    return counts
