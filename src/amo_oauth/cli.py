"""``amo-oauth``: the demo, the lifecycle diagram, and two operator commands.

amo-oauth demo [--serve]            the seed's scenario end to end over loopback HTTP:
                                    FakeAmoCRM, the FastAPI example, the old and new app
amo-oauth diagram [--markdown]      the lifecycle diagram generated from the table
amo-oauth status ID [--db PATH]     a connection's state, from an SQLite store
amo-oauth refresh-due [--db PATH] [--within-days N]
                                    refresh connections whose refresh token expires soon;
                                    reads AMO_CLIENT_ID, AMO_CLIENT_SECRET,
                                    AMO_REDIRECT_URI and AMO_STATE_SECRET
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import timedelta

from ._config import Config

__all__ = ["main"]


def _diagram(args: argparse.Namespace) -> int:
    from ._diagram import lifecycle_markdown, mermaid

    print(lifecycle_markdown() if args.markdown else mermaid(), end="")
    return 0


def _existing_db(path: str) -> str:
    # An operator's typo must not create an empty store and report everyone disconnected.
    if not os.path.isfile(path):
        raise SystemExit(f"amo-oauth: no store at {path!r}")
    return path


def _status(args: argparse.Namespace) -> int:
    from ._records import record_key
    from .stores import SQLiteStore

    client_id = args.client_id or os.environ.get("AMO_CLIENT_ID")
    if not client_id:
        raise SystemExit("amo-oauth: pass --client-id or set AMO_CLIENT_ID")
    store = SQLiteStore(_existing_db(args.db))
    try:
        # Records are kept per integration; one stored before that has its bare id as key.
        record = store.load(record_key(client_id, args.connection_id))
        record = record or store.load(args.connection_id)
    finally:
        store.close()
    if record is None:
        print(json.dumps({"connection_id": args.connection_id, "state": "disconnected"}))
        return 0
    connection = record.public()
    print(
        json.dumps(
            {
                "connection_id": connection.connection_id,
                "state": connection.state.value,
                "account": connection.account.subdomain if connection.account else None,
                "expires_at": connection.expires_at.isoformat() if connection.expires_at else None,
                "error": connection.error.reason if connection.error else None,
                "version": connection.version,
                "host": connection.host,
            }
        )
    )
    return 0


def _config_from_env() -> Config:
    names = ("AMO_CLIENT_ID", "AMO_CLIENT_SECRET", "AMO_REDIRECT_URI", "AMO_STATE_SECRET")
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        raise SystemExit(f"amo-oauth: set {', '.join(missing)}")
    return Config(
        client_id=os.environ["AMO_CLIENT_ID"],
        client_secret=os.environ["AMO_CLIENT_SECRET"],
        redirect_uri=os.environ["AMO_REDIRECT_URI"],
        state_secret=os.environ["AMO_STATE_SECRET"],
    )


def _refresh_due(args: argparse.Namespace) -> int:
    from ._service import AmoOAuth
    from .stores import SQLiteStore

    config = _config_from_env()
    with AmoOAuth(config, store=SQLiteStore(_existing_db(args.db))) as oauth:
        report = oauth.refresh_due(within=timedelta(days=args.within_days))
    print(json.dumps({"refreshed": list(report.refreshed), "failed": dict(report.failed)}))
    return 1 if report.failed else 0


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(serve=args.serve)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amo-oauth", description="amoCRM / Kommo OAuth 2.0")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="run the seed's scenario over loopback HTTP against FakeAmoCRM"
    )
    demo.add_argument(
        "--serve", action="store_true", help="keep both servers running for a browser (Ctrl-C)"
    )
    demo.set_defaults(handler=_demo)
    diagram = commands.add_parser("diagram", help="print the lifecycle diagram (Mermaid)")
    diagram.add_argument("--markdown", action="store_true", help="the whole docs page")
    diagram.set_defaults(handler=_diagram)
    status = commands.add_parser("status", help="show a stored connection")
    status.add_argument("connection_id")
    status.add_argument("--db", default="amo_oauth.db")
    status.add_argument("--client-id", help="the integration's client id (env AMO_CLIENT_ID)")
    status.set_defaults(handler=_status)
    due = commands.add_parser("refresh-due", help="refresh connections expiring soon")
    due.add_argument("--db", default="amo_oauth.db")
    due.add_argument("--within-days", type=int, default=7)
    due.set_defaults(handler=_refresh_due)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point."""
    args = _parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
