"""Image origins fds (the file server) and uri (fetch by URL) on the real stack, real photos.

The session stack runs with the default fetch policy (nothing allowlisted): every uri pointing
at a local server must be refused before a single request reaches it. A second API + worker
pair (`intranet`: same Postgres, its own Redis database as broker) runs with
FACELIB_FETCH_ALLOWLIST=127.0.0.1/32, as an operator would allow an intranet image server.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from shared.files.uploads import prepare_upload, purge_unused_files
from tests.conftest import FACES, AppClient, Stack, face_bytes, new_id_num
from tests.helpers import RECONG, REG, ImageServer, recong_body, reg_body

UPLOAD = "/tech/file/upload"
PATH_RE = re.compile(r"[0-9a-f]{64}\.jpg")


def fds(body: dict[str, Any], path: str) -> dict[str, Any]:
    body["faceImage"] = {"type": "image", "origin": "fds", "data": path}
    return body


def uri(body: dict[str, Any], url: str) -> dict[str, Any]:
    body["faceImage"] = {"type": "image", "origin": "uri", "data": url}
    return body


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    s = ImageServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def filer(stack: Stack) -> dict[str, Any]:
    return stack.client(scopes=["face:register", "face:recognize", "file:write"])


@pytest.fixture(scope="module")
def intranet(stack: Stack) -> Iterator[Stack]:
    """A second API and worker whose fetch policy allowlists 127.0.0.1 (and only it)."""
    from shared.cli.embedded import free_port

    redis_url = re.sub(r"/\d*$", "", stack.redis_url.rstrip("/")) + "/7"
    port = free_port()
    env = {
        **stack.env,
        "REDIS_URL": redis_url,
        "FACELIB_PORT": str(port),
        "FACELIB_FETCH_ALLOWLIST": "127.0.0.1/32",
        "FACELIB_FETCH_TIMEOUT_SECONDS": "2",
        "FACELIB_FETCH_MAX_BYTES": str(2 * 1024 * 1024),
        "FACELIB_JOB_MAX_ATTEMPTS": "2",
    }
    st = Stack(f"http://127.0.0.1:{port}", stack.database_url, redis_url, env, stack.log_dir)
    # "intranet-" names keep its logs apart from the session's, still in log_dir for the scan
    st.start_worker(concurrency=1, beat=False, name="intranet-worker")
    st.start_api(workers=1, threads=4, name="intranet-api")
    with st.running():
        yield st


def upload(stack: Stack, token: str, name: str, *, as_json: bool = False) -> requests.Response:
    raw = (FACES / name).read_bytes()
    if as_json:
        return stack.post(UPLOAD, token, {"data": base64.b64encode(raw).decode()})
    return requests.post(
        f"{stack.api_url}{UPLOAD}",
        files={"file": (name, raw, "application/octet-stream")},
        headers={"Authorization": token},
        timeout=60,
    )


# --- fds: the file server -------------------------------------------------------------------------


def test_upload_downscales_reencodes_and_dedupes(stack: Stack, filer: dict) -> None:
    r = upload(stack, filer["token"], "obama_3.jpg")  # 1434x2333 (EXIF-upright), 596 KB
    assert r.status_code == 201, r.text
    data = r.json()["data"]
    assert PATH_RE.fullmatch(data["path"]) and data["created"] == "true"
    assert max(data["width"], data["height"]) == 1280
    assert data["size"] < data["originalSize"] == len(face_bytes("obama_3.jpg"))
    again = upload(stack, filer["token"], "obama_3.jpg", as_json=True)
    assert again.status_code == 200 and again.json()["data"]["path"] == data["path"]
    assert again.json()["data"]["created"] == "false"

    got = stack.get(f"/tech/file/{data['path']}", filer["token"])
    assert got.status_code == 200 and got.headers["Content-Type"] == "image/jpeg"
    assert hashlib.sha256(got.content).hexdigest() == data["sha256"] == data["path"][:64]
    img = Image.open(io.BytesIO(got.content))
    assert img.format == "JPEG" and img.size == (data["width"], data["height"])
    assert "exif" not in img.info

    # base64 JSON over the app-wide 1 MiB body cap: the upload endpoint has its own
    r = upload(stack, filer["token"], "rgba_32bit.png", as_json=True)
    assert r.status_code == 201, r.text
    assert r.json()["data"]["size"] < len(face_bytes("rgba_32bit.png")) // 4


def test_upload_refuses_what_is_not_a_sane_image(api: AppClient) -> None:
    token = api.client(scopes=["file:write"])["token"]
    hello = base64.b64encode(b"hello" * 100).decode()
    assert api.post(UPLOAD, token, {"data": hello}).json()["errcode"] == 3003
    assert api.post(UPLOAD, token, {"data": "not base64!!"}).json()["errcode"] == 3002
    assert api.post(UPLOAD, token, {}).json()["errcode"] == 2001
    # a decompression bomb: 10000x10000 of one colour is a few KB of PNG, 100 M pixels
    buf = io.BytesIO()
    Image.new("L", (10000, 10000)).save(buf, "PNG")
    r = api.post(UPLOAD, token, {"data": base64.b64encode(buf.getvalue()).decode()})
    assert r.json()["errcode"] == 3004
    big = base64.b64encode(b"\xff" * (11 * 1024 * 1024)).decode()
    assert api.post(UPLOAD, token, {"data": big}).json()["errcode"] in (3001, 2008)
    no_scope = api.client(scopes=["face:register"])
    multipart = {"file": (io.BytesIO(face_bytes("obama_2.jpg")), "obama_2.jpg")}
    assert api.post(UPLOAD, no_scope["token"], data=multipart).json()["errcode"] == 1004


def test_files_are_scoped_to_their_client(stack: Stack, filer: dict) -> None:
    path = upload(stack, filer["token"], "biden_2.jpg").json()["data"]["path"]
    other = stack.client(scopes=["face:register", "face:recognize", "file:write"])
    assert stack.get(f"/tech/file/{path}", other["token"]).json()["errcode"] == 3008
    r = requests.delete(
        f"{stack.api_url}/tech/file/{path}", headers={"Authorization": other["token"]}, timeout=30
    )
    assert r.json()["errcode"] == 3008
    r = stack.post(RECONG, other["token"], fds(recong_body(""), path))
    assert r.json()["errcode"] == 3008
    # the other client uploads the same photo: one stored object, two owners
    assert upload(stack, other["token"], "biden_2.jpg").json()["data"]["path"] == path
    r = requests.delete(
        f"{stack.api_url}/tech/file/{path}", headers={"Authorization": filer["token"]}, timeout=30
    )
    assert r.json()["data"] == {"path": path, "deleted": "true"}
    assert stack.get(f"/tech/file/{path}", filer["token"]).json()["errcode"] == 3008
    assert stack.get(f"/tech/file/{path}", other["token"]).status_code == 200


@pytest.mark.parametrize(
    "raw_path",
    [
        "/tech/file/../../etc/passwd",
        "/tech/file/..%2F..%2Fetc%2Fpasswd",
        "/tech/file/%2e%2e/%2e%2e/etc/passwd",
        "/tech/file/%252e%252e%252fetc%252fpasswd",
        "/tech/file//etc/passwd",
        "/tech/file/%2Fetc%2Fpasswd",
        "/tech/file/..%5c..%5cetc%5cpasswd",
        "/tech/file/" + "a" * 64 + ".jpg%00.png",
        "/tech/file/" + "A" * 64 + ".jpg",
    ],
)
def test_path_traversal_is_refused(stack: Stack, filer: dict, raw_path: str) -> None:
    """Sent byte for byte (no client-side normalisation of ../)."""
    host, port = stack.api_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("GET", raw_path, skip_accept_encoding=True)
    conn.putheader("Authorization", filer["token"])
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status in (400, 404), (resp.status, body)
    assert b"root:" not in body
    import json

    assert json.loads(body)["errcode"] in (2002, 2006), body


def test_unknown_and_malformed_fds_paths_in_jobs(stack: Stack, filer: dict) -> None:
    token = filer["token"]
    unknown = "0" * 64 + ".jpg"
    assert stack.get(f"/tech/file/{unknown}", token).json()["errcode"] == 3008
    assert stack.post(RECONG, token, fds(recong_body(""), unknown)).json()["errcode"] == 3008
    for bad in ("../../etc/passwd", "/etc/passwd", "%2e%2e%2fetc%2fpasswd", "x.jpg"):
        r = stack.post(RECONG, token, fds(recong_body(""), bad)).json()
        assert r["errcode"] == 2002, r


def test_fds_register_and_recognise_sync_and_async(stack: Stack, filer: dict) -> None:
    token = filer["token"]
    enrol = upload(stack, token, "kit_harington_1.jpeg").json()["data"]["path"]
    probe = upload(stack, token, "kit_harington_3.jpg").json()["data"]["path"]
    id_num = new_id_num()
    r = stack.post(REG, token, fds(reg_body(id_num, ""), enrol))
    assert r.json() == {"errcode": 0, "errmsg": "SUCCESS", "data": {"ok": "true"}}, r.text
    r = stack.post(RECONG, token, fds(recong_body(""), probe)).json()
    assert r["errcode"] == 0 and r["data"]["isMatch"] == "true" and r["data"]["idNum"] == id_num

    enrol2 = upload(stack, token, "rose_leslie_1.jpg").json()["data"]["path"]
    id2 = new_id_num()
    r = stack.post(REG, token, fds(reg_body(id2, "", **{"async": True}), enrol2))
    assert r.status_code == 202
    assert stack.wait_task(token, r.json()["data"]["taskId"])["result"]["errcode"] == 0
    probe2 = upload(stack, token, "rose_leslie_2.jpg").json()["data"]["path"]
    r = stack.post(RECONG, token, fds(recong_body("", **{"async": True}), probe2))
    result = stack.wait_task(token, r.json()["data"]["taskId"])["result"]
    assert result["errcode"] == 0 and result["data"]["idNum"] == id2, result
    with stack.db() as db:
        row = db.execute(
            "SELECT last_used_at > created_at AS used FROM files WHERE path = %s", (probe2,)
        ).fetchone()
    assert row["used"]


def test_compression_keeps_recognition_results(stack: Stack) -> None:
    """The same photos straight and through the upload pipeline: same decisions, close scores."""
    from shared.score import score_from_distance
    from worker.engine import EngineConfig, get_engine

    engine = get_engine(EngineConfig())
    names = ["obama_1.jpg", "obama_3.jpg", "obama_1080p.jpg", "biden_1.jpg", "biden_2.jpg",
             "alex_lacamoire_3.jpg", "rgba_32bit.png", "lin_manuel_miranda_1.png"]  # fmt: skip
    embs: dict[str, list[Any]] = {}
    for name in names:
        raw = face_bytes(name)
        small = prepare_upload(
            raw, max_bytes=10 << 20, max_pixels=25_000_000, max_side=1280, quality=90
        )
        assert len(small.data) < len(raw)
        embs[name] = [engine.analyze(b, "recognize").faces[0].embedding for b in (raw, small.data)]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            s0, s1 = (score_from_distance(1 - float(embs[a][k] @ embs[b][k])) for k in (0, 1))
            assert abs(s0 - s1) <= 2, (a, b, s0, s1)
            assert (s0 >= 70) == (s1 >= 70), (a, b, s0, s1)


def test_retention_purge_keeps_recent_and_waited_on_files(stack: Stack, filer: dict) -> None:
    token = filer["token"]
    old = upload(stack, token, "obama_small.jpg").json()["data"]["path"]
    waited = upload(stack, token, "obama_240p.jpg").json()["data"]["path"]
    fresh = upload(stack, token, "obama_480p.jpg").json()["data"]["path"]
    job_id = uuid.uuid4()
    with stack.db() as db:
        db.execute(
            "UPDATE files SET last_used_at = now() - interval '40 days' WHERE path IN (%s, %s)",
            (old, waited),
        )
        # a job still waiting for `waited` (leased far ahead, so no sweeper re-sends it)
        db.execute(
            "INSERT INTO jobs (id, kind, status, client_id, request_hash, enqueued_at,"
            " lease_expires_at) VALUES (%s, 'recognize', 'running', %s, '\\x00', now(),"
            " now() + interval '1 hour')",
            (job_id, filer["id"]),
        )
        db.execute(
            "INSERT INTO job_inputs (job_id, origin, ref) VALUES (%s, 'fds', %s)", (job_id, waited)
        )
    try:
        counts = purge_unused_files(30)
        assert counts["rows"] >= 1 and counts["objects"] >= 1
        assert stack.get(f"/tech/file/{old}", token).json()["errcode"] == 3008
        assert stack.get(f"/tech/file/{waited}", token).status_code == 200
        assert stack.get(f"/tech/file/{fresh}", token).status_code == 200
        assert purge_unused_files(30) == {"rows": 0, "objects": 0}
        assert purge_unused_files(0) == {"rows": 0, "objects": 0}  # 0 disables the purge
    finally:
        with stack.db() as db:
            db.execute("DELETE FROM jobs WHERE id = %s", (job_id,))
    from shared.settings import get_settings

    assert not (Path(get_settings().files_dir) / old[:2] / old).exists()


# --- uri: refused by the default policy, no request reaches the server ---------------------------


def test_default_policy_refuses_local_and_odd_urls_without_a_request(
    stack: Stack, filer: dict, images: ImageServer
) -> None:
    token = filer["token"]
    photo = "/faces/obama_2.jpg"
    urls = [
        f"{images.base}{photo}",
        f"http://localhost:{images.port}{photo}",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        f"http://[::1]:{images.port}{photo}",
        "http://0x7f000001/",
        f"http://0x7f000001:{images.port}{photo}",
        "http://100.64.0.1/a.jpg",
        "http://[::ffff:127.0.0.1]/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_INFO",
    ]
    for url in urls:
        r = stack.post(REG, token, uri(reg_body(new_id_num(), ""), url)).json()
        # refused by the API's syntax check at once, or by the worker's resolve-and-check
        assert r["errcode"] == 3007, (url, r)
        assert r["data"] in ({"ok": "false"}, {"field": "faceImage.data"}), (url, r)
    r = stack.post(RECONG, token, uri(recong_body("", **{"async": True}), f"{images.base}{photo}"))
    if r.status_code == 202:  # refused by the worker (the API may also refuse it at once)
        assert stack.wait_task(token, r.json()["data"]["taskId"])["result"]["errcode"] == 3007
    else:
        assert r.json()["errcode"] == 3007
    assert images.hits == []


# --- uri: with 127.0.0.1 allowlisted --------------------------------------------------------------


def test_allowlisted_uri_registers_and_recognises(
    intranet: Stack, filer: dict, images: ImageServer
) -> None:
    token = filer["token"]
    images.hits.clear()
    id_num = new_id_num()
    r = intranet.post(REG, token, uri(reg_body(id_num, ""), f"{images.base}/faces/obama_2.jpg"))
    assert r.json() == {"errcode": 0, "errmsg": "SUCCESS", "data": {"ok": "true"}}, r.text
    assert images.hits == ["/faces/obama_2.jpg"]
    r = intranet.post(RECONG, token, uri(recong_body(""), f"{images.base}/faces/obama_720p.jpg"))
    assert r.json()["errcode"] == 0 and r.json()["data"]["isMatch"] == "true", r.text
    r = intranet.post(
        RECONG, token, uri(recong_body("", **{"async": True}), f"{images.base}/faces/obama_1.jpg")
    )
    assert r.status_code == 202
    result = intranet.wait_task(token, r.json()["data"]["taskId"])["result"]
    assert result["errcode"] == 0 and result["data"]["isMatch"] == "true", result
    r = intranet.post(
        REG,
        token,
        uri(reg_body(new_id_num(), "", **{"async": True}), f"{images.base}/faces/biden_2.jpg"),
    )
    assert intranet.wait_task(token, r.json()["data"]["taskId"])["result"]["errcode"] == 0


def test_redirect_from_allowlisted_server_to_a_local_one_is_refused(
    intranet: Stack, filer: dict, images: ImageServer
) -> None:
    other = ImageServer("127.0.0.2")  # loopback too, but not on the allowlist
    try:
        for target in (f"{other.base}/faces/obama_2.jpg", "http://169.254.169.254/"):
            url = f"{images.base}/redirect?{target}"
            r = intranet.post(REG, filer["token"], uri(reg_body(new_id_num(), ""), url)).json()
            assert r["errcode"] == 3007, r
        assert other.hits == []
    finally:
        other.close()


@pytest.mark.parametrize(
    ("route", "code", "bound"),
    [("/endless", 3001, 15), ("/slow", 3006, 20), ("/text", 3003, 15), ("/missing", 3006, 15)],
)
def test_bad_downloads_fail_with_their_errcode_in_bounded_time(
    intranet: Stack, filer: dict, images: ImageServer, route: str, code: int, bound: float
) -> None:
    started = time.monotonic()
    r = intranet.post(RECONG, filer["token"], uri(recong_body(""), f"{images.base}{route}"))
    assert r.json()["errcode"] == code, r.text
    assert time.monotonic() - started < bound
