"""``amo-oauth``: the demo, the fake for your own backend, the lifecycle diagram, and the
operator commands. ``python -m amo_oauth`` is the same command, where its script is not on PATH.

amo-oauth demo [--serve]            the seed's scenario end to end over loopback HTTP:
                                    FakeAmoCRM, the FastAPI example, the old and new app
amo-oauth demo-app --backend URL [--version old|new] [--user NAME] [--press Allow|Deny]
                                    play the demo's mobile app against a running backend
amo-oauth fake [--port N] [--redirect-uri URL] [--accounts N] [--site-button]
                                    serve FakeAmoCRM on 127.0.0.1 for your own backend until
                                    Ctrl-C, printing what to configure (--site-button: the
                                    site button's metadata mode)
amo-oauth diagram [--markdown]      the lifecycle diagram generated from the table
amo-oauth status ID [--widget] [--extra-domain D] [--store URL] [--client-id ID]
                    [--integrations FILE] [--integration NAME] [--json]
                                    one connection in full, never a secret (--widget: ID is
                                    an install's host); a table on a terminal (the ``cli``
                                    extra), JSON otherwise and with --json
amo-oauth connections [--store URL] [--client-id ID] [--state S] [--due-within-days N]
                      [--integrations FILE] [--integration NAME] [--json]
                                    how every stored connection stands: counts per state and
                                    host, who needs re-authorization and why, whose refresh
                                    token ends within N days (14); JSON Lines (each named
                                    connection as found, the summary last), lines and tables
                                    on a terminal; walks the store by pages (flat memory)
amo-oauth refresh-due [--store URL] [--within-days N] [--concurrency N] [--per-host-rate R]
                      [--limit N] [--integrations FILE] [--integration NAME]
                                    refresh every connection whose refresh token expires
                                    within N days (7), or the N soonest (the summary's
                                    ``remaining`` counts the rest); a progress bar on a
                                    terminal (with the ``cli`` extra), a line per 1,000
                                    otherwise; a JSON summary; exit status 1 when any
                                    failed, else 3 when long-lived tokens expire within
                                    the window (ask the admin for new ones). Reads
                                    AMO_CLIENT_ID, AMO_CLIENT_SECRET, AMO_REDIRECT_URI,
                                    AMO_STATE_SECRET (and AMO_PREVIOUS_STATE_SECRETS;
                                    AMO_SECRETS_URI instead of AMO_CLIENT_SECRET in the site
                                    button's metadata mode)
amo-oauth migrate [--store URL]     create a store's schema; refuse another version's
amo-oauth rotate-key [--store URL] [--after KEY] [--vacuum]
                                    re-encrypt every record with the newest key of
                                    AMO_OAUTH_KEYS (Fernet keys, newest first; the ``crypto``
                                    extra); resumable; exit status 1 when records were left;
                                    says where old values may remain; --vacuum removes them
                                    from the store's own files (it locks the store meanwhile)
amo-oauth doctor [--store URL] [--app-scheme S] [--prefix P] [--json]
                 [--integrations FILE] [--integration NAME]
                                    what an operator gets wrong (the store reachable and
                                    migrated, SQLite file modes, a Redis that may evict,
                                    clock skew, the URLs, app_scheme, the secrets' strength,
                                    AMO_OAUTH_KEYS against a sample of records), each with
                                    what to do; a table on a terminal, lines otherwise,
                                    JSON with --json; exit status 1 on an error

The store is ``--store URL`` (``store_from_url``: sqlite:///file.db, postgresql://...,
redis://...), else ``AMO_OAUTH_STORE``, else ``sqlite:///amo_oauth.db``; ``--db PATH`` is the
older spelling of ``--store sqlite:///PATH``. An operator's typo never creates an empty store:
only ``migrate`` creates one. When ``AMO_OAUTH_KEYS`` is set, every command opens the store with
those keys (an encrypted store needs them); ``rotate-key`` requires it.

``status``, ``connections``, ``refresh-due`` and ``doctor`` act on several integrations
with ``--integrations FILE`` (or ``AMO_OAUTH_INTEGRATIONS``): a TOML table per integration,
secrets named by environment variable (``_integrations_file``); on each of them, or on
``--integration NAME``'s alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

import attrs

from ._config import Config
from ._connection_id import ConnectionId, Widget, resolve_connection_id
from ._doctor import Finding, Report
from ._errors import StoreError, UndecryptableRecord
from ._integrations_file import Integration, IntegrationsFile, parse_integrations
from ._records import ConnectionRecord, record_key
from ._results import RefreshReport, SweepProgress
from ._sweep import MAX_CONCURRENCY
from .stores._protocol import Store
from .stores._rows import Encryption

#: Without a progress bar, ``refresh-due`` prints a line each time this many more are done.
PLAIN_EVERY = 1000

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
    return _open_store_at(_store_url(args), create=create)


def _open_store_at(url: str, *, create: bool = False) -> Store:
    """The store at ``url`` (see ``_open_store``)."""
    from .stores import SQLiteStore, store_from_url

    if url.lower().startswith("memory:"):
        raise SystemExit("amo-oauth: memory:// keeps nothing between runs; name a real store")
    try:
        store = store_from_url(url, encryption=_keys_from_env(required=False))
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


@attrs.frozen
class _Target:
    """One integration a command acts on: from the integrations file (``name``), or the
    single integration of the environment (``name`` None)."""

    name: str | None
    client_id: str
    extra_domains: tuple[str, ...]
    #: Opens its store (the environment's: ``_open_store``, the one way tests reach it).
    open_store: Callable[[], Store]
    #: Its Config, secrets read from the environment when called (refresh-due needs them,
    #: status does not).
    config: Callable[[], Config]
    #: The URL of its store when the integrations file names one (None: the command's).
    store_url: str | None = None
    #: Why its settings are refused (``Config``'s message; the file's integrations only).
    settings_problem: str | None = None
    #: Why its store cannot be named (the file's ``store_env`` variable unset or empty).
    store_problem: str | None = None

    @property
    def problem(self) -> str | None:
        """Why a command cannot act on this integration (read-only ones report it and go on
        with the others); None: nothing."""
        return self.settings_problem or self.store_problem


def _integrations_file(args: argparse.Namespace) -> IntegrationsFile | None:
    """The file ``--integrations`` or ``AMO_OAUTH_INTEGRATIONS`` names; None without one."""
    path = args.integrations or os.environ.get("AMO_OAUTH_INTEGRATIONS")
    if not path:
        if args.integration is not None:
            raise SystemExit(
                "amo-oauth: --integration picks one of the integrations file's:"
                " pass --integrations FILE or set AMO_OAUTH_INTEGRATIONS"
            )
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise SystemExit(f"amo-oauth: cannot read {path!r}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise SystemExit(f"amo-oauth: {path!r} is not UTF-8 text") from None
    try:
        return parse_integrations(text)
    except (TypeError, ValueError) as error:  # the messages name keys, never values
        raise SystemExit(f"amo-oauth: {path}: {error}") from None


def _targets(args: argparse.Namespace, single: Callable[[], _Target]) -> list[_Target]:
    """The integrations the command acts on: the file's (``--integration NAME``: that one;
    else every one), or ``single()`` (the environment's) without a file."""
    file = _integrations_file(args)
    if file is None:
        return [single()]
    given = [flag for flag, value in _single_flags(args) if value]
    if file.names_a_store and (args.store or args.db):
        given.append("--store" if args.store else "--db")
    if given:
        raise SystemExit(
            f"amo-oauth: {', '.join(given)} with an integrations file: the file gives each"
            " integration its settings (and its store, where it names one)"
        )
    try:
        chosen = file.named(args.integration)
        return [_file_target(args, file, integration) for integration in chosen]
    except ValueError as error:
        raise SystemExit(f"amo-oauth: {error}") from None


def _single_flags(args: argparse.Namespace) -> list[tuple[str, object]]:
    """The flags that set up the environment's single integration."""
    return [
        ("--client-id", getattr(args, "client_id", None)),
        ("--extra-domain", getattr(args, "extra_domain", None)),
    ]


def _file_target(
    args: argparse.Namespace, file: IntegrationsFile, integration: Integration
) -> _Target:
    def config() -> Config:
        return integration.config(os.environ)

    url, store_problem = None, None
    try:
        url = file.store_of(integration, os.environ)
    except ValueError as error:  # names the variable, never a value
        store_problem = str(error)
    return _Target(
        integration.name,
        integration.client_id,
        integration.extra_domains,
        _file_store(args, url, store_problem),
        config,
        url,
        integration.refusal,
        store_problem,
    )


def _file_store(
    args: argparse.Namespace, url: str | None, problem: str | None
) -> Callable[[], Store]:
    """What opens an integration's store: the file's URL, else the command's store; a
    store the file cannot name stops the command."""
    if problem is not None:

        def refuse() -> Store:
            raise SystemExit(f"amo-oauth: {problem}")

        return refuse
    if url is None:
        return lambda: _open_store(args)
    return lambda: _open_store_at(url)


def _report_problems(targets: Sequence[_Target]) -> list[_Target]:
    """The targets a read-only command can act on; each other one's problem said on stderr
    (the command then exits 1)."""
    for target in targets:
        if target.problem is not None:
            print(f"amo-oauth: {target.problem}; skipped", file=sys.stderr)
    return [target for target in targets if target.problem is None]


def _status(args: argparse.Namespace) -> int:
    targets = _targets(args, lambda: _status_from_env(args))
    names: dict[str | None, str] = {}
    for target in targets:
        name = args.connection_id
        if args.widget:
            try:
                # The same check as Python's status(Widget(host)): a host the allowlist
                # refuses can never have a connection, so saying "disconnected" would mislead.
                name, _ = resolve_connection_id(Widget(name), target.extra_domains)
            except ValueError as error:
                which = f" (integration {target.name!r})" if target.name else ""
                print(f"amo-oauth: {error}{which}", file=sys.stderr)
                return 2
        names[target.name] = name
    good = _report_problems(targets)
    shown = {
        target.name: _shown_status(args, target, names[target.name])
        if target in good
        else {"error": target.problem}
        for target in targets
    }
    if _as_table(args):
        from ._connections_report import print_details

        print_details(sys.stdout, shown)
    else:
        print(json.dumps(_by_integration(args, shown)))
    return 0 if len(good) == len(targets) else 1


def _as_table(args: argparse.Namespace) -> bool:
    """Tables (rich) on a terminal unless ``--json``; JSON when rich is missing, said once."""
    if args.json or not sys.stdout.isatty():
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        from ._connections_report import RICH_HINT

        print(f"amo-oauth: {RICH_HINT}", file=sys.stderr)
        return False
    return True


def _by_integration(args: argparse.Namespace, shown: dict[str | None, dict[str, Any]]) -> object:
    """What a command prints: the one integration's output as it always was (with its
    ``integration`` name when it is the file's), or each of the file's by name."""
    if None in shown:
        return shown[None]
    if args.integration is not None:
        return {**shown[args.integration], "integration": args.integration}
    return {"integrations": shown}


def _status_from_env(args: argparse.Namespace) -> _Target:
    client_id = args.client_id or os.environ.get("AMO_CLIENT_ID")
    if not client_id:
        raise SystemExit("amo-oauth: pass --client-id or set AMO_CLIENT_ID")
    return _Target(
        None, client_id, tuple(args.extra_domain), lambda: _open_store(args), _config_from_env
    )


def _shown_status(args: argparse.Namespace, target: _Target, name: str) -> dict[str, Any]:
    """``status``'s JSON for one integration's connection ``name``."""
    client_id, extra_domains = target.client_id, target.extra_domains
    from ._connections_report import connection_details, store_now

    store = target.open_store()
    try:
        record = _stored(store, client_id, name, widget=args.widget)
        install = None
        if record is None and not args.widget and _widget_host(name, extra_domains):
            install = _stored(store, client_id, name.lower().removesuffix("."), widget=True)
        now = store_now(store)
    except UndecryptableRecord:
        from ._connections_report import KEYS_HINT

        raise SystemExit(f"amo-oauth: connection {args.connection_id!r}: {KEYS_HINT}") from None
    except StoreError as error:
        raise SystemExit(f"amo-oauth: {error}") from None
    finally:
        store.close()
    if record is None:
        shown = {"connection_id": args.connection_id, "status": "disconnected"}
        if install is not None:
            shown["hint"] = (
                "no app user has this id; a widget install on this host does: add --widget"
            )
        return shown
    return connection_details(record, now)


def _connections(args: argparse.Namespace) -> int:
    """``connections``: JSON Lines (or, on a terminal, lines and tables), printed as found."""
    from ._connections_report import print_lines, print_rich

    targets = _targets(args, lambda: _connections_from_env(args))
    good = _report_problems(targets)
    for target in good:
        target.open_store().close()  # every store checked before anything is printed
    items = _connections_items(args, good)
    try:
        if _as_table(args):
            print_rich(sys.stdout, items)
        else:
            print_lines(sys.stdout, items)
    except StoreError as error:
        raise SystemExit(f"amo-oauth: {error}") from None
    return 0 if len(good) == len(targets) else 1


def _connections_from_env(args: argparse.Namespace) -> _Target:
    client_id = args.client_id or os.environ.get("AMO_CLIENT_ID")
    if not client_id:
        raise SystemExit("amo-oauth: pass --client-id or set AMO_CLIENT_ID")
    return _Target(None, client_id, (), lambda: _open_store(args), _config_from_env)


def _connections_items(
    args: argparse.Namespace, targets: Sequence[_Target]
) -> Iterator[dict[str, Any]]:
    """Each integration's named connections as met, then its summary (with its name, from
    the integrations file)."""
    from ._connections_report import Tally, store_now, walk
    from ._records import ConnectionStatus

    state = ConnectionStatus(args.state) if args.state else None
    for target in targets:
        named = {} if target.name is None else {"integration": target.name}
        store, tally = target.open_store(), Tally()
        try:
            now = store_now(store)
            for listed in walk(
                store,
                tally,
                integration=target.client_id,
                now=now,
                due_within=timedelta(days=args.due_within_days),
                state=state,
            ):
                yield {**listed.as_json(), **named}
        finally:
            store.close()
        yield {**tally.as_json(now=now, due_within_days=args.due_within_days), **named}


def _stored(store: Store, client_id: str, name: str, *, widget: bool) -> ConnectionRecord | None:
    """The record of an app user (or, with ``widget``, of a host's install), if stored."""
    from ._flow_records import legacy_record

    # Records are kept per integration; one stored before that has its bare id as key.
    record = store.load(record_key(client_id, name, widget=widget)).record
    if record is None:
        record = legacy_record(store.load(name).record, name, widget=widget)
    return record


def _widget_host(name: str, extra_domains: Sequence[str]) -> bool:
    """Whether ``name`` could name a widget install (an allowed account host)."""
    try:
        resolve_connection_id(Widget(name), extra_domains)
    except ValueError:
        return False
    return True


def _config_from_env() -> Config:
    """The single integration of the environment. With ``AMO_SECRETS_URI`` (the site
    button's metadata mode) there is no client secret: each connection has its own, and
    ``AMO_CLIENT_SECRET`` beside it is refused as ``Config`` refuses both (never dropped).

    Raises:
        SystemExit: a variable is missing, or ``Config`` refuses the settings (its messages
            hold no secret).
    """
    missing = [name for name in _env_settings() if not os.environ.get(name)]
    if missing:
        alternative = (
            " (or AMO_SECRETS_URI instead of AMO_CLIENT_SECRET, the site button's metadata mode)"
            if "AMO_CLIENT_SECRET" in missing
            else ""
        )
        raise SystemExit(f"amo-oauth: set {', '.join(missing)}{alternative}")
    try:
        return _env_config()
    except (TypeError, ValueError) as error:
        raise SystemExit(f"amo-oauth: {error}") from None


def _env_config() -> Config:
    """``Config`` of the environment's variables (``_env_settings`` all set).

    Raises:
        ValueError: ``Config`` refuses them, e.g. AMO_CLIENT_SECRET beside AMO_SECRETS_URI.
    """
    return Config(
        client_id=os.environ["AMO_CLIENT_ID"],
        client_secret=os.environ.get("AMO_CLIENT_SECRET") or None,
        redirect_uri=os.environ["AMO_REDIRECT_URI"],
        secrets_uri=os.environ.get("AMO_SECRETS_URI") or None,
        state_secret=os.environ["AMO_STATE_SECRET"],
        previous_state_secrets=_previous_state_secrets_from_env(),
    )


def _env_settings() -> list[str]:
    """The variables the environment's single integration needs (``_config_from_env``)."""
    names = ["AMO_CLIENT_ID", "AMO_CLIENT_SECRET", "AMO_REDIRECT_URI", "AMO_STATE_SECRET"]
    if os.environ.get("AMO_SECRETS_URI"):
        names.remove("AMO_CLIENT_SECRET")
    return names


def _previous_state_secrets_from_env() -> list[str]:
    """``AMO_PREVIOUS_STATE_SECRETS``: the secrets ``AMO_STATE_SECRET`` replaced, comma-separated
    (a rotation; secrets.token_urlsafe and token_hex never make a comma)."""
    text = os.environ.get("AMO_PREVIOUS_STATE_SECRETS", "")
    return [part.strip() for part in text.split(",") if part.strip()]


def _keys_from_env(*, required: bool) -> Encryption | None:
    """``AMO_OAUTH_KEYS`` (comma-separated Fernet keys, newest first) as a ``MultiFernet``;
    None when unset and not ``required``. A message never shows a key."""
    try:
        return _keys_in(os.environ.get("AMO_OAUTH_KEYS", ""), required=required)
    except ValueError as error:
        raise SystemExit(f"amo-oauth: {error}") from None


def _keys_in(text: str, *, required: bool) -> Encryption | None:
    """``_keys_from_env`` of ``text``; raises ValueError (naming no key) where it exits."""
    keys = [part.strip() for part in text.split(",") if part.strip()]
    if not keys:
        if not required:
            return None
        raise ValueError("set AMO_OAUTH_KEYS to the Fernet keys, comma-separated, newest first")
    try:
        from cryptography.fernet import Fernet, MultiFernet
    except ImportError:
        raise ValueError(
            "AMO_OAUTH_KEYS needs the crypto extra: pip install 'amo_oauth[crypto]'"
        ) from None
    fernets = []
    for number, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key))
        except (ValueError, TypeError):
            raise ValueError(
                f"AMO_OAUTH_KEYS: key {number} of {len(keys)} is not a Fernet key "
                "(32 url-safe base64-encoded bytes, as Fernet.generate_key() makes)"
            ) from None
    return MultiFernet(fernets)


