"""Face search: nearest faces by cosine distance, gallery counts, and the search index.
Tables read: faces, persons, person_libraries, gallery_counts; indexes built: the HNSW index
(or its partitions) on faces.embedding.

The index (sql/0009_search_scale.sql) holds the embeddings as halfvec; `nearest_faces` re-ranks
its candidates by the exact float32 distance. `facelib reindex` builds it, one index or K
partial ones (`build_search_index`). The gallery counts (sql/0008) are kept by triggers, so
a search learns the size of what it compares with in O(1).
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
import psycopg

from shared.db.faces import embedding_column
from shared.settings import get_settings

SEARCH_EF_MAX = 1000  # pgvector's largest hnsw.ef_search
RERANK_MIN = 40  # candidates re-ranked with exact distances, at least
SEARCH_INDEX = "faces_embedding_hnsw"  # one index; partitioned: faces_embedding_hnsw_<k>of<K>
_PART = re.compile(r"^faces_embedding_hnsw_(\d+)of(\d+)$")
PARTITIONS_TTL = 10.0  # seconds a process trusts its reading of the partition count
_partitions: dict[str, tuple[float, int]] = {}


def _filter_sql(
    library_ids: list[int] | None,
    person_types: list[str] | None,
    exclude_person: int | None,
    *,
    per_row: bool = False,
) -> tuple[str, list[Any]]:
    """The WHERE clause of a filtered search. `per_row`: as scalar sub-selects, checked on each
    row the index scan returns (a primary-key lookup each), so that the scan stops once enough
    rows passed; EXISTS would let the planner hash-join the whole index scan instead, draining
    it (hnsw.max_scan_tuples rows) before the first row comes out."""
    clauses, params = [], []
    if library_ids:
        clauses.append(
            "(SELECT true FROM person_libraries pl WHERE pl.person_id = faces.person_id"
            " AND pl.library_id = ANY(%s) LIMIT 1)"
            if per_row
            else "EXISTS (SELECT 1 FROM person_libraries pl WHERE pl.person_id = faces.person_id"
            " AND pl.library_id = ANY(%s))"
        )
        params.append(library_ids)
    if person_types:
        clauses.append(
            "(SELECT p.person_type FROM persons p WHERE p.id = faces.person_id) = ANY(%s)"
            if per_row
            else "EXISTS (SELECT 1 FROM persons p WHERE p.id = faces.person_id"
            " AND p.person_type = ANY(%s))"
        )
        params.append(person_types)
    if exclude_person is not None:
        clauses.append("faces.person_id <> %s")
        params.append(exclude_person)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def search_ef(ef_search: int, partition_faces: int, ef_per_million: int, ef_max: int) -> int:
    """hnsw.ef_search for an index partition of `partition_faces`: `ef_search`
    (FACELIB_HNSW_EF_SEARCH) for small ones, growing linearly at `ef_per_million`
    (FACELIB_HNSW_EF_PER_MILLION) up to `ef_max` (FACELIB_HNSW_EF_MAX), where the measured
    recall stops improving with the partition size (docs/scaling.md), and at most 1000."""
    scaled = -(-ef_per_million * partition_faces // 1_000_000)  # ceil
    return max(1, min(SEARCH_EF_MAX, max(ef_search, min(ef_max, scaled))))


def library_size(conn: psycopg.Connection) -> int:
    """Every enrolled face, from the counters (O(1))."""
    row = conn.execute(
        "SELECT coalesce(sum(faces), 0) AS n FROM gallery_counts WHERE library_id = 0"
    ).fetchone()
    return int(row["n"]) if row else 0


def search_index_names(conn: psycopg.Connection) -> list[str]:
    """The valid face search indexes (one, or one per partition)."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = 'faces'::regclass AND i.indisvalid"
        " AND c.relname LIKE 'faces\\_embedding\\_hnsw%%' ORDER BY 1"
    ).fetchall()
    return [r["relname"] for r in rows]


