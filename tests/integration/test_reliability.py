"""The job lifecycle's guarantees on the real stack (docs/reliability.md): a committed job whose
message never left is re-sent; the Postgres lease decides who runs a job; pool processes log;
retention keeps the audit's legal minimum. The fault suite (tests/faults) kills servers."""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
import uuid

import psycopg
import pytest

from shared.db import jobs as jobs_repo
from shared.db import ops as ops_repo
from shared.db import transaction
from tests.conftest import Stack, new_client, small_jpeg_b64
from tests.helpers import eventually


def _job(client: dict, send_timeout: float) -> str:
    """A recognition job whose message is never sent (as if the publish failed), committed
    (or, under `db`, in the test's transaction)."""
    with transaction() as conn:
        job, created = jobs_repo.create_job(
            conn,
            kind="recognize",
            client_id=client["id"],
            request_id=None,
            request_hash=os.urandom(32),
            meta={},
            callback_url=None,
            origin="self",
            image=base64.b64decode(small_jpeg_b64("obama_2.jpg", 400)),
            ref=None,
            max_attempts=3,
            send_timeout_seconds=send_timeout,
        )
    assert created
    return str(job["id"])


def _ran(job: dict) -> bool:
    """The job was run to its end by a worker: a match or no match (5002 on an empty library,
    when this file runs alone), not a failure of the machinery (6003, 9000)."""
    return job["status"] in ("done", "failed") and job["errcode"] in (0, 5002)


def _wait_status(stack: Stack, job_id: str, timeout: float = 240) -> dict:
    with stack.db() as conn:

        def finished() -> dict | None:
            job = conn.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
            return job if job["status"] in ("done", "failed") else None

        return eventually(finished, timeout, what=f"job {job_id} finishes")


def _recogniser(stack: Stack) -> dict:
    return stack.client(scopes=["face:recognize"])


def test_a_job_whose_message_never_left_is_sent_by_the_sweeper(stack: Stack) -> None:
    job_id = _job(_recogniser(stack), send_timeout=1)
    job = _wait_status(stack, job_id)
    assert _ran(job), job["errmsg"]
    assert job["sends"] >= 2  # the API's send (lost here) and the sweeper's
    assert job["attempts"] == 1 and job["lost_attempts"] == 0


def test_the_lease_decides_who_runs_a_job(db: psycopg.Connection) -> None:
    job_id = _job(new_client(db), send_timeout=3600)  # no other process sees it
    try:
        with transaction() as conn:
            outcome, job = jobs_repo.claim_job(conn, job_id, lease_seconds=3600)
        assert outcome == "claimed" and job["attempts"] == 1
        with transaction() as conn:  # a duplicate message while this process holds the lease
            assert jobs_repo.claim_job(conn, job_id, lease_seconds=3600) == ("busy", None)
        with transaction() as conn:  # held elsewhere: trusted until the lease ends
            conn.execute("UPDATE jobs SET lease_owner = 'elsewhere:1' WHERE id = %s", (job_id,))
            assert jobs_repo.claim_job(conn, job_id, lease_seconds=3600)[0] == "busy"
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        with transaction() as conn:  # held by a dead process on this host: taken over at once
            conn.execute(
                "UPDATE jobs SET lease_owner = %s WHERE id = %s",
                (f"{socket.gethostname()}:{dead.pid}", job_id),
            )
            outcome, job = jobs_repo.claim_job(conn, job_id, lease_seconds=3600)
        assert outcome == "claimed" and job["lost_attempts"] == 1 and job["attempts"] == 2
        with transaction() as conn:  # an expired lease: taken over too
            conn.execute(
                "UPDATE jobs SET lease_owner = 'elsewhere:1', lease_expires_at = now()"
                " - interval '1 second' WHERE id = %s",
                (job_id,),
            )
            outcome, job = jobs_repo.claim_job(conn, job_id, lease_seconds=3600)
        assert outcome == "claimed" and job["lost_attempts"] == 2
    finally:
        with transaction() as conn:
            job = jobs_repo.get_job(conn, job_id)
            jobs_repo.finish_job(conn, job, errcode=9000, errmsg="test", result={})
    with transaction() as conn:  # a finished job is never claimed again
        assert jobs_repo.claim_job(conn, job_id, lease_seconds=60) == ("finished", None)


def test_a_running_job_whose_worker_is_gone_is_requeued_by_the_sweeper(stack: Stack) -> None:
    job_id = _job(_recogniser(stack), send_timeout=3600)
    with transaction() as conn:
        jobs_repo.claim_job(conn, job_id, lease_seconds=3600)
        conn.execute(  # as if its worker died on another host long ago
            "UPDATE jobs SET lease_owner = 'elsewhere:1', lease_expires_at = now()"
            " - interval '1 second' WHERE id = %s",
            (job_id,),
        )
    job = _wait_status(stack, job_id)
    assert _ran(job), job["errmsg"]
    assert job["lost_attempts"] == 1 and job["failed_attempts"] == 0


def test_pool_processes_log_task_outcomes(stack: Stack) -> None:
    job_id = _job(_recogniser(stack), send_timeout=1)
    assert _ran(_wait_status(stack, job_id))

    def logged() -> str | None:
        text = "".join(p.read_text() for p in stack.log_dir.glob("worker*.log"))
        return text if f"job {job_id} (recognize) " in text else None

    text = eventually(logged, 120, 0.5, f"the worker logs job {job_id}")
    assert re.search(rf"job {job_id} \(recognize\) (done|failed: errcode 5002)", text)
    assert "pool process ready in" in text


def test_retention_purges_old_rows_and_keeps_the_audit_minimum(db: psycopg.Connection) -> None:
    client = new_client(db)
    old_job = uuid.uuid4()
    conn = db  # rolled back at the end: the purge touches nothing of the other tests
    conn.execute(
        "INSERT INTO jobs (id, kind, status, client_id, request_hash, finished_at)"
        " VALUES (%s, 'recognize', 'done', %s, '\\x00', now() - interval '40 days')",
        (old_job, client["id"]),
    )
    ids = [
        conn.execute(
            "INSERT INTO audit_log (at, method, endpoint, errcode, http_status, duration_ms)"
            " VALUES (now() - %s::interval, 'POST', '/retention-test', 0, 200, 1) RETURNING id",
            (age,),
        ).fetchone()["id"]
        for age in ("6 years", "1 year")
    ]
    # younger than 5 years: refused
    with pytest.raises(psycopg.errors.RaiseException), conn.transaction():
        conn.execute("DELETE FROM audit_log WHERE id = %s", (ids[1],))
    counts = ops_repo.purge_expired(conn, jobs_days=30, audit_days=1825, callback_attempts_days=90)
    assert counts["jobs"] >= 1 and counts["audit_log"] >= 1
    assert conn.execute("SELECT 1 FROM jobs WHERE id = %s", (old_job,)).fetchone() is None
    left = [
        r["id"]
        for r in conn.execute("SELECT id FROM audit_log WHERE id = ANY(%s)", (ids,)).fetchall()
    ]
    assert left == [ids[1]]