#: Said once on a terminal when rich is missing.
_BAR_HINT = "a progress bar needs the cli extra: pip install 'amo_oauth[cli]'"


def _progress_printer(
    stream: TextIO, label: str = "refresh-due"
) -> tuple[Callable[[SweepProgress], None], Callable[[], None]]:
    """A progress bar on a terminal (rich, when installed), else a line per ``PLAIN_EVERY``;
    ``label`` starts each (``refresh-due``, with the integration's name across several).
    Returns the callback and what ends the display."""
    if stream.isatty():
        try:
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        except ImportError:
            # Plain lines still work; a person at a terminal learns what brings the bar.
            print(f"refresh-due: {_BAR_HINT}", file=stream, flush=True)
        else:
            bar = Progress(
                SpinnerColumn(),
                TextColumn(label + ": {task.completed} done, {task.fields[summary]}"),
                TimeElapsedColumn(),
                console=Console(file=stream),
            )
            task = bar.add_task("refresh-due", total=None, summary="")
            bar.start()

            def show(now: SweepProgress) -> None:
                summary = f"{now.refreshed} refreshed, {now.failed} failed"
                bar.update(task, completed=now.done, summary=summary)

            return show, bar.stop
    return _plain_lines(stream, label), lambda: None


def _plain_lines(stream: TextIO, label: str = "refresh-due") -> Callable[[SweepProgress], None]:
    def show(now: SweepProgress) -> None:
        if now.done % PLAIN_EVERY == 0:
            print(
                f"{label}: {now.done} done ({now.refreshed} refreshed, {now.failed} failed)",
                file=stream,
                flush=True,
            )

    return show


