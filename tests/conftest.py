"""The real stack for tests: PostgreSQL + pgvector, Redis, Celery worker processes, the API.

Two session fixtures, the second on top of the first:
- `services`: PostgreSQL and Redis, embedded in a temporary directory unless DATABASE_URL /
  REDIS_URL point at existing ones (then a fresh database `facelib_test_<random>` is created on
  that server and dropped at the end), migrated, with the settings exported to this process.
- `stack`: the worker pools and the API (gunicorn) as separate processes, exactly as
  `facelib up` runs them; their logs are kept for the personal-data scan.

Isolation: a test that needs no worker takes `db` (a connection in a transaction rolled back at
the end; every `shared.db.transaction()` of the test, the in-process app's included, runs in it)
and `api` (the app under Flask's test client, in that transaction). A test on the stack leaves a
clean gallery: what it enrolled (persons, faces, libraries, files) is deleted when it ends
(tests/integration/conftest.py), so the service's own duplicate policy applies.

When the session ends, no log line of the run may hold an idNum, token or secret a test sent:
the run fails otherwise (`scan_logs`).
"""

from __future__ import annotations

import base64
import itertools
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest
import requests
from psycopg.rows import dict_row

from shared.cli.up import stop_group
from shared.queue import FACE_QUEUES
from tests.helpers import (  # noqa: F401 - re-exported: the test modules import them from here
    FACES,
    LFW,
    ROOT,
    TASK,
    eventually,
    face_b64,
    face_bytes,
    run_facelib,
    small_jpeg_b64,
)

# Personal data and secrets the tests send; the log scan checks none of them reaches a log.
SENSITIVE: set[str] = set()
SENSITIVE_NAMES = ("张三", "审计测试")
_id_seq = itertools.count(1)


def new_id_num() -> str:
    """A fresh valid ID number (GB 11643), remembered for the log scan."""
    from shared.idnum import make_id_num

    n = next(_id_seq)
    id_num = make_id_num("610102", date(1980 + n % 30, 1 + n % 12, 1 + n % 28), n)
    SENSITIVE.add(id_num)
    return id_num


def new_client(
    conn: psycopg.Connection, name: str | None = None, scopes: list[str] | None = None, **kw: Any
) -> dict:
    """A new API client with a token, on `conn`: {'id', 'name', 'token', 'callback_secret'...}."""
    from shared.db import clients as clients_repo

    name = name or f"client-{secrets.token_hex(4)}"
    c = clients_repo.create_client(
        conn,
        name,
        scopes=scopes,
        callback_url=kw.get("callback_url"),
        rate_limit=kw.get("rate_limit"),
    )
    t = clients_repo.issue_token(conn, c["id"], kw.get("ttl", 3600))
    SENSITIVE.update({t["token"], c["client_secret"], c["callback_secret"]})
    return {**c, "token": t["token"]}


def scan_logs(log_dir: Path) -> list[str]:
    """Where a value the tests sent (idNum, token, secret, name) stands in a log of the run:
    'file: first characters', one per finding."""
    logs = {p.name: p.read_text(errors="replace") for p in sorted(log_dir.glob("*.log"))}
    values = [*SENSITIVE, *SENSITIVE_NAMES]
    return [f"{name}: {v[:6]}…" for name, text in logs.items() for v in values if v in text]


# --- the clean gallery --------------------------------------------------------------------------

# what a test may enrol; faces, memberships and kept photos go with their person or library
GALLERY = ("persons", "faces", "libraries", "files")


def gallery_marks(conn: psycopg.Connection) -> dict[str, int]:
    """The highest id of each gallery table: what a test enrols from now on lies above."""
    return {
        t: conn.execute(f"SELECT coalesce(max(id), 0) AS m FROM {t}").fetchone()["m"]
        for t in GALLERY
    }


