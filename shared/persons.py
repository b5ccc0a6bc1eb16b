"""Person records after enrolment: read, update, list, delete faces, and erase a person.

The SQL of the management API (api/manage.py) and of bulk enrolment's resume check lives here.
Each function takes an open connection, so the caller decides the transaction; `erase_person`
expects to run alone in its own (see its docstring).

Persons are shared by the whole bank, not owned by the client that enrolled them: any client
with person:read / person:write sees and changes every person. The audit row of each request
records which client did it.
"""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Any

import psycopg

from shared import crypto, repo
from shared.files.uploads import delete_images
from shared.recognition import PERSON_REF
from shared.settings import Settings

# erase_person writes the key out in its SQL (see there)
assert PERSON_REF == "_personId"

# Columns a client may see. Embeddings, the blind index and the ciphertext never leave the DB.
_PERSON_COLUMNS = (
    "p.id, p.id_num_masked, p.name, p.person_type, p.customer_id, p.created_at, p.updated_at,"
    " (SELECT count(*) FROM faces f WHERE f.person_id = p.id) AS faces"
)
_FACE_COLUMNS = "id, person_id, box, quality, model, backend, image_sha256, created_at"

LIST_MAX_PAGE_SIZE = 100


BULK_MAX_RUNS = 10  # submissions of one bulk row: the first run and up to 9 retries


def bulk_request_ids(settings: Settings, id_num: str, image_sha256: bytes) -> list[str]:
    """The requestIds bulk enrolment gives a row, run by run: the same row gets the same ids
    on every run (`bulk:<mac>`, then `bulk:<mac>:r2`... when a transient failure is retried).

    Keyed with the blind-index key (an unkeyed hash of an idNum could be reversed by trying
    every idNum), and recomputable at erasure from the person's idNum and enrolment images, so
    the erasure can clear them from the job rows.
    """
    mac = hmac.new(settings.index_key, b"bulk\0" + id_num.encode() + b"\0" + image_sha256, "sha256")
    base = "bulk:" + mac.hexdigest()[:40]
    return [base] + [f"{base}:r{n}" for n in range(2, BULK_MAX_RUNS + 1)]


# --- reading -------------------------------------------------------------------------------------


def find_person_summary(
    conn: psycopg.Connection, settings: Settings, id_num: str
) -> dict[str, Any] | None:
    """The person with this idNum (through the blind index) with their face count, or None."""
    return conn.execute(
        f"SELECT {_PERSON_COLUMNS}, p.id_num_encrypted, p.id_num_index"  # noqa: S608 - constant SQL
        " FROM persons p WHERE p.id_num_index = %s",
        (crypto.blind_index(settings.index_key, id_num),),
    ).fetchone()


def update_person(
    conn: psycopg.Connection,
    person_id: int,
    *,
    name: str | None = None,
    person_type: str | None = None,
    customer_id: str | None = None,
) -> None:
    """Change the fields given (None: unchanged); `updated_at` moves on."""
    conn.execute(
        "UPDATE persons SET name = coalesce(%s, name), person_type = coalesce(%s, person_type),"
        " customer_id = coalesce(%s, customer_id), updated_at = now() WHERE id = %s",
        (name, person_type, customer_id, person_id),
    )


def list_persons(
    conn: psycopg.Connection,
    *,
    person_type: str | None = None,
    customer_id: str | None = None,
    name_prefix: str | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    page: int = 1,
    page_size: int = 20,
) -> tuple[list[dict[str, Any]], int]:
    """One page of persons matching every filter given, oldest first, and the total count."""
    where, params = ["true"], []
    if person_type is not None:
        where.append("p.person_type = %s")
        params.append(person_type)
    if customer_id is not None:
        where.append("p.customer_id = %s")
        params.append(customer_id)
    if name_prefix:
        # LIKE with the prefix's own wildcards escaped; persons_name_prefix_idx serves it
        escaped = name_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append("p.name LIKE %s")
        params.append(escaped + "%")
    if created_from is not None:
        where.append("p.created_at >= %s")
        params.append(created_from)
    if created_to is not None:
        where.append("p.created_at < %s")
        params.append(created_to)
    cond = " AND ".join(where)
    total = conn.execute(
        f"SELECT count(*) AS n FROM persons p WHERE {cond}",  # noqa: S608 - constant SQL, values bound
        params,
    ).fetchone()
    rows = conn.execute(
        f"SELECT {_PERSON_COLUMNS} FROM persons p WHERE {cond}"  # noqa: S608 - constant SQL, values bound
        " ORDER BY p.created_at, p.id LIMIT %s OFFSET %s",
        [*params, page_size, (page - 1) * page_size],
    ).fetchall()
    assert total is not None
    return rows, int(total["n"])


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


# --- deleting ------------------------------------------------------------------------------------


