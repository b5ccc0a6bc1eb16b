"""Search at scale (sql/0009, docs/scaling.md): recall of the repository's search path against
brute force, the bulk path equal to the row-by-row one, `facelib reindex`, and the embedded
PostgreSQL sized for the workload. Results only: no timings, no query plans."""

from __future__ import annotations

import os
import secrets
import uuid

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg.rows import dict_row

from shared.db import faces as faces_repo
from shared.db import libraries as libraries_repo
from shared.db import persons as persons_repo
from shared.db import search as search_repo
from tests.conftest import Services, new_id_num

DIM = 128


def _gallery(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit vectors from a correlated Gaussian (a decaying spectrum, as face embeddings have)."""
    basis = np.linalg.qr(rng.normal(size=(DIM, DIM)))[0]
    scales = 1.0 / np.sqrt(1.0 + np.arange(DIM))
    x = 0.6 + (rng.normal(size=(n, DIM)) * scales) @ basis.T  # a common mean, as real faces
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _moved(rng: np.random.Generator, x: np.ndarray, distance: float) -> np.ndarray:
    """Each row moved to cosine distance `distance` of itself (a 'same person' probe)."""
    u = rng.normal(size=x.shape)
    u -= (u * x).sum(1, keepdims=True) * x
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    theta = np.arccos(1.0 - distance)
    return (np.cos(theta) * x + np.sin(theta) * u).astype(np.float32)


def _items(vectors: np.ndarray, person_type: str = "normal") -> list[dict]:
    return [
        {
            "id_num": new_id_num(),
            "name": f"scale test {i}",
            "person_type": person_type,
            "customer_id": f"C{i}",
            "embedding": v,
            "box": [1, 2, 3, 4],
            "quality": {"size_px": 100.0},
            "image_sha256": secrets.token_bytes(32),
            "job_id": uuid.uuid4(),
        }
        for i, v in enumerate(vectors)
    ]


def _counters_exact(conn: psycopg.Connection) -> bool:
    exact = conn.execute(
        "SELECT 0 AS lib, p.person_type AS t, count(*) AS n FROM faces f"
        " JOIN persons p ON p.id = f.person_id GROUP BY p.person_type"
        " UNION ALL SELECT pl.library_id, p.person_type, count(*) FROM faces f"
        " JOIN persons p ON p.id = f.person_id"
        " JOIN person_libraries pl ON pl.person_id = f.person_id"
        " GROUP BY pl.library_id, p.person_type"
    ).fetchall()
    counters = conn.execute(
        "SELECT library_id, person_type, faces FROM gallery_counts WHERE faces > 0"
    ).fetchall()
    return {(r["lib"], r["t"]): r["n"] for r in exact} == {
        (r["library_id"], r["person_type"]): r["faces"] for r in counters
    }


def _face_as_stored(item: dict) -> tuple:
    """The face row an item should leave (as `stored` reads it back)."""
    embedding = np.asarray(item["embedding"], dtype=np.float32).tobytes()
    return (
        embedding,
        [1, 2, 3, 4],
        {"size_px": 100.0},
        "m",
        "b",
        item["job_id"],
        item["image_sha256"],
    )


def test_bulk_path_equals_row_by_row(db: psycopg.Connection) -> None:
    from shared.settings import get_settings

    settings = get_settings()
    rng = np.random.default_rng(5)
    vectors = _gallery(rng, 40)
    conn = db  # rolled back at the end
    lib = conn.execute(
        "INSERT INTO libraries (lib_id) VALUES (%s) RETURNING id",
        (f"b-{secrets.token_hex(3)}",),
    ).fetchone()["id"]
    libs = libraries_repo.library_ids(conn, ["default"]) + [lib]
    bulk_items, row_items = _items(vectors[:20]), _items(vectors[20:])
    # one person twice in the bulk input: one person row, two faces, the last fields win
    bulk_items[5] = {**bulk_items[5], "id_num": bulk_items[4]["id_num"], "name": "last"}
    ids = faces_repo.add_faces_bulk(
        conn, settings, bulk_items, library_ids=libs, client_id=None, model="m", backend="b"
    )
    for item in row_items:
        person = persons_repo.upsert_person(
            conn,
            settings,
            id_num=item["id_num"],
            name=item["name"],
            person_type=item["person_type"],
            customer_id=item["customer_id"],
            client_id=None,
        )
        libraries_repo.add_to_libraries(conn, person["id"], libs)
        faces_repo.add_face(
            conn,
            person_id=person["id"],
            embedding=item["embedding"],
            box=item["box"],
            quality=item["quality"],
            model="m",
            backend="b",
            job_id=item["job_id"],
            image_sha256=item["image_sha256"],
        )

    def stored(item: dict) -> dict:
        person = persons_repo.find_person(conn, settings, item["id_num"])
        assert person is not None
        faces = conn.execute(
            "SELECT embedding, box, quality, model, backend, job_id, image_sha256"
            " FROM faces WHERE person_id = %s ORDER BY id",
            (person["id"],),
        ).fetchall()
        members = conn.execute(
            "SELECT library_id FROM person_libraries WHERE person_id = %s ORDER BY 1",
            (person["id"],),
        ).fetchall()
        return {
            "id_num": persons_repo.decrypt_id_num(settings, person),
            "masked": person["id_num_masked"],
            "fields": (person["name"], person["person_type"], person["customer_id"]),
            "libraries": [m["library_id"] for m in members],
            "faces": [
                (
                    np.asarray(f["embedding"].to_numpy()).tobytes(),
                    f["box"],
                    f["quality"],
                    f["model"],
                    f["backend"],
                    f["job_id"],
                    bytes(f["image_sha256"]),
                )
                for f in faces
            ],
        }

    for item in row_items:
        s = stored(item)
        assert s["id_num"] == item["id_num"] and s["libraries"] == sorted(libs)
        assert s["fields"] == (item["name"], "normal", item["customer_id"])
        assert s["faces"] == [_face_as_stored(item)]
    # the same shape through the bulk path
    for k, item in enumerate(bulk_items):
        s = stored(item)
        assert s["id_num"] == item["id_num"] and s["libraries"] == sorted(libs)
        assert _face_as_stored(item) in s["faces"]
        face = conn.execute("SELECT person_id FROM faces WHERE id = %s", (ids[k],)).fetchone()
        assert face is not None and ids[k] is not None
        if k in (4, 5):
            assert len(s["faces"]) == 2 and s["fields"][0] == "last"
        else:
            assert len(s["faces"]) == 1 and s["fields"] == (item["name"], "normal", f"C{k}")
    assert _counters_exact(conn)

    # an update through the bulk path: customer_id None keeps the stored one; the face cap
    again = [{**bulk_items[0], "name": "renamed", "customer_id": None}] * (
        settings.faces_per_person + 2
    )
    again = [{**a, "job_id": uuid.uuid4()} for a in again]
    ids = faces_repo.add_faces_bulk(
        conn, settings, again, library_ids=[], client_id=None, model="m", backend="b"
    )
    # one face stored already: cap - 1 more go in, the rest are refused (None)
    assert sum(i is not None for i in ids) == settings.faces_per_person - 1
    assert ids[-3:] == [None, None, None]
    s = stored(bulk_items[0])
    assert s["fields"] == ("renamed", "normal", "C0")
    assert len(s["faces"]) == settings.faces_per_person
    assert _counters_exact(conn)


def test_search_recall_against_brute_force(db: psycopg.Connection) -> None:
    """4,000 faces: the repository's search (HNSW halfvec + exact re-rank) finds the true
    nearest face of 'same person' probes, unfiltered and filtered (iterative scan), and its
    distances are the exact float32 ones."""
    from shared.settings import get_settings

    settings = get_settings()
    rng = np.random.default_rng(16)
    n = 4000
    vectors = _gallery(rng, n)
    conn = db  # rolled back at the end
    lib = conn.execute(
        "INSERT INTO libraries (lib_id) VALUES (%s) RETURNING id",
        (f"r-{secrets.token_hex(3)}",),
    ).fetchone()["id"]
    default = libraries_repo.library_ids(conn, ["default"])
    ids = np.array(
        faces_repo.add_faces_bulk(
            conn,
            settings,
            _items(vectors[:1000]),
            library_ids=default + [lib],
            client_id=None,
            model="m",
            backend="b",
        )
        + faces_repo.add_faces_bulk(
            conn,
            settings,
            _items(vectors[1000:1300], person_type="vip") + _items(vectors[1300:]),
            library_ids=default,
            client_id=None,
            model="m",
            backend="b",
        )
    )
    # the gallery's other faces (if any) count too
    others = conn.execute(
        "SELECT id, embedding FROM faces WHERE id <> ALL(%s)", (ids.tolist(),)
    ).fetchall()
    all_ids = np.concatenate([ids, [r["id"] for r in others]]).astype(np.int64)
    all_vecs = np.concatenate(
        [vectors] + [np.asarray(r["embedding"].to_numpy())[None] for r in others]
    ).astype(np.float32)

    targets = rng.choice(n, 200, replace=False)
    probes = _moved(rng, vectors[targets], 0.06)
    hits = 0
    for probe in probes:
        rows = search_repo.nearest_faces(conn, probe, limit=20, ef_search=settings.hnsw_ef_search)
        cos = all_vecs @ probe
        hits += rows[0]["face_id"] == all_ids[int(np.argmax(cos))]
        # exact distances, in order
        got = np.array([r["distance"] for r in rows])
        assert np.all(np.diff(got) >= -1e-12)
        position = {int(i): k for k, i in enumerate(all_ids)}
        found = all_vecs[[position[r["face_id"]] for r in rows]]
        expected = 1.0 - found @ probe / np.linalg.norm(probe)
        assert np.allclose(got, expected, atol=1e-5)
    assert hits >= 0.99 * len(probes)

    # filtered: the library holds a quarter of the faces; iterative scan, not exact
    members = np.arange(1000)
    in_lib = rng.choice(members, 100, replace=False)
    probes = _moved(rng, vectors[in_lib], 0.06)
    hits = 0
    for probe in probes:
        rows = search_repo.nearest_faces(
            conn, probe, limit=20, ef_search=settings.hnsw_ef_search, library_ids=[lib]
        )
        assert len(rows) == 20 and set(r["face_id"] for r in rows) <= set(ids[:1000])
        hits += rows[0]["face_id"] == ids[int(np.argmax(vectors[:1000] @ probe))]
        # the exact path (a small filtered gallery) is exactly numpy's top 20
        exact = search_repo.nearest_faces(
            conn, probe, limit=20, ef_search=40, library_ids=[lib], exact=True
        )
        top = np.argsort(-(vectors[:1000] @ probe), kind="stable")[:20]
        assert [r["face_id"] for r in exact] == [int(ids[i]) for i in top]
    assert hits >= 0.99 * len(probes)

    # filtered by person type: vip (300 faces of this test, and any other vip face)
    vip_rows = conn.execute(
        "SELECT f.id, f.embedding FROM faces f JOIN persons p ON p.id = f.person_id"
        " WHERE p.person_type = 'vip' ORDER BY f.id"
    ).fetchall()
    vip_ids = np.array([r["id"] for r in vip_rows])
    vip_vecs = np.stack([np.asarray(r["embedding"].to_numpy()) for r in vip_rows])
    probes = _moved(rng, vectors[rng.choice(np.arange(1000, 1300), 50, replace=False)], 0.06)
    hits = 0
    for probe in probes:
        rows = search_repo.nearest_faces(
            conn, probe, limit=20, ef_search=settings.hnsw_ef_search, person_types=["vip"]
        )
        assert len(rows) == 20 and {r["face_id"] for r in rows} <= set(vip_ids.tolist())
        hits += rows[0]["face_id"] == vip_ids[int(np.argmax(vip_vecs @ probe))]
    assert hits >= 0.98 * len(probes)


def test_search_ef_grows_with_the_library() -> None:
    assert search_repo.search_ef(100, 5_000, 4000, 400) == 100
    assert search_repo.search_ef(100, 50_000, 4000, 400) == 200
    assert search_repo.search_ef(100, 100_000, 4000, 400) == 400
    assert search_repo.search_ef(100, 250_000, 4000, 400) == 400
    assert search_repo.search_ef(100, 10_000_000, 4000, 5000) == search_repo.SEARCH_EF_MAX
    assert search_repo.search_ef(100, 10_000_000, 0, 400) == 100
    assert search_repo.partitions_for(0, 250_000) == 1
    assert search_repo.partitions_for(1_000_000, 250_000) == 4
    assert search_repo.partitions_for(1_000_001, 250_000) == 5


def test_reindex_rebuilds_the_search_index(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.cli import main
    from shared.settings import get_settings

    settings = get_settings()
    monkeypatch.setattr(search_repo, "PARTITIONS_TTL", 0.2)  # the swap waits this long

    def options() -> list[str]:
        with services.db() as conn:
            assert search_repo.search_index_names(conn) == [
                search_repo.SEARCH_INDEX
            ]  # no _new leftover
            row = conn.execute(
                "SELECT c.reloptions, pg_get_indexdef(c.oid) AS def FROM pg_class c"
                " WHERE c.relname = %s",
                (search_repo.SEARCH_INDEX,),
            ).fetchone()
            assert row is not None and "halfvec_cosine_ops" in row["def"]
            return sorted(row["reloptions"])

    def finds_new_face() -> None:
        rng = np.random.default_rng()
        vec = _gallery(rng, 3)
        with psycopg.connect(services.database_url, row_factory=dict_row) as conn:
            register_vector(conn)
            ids = faces_repo.add_faces_bulk(
                conn, settings, _items(vec), library_ids=[], client_id=None, model="m", backend="b"
            )
            for k in range(3):
                rows = search_repo.nearest_faces(conn, vec[k], limit=3, ef_search=40)
                assert rows[0]["face_id"] == ids[k] and rows[0]["distance"] < 1e-6
            conn.rollback()

    try:
        assert main(["reindex", "--m", "12", "--ef-construction", "40", "--workers", "0"]) == 0
        assert options() == ["ef_construction=40", "m=12"]
        finds_new_face()
        # two partitions (partial indexes on id % 2), built beside the old index and swapped
        with services.db() as conn:
            search_repo.build_search_index(
                conn, m=8, ef_construction=32, partitions=2, concurrently=True
            )
            names = search_repo.search_index_names(conn)
            assert names == [f"{search_repo.SEARCH_INDEX}_0of2", f"{search_repo.SEARCH_INDEX}_1of2"]
            assert search_repo.search_partitions(conn) == 2
        finds_new_face()
        assert main(["reindex", "--m", "3", "--ef-construction", "2"]) == 2  # refused
    finally:
        assert main(["reindex", "--offline"]) == 0  # back to the settings' graph, one index
    assert options() == [
        f"ef_construction={settings.hnsw_ef_construction}",
        f"m={settings.hnsw_m}",
    ]
    finds_new_face()


@pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="an external PostgreSQL")
def test_embedded_postgres_is_sized_for_the_machine(tmp_path) -> None:
    from shared.cli.embedded import EmbeddedPostgres, _normal, tuned_settings

    pg = EmbeddedPostgres(tmp_path / "pg")
    try:
        url = pg.start()
        wanted = tuned_settings()
        with psycopg.connect(url) as conn:
            pid = conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
            for name, value in wanted.items():
                row = conn.execute(
                    "SELECT setting || coalesce(' ' || unit, '') FROM pg_settings WHERE name = %s",
                    (name,),
                ).fetchone()
                assert _normal(row[0]) == _normal(value), name
        # found running with the same settings: no restart
        url2 = EmbeddedPostgres(tmp_path / "pg").start()
        with psycopg.connect(url2) as conn:
            assert conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0] == pid
    finally:
        pg.stop()


def test_tuned_settings_follow_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.cli.embedded import tuned_settings

    monkeypatch.delenv("FACELIB_PG_MEMORY_MB", raising=False)
    t = tuned_settings(memory_bytes=32 * 1024**3, cpus=8)
    assert t["shared_buffers"] == "4096MB"  # half of a quarter of RAM
    assert t["maintenance_work_mem"] == "2048MB"
    assert t["effective_cache_size"] == "16384MB"
    assert t["max_parallel_maintenance_workers"] == "4"
    monkeypatch.setenv("FACELIB_PG_MEMORY_MB", "1024")
    t = tuned_settings(memory_bytes=32 * 1024**3, cpus=2)
    assert t["shared_buffers"] == "512MB" and t["maintenance_work_mem"] == "256MB"
    assert t["max_parallel_maintenance_workers"] == "1"
