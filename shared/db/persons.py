"""Persons: enrolment, lookup by idNum, the management API's reads and changes. Table: persons.

A person is found by the blind index of their idNum (`crypto.blind_index`, keyed); the idNum
itself is stored AES-GCM encrypted with the id of its key beside it, and masked for display.
(Bulk enrolment writes its persons in shared/db/faces.py `add_faces_bulk`, with its faces.)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from shared import crypto
from shared.settings import Settings

# Columns a client may see. Embeddings, the blind index and the ciphertext never leave the DB.
_PERSON_COLUMNS = (
    "p.id, p.id_num_masked, p.name, p.person_type, p.customer_id, p.created_at, p.updated_at,"
    " (SELECT count(*) FROM faces f WHERE f.person_id = p.id) AS faces"
)


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


def lock_person(conn: psycopg.Connection, person_id: int) -> dict[str, Any] | None:
    """The person's row, locked until the transaction ends (None if there is none)."""
    return conn.execute("SELECT * FROM persons WHERE id = %s FOR UPDATE", (person_id,)).fetchone()


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


def touch_person(conn: psycopg.Connection, person_id: int) -> None:
    """`updated_at` moves on (one of the person's faces changed)."""
    conn.execute("UPDATE persons SET updated_at = now() WHERE id = %s", (person_id,))


def delete_person(conn: psycopg.Connection, person_id: int) -> None:
    conn.execute("DELETE FROM persons WHERE id = %s", (person_id,))


def _like_prefix(prefix: str) -> str:
    """A LIKE pattern matching names that start with `prefix` (its own wildcards escaped)."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


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
    filters = [
        ("p.person_type = %s", person_type),
        ("p.customer_id = %s", customer_id),
        # persons_name_prefix_idx serves the prefix
        ("p.name LIKE %s", _like_prefix(name_prefix) if name_prefix else None),
        ("p.created_at >= %s", created_from),
        ("p.created_at < %s", created_to),
    ]
    given = [(clause, value) for clause, value in filters if value is not None]
    cond = " AND ".join(["true", *(clause for clause, _ in given)])
    params = [value for _, value in given]
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