def _lock_faces_against_recognition(conn: psycopg.Connection) -> None:
    """Wait for recognitions in flight, and hold new ones, until this transaction ends.

    A recognition reads `faces` and writes its result (with the matched person's id) in one
    transaction. ACCESS EXCLUSIVE is the only lock that waits for readers: once it is held, no
    recognition that saw the faces being deleted is still to write its result, and the scrub of
    job results below cannot miss one. It is held for milliseconds; a bounded wait keeps a long
    transaction elsewhere from queueing recognition behind the erasure for long (the erasure
    then fails with 9001 and can be retried).
    """
    conn.execute("SET LOCAL lock_timeout = '5s'")
    conn.execute("LOCK TABLE faces IN ACCESS EXCLUSIVE MODE")


def delete_face(conn: psycopg.Connection, face_id: int) -> dict[str, Any] | None:
    """Delete one face and its stored image; the face row as it was, or None if there is none.

    The person's row is locked first, in the same order as an erasure and a registration take
    their locks (person, then faces), so they cannot deadlock.
    """
    owner = conn.execute("SELECT person_id FROM faces WHERE id = %s", (face_id,)).fetchone()
    if owner is None:
        return None
    conn.execute("SELECT id FROM persons WHERE id = %s FOR UPDATE", (owner["person_id"],))
    face = conn.execute(
        f"DELETE FROM faces WHERE id = %s RETURNING {_FACE_COLUMNS}",  # noqa: S608 - constant SQL
        (face_id,),
    ).fetchone()
    if face is None:  # deleted meanwhile (with its person, or by another request)
        return None
    sha = bytes(face["image_sha256"]) if face["image_sha256"] is not None else None
    if (
        sha is not None
        and not conn.execute(
            "SELECT 1 FROM faces WHERE image_sha256 = %s LIMIT 1", (sha,)
        ).fetchone()
    ):
        delete_images(conn, [sha])
    conn.execute("UPDATE persons SET updated_at = now() WHERE id = %s", (face["person_id"],))
    return face


def erase_person(
    conn: psycopg.Connection, settings: Settings, person_id: int
) -> dict[str, int] | None:
    """Erase a person: the record, every face, every stored image, and every link to them.

    Run it in a transaction of its own (`with transaction() as conn: erase_person(...)`): it
    all happens or nothing does. After it commits no row holds the person's id, blind index or
    embedding:
    - `persons` and `faces` rows are deleted, and file-server images of their faces with them;
    - job results (and callback payloads) that name the person as a recognition's match lose
      that reference and read isMatch "false"; verification jobs' personId becomes 0;
    - audit rows that point at the person (`p:<id>`, `b:<blind index>`) keep everything else
      but the pointer (the audit trigger allows exactly that update);
    - bulk enrolment jobs lose their requestId, which is derived from the idNum.
    Returns counts of what went, or None when there is no such person.
    """
    person = conn.execute("SELECT * FROM persons WHERE id = %s FOR UPDATE", (person_id,)).fetchone()
    if person is None:
        return None
    _lock_faces_against_recognition(conn)
    id_num = repo.decrypt_id_num(settings, person)
    faces = conn.execute(
        "DELETE FROM faces WHERE person_id = %s RETURNING image_sha256", (person_id,)
    ).fetchall()
    conn.execute("DELETE FROM persons WHERE id = %s", (person_id,))
    images = sorted({bytes(f["image_sha256"]) for f in faces if f["image_sha256"] is not None})
    # the key is written out (not bound) so that the partial indexes of 0004_dba.sql apply
    ref = str(person_id)
    jobs = conn.execute(
        "UPDATE jobs SET result = (result - '_personId') || '{\"isMatch\": \"false\"}'"
        " WHERE result ? '_personId' AND result ->> '_personId' = %s",
        (ref,),
    ).rowcount
    callbacks = conn.execute(
        "UPDATE callback_deliveries SET payload = jsonb_set(payload, '{data}',"
        " ((payload -> 'data') - '_personId') || '{\"isMatch\": \"false\"}')"
        " WHERE payload -> 'data' ? '_personId' AND payload -> 'data' ->> '_personId' = %s",
        (ref,),
    ).rowcount
    # 1:1 verifications name their person in request_meta; 0 names no one (ids start at 1), so
    # one still waiting for a worker answers 5001 like any verification of an unknown person
    verifications = conn.execute(
        "UPDATE jobs SET request_meta = jsonb_set(request_meta, '{personId}', '0')"
        " WHERE request_meta ? 'personId' AND request_meta ->> 'personId' = %s",
        (ref,),
    ).rowcount
    audit = conn.execute(
        "UPDATE audit_log SET person_ref = NULL WHERE person_ref = ANY(%s)",
        ([f"p:{person_id}", "b:" + bytes(person["id_num_index"]).hex()],),
    ).rowcount
    bulk_ids = [rid for sha in images for rid in bulk_request_ids(settings, id_num, sha)]
    if bulk_ids:
        conn.execute("UPDATE jobs SET request_id = NULL WHERE request_id = ANY(%s)", (bulk_ids,))
    files = delete_images(conn, images)
    return {
        "faces": len(faces),
        "files": files,
        "jobs": jobs + verifications,
        "callbacks": callbacks,
        "audit": audit,
    }
