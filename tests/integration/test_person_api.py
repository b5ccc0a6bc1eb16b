"""reg and recong end to end on the real stack with real photos: the seed's shapes, async with
signed callbacks and polling, idempotency, validation errcodes, worker loss."""

from __future__ import annotations

import base64
import contextlib
import csv
import json
import os
import signal
from typing import Any

import psutil
import pytest
from standardwebhooks.webhooks import Webhook

from tests.conftest import LFW, AppClient, Stack, face_b64, new_id_num, small_jpeg_b64
from tests.helpers import (
    RECONG,
    REG,
    TASK,
    LocalServer,
    QuietHandler,
    eventually,
    recong_body,
    reg_body,
)

LIB = "person-api"


class Receiver(LocalServer):
    """A local callback receiver that records requests and can refuse the first N."""

    class handler(QuietHandler):  # noqa: N801 - LocalServer's attribute
        def do_POST(self) -> None:  # noqa: N802 - http.server's API
            body = self.rfile.read(int(self.headers["content-length"]))
            self.owner.requests.append({"headers": dict(self.headers), "body": body})
            refused = len(self.owner.requests) <= self.owner.refuse_first
            self.send(503 if refused else 200)

    def __init__(self, refuse_first: int = 0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.refuse_first = refuse_first
        super().__init__()
        self.url = f"{self.base}/facelib/callback"

    def wait(self, n: int, timeout: float = 60) -> None:
        eventually(lambda: len(self.requests) >= n, timeout, 0.1, f"{n} callbacks received")


@pytest.fixture(scope="module")
def branch(stack: Stack) -> dict[str, Any]:
    return stack.client(scopes=["face:register", "face:recognize"])


@pytest.fixture
def library(stack: Stack, branch: dict[str, Any]) -> dict[str, str]:
    """Obama and Biden enrolled (from the seed-shaped sync request), in a library of their own."""
    admin = stack.client(scopes=["admin"])
    r = stack.post("/tech/ai/face/faceLib/library/create", admin["token"], {"libId": LIB})
    assert r.json()["errcode"] == 0, r.text
    ids = {"obama": new_id_num(), "biden": new_id_num()}
    for who, photo in (("obama", "obama_1.jpg"), ("biden", "biden_1.jpg")):
        body = reg_body(ids[who], small_jpeg_b64(photo), libIds=[LIB])
        body["name"] = who
        r = stack.post(REG, branch["token"], body)
        assert r.json() == {"errcode": 0, "data": {"ok": "true"}, "errmsg": "SUCCESS"}, r.text
    return ids


def test_seed_reg_example_gets_exactly_the_seed_shape(stack: Stack, branch: dict) -> None:
    r = stack.post(REG, branch["token"], reg_body(new_id_num(), face_b64("obama_2.jpg")))
    assert r.status_code == 200
    assert r.json() == {"errcode": 0, "data": {"ok": "true"}, "errmsg": "SUCCESS"}
    assert r.headers["X-Task-Id"]


def test_recognise_enrolled_person_with_seed_shape(
    stack: Stack, branch: dict, library: dict[str, str]
) -> None:
    seed_shaped = stack.post(RECONG, branch["token"], recong_body(small_jpeg_b64("obama_3.jpg")))
    assert seed_shaped.json()["errcode"] == 0 and seed_shaped.json()["errmsg"] == "SUCCESS"
    assert {"isMatch", "score"} <= set(seed_shaped.json()["data"])
    r = stack.post(
        RECONG, branch["token"], recong_body(small_jpeg_b64("obama_3.jpg"), libIds=[LIB])
    )
    body = r.json()
    assert body["errcode"] == 0 and body["errmsg"] == "SUCCESS", body
    data = body["data"]
    assert data["isMatch"] == "true"
    assert data["idNum"] == library["obama"] and data["name"] == "obama"
    assert data["personType"] == "vip" and data["customerID"] == ""
    assert isinstance(data["score"], str) and float(data["score"]) >= 80
    for key in ("idNum", "customerID", "name", "personType", "isMatch", "score"):
        assert isinstance(data[key], str)


def test_a_stranger_is_not_matched(stack: Stack, branch: dict, library: dict) -> None:
    r = stack.post(
        RECONG, branch["token"], recong_body(small_jpeg_b64("rose_leslie_1.jpg"), libIds=[LIB])
    )
    data = r.json()["data"]
    assert r.json()["errcode"] == 0
    assert data["isMatch"] == "false"
    assert float(data["score"]) < 70
    assert "idNum" not in data and "name" not in data


@pytest.mark.lfw
def test_library_with_lfw_people(stack: Stack, branch: dict, library: dict) -> None:
    """20 LFW people enrolled: each one's second photo finds them; unenrolled people don't match."""
    with open(LFW / "people.csv") as f:
        people = list(csv.DictReader(f))
    multi = [p["name"] for p in people if int(p["images"]) >= 2][:20]
    single = [p["name"] for p in people if int(p["images"]) == 1][:5]
    ids = {}
    for name in multi:
        ids[name] = new_id_num()
        img = base64.b64encode((LFW / "images" / name / f"{name}_0001.jpg").read_bytes()).decode()
        body = reg_body(ids[name], img, personType="normal", libIds=[LIB])
        body["name"] = name
        r = stack.post(REG, branch["token"], body).json()
        assert r["errcode"] in (0, 4001, 4002, 4003, 4004, 4005, 4006), r
        if r["errcode"]:
            ids.pop(name)
    assert len(ids) >= 15
    found = 0
    for name, id_num in ids.items():
        img = base64.b64encode((LFW / "images" / name / f"{name}_0002.jpg").read_bytes()).decode()
        data = stack.post(RECONG, branch["token"], recong_body(img, libIds=[LIB])).json()["data"]
        found += data.get("idNum") == id_num
        assert data.get("idNum") in (None, id_num)  # never another enrolled person
    assert found >= 0.8 * len(ids)
    for name in single:
        img = base64.b64encode((LFW / "images" / name / f"{name}_0001.jpg").read_bytes()).decode()
        r = stack.post(RECONG, branch["token"], recong_body(img, libIds=[LIB])).json()
        if r["errcode"] == 0:
            assert r["data"]["isMatch"] == "false", (name, r)
    r = stack.post(
        RECONG, branch["token"], recong_body(small_jpeg_b64("obama_2.jpg"), libIds=[LIB])
    ).json()
    assert r["data"]["idNum"] == library["obama"] and float(r["data"]["score"]) >= 80


def test_async_callback_is_signed_and_matches_polling(
    stack: Stack, branch: dict, library: dict
) -> None:
    receiver = Receiver()
    try:
        body = recong_body(small_jpeg_b64("biden_2.jpg"), requestId="req-cb-1", libIds=[LIB])
        body["async"] = True
        body["callbackUrl"] = receiver.url
        r = stack.post(RECONG, branch["token"], body)
        assert r.status_code == 202
        env = r.json()
        assert env["errcode"] == 0 and env["data"]["status"] in ("queued", "running")
        task_id = env["data"]["taskId"]
        receiver.wait(1)
        req = receiver.requests[0]
        payload = Webhook(branch["callback_secret"]).verify(req["body"], req["headers"])
        assert payload["taskId"] == task_id and payload["requestId"] == "req-cb-1"
        assert payload["errcode"] == 0 and payload["data"]["isMatch"] == "true"
        assert payload["data"]["idNum"] == library["biden"]
        with pytest.raises(Exception):  # noqa: B017 - any verification error
            Webhook("whsec_" + base64.b64encode(b"x" * 24).decode()).verify(
                req["body"], req["headers"]
            )
        poll = stack.get(f"{TASK}{task_id}", branch["token"]).json()
        assert poll["data"]["status"] == "done"
        result = poll["data"]["result"]
        assert result == {k: payload[k] for k in ("errcode", "errmsg", "data")}
    finally:
        receiver.close()


def test_callback_retried_until_the_receiver_accepts(stack: Stack, branch: dict) -> None:
    receiver = Receiver(refuse_first=3)
    try:
        body = reg_body(new_id_num(), face_b64("obama_2.jpg"), callbackUrl=receiver.url)
        body["async"] = True
        task_id = stack.post(REG, branch["token"], body).json()["data"]["taskId"]
        receiver.wait(4, timeout=90)
        ids = {r["headers"]["webhook-id"] for r in receiver.requests}
        assert len(ids) == 1  # the same webhook-id on every retry
        delivered = stack.wait_task(
            branch["token"], task_id, until=lambda d: d["callback"]["status"] == "delivered"
        )
        assert delivered["callback"]["attempts"] == 4
        with stack.db() as conn:
            attempts = conn.execute(
                "SELECT a.attempt_no, a.http_status FROM callback_attempts a"
                " JOIN callback_deliveries d ON d.id = a.delivery_id WHERE d.job_id = %s"
                " ORDER BY a.attempt_no",
                (task_id,),
            ).fetchall()
        assert [(a["attempt_no"], a["http_status"]) for a in attempts] == [
            (1, 503),
            (2, 503),
            (3, 503),
            (4, 200),
        ]
    finally:
        receiver.close()


def test_dead_letter_and_replay(stack: Stack, branch: dict) -> None:
    receiver = Receiver(refuse_first=5)  # schedule "1,1,1,1": 5 attempts, all refused
    try:
        body = recong_body(face_b64("obama_2.jpg"), callbackUrl=receiver.url)
        body["async"] = True
        task_id = stack.post(RECONG, branch["token"], body).json()["data"]["taskId"]
        receiver.wait(5, timeout=90)
        cb = stack.wait_task(
            branch["token"], task_id, until=lambda d: d["callback"]["status"] == "dead"
        )
        dead = stack.get("/tech/ai/face/faceLib/callbacks?status=dead", branch["token"]).json()
        assert task_id in {d["taskId"] for d in dead["data"]["items"]}
        delivery_id = cb["callback"]["deliveryId"]
        r = stack.post(f"/tech/ai/face/faceLib/callbacks/{delivery_id}/replay", branch["token"], {})
        assert r.json()["errcode"] == 0
        receiver.wait(6)
        other = stack.client()
        r = stack.post(f"/tech/ai/face/faceLib/callbacks/{delivery_id}/replay", other["token"], {})
        assert r.json()["errcode"] == 6004  # another client's delivery is invisible
    finally:
        receiver.close()


def test_same_request_id_runs_once(stack: Stack, branch: dict) -> None:
    id_num = new_id_num()
    body = reg_body(id_num, face_b64("obama_2.jpg"), requestId="same-request-1")
    first = stack.post(REG, branch["token"], body)
    second = stack.post(REG, branch["token"], body)
    assert (
        first.json() == second.json() == {"errcode": 0, "data": {"ok": "true"}, "errmsg": "SUCCESS"}
    )
    assert first.headers["X-Task-Id"] == second.headers["X-Task-Id"]
    body["async"] = True  # the async flag is not part of the request's identity
    third = stack.post(REG, branch["token"], body).json()
    assert third["data"]["taskId"] == first.headers["X-Task-Id"]
    with stack.db() as conn:
        jobs = conn.execute(
            "SELECT count(*) AS n FROM jobs WHERE request_id = 'same-request-1'"
        ).fetchone()
        faces = conn.execute(
            "SELECT count(*) AS n FROM faces f JOIN jobs j ON j.id = f.job_id"
            " WHERE j.request_id = 'same-request-1'"
        ).fetchone()
    assert jobs["n"] == 1 and faces["n"] == 1
    changed = {**body, "name": "someone else"}
    r = stack.post(REG, branch["token"], changed)
    assert r.status_code == 409 and r.json()["errcode"] == 2005
    header = stack.post(
        REG,
        branch["token"],
        reg_body(id_num, face_b64("obama_2.jpg")),
        headers={"Idempotency-Key": "k-1"},
    )
    again = stack.post(
        REG,
        branch["token"],
        reg_body(id_num, face_b64("obama_2.jpg")),
        headers={"Idempotency-Key": "k-1"},
    )
    assert header.headers["X-Task-Id"] == again.headers["X-Task-Id"]


@pytest.mark.parametrize(
    ("mutate", "errcode", "field"),
    [
        (lambda b: b.pop("idNum"), 2001, "idNum"),
        (lambda b: b.pop("name"), 2001, "name"),
        (lambda b: b.pop("faceImage"), 2001, "faceImage"),
        (lambda b: b["faceImage"].pop("data"), 2001, "faceImage.data"),
        (lambda b: b.update(personType="king"), 2002, "personType"),
        (lambda b: b.update(name=123), 2002, "name"),
        (lambda b: b.update(name="   "), 2002, "name"),
        (lambda b: b.update({"async": "maybe"}), 2002, "async"),
        (lambda b: b["faceImage"].update(origin="ftp"), 2002, "faceImage.origin"),
        (lambda b: b.update(idNum="610102198001010000"), 2003, "idNum"),
        (lambda b: b.update(idNum="61010219800101001"), 2003, "idNum"),
        (lambda b: b["faceImage"].update(data="not base64 ###"), 3002, "faceImage.data"),
        (lambda b: b["faceImage"].update(data="A" * 409_604), 3001, "faceImage.data"),
    ],
)
def test_bad_registration_requests_get_their_errcode(
    api: AppClient, mutate: Any, errcode: int, field: str
) -> None:
    branch = api.client(scopes=["face:register", "face:recognize"])
    body = reg_body(new_id_num(), "aGVsbG8gd29ybGQgdGhpcyBpcyBub3QgYW4gaW1hZ2U=")
    mutate(body)
    r = api.post(REG, branch["token"], body)
    env = r.json()
    assert env["errcode"] == errcode, env
    assert r.status_code in (400, 413)
    assert env["data"].get("field") == field
    assert set(env) == {"errcode", "errmsg", "data"}


def test_not_json_and_json_without_its_content_type(api: AppClient) -> None:
    branch = api.client(scopes=["face:register", "face:recognize"])
    r = api.post(
        REG, branch["token"], None, data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.json()["errcode"] == 2004 and r.status_code == 400
    r = api.post(RECONG, branch["token"], [1, 2])
    assert r.json()["errcode"] == 2004
    # legacy clients often send JSON without (or with the wrong) Content-Type: accepted
    plain = api.post(
        RECONG,
        branch["token"],
        None,
        data=json.dumps(recong_body("!!!")).encode(),
        headers={"Content-Type": "text/plain"},
    )
    assert plain.json()["errcode"] == 3002


def test_unknown_fields_are_ignored(stack: Stack, branch: dict) -> None:
    body = recong_body(face_b64("obama_2.jpg"), unknownField={"x": 1}, anotherOne=3)
    assert stack.post(RECONG, branch["token"], body).json()["errcode"] in (0, 5002)


def test_image_problems_fail_the_job_with_their_errcode(stack: Stack, branch: dict) -> None:
    text = base64.b64encode(b"this is a text file, not an image" * 10).decode()
    r = stack.post(RECONG, branch["token"], recong_body(text))
    assert (r.status_code, r.json()["errcode"]) == (422, 3003)
    assert r.json()["data"]["isMatch"] == "false"
    r = stack.post(
        REG, branch["token"], reg_body(new_id_num(), small_jpeg_b64("two_people_obama_biden.jpg"))
    )
    assert r.json()["errcode"] == 4002 and r.json()["data"] == {"ok": "false"}
    data_url = "data:image/jpeg;base64," + face_b64("obama_2.jpg")
    assert stack.post(RECONG, branch["token"], recong_body(data_url)).json()["errcode"] in (0, 5002)


def test_task_of_another_client_is_not_found(stack: Stack, branch: dict) -> None:
    body = recong_body(face_b64("obama_2.jpg"))
    body["async"] = True
    task_id = stack.post(RECONG, branch["token"], body).json()["data"]["taskId"]
    other = stack.client()
    r = stack.get(f"{TASK}{task_id}", other["token"])
    assert (r.status_code, r.json()["errcode"]) == (404, 6001)
    r = stack.get(f"{TASK}not-a-uuid", branch["token"])
    assert r.json()["errcode"] == 6001


def test_worker_killed_mid_registration_completes_once(stack: Stack, branch: dict) -> None:
    """SIGKILL the pool process holding the job (its pid is the job's lease owner, a child of
    the face worker's main process): the job completes once, with one face, and the main
    process and its other children (the other pool process, the embedded beat) live on."""
    face_worker = next(p for name, p in stack.procs.items() if name.startswith("worker-"))
    main = psutil.Process(face_worker.pid)
    marks = stack.gallery_marks()
    for _ in range(5):
        body = reg_body(new_id_num(), small_jpeg_b64("obama_3.jpg", max_side=1600))
        body["async"] = True
        task_id = stack.post(REG, branch["token"], body).json()["data"]["taskId"]
        with stack.db() as conn:

            def started(task_id: str = task_id) -> dict | None:
                job = conn.execute(
                    "SELECT status, lease_owner FROM jobs WHERE id = %s", (task_id,)
                ).fetchone()
                return job if job["status"] != "queued" else None

            job = eventually(started, 120, 0.01, f"job {task_id} leaves the queue")
            status, owner, others = job["status"], job["lease_owner"], []
            if status == "running" and owner:
                pid = int(owner.rpartition(":")[2])
                children = main.children()
                assert pid in {c.pid for c in children}, (owner, children)
                others = [c for c in children if c.pid != pid]
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

            def finished(task_id: str = task_id) -> dict | None:
                job = conn.execute("SELECT * FROM jobs WHERE id = %s", (task_id,)).fetchone()
                return job if job["status"] in ("done", "failed") else None

            job = eventually(finished, 300, 0.2, f"job {task_id} finishes")
            assert job["status"] == "done", job["errmsg"]
            faces = conn.execute(
                "SELECT count(*) AS n FROM faces WHERE job_id = %s", (task_id,)
            ).fetchone()
            assert faces["n"] == 1
        if status == "running" and job["lost_attempts"] >= 1:
            # the kill hit the job while it ran, it completed exactly once, and only the
            # job's holder died
            assert main.is_running() and others
            assert all(c.is_running() for c in others), others
            return
        stack.clean_gallery(marks)  # the next try enrols the same face under a new idNum
    pytest.fail("never caught the job running; the kill did not interrupt it")


def test_sync_timeout_returns_task_id_and_job_completes(
    stack: Stack, branch: dict, library: dict
) -> None:
    """With the wait shorter than the job, the API answers 6002 with taskId; polling gets it."""
    import requests

    with stack.extra_api(FACELIB_SYNC_TIMEOUT_SECONDS="0.001") as url:
        r = requests.post(
            f"{url}{RECONG}",
            json=recong_body(face_b64("obama_2.jpg"), libIds=[LIB]),
            headers={"Authorization": branch["token"]},
            timeout=30,
        )
    env_ = r.json()
    assert env_["errcode"] == 6002 and r.status_code == 202
    task = stack.wait_task(branch["token"], env_["data"]["taskId"], timeout=240)
    assert task["status"] == "done"
    assert task["result"]["errcode"] == 0
    assert task["result"]["data"]["idNum"] == library["obama"]


def test_results_store_no_image_and_no_raw_id_num(
    stack: Stack, branch: dict, library: dict
) -> None:
    with stack.db() as conn:
        leftovers = conn.execute(
            "SELECT count(*) AS n FROM job_inputs i JOIN jobs j ON j.id = i.job_id"
            " WHERE j.status IN ('done', 'failed')"
        ).fetchone()
        assert leftovers["n"] == 0
        dump = json.dumps(
            conn.execute("SELECT p.*, j.request_meta, j.result FROM persons p, jobs j").fetchall(),
            default=str,
        )
    assert library["obama"] not in dump