def _complete_partitionings(names: list[str]) -> list[int]:
    found: dict[int, set[int]] = {}
    for name in names:
        m = _PART.match(name)
        if m:
            found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    return sorted(k for k, parts in found.items() if parts == set(range(k)))


def search_partitions(conn: psycopg.Connection) -> int:
    """How many index partitions a search runs over: K when the indexes
    faces_embedding_hnsw_0ofK .. (K-1)ofK all exist (`facelib reindex --partitions K`), else 1.
    Read from the catalog at most every PARTITIONS_TTL seconds per database."""
    key = conn.info.dsn
    now = time.monotonic()
    cached = _partitions.get(key)
    if cached and now - cached[0] < PARTITIONS_TTL:
        return cached[1]
    complete = _complete_partitionings(search_index_names(conn))
    k = complete[-1] if complete else 1
    _partitions[key] = (now, k)
    return k


def nearest_faces(
    conn: psycopg.Connection,
    embedding: np.ndarray,
    *,
    limit: int,
    ef_search: int,
    library_ids: list[int] | None = None,
    person_types: list[str] | None = None,
    exclude_person: int | None = None,
    exact: bool = False,
    model: str | None = None,
    ef_per_million: int | None = None,
    ef_max: int | None = None,
) -> list[dict[str, Any]]:
    """The `limit` nearest faces by cosine distance, within the filters, by `model`'s vectors
    (dlib's when None; faces without that model's vector are not searched).

    The HNSW index (sql/0009) holds the embeddings as halfvec (half the size, so a million faces
    stay cached). A large library's index is split by `facelib reindex` into K partitions
    (partial indexes on id %% K, FACELIB_SEARCH_PARTITION_FACES each): small graphs keep their
    recall where one graph of a million faces loses it (docs/scaling.md). Each partition returns
    a candidate list of max(limit, 40) faces in approximate order; all candidates are re-ranked
    by their exact (float32) distance, which is the distance returned. hnsw.ef_search grows with
    the partition's size (`search_ef`).

    Filtered: pgvector 0.8's iterative index scan (strict order) keeps walking the graph until
    enough candidates pass the filter, so a filter keeping 1% of faces still returns nearest
    ones within it rather than the few in the first candidate list. HNSW is approximate, so
    callers ask for `exact` when the filtered gallery is small enough (FACELIB_EXACT_SEARCH_MAX
    faces) for a sequential scan to be cheap: then the answer is the true nearest within the
    filter, guaranteed.
    """
    if ef_per_million is None or ef_max is None:
        settings = get_settings()
        ef_per_million = settings.hnsw_ef_per_million if ef_per_million is None else ef_per_million
        ef_max = settings.hnsw_ef_max if ef_max is None else ef_max
    where, params = _filter_sql(library_ids, person_types, exclude_person, per_row=not exact)
    parts = 1 if exact else search_partitions(conn)
    ef = search_ef(ef_search, -(-library_size(conn) // parts), ef_per_million, ef_max)
    candidates = max(limit, RERANK_MIN)
    conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(max(ef, candidates)),))
    if where:
        conn.execute("SELECT set_config('hnsw.iterative_scan', 'strict_order', true)")
        conn.execute("SELECT set_config('hnsw.max_scan_tuples', '1000000', true)")
    vec = np.asarray(embedding, dtype=np.float32)
    col = embedding_column(model)
    if col != "embedding":
        return _nearest_by_column(conn, col, vec, where, params, limit=limit, exact=exact)
    # the index's order (halfvec), or with `exact` the exact distance itself: no index has that
    # order, so a small filtered gallery is read through its persons and sorted exactly, which
    # guarantees the true nearest
    order = "embedding <=> %s" if exact else "embedding::halfvec(128) <=> %s::halfvec(128)"
    branches, args = [], []
    for k in range(parts):
        # the partition number is a literal, so that the planner matches the partial index
        part = f"faces.id %% {parts} = {k}" if parts > 1 else ""
        clause = where + (" AND " if where else " WHERE ") + part if part else where
        branches.append(
            "(SELECT id AS face_id, person_id, embedding FROM faces"  # noqa: S608
            + clause
            + f" ORDER BY {order} LIMIT %s)"
        )
        args += [*params, vec, candidates]
    return conn.execute(
        "SELECT face_id, person_id, embedding <=> %s AS distance FROM ("  # noqa: S608
        + " UNION ALL ".join(branches)
        + ") candidates ORDER BY distance, face_id LIMIT %s",
        (vec, *args, limit),
    ).fetchall()


