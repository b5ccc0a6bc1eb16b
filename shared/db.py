"""One PostgreSQL connection pool per process, rebuilt after fork.

Celery's prefork pool and gunicorn fork workers after import; a pool opened in the parent must
never be used in a child (its sockets are shared). `get_pool()` therefore keys the pool on the
process id. Every connection has pgvector's types registered.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from pgvector.psycopg import register_vector
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from shared.settings import get_settings

_lock = threading.Lock()
_pool: ConnectionPool | None = None
_pool_pid: int | None = None


def _configure(conn: psycopg.Connection) -> None:
    register_vector(conn)
    conn.commit()


def get_pool() -> ConnectionPool:
    global _pool, _pool_pid
    pid = os.getpid()
    if _pool is not None and _pool_pid == pid:
        return _pool
    with _lock:
        if _pool is None or _pool_pid != pid:
            _pool = ConnectionPool(
                get_settings().database_url,
                min_size=1,
                max_size=int(os.environ.get("FACELIB_DB_POOL_SIZE", "10")),
                kwargs={"row_factory": dict_row, "connect_timeout": 10},
                configure=_configure,
                timeout=15,
                open=True,
                name=f"facelib-{pid}",
            )
            _pool_pid = pid
    return _pool


def close_pool() -> None:
    global _pool, _pool_pid
    with _lock:
        if _pool is not None and _pool_pid == os.getpid():
            _pool.close()
        _pool = None
        _pool_pid = None


@contextmanager
def transaction() -> Iterator[psycopg.Connection]:
    """A pooled connection inside one transaction: committed on success, rolled back on error."""
    with get_pool().connection() as conn:
        with conn.transaction():
            yield conn
