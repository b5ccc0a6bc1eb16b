"""`facelib` command line: run the whole stack, apply migrations, manage clients and tokens.

facelib up                 # embedded Postgres+pgvector and Redis (unless DATABASE_URL /
                           # REDIS_URL are set), migrations, a worker, the API on :7007
facelib migrate
facelib client create NAME [--scopes a,b] [--callback-url URL]
facelib token issue CLIENT_NAME [--ttl SECONDS]
facelib token revoke TOKEN
facelib bulk --client NAME (--csv FILE | --folder DIR) [--report FILE]
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import subprocess
import sys
import time
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


def worker_command(concurrency: int, beat_schedule: Path | None) -> list[str]:
    cmd = [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "--concurrency", str(concurrency), "--queues", "faces,callbacks",
        "--loglevel", os.environ.get("FACELIB_LOG_LEVEL", "INFO"), "--without-gossip",
    ]  # fmt: skip
    if beat_schedule is not None:
        cmd += ["--beat", "--schedule", str(beat_schedule)]
    return cmd


def api_command(port: int, workers: int = 2, threads: int = 8) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", "--worker-class", "gthread",
        "--workers", str(workers), "--threads", str(threads),
        "--bind", f"0.0.0.0:{port}", "--graceful-timeout", "30",
        "--timeout", "120", "api:create_app()",
    ]  # fmt: skip


def cmd_up(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    var = home()
    var.mkdir(parents=True, exist_ok=True)
    ensure_keys(var)
    prom = var / "prometheus"
    shutil.rmtree(prom, ignore_errors=True)
    prom.mkdir()
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(prom))
    services = start_backing_services(var)
    from shared.migrate import apply_migrations
    from shared.settings import get_settings

    settings = get_settings()
    applied = apply_migrations(settings.database_url)
    print(f"migrations applied: {applied or 'none (up to date)'}", flush=True)
    token = _dev_token(args.client)
    procs: list[subprocess.Popen] = []
    try:
        procs.append(
            subprocess.Popen(
                worker_command(args.concurrency, var / "celerybeat-schedule"), cwd=ROOT
            )
        )
        procs.append(subprocess.Popen(api_command(settings.port), cwd=ROOT))
        url = f"http://127.0.0.1:{settings.port}"
        if _wait_ready(url, timeout=120, procs=procs):
            print(f"\nfaceLib ready in {time.monotonic() - t0:.1f} s: {url}", flush=True)
            print(f"  readiness: {url}/health/ready", flush=True)
            print(f"  token (client {args.client!r}, header Authorization): {token}", flush=True)
            print("  Ctrl-C stops everything.", flush=True)
        else:
            print("faceLib did not become ready; see the logs above", file=sys.stderr)
            return 1
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # uv may forward the same Ctrl-C again
        print("\nstopping...", flush=True)
        return 0
    finally:
        # a second Ctrl-C (or uv forwarding the first) must not cut the clean stop short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for svc in reversed(services):
            svc.stop()


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
    from shared import repo
    from shared.db import transaction
    from shared.settings import get_settings

    with transaction() as conn:
        client = repo.get_client_by_name(conn, client_name)
        if client is None:
            client = repo.create_client(conn, client_name, scopes=list(repo.ALL_SCOPES))
        return repo.issue_token(conn, client["id"], get_settings().token_ttl_seconds)["token"]


def cmd_migrate(args: argparse.Namespace) -> int:
    from shared.migrate import apply_migrations
    from shared.settings import get_settings

    applied = apply_migrations(get_settings().database_url)
    print(f"applied: {', '.join(applied) if applied else 'nothing (up to date)'}")
    return 0


def cmd_client_create(args: argparse.Namespace) -> int:
    from shared import repo
    from shared.db import transaction

    scopes = [s for s in args.scopes.split(",") if s] if args.scopes else None
    with transaction() as conn:
        client = repo.create_client(
            conn,
            args.name,
            scopes=scopes,
            callback_url=args.callback_url,
            rate_limit=args.rate_limit,
        )
    print(f"client {client['name']} (id {client['id']}) scopes {','.join(client['scopes'])}")
    print(f"client key:    {client['client_key']}")
    print(f"client secret: {client['client_secret']}   (shown once; only its hash is stored)")
    print(f"callback signing secret: {client['callback_secret']}")
    return 0


def _named_client(conn: object, name: str) -> dict | None:
    """The client called `name`, or None after telling the operator there is none."""
    from shared import repo

    client = repo.get_client_by_name(conn, name)  # type: ignore[arg-type]
    if client is None:
        print(f"no client named {name!r}", file=sys.stderr)
    return client


def cmd_client_rotate(args: argparse.Namespace) -> int:
    from shared import repo
    from shared.db import transaction

    with transaction() as conn:
        client = _named_client(conn, args.name)
        if client is None:
            return 2
        secret = repo.rotate_callback_secret(conn, client["id"])
    print(
        f"new callback signing secret: {secret} (the previous one also signs until next rotation)"
    )
    return 0


def cmd_token_issue(args: argparse.Namespace) -> int:
    from shared import repo
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
    from shared import repo
    from shared.db import transaction

    with transaction() as conn:
        ok = repo.revoke_token(conn, args.token)
    print("revoked" if ok else "no such active token")
    return 0 if ok else 1


def cmd_bulk(args: argparse.Namespace) -> int:
    from shared import bulk
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


def cmd_reindex(args: argparse.Namespace) -> int:
    """Rebuild the face search index (after a large first load, or with new graph parameters)."""
    import time

    import psycopg
    from psycopg.rows import dict_row

    from shared import bulk, repo
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
    create.set_defaults(func=cmd_client_create)
    rotate = client.add_parser("rotate-callback-secret")
    rotate.add_argument("name")
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
    if args.command != "up":
        ensure_keys(home())  # the dev keys, unless the environment provides them
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
