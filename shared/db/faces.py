"""Faces: their embeddings, enrolment photos and the bulk path. Tables: faces, face_photos.

dlib's vector is `faces.embedding`; an optional model's vector has its own column
(`EMBEDDING_COLUMNS`, sql/0010_models.sql). Enrolment photos are kept AES-GCM encrypted in
face_photos when FACELIB_KEEP_ENROLMENT_PHOTOS is on, so `facelib reembed` can fill in a model
enabled later. `add_faces_bulk` also writes the persons and person_libraries rows of its batch,
in the same statements as its faces. Searching faces is shared/db/search.py.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from shared import crypto
from shared.settings import Settings

_FACE_COLUMNS = "id, person_id, box, quality, model, backend, image_sha256, created_at"


def count_faces(conn: psycopg.Connection, person_id: int) -> int:
    """The person's faces (every face of the library: shared/db/search.py `library_size`)."""
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


# --- the management API (shared/persons.py) ---------------------------------------------------------


def list_faces(conn: psycopg.Connection, person_id: int) -> list[dict[str, Any]]:
    return conn.execute(
        f"SELECT {_FACE_COLUMNS} FROM faces WHERE person_id = %s ORDER BY id",  # noqa: S608 - constant SQL
        (person_id,),
    ).fetchall()


def get_face(conn: psycopg.Connection, face_id: int) -> dict[str, Any] | None:
    return conn.execute(
        f"SELECT {_FACE_COLUMNS} FROM faces WHERE id = %s",  # noqa: S608 - constant SQL
        (face_id,),
    ).fetchone()


def face_owner(conn: psycopg.Connection, face_id: int) -> int | None:
    """The id of the person the face belongs to, or None if there is no such face."""
    row = conn.execute("SELECT person_id FROM faces WHERE id = %s", (face_id,)).fetchone()
    return None if row is None else int(row["person_id"])


def delete_face(conn: psycopg.Connection, face_id: int) -> dict[str, Any] | None:
    """Delete one face; the row as it was (the columns a client may see), or None."""
    return conn.execute(
        f"DELETE FROM faces WHERE id = %s RETURNING {_FACE_COLUMNS}",  # noqa: S608 - constant SQL
        (face_id,),
    ).fetchone()


def delete_faces_of_person(conn: psycopg.Connection, person_id: int) -> list[bytes | None]:
    """Delete every face of a person; their images' SHA-256 (None where none was recorded)."""
    rows = conn.execute(
        "DELETE FROM faces WHERE person_id = %s RETURNING image_sha256", (person_id,)
    ).fetchall()
    return [None if r["image_sha256"] is None else bytes(r["image_sha256"]) for r in rows]


def image_in_use(conn: psycopg.Connection, image_sha256: bytes) -> bool:
    """True while any face was enrolled from an image with this SHA-256."""
    row = conn.execute(
        "SELECT 1 FROM faces WHERE image_sha256 = %s LIMIT 1", (image_sha256,)
    ).fetchone()
    return row is not None


def lock_against_recognition(conn: psycopg.Connection) -> None:
    """Wait for recognitions in flight, and hold new ones, until this transaction ends.

    A recognition reads `faces` and writes its result (with the matched person's id) in one
    transaction. ACCESS EXCLUSIVE is the only lock that waits for readers: once it is held, no
    recognition that saw the faces being deleted is still to write its result, so a scrub of
    job results after it cannot miss one. It is held for milliseconds; a bounded wait keeps a
    long transaction elsewhere from queueing recognition behind an erasure for long (the
    erasure then fails with 9001 and can be retried).
    """
    conn.execute("SET LOCAL lock_timeout = '5s'")
    conn.execute("LOCK TABLE faces IN ACCESS EXCLUSIVE MODE")
