"""Jobs: acceptance, leases, outcomes and re-sends. Tables: jobs, job_inputs.

A job is accepted with its inputs in one commit (`create_job`), claimed by a worker under a
lease (`claim_job`), and finished once (`finish_job`, which also drops the inputs and creates the
job's callback delivery in the same transaction: the one write into callback_deliveries made
outside shared/db/deliveries.py). The sweeper re-sends jobs whose send deadline or lease ran out
(`jobs_to_resend`).
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from shared.errors import E, FaceLibError


def create_job(
    conn: psycopg.Connection,
    *,
    kind: str,
    client_id: int,
    request_id: str | None,
    request_hash: bytes,
    meta: dict[str, Any],
    callback_url: str | None,
    origin: str,
    image: bytes | None,
    ref: str | None,
    max_attempts: int,
    id_num_encrypted: bytes | None = None,
    person: dict[str, Any] | None = None,
    job_id: uuid.UUID | None = None,
    send_timeout_seconds: float = 60.0,
) -> tuple[dict[str, Any], bool]:
    """Insert a job and its image; with a requestId already used, return the original job.

    Returns (job, created). The same requestId with another request body is refused. The job's
    send deadline (`lease_expires_at` while queued) is set here, in the accepting commit: a job
    not claimed by a worker by then is re-sent by the sweeper, so nothing is written after the
    message is sent.
    """
    job_id = job_id or uuid.uuid4()
    row = conn.execute(
        "INSERT INTO jobs (id, kind, client_id, request_id, request_hash, request_meta,"
        " callback_url, max_attempts, lease_expires_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s))"
        " ON CONFLICT (client_id, request_id) DO NOTHING RETURNING *",
        (
            job_id,
            kind,
            client_id,
            request_id,
            request_hash,
            Jsonb(meta),
            callback_url,
            max_attempts,
            send_timeout_seconds,
        ),
    ).fetchone()
    if row is None:
        existing = conn.execute(
            "SELECT * FROM jobs WHERE client_id = %s AND request_id = %s",
            (client_id, request_id),
        ).fetchone()
        assert existing is not None
        if existing["request_hash"] != request_hash or existing["kind"] != kind:
            raise FaceLibError(E.IDEMPOTENCY_CONFLICT, data={"taskId": str(existing["id"])})
        return existing, False
    conn.execute(
        "INSERT INTO job_inputs (job_id, origin, data, ref, id_num_encrypted, person)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (job_id, origin, image, ref, id_num_encrypted, Jsonb(person) if person else None),
    )
    return row, True


def get_job(
    conn: psycopg.Connection, job_id: uuid.UUID | str, client_id: int | None = None
) -> dict[str, Any] | None:
    try:
        uuid.UUID(str(job_id))
    except ValueError:
        return None
    if client_id is None:
        return conn.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
    return conn.execute(
        "SELECT * FROM jobs WHERE id = %s AND client_id = %s", (job_id, client_id)
    ).fetchone()


def lease_owner_dead(owner: str | None) -> bool:
    """True when `owner` (host:pid) is a process on this host that no longer exists.

    Only a holder on this host can be checked; one elsewhere is trusted until its lease ends.
    """
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def this_lease_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_job(
    conn: psycopg.Connection, job_id: str, lease_seconds: float
) -> tuple[str, dict[str, Any] | None]:
    """Claim a job for one attempt under a lease. Returns (outcome, job):

    - ("claimed", job): this process holds the lease now; `job["lost_attempts"]` counts an
      attempt taken over from a dead holder.
    - ("busy", None): another live worker holds an unexpired lease (a duplicate message).
    - ("finished", None): done, failed or unknown (a redelivered message).
    """
    row = conn.execute(
        "SELECT status, lease_expires_at < now() AS expired, lease_owner FROM jobs"
        " WHERE id = %s FOR UPDATE",
        (job_id,),
    ).fetchone()
    if row is None or row["status"] not in ("queued", "running"):
        return "finished", None
    taken_over = row["status"] == "running"
    if taken_over and not row["expired"] and not lease_owner_dead(row["lease_owner"]):
        return "busy", None
    job = conn.execute(
        "UPDATE jobs SET status = 'running', attempts = attempts + 1,"
        " lost_attempts = lost_attempts + %s, started_at = now(), lease_owner = %s,"
        " lease_expires_at = now() + make_interval(secs => %s)"
        " WHERE id = %s RETURNING *, extract(epoch FROM now() - created_at) AS queue_wait",
        (int(taken_over), this_lease_owner(), lease_seconds, job_id),
    ).fetchone()
    return "claimed", job


def release_job(conn: psycopg.Connection, job_id: str, resend_after_seconds: float) -> int:
    """Give a job back after a transient failure: queued again, one more failed attempt, and a
    send deadline after the retry's countdown (if the retry message is lost, the sweeper
    re-sends it). Returns the failed attempts so far (0 if this process lost the lease)."""
    row = conn.execute(
        "UPDATE jobs SET status = 'queued', lease_owner = NULL,"
        " failed_attempts = failed_attempts + 1,"
        " lease_expires_at = now() + make_interval(secs => %s)"
        " WHERE id = %s AND status = 'running' AND lease_owner = %s RETURNING failed_attempts",
        (resend_after_seconds, job_id, this_lease_owner()),
    ).fetchone()
    return int(row["failed_attempts"]) if row else 0


def load_job_input(conn: psycopg.Connection, job_id: str) -> dict[str, Any] | None:
    return conn.execute("SELECT * FROM job_inputs WHERE job_id = %s", (job_id,)).fetchone()


def finish_job(
    conn: psycopg.Connection,
    job: dict[str, Any],
    *,
    errcode: int,
    errmsg: str,
    result: dict[str, Any],
    timings: dict[str, float] | None = None,
) -> dict[str, Any] | None:
    """Record the outcome, drop the inputs (image, personal data), create the callback delivery.

    Returns the delivery row (or None). Only a job still queued or running is finished, so two
    deliveries of the same message cannot both finish it.
    """
    status = "done" if errcode == 0 else "failed"
    cur = conn.execute(
        "UPDATE jobs SET status = %s, errcode = %s, errmsg = %s, result = %s, timings = %s,"
        " finished_at = now(), lease_expires_at = NULL, lease_owner = NULL"
        " WHERE id = %s AND status IN ('queued', 'running')",
        (status, errcode, errmsg, Jsonb(result), Jsonb(timings or {}), job["id"]),
    )
    if cur.rowcount != 1:
        return None
    conn.execute("DELETE FROM job_inputs WHERE job_id = %s", (job["id"],))
    url = job.get("callback_url")
    if not url:
        return None
    payload = {
        "errcode": errcode,
        "errmsg": errmsg,
        "data": result,
        "taskId": str(job["id"]),
        "requestId": job.get("request_id"),
    }
    return conn.execute(
        # sent at once by the worker after commit; the sweeper picks it up a minute later
        # only if that message was lost
        "INSERT INTO callback_deliveries (job_id, client_id, url, webhook_id, payload,"
        " next_attempt_at) VALUES (%s, %s, %s, %s, %s, now() + interval '60 seconds')"
        " ON CONFLICT (job_id) DO NOTHING RETURNING *",
        (job["id"], job["client_id"], url, f"msg_{job['id'].hex}", Jsonb(payload)),
    ).fetchone()


def jobs_to_resend(
    conn: psycopg.Connection, send_timeout_seconds: float, limit: int = 500
) -> list[dict[str, Any]]:
    """Jobs to send again, each given a new send deadline in this transaction:

    - queued jobs past their send deadline (message lost: publish failed, broker lost it,
      claim retries ran out, a worker died holding it before claiming);
    - running jobs whose lease expired or whose holder on this host is dead: re-queued, the
      attempt counted as lost.

    A re-sent job's next deadline grows with its sends (a long backlog is not flooded with
    copies); duplicate messages are harmless (the claim refuses them).
    """
    rows = conn.execute(
        "SELECT id, kind, status, lease_owner, lease_expires_at < now() AS expired FROM jobs"
        " WHERE status IN ('queued', 'running')"
        "   AND (lease_expires_at IS NULL OR lease_expires_at < now()"
        "        OR (status = 'running' AND starts_with(lease_owner, %s)))"
        " ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED",
        (socket.gethostname() + ":", limit),
    ).fetchall()
    picked = [
        r
        for r in rows
        if r["expired"] is not False
        or (r["status"] == "running" and lease_owner_dead(r["lease_owner"]))
    ]
    if not picked:
        return []
    return conn.execute(
        "UPDATE jobs SET lost_attempts = lost_attempts + (status = 'running')::int,"
        " status = 'queued', lease_owner = NULL, sends = sends + 1,"
        " lease_expires_at = now() + make_interval(secs => least(%s * (sends + 1), 600))"
        " WHERE id = ANY(%s)"
        " RETURNING id, kind, request_meta->'async' = 'false'::jsonb AS interactive",
        (send_timeout_seconds, [r["id"] for r in picked]),
    ).fetchall()


def jobs_by_request_ids(
    conn: psycopg.Connection, client_id: int, request_ids: list[str]
) -> list[dict[str, Any]]:
    """This client's jobs with any of these requestIds: id, request_id, status, errcode, errmsg."""
    return conn.execute(
        "SELECT id, request_id, status, errcode, errmsg FROM jobs"
        " WHERE client_id = %s AND request_id = ANY(%s)",
        (client_id, request_ids),
    ).fetchall()