def clean_gallery(conn: psycopg.Connection, marks: dict[str, int]) -> None:
    """Delete every person, face, library and uploaded file above `marks` (the file store's
    objects too, once no row names them). The audit log is append-only: never touched."""
    from shared.files.stores import get_file_store

    conn.execute("DELETE FROM persons WHERE id > %s", (marks["persons"],))
    conn.execute("DELETE FROM faces WHERE id > %s", (marks["faces"],))
    conn.execute("DELETE FROM libraries WHERE id > %s", (marks["libraries"],))
    paths = [
        r["path"]
        for r in conn.execute(
            "DELETE FROM files WHERE id > %s RETURNING path", (marks["files"],)
        ).fetchall()
    ]
    kept = {
        r["path"]
        for r in conn.execute("SELECT path FROM files WHERE path = ANY(%s)", (paths,)).fetchall()
    }
    for path in set(paths) - kept:
        get_file_store().delete(path)


# --- the services and the stack -----------------------------------------------------------------


def stack_env(
    base: Path, database_url: str, redis_url: str, port: int, **settings: str
) -> dict[str, str]:
    """The environment of a test stack's processes: its servers, fresh keys, a FACELIB_HOME
    and a metrics directory under `base`, and the FACELIB_* `settings` of the tests."""
    (base / "prometheus").mkdir(exist_ok=True)
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "FACELIB_INDEX_KEY": base64.b64encode(os.urandom(32)).decode(),
        "FACELIB_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
        "FACELIB_PORT": str(port),
        "FACELIB_HOME": str(base / "home"),
        "PYTHONUNBUFFERED": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(base / "prometheus"),
        **settings,
    }


@contextmanager
def exported_settings(env: dict[str, str]) -> Iterator[None]:
    """This process reads the stack's settings (FACELIB_*, DATABASE_*, REDIS_*) until the block
    ends; then its own again. The settings cache and the connection pool follow."""
    from shared.db import close_pool
    from shared.settings import get_settings

    names = [k for k in env if k.startswith(("FACELIB_", "DATABASE_", "REDIS_"))]
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update({k: env[k] for k in names})
    get_settings.cache_clear()
    close_pool()
    try:
        yield
    finally:
        close_pool()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()


class OnTheDatabase:
    """What the services and a stack offer on their database (`database_url`)."""

    database_url: str

    def db(self) -> psycopg.Connection:
        """A connection as the tables' owner, autocommit."""
        return psycopg.connect(self.database_url, row_factory=dict_row, autocommit=True)

    def gallery_marks(self) -> dict[str, int]:
        with self.db() as conn:
            return gallery_marks(conn)

    def clean_gallery(self, marks: dict[str, int]) -> None:
        with self.db() as conn:
            clean_gallery(conn, marks)


@dataclass
class Services(OnTheDatabase):
    database_url: str
    redis_url: str
    env: dict[str, str]
    log_dir: Path
    baseline: dict[str, int] = field(default_factory=dict)  # the gallery as migrated

    current: ClassVar[Services | None] = None  # the session's, while it runs


