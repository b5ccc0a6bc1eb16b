"""Repositories: where the SQL lives (a few statements are still elsewhere: issue #14).

Each function takes an open connection, so the caller decides the transaction (see `shared.db.transaction`)."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from shared import crypto
from shared.settings import Settings

# --- persons and faces ---------------------------------------------------------------------------


def find_person(conn: psycopg.Connection, settings: Settings, id_num: str) -> dict | None:
    return conn.execute(
        "SELECT * FROM persons WHERE id_num_index = %s",
        (crypto.blind_index(settings.index_key, id_num),),
    ).fetchone()


def upsert_person(
    conn: psycopg.Connection,
    settings: Settings,
    *,
    id_num: str,
    name: str,
    person_type: str,
    customer_id: str | None,
    client_id: int,
) -> dict[str, Any]:
    """Create the person, or update name/type/customerID of the one with this idNum.

    The row is locked until the transaction ends, so concurrent enrolments of one person
    serialise on it (and the face cap holds).
    """
    index = crypto.blind_index(settings.index_key, id_num)
    row = conn.execute(
        "INSERT INTO persons (id_num_index, id_num_encrypted, id_num_key_id, id_num_masked,"
        " name, person_type, customer_id, created_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (id_num_index) DO UPDATE SET name = EXCLUDED.name,"
        " person_type = EXCLUDED.person_type,"
        " customer_id = CASE WHEN %s THEN EXCLUDED.customer_id ELSE persons.customer_id END,"
        " updated_at = now() RETURNING *",
        (
            index,
            crypto.encrypt(settings.encryption_key, id_num, aad=index),
            settings.encryption_key_id,
            crypto.mask_id_num(id_num),
            name,
            person_type,
            customer_id or "",
            client_id,
            customer_id is not None,
        ),
    ).fetchone()
    assert row is not None
    return row


def count_faces(conn: psycopg.Connection, person_id: int | None = None) -> int:
    if person_id is None:  # every face: the counters (sql/0008), not count(*) over a million
        return library_size(conn)
    row = conn.execute(
        "SELECT count(*) AS n FROM faces WHERE person_id = %s", (person_id,)
    ).fetchone()
    assert row is not None
    return int(row["n"])


def add_face(
    conn: psycopg.Connection,
    *,
    person_id: int,
    embedding: np.ndarray,
    box: list[int],
    quality: dict[str, float],
    model: str,
    backend: str,
    job_id: uuid.UUID | str,
    image_sha256: bytes,
) -> bool:
    """Insert the face of a registration job; False if this job already inserted it."""
    cur = conn.execute(
        "INSERT INTO faces (person_id, embedding, box, quality, model, backend, job_id,"
        " image_sha256) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (job_id) DO NOTHING",
        (
            person_id,
            np.asarray(embedding, dtype=np.float32),
            box,
            Jsonb(quality),
            model,
            backend,
            job_id,
            image_sha256,
        ),
    )
    return cur.rowcount == 1


# Optional models' vectors live in their own column of `faces` (sql/0010_models.sql).
EMBEDDING_COLUMNS = {"dlib": "embedding", "mobilefacenet": "embedding_mobilefacenet"}


def embedding_column(model: str | None) -> str:
    """The `faces` column holding `model`'s vectors (dlib's when None)."""
    try:
        return EMBEDDING_COLUMNS[model or "dlib"]
    except KeyError:
        raise ValueError(f"no embedding column for model {model!r}") from None


def set_face_embedding(
    conn: psycopg.Connection, face_id: int, model: str, embedding: np.ndarray, version: str
) -> bool:
    """Store an optional model's vector of a face (only if it has none yet)."""
    column = embedding_column(model)
    if column == "embedding":
        raise ValueError("dlib's vector is written by add_face")
    cur = conn.execute(
        f"UPDATE faces SET {column} = %s, {column}_version = %s"  # noqa: S608 - fixed names
        f" WHERE id = %s AND {column} IS NULL",
        (np.asarray(embedding, dtype=np.float32), version, face_id),
    )
    return cur.rowcount == 1


def face_id_for_job(conn: psycopg.Connection, job_id: uuid.UUID | str) -> int | None:
    row = conn.execute("SELECT id FROM faces WHERE job_id = %s", (job_id,)).fetchone()
    return None if row is None else int(row["id"])


def _photo_aad(face_id: int) -> bytes:
    return f"face_photos:{face_id}".encode()