def _nearest_by_column(
    conn: psycopg.Connection,
    col: str,
    vec: np.ndarray,
    where: str,
    params: list[Any],
    *,
    limit: int,
    exact: bool,
) -> list[dict[str, Any]]:
    """An optional model's search (sql/0010): its own float32 HNSW index, one graph, no
    re-rank; faces without that model's vector are not searched."""
    if exact:
        # a small filtered gallery: an exact scan is cheap and guarantees the true nearest
        conn.execute("SELECT set_config('enable_indexscan', 'off', true)")
    try:
        return conn.execute(
            f"SELECT id AS face_id, person_id, {col} <=> %s AS distance FROM faces"  # noqa: S608
            + (where + " AND " if where else " WHERE ")
            + f"{col} IS NOT NULL ORDER BY {col} <=> %s LIMIT %s",
            (vec, *params, vec, limit),
        ).fetchall()
    finally:
        if exact:
            conn.execute("SELECT set_config('enable_indexscan', 'on', true)")


def drop_search_index(conn: psycopg.Connection) -> None:
    """Drop the face search indexes before a large first load (`build_search_index` after it):
    a million inserts then cost a COPY each instead of a graph search each."""
    for name in search_index_names(conn):
        conn.execute(f"DROP INDEX IF EXISTS {name}")
    for row in conn.execute(
        "SELECT relname FROM pg_class WHERE relkind = 'i'"
        " AND relname LIKE 'faces\\_embedding\\_hnsw%%'"
    ).fetchall():  # invalid leftovers of an interrupted concurrent build
        conn.execute(f"DROP INDEX IF EXISTS {row['relname']}")