@dataclass
class Stack(OnTheDatabase):
    api_url: str
    database_url: str
    redis_url: str
    env: dict[str, str]
    log_dir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def client(self, name: str | None = None, scopes: list[str] | None = None, **kw: Any) -> dict:
        """A new API client with a token, committed: {'id', 'name', 'token', 'callback_secret'}."""
        with psycopg.connect(self.database_url, row_factory=dict_row) as conn:  # commits
            return new_client(conn, name, scopes, **kw)

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

    def wait_task(
        self,
        token: str,
        task_id: str,
        until: Callable[[dict], bool] | None = None,
        timeout: float = 120,
    ) -> dict:
        """Poll GET /task/<id> until `until(data)` holds (default: the job is done or failed);
        the task's `data` (status, result, callback)."""
        until = until or (lambda data: data["status"] in ("done", "failed"))

        def probe() -> dict | None:
            data = self.get(f"{TASK}{task_id}", token).json()["data"]
            return data if until(data) else None

        return eventually(probe, timeout, what=f"task {task_id}")

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

        def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError("extra API did not start")
            try:
                return requests.get(f"{url}/health/live", timeout=2) is not None
            except requests.RequestException:
                return False

        try:
            eventually(answers, 60, 0.2, "the extra API answers")
            yield url
        finally:
            stop_group(proc, 20)
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
            stop_group(self.procs.pop(name), 20)
        name = f"worker-swapped-{secrets.token_hex(3)}"
        self.start_worker(queues=FACE_QUEUES, name=name, env={**self.env, **env_overrides})
        try:
            self.wait_log(name, " ready.")
            yield
        finally:
            stop_group(self.procs.pop(name), 20)
            restored = f"worker-{secrets.token_hex(3)}"
            self.start_worker(queues=FACE_QUEUES, name=restored)
            self.wait_log(restored, " ready.")

    def wait_log(self, name: str, text: str, timeout: float = 240) -> None:
        """Until process `name`'s log shows `text` (e.g. a Celery worker's "ready.")."""
        path, proc = self.log_dir / f"{name}.log", self.procs[name]

        def logged() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited before it logged {text!r}; see {path}")
            return text in path.read_text(errors="replace")

        eventually(logged, timeout, 0.5, f"{name} logs {text!r} (see {path})")

    def wait_workers(self, timeout: float = 240) -> None:
        """Until /health/ready answers 200 (database, broker and a worker); a process of the
        stack that exits meanwhile ends the wait at once."""

        def ready() -> bool:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited; see {self.log_dir}")
            try:
                return requests.get(f"{self.api_url}/health/ready", timeout=10).status_code == 200
            except requests.RequestException:
                return False

        eventually(ready, timeout, 0.5, f"the stack is ready (logs: {self.log_dir})")

    @contextmanager
    def running(self, timeout: float = 240) -> Iterator[Stack]:
        """The processes started so far, once ready; all stopped when the block ends."""
        try:
            self.wait_workers(timeout)
            yield self
        finally:
            for proc in self.procs.values():
                stop_group(proc, 20)


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    from shared.cli.embedded import free_port, scratch_servers

    base = tmp_path_factory.mktemp("stack")
    log_dir = base / "logs"
    log_dir.mkdir()
    # the servers' data outside pytest's temporary root: a pytest session that starts on the
    # same machine resets that root to mode 0700, which locks the `pgserver` user (embedded
    # PostgreSQL as root) out of a data directory it is running on
    data = Path(tempfile.mkdtemp(prefix="facelib-test-"))
    data.chmod(0o755)
    servers = scratch_servers(
        data, "facelib_test", os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    )
    database_url, redis_url = servers.database_url, servers.redis_url

    env = stack_env(
        base,
        database_url,
        redis_url,
        free_port(),
        FACELIB_CALLBACK_ALLOW_PRIVATE="1",  # the test receivers listen on 127.0.0.1
        FACELIB_CALLBACK_SCHEDULE="1,1,1,1",  # short retry schedule for tests
        FACELIB_SWEEP_INTERVAL_SECONDS="1",
        FACELIB_SYNC_TIMEOUT_SECONDS="90",
        FACELIB_JOB_TIME_LIMIT_SECONDS="60",
        FACELIB_JOB_SEND_TIMEOUT_SECONDS="15",  # lost messages come back within ~15 s
    )
    try:
        with exported_settings(env):
            from shared.db.migrate import apply_migrations

            apply_migrations(database_url)
            svc = Services(database_url, redis_url, env, log_dir)
            svc.baseline = svc.gallery_marks()
            Services.current = svc
            try:
                yield svc
            finally:
                Services.current = None
    finally:
        servers.stop()
        shutil.rmtree(data, ignore_errors=True)
    # the session's finaliser: personal data in a log fails the run
    leaks = scan_logs(log_dir)
    assert not leaks, f"personal data or secrets in the logs of the run ({log_dir}): {leaks}"


@pytest.fixture(scope="session")
def stack(services: Services) -> Iterator[Stack]:
    env = services.env
    st = Stack(
        f"http://127.0.0.1:{env['FACELIB_PORT']}",
        services.database_url,
        services.redis_url,
        env,
        services.log_dir,
    )
    st.start_api()
    # two pools, as `facelib up` runs them: face jobs (sync queue first), and callbacks
    # (+ sweep, purge)
    st.start_worker(queues=FACE_QUEUES)
    st.start_worker(concurrency=2, beat=False, name="callbacks-worker", queues="callbacks")
    with st.running():
        yield st


