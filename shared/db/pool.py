"""One PostgreSQL connection pool per process, rebuilt after fork.

Celery's prefork pool and gunicorn fork workers after import; a pool opened in the parent must
never be used in a child (its sockets are shared). `get_pool()` therefore keys the pool on the
process id. Every connection has pgvector's types registered.

Fail fast, recover at once (docs/reliability.md): a connection is checked when it leaves the
pool (a stale one after a database restart is replaced, not handed out); waiting for one is
bounded by FACELIB_DB_POOL_TIMEOUT_SECONDS, so a request during an outage answers 9001 within a
second; and when the pool times out, one direct connection probes the server: if it answers,
the pool (which may be sleeping in its reconnect back-off, up to minutes after a long outage)
is rebuilt, so the first request after the database returns succeeds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from pgvector.psycopg import register_vector
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.settings import get_settings

log = logging.getLogger(__name__)

_lock = threading.Lock()
_pool: ConnectionPool | None = None
_pool_pid: int | None = None
# per thread: when this thread last found the database down; a second use within FAIL_MEMORY
# seconds (e.g. the audit row of the request that just failed) fails at once
_recent = threading.local()
FAIL_MEMORY = 1.0
CONNECT_TIMEOUT = 2  # seconds; libpq's smallest useful value


class DatabaseUnavailable(PoolTimeout):
    """No database connection within the fail-fast budget (answered as 9001)."""


def _configure(conn: psycopg.Connection) -> None:
    register_vector(conn)
    conn.commit()


def _new_pool(pid: int) -> ConnectionPool:
    settings = get_settings()
    return ConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=settings.db_pool_size,
        kwargs={"row_factory": dict_row, "connect_timeout": CONNECT_TIMEOUT},
        configure=_configure,
        check=ConnectionPool.check_connection,
        timeout=settings.db_pool_timeout_seconds,
        # give up a reconnect loop early: a new one starts on the next demand, so the pool
        # never sleeps minutes in back-off while the database is back
        reconnect_timeout=10.0,
        open=True,
        name=f"facelib-{pid}",
    )


def get_pool() -> ConnectionPool:
    global _pool, _pool_pid
    pid = os.getpid()
    if _pool is not None and _pool_pid == pid:
        return _pool
    with _lock:
        if _pool is None or _pool_pid != pid:
            _pool = _new_pool(pid)
            _pool_pid = pid
    return _pool


def _rebuild_pool(stale: ConnectionPool) -> ConnectionPool:
    """Replace `stale` (unless another thread already did) with a fresh pool."""
    global _pool
    with _lock:
        if _pool is stale:
            _pool = _new_pool(os.getpid())
            log.info("database reachable again: connection pool rebuilt")
        fresh = _pool
    threading.Thread(target=stale.close, kwargs={"timeout": 5.0}, daemon=True).start()
    return fresh


def _database_answers() -> bool:
    try:
        with psycopg.connect(get_settings().database_url, connect_timeout=CONNECT_TIMEOUT):
            return True
    except psycopg.Error:
        return False


def close_pool() -> None:
    global _pool, _pool_pid
    with _lock:
        if _pool is not None and _pool_pid == os.getpid():
            _pool.close()
        _pool = None
        _pool_pid = None


@contextmanager
def _connection() -> Iterator[psycopg.Connection]:
    failed_at = getattr(_recent, "failed_at", None)
    if failed_at is not None and time.monotonic() - failed_at < FAIL_MEMORY:
        raise DatabaseUnavailable("database unavailable (failed just before)")
    pool = get_pool()
    try:
        conn = pool.getconn()
    except PoolTimeout:
        if not _database_answers():
            _recent.failed_at = time.monotonic()
            raise DatabaseUnavailable("database unavailable") from None
        pool = _rebuild_pool(pool)
        try:
            conn = pool.getconn()
        except PoolTimeout:
            _recent.failed_at = time.monotonic()
            raise DatabaseUnavailable("database unavailable") from None
    _recent.failed_at = None
    try:
        yield conn
    finally:
        pool.putconn(conn)


@contextmanager
def transaction() -> Iterator[psycopg.Connection]:
    """A pooled connection inside one transaction: committed on success, rolled back on error."""
    with _connection() as conn:
        with conn.transaction():
            yield conn
