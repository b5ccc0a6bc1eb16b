"""The embedded PostgreSQL's bootstrap (shared/cli/embedded.py): its database and its server
settings. Catalogs: pg_database, pg_settings; ALTER SYSTEM writes postgresql.auto.conf.

Each function opens its own connection to the server's admin URL (autocommit: CREATE DATABASE
and ALTER SYSTEM cannot run in a transaction). It runs before Settings can be read, so it
takes the URL rather than using the pool.
"""

from __future__ import annotations

import psycopg
from psycopg import sql


def create_database(admin_url: str, database: str) -> None:
    """Create `database` unless it exists."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def server_settings(admin_url: str, names: list[str]) -> dict[str, str]:
    """These settings' current values as pg_settings has them, with their unit ('16384 8kB')."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        return dict(
            conn.execute(
                "SELECT name, setting || coalesce(' ' || unit, '') FROM pg_settings"
                " WHERE name = ANY(%s)",
                (names,),
            ).fetchall()
        )


def alter_system(admin_url: str, values: dict[str, str], *, reload: bool) -> None:
    """ALTER SYSTEM SET each setting; then reload the configuration when `reload` (enough for
    all but restart-only settings such as shared_buffers, which take effect at a restart)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name, value in values.items():
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
            )
        if reload:
            conn.execute("SELECT pg_reload_conf()")


def drop_database(admin_url: str, database: str) -> None:
    """Drop `database` (a scratch one), closing its sessions."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )
