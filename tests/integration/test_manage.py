"""Person management on the real stack: get, update, list, faces, face delete, and erasure (no
row left that holds the person's id, blind index or embedding; recognition no longer finds them).
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from tests.conftest import FACES, AppClient, Stack, face_b64, new_id_num, small_jpeg_b64

BASE = "/tech/ai/face/faceLib/person"
REG, RECONG, VERIFY = f"{BASE}/reg", f"{BASE}/recong", f"{BASE}/verify"
GET, UPDATE, DELETE = f"{BASE}/get", f"{BASE}/update", f"{BASE}/delete"
LIST, FACES_, FACE_DELETE = f"{BASE}/list", f"{BASE}/faces", f"{BASE}/face/delete"
PERSON_KEYS = {
    "personId",
    "idNumMasked",
    "name",
    "personType",
    "customerID",
    "faces",
    "createdAt",
    "updatedAt",
}


@pytest.fixture(scope="module")
def ops(stack: Stack) -> dict[str, Any]:
    scopes = ["face:register", "face:recognize", "file:write", "person:read", "person:write"]
    return stack.client(scopes=scopes)


@pytest.fixture(scope="module")
def reader(stack: Stack) -> dict[str, Any]:
    return stack.client(scopes=["person:read"])


@pytest.fixture(scope="module")
def writer(stack: Stack) -> dict[str, Any]:
    return stack.client(scopes=["person:write"])


def reg(stack: Stack, token: str, image: str, id_num: str | None = None, **kw: Any) -> str:
    id_num = id_num or new_id_num()
    body = {
        "idNum": id_num,
        "name": kw.pop("name", "张三"),
        "personType": kw.pop("personType", "normal"),
        "faceImage": {"origin": kw.pop("origin", "self"), "data": image},
        **kw,
    }
    r = stack.post(REG, token, body).json()
    assert r["errcode"] == 0, r
    return id_num


@pytest.fixture
def person(stack: Stack, ops: dict) -> str:
    return reg(stack, ops["token"], face_b64("kit_harington_1.jpeg"), personType="vip")


def test_get_person_by_idnum_returns_the_record_never_embeddings(
    stack: Stack, person: str, reader: dict
) -> None:
    r = stack.post(GET, reader["token"], {"idNum": person})
    body = r.json()
    assert r.status_code == 200 and body["errcode"] == 0, body
    data = body["data"]
    assert set(data) == PERSON_KEYS | {"idNum"}
    assert data["idNum"] == person
    assert data["idNumMasked"] == person[:3] + "*" * 12 + person[-3:]
    assert (data["name"], data["personType"], data["customerID"]) == ("张三", "vip", "")
    assert data["faces"] == 1
    created = datetime.fromisoformat(data["createdAt"])
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=10)
    assert datetime.fromisoformat(data["updatedAt"]) >= created
    # the audit row points at the person by id, never by idNum
    time.sleep(0.3)
    with stack.db() as conn:
        row = conn.execute(
            "SELECT person_ref FROM audit_log WHERE client_id = %s AND endpoint = %s"
            " ORDER BY id DESC LIMIT 1",
            (reader["id"], GET),
        ).fetchone()
    assert row["person_ref"] == f"p:{data['personId']}"


def test_get_errors_and_scopes(api: AppClient, person: str, ops: dict, writer: dict) -> None:
    token = ops["token"]
    r = api.post(GET, token, {"idNum": new_id_num()})
    assert (r.status_code, r.json()["errcode"]) == (404, 5001)
    assert api.post(GET, token, {"idNum": "123"}).json()["errcode"] == 2003
    assert api.post(GET, token, {}).json()["errcode"] == 2001
    assert api.post(GET, token, ["x"]).json()["errcode"] == 2004
    assert api.get(GET, token).json()["errcode"] == 2007  # POST only: idNums stay out of URLs
    assert api.post(GET, None, {"idNum": person}).json()["errcode"] == 1001
    assert api.post(GET, writer["token"], {"idNum": person}).json()["errcode"] == 1004
    registrar = api.client(scopes=["face:register", "face:recognize"])
    for path in (GET, LIST, FACES_):
        assert api.post(path, registrar["token"], {"idNum": person}).json()["errcode"] == 1004
    for path in (UPDATE, DELETE, FACE_DELETE):
        r = api.post(path, registrar["token"], {"idNum": person, "faceId": 1, "name": "x"})
        assert r.json()["errcode"] == 1004


def test_update_person(stack: Stack, person: str, writer: dict, reader: dict) -> None:
    before = stack.post(GET, reader["token"], {"idNum": person}).json()["data"]
    r = stack.post(
        UPDATE,
        writer["token"],
        {"idNum": person, "name": " 李四 ", "personType": "inner", "customerID": "C-77"},
    )
    body = r.json()
    assert body["errcode"] == 0, body
    data = body["data"]
    assert set(data) == PERSON_KEYS  # the masked idNum only
    assert (data["name"], data["personType"], data["customerID"]) == ("李四", "inner", "C-77")
    assert data["updatedAt"] > before["updatedAt"] and data["createdAt"] == before["createdAt"]
    # fields not given are kept; "" clears customerID
    data = stack.post(UPDATE, writer["token"], {"idNum": person, "customerID": ""}).json()["data"]
    assert (data["name"], data["personType"], data["customerID"]) == ("李四", "inner", "")
    after = stack.post(GET, reader["token"], {"idNum": person}).json()["data"]
    assert (after["name"], after["personType"], after["faces"]) == ("李四", "inner", 1)

    assert stack.post(UPDATE, writer["token"], {"idNum": person}).json()["errcode"] == 2001
    bad = stack.post(UPDATE, writer["token"], {"idNum": person, "personType": "boss"}).json()
    assert (bad["errcode"], bad["data"]["field"]) == (2002, "personType")
    bad = stack.post(UPDATE, writer["token"], {"idNum": person, "name": "  "}).json()
    assert bad["errcode"] == 2002
    r = stack.post(UPDATE, writer["token"], {"idNum": new_id_num(), "name": "x"})
    assert r.json()["errcode"] == 5001
    assert stack.post(UPDATE, reader["token"], {"idNum": person, "name": "x"}).json()[
        "errcode"
    ] == (1004)


def test_list_filters_and_paging(stack: Stack, ops: dict, reader: dict) -> None:
    prefix = f"列表{secrets.token_hex(3)}"
    # three people (one face enrolled under two idNums is refused as a duplicate identity)
    a, b, _ = (
        reg(stack, ops["token"], small_jpeg_b64(photo, 500), name=f"{prefix}-{n}", **kw)
        for photo, n, kw in (
            ("kit_harington_2.jpeg", "a", {"personType": "vip"}),
            ("rose_leslie_1.jpg", "b", {"customerID": "CUST-B"}),
            ("biden_2.jpg", "c", {"personType": "inner"}),
        )
    )

    def listed(**filters: Any) -> dict:
        r = stack.post(LIST, reader["token"], {"namePrefix": prefix, **filters}).json()
        assert r["errcode"] == 0, r
        return r["data"]

    everyone = listed()
    assert everyone["total"] == 3 and everyone["page"] == 1 and everyone["pageSize"] == 20
    assert [p["name"] for p in everyone["persons"]] == [f"{prefix}-a", f"{prefix}-b", f"{prefix}-c"]
    first = everyone["persons"][0]
    assert set(first) == PERSON_KEYS  # masked idNum only, no idNum, no embeddings
    assert first["idNumMasked"] == a[:3] + "*" * 12 + a[-3:] and first["faces"] == 1

    assert [p["name"] for p in listed(personType="vip")["persons"]] == [f"{prefix}-a"]
    only_b = listed(customerID="CUST-B")
    assert only_b["total"] == 1 and only_b["persons"][0]["idNumMasked"].endswith(b[-3:])
    page1, page2 = listed(pageSize=2), listed(pageSize=2, page=2)
    assert len(page1["persons"]) == 2 and len(page2["persons"]) == 1 and page2["total"] == 3
    assert {p["personId"] for p in page1["persons"]}.isdisjoint(
        p["personId"] for p in page2["persons"]
    )
    created = first["createdAt"]
    assert listed(createdFrom=created)["total"] == 3
    assert listed(createdTo=created)["total"] == 0  # the range is [from, to)
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert listed(createdFrom=soon)["total"] == 0
    # LIKE wildcards in the prefix are literal
    assert stack.post(LIST, reader["token"], {"namePrefix": "%"}).json()["data"]["total"] == 0
    unfiltered = stack.post(LIST, reader["token"], {}).json()["data"]
    assert unfiltered["total"] >= 3

    for bad in ({"pageSize": 101}, {"page": 0}, {"createdFrom": "yesterday"}, {"personType": "x"}):
        assert stack.post(LIST, reader["token"], bad).json()["errcode"] == 2002, bad


def test_list_and_delete_single_faces(stack: Stack, ops: dict, reader: dict, writer: dict) -> None:
    id_num = reg(stack, ops["token"], face_b64("kit_harington_2.jpeg"))
    reg(stack, ops["token"], small_jpeg_b64("kit_harington_3.jpg"), id_num=id_num)
    body = stack.post(FACES_, reader["token"], {"idNum": id_num}).json()
    assert body["errcode"] == 0, body
    faces = body["data"]["faces"]
    assert len(faces) == 2
    for face in faces:
        assert set(face) == {
            "faceId",
            "box",
            "quality",
            "model",
            "backend",
            "imageSha256",
            "createdAt",
        }
        assert len(face["box"]) == 4 and len(face["imageSha256"]) == 64
    r = stack.post(FACE_DELETE, writer["token"], {"faceId": faces[0]["faceId"]}).json()
    assert r["errcode"] == 0, r
    assert r["data"] == {
        "faceId": faces[0]["faceId"],
        "personId": body["data"]["personId"],
        "deleted": "true",
        "facesLeft": 1,
    }
    left = stack.post(FACES_, reader["token"], {"idNum": id_num}).json()["data"]["faces"]
    assert [f["faceId"] for f in left] == [faces[1]["faceId"]]
    assert stack.post(GET, reader["token"], {"idNum": id_num}).json()["data"]["faces"] == 1

    again = stack.post(FACE_DELETE, writer["token"], {"faceId": faces[0]["faceId"]})
    assert (again.status_code, again.json()["errcode"]) == (404, 5001)
    assert stack.post(FACE_DELETE, writer["token"], {"faceId": "x"}).json()["errcode"] == 2002
    assert stack.post(FACE_DELETE, writer["token"], {}).json()["errcode"] == 2001
    assert stack.post(FACES_, reader["token"], {"idNum": new_id_num()}).json()["errcode"] == 5001


def test_erasure_leaves_no_trace_and_recognition_no_longer_finds_them(
    stack: Stack, ops: dict, writer: dict, reader: dict
) -> None:
    # the gallery holds this test's enrolments only: after the erasure nobody matches him
    token = ops["token"]
    id_num = reg(stack, token, face_b64("alex_lacamoire_2.jpg"), name="擦除测试")
    upload = requests.post(
        f"{stack.api_url}/tech/file/upload",
        files={"file": ("a.png", (FACES / "alex_lacamoire_1.png").read_bytes())},
        headers={"Authorization": token},
        timeout=60,
    ).json()
    assert upload["errcode"] == 0, upload
    path = upload["data"]["path"]
    reg(stack, token, path, id_num=id_num, origin="fds")
    person = stack.post(GET, reader["token"], {"idNum": id_num}).json()["data"]
    assert person["faces"] == 2
    pid = person["personId"]

    probe = {"faceImage": {"data": small_jpeg_b64("alex_lacamoire_3.jpg")}}
    matched = stack.post(RECONG, token, probe).json()
    assert matched["data"]["isMatch"] == "true" and matched["data"]["idNum"] == id_num, matched
    # an async recognition whose callback cannot be delivered keeps its payload in the database
    queued = stack.post(
        RECONG, token, {**probe, "async": True, "callbackUrl": "http://127.0.0.1:9/cb"}
    ).json()
    async_task = queued["data"]["taskId"]
    assert stack.wait_task(token, async_task)["result"]["data"]["idNum"] == id_num
    # 1:1 verify names the person in the job's request_meta (erased below)
    verify = stack.post(VERIFY, token, {**probe, "idNum": id_num})
    assert verify.status_code == 200 and verify.json()["errcode"] == 0, verify.json()
    assert verify.json()["data"]["isMatch"] == "true", verify.json()

    with stack.db() as conn:
        p = conn.execute("SELECT * FROM persons WHERE id = %s", (pid,)).fetchone()
        index_hex = bytes(p["id_num_index"]).hex()
        cipher_hex = bytes(p["id_num_encrypted"]).hex()
        embeddings = [
            r["embedding"]
            for r in conn.execute("SELECT embedding::text FROM faces WHERE person_id = %s", (pid,))
        ]
        assert len(embeddings) == 2
        assert (
            conn.execute(
                "SELECT count(*) AS n FROM jobs WHERE result ->> '_personId' = %s", (str(pid),)
            ).fetchone()["n"]
            >= 2
        )
        assert (
            conn.execute(
                "SELECT count(*) AS n FROM callback_deliveries"
                " WHERE payload -> 'data' ->> '_personId' = %s",
                (str(pid),),
            ).fetchone()["n"]
            == 1
        )
        refs = {
            r["person_ref"]
            for r in conn.execute(
                "SELECT DISTINCT person_ref FROM audit_log WHERE person_ref IS NOT NULL"
            )
        }
        assert {f"p:{pid}", f"b:{index_hex}"} <= refs

    r = stack.post(DELETE, writer["token"], {"idNum": id_num})
    body = r.json()
    assert r.status_code == 200 and body["errcode"] == 0, body
    assert body["data"] == {"deleted": "true", "faces": 2, "images": 1}

    assert stack.post(GET, reader["token"], {"idNum": id_num}).json()["errcode"] == 5001
    assert stack.post(DELETE, writer["token"], {"idNum": id_num}).json()["errcode"] == 5001
    after = stack.post(RECONG, token, probe).json()
    assert after["errcode"] in (0, 5002) and after["data"]["isMatch"] == "false", after
    assert "idNum" not in after["data"]
    old = stack.wait_task(token, async_task)["result"]["data"]
    assert old["isMatch"] == "false" and "idNum" not in old
    # the stored image is gone from the file server too
    gone = stack.get(f"/tech/file/{path}", token)
    assert gone.json()["errcode"] == 3008

    time.sleep(0.5)  # the delete request's own audit row is written after its response
    with stack.db() as conn:
        assert conn.execute("SELECT 1 FROM persons WHERE id = %s", (pid,)).fetchone() is None
        assert conn.execute("SELECT 1 FROM faces WHERE person_id = %s", (pid,)).fetchone() is None
        assert (
            conn.execute(
                "SELECT 1 FROM faces WHERE embedding::text = ANY(%s)", (embeddings,)
            ).fetchone()
            is None
        )
        assert conn.execute("SELECT 1 FROM files WHERE path = %s", (path,)).fetchone() is None
        assert (
            conn.execute(
                "SELECT 1 FROM jobs WHERE result ->> '_personId' = %s"
                " OR request_meta ->> 'personId' = %s",
                (str(pid), str(pid)),
            ).fetchone()
            is None
        )
        assert (
            conn.execute(
                "SELECT 1 FROM callback_deliveries WHERE payload -> 'data' ->> '_personId' = %s",
                (str(pid),),
            ).fetchone()
            is None
        )
        assert (
            conn.execute(
                "SELECT 1 FROM audit_log WHERE person_ref = ANY(%s)",
                ([f"p:{pid}", f"b:{index_hex}"],),
            ).fetchone()
            is None
        )
        last = conn.execute(
            "SELECT person_ref, errcode FROM audit_log WHERE endpoint = %s AND client_id = %s"
            " ORDER BY id DESC LIMIT 2",
            (DELETE, writer["id"]),
        ).fetchall()
        assert [row["person_ref"] for row in last] == [None, None]
        # every row of every table, as text: neither the blind index nor the ciphertext
        tables = [
            r["relname"]
            for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND c.relkind = 'r'"
            )
        ]
        for table in tables:
            hit = conn.execute(
                f'SELECT count(*) AS n FROM "{table}" t'
                " WHERE strpos(row_to_json(t)::text, %s) > 0"
                " OR strpos(row_to_json(t)::text, %s) > 0",
                (index_hex, cipher_hex),
            ).fetchone()
            assert hit["n"] == 0, table