def finished_jobs(conn: psycopg.Connection, job_ids: list[uuid.UUID]) -> list[dict[str, Any]]:
    """Those of these jobs that are done or failed: id, status, errcode, errmsg."""
    return conn.execute(
        "SELECT id, status, errcode, errmsg FROM jobs WHERE id = ANY(%s)"
        " AND status IN ('done', 'failed')",
        (job_ids,),
    ).fetchall()


# --- erasure (shared/persons.py erase_person) ---------------------------------------------------


def forget_person(conn: psycopg.Connection, person_id: int) -> int:
    """Remove a person from job rows; how many rows changed.

    Results that name the person as a recognition's match (`_personId`) lose that reference and
    read isMatch "false"; 1:1 verifications name their person in request_meta, and get 0, which
    names no one (ids start at 1): one still waiting for a worker answers 5001 like any
    verification of an unknown person. The key is written out (not bound) so that the partial
    indexes of sql/0004_dba.sql apply.
    """
    ref = str(person_id)
    matches = conn.execute(
        "UPDATE jobs SET result = (result - '_personId') || '{\"isMatch\": \"false\"}'"
        " WHERE result ? '_personId' AND result ->> '_personId' = %s",
        (ref,),
    ).rowcount
    verifications = conn.execute(
        "UPDATE jobs SET request_meta = jsonb_set(request_meta, '{personId}', '0')"
        " WHERE request_meta ? 'personId' AND request_meta ->> 'personId' = %s",
        (ref,),
    ).rowcount
    return matches + verifications


def clear_request_ids(conn: psycopg.Connection, request_ids: list[str]) -> None:
    """Drop these requestIds from their jobs (bulk enrolment's ids derive from an idNum)."""
    if request_ids:
        conn.execute("UPDATE jobs SET request_id = NULL WHERE request_id = ANY(%s)", (request_ids,))
