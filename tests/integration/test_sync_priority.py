"""A teller never waits behind a batch: sync calls jump the async backlog (issue #16 item 5)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.conftest import Stack, small_jpeg_b64

RECONG = "/tech/ai/face/faceLib/person/recong"


def test_a_sync_recognition_is_served_before_the_async_backlog(stack: Stack) -> None:
    client = stack.client(scopes=["face:recognize"], rate_limit="1000/second")
    image = {"origin": "self", "data": small_jpeg_b64("biden_1.jpg")}
    backlog = 120

    def submit_async(_: int) -> str:
        r = stack.post(RECONG, client["token"], {"faceImage": image, "async": True})
        assert r.json()["errcode"] == 0, r.text
        return r.json()["data"]["taskId"]

    with ThreadPoolExecutor(8) as pool:
        task_ids = list(pool.map(submit_async, range(backlog)))
    with stack.db() as conn:
        waiting_before = conn.execute(
            "SELECT count(*) AS n FROM jobs WHERE id = ANY(%s::uuid[]) AND status = 'queued'",
            (task_ids,),
        ).fetchone()["n"]
    r = stack.post(RECONG, client["token"], {"faceImage": image, "async": False})
    # answered by the worker: a match, or 5002 when this test runs alone on an empty library
    assert r.json()["errcode"] in (0, 5002), r.text
    with stack.db() as conn:
        sync_job = conn.execute(
            "SELECT status FROM jobs WHERE id = %s", (r.headers["X-Task-Id"],)
        ).fetchone()
        waiting_after = conn.execute(
            "SELECT count(*) AS n FROM jobs WHERE id = ANY(%s::uuid[]) AND status = 'queued'",
            (task_ids,),
        ).fetchone()["n"]
    # In one FIFO queue the sync job would have run after every async job queued before it.
    # From its own queue it is taken by the next free pool process: most of the backlog that
    # waited when it was submitted still waits when it is answered.
    assert sync_job["status"] in ("done", "failed")  # finished by a worker
    assert waiting_before >= 20, waiting_before  # a real backlog (2 pool processes, 120 jobs)
    assert waiting_after >= waiting_before // 2, (waiting_before, waiting_after)
