"""Apply the ordered SQL migrations in `sql/` (0001_*.sql, 0002_*.sql, ...), each once.

Each file runs in its own transaction and is recorded in `schema_migrations` with its checksum;
a session-level advisory lock makes concurrent runs (API and workers starting together) safe.
Running it again applies nothing. A file changed after it was applied is reported, not re-run.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import psycopg

log = logging.getLogger(__name__)


def _sql_dir() -> Path:
    """`sql/` at the repository root in a checkout; `shared/sql` inside an installed wheel
    (pyproject's force-include puts it there)."""
    shared = Path(__file__).resolve().parent.parent
    packaged = shared / "sql"
    return packaged if packaged.is_dir() else shared.parent / "sql"


SQL_DIR = _sql_dir()
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK_ID = 0x66616365  # "face"


def migration_files(sql_dir: Path = SQL_DIR) -> list[Path]:
    files = sorted(p for p in sql_dir.iterdir() if _NAME.match(p.name))
    versions = [p.name[:4] for p in files]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number in {sql_dir}")
    return files


def apply_migrations(database_url: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date)."""
    applied: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            conn.execute(
                "COMMENT ON TABLE schema_migrations IS "
                "'SQL migrations from sql/ already applied (by facelib migrate).'"
            )
            done = dict(conn.execute("SELECT name, checksum FROM schema_migrations").fetchall())
            for path in migration_files(sql_dir):
                text = path.read_text(encoding="utf-8")
                checksum = hashlib.sha256(text.encode()).hexdigest()
                if path.name in done:
                    if done[path.name] != checksum:
                        log.warning("migration %s changed after it was applied", path.name)
                    continue
                with conn.transaction():
                    conn.execute(text)
                    conn.execute(
                        "INSERT INTO schema_migrations (name, checksum) VALUES (%s, %s)",
                        (path.name, checksum),
                    )
                log.info("applied migration %s", path.name)
                applied.append(path.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied
