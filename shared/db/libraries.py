"""Libraries and the persons in them. Tables: libraries, person_libraries.

(Bulk enrolment adds its persons to libraries in shared/db/faces.py `add_faces_bulk`, in one
statement with the rest of the batch.)
"""

from __future__ import annotations

from typing import Any

import psycopg

from shared.errors import E, FaceLibError


def library_ids(conn: psycopg.Connection, lib_ids: list[str]) -> list[int]:
    """Internal ids of the named libraries; PARAM_INVALID naming the first unknown one."""
    rows = conn.execute(
        "SELECT id, lib_id FROM libraries WHERE lib_id = ANY(%s)", (lib_ids,)
    ).fetchall()
    known = {r["lib_id"]: r["id"] for r in rows}
    for lib in lib_ids:
        if lib not in known:
            raise FaceLibError(
                E.PARAM_INVALID, detail=f"libIds: unknown library {lib!r}", data={"field": "libIds"}
            )
    return [known[lib] for lib in lib_ids]


def add_to_libraries(conn: psycopg.Connection, person_id: int, ids: list[int]) -> None:
    conn.execute(
        "INSERT INTO person_libraries (person_id, library_id) SELECT %s, unnest(%s::bigint[])"
        " ON CONFLICT DO NOTHING",
        (person_id, ids),
    )


def create_library(conn: psycopg.Connection, lib_id: str, name: str, client_id: int) -> dict:
    row = conn.execute(
        "INSERT INTO libraries (lib_id, name, created_by) VALUES (%s, %s, %s)"
        " ON CONFLICT (lib_id) DO NOTHING RETURNING *",
        (lib_id, name, client_id),
    ).fetchone()
    if row is None:
        raise FaceLibError(
            E.PARAM_INVALID, detail=f"libId {lib_id!r} exists", data={"field": "libId"}
        )
    return row


def list_libraries(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT l.lib_id, l.name, l.created_at, count(pl.person_id) AS persons FROM libraries l"
        " LEFT JOIN person_libraries pl ON pl.library_id = l.id GROUP BY l.id ORDER BY l.lib_id"
    ).fetchall()


def delete_library(conn: psycopg.Connection, lib_id: str) -> bool:
    """Delete a library and its memberships (the persons stay, in their other libraries)."""
    if lib_id == "default":
        raise FaceLibError(E.PARAM_INVALID, detail="the default library cannot be deleted")
    return conn.execute("DELETE FROM libraries WHERE lib_id = %s", (lib_id,)).rowcount == 1
