"""`facelib bulk`: enrol persons from a CSV file or a folder through a running stack's queue."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_bulk(args: argparse.Namespace) -> int:
    from shared.bulk import runner as bulk
    from shared.cli.wiring import use_local_stack
    from shared.errors import FaceLibError
    from shared.settings import facelib_home

    try:
        use_local_stack(facelib_home())
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


def add_bulk(sub: argparse._SubParsersAction) -> None:
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
