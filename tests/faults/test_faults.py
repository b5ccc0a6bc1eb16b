"""Fault scenarios: nothing accepted is lost, nothing is enrolled twice (docs/reliability.md).

Run with `python3.11 -m uv run --frozen pytest -m faults` (FACELIB_SLOW=1: the Postgres outage
lasts 10 minutes instead of 20 s). Figures (latencies, recovery times) are printed in the table,
never asserted: the machine may be busy.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
import requests

from tests.conftest import ROOT
from tests.faults.conftest import REG, SLOW, Background, FaultStack, ready_within, run_threads


def _assert_clean(row: dict[str, Any]) -> None:
    assert row["lost"] == 0, row
    assert row["duplicates"] == 0, row


@pytest.mark.timeout(900)
def test_worker_child_sigkill_x20(fstack: FaultStack) -> None:
    ids = fstack.submit_regs(30)
    kills = 0
    killed: set[str] = set()
    end = time.monotonic() + 600
    with fstack.db() as conn:
        while kills < 20 and time.monotonic() < end:
            row = conn.execute(
                "SELECT lease_owner FROM jobs WHERE id = ANY(%s) AND status = 'running'"
                " AND lease_owner IS NOT NULL AND NOT (lease_owner = ANY(%s))"
                # each job killed at most once: 5 deaths of one job fail it by design (6003,
                # FACELIB_JOB_MAX_LOST_ATTEMPTS: an image that kills the worker every time)
                " AND lost_attempts = 0 ORDER BY started_at LIMIT 1",
                ([uuid.UUID(t) for t in ids], list(killed)),
            ).fetchone()
            if row is None:
                open_ = conn.execute(
                    "SELECT count(*) AS n FROM jobs WHERE id = ANY(%s)"
                    " AND status IN ('queued', 'running')",
                    ([uuid.UUID(t) for t in ids],),
                ).fetchone()["n"]
                if open_ == 0:
                    ids += fstack.submit_regs(10)
                time.sleep(0.05)
                continue
            killed.add(row["lease_owner"])  # each pool process once (a zombie is no target)
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(row["lease_owner"].rpartition(":")[2]), signal.SIGKILL)
                kills += 1
            time.sleep(0.5)
    assert kills == 20
    t0 = time.monotonic()
    row = fstack.record("worker child SIGKILL x20", ids, 600, "")
    deadline = time.monotonic() + 60
    while True:  # 2 first pool processes + one per kill
        log = (fstack.log_dir / "worker.log").read_text()
        starts = sorted(float(ms) for ms in re.findall(r"pool process ready in ([0-9.]+) ms", log))
        if len(starts) >= 22 or time.monotonic() > deadline:
            break
        time.sleep(1)
    row["recovery"] = (
        f"all done {time.monotonic() - t0:.0f} s after the last kill; {len(starts)} pool"
        f" processes started, ready in median {starts[len(starts) // 2]:.1f} ms"
        f" (max {starts[-1]:.1f} ms)"
    )
    assert len(starts) >= 22  # every killed pool process was replaced
    _assert_clean(row)
    assert row["failed"] == 0
    assert fstack.procs["worker"].poll() is None


@pytest.mark.timeout(900)
def test_redis_sigkill_and_restart_x5(fstack: FaultStack) -> None:
    worker_pid = fstack.procs["worker"].pid
    ids: list[str] = []
    done = threading.Event()

    def submitter() -> None:
        while not done.is_set():
            ids.extend(fstack.submit_regs(2, threads=2))
            time.sleep(0.5)  # a steady stream, not a flood

    t = Background(submitter)
    t.start()
    try:
        for _ in range(5):
            time.sleep(4)
            fstack.kill_redis()
            time.sleep(2)
            fstack.start_redis()
    finally:
        time.sleep(3)
        done.set()
        t.join_checked()  # every submission got its taskId, and no answer was unexpected
    t0 = time.monotonic()
    outcome = fstack.wait_finished(ids, 600)
    recovery = f"all done {time.monotonic() - t0:.0f} s after the 5th restart"
    row = fstack.record("Redis SIGKILL + restart x5", ids, 1, recovery)
    assert outcome["lost"] == 0
    _assert_clean(row)
    # the worker rode out every broker restart: the same main process, still running
    assert fstack.procs["worker"].poll() is None and fstack.procs["worker"].pid == worker_pid
    assert fstack.procs["beat"].poll() is None


@pytest.mark.timeout(1800)  # FACELIB_SLOW=1: a 10-minute outage
def test_postgres_immediate_stop_with_jobs_waiting(fstack: FaultStack) -> None:
    outage = 600 if SLOW else 20
    ids = fstack.submit_regs(16)  # most of them wait in Redis: 2 pool processes
    fstack.stop_pg()
    t_stop = time.monotonic()
    reg_ms: list[float] = []
    ready_ms: list[float] = []
    while time.monotonic() - t_stop < outage:
        t = time.monotonic()
        r = requests.post(
            f"{fstack.api_url}{REG}",
            json=fstack.reg_body(),
            headers={"Authorization": fstack.token},
            timeout=60,
        )
        reg_ms.append((time.monotonic() - t) * 1000)
        assert r.json()["errcode"] == 9001
        t = time.monotonic()
        h = requests.get(f"{fstack.api_url}/health/ready", timeout=60)
        ready_ms.append((time.monotonic() - t) * 1000)
        assert h.status_code == 503 and h.json()["data"]["checks"]["database"].startswith("down")
        time.sleep(2 if outage <= 60 else 10)
    fstack.start_pg()
    t_back = time.monotonic()
    first = fstack.reg_body()
    r = requests.post(
        f"{fstack.api_url}{REG}", json=first, headers={"Authorization": fstack.token}, timeout=60
    )
    first_ok = r.json()["errcode"] == 0
    if r.json().get("data", {}).get("taskId"):
        ids.append(r.json()["data"]["taskId"])
    outcome = fstack.wait_finished(ids, 600)
    fstack.saw["reg 9001 during outage"] = len(reg_ms)
    recovery = (
        f"reg 9001 max {max(reg_ms):.0f} ms, /health/ready max {max(ready_ms):.0f} ms;"
        f" first request after restart {'ok' if first_ok else r.json()['errcode']};"
        f" all done {time.monotonic() - t_back:.0f} s after restart"
    )
    row = fstack.record(f"Postgres immediate stop {outage} s, jobs waiting", ids, 1, recovery)
    assert first_ok, r.json()
    assert outcome["lost"] == 0
    _assert_clean(row)
    assert row["failed"] == 0


def test_gunicorn_worker_sigkill_mid_burst(fstack: FaultStack) -> None:
    api = next(p for n, p in fstack.procs.items() if n.startswith("api"))
    ids: list[str] = []
    lock = threading.Lock()

    half = threading.Event()

    def one(_: int) -> None:
        task_id = fstack.submit(REG, fstack.reg_body())
        assert task_id
        with lock:
            ids.append(task_id)
            if len(ids) == 10:
                half.set()

    def killer() -> None:
        half.wait(300)
        children = psutil.Process(api.pid).children()
        assert children
        children[0].send_signal(signal.SIGKILL)

    k = Background(killer)
    k.start()
    run_threads(one, 80, 8)
    k.join_checked()
    row = fstack.record("gunicorn worker SIGKILL mid-burst", ids, 600, "gunicorn respawns it")
    _assert_clean(row)
    assert len(set(ids)) == len(ids) == 80


class _Hook(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append(self.headers.get("webhook-id", ""))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def test_callback_receiver_down_then_up(fstack: FaultStack) -> None:
    from shared.cli.embedded import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    ids = [fstack.submit(REG, {**fstack.reg_body(), "callbackUrl": url}) or "" for _ in range(10)]
    fstack.wait_finished(ids, 300)
    time.sleep(8)  # the receiver is down: the first attempts fail
    _Hook.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", port), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    t0 = time.monotonic()
    try:
        while len(set(_Hook.seen)) < 10 and time.monotonic() - t0 < 300:
            time.sleep(0.5)
        time.sleep(3)  # room for a duplicate to show up
    finally:
        server.shutdown()
    fstack.saw["callbacks received"] = len(_Hook.seen)
    fstack.saw["distinct webhook-ids"] = len(set(_Hook.seen))
    row = fstack.record(
        "callback receiver down, then up", ids, 1, f"delivered {time.monotonic() - t0:.0f} s after"
    )
    _assert_clean(row)
    assert len(set(_Hook.seen)) == 10
    assert len(_Hook.seen) == 10, "a callback was delivered twice"


def test_sync_call_with_no_worker(fstack: FaultStack) -> None:
    worker = fstack.procs["worker"]
    os.killpg(worker.pid, signal.SIGTERM)
    worker.wait(60)
    try:
        r = requests.post(
            f"{fstack.api_url}{REG}",
            json=fstack.reg_body(async_=False),
            headers={"Authorization": fstack.token},
            timeout=60,
        )
        env = r.json()
        fstack.saw[str(env["errcode"])] += 1
        assert env["errcode"] == 6002 and env["data"]["taskId"]
    finally:
        fstack.start_worker(beat=False, name="worker")
    t0 = time.monotonic()
    row = fstack.record("sync call with no worker", [env["data"]["taskId"]], 300, "")
    row["recovery"] = f"done {time.monotonic() - t0:.0f} s after a worker started"
    _assert_clean(row)
    assert row["done"] == 1


def _up_env(home: Path) -> dict[str, str]:
    from shared.cli.embedded import free_port

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FACELIB_", "DATABASE_URL", "REDIS_URL", "PROMETHEUS_"))
    }
    env.update(
        FACELIB_HOME=str(home),
        FACELIB_PORT=str(free_port()),
        FACELIB_REDIS_PORT=str(free_port()),
        FACELIB_SWEEP_INTERVAL_SECONDS="1",
        FACELIB_JOB_SEND_TIMEOUT_SECONDS="10",
        FACELIB_DUPLICATE_POLICY="allow",
        PYTHONUNBUFFERED="1",
    )
    return env


def _is_faces_worker(proc: psutil.Process) -> bool:
    """The face-jobs worker among `facelib up`'s children (the callbacks pool is another)."""
    cmd = proc.cmdline()
    return "worker" in cmd and "celery" in " ".join(cmd) and "faces@%h" in cmd


