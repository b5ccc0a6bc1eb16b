"""`facelib models` and `facelib reembed`: optional embedding models (docs/models.md)."""

from __future__ import annotations

import argparse
import sys


def cmd_models_install(args: argparse.Namespace) -> int:
    from shared import models
    from worker.model_install import install

    try:
        print(models.notice(args.name), end="\n\n", flush=True)
        install(
            args.name,
            accept_license=args.accept_license,
            force=args.force,
            log=lambda line: print(line, flush=True),
        )
    except models.ModelInstallError as exc:
        print(f"models install: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from shared import models
    from shared.settings import match_model_name

    print(f"models in {models.models_home()}")
    for row in models.listing():
        state = "installed" if row["installed"] else "not installed"
        where = f"  {row['version']}  {row['path']}" if row["installed"] else ""
        print(f"  {row['name']}  {row['dim']}-d  {state}{where}")
    deciding = match_model_name()  # decides recong, verify and the duplicate check
    print(f"deciding model: {models.BUILTIN_MODEL if deciding == 'dlib' else deciding}")
    return 0


def cmd_reembed(args: argparse.Namespace) -> int:
    from worker.reembed import reembed

    try:
        counts = reembed(args.model, batch=args.batch, limit=args.limit)
    except (ValueError, RuntimeError) as exc:
        print(f"reembed: {exc}", file=sys.stderr)
        return 2
    print(
        f"reembed {args.model}: {counts['done']} filled in, {counts['failed']} failed,"
        f" {counts['without_photo']} without a kept photo"
    )
    return 0 if counts["failed"] == 0 else 1


def add_models(sub: argparse._SubParsersAction) -> None:
    models_cmd = sub.add_parser("models", help="optional embedding models (docs/models.md)")
    models_sub = models_cmd.add_subparsers(dest="models_command", required=True)
    m_install = models_sub.add_parser(
        "install", help="fetch, check, convert and verify a model (prints its licence note)"
    )
    m_install.add_argument("name", help="model to install: mobilefacenet")
    m_install.add_argument(
        "--accept-license",
        action="store_true",
        help="accept the provenance and licence note it prints; without it nothing is fetched",
    )
    m_install.add_argument("--force", action="store_true", help="install again even if present")
    m_install.set_defaults(func=cmd_models_install)
    models_sub.add_parser("list", help="installed models and the deciding one").set_defaults(
        func=cmd_models_list
    )


def add_reembed(sub: argparse._SubParsersAction) -> None:
    reembed = sub.add_parser(
        "reembed", help="fill in a model's missing vectors from kept enrolment photos"
    )
    reembed.add_argument("--model", required=True, help="optional model: mobilefacenet")
    reembed.add_argument("--batch", type=int, default=50, help="faces per transaction")
    reembed.add_argument("--limit", type=int, help="at most N faces this run")
    reembed.set_defaults(func=cmd_reembed)
