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
facelib reindex [--partitions N] [--offline]

One module per group of commands (up, database, clients, bulk, models), each declaring its own
arguments; `up` also holds the supervisor and the command lines of the processes it starts
(`api_command`, `worker_command`, `beat_command`: the tests and benchmarks start the same
processes with them). `embedded` runs the embedded PostgreSQL and Redis; `gunicorn_conf` is the
API server's configuration, shared by `facelib up`, the tests and the image.

Process wiring (shared/cli/wiring.py) is the one place besides shared/settings.py that touches
the environment: `facelib` sets, for itself and the processes it starts, DATABASE_URL and
REDIS_URL (the embedded servers', unless set), FACELIB_INDEX_KEY and FACELIB_ENCRYPTION_KEY
(dev keys kept in FACELIB_HOME/secrets.env, unless set), and, in `facelib up`, FACELIB_HOME (made
absolute) and PROMETHEUS_MULTIPROC_DIR (FACELIB_HOME/prometheus, unless set). `facelib bulk` and
`facelib reindex` point DATABASE_URL / REDIS_URL at a running `facelib up` the same way
(`wiring.use_local_stack`).
"""

from __future__ import annotations

import argparse

from shared.cli import bulk, clients, database, models, up
from shared.cli.up import api_command, beat_command, worker_command

__all__ = ["api_command", "beat_command", "build_parser", "main", "worker_command"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facelib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        up.add_up,
        database.add_migrate,
        clients.add_client,
        clients.add_token,
        bulk.add_bulk,
        models.add_models,
        models.add_reembed,
        database.add_reindex,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in ("models", "up"):  # models need no keys; up makes its own
        from shared.cli.wiring import ensure_keys
        from shared.settings import facelib_home

        ensure_keys(facelib_home())  # the dev keys, unless the environment provides them
    return int(args.func(args) or 0)
