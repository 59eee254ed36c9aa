"""``amo-oauth``: the demo, the lifecycle diagram, and two operator commands.

amo-oauth demo [--serve]            the seed's scenario end to end over loopback HTTP:
                                    FakeAmoCRM, the FastAPI example, the old and new app
amo-oauth diagram [--markdown]      the lifecycle diagram generated from the table
amo-oauth status ID [--store URL]   a connection's state
amo-oauth refresh-due [--store URL] [--within-days N]
                                    refresh connections whose refresh token expires soon;
                                    reads AMO_CLIENT_ID, AMO_CLIENT_SECRET,
                                    AMO_REDIRECT_URI and AMO_STATE_SECRET
amo-oauth migrate [--store URL]     create or upgrade a store's schema

The store is ``--store URL`` (``store_from_url``: sqlite:///file.db, postgresql://...,
redis://...), else ``AMO_OAUTH_STORE``, else ``sqlite:///amo_oauth.db``; ``--db PATH`` is the
older spelling of ``--store sqlite:///PATH``. An operator's typo never creates an empty store:
only ``migrate`` creates one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import timedelta

from ._config import Config
from ._errors import StoreError
from .stores._protocol import Store

__all__ = ["main"]


def _diagram(args: argparse.Namespace) -> int:
    from ._diagram import lifecycle_markdown, mermaid

    print(lifecycle_markdown() if args.markdown else mermaid(), end="")
    return 0


def _store_url(args: argparse.Namespace) -> str:
    if args.db:
        return f"sqlite:///{args.db}"  # an absolute path gives the four slashes it needs
    return str(args.store or os.environ.get("AMO_OAUTH_STORE") or "sqlite:///amo_oauth.db")


def _open_store(args: argparse.Namespace, *, create: bool = False) -> Store:
    """The store the command names. A missing SQLite file is an error unless ``create``: an
    operator's typo must not create an empty store and report everyone disconnected."""
    from .stores import SQLiteStore, store_from_url

    url = _store_url(args)
    if url.lower().startswith("memory:"):
        raise SystemExit("amo-oauth: memory:// keeps nothing between runs; name a real store")
    try:
        store = store_from_url(url)
    except (ValueError, ImportError) as error:
        raise SystemExit(f"amo-oauth: {error}") from None
    if isinstance(store, SQLiteStore) and not create and not os.path.isfile(store.path):
        raise SystemExit(f"amo-oauth: no store at {store.path!r} (amo-oauth migrate creates one)")
    return store


def _migrate(args: argparse.Namespace) -> int:
    store = _open_store(args, create=True)
    try:
        migrate = getattr(store, "migrate", None)
        if migrate is not None:
            migrate()
        else:
            store.load("u::")  # SQLite creates its file and schema on first use
    except StoreError as error:
        raise SystemExit(f"amo-oauth: {error}") from None
    finally:
        store.close()
    print(json.dumps({"migrated": repr(store)}))
    return 0


def _status(args: argparse.Namespace) -> int:
    from ._records import record_key

    client_id = args.client_id or os.environ.get("AMO_CLIENT_ID")
    if not client_id:
        raise SystemExit("amo-oauth: pass --client-id or set AMO_CLIENT_ID")
    store = _open_store(args)
    try:
        # Records are kept per integration; one stored before that has its bare id as key.
        record = store.load(record_key(client_id, args.connection_id))
        record = record or store.load(args.connection_id)
    except StoreError as error:
        raise SystemExit(f"amo-oauth: {error}") from None
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

    config = _config_from_env()
    try:
        with AmoOAuth(config, store=_open_store(args)) as oauth:
            report = oauth.refresh_due(within=timedelta(days=args.within_days))
    except StoreError as error:
        raise SystemExit(f"amo-oauth: {error}") from None
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
    _store_options(status)
    status.add_argument("--client-id", help="the integration's client id (env AMO_CLIENT_ID)")
    status.set_defaults(handler=_status)
    due = commands.add_parser("refresh-due", help="refresh connections expiring soon")
    _store_options(due)
    due.add_argument("--within-days", type=int, default=7)
    due.set_defaults(handler=_refresh_due)
    migrate = commands.add_parser("migrate", help="create or upgrade a store's schema")
    _store_options(migrate)
    migrate.set_defaults(handler=_migrate)
    return parser


def _store_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--store", help="a store URL (env AMO_OAUTH_STORE)")
    command.add_argument("--db", help="an SQLite file: the older spelling of --store sqlite:///")


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point."""
    args = _parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
