"""The DBA surface: the views answer with masked data, the read-only role reads the views and
nothing else (no embeddings, no raw or encrypted idNum), and the example queries of docs/dba.md
run as that role."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.conftest import ROOT, Stack, new_id_num, small_jpeg_b64
from tests.helpers import eventually

REG = "/tech/ai/face/faceLib/person/reg"
RECONG = "/tech/ai/face/faceLib/person/recong"
DELETE = "/tech/ai/face/faceLib/person/delete"
VIEWS = (
    "gallery_sizes",
    "person_summary",
    "job_overview",
    "daily_volume",
    "daily_errors",
    "job_queue",
    "callback_failures",
    "audit_view",
)


@pytest.fixture(scope="module")
def readonly(stack: Stack) -> Iterator[psycopg.Connection]:
    """A connection as a fresh login role that is a member of faceapi_readonly."""
    role, password = f"dba_{secrets.token_hex(4)}", secrets.token_hex(12)
    with stack.db() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE faceapi_readonly")
    url = psycopg.conninfo.make_conninfo(stack.database_url, user=role, password=password)
    conn = psycopg.connect(url, row_factory=dict_row, autocommit=True)
    try:
        yield conn
    finally:
        conn.close()
        with stack.db() as admin:
            admin.execute(f"DROP ROLE {role}")


@pytest.fixture(scope="module")
def activity(stack: Stack) -> Iterator[dict[str, Any]]:
    """A branch with one enrolment, one failed enrolment, one match and one undeliverable
    callback; the person is erased at the end."""
    branch = stack.client(scopes=["face:register", "face:recognize", "person:write"])
    token, id_num = branch["token"], new_id_num()
    image = small_jpeg_b64("biden_2.jpg")
    body = {"idNum": id_num, "name": "审计测试", "personType": "vip", "customerID": "C-10086"}
    ok = stack.post(REG, token, {**body, "faceImage": {"data": image}}).json()
    assert ok["errcode"] == 0, ok
    bad = stack.post(REG, token, {**body, "faceImage": {"data": "aGVsbG8gd29ybGQgaGVsbG8="}})
    assert bad.json()["errcode"] == 3003
    assert stack.post(RECONG, token, {"faceImage": {"data": image}}).json()["errcode"] == 0
    queued = stack.post(
        RECONG,
        token,
        {"faceImage": {"data": image}, "async": True, "callbackUrl": "http://127.0.0.1:9/x"},
    ).json()
    yield {"client": branch, "idNum": id_num, "async_task": queued["data"]["taskId"]}
    stack.post(DELETE, token, {"idNum": id_num})


def test_views_answer_with_masked_data(
    stack: Stack, readonly: psycopg.Connection, activity: dict
) -> None:
    name, id_num = activity["client"]["name"], activity["idNum"]
    person = readonly.execute(
        "SELECT * FROM person_summary WHERE customer_id = 'C-10086' AND created_by_client = %s",
        (name,),
    ).fetchone()
    assert person["id_num_masked"] == id_num[:3] + "*" * 12 + id_num[-3:]
    assert (person["name"], person["person_type"], person["faces"]) == ("审计测试", "vip", 1)
    volume = {
        r["kind"]: r
        for r in readonly.execute("SELECT * FROM daily_volume WHERE client = %s", (name,))
    }
    assert volume["register"]["requests"] == 2 and volume["register"]["failed"] == 1
    assert volume["recognize"]["matched"] >= 1
    errors = readonly.execute(
        "SELECT errcode, requests FROM daily_errors WHERE client = %s", (name,)
    ).fetchall()
    assert errors == [{"errcode": 3003, "requests": 1}]
    jobs = readonly.execute(
        "SELECT * FROM job_overview WHERE client = %s ORDER BY created_at", (name,)
    ).fetchall()
    assert [j["kind"] for j in jobs][:3] == ["register", "register", "recognize"]
    assert jobs[2]["is_match"] == "true" and jobs[0]["total_seconds"] > 0
    readonly.execute("SELECT * FROM job_queue").fetchall()
    failures = eventually(
        lambda: readonly.execute(
            "SELECT * FROM callback_failures WHERE task_id = %s", (activity["async_task"],)
        ).fetchall(),
        180,
        0.5,
        "the undeliverable callback is listed",
    )
    assert failures[0]["attempts"] >= 1 and failures[0]["last_error"]
    assert readonly.execute("SELECT count(*) AS n FROM audit_view").fetchone()["n"] > 0
    with stack.db() as conn:
        for view in VIEWS:
            assert conn.execute(
                "SELECT obj_description(%s::regclass, 'pg_class') AS c", (view,)
            ).fetchone()["c"], view


def test_readonly_role_reads_the_views_and_nothing_else(
    stack: Stack, readonly: psycopg.Connection
) -> None:
    for view in VIEWS:
        readonly.execute(f"SELECT * FROM {view} LIMIT 1").fetchall()
    denied = [
        "SELECT embedding FROM faces",
        "SELECT id_num_encrypted FROM persons",
        "SELECT id_num_index FROM persons",
        "SELECT name FROM persons",
        "SELECT * FROM job_inputs",
        "SELECT result FROM jobs",
        "SELECT payload FROM callback_deliveries",
        "SELECT * FROM audit_log",
        "SELECT callback_secret FROM api_clients",
        "SELECT token_hash FROM api_tokens",
        "SELECT * FROM files",
        "DELETE FROM persons",
        "TRUNCATE audit_log",
        "UPDATE audit_log SET person_ref = NULL",
    ]
    for sql in denied:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            readonly.execute(sql)
    with stack.db() as conn:
        columns = {
            r["column_name"]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ANY(%s)",
                (list(VIEWS),),
            )
        }
        granted = {
            r["table_name"]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.role_table_grants"
                " WHERE grantee = 'faceapi_readonly'"
            )
        }
    assert granted == set(VIEWS)
    assert not columns & {"embedding", "id_num_encrypted", "id_num_index", "payload", "result"}


def test_docs_example_queries_run_as_the_readonly_role(
    readonly: psycopg.Connection, activity: dict
) -> None:
    text = (ROOT / "docs" / "dba.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sql\n(.*?)```", text, re.S)
    statements = [s.strip() for b in blocks for s in b.split(";") if s.strip()]
    assert len(statements) >= 8
    for sql in statements:
        readonly.execute(sql).fetchall()


def test_role_creation_can_run_again(stack: Stack) -> None:
    text = (ROOT / "sql" / "0004_dba.sql").read_text(encoding="utf-8")
    block = text[text.index("DO $$") :]
    with stack.db() as conn:
        conn.execute(block)
        conn.execute(block)


def test_images_and_ciphertexts_are_stored_without_a_compression_attempt(db) -> None:
    """sql/0011: job images and photo ciphertexts do not compress, so PostgreSQL must not try
    (EXTERNAL: out of line, never pglz); a 64 KB value written now is stored uncompressed."""
    rows = db.execute(
        "SELECT attrelid::regclass::text AS tbl, attname, attstorage FROM pg_attribute"
        " WHERE (attrelid, attname) IN (('job_inputs'::regclass, 'data'),"
        " ('face_photos'::regclass, 'photo_encrypted'))"
    ).fetchall()
    assert sorted((r["tbl"], r["attname"], r["attstorage"]) for r in rows) == [
        ("face_photos", "photo_encrypted", "e"),
        ("job_inputs", "data", "e"),
    ]
    db.execute("CREATE TEMP TABLE storage_probe (LIKE job_inputs INCLUDING ALL)")
    # LIKE copies the column's storage; zeros compress to almost nothing under pglz
    db.execute(
        "INSERT INTO storage_probe (job_id, origin, data) VALUES (gen_random_uuid(), 'self', %s)",
        (bytes(65536),),
    )
    row = db.execute(
        "SELECT pg_column_compression(data) AS method, pg_column_size(data) AS size"
        " FROM storage_probe"
    ).fetchone()
    assert row["method"] is None and row["size"] >= 65536