def _refresh_due(args: argparse.Namespace) -> int:
    try:
        within = timedelta(days=args.within_days)
    except OverflowError:
        raise SystemExit("amo-oauth: --within-days is too large") from None
    targets = _targets(args, lambda: _refresh_from_env(args))
    # Every integration's settings and store are checked before any sweep starts.
    configs = [_checked_config(target) for target in targets]
    for target in targets:
        target.open_store().close()
    swept = {
        target.name: _sweep_one(args, target, config, within)
        for target, config in zip(targets, configs, strict=True)
    }
    summaries = {name: one.summary() for name, one in swept.items()}
    if None in swept or args.integration is not None:
        print(json.dumps(_by_integration(args, summaries)))
    else:
        print(json.dumps({"integrations": summaries, "total": _total(swept)}))
    failed = [name for name, one in swept.items() if one.error or one.report.failed]
    expiring = [name for name, one in swept.items() if one.report.expiring_long_lived]
    return _refresh_due_exit(failed, expiring)


def _refresh_from_env(args: argparse.Namespace) -> _Target:
    config = _config_from_env()
    return _Target(
        None, config.client_id, config.extra_domains, lambda: _open_store(args), lambda: config
    )


def _checked_config(target: _Target) -> Config:
    try:
        return target.config()
    except ValueError as error:  # Config's messages, and the file's, never hold a secret
        raise SystemExit(f"amo-oauth: {error}") from None


