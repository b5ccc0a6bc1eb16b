"""Hostile callback receivers against the real stack: its callbacks worker pool delivers.

A receiver that drips its reply a byte a second (for minutes, if let) and one that answers
300 MB. The deliveries end by FACELIB_CALLBACK_TIMEOUT_SECONDS (10 s here) and cost the
delivering process a few KB, and face jobs keep completing meanwhile: they run in the faces
pool, which no callback can occupy. (Rebinding DNS, redirects, TLS: tests/unit/
test_callback_delivery.py, where the resolver can be replaced.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import Stack, new_id_num, small_jpeg_b64
from tests.helpers import RECONG, REG, LocalServer, QuietHandler, eventually, recong_body, reg_body


class HostileReceiver(LocalServer):
    """/drip: a byte a second until told to stop; /huge: a 300 MB reply."""

    class handler(QuietHandler):  # noqa: N801 - LocalServer's attribute
        def do_POST(self) -> None:  # noqa: N802 - http.server's API
            receiver = self.owner
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            receiver.hits.append(self.path)
            if self.path == "/drip":
                for _ in range(300):
                    if receiver.stop.is_set():
                        return
                    self.wfile.write(b"H")
                    receiver.sent += 1
                    time.sleep(1.0)
            elif self.path == "/huge":
                self.send_response(200)
                self.send_header("Content-Length", str(300 * 1024 * 1024))
                self.end_headers()
                chunk = b"x" * (1024 * 1024)
                for _ in range(300):
                    self.wfile.write(chunk)
                    receiver.sent += len(chunk)

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.sent = 0
        self.stop = threading.Event()
        super().__init__()

    def close(self) -> None:
        self.stop.set()
        super().close()


@pytest.fixture()
def receiver() -> Iterator[HostileReceiver]:
    r = HostileReceiver()
    yield r
    r.close()  # the remaining retries meet a closed port and fail at once


@pytest.fixture(scope="module")
def enroller(stack: Stack) -> dict[str, Any]:
    return stack.client(scopes=["face:register", "face:recognize"])


def _attempts(stack: Stack, task_id: str) -> list[dict[str, Any]]:
    with stack.db() as conn:
        return conn.execute(
            "SELECT a.attempt_no, a.http_status, a.error FROM callback_attempts a"
            " JOIN callback_deliveries d ON d.id = a.delivery_id WHERE d.job_id = %s"
            " ORDER BY a.attempt_no",
            (task_id,),
        ).fetchall()


def _wait_attempt(stack: Stack, task_id: str, timeout: float = 120) -> dict[str, Any]:
    rows = eventually(lambda: _attempts(stack, task_id), timeout, what=f"a callback of {task_id}")
    return rows[0]


def _peak_rss(proc: psutil.Process) -> int:
    """VmHWM: the peak resident set of the process so far, in bytes (Linux)."""
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _callback_pool(stack: Stack) -> list[psutil.Process]:
    main = psutil.Process(stack.procs["callbacks-worker"].pid)
    return [main, *main.children(recursive=True)]


def test_face_jobs_complete_while_callback_receivers_drip(
    stack: Stack, enroller: dict[str, Any], receiver: HostileReceiver
) -> None:
    id_num = new_id_num()
    r = stack.post(REG, enroller["token"], reg_body(id_num, small_jpeg_b64("obama_2.jpg")))
    assert r.json() == {"errcode": 0, "data": {"ok": "true"}, "errmsg": "SUCCESS"}, r.text
    probe = small_jpeg_b64("obama_1.jpg")
    tasks = []
    for _ in range(4):  # more dripping deliveries than the callbacks pool has processes
        body = recong_body(probe, callbackUrl=f"{receiver.base}/drip")
        body["async"] = True
        r = stack.post(RECONG, enroller["token"], body)
        assert r.json()["errcode"] == 0, r.text
        tasks.append(r.json()["data"]["taskId"])
    eventually(lambda: len(receiver.hits) >= 2, 120, 0.2, "the callbacks pool delivers")

    # every callbacks process is held by a dripping receiver: face jobs still run
    for _ in range(3):
        r = stack.post(RECONG, enroller["token"], recong_body(probe))
        assert r.json()["errcode"] == 0 and r.json()["data"]["idNum"] == id_num, r.text

    # and each dripping delivery ended by the deadline, recorded as a timed-out attempt
    first = _wait_attempt(stack, tasks[0])
    assert first["http_status"] is None
    assert first["error"].startswith("timed out"), first


def test_a_300_mb_reply_costs_the_callbacks_worker_almost_nothing(
    stack: Stack, enroller: dict[str, Any], receiver: HostileReceiver
) -> None:
    pool = _callback_pool(stack)
    before = {p.pid: _peak_rss(p) for p in pool}
    body = reg_body(
        new_id_num(), small_jpeg_b64("obama_2.jpg"), callbackUrl=f"{receiver.base}/huge"
    )
    body["async"] = True
    task_id = stack.post(REG, enroller["token"], body).json()["data"]["taskId"]
    attempt = _wait_attempt(stack, task_id)
    assert (attempt["http_status"], attempt["error"]) == (200, None), attempt
    grew = {p.pid: _peak_rss(p) - before[p.pid] for p in pool if p.is_running()}
    print(f"callbacks pool peak RSS growth (bytes, per process): {grew}")
    # the unread reply never entered the worker: its peak grows by far less than 10 MB
    assert max(grew.values()) <= 10 * 1024 * 1024, grew
    assert receiver.sent < 300 * 1024 * 1024
