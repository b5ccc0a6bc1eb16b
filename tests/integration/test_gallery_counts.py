"""Gallery sizes come from trigger-maintained counters (sql/0008) that always equal count(*)."""

from __future__ import annotations

import os
import secrets

import numpy as np
import psycopg
import pytest

from shared.db import search as search_repo

TYPES = ("normal", "vip", "inner")


def _exact(conn: psycopg.Connection) -> dict[tuple[int, str], int]:
    """Every (library, person type) face count computed from the tables themselves."""
    rows = conn.execute(
        "SELECT 0 AS lib, p.person_type AS t, count(*) AS n FROM faces f"
        " JOIN persons p ON p.id = f.person_id GROUP BY p.person_type"
        " UNION ALL"
        " SELECT pl.library_id, p.person_type, count(*) FROM faces f"
        " JOIN persons p ON p.id = f.person_id"
        " JOIN person_libraries pl ON pl.person_id = f.person_id"
        " GROUP BY pl.library_id, p.person_type"
    ).fetchall()
    return {(r["lib"], r["t"]): r["n"] for r in rows}


def _counters(conn: psycopg.Connection) -> dict[tuple[int, str], int]:
    rows = conn.execute(
        "SELECT library_id, person_type, faces FROM gallery_counts WHERE faces > 0"
    ).fetchall()
    return {(r["library_id"], r["person_type"]): r["faces"] for r in rows}


def _person(conn: psycopg.Connection, person_type: str) -> int:
    row = conn.execute(
        "INSERT INTO persons (id_num_index, id_num_encrypted, id_num_key_id, id_num_masked,"
        " name, person_type) VALUES (%s, %s, 'k1', '610***********019', 'counter test', %s)"
        " RETURNING id",
        (os.urandom(32), os.urandom(40), person_type),
    ).fetchone()
    return row["id"]


def _face(conn: psycopg.Connection, person_id: int) -> int:
    vec = np.random.default_rng().normal(size=128).astype(np.float32)
    vec /= np.linalg.norm(vec)
    row = conn.execute(
        "INSERT INTO faces (person_id, embedding, box, model, backend)"
        " VALUES (%s, %s, '{0,0,1,1}', 'test', 'test') RETURNING id",
        (person_id, vec),
    ).fetchone()
    return row["id"]


def _library(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "INSERT INTO libraries (lib_id, name) VALUES (%s, 'counter test') RETURNING id",
        (f"cnt-{secrets.token_hex(4)}",),
    ).fetchone()
    return row["id"]


def test_counters_follow_every_change(db: psycopg.Connection) -> None:
    rng = np.random.default_rng(7)
    conn = db  # rolled back at the end
    libs = [_library(conn) for _ in range(3)]
    persons: list[int] = []
    for i in range(12):
        pid = _person(conn, TYPES[i % 3])
        persons.append(pid)
        for lib in rng.choice(libs, size=int(rng.integers(0, 3)), replace=False):
            conn.execute(
                "INSERT INTO person_libraries (person_id, library_id) VALUES (%s, %s)",
                (pid, int(lib)),
            )
        for _ in range(int(rng.integers(0, 4))):
            _face(conn, pid)
    assert _counters(conn) == _exact(conn)

    # a person joins a library after enrolling faces, and leaves another
    conn.execute(
        "INSERT INTO person_libraries (person_id, library_id) VALUES (%s, %s)"
        " ON CONFLICT DO NOTHING",
        (persons[0], libs[2]),
    )
    conn.execute(
        "DELETE FROM person_libraries WHERE person_id = %s AND library_id = %s",
        (persons[1], libs[0]),
    )
    assert _counters(conn) == _exact(conn)

    # person type changes move every face of the person
    for pid in persons[:4]:
        _face(conn, pid)
        conn.execute("UPDATE persons SET person_type = 'vip' WHERE id = %s", (pid,))
    conn.execute("UPDATE persons SET name = 'renamed' WHERE id = %s", (persons[5],))
    assert _counters(conn) == _exact(conn)

    # one face deleted; a person erased (cascades to faces and memberships); a library dropped
    face = conn.execute(
        "SELECT id FROM faces WHERE person_id = ANY(%s) LIMIT 1", (persons,)
    ).fetchone()
    conn.execute("DELETE FROM faces WHERE id = %s", (face["id"],))
    conn.execute("DELETE FROM persons WHERE id = ANY(%s)", (persons[6:9],))
    conn.execute("DELETE FROM libraries WHERE id = %s", (libs[1],))
    assert _counters(conn) == _exact(conn)

    # a transaction that rolls back leaves the counters as they were
    before = _counters(conn)
    with pytest.raises(psycopg.errors.RaiseException), conn.transaction():
        moved = _face(conn, persons[9])
        conn.execute("DELETE FROM persons WHERE id = %s", (persons[10],))
        # a face never changes owner (the counters could not follow): refused
        conn.execute("UPDATE faces SET person_id = %s WHERE id = %s", (persons[11], moved))
    assert _counters(conn) == before == _exact(conn)

    # what recognition reads: exact for no filter, types, and one library
    exact = _exact(conn)
    everything = sum(n for (lib, _), n in exact.items() if lib == 0)
    assert search_repo.count_gallery(conn) == everything
    assert search_repo.count_gallery(conn, person_types=["vip", "inner"]) == sum(
        exact.get((0, t), 0) for t in ("vip", "inner")
    )
    lib = libs[0]
    in_lib = conn.execute(
        "SELECT count(*) AS n FROM faces f JOIN person_libraries pl"
        " ON pl.person_id = f.person_id WHERE pl.library_id = %s",
        (lib,),
    ).fetchone()["n"]
    assert search_repo.count_gallery(conn, library_ids=[lib]) == in_lib
    # several libraries: an upper bound of the exact figure, never above the whole library
    both = conn.execute(
        "SELECT count(*) AS n FROM faces f WHERE EXISTS (SELECT 1 FROM person_libraries pl"
        " WHERE pl.person_id = f.person_id AND pl.library_id = ANY(%s))",
        ([libs[0], libs[2]],),
    ).fetchone()["n"]
    upper = search_repo.count_gallery(conn, library_ids=[libs[0], libs[2]])
    assert both <= upper <= everything

    # the repair function agrees with the triggers
    conn.execute("SELECT gallery_counts_rebuild()")
    assert _counters(conn) == _exact(conn)