@attrs.frozen
class _Swept:
    """One integration's sweep: its report, or why its store failed it (then empty)."""

    report: RefreshReport = attrs.Factory(RefreshReport)
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        return {"error": self.error} if self.error else _summary(self.report)


def _sweep_one(
    args: argparse.Namespace, target: _Target, config: Config, within: timedelta
) -> _Swept:
    """One integration's sweep. Across the file's integrations, a store that fails ends
    only that integration's sweep (its summary says why); alone, it ends the command."""
    from ._service import AmoOAuth

    label = "refresh-due" if target.name is None else f"refresh-due {target.name}"
    show, stop = _progress_printer(sys.stderr, label)
    try:
        with AmoOAuth(config, store=target.open_store()) as oauth:
            return _Swept(
                oauth.refresh_due(
                    within=within,
                    limit=args.limit,
                    concurrency=args.concurrency,
                    per_host_rate=args.per_host_rate,
                    progress=show,
                )
            )
    except ValueError as error:  # an argument the sweep refuses
        raise SystemExit(f"amo-oauth: {error}") from None
    except StoreError as error:
        if target.name is None:
            raise SystemExit(f"amo-oauth: {error}") from None
        return _Swept(error=str(error))
    finally:
        stop()


def _total(swept: dict[str | None, _Swept]) -> dict[str, Any]:
    """The file's integrations' sweeps in one: counts summed. ``skipped`` stays per
    integration: sweeping a shared store, each skips (and counts) the others' records."""
    reports = [one.report for one in swept.values()]
    by_reason: Counter[str] = Counter()
    for report in reports:
        by_reason.update(report.failed_by_reason)
    return {
        "refreshed_count": sum(len(report.refreshed) for report in reports),
        "failed_by_reason": dict(by_reason),
        "needs_reauthorization_count": sum(len(r.needs_reauthorization) for r in reports),
        "expiring_long_lived_count": sum(len(r.expiring_long_lived) for r in reports),
        "remaining": sum(report.remaining for report in reports),
        "failed_integrations": [name for name, one in swept.items() if one.error],
    }


def _summary(report: RefreshReport) -> dict[str, Any]:
    """``refresh-due``'s JSON summary. The first release's keys keep their shapes (app user
    ids; id -> reason); widget installs, named by account host, are under ``widgets`` in the
    same shapes, so an app user whose id is a host is never merged with that host's install.
    The counts cover both."""
    users, widgets = _named(report, str), _named(report, Widget)
    return {
        **users,
        "refreshed_count": len(report.refreshed),
        "failed_by_reason": report.failed_by_reason,
        "skipped": report.skipped,
        "remaining": report.remaining,
        # Long-lived tokens expiring inside the window: never refreshed, ask the admin.
        "expiring_long_lived": [_text(name) for name in report.expiring_long_lived],
        "widgets": widgets,
    }


def _text(name: ConnectionId) -> str:
    """A connection's name as the JSON shows it: an app user's id, an install's host."""
    return name.host if isinstance(name, Widget) else name


def _named(report: RefreshReport, kind: type[str] | type[Widget]) -> dict[str, Any]:
    """The report's entries of one kind (app users or widget installs), each by its text."""
    return {
        "refreshed": sorted(_text(name) for name in report.refreshed if isinstance(name, kind)),
        "failed": {_text(name): why for name, why in report.failed if isinstance(name, kind)},
        "needs_reauthorization": [
            _text(name) for name in report.needs_reauthorization if isinstance(name, kind)
        ],
    }


