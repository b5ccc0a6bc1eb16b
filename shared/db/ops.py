"""Operations: retention, the metrics' aggregates and the readiness probe. Tables read or purged:
jobs, callback_attempts, callback_deliveries, audit_log (each owned by its own repository
module; these statements span them or serve the operator, not a request).
"""

from __future__ import annotations

from typing import Any

import psycopg

# the stages of a job's `timings` (worker/tasks.py and the engine write them) that /metrics shows,
# one histogram each
JOB_STAGES = ("queue_wait", "decode", "detect", "landmarks", "embed", "db", "total")


def ping(conn: psycopg.Connection) -> None:
    """One round trip: readiness checks that the database answers."""
    conn.execute("SELECT 1")


def purge_expired(
    conn: psycopg.Connection,
    *,
    jobs_days: float,
    audit_days: float,
    callback_attempts_days: float,
    batch: int = 5000,
) -> dict[str, int]:
    """Delete rows past their retention, in bounded batches (docs/reliability.md).

    Finished jobs go with their callback delivery, except while that delivery is still pending;
    callback attempts of deliveries long finished; audit rows past the legal minimum.
    """
    jobs = conn.execute(
        "DELETE FROM jobs WHERE id IN (SELECT j.id FROM jobs j"
        "  WHERE j.status IN ('done', 'failed')"
        "    AND j.finished_at < now() - make_interval(days => %s)"
        "    AND NOT EXISTS (SELECT 1 FROM callback_deliveries d WHERE d.job_id = j.id"
        "                    AND d.status IN ('pending', 'delivering'))"
        "  LIMIT %s)",
        (jobs_days, batch),
    ).rowcount
    attempts = conn.execute(
        "DELETE FROM callback_attempts WHERE id IN (SELECT id FROM callback_attempts"
        "  WHERE attempted_at < now() - make_interval(days => %s) LIMIT %s)",
        (callback_attempts_days, batch),
    ).rowcount
    audit = conn.execute(
        "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log"
        "  WHERE at < now() - make_interval(days => %s) ORDER BY at LIMIT %s)",
        (audit_days, batch),
    ).rowcount
    return {"jobs": jobs, "callback_attempts": attempts, "audit_log": audit}


# --- metrics (api/metrics.py reads them at scrape time) -------------------------------------------

# The counters /metrics shows, by name: each a list of rows with a count `n` and its labels.
_METRIC_COUNTS = {
    # finished jobs by kind and errcode
    "finished_jobs": "SELECT kind, errcode, count(*) AS n FROM jobs"
    " WHERE status IN ('done', 'failed') GROUP BY kind, errcode",
    # jobs not finished, by status (queued, running)
    "open_jobs": "SELECT status, count(*) AS n FROM jobs"
    " WHERE status IN ('queued', 'running') GROUP BY status",
    # callback attempts by outcome `o`: delivered or failed
    "callback_attempts": "SELECT CASE WHEN error IS NULL THEN 'delivered' ELSE 'failed' END AS o,"
    " count(*) AS n FROM callback_attempts GROUP BY 1",
    # callback deliveries by status
    "deliveries": "SELECT status, count(*) AS n FROM callback_deliveries GROUP BY status",
}


def metric_counts(conn: psycopg.Connection) -> dict[str, list[dict[str, Any]]]:
    """The counters of /metrics (`_METRIC_COUNTS`): name -> rows (labels and n)."""
    return {name: conn.execute(query).fetchall() for name, query in _METRIC_COUNTS.items()}


def stage_histogram(
    conn: psycopg.Connection, stage: str, buckets: tuple[float, ...]
) -> dict[str, Any]:
    """A cumulative histogram of one stage's seconds over the jobs that timed it: n (jobs),
    s (sum of seconds) and b<i> (jobs with at most buckets[i] seconds)."""
    if stage not in JOB_STAGES:
        raise ValueError(f"unknown job stage {stage!r}")
    counts = ", ".join(
        f"count(*) FILTER (WHERE v <= {float(b)!r}) AS b{i}" for i, b in enumerate(buckets)
    )
    row = conn.execute(
        f"SELECT count(*) AS n, coalesce(sum(v), 0) AS s, {counts} FROM ("  # noqa: S608 - fixed names
        f" SELECT (timings->>'{stage}')::float8 AS v FROM jobs"
        f" WHERE timings ? '{stage}') t"
    ).fetchone()
    assert row is not None
    return row
