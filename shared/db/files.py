"""Who holds which file-server object. Table: files (one row per client and path).

A client can use, download and delete only its own rows; the object itself (shared/files/) is
removed when its last row goes. Upload, delete and purge of one path serialise on `lock_path`,
held across the row and the object (shared/files/uploads.py).
"""

from __future__ import annotations

from typing import Any

import psycopg

# Rows past retention that no waiting job refers to (job_inputs exist only until a job ends).
_STALE = (
    "f.last_used_at < now() - make_interval(secs => %(age)s) AND NOT EXISTS ("
    " SELECT 1 FROM job_inputs i JOIN jobs j ON j.id = i.job_id"
    " WHERE i.origin = 'fds' AND i.ref = f.path AND j.client_id = f.client_id)"
)


def lock_path(conn: psycopg.Connection, path: str) -> None:
    """Serialise upload, delete and purge of one path until the transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (path,))


def record_upload(
    conn: psycopg.Connection,
    *,
    client_id: int,
    path: str,
    sha256: bytes,
    size_bytes: int,
    original_size_bytes: int,
    width: int,
    height: int,
    content_type: str,
) -> tuple[dict[str, Any], bool]:
    """The client's row for this path, made now or (a re-upload) marked used now; (row,
    created)."""
    row = conn.execute(
        "INSERT INTO files (client_id, path, sha256, size_bytes, original_size_bytes,"
        " width, height, content_type) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (client_id, path) DO UPDATE SET last_used_at = now()"
        " RETURNING *, (xmax = 0) AS created",
        (client_id, path, sha256, size_bytes, original_size_bytes, width, height, content_type),
    ).fetchone()
    assert row is not None
    return row, bool(row.pop("created"))


def find_file(conn: psycopg.Connection, client_id: int, path: str) -> dict[str, Any] | None:
    return conn.execute(
        "SELECT * FROM files WHERE client_id = %s AND path = %s", (client_id, path)
    ).fetchone()


def touch_file(conn: psycopg.Connection, client_id: int, path: str) -> dict[str, Any] | None:
    """The client's row for this path, marked used now (which keeps it from the purge)."""
    return conn.execute(
        "UPDATE files SET last_used_at = now() WHERE client_id = %s AND path = %s RETURNING *",
        (client_id, path),
    ).fetchone()


def delete_row(conn: psycopg.Connection, client_id: int, path: str) -> bool:
    """Delete the client's row for this path; False if there was none."""
    cur = conn.execute("DELETE FROM files WHERE client_id = %s AND path = %s", (client_id, path))
    return cur.rowcount == 1


def path_in_use(conn: psycopg.Connection, path: str) -> bool:
    """True while any client still holds a row for this path."""
    return (
        conn.execute("SELECT 1 FROM files WHERE path = %s LIMIT 1", (path,)).fetchone() is not None
    )


def stale_paths(conn: psycopg.Connection, age_seconds: float, limit: int) -> list[str]:
    """Up to `limit` paths with a row unused for `age_seconds` that no waiting job refers to."""
    rows = conn.execute(
        f"SELECT DISTINCT f.path FROM files f WHERE {_STALE} LIMIT %(batch)s",  # noqa: S608 - constant SQL
        {"age": age_seconds, "batch": limit},
    ).fetchall()
    return [r["path"] for r in rows]


def delete_stale_rows(conn: psycopg.Connection, path: str, age_seconds: float) -> int:
    """Delete this path's rows that are still stale (checked again under the path's lock)."""
    return conn.execute(
        f"DELETE FROM files f WHERE f.path = %(path)s AND {_STALE}",  # noqa: S608 - constant SQL
        {"path": path, "age": age_seconds},
    ).rowcount


def paths_of_images(conn: psycopg.Connection, image_sha256s: list[bytes]) -> list[str]:
    """The paths of stored objects with these SHA-256s (any client's), in path order."""
    rows = conn.execute(
        "SELECT DISTINCT path FROM files WHERE sha256 = ANY(%s) ORDER BY path", (image_sha256s,)
    ).fetchall()
    return [r["path"] for r in rows]


def delete_rows_of_path(conn: psycopg.Connection, path: str) -> int:
    """Delete every client's row for this path; how many."""
    return conn.execute("DELETE FROM files WHERE path = %s", (path,)).rowcount