#: ``refresh-due``'s exit status when nothing failed but long-lived tokens expire inside the
#: window: the run did its work, yet an admin must issue new tokens before then, and a cron job
#: or a monitor sees a status sooner than a JSON key. (2 is argparse's for a usage error.)
EXIT_LONG_LIVED_EXPIRING = 3


def _refresh_due_exit(failed: Sequence[object], expiring: Sequence[object]) -> int:
    """1 when any connection failed, else 3 when long-lived tokens expire soon, else 0."""
    if failed:
        return 1
    return EXIT_LONG_LIVED_EXPIRING if expiring else 0


def _rotate_key(args: argparse.Namespace) -> int:
    from ._remnants import remnants
    from ._rotation import RotationProgress, rotate_keys

    _keys_from_env(required=True)  # a clear error before anything is opened
    store = _open_store(args)

    def show(now: RotationProgress) -> None:
        print(
            f"rotate-key: {now.rewritten} rewritten, resume with --after {now.after!r}",
            file=sys.stderr,
            flush=True,
        )

    try:
        report = rotate_keys(store, after=args.after, progress=show)
        left = remnants(store, vacuum=args.vacuum)
    except StoreError as error:
        raise SystemExit(f"amo-oauth: {error}") from None
    except NotImplementedError as error:
        raise SystemExit(f"amo-oauth: {error}") from None
    finally:
        store.close()
    print(
        json.dumps(
            {
                "rewritten": report.rewritten,
                "without_tokens": report.without_tokens,
                "undecryptable": list(report.undecryptable),
                "left_leased": list(report.left_leased),
                "last_key": report.last_key,
                "vacuumed": list(left.cleaned),
                "may_remain": list(left.remaining),
            }
        )
    )
    for sentence in left.cleaned:
        print(f"rotate-key: done: {sentence}", file=sys.stderr)
    for sentence in left.remaining:
        print(f"rotate-key: old values may remain: {sentence}", file=sys.stderr)
    if report.undecryptable:
        print(
            f"rotate-key: {len(report.undecryptable)} record(s) none of the keys opens"
            " (cannot decrypt: wrong key?); they were left as they are",
            file=sys.stderr,
        )
    if report.left_leased:
        print(
            f"rotate-key: {len(report.left_leased)} record(s) stayed leased; run it again later",
            file=sys.stderr,
        )
    return 0 if report.complete else 1


def _doctor(args: argparse.Namespace) -> int:
    """``doctor``: every integration's findings (``_doctor``); 1 when any is an error."""
    from ._doctor import keys_invalid

    text = os.environ.get("AMO_OAUTH_KEYS", "")
    keys, refused = None, None
    try:
        keys = _keys_in(text, required=False)
    except ValueError as error:
        refused = keys_invalid(str(error))
    targets = _targets(args, lambda: _doctor_from_env(args))
    reports = {
        target.name: _doctor_one(args, target, keys, refused, keys_given=bool(text.strip()))
        for target in targets
    }
    _show_doctor(args, reports)
    return 0 if all(report.healthy for report in reports.values()) else 1


def _doctor_from_env(args: argparse.Namespace) -> _Target:
    client_id = os.environ.get("AMO_CLIENT_ID", "")
    # Its settings are a finding, never the end of the doctor: the raw Config, not the exit.
    return _Target(None, client_id, (), lambda: _open_store(args), _env_config)


