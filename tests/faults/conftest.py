"""The fault suite's own stack and its scoreboard (docs/reliability.md).

Each scenario kills or stops a part of a real stack (embedded PostgreSQL and Redis, a Celery
worker, a separate beat, the API under gunicorn), acts as a client that follows the documented
rule (a submission that got no taskId is retried with the same requestId), and records one row:
accepted / done / failed / lost / duplicate faces / what the client saw / recovery time. The rows
are printed at the end of the run (`pytest -m faults`), and each scenario asserts lost = 0 and
duplicate faces = 0.

This stack is separate from the integration tests' one: killing its servers never disturbs them.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from shared.cli.up import stop_group
from tests.conftest import (
    Stack,
    eventually,
    exported_settings,
    new_id_num,
    small_jpeg_b64,
    stack_env,
)

REG = "/tech/ai/face/faceLib/person/reg"
RECONG = "/tech/ai/face/faceLib/person/recong"
SLOW = os.environ.get("FACELIB_SLOW") == "1"

ROWS: list[dict[str, Any]] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    terminalreporter.write_sep("=", "fault suite (docs/reliability.md)")
    for line in table_lines(ROWS):
        terminalreporter.write_line(line)


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    head = (
        "| scenario | accepted | done | failed | lost | duplicate faces | client saw | recovery |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        saw = ", ".join(f"{k}: {v}" for k, v in sorted(r["client_saw"].items()))
        lines.append(
            f"| {r['scenario']} | {r['accepted']} | {r['done']} | {r['failed']} | {r['lost']}"
            f" | {r['duplicates']} | {saw} | {r['recovery']} |"
        )
    return lines


@dataclass
class FaultStack(Stack):
    pg: Any = None
    redis: Any = None
    token: str = ""
    saw: collections.Counter = field(default_factory=collections.Counter)

    # --- processes -----------------------------------------------------------------------

    def worker_main(self) -> psutil.Process:
        return psutil.Process(self.procs["worker"].pid)

    def pool_children(self) -> list[psutil.Process]:
        return [c for c in self.worker_main().children() if c.is_running()]

    def restart_worker(self) -> None:
        stop_group(self.procs["worker"], 20)
        self.start_worker(beat=False, name="worker")
        self.wait_workers(180)

    def kill_redis(self) -> None:
        self.redis.process.send_signal(signal.SIGKILL)
        self.redis.process.wait(10)

    def start_redis(self) -> None:
        self.redis.start()

    def stop_pg(self) -> None:
        self.pg.stop(mode="immediate")

    def start_pg(self) -> None:
        self.pg.start()

    # --- a client that follows the documented rules ----------------------------------------

    def submit(self, path: str, body: dict[str, Any], deadline: float = 300) -> str | None:
        """POST until a taskId comes back, retrying with the same requestId; None if never."""
        body = {**body, "requestId": body.get("requestId") or uuid.uuid4().hex}
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                r = requests.post(
                    f"{self.api_url}{path}",
                    json=body,
                    headers={"Authorization": self.token},
                    timeout=120,
                )
                env = r.json()
                self.saw[str(env["errcode"])] += 1
                task_id = (env.get("data") or {}).get("taskId")
                if task_id:
                    return task_id
                if env["errcode"] not in (9001, 7002, 7001, 9000):
                    raise AssertionError(f"unexpected answer {env['errcode']} {env['errmsg']}")
            except requests.RequestException as exc:
                self.saw[type(exc).__name__] += 1
            time.sleep(0.5)
        return None

    def reg_body(self, async_: bool = True) -> dict[str, Any]:
        return {
            "personType": "normal",
            "idNum": new_id_num(),
            "name": "张三",
            "faceImage": {"origin": "self", "data": FACE},
            "async": async_,
        }

    def submit_regs(self, n: int, threads: int = 4) -> list[str]:
        ids: list[str | None] = [None] * n

        def one(i: int) -> None:
            ids[i] = self.submit(REG, self.reg_body())

        run_threads(one, n, threads)
        missing = sum(1 for t in ids if t is None)
        assert missing == 0, f"{missing} submissions never got a taskId"
        return [t for t in ids if t]

    # --- scoring ---------------------------------------------------------------------------

    def wait_finished(self, task_ids: list[str], timeout: float) -> dict[str, int]:
        """The jobs' outcome once none is queued or running, or as it stands at `timeout`
        (what is still open then is scored as lost)."""
        with self.db() as conn:

            def counts() -> dict[str, int]:
                rows = conn.execute(
                    "SELECT status, count(*) AS n FROM jobs WHERE id = ANY(%s) GROUP BY status",
                    ([uuid.UUID(t) for t in task_ids],),
                ).fetchall()
                return {r["status"]: r["n"] for r in rows}

            with contextlib.suppress(AssertionError):
                eventually(
                    lambda: counts().keys().isdisjoint({"queued", "running"}),
                    timeout,
                    0.5,
                    "the jobs finish",
                )
            done = counts()
        return {
            "done": done.get("done", 0),
            "failed": done.get("failed", 0),
            "lost": len(task_ids) - done.get("done", 0) - done.get("failed", 0),
        }

    def duplicate_faces(self, task_ids: list[str]) -> int:
        """Faces beyond one per enrolled person, over the persons these jobs enrolled."""
        with self.db() as conn:
            row = conn.execute(
                "SELECT count(*) - count(DISTINCT person_id) AS dup FROM faces"
                " WHERE person_id IN (SELECT person_id FROM faces WHERE job_id = ANY(%s))",
                ([uuid.UUID(t) for t in task_ids],),
            ).fetchone()
        return int(row["dup"])

    def record(
        self, scenario: str, task_ids: list[str], timeout: float, recovery: str
    ) -> dict[str, Any]:
        outcome = self.wait_finished(task_ids, timeout)
        row = {
            "scenario": scenario,
            "accepted": len(task_ids),
            **outcome,
            "duplicates": self.duplicate_faces(task_ids),
            "client_saw": dict(self.saw),
            "recovery": recovery,
        }
        ROWS.append(row)
        print(table_lines([row])[-1], flush=True)
        self.saw.clear()
        return row


def run_threads(fn: Any, n: int, threads: int) -> None:
    """fn(0) .. fn(n - 1) on `threads` threads; the first exception a call raised is raised
    here, so an assertion inside a call fails the test."""
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(fn, i) for i in range(n)]:
            future.result()


class Background(threading.Thread):
    """A thread beside the test; `join_checked()` raises what it raised."""

    def __init__(self, fn: Any) -> None:
        super().__init__(target=self._run, daemon=True)
        self.fn = fn
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test by join_checked
            self.error = exc

    def join_checked(self, timeout: float | None = None) -> None:
        self.join(timeout)
        if self.error is not None:
            raise self.error


FACE = small_jpeg_b64("obama_2.jpg", max_side=400)


@pytest.fixture(scope="session")
def fstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    from shared.cli import beat_command
    from shared.cli.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
    from shared.db.migrate import apply_migrations

    base = tmp_path_factory.mktemp("faults")
    log_dir = base / "logs"
    log_dir.mkdir()
    pg = EmbeddedPostgres(base / "pg", database="facelib_faults")
    database_url = pg.start()
    rd = EmbeddedRedis(base / "redis")
    redis_url = rd.start()
    env = stack_env(
        base,
        database_url,
        redis_url,
        free_port(),
        # every scenario enrols the same photo under fresh idNums: the duplicate check would
        # refuse all but the first; what is scored here is loss and duplication of jobs
        FACELIB_DUPLICATE_POLICY="allow",
        FACELIB_CALLBACK_ALLOW_PRIVATE="1",
        FACELIB_CALLBACK_SCHEDULE="2,4,8,16,32,64",
        FACELIB_SWEEP_INTERVAL_SECONDS="1",
        FACELIB_SYNC_TIMEOUT_SECONDS="5",
        FACELIB_JOB_TIME_LIMIT_SECONDS="60",
        FACELIB_JOB_SEND_TIMEOUT_SECONDS="10",
        FACELIB_RATE_LIMIT="1000/second",
    )
    try:
        with exported_settings(env):
            apply_migrations(database_url)
            st = FaultStack(
                f"http://127.0.0.1:{env['FACELIB_PORT']}", database_url, redis_url, env, log_dir
            )
            st.pg, st.redis = pg, rd
            st.start_api()
            st.start_worker(beat=False, name="worker")
            st.spawn("beat", beat_command(base / "beat-schedule"))
            with st.running(180):
                st.token = st.client("faults")["token"]
                yield st
    finally:
        rd.stop()
        pg.stop()


def ready_within(url: str, timeout: float) -> float | None:
    """Seconds until /health/ready answers 200, or None."""

    def ready() -> bool:
        try:
            return requests.get(f"{url}/health/ready", timeout=3).status_code == 200
        except requests.RequestException:
            return False

    t0 = time.monotonic()
    try:
        eventually(ready, timeout, 0.25, f"{url} is ready")
    except AssertionError:
        return None
    return time.monotonic() - t0
