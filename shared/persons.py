"""Person records after enrolment: deleting a face, erasing a person, bulk enrolment's ids.

The management API (api/persons.py) reads, lists and updates persons and faces straight through
the repositories (shared/db/persons.py, shared/db/faces.py); what takes more than one statement
is here. Each function takes an open connection, so the caller decides the transaction;
`erase_person` expects to run alone in its own (see its docstring).

Persons are shared by the whole bank, not owned by the client that enrolled them: any client
with person:read / person:write sees and changes every person. The audit row of each request
records which client did it.
"""

from __future__ import annotations

import hmac
from typing import Any

import psycopg

from shared import db
from shared.files.uploads import delete_images
from shared.recognition import PERSON_REF
from shared.settings import Settings

# the erasure's statements (db.jobs.forget_person, db.deliveries.forget_person) write the key out
assert PERSON_REF == "_personId"

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


def delete_face(conn: psycopg.Connection, face_id: int) -> dict[str, Any] | None:
    """Delete one face and its stored image; the face row as it was, or None if there is none.

    The person's row is locked first, in the same order as an erasure and a registration take
    their locks (person, then faces), so they cannot deadlock. The stored image goes only when
    no other face was enrolled from it.
    """
    owner = db.faces.face_owner(conn, face_id)
    if owner is None:
        return None
    db.persons.lock_person(conn, owner)
    face = db.faces.delete_face(conn, face_id)
    if face is None:  # deleted meanwhile (with its person, or by another request)
        return None
    sha = bytes(face["image_sha256"]) if face["image_sha256"] is not None else None
    if sha is not None and not db.faces.image_in_use(conn, sha):
        delete_images(conn, [sha])
    db.persons.touch_person(conn, face["person_id"])
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
    person = db.persons.lock_person(conn, person_id)
    if person is None:
        return None
    # no recognition that saw these faces is still to write its result once this is held, so
    # the scrub of job results below cannot miss one
    db.faces.lock_against_recognition(conn)
    id_num = db.persons.decrypt_id_num(settings, person)
    faces = db.faces.delete_faces_of_person(conn, person_id)
    db.persons.delete_person(conn, person_id)
    images = sorted({sha for sha in faces if sha is not None})
    jobs = db.jobs.forget_person(conn, person_id)
    callbacks = db.deliveries.forget_person(conn, person_id)
    audit = db.audit.forget_person(
        conn, [f"p:{person_id}", "b:" + bytes(person["id_num_index"]).hex()]
    )
    db.jobs.clear_request_ids(
        conn, [rid for sha in images for rid in bulk_request_ids(settings, id_num, sha)]
    )
    files = delete_images(conn, images)
    return {
        "faces": len(faces),
        "files": files,
        "jobs": jobs,
        "callbacks": callbacks,
        "audit": audit,
    }