def partitions_for(faces: int, partition_faces: int) -> int:
    """Index partitions for a library of `faces` (FACELIB_SEARCH_PARTITION_FACES each)."""
    return max(1, -(-faces // max(1, partition_faces)))


def build_search_index(
    conn: psycopg.Connection,
    *,
    m: int,
    ef_construction: int,
    partitions: int = 1,
    maintenance_work_mem_mb: int | None = None,
    parallel_workers: int | None = None,
    concurrently: bool = False,
) -> int:
    """(Re)build the face search index (sql/0009's definition with these graph parameters),
    as one index or as `partitions` partial indexes on id %% K; return the total size in bytes.

    maintenance_work_mem (the graph is built in memory when it fits: about 550 MB per million
    faces at m = 16) and max_parallel_maintenance_workers are set for this build only; unset,
    the server's own values apply (the embedded server sizes them from the machine).
    `concurrently` (autocommit connection) builds the new indexes beside the old ones without
    blocking enrolments, then swaps them: searches use one set or the other throughout.
    """
    if not (2 <= m <= 100 and 4 <= ef_construction <= 1000 and ef_construction >= 2 * m):
        raise ValueError("need 2 <= m <= 100 and 2 * m <= ef_construction <= 1000")
    if not 1 <= partitions <= 64:
        raise ValueError("need 1 <= partitions <= 64")
    if maintenance_work_mem_mb:
        conn.execute(
            "SELECT set_config('maintenance_work_mem', %s, false)",
            (f"{int(maintenance_work_mem_mb)}MB",),
        )
    if parallel_workers is not None:
        conn.execute(
            "SELECT set_config('max_parallel_maintenance_workers', %s, false)",
            (str(int(parallel_workers)),),
        )
    names = (
        [SEARCH_INDEX]
        if partitions == 1
        else [f"{SEARCH_INDEX}_{k}of{partitions}" for k in range(partitions)]
    )
    using = (
        "ON faces USING hnsw ((embedding::halfvec(128)) halfvec_cosine_ops)"
        f" WITH (m = {int(m)}, ef_construction = {int(ef_construction)})"
    )
    where = [f" WHERE id % {partitions} = {k}" if partitions > 1 else "" for k in range(partitions)]
    old = search_index_names(conn)
    if not concurrently:
        drop_search_index(conn)
        for name, cond in zip(names, where, strict=True):
            conn.execute(f"CREATE INDEX {name} {using}{cond}")
    else:
        staged = [f"{SEARCH_INDEX}_new{k}" for k in range(partitions)]
        for name in staged:
            conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")  # a failed earlier attempt
        for name, cond in zip(staged, where, strict=True):
            conn.execute(f"CREATE INDEX CONCURRENTLY {name} {using}{cond}")
        if old and _complete_partitionings(old + names) != _complete_partitionings(old):
            time.sleep(PARTITIONS_TTL + 1)  # processes that read the old count keep its indexes
        with conn.transaction():  # a short exclusive lock: searches see one set or the other
            for name in old:
                conn.execute(f"DROP INDEX IF EXISTS {name}")
            for name, final in zip(staged, names, strict=True):
                conn.execute(f"ALTER INDEX {name} RENAME TO {final}")
    _partitions.clear()
    conn.execute("ANALYZE faces")
    row = conn.execute(
        "SELECT coalesce(sum(pg_relation_size(c.oid)), 0) AS n FROM pg_class c"
        " WHERE c.relname = ANY(%s)",
        (names,),
    ).fetchone()
    assert row is not None
    return int(row["n"])


def count_gallery(
    conn: psycopg.Connection,
    library_ids: list[int] | None = None,
    person_types: list[str] | None = None,
) -> int:
    """How many faces a search with these filters compares the probe with.

    Read from the trigger-maintained `gallery_counts` (sql/0008), never by counting faces. Exact
    for the whole library, one library and any person types; with several libraries a person in
    two of them is counted twice, so the figure is an upper bound (capped by the whole library),
    which only makes falseMatchRate more cautious.
    """
    types = person_types or None  # NULL: every type
    total = conn.execute(
        "SELECT coalesce(sum(faces), 0) AS n FROM gallery_counts WHERE library_id = 0"
        " AND (%(types)s::text[] IS NULL OR person_type = ANY(%(types)s))",
        {"types": types},
    ).fetchone()
    assert total is not None
    if not library_ids:
        return int(total["n"])
    row = conn.execute(
        "SELECT coalesce(sum(faces), 0) AS n FROM gallery_counts WHERE library_id = ANY(%(libs)s)"
        " AND (%(types)s::text[] IS NULL OR person_type = ANY(%(types)s))",
        {"libs": library_ids, "types": types},
    ).fetchone()
    assert row is not None
    return min(int(row["n"]), int(total["n"]))


def person_distance(
    conn: psycopg.Connection, person_id: int, embedding: np.ndarray, model: str | None = None
) -> float | None:
    """Smallest cosine distance between a probe and one person's faces (exact; few rows), by
    `model`'s vectors (dlib's when None)."""
    col = embedding_column(model)
    row = conn.execute(
        f"SELECT min({col} <=> %s) AS d FROM faces WHERE person_id = %s",  # noqa: S608
        (np.asarray(embedding, dtype=np.float32), person_id),
    ).fetchone()
    return None if row is None or row["d"] is None else float(row["d"])
