"""`facelib migrate` and `facelib reindex`: the schema and the face search index."""

from __future__ import annotations

import argparse
import sys
import time


def cmd_migrate(args: argparse.Namespace) -> int:
    from shared.db.migrate import apply_migrations
    from shared.settings import get_settings

    applied = apply_migrations(get_settings().database_url)
    print(f"applied: {', '.join(applied) if applied else 'nothing (up to date)'}")
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    """Rebuild the face search index (after a large first load, or with new graph parameters)."""
    import psycopg
    from psycopg.rows import dict_row

    from shared import db
    from shared.cli.wiring import use_local_stack
    from shared.settings import facelib_home, get_settings

    try:
        use_local_stack(facelib_home())
        s = get_settings()
        started = time.monotonic()
        with psycopg.connect(s.database_url, autocommit=True, row_factory=dict_row) as conn:
            faces = db.search.library_size(conn)
            partitions = args.partitions or db.search.partitions_for(
                faces, s.search_partition_faces
            )
            size = db.search.build_search_index(
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
        f"{db.search.SEARCH_INDEX}: {faces} faces, {partitions} partition(s), {size / 2**20:.0f} MB,"
        f" built in {time.monotonic() - started:.0f} s"
    )
    return 0


def add_migrate(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("migrate", help="apply SQL migrations").set_defaults(func=cmd_migrate)


def add_reindex(sub: argparse._SubParsersAction) -> None:
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
