"""The real stack for tests: PostgreSQL + pgvector, Redis, a Celery worker process, the API.

Embedded servers start in a temporary directory unless DATABASE_URL / REDIS_URL point at
existing ones (then a fresh database `facelib_test_<random>` is created on that server and
dropped at the end). The worker and the API (gunicorn) run as separate processes, exactly as
`facelib up` runs them; their logs are kept for the personal-data scan.
"""

from __future__ import annotations

import base64
import itertools
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from psycopg.rows import dict_row

from shared.queue import FACE_QUEUES

ROOT = Path(__file__).resolve().parent.parent
FACES = ROOT / "tests" / "fixtures" / "faces"
LFW = Path(os.environ.get("FACELIB_LFW", ROOT.parent / "shared" / "faces" / "lfw"))


def face_bytes(name: str) -> bytes:
    return (FACES / name).read_bytes()


def face_b64(name: str) -> str:
    return base64.b64encode(face_bytes(name)).decode()


def small_jpeg_b64(name: str, max_side: int = 800) -> str:
    """A photo re-encoded to fit the 400 KB base64 limit (as a client would send it)."""
    import io

    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(Image.open(FACES / name)).convert("RGB")
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode()


def run_facelib(
    args: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """The `facelib` CLI as an operator runs it: its own process, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# Personal data and secrets the tests send; the log scan checks none of them reaches a log.
SENSITIVE: set[str] = set()
_id_seq = itertools.count(1)


def new_id_num() -> str:
    """A fresh valid ID number (GB 11643), remembered for the log scan."""
    from shared.idnum import make_id_num

    n = next(_id_seq)
    id_num = make_id_num("610102", date(1980 + n % 30, 1 + n % 12, 1 + n % 28), n)
    SENSITIVE.add(id_num)
    return id_num


@dataclass
class Stack:
    api_url: str
    database_url: str
    redis_url: str
    env: dict[str, str]
    log_dir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def db(self) -> psycopg.Connection:
        return psycopg.connect(self.database_url, row_factory=dict_row, autocommit=True)

    def client(self, name: str | None = None, scopes: list[str] | None = None, **kw: Any) -> dict:
        """A new API client with a token: {'id', 'name', 'token', 'callback_secret'}."""
        from shared import db
        from shared.db import transaction

        name = name or f"client-{secrets.token_hex(4)}"
        with transaction() as conn:
            c = db.clients.create_client(
                conn,
                name,
                scopes=scopes,
                callback_url=kw.get("callback_url"),
                rate_limit=kw.get("rate_limit"),
            )
            t = db.clients.issue_token(conn, c["id"], kw.get("ttl", 3600))
        SENSITIVE.update({t["token"], c["client_secret"], c["callback_secret"]})
        return {**c, "token": t["token"]}

    def post(self, path: str, token: str | None, body: Any, **kw: Any) -> requests.Response:
        headers = kw.pop("headers", {})
        if token is not None:
            headers.setdefault("Authorization", token)
        return requests.post(f"{self.api_url}{path}", json=body, headers=headers, timeout=120, **kw)

    def get(self, path: str, token: str | None, **kw: Any) -> requests.Response:
        headers = kw.pop("headers", {})
        if token is not None:
            headers.setdefault("Authorization", token)
        return requests.get(f"{self.api_url}{path}", headers=headers, timeout=60, **kw)

    def spawn(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """A service process in its own session, logging to log_dir/<name>.log."""
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env or self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def start_api(
        self, workers: int = 2, threads: int = 8, name: str | None = None
    ) -> subprocess.Popen:
        from shared.cli import api_command

        port = int(self.env["FACELIB_PORT"])
        cmd = api_command(port, workers=workers, threads=threads)
        return self.spawn(name or f"api-{port}", cmd)

    @contextmanager
    def extra_api(self, **env_overrides: str) -> Iterator[str]:
        """A second API process with other settings (same database and broker); yields its URL."""
        from shared.cli import api_command
        from shared.cli.embedded import free_port

        port = free_port()
        env = {**self.env, **env_overrides, "FACELIB_PORT": str(port)}
        proc = self.spawn(f"api-extra-{port}", api_command(port, workers=1, threads=4), env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    requests.get(f"{url}/health/live", timeout=2)
                    break
                except requests.RequestException:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("extra API did not start") from None
                    time.sleep(0.2)
            yield url
        finally:
            _stop(proc)
            self.procs.pop(f"api-extra-{port}", None)

    def start_worker(
        self,
        concurrency: int = 2,
        beat: bool = True,
        name: str | None = None,
        queues: str | None = None,  # None: every queue (worker_command's default)
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen:
        from shared.cli import worker_command

        beat_schedule = self.log_dir / "beat-schedule" if beat else None
        cmd = worker_command(concurrency, beat_schedule, queues)
        return self.spawn(name or f"worker-{len(self.procs)}", cmd, env)

    @contextmanager
    def face_worker(self, **env_overrides: str) -> Iterator[None]:
        """Run the face jobs with another worker for a while: the stack's face worker is
        stopped, one with these settings takes the face queues, and the stack's is started
        again afterwards (e.g. FACELIB_MATCH_MODEL=mobilefacenet for a module's tests)."""
        for name in [n for n in self.procs if n.startswith("worker-")]:
            _stop(self.procs.pop(name))
        name = f"worker-swapped-{secrets.token_hex(3)}"
        self.start_worker(queues=FACE_QUEUES, name=name, env={**self.env, **env_overrides})
        try:
            self.wait_log(name, " ready.")
            yield
        finally:
            _stop(self.procs.pop(name))
            restored = f"worker-{secrets.token_hex(3)}"
            self.start_worker(queues=FACE_QUEUES, name=restored)
            self.wait_log(restored, " ready.")

    def wait_log(self, name: str, text: str, timeout: float = 240) -> None:
        """Until process `name`'s log shows `text` (e.g. a Celery worker's "ready.")."""
        path, proc = self.log_dir / f"{name}.log", self.procs[name]
        deadline = time.monotonic() + timeout
        while text not in path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not log {text!r}; see {path}")
            time.sleep(0.5)

    def wait_workers(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited; see {self.log_dir}")
            try:
                r = requests.get(f"{self.api_url}/health/ready", timeout=10)
                if r.status_code == 200:
                    return
                last = r.text
            except requests.RequestException as exc:
                last = repr(exc)
            time.sleep(0.5)
        raise RuntimeError(f"stack not ready: {last}")


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 20) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from shared.cli.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

    base = tmp_path_factory.mktemp("stack")
    log_dir = base / "logs"
    log_dir.mkdir()
    services: list[Any] = []
    drop_db: tuple[str, str] | None = None

    external_db = os.environ.get("DATABASE_URL")
    if external_db:
        name = f"facelib_test_{secrets.token_hex(4)}"
        with psycopg.connect(external_db, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        database_url = psycopg.conninfo.make_conninfo(external_db, dbname=name)
        drop_db = (external_db, name)
    else:
        pg = EmbeddedPostgres(base / "pg", database="facelib_test")
        database_url = pg.start()
        services.append(pg)
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        rd = EmbeddedRedis(base / "redis")
        redis_url = rd.start()
        services.append(rd)

    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "FACELIB_INDEX_KEY": base64.b64encode(os.urandom(32)).decode(),
        "FACELIB_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
        "FACELIB_PORT": str(port),
        # the fixtures hold 7 identities and many tests enrol the same face under fresh idNums;
        # the duplicate-identity policy itself is tested with FACELIB_DUPLICATE_POLICY=refuse/warn
        "FACELIB_DUPLICATE_POLICY": "allow",
        "FACELIB_CALLBACK_ALLOW_PRIVATE": "1",  # the test receivers listen on 127.0.0.1
        "FACELIB_CALLBACK_SCHEDULE": "1,1,1,1",  # short retry schedule for tests
        "FACELIB_SWEEP_INTERVAL_SECONDS": "1",
        "FACELIB_SYNC_TIMEOUT_SECONDS": "90",
        "FACELIB_JOB_TIME_LIMIT_SECONDS": "60",
        "FACELIB_JOB_SEND_TIMEOUT_SECONDS": "15",  # lost messages come back within ~15 s
        "FACELIB_HOME": str(base / "home"),
        "PYTHONUNBUFFERED": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(base / "prometheus"),
    }
    (base / "prometheus").mkdir()
    os.environ.update(
        {k: v for k, v in env.items() if k.startswith(("FACELIB_", "DATABASE_", "REDIS_"))}
    )
    from shared.settings import get_settings

    get_settings.cache_clear()
    from shared.db.migrate import apply_migrations

    apply_migrations(database_url)

    st = Stack(f"http://127.0.0.1:{port}", database_url, redis_url, env, log_dir)
    st.start_api()
    # two pools, as `facelib up` runs them: face jobs (sync queue first), and callbacks
    # (+ sweep, purge)
    st.start_worker(queues=FACE_QUEUES)
    st.start_worker(concurrency=2, beat=False, name="callbacks-worker", queues="callbacks")
    try:
        st.wait_workers()
        yield st
    finally:
        for proc in st.procs.values():
            _stop(proc)
        from shared.db import close_pool

        close_pool()
        for svc in reversed(services):
            svc.stop()
        if drop_db:
            with psycopg.connect(drop_db[0], autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{drop_db[1]}" WITH (FORCE)')


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    lfw_missing = not (LFW / "images").is_dir()
    run_slow = os.environ.get("FACELIB_SLOW") == "1"
    for item in items:
        if lfw_missing and "lfw" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=f"LFW not found at {LFW} (set FACELIB_LFW)"))
        if not run_slow and "slow" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="long run: set FACELIB_SLOW=1"))


sys.path.insert(0, str(ROOT))