def store_face_photo(
    conn: psycopg.Connection, settings: Settings, face_id: int, photo: bytes
) -> None:
    """Keep the enrolment photo, AES-256-GCM encrypted with the current key (its id beside it)."""
    conn.execute(
        "INSERT INTO face_photos (face_id, key_id, photo_encrypted) VALUES (%s, %s, %s)"
        " ON CONFLICT (face_id) DO NOTHING",
        (
            face_id,
            settings.encryption_key_id,
            crypto.encrypt_bytes(settings.encryption_key, photo, aad=_photo_aad(face_id)),
        ),
    )


def faces_missing_embedding(
    conn: psycopg.Connection, settings: Settings, model: str, after_id: int, limit: int
) -> list[dict[str, Any]]:
    """Faces after `after_id` (by id) with a kept photo and no `model` vector, photo decrypted."""
    column = embedding_column(model)
    rows = conn.execute(
        "SELECT f.id, f.box, p.key_id, p.photo_encrypted FROM faces f"  # noqa: S608
        f" JOIN face_photos p ON p.face_id = f.id WHERE f.{column} IS NULL AND f.id > %s"
        " ORDER BY f.id LIMIT %s",
        (after_id, limit),
    ).fetchall()
    out = []
    for r in rows:
        key = settings.encryption_keys.get(r["key_id"])
        if key is None:
            raise KeyError(f"no key with id {r['key_id']!r}: add it to FACELIB_ENCRYPTION_KEYS")
        photo = crypto.decrypt_bytes(key, bytes(r["photo_encrypted"]), aad=_photo_aad(r["id"]))
        out.append({"id": int(r["id"]), "box": list(r["box"]), "photo": photo})
    return out


def count_missing_embedding(conn: psycopg.Connection, model: str) -> dict[str, int]:
    """Faces without `model`'s vector: in all, and among them those with a kept photo."""
    column = embedding_column(model)
    row = conn.execute(
        f"SELECT count(*) AS missing, count(p.face_id) AS with_photo FROM faces f"  # noqa: S608
        f" LEFT JOIN face_photos p ON p.face_id = f.id WHERE f.{column} IS NULL"
    ).fetchone()
    assert row is not None
    return {"missing": int(row["missing"]), "with_photo": int(row["with_photo"])}


BULK_BATCH = 5_000  # rows per COPY batch of `add_faces_bulk` (one round trip per batch)