@pytest.mark.timeout(900)
def test_worker_main_sigkill_under_facelib_up(tmp_path: Path) -> None:
    """`facelib up` restarts a SIGKILLed worker (Postgres and Redis keep running); a second
    `facelib up` on the same home refuses to start and the first keeps running."""
    env = _up_env(tmp_path / "home")
    url = f"http://127.0.0.1:{env['FACELIB_PORT']}"
    out = open(tmp_path / "up.log", "wb")  # noqa: SIM115 - closed in finally
    up = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "up", "--concurrency", "1"],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert ready_within(url, 300) is not None, (tmp_path / "up.log").read_text()[-3000:]
        token = None
        deadline = time.monotonic() + 60
        while token is None and time.monotonic() < deadline:  # printed just after readiness
            token = re.search(r"header Authorization\): (\S+)", (tmp_path / "up.log").read_text())
            time.sleep(0.2)
        assert token
        second = subprocess.run(
            [sys.executable, "-m", "shared.cli", "up"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 3 and "already running" in second.stderr
        assert str(up.pid) in second.stderr
        assert requests.get(f"{url}/health/ready", timeout=10).status_code == 200

        stack = FaultStack(url, "", "", env, tmp_path)
        stack.token = token.group(1)
        ids = [stack.submit(REG, stack.reg_body()) or "" for _ in range(3)]
        worker = next(c for c in psutil.Process(up.pid).children() if _is_faces_worker(c))
        worker.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        # accepted while no worker runs; recovery = until these are done (readiness caches a
        # worker ping for 5 s, so it would flatter the figure)
        ids += [stack.submit(REG, stack.reg_body()) or "" for _ in range(3)]
        done_by = time.monotonic() + 300
        statuses: list[str] = []
        while time.monotonic() < done_by:
            statuses = [
                requests.get(
                    f"{url}/tech/ai/face/faceLib/task/{t}",
                    headers={"Authorization": stack.token},
                    timeout=10,
                ).json()["data"]["status"]
                for t in ids
            ]
            if all(s in ("done", "failed") for s in statuses):
                break
            time.sleep(0.5)
        back = time.monotonic() - t_kill
        new_worker = [c for c in psutil.Process(up.pid).children() if _is_faces_worker(c)]
        assert [w.pid for w in new_worker] != [worker.pid] and len(new_worker) == 1
        from shared.cli.embedded import EmbeddedPostgres
        from tests.faults.conftest import ROWS

        pg_url = EmbeddedPostgres(Path(env["FACELIB_HOME"]) / "pg").start()  # the running one
        with psycopg.connect(pg_url) as conn:
            dup = conn.execute(
                "SELECT count(*) - count(DISTINCT person_id) FROM faces"
                " WHERE person_id IN (SELECT person_id FROM faces WHERE job_id = ANY(%s))",
                ([uuid.UUID(t) for t in ids],),
            ).fetchone()[0]
        row = {
            "scenario": "worker main SIGKILL under facelib up",
            "accepted": len(ids),
            "done": statuses.count("done"),
            "failed": statuses.count("failed"),
            "lost": sum(1 for s in statuses if s not in ("done", "failed")),
            "duplicates": int(dup),
            "client_saw": dict(stack.saw),
            "recovery": f"jobs done again {back:.0f} s after the kill; second `up` refused",
        }
        ROWS.append(row)
        _assert_clean(row)
        assert row["done"] == len(ids)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(up.pid, signal.SIGTERM)
        try:
            up.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
        out.close()


@pytest.fixture(autouse=True)
def _fresh_counters(fstack: FaultStack) -> None:
    fstack.saw.clear()