def _doctor_one(
    args: argparse.Namespace,
    target: _Target,
    keys: Encryption | None,
    refused: Finding | None,
    *,
    keys_given: bool,
) -> Report:
    from ._doctor import examine, store_unopened

    url = target.store_url or _store_url(args)
    store = (
        store_unopened(target.store_problem)
        if target.store_problem is not None
        else _doctor_store(url, keys)
    )
    # The same store without the keys: what it reads whole was stored unencrypted.
    unsealed = _doctor_store(url, None) if keys and not isinstance(store, Finding) else None
    try:
        return examine(
            _doctor_settings(target),
            store,
            keys=refused,
            keys_given=keys_given,
            app_scheme=args.app_scheme,
            prefix=args.prefix,
            unsealed=None if isinstance(unsealed, Finding) else unsealed,
        )
    finally:
        for opened in (store, unsealed):
            if opened is not None and not isinstance(opened, Finding):
                opened.close()


def _doctor_store(url: str, keys: Encryption | None) -> Store | Finding:
    """The store at ``url``, opened as every command opens it but creating nothing and
    refusing nothing itself: its ``check()`` says what is wrong (a missing SQLite file)."""
    from ._doctor import store_unopened
    from .stores import store_from_url

    if url.lower().startswith("memory:"):
        return store_unopened("memory:// keeps nothing between runs; name a real store")
    try:
        return store_from_url(url, encryption=keys)
    except (ValueError, ImportError, StoreError) as error:  # messages never repeat the URL
        return store_unopened(str(error))


def _doctor_settings(target: _Target) -> Config | Finding:
    """The integration's Config, or why the doctor cannot check it."""
    from ._doctor import settings_invalid, settings_missing, settings_unchecked

    if target.name is None:
        names = _env_settings()
        missing = [name for name in names if not os.environ.get(name)]
        if len(missing) == len(names):
            return settings_unchecked(missing)
        if missing:
            return settings_missing(missing)
    try:
        return target.config()
    except (TypeError, ValueError) as error:  # Config's messages hold no secret
        return settings_invalid(str(error))


def _show_doctor(args: argparse.Namespace, reports: dict[str | None, Report]) -> None:
    """JSON with ``--json``; a table on a terminal (with rich); else a line per finding."""
    from ._doctor import render_lines, render_table

    if args.json:
        shown = {name: report.as_json() for name, report in reports.items()}
        print(json.dumps(_by_integration(args, shown)))
    elif not (sys.stdout.isatty() and render_table(reports, sys.stdout)):
        render_lines(reports, sys.stdout)


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(serve=args.serve)


def _demo_app(args: argparse.Namespace) -> int:
    from ._demo import play_app

    return play_app(args.backend, args.version, user=args.user, press=args.press)


def _fake(args: argparse.Namespace) -> int:
    from ._fake_command import run_fake

    return run_fake(
        port=args.port,
        redirect_uri=args.redirect_uri,
        accounts=args.accounts,
        site_button=args.site_button,
    )


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
    _demo_app_parser(commands)
    _fake_parser(commands)
    diagram = commands.add_parser("diagram", help="print the lifecycle diagram (Mermaid)")
    diagram.add_argument("--markdown", action="store_true", help="the whole docs page")
    diagram.set_defaults(handler=_diagram)
    status = commands.add_parser("status", help="show a stored connection")
    status.add_argument("connection_id", help="an app user's id, or the host with --widget")
    status.add_argument(
        "--widget", action="store_true", help="connection_id is a widget install's account host"
    )
    status.add_argument(
        "--extra-domain",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="a domain allowed beside amoCRM's and Kommo's (Config.extra_domains); repeatable",
    )
    _store_options(status)
    status.add_argument("--client-id", help="the integration's client id (env AMO_CLIENT_ID)")
    _integrations_options(status)
    _json_option(status)
    status.set_defaults(handler=_status)
    _connections_parser(commands)
    due = commands.add_parser("refresh-due", help="refresh connections expiring soon")
    _store_options(due)
    due.add_argument("--within-days", type=_positive_int, default=7)
    due.add_argument("--concurrency", type=_concurrency, default=16, help="refreshes at once (16)")
    due.add_argument(
        "--per-host-rate",
        type=_positive_float,
        default=7.0,
        help="requests per second to one account host (7, amoCRM's limit)",
    )
    due.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        help="handle at most this many due connections, soonest first (default: all)",
    )
    _integrations_options(due)
    due.set_defaults(handler=_refresh_due)
    rotate = commands.add_parser(
        "rotate-key", help="re-encrypt every record with the newest key of AMO_OAUTH_KEYS"
    )
    _store_options(rotate)
    rotate.add_argument("--after", help="resume after this record key (printed as it goes)")
    rotate.add_argument(
        "--vacuum",
        action="store_true",
        help="then remove old values from the store's files: PostgreSQL VACUUM FULL (locks the"
        " table), Redis BGREWRITEAOF, SQLite VACUUM and a WAL checkpoint",
    )
    rotate.set_defaults(handler=_rotate_key)
    migrate = commands.add_parser(
        "migrate", help="create a store's schema (refuses another version's)"
    )
    _store_options(migrate)
    migrate.set_defaults(handler=_migrate)
    _doctor_parser(commands)
    return parser


