"""`facelib` command line: run the whole stack, apply migrations, manage clients and tokens.

facelib up                 # embedded Postgres+pgvector and Redis (unless DATABASE_URL /
                           # REDIS_URL are set), migrations, a worker, the API on :7007
facelib migrate
facelib client create NAME [--scopes a,b] [--callback-url URL]
facelib token issue CLIENT_NAME [--ttl SECONDS]
facelib token revoke TOKEN
facelib bulk --client NAME (--csv FILE | --folder DIR) [--report FILE]
facelib models install mobilefacenet --accept-license
facelib models list
facelib reembed --model mobilefacenet [--batch 50] [--limit N]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def home() -> Path:
    return Path(os.environ.get("FACELIB_HOME", ROOT / "var")).resolve()


def ensure_keys(var: Path) -> None:
    """Dev keys, made once and kept in var/secrets.env (encrypted idNums need the same key)."""
    path = var / "secrets.env"
    stored: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                stored[k.strip()] = v.strip()
    changed = False
    for name in ("FACELIB_INDEX_KEY", "FACELIB_ENCRYPTION_KEY"):
        if os.environ.get(name):
            continue
        if name not in stored:
            stored[name] = base64.b64encode(os.urandom(32)).decode()
            changed = True
        os.environ[name] = stored[name]
    if changed:
        var.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{k}={v}\n" for k, v in stored.items()))
        path.chmod(0o600)


def start_backing_services(var: Path) -> list:
    """Start the embedded servers that DATABASE_URL / REDIS_URL don't replace."""
    from shared.embedded import EmbeddedPostgres, EmbeddedRedis

    started: list = []
    if not os.environ.get("DATABASE_URL"):
        pg = EmbeddedPostgres(var / "pg")
        os.environ["DATABASE_URL"] = pg.start()
        started.append(pg)
        print(f"PostgreSQL (embedded, pgvector) data in {pg.data_dir}", flush=True)
    if not os.environ.get("REDIS_URL"):
        rd = EmbeddedRedis(var / "redis", port=int(os.environ.get("FACELIB_REDIS_PORT", "6390")))
        os.environ["REDIS_URL"] = rd.start()
        started.append(rd)
        print(f"Redis (embedded, AOF on) at {os.environ['REDIS_URL']}", flush=True)
    return started


def worker_command(
    concurrency: int, beat_schedule: Path | None, queues: str | None = None
) -> list[str]:
    """A Celery worker serving `queues`. `facelib up` and the test stack run two pools: "faces"
    and "callbacks" (deliveries, sweep, purge), so that no callback receiver, however slow,
    holds a process that face jobs need. `facelib up` runs beat as its own process
    (`beat_command`); `beat_schedule` embeds one in this worker instead (the test stack)."""
    from shared.queue import FACE_QUEUES, QUEUE_CALLBACKS, QUEUE_FACES

    queues = queues or f"{FACE_QUEUES},{QUEUE_CALLBACKS}"  # default: one worker for everything
    name = "faces" if QUEUE_FACES in queues.split(",") else queues.split(",")[0]
    cmd = [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "--concurrency", str(concurrency), "--queues", queues, "--hostname", f"{name}@%h",
        "--loglevel", os.environ.get("FACELIB_LOG_LEVEL", "INFO"), "--without-gossip",
    ]  # fmt: skip
    if beat_schedule is not None:
        cmd += ["--beat", "--schedule", str(beat_schedule)]
    return cmd


def _bind_host() -> str:
    """FACELIB_BIND (default 127.0.0.1: only this host reaches the API unless told otherwise)."""
    from shared.settings import get_settings

    return get_settings().bind_host


def api_command(port: int, workers: int = 2, threads: int = 8) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", "--worker-class", "gthread",
        "--workers", str(workers), "--threads", str(threads),
        "--bind", f"{_bind_host()}:{port}", "--graceful-timeout", "30",
        "--timeout", "120", "api:create_app()",
    ]  # fmt: skip


def beat_command(schedule: Path) -> list[str]:
    """The one beat (sweeper, purges): its own process, so it never outlives or doubles a worker."""
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "beat",
        "--schedule", str(schedule), "--loglevel", os.environ.get("FACELIB_LOG_LEVEL", "INFO"),
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
        if self.proc is None or self.proc.poll() is not None:
            self.kill_group(signal.SIGKILL)
            return
        self.kill_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self.kill_group(signal.SIGKILL)


