"""The audit trail. Table: audit_log.

Append-only (sql/0003_audit.sql, 0006_security.sql): triggers refuse every UPDATE, DELETE and
TRUNCATE except clearing `person_ref` (an erasure, or a blind index whose idNum never enrolled)
and the retention purge (shared/db/ops.py `purge_expired`).
"""

from __future__ import annotations

import psycopg


def write_row(
    conn: psycopg.Connection,
    *,
    client_id: int | None,
    method: str,
    endpoint: str,
    person_ref: str | None,
    errcode: int,
    http_status: int,
    task_id: str | None,
    source_ip: str | None,
    request_id: str | None,
    duration_ms: int,
) -> None:
    """One API request: who, what, outcome; `person_ref` is p:<id> or b:<blind index hex>."""
    conn.execute(
        "INSERT INTO audit_log (client_id, method, endpoint, person_ref, errcode,"
        " http_status, task_id, source_ip, request_id, duration_ms)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            client_id,
            method,
            endpoint,
            person_ref,
            errcode,
            http_status,
            task_id,
            source_ip,
            request_id,
            duration_ms,
        ),
    )


def forget_unenrolled(conn: psycopg.Connection, grace: str) -> None:
    """Clear the blind index of rows older than `grace` (an interval, e.g. '1 day') whose idNum
    is not enrolled (sql/0006's audit_forget_unenrolled)."""
    conn.execute("SELECT audit_forget_unenrolled(%s::interval)", (grace,))


def forget_person(conn: psycopg.Connection, refs: list[str]) -> int:
    """Erasure: clear the pointer of rows that name the person (`p:<id>`, `b:<blind index>`),
    keeping everything else; how many rows."""
    return conn.execute(
        "UPDATE audit_log SET person_ref = NULL WHERE person_ref = ANY(%s)", (refs,)
    ).rowcount
