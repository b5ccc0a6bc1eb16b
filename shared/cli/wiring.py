"""Process wiring: the environment `facelib` sets for itself and for the processes it starts.

Besides shared/settings.py this is the only module that touches `os.environ` (see the shared.cli
docstring for the list of variables). Settings are read after the wiring is done.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path


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
    from shared.cli.embedded import EmbeddedPostgres, EmbeddedRedis
    from shared.settings import redis_port

    started: list = []
    if not os.environ.get("DATABASE_URL"):
        pg = EmbeddedPostgres(var / "pg")
        os.environ["DATABASE_URL"] = pg.start()
        started.append(pg)
        print(f"PostgreSQL (embedded, pgvector) data in {pg.data_dir}", flush=True)
    if not os.environ.get("REDIS_URL"):
        rd = EmbeddedRedis(var / "redis", port=redis_port())
        os.environ["REDIS_URL"] = rd.start()
        started.append(rd)
        print(f"Redis (embedded, AOF on) at {os.environ['REDIS_URL']}", flush=True)
    return started


def share_with_children(var: Path) -> None:
    """What every process `facelib up` starts must agree on: FACELIB_HOME as an absolute path
    (they run in the repository root, not in this working directory), and one directory where
    the API's gunicorn workers aggregate their metrics (emptied at each start)."""
    os.environ["FACELIB_HOME"] = str(var)
    prom = var / "prometheus"
    shutil.rmtree(prom, ignore_errors=True)
    prom.mkdir()
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(prom))


def use_local_stack(home: Path) -> None:
    """Without DATABASE_URL / REDIS_URL, talk to the embedded servers `facelib up` runs from
    `home` (it must be running: its workers do the work). Used by `facelib bulk` and
    `facelib reindex`."""
    from shared.settings import get_settings, redis_port

    if not os.environ.get("DATABASE_URL"):
        if not (home / "pg" / "postmaster.pid").exists():
            raise ValueError(f"no DATABASE_URL and no running `facelib up` in {home}")
        from shared.cli.embedded import EmbeddedPostgres

        os.environ["DATABASE_URL"] = EmbeddedPostgres(home / "pg").start()  # finds it running
    if not os.environ.get("REDIS_URL"):
        os.environ["REDIS_URL"] = f"redis://127.0.0.1:{redis_port()}/0"
    get_settings.cache_clear()
