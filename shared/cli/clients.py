"""`facelib client` and `facelib token`: API clients, their callback secrets, access tokens."""

from __future__ import annotations

import argparse
import sys


def cmd_client_create(args: argparse.Namespace) -> int:
    from shared import db
    from shared.db import transaction

    scopes = [s for s in args.scopes.split(",") if s] if args.scopes else None
    try:
        with transaction() as conn:
            client = db.clients.create_client(
                conn,
                args.name,
                scopes=scopes,
                callback_url=args.callback_url,
                rate_limit=args.rate_limit,
                match_floor=args.match_floor,
            )
    except ValueError as exc:  # unknown scope, a rate limit or floor that does not parse
        print(f"client not created: {exc}", file=sys.stderr)
        return 2
    print(f"client {client['name']} (id {client['id']}) scopes {','.join(client['scopes'])}")
    print(f"client key:    {client['client_key']}")
    print(f"client secret: {client['client_secret']}   (shown once; only its hash is stored)")
    print(f"callback signing secret: {client['callback_secret']}")
    return 0


def _named_client(conn: object, name: str) -> dict | None:
    """The client called `name`, or None after telling the operator there is none."""
    from shared import db

    client = db.clients.get_client_by_name(conn, name)  # type: ignore[arg-type]
    if client is None:
        print(f"no client named {name!r}", file=sys.stderr)
    return client


def cmd_client_rotate(args: argparse.Namespace) -> int:
    from shared import db
    from shared.db import transaction

    with transaction() as conn:
        client = _named_client(conn, args.name)
        if client is None:
            return 2
        if args.finish:
            db.clients.drop_previous_callback_secret(conn, client["id"])
        else:
            secret = db.clients.rotate_callback_secret(conn, client["id"])
    if args.finish:
        print("the previous callback signing secret no longer signs")
    else:
        print(
            f"new callback signing secret: {secret} (the previous one also signs until "
            "`rotate-callback-secret --finish`)"
        )
    return 0


def cmd_token_issue(args: argparse.Namespace) -> int:
    from shared import db
    from shared.db import transaction
    from shared.settings import get_settings

    with transaction() as conn:
        client = _named_client(conn, args.client)
        if client is None:
            return 2
        issued = db.clients.issue_token(
            conn, client["id"], args.ttl or get_settings().token_ttl_seconds
        )
    print(issued["token"])
    print(f"expires {issued['expires_at'].isoformat()}", file=sys.stderr)
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from shared import db
    from shared.db import transaction

    with transaction() as conn:
        ok = db.clients.revoke_token(conn, args.token)
    print("revoked" if ok else "no such active token")
    return 0 if ok else 1


def add_client(sub: argparse._SubParsersAction) -> None:
    client = sub.add_parser("client").add_subparsers(dest="client_command", required=True)
    create = client.add_parser("create")
    create.add_argument("name")
    create.add_argument("--scopes", help="comma-separated scopes")
    create.add_argument("--callback-url")
    create.add_argument("--rate-limit", help='e.g. "20/second;500/minute"')
    create.add_argument(
        "--match-floor", type=float, help="lowest score that may name a person (default: 70)"
    )
    create.set_defaults(func=cmd_client_create)
    rotate = client.add_parser("rotate-callback-secret")
    rotate.add_argument("name")
    rotate.add_argument(
        "--finish", action="store_true", help="end the overlap: stop signing with the old secret"
    )
    rotate.set_defaults(func=cmd_client_rotate)


def add_token(sub: argparse._SubParsersAction) -> None:
    token = sub.add_parser("token").add_subparsers(dest="token_command", required=True)
    issue = token.add_parser("issue")
    issue.add_argument("client")
    issue.add_argument("--ttl", type=int)
    issue.set_defaults(func=cmd_token_issue)
    revoke = token.add_parser("revoke")
    revoke.add_argument("token")
    revoke.set_defaults(func=cmd_token_revoke)
