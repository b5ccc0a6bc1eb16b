"""`facelib up`: the whole stack under a small supervisor, and the processes it starts.

The command lines of the API (gunicorn, configured by shared/cli/gunicorn_conf.py), the Celery
workers and beat are written here once: the tests and benchmarks start the same processes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUNICORN_CONF = "python:shared.cli.gunicorn_conf"


def worker_command(
    concurrency: int, beat_schedule: Path | None, queues: str | None = None
) -> list[str]:
    """A Celery worker serving `queues`. `facelib up` and the test stack run two pools: "faces"
    and "callbacks" (deliveries, sweep, purge), so that no callback receiver, however slow,
    holds a process that face jobs need. `facelib up` runs beat as its own process
    (`beat_command`); `beat_schedule` embeds one in this worker instead (the test stack)."""
    from shared.queue import FACE_QUEUES, QUEUE_CALLBACKS, QUEUE_FACES
    from shared.settings import get_settings

    queues = queues or f"{FACE_QUEUES},{QUEUE_CALLBACKS}"  # default: one worker for everything
    name = "faces" if QUEUE_FACES in queues.split(",") else queues.split(",")[0]
    cmd = [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "--concurrency", str(concurrency), "--queues", queues, "--hostname", f"{name}@%h",
        "--loglevel", get_settings().log_level, "--without-gossip",
    ]  # fmt: skip
    if beat_schedule is not None:
        cmd += ["--beat", "--schedule", str(beat_schedule)]
    return cmd


def api_command(port: int, workers: int = 2, threads: int = 8) -> list[str]:
    """The API under gunicorn (shared/cli/gunicorn_conf.py), bound to FACELIB_BIND (default
    127.0.0.1: only this host reaches the API unless told otherwise)."""
    from shared.settings import get_settings

    return [
        sys.executable, "-m", "gunicorn", "--config", GUNICORN_CONF,
        "--workers", str(workers), "--threads", str(threads),
        "--bind", f"{get_settings().bind_host}:{port}",
    ]  # fmt: skip


def beat_command(schedule: Path) -> list[str]:
    """The one beat (sweeper, purges): its own process, so it never outlives or doubles a worker."""
    from shared.settings import get_settings

    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "beat",
        "--schedule", str(schedule), "--loglevel", get_settings().log_level,
    ]  # fmt: skip


class AlreadyRunning(RuntimeError):
    pass


def acquire_home_lock(var: Path) -> object:
    """One `facelib up` per FACELIB_HOME: an exclusive lock on var/facelib-up.pid, holding the pid.

    The kernel drops the lock when the process dies, so a crash never leaves a stale lock.
    Returns the open file (keep it open); raises AlreadyRunning naming the running one.
    """
    import fcntl

    path = var / "facelib-up.pid"
    f = open(path, "a+")  # noqa: SIM115 - held open for the life of the process
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise AlreadyRunning(
            f"facelib up is already running for FACELIB_HOME={var} (pid {pid}, lock {path});"
            " stop it first, or set another FACELIB_HOME"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _pdeathsig_setter() -> Callable[[], None] | None:
    """A pre-exec hook that makes a child get SIGTERM when the supervisor dies (Linux
    PR_SET_PDEATHSIG), so nothing is orphaned. libc is loaded here, before any fork: the hook
    itself only makes one system call."""
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)


def stop_group(proc: subprocess.Popen, wait: float = 30, sig: int = signal.SIGTERM) -> None:
    """Stop a child that leads its own process group (`start_new_session`): `sig` to the group,
    up to `wait` seconds for the leader to exit, then SIGKILL to what is left of the group (pool
    children, an embedded beat). Used by `facelib up`, the test stack and the benchmarks."""

    def kill(s: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, s)

    if proc.poll() is None:
        kill(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
    kill(signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


class Supervised:
    """A child process in its own process group, restarted with backoff when it exits."""

    def __init__(self, name: str, cmd: list[str]) -> None:
        self.name, self.cmd = name, cmd
        self.preexec = _pdeathsig_setter()
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.next_start = 0.0

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.cmd, cwd=ROOT, start_new_session=True, preexec_fn=self.preexec
        )
        self.started_at = time.monotonic()

    def kill_group(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def check(self) -> None:
        """Restart the child if it exited: its whole group is killed first (pool children, an
        embedded beat), then it starts again after a backoff of 1, 2, 4 ... 30 s (reset after
        a minute of running)."""
        now = time.monotonic()
        if self.proc is not None and self.proc.poll() is not None:
            code = self.proc.returncode
            self.kill_group(signal.SIGKILL)
            if now - self.started_at > 60:
                self.restarts = 0
            delay = min(30.0, 2.0**self.restarts)
            self.restarts += 1
            self.next_start = now + delay
            self.proc = None
            print(f"{self.name} exited ({code}); restarting in {delay:.0f} s", flush=True)
        if self.proc is None and now >= self.next_start:
            self.start()

    def stop(self, timeout: float = 30) -> None:
        if self.proc is not None:
            stop_group(self.proc, timeout)


def cmd_up(args: argparse.Namespace) -> int:
    """Run the stack as a small supervisor (docs/reliability.md): Postgres and Redis stay up
    while a dead worker, beat or API is restarted with backoff; one instance per FACELIB_HOME."""
    from shared.cli.wiring import ensure_keys, share_with_children, start_backing_services
    from shared.settings import facelib_home

    t0 = time.monotonic()
    var = facelib_home()
    var.mkdir(parents=True, exist_ok=True)
    try:
        lock = acquire_home_lock(var)
    except AlreadyRunning as exc:
        print(f"facelib up: {exc}", file=sys.stderr)
        return 3
    ensure_keys(var)
    share_with_children(var)
    services: list = []
    children: list[Supervised] = []
    try:
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        services = start_backing_services(var)
        from shared.db.migrate import apply_migrations
        from shared.queue import FACE_QUEUES
        from shared.settings import get_settings

        settings = get_settings()
        applied = apply_migrations(settings.database_url)
        print(f"migrations applied: {applied or 'none (up to date)'}", flush=True)
        token = _dev_token(args.client)
        from shared.db import close_pool

        close_pool()  # no pool threads in the supervisor while it forks children
        concurrency = settings.worker_concurrency if args.concurrency is None else args.concurrency
        children = [
            Supervised("worker", worker_command(concurrency, None, FACE_QUEUES)),  # sync first
            Supervised(
                "callbacks-worker",
                worker_command(settings.callback_concurrency, None, "callbacks"),
            ),
            Supervised("beat", beat_command(var / "celerybeat-schedule")),
            Supervised("api", api_command(settings.port)),
        ]
        for child in children:
            child.start()
        url = f"http://127.0.0.1:{settings.port}"
        procs = [c.proc for c in children if c.proc is not None]
        if _wait_ready(url, timeout=120, procs=procs):
            print(f"\nfaceLib ready in {time.monotonic() - t0:.1f} s: {url}", flush=True)
            print(f"  readiness: {url}/health/ready", flush=True)
            print(f"  token (client {args.client!r}, header Authorization): {token}", flush=True)
            print("  Ctrl-C stops everything.", flush=True)
        else:
            print("faceLib did not become ready; see the logs above", file=sys.stderr)
            return 1
        redis_svc = next((s for s in services if hasattr(s, "process")), None)
        while True:
            time.sleep(0.5)
            if redis_svc is not None and redis_svc.process.poll() is not None:
                print("embedded Redis exited; restarting it (AOF keeps the queue)", flush=True)
                redis_svc.start()
            for child in children:
                child.check()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # uv may forward the same Ctrl-C again
        print("\nstopping...", flush=True)
        return 0
    finally:
        # a second Ctrl-C (or uv forwarding the first) must not cut the clean stop short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for child in children:
            child.kill_group(signal.SIGTERM)
        for child in children:
            child.stop()
        for svc in reversed(services):
            svc.stop()
        lock.close()  # type: ignore[attr-defined]


def _wait_ready(url: str, timeout: float, procs: list[subprocess.Popen]) -> bool:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return False
        try:
            r = requests.get(f"{url}/health/ready", timeout=3)
            if r.status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.5)
    return False


def _dev_token(client_name: str) -> str:
    from shared import db
    from shared.db import transaction
    from shared.settings import get_settings

    with transaction() as conn:
        client = db.clients.get_client_by_name(conn, client_name)
        if client is None:
            client = db.clients.create_client(conn, client_name, scopes=list(db.clients.ALL_SCOPES))
        return db.clients.issue_token(conn, client["id"], get_settings().token_ttl_seconds)["token"]


def add_up(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="run the whole stack (embedded servers unless URLs are set)")
    up.add_argument("--client", default="dev", help="client to print a token for")
    up.add_argument(
        "--concurrency",
        type=int,
        help="face-jobs worker processes (default FACELIB_WORKER_CONCURRENCY, 2)",
    )
    up.set_defaults(func=cmd_up)