def add_faces_bulk(
    conn: psycopg.Connection,
    settings: Settings,
    faces: list[dict[str, Any]],
    *,
    library_ids: list[int],
    client_id: int | None,
    model: str,
    backend: str,
) -> list[int | None]:
    """Enrol many already-embedded faces at once: the bulk path of the repository.

    Each item: id_num, name, person_type, customer_id (None keeps a stored one), embedding,
    and optionally box, quality, image_sha256, job_id. Persons are created or updated exactly as
    `upsert_person` does (one row per idNum, the last item's fields win), added to
    `library_ids`, and the faces are written with binary COPY, BULK_BATCH rows per round trip;
    the gallery counters follow in the same transaction (sql/0009's statement-level trigger).
    A face that would take its person past FACELIB_FACES_PER_PERSON is not written.

    Returns, per item in order, the new face id or None (face cap reached). The caller holds the
    transaction: nothing is visible until it commits, and a failure leaves nothing behind.
    """
    if not faces:
        return []
    if conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        raise ValueError("add_faces_bulk runs inside the caller's transaction")
    indexes = [crypto.blind_index(settings.index_key, f["id_num"]) for f in faces]
    last: dict[bytes, int] = {}
    for i, index in enumerate(indexes):
        last[index] = i
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS bulk_persons (id_num_index bytea,"
        " id_num_encrypted bytea, id_num_key_id text, id_num_masked text, name text,"
        " person_type text, customer_id text, keep_customer boolean) ON COMMIT DELETE ROWS"
    )
    conn.execute("TRUNCATE bulk_persons")
    with conn.cursor().copy("COPY bulk_persons FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["bytea", "bytea", "text", "text", "text", "text", "text", "bool"])
        for index, i in last.items():
            f = faces[i]
            copy.write_row(
                (
                    index,
                    crypto.encrypt(settings.encryption_key, f["id_num"], aad=index),
                    settings.encryption_key_id,
                    crypto.mask_id_num(f["id_num"]),
                    f["name"],
                    f["person_type"],
                    f.get("customer_id") or "",
                    f.get("customer_id") is None,
                )
            )
    rows = []
    for keep in (True, False):  # a None customer_id keeps the stored one, as upsert_person
        rows += conn.execute(
            "INSERT INTO persons AS p (id_num_index, id_num_encrypted, id_num_key_id,"
            " id_num_masked, name, person_type, customer_id, created_by)"
            " SELECT id_num_index, id_num_encrypted, id_num_key_id, id_num_masked, name,"
            " person_type, customer_id, %s FROM bulk_persons WHERE keep_customer = %s"
            " ON CONFLICT (id_num_index) DO UPDATE SET name = EXCLUDED.name,"
            " person_type = EXCLUDED.person_type,"
            " customer_id = CASE WHEN %s THEN p.customer_id ELSE EXCLUDED.customer_id END,"
            " updated_at = now() RETURNING p.id, p.id_num_index",
            (client_id, keep, keep),
        ).fetchall()
    person_of = {bytes(r["id_num_index"]): int(r["id"]) for r in rows}
    ids = list(person_of.values())
    if library_ids:
        conn.execute(
            "INSERT INTO person_libraries (person_id, library_id)"
            " SELECT p, l FROM unnest(%s::bigint[]) p, unnest(%s::bigint[]) l"
            " ON CONFLICT DO NOTHING",
            (ids, library_ids),
        )
    stored = {
        int(r["person_id"]): int(r["n"])
        for r in conn.execute(
            "SELECT person_id, count(*) AS n FROM faces WHERE person_id = ANY(%s)"
            " GROUP BY person_id",
            (ids,),
        ).fetchall()
    }
    out: list[int | None] = []
    accepted: list[int] = []
    for i, index in enumerate(indexes):
        pid = person_of[index]
        if stored.get(pid, 0) >= settings.faces_per_person:
            out.append(None)
            continue
        stored[pid] = stored.get(pid, 0) + 1
        accepted.append(i)
        out.append(pid)
    columns = "id, person_id, embedding, box, quality, model, backend, job_id, image_sha256"
    types = ["int8", "int8", "vector", "int4[]", "jsonb", "text", "text", "uuid", "bytea"]
    for start in range(0, len(accepted), BULK_BATCH):
        chunk = accepted[start : start + BULK_BATCH]
        # the face ids first, so that each item learns its own
        face_ids = conn.execute(
            "SELECT nextval(pg_get_serial_sequence('faces', 'id')) AS id"
            " FROM generate_series(1, %s)",
            (len(chunk),),
        ).fetchall()
        with conn.cursor().copy(f"COPY faces ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(types)
            for i, face_id in zip(chunk, face_ids, strict=True):
                f = faces[i]
                copy.write_row(
                    (
                        face_id["id"],
                        out[i],
                        np.asarray(f["embedding"], dtype=np.float32),
                        [int(v) for v in f.get("box") or (0, 0, 0, 0)],
                        Jsonb(f.get("quality") or {}),
                        model,
                        backend,
                        f.get("job_id"),
                        f.get("image_sha256"),
                    )
                )
                out[i] = face_id["id"]
    return out


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


SEARCH_EF_MAX = 1000  # pgvector's largest hnsw.ef_search
RERANK_MIN = 40  # candidates re-ranked with exact distances, at least
SEARCH_INDEX = "faces_embedding_hnsw"  # one index; partitioned: faces_embedding_hnsw_<k>of<K>
_PART = re.compile(r"^faces_embedding_hnsw_(\d+)of(\d+)$")
PARTITIONS_TTL = 10.0  # seconds a process trusts its reading of the partition count
_partitions: dict[str, tuple[float, int]] = {}


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
        settings = _settings()
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


def _settings() -> Settings:
    from shared.settings import get_settings

    return get_settings()


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


def get_person(conn: psycopg.Connection, person_id: int) -> dict[str, Any] | None:
    return conn.execute("SELECT * FROM persons WHERE id = %s", (person_id,)).fetchone()


def decrypt_id_num(settings: Settings, person: dict[str, Any]) -> str:
    """The idNum, decrypted with the key whose id is stored beside it (rotation: old ids stay
    readable while FACELIB_ENCRYPTION_KEY encrypts new rows)."""
    key_id = person.get("id_num_key_id") or settings.encryption_key_id
    key = settings.encryption_keys.get(key_id)
    if key is None:
        raise KeyError(f"no key with id {key_id!r}: add it to FACELIB_ENCRYPTION_KEYS")
    return crypto.decrypt(key, bytes(person["id_num_encrypted"]), aad=bytes(person["id_num_index"]))