def _connections_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ._connections_report import DEFAULT_DUE_WITHIN_DAYS
    from ._records import ConnectionStatus

    report = commands.add_parser(
        "connections",
        help="how every stored connection stands: counts, who must re-authorize, who expires",
    )
    _store_options(report)
    report.add_argument(
        "--state", choices=[status.value for status in ConnectionStatus], help="only this state"
    )
    report.add_argument(
        "--due-within-days",
        type=_days,
        default=DEFAULT_DUE_WITHIN_DAYS,
        help=f"list refresh tokens ending within N days ({DEFAULT_DUE_WITHIN_DAYS})",
    )
    report.add_argument("--client-id", help="the integration's client id (env AMO_CLIENT_ID)")
    _integrations_options(report)
    _json_option(report)
    report.set_defaults(handler=_connections)


def _json_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--json", action="store_true", help="JSON even on a terminal (default there: tables)"
    )


def _doctor_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .web._catalogue import DEFAULT_PREFIX

    doctor = commands.add_parser(
        "doctor",
        help="check the store and the settings for what operators get wrong (exit 1 on an error)",
    )
    _store_options(doctor)
    doctor.add_argument(
        "--app-scheme", help="the app_scheme the routes are given, to check it (default: none)"
    )
    doctor.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help=f"the prefix the routes are mounted under ({DEFAULT_PREFIX})",
    )
    _json_option(doctor)
    _integrations_options(doctor)
    doctor.set_defaults(handler=_doctor)


def _demo_app_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    app = commands.add_parser(
        "demo-app", help="play the demo's mobile app against a running backend (demo --serve)"
    )
    app.add_argument(
        "--backend", required=True, help="the backend's URL, e.g. http://127.0.0.1:8000"
    )
    app.add_argument("--version", choices=("old", "new"), default="new", help="the app (new)")
    app.add_argument("--user", default="demo", help="who signs in (demo)")
    app.add_argument("--press", choices=("Allow", "Deny"), default="Allow")
    app.set_defaults(handler=_demo_app)


def _fake_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ._fake_command import DEFAULT_PORT, DEFAULT_REDIRECT_URI, MAX_ACCOUNTS

    fake = commands.add_parser(
        "fake",
        help="serve FakeAmoCRM on 127.0.0.1 for your own backend (until Ctrl-C)",
        description="Serve FakeAmoCRM on 127.0.0.1 until Ctrl-C and print what to configure "
        "in your backend: authorize_url, the client id and secret, and the loopback transport "
        "that carries amoCRM's hosts to the fake (a Python snippet and environment lines).",
    )
    fake.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"the port on 127.0.0.1 ({DEFAULT_PORT}; 0: any free one)",
    )
    fake.add_argument(
        "--redirect-uri",
        default=DEFAULT_REDIRECT_URI,
        help=f"your backend's callback URL ({DEFAULT_REDIRECT_URI})",
    )
    fake.add_argument(
        "--accounts",
        type=_positive_int,
        default=1,
        help=f"accounts to offer on the consent page (1; at most {MAX_ACCOUNTS})",
    )
    fake.add_argument(
        "--site-button",
        action="store_true",
        help="print the site button's metadata mode (secrets_uri beside the redirect URI, the"
        " fake's button script, no client secret) instead of a fixed client id",
    )
    fake.set_defaults(handler=_fake)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


#: The longest window ``connections`` looks ahead (a century: any refresh token's life).
MAX_DAYS = 36500


def _days(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_DAYS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_DAYS}: {text!r}")
    return value


def _concurrency(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_CONCURRENCY}: {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _integrations_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--integrations",
        metavar="FILE",
        help="a TOML file of several integrations' settings (env AMO_OAUTH_INTEGRATIONS);"
        " the command acts on each",
    )
    command.add_argument(
        "--integration", metavar="NAME", help="only this integration of the file (default: all)"
    )


def _store_options(command: argparse.ArgumentParser) -> None:
    # One or the other: given both, which one was meant is a guess.
    where = command.add_mutually_exclusive_group()
    where.add_argument("--store", help="a store URL (env AMO_OAUTH_STORE)")
    where.add_argument("--db", help="an SQLite file: the older spelling of --store sqlite:///")


#: psycopg_pool's loggers. A pool that cannot connect logs each attempt, and one closed
#: without waiting (as a command closes its store) logs each worker thread still running;
#: the command says the store's error itself, once, so their warnings are left out.
_POOL_LOGGERS = ("psycopg.pool", "psycopg_pool")


def _quiet_pool_logs() -> None:
    """Keep psycopg_pool to its errors for this run: the command owns its process."""
    for name in _POOL_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point. Ctrl-C ends a command with status 130 and no traceback (a
    sweep or rotation stopped midway is safe to run again)."""
    args = _parser().parse_args(argv)
    _quiet_pool_logs()
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        print("amo-oauth: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