def cmd_up(args: argparse.Namespace) -> int:
    """Run the stack as a small supervisor (docs/reliability.md): Postgres and Redis stay up
    while a dead worker, beat or API is restarted with backoff; one instance per FACELIB_HOME."""
    t0 = time.monotonic()
    var = home()
    var.mkdir(parents=True, exist_ok=True)
    try:
        lock = acquire_home_lock(var)
    except AlreadyRunning as exc:
        print(f"facelib up: {exc}", file=sys.stderr)
        return 3
    ensure_keys(var)
    prom = var / "prometheus"
    shutil.rmtree(prom, ignore_errors=True)
    prom.mkdir()
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(prom))
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
        children = [
            Supervised("worker", worker_command(args.concurrency, None, FACE_QUEUES)),  # sync first
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
    from shared.db import clients as repo
    from shared.db import transaction
    from shared.settings import get_settings

    with transaction() as conn:
        client = repo.get_client_by_name(conn, client_name)
        if client is None:
            client = repo.create_client(conn, client_name, scopes=list(repo.ALL_SCOPES))
        return repo.issue_token(conn, client["id"], get_settings().token_ttl_seconds)["token"]


def cmd_migrate(args: argparse.Namespace) -> int:
    from shared.db.migrate import apply_migrations
    from shared.settings import get_settings

    applied = apply_migrations(get_settings().database_url)
    print(f"applied: {', '.join(applied) if applied else 'nothing (up to date)'}")
    return 0


def cmd_client_create(args: argparse.Namespace) -> int:
    from shared.db import clients as repo
    from shared.db import transaction

    scopes = [s for s in args.scopes.split(",") if s] if args.scopes else None
    try:
        with transaction() as conn:
            client = repo.create_client(
                conn,
                args.name,
                scopes=scopes,
                callback_url=args.callback_url,
                rate_limit=args.rate_limit,
                match_floor=args.match_floor,
            )
    except ValueError as exc:  # unknown scope, a rate limit or floor that does not parse
        print(f"client not created: {exc}", file=sys.stderr)
        return 2
    print(f"client {client['name']} (id {client['id']}) scopes {','.join(client['scopes'])}")
    print(f"client key:    {client['client_key']}")
    print(f"client secret: {client['client_secret']}   (shown once; only its hash is stored)")
    print(f"callback signing secret: {client['callback_secret']}")
    return 0


def _named_client(conn: object, name: str) -> dict | None:
    """The client called `name`, or None after telling the operator there is none."""
    from shared.db import clients as repo

    client = repo.get_client_by_name(conn, name)  # type: ignore[arg-type]
    if client is None:
        print(f"no client named {name!r}", file=sys.stderr)
    return client


def cmd_client_rotate(args: argparse.Namespace) -> int:
    from shared.db import clients as repo
    from shared.db import transaction

    with transaction() as conn:
        client = _named_client(conn, args.name)
        if client is None:
            return 2
        if args.finish:
            repo.drop_previous_callback_secret(conn, client["id"])
        else:
            secret = repo.rotate_callback_secret(conn, client["id"])
    if args.finish:
        print("the previous callback signing secret no longer signs")
    else:
        print(
            f"new callback signing secret: {secret} (the previous one also signs until "
            "`rotate-callback-secret --finish`)"
        )
    return 0


def cmd_token_issue(args: argparse.Namespace) -> int:
    from shared.db import clients as repo
    from shared.db import transaction
    from shared.settings import get_settings

    with transaction() as conn:
        client = _named_client(conn, args.client)
        if client is None:
            return 2
        issued = repo.issue_token(conn, client["id"], args.ttl or get_settings().token_ttl_seconds)
    print(issued["token"])
    print(f"expires {issued['expires_at'].isoformat()}", file=sys.stderr)
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from shared.db import clients as repo
    from shared.db import transaction

    with transaction() as conn:
        ok = repo.revoke_token(conn, args.token)
    print("revoked" if ok else "no such active token")
    return 0 if ok else 1


def cmd_bulk(args: argparse.Namespace) -> int:
    from shared.bulk import runner as bulk
    from shared.errors import FaceLibError

    try:
        bulk.use_local_stack(home())
        summary = bulk.enrol(
            args.client,
            csv_path=Path(args.csv) if args.csv else None,
            folder=Path(args.folder) if args.folder else None,
            synthetic_id_nums=args.synthetic_idnums,
            person_type=args.person_type,
            report=Path(args.report),
            limit=args.limit,
            lib_ids=[s for s in args.lib_ids.split(",") if s] if args.lib_ids else None,
            in_flight=args.in_flight,
            job_timeout=args.job_timeout,
            progress=not args.no_progress,
        )
    except (ValueError, OSError, FaceLibError) as exc:  # bad input, unknown client or library
        print(f"bulk: {exc}", file=sys.stderr)
        return 2
    print(summary.line())
    print(f"failures: {args.report} ({summary.failed} rows)")
    return 0 if summary.failed == 0 else 1


def cmd_models_install(args: argparse.Namespace) -> int:
    from shared import models

    try:
        print(models.notice(args.name), end="\n\n", flush=True)
        models.install(
            args.name,
            accept_license=args.accept_license,
            force=args.force,
            log=lambda line: print(line, flush=True),
        )
    except models.ModelInstallError as exc:
        print(f"models install: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from shared import models

    print(f"models in {models.models_home()}")
    for row in models.listing():
        state = "installed" if row["installed"] else "not installed"
        where = f"  {row['version']}  {row['path']}" if row["installed"] else ""
        print(f"  {row['name']}  {row['dim']}-d  {state}{where}")
    # FACELIB_MATCH_MODEL decides recong, verify and the duplicate check (dlib by default)
    deciding = os.environ.get("FACELIB_MATCH_MODEL") or "dlib"
    print(f"deciding model: {models.BUILTIN_MODEL if deciding == 'dlib' else deciding}")
    return 0


def cmd_reembed(args: argparse.Namespace) -> int:
    from worker.reembed import reembed

    try:
        counts = reembed(args.model, batch=args.batch, limit=args.limit)
    except (ValueError, RuntimeError) as exc:
        print(f"reembed: {exc}", file=sys.stderr)
        return 2
    print(
        f"reembed {args.model}: {counts['done']} filled in, {counts['failed']} failed,"
        f" {counts['without_photo']} without a kept photo"
    )
    return 0 if counts["failed"] == 0 else 1


def cmd_reindex(args: argparse.Namespace) -> int:
    """Rebuild the face search index (after a large first load, or with new graph parameters)."""
    import time

    import psycopg
    from psycopg.rows import dict_row

    from shared.bulk import runner as bulk
    from shared.db import search as repo
    from shared.settings import get_settings

    try:
        bulk.use_local_stack(home())
        s = get_settings()
        started = time.monotonic()
        with psycopg.connect(s.database_url, autocommit=True, row_factory=dict_row) as conn:
            faces = repo.library_size(conn)
            partitions = args.partitions or repo.partitions_for(faces, s.search_partition_faces)
            size = repo.build_search_index(
                conn,
                partitions=partitions,
                m=args.m or s.hnsw_m,
                ef_construction=args.ef_construction or s.hnsw_ef_construction,
                maintenance_work_mem_mb=args.memory_mb,
                parallel_workers=args.workers,
                concurrently=not args.offline,
            )
    except (ValueError, psycopg.Error) as exc:
        print(f"reindex: {exc}", file=sys.stderr)
        return 2
    print(
        f"{repo.SEARCH_INDEX}: {faces} faces, {partitions} partition(s), {size / 2**20:.0f} MB,"
        f" built in {time.monotonic() - started:.0f} s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="facelib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the whole stack (embedded servers unless URLs are set)")
    up.add_argument("--client", default="dev", help="client to print a token for")
    up.add_argument(
        "--concurrency", type=int, default=int(os.environ.get("FACELIB_WORKER_CONCURRENCY", "2"))
    )
    up.set_defaults(func=cmd_up)
    sub.add_parser("migrate", help="apply SQL migrations").set_defaults(func=cmd_migrate)
    client = sub.add_parser("client").add_subparsers(dest="client_command", required=True)
    create = client.add_parser("create")
    create.add_argument("name")
    create.add_argument("--scopes", help="comma-separated scopes")
    create.add_argument("--callback-url")
    create.add_argument("--rate-limit", help='e.g. "20/second;500/minute"')
    create.add_argument(
        "--match-floor", type=float, help="lowest score that may name a person (default: 70)"
    )
    create.set_defaults(func=cmd_client_create)
    rotate = client.add_parser("rotate-callback-secret")
    rotate.add_argument("name")
    rotate.add_argument(
        "--finish", action="store_true", help="end the overlap: stop signing with the old secret"
    )
    rotate.set_defaults(func=cmd_client_rotate)
    token = sub.add_parser("token").add_subparsers(dest="token_command", required=True)
    issue = token.add_parser("issue")
    issue.add_argument("client")
    issue.add_argument("--ttl", type=int)
    issue.set_defaults(func=cmd_token_issue)
    revoke = token.add_parser("revoke")
    revoke.add_argument("token")
    revoke.set_defaults(func=cmd_token_revoke)
    bulk = sub.add_parser(
        "bulk", help="enrol persons from a CSV file or a folder, through the job queue"
    )
    bulk.add_argument("--client", required=True, help="the client the enrolments are made as")
    source = bulk.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", help="CSV: idNum,name,personType,customerID,image")
    source.add_argument("--folder", help="a folder: one photo or sub-folder per person")
    bulk.add_argument(
        "--synthetic-idnums",
        action="store_true",
        help="folder: make up valid idNums from the names (demonstrations only)",
    )
    bulk.add_argument("--person-type", default="normal", help="folder: personType of every row")
    bulk.add_argument("--lib-ids", help="comma-separated libraries to enrol into (default)")
    bulk.add_argument("--report", default="bulk-failures.csv", help="CSV of the rows not enrolled")
    bulk.add_argument("--in-flight", type=int, default=32, help="rows submitted at once")
    bulk.add_argument("--job-timeout", type=float, default=900.0, help="seconds to wait per row")
    bulk.add_argument("--limit", type=int, help="only the first N rows")
    bulk.add_argument("--no-progress", action="store_true", help="no progress bar")
    bulk.set_defaults(func=cmd_bulk)
    models_cmd = sub.add_parser("models", help="optional embedding models (docs/models.md)")
    models_sub = models_cmd.add_subparsers(dest="models_command", required=True)
    m_install = models_sub.add_parser(
        "install", help="fetch, check, convert and verify a model (prints its licence note)"
    )
    m_install.add_argument("name", help="model to install: mobilefacenet")
    m_install.add_argument(
        "--accept-license",
        action="store_true",
        help="accept the provenance and licence note it prints; without it nothing is fetched",
    )
    m_install.add_argument("--force", action="store_true", help="install again even if present")
    m_install.set_defaults(func=cmd_models_install)
    models_sub.add_parser("list", help="installed models and the deciding one").set_defaults(
        func=cmd_models_list
    )
    reembed = sub.add_parser(
        "reembed", help="fill in a model's missing vectors from kept enrolment photos"
    )
    reembed.add_argument("--model", required=True, help="optional model: mobilefacenet")
    reembed.add_argument("--batch", type=int, default=50, help="faces per transaction")
    reembed.add_argument("--limit", type=int, help="at most N faces this run")
    reembed.set_defaults(func=cmd_reembed)
    reindex = sub.add_parser(
        "reindex", help="rebuild the face search index (HNSW), e.g. after a large first load"
    )
    reindex.add_argument("--m", type=int, help="graph degree (default FACELIB_HNSW_M)")
    reindex.add_argument(
        "--ef-construction", type=int, help="build effort (default FACELIB_HNSW_EF_CONSTRUCTION)"
    )
    reindex.add_argument(
        "--partitions",
        type=int,
        help="index partitions (default: one per FACELIB_SEARCH_PARTITION_FACES faces)",
    )
    reindex.add_argument("--memory-mb", type=int, help="maintenance_work_mem for the build")
    reindex.add_argument("--workers", type=int, help="max_parallel_maintenance_workers")
    reindex.add_argument(
        "--offline",
        action="store_true",
        help="plain CREATE INDEX (faster; blocks enrolments meanwhile) instead of CONCURRENTLY",
    )
    reindex.set_defaults(func=cmd_reindex)
    args = parser.parse_args(argv)
    if args.command == "models":  # needs no keys and no database
        return int(args.func(args) or 0)
    if args.command != "up":
        ensure_keys(home())  # the dev keys, unless the environment provides them
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