# --- no worker: one transaction per test, the app in this process ------------------------------


@pytest.fixture
def db(services: Services, monkeypatch: pytest.MonkeyPatch) -> Iterator[psycopg.Connection]:
    """A connection in a transaction that is rolled back when the test ends. Every
    `shared.db.transaction()` of the test (repositories, the app under `api`) runs inside it,
    as a savepoint: nothing the test writes outlives it, and no other process sees it."""
    from pgvector.psycopg import register_vector

    from shared.db import transaction

    conn = psycopg.connect(services.database_url, row_factory=dict_row)
    register_vector(conn)
    conn.commit()

    @contextmanager
    def this_transaction() -> Iterator[psycopg.Connection]:
        yield conn

    pool = sys.modules[transaction.__module__]  # where `transaction` finds its connection
    try:
        with conn.transaction(force_rollback=True):
            monkeypatch.setattr(pool, "_connection", this_transaction)
            yield conn
    finally:
        conn.close()


class Answer:
    """A test client's response with the `requests` interface the tests read."""

    def __init__(self, resp: Any) -> None:
        self.status_code: int = resp.status_code
        self.headers = resp.headers
        self.content: bytes = resp.get_data()
        self.text: str = resp.get_data(as_text=True)

    def json(self) -> Any:
        import json

        return json.loads(self.content)


class AppClient:
    """The API app in this process under Flask's test client: no HTTP, no worker. Its requests
    run in the test's transaction (`db`) and come from an address of the test's own (the
    per-IP limits of failed authentication are the test's alone). Same calls as `Stack`."""

    def __init__(self, app: Any, db: psycopg.Connection, remote_addr: str) -> None:
        self.http = app.test_client()
        self.http.environ_base["REMOTE_ADDR"] = remote_addr
        self.conn = db

    def client(self, name: str | None = None, scopes: list[str] | None = None, **kw: Any) -> dict:
        """A new API client with a token, in the test's transaction."""
        return new_client(self.conn, name, scopes, **kw)

    def request(
        self, method: str, path: str, token: str | None, body: Any = None, **kw: Any
    ) -> Answer:
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers.setdefault("Authorization", token)
        if "data" not in kw and body is not None:
            kw["json"] = body
        return Answer(self.http.open(path, method=method, headers=headers, **kw))

    def post(self, path: str, token: str | None, body: Any = None, **kw: Any) -> Answer:
        return self.request("POST", path, token, body, **kw)

    def get(self, path: str, token: str | None, **kw: Any) -> Answer:
        return self.request("GET", path, token, **kw)


@pytest.fixture(scope="session")
def app(services: Services) -> Any:
    """The API (`api.create_app`) in this process, against the test database and Redis. From
    the first test that uses it on, this process's log lines (the app's among them) also go to
    the run's log directory, for the scan."""
    from api import create_app
    from shared.logs import JsonFormatter

    application = create_app()
    handler = logging.FileHandler(services.log_dir / "test-process.log", encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    application.extensions["facelib-test-log"] = handler
    return application


@pytest.fixture
def api(app: Any, db: psycopg.Connection) -> AppClient:
    root = logging.getLogger()
    handler = app.extensions["facelib-test-log"]
    if handler not in root.handlers:  # `configure_logging` (create_app, the CLI) resets them
        root.addHandler(handler)
    octets = secrets.token_bytes(3)
    return AppClient(app, db, f"127.{octets[0]}.{octets[1]}.{octets[2] or 1}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    lfw_missing = not (LFW / "images").is_dir()
    run_slow = os.environ.get("FACELIB_SLOW") == "1"
    for item in items:
        if lfw_missing and "lfw" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=f"LFW not found at {LFW} (set FACELIB_LFW)"))
        if not run_slow and "slow" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="long run: set FACELIB_SLOW=1"))


sys.path.insert(0, str(ROOT))
