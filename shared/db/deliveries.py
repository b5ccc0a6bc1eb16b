"""Callback deliveries and their attempts. Tables: callback_deliveries, callback_attempts.

A delivery is created with its job's outcome (shared/db/jobs.py `finish_job`); here it is
claimed for an attempt, moved on after it (delivered, pending again, or dead), found again by
the sweeper, listed and replayed.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg


def claim_delivery(conn: psycopg.Connection, delivery_id: int) -> dict[str, Any] | None:
    """Take a pending delivery for one attempt (skipped if another worker holds it)."""
    return conn.execute(
        "UPDATE callback_deliveries d SET status = 'delivering', claimed_at = now()"
        " FROM api_clients c WHERE d.id = ("
        "   SELECT id FROM callback_deliveries WHERE id = %s AND status = 'pending'"
        "   FOR UPDATE SKIP LOCKED)"
        " AND c.id = d.client_id"
        " RETURNING d.*, c.callback_secret, c.callback_secret_previous",
        (delivery_id,),
    ).fetchone()


def record_attempt(
    conn: psycopg.Connection,
    delivery: dict[str, Any],
    *,
    http_status: int | None,
    error: str | None,
    duration_ms: int,
    schedule: tuple[int, ...],
    jitter: float,
) -> str:
    """Store an attempt and move the delivery on: delivered, pending (next try) or dead."""
    attempt_no = delivery["attempts"] + 1
    conn.execute(
        "INSERT INTO callback_attempts (delivery_id, attempt_no, http_status, error, duration_ms)"
        " SELECT %s, coalesce(max(attempt_no), 0) + 1, %s, %s, %s FROM callback_attempts"
        " WHERE delivery_id = %s",
        (delivery["id"], http_status, error, duration_ms, delivery["id"]),
    )
    if error is None:
        status = "delivered"
        conn.execute(
            "UPDATE callback_deliveries SET status = 'delivered', attempts = %s,"
            " last_http_status = %s, last_error = NULL, delivered_at = now() WHERE id = %s",
            (attempt_no, http_status, delivery["id"]),
        )
    elif attempt_no > len(schedule):
        status = "dead"
        conn.execute(
            "UPDATE callback_deliveries SET status = 'dead', attempts = %s,"
            " last_http_status = %s, last_error = %s, dead_at = now() WHERE id = %s",
            (attempt_no, http_status, error, delivery["id"]),
        )
    else:
        status = "pending"
        delay = schedule[attempt_no - 1] * jitter
        conn.execute(
            "UPDATE callback_deliveries SET status = 'pending', attempts = %s,"
            " last_http_status = %s, last_error = %s,"
            " next_attempt_at = now() + make_interval(secs => %s) WHERE id = %s",
            (attempt_no, http_status, error, delay, delivery["id"]),
        )
    return status


def due_deliveries(conn: psycopg.Connection, stale_after_seconds: float) -> list[int]:
    """Pending deliveries now due, after un-sticking ones whose worker died mid-attempt.

    Each one picked is pushed a minute ahead, so a sweep that runs again before its attempt
    starts does not dispatch it twice (the claim would refuse the second anyway).
    """
    conn.execute(
        "UPDATE callback_deliveries SET status = 'pending' WHERE status = 'delivering'"
        " AND claimed_at < now() - make_interval(secs => %s)",
        (stale_after_seconds,),
    )
    rows = conn.execute(
        "UPDATE callback_deliveries SET next_attempt_at = now() + interval '60 seconds'"
        " WHERE id IN (SELECT id FROM callback_deliveries WHERE status = 'pending'"
        "   AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT 500"
        "   FOR UPDATE SKIP LOCKED) RETURNING id"
    ).fetchall()
    return [r["id"] for r in rows]


DELIVERY_COLUMNS = (
    "id, job_id, status, attempts, last_http_status, last_error, created_at, delivered_at, dead_at"
)


def delivery_for_job(conn: psycopg.Connection, job_id: uuid.UUID | str) -> dict[str, Any] | None:
    return conn.execute(
        f"SELECT {DELIVERY_COLUMNS} FROM callback_deliveries WHERE job_id = %s",  # noqa: S608
        (job_id,),
    ).fetchone()


def list_deliveries(
    conn: psycopg.Connection, client_id: int, status: str | None, limit: int
) -> list[dict[str, Any]]:
    """A client's callback deliveries, newest first, optionally of one status."""
    return conn.execute(
        f"SELECT {DELIVERY_COLUMNS} FROM callback_deliveries WHERE client_id = %s"  # noqa: S608
        " AND (%s::text IS NULL OR status = %s) ORDER BY id DESC LIMIT %s",
        (client_id, status, status, limit),
    ).fetchall()


def replay_delivery(conn: psycopg.Connection, delivery_id: int, client_id: int) -> bool:
    """Put a dead (or delivered) delivery back in the queue for a fresh series of attempts."""
    cur = conn.execute(
        "UPDATE callback_deliveries SET status = 'pending', attempts = 0, next_attempt_at = now(),"
        " dead_at = NULL WHERE id = %s AND client_id = %s AND status IN ('dead', 'delivered')",
        (delivery_id, client_id),
    )
    return cur.rowcount == 1


def forget_person(conn: psycopg.Connection, person_id: int) -> int:
    """Erasure: callback payloads that name the person as a recognition's match lose that
    reference and read isMatch "false" (as their jobs' results do); how many changed."""
    return conn.execute(
        "UPDATE callback_deliveries SET payload = jsonb_set(payload, '{data}',"
        " ((payload -> 'data') - '_personId') || '{\"isMatch\": \"false\"}')"
        " WHERE payload -> 'data' ? '_personId' AND payload -> 'data' ->> '_personId' = %s",
        (str(person_id),),
    ).rowcount
