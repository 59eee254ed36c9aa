"""A look at every connection (``amo-oauth connections``) and at one (``amo-oauth status``).

The report walks the store page by page through ``Store.scan`` (keyset on the record key), so
memory holds one page, never the store. What it counts is kept in counters bounded by the
number of distinct states, reasons and hosts (hosts capped at ``MAX_HOSTS``: past it, the
connections of further hosts are counted together under ``other_hosts``). The connections it
names (those needing re-authorization, those whose refresh token expires soon) are handed out
as they are met, to be printed at once: the output is JSON Lines, one object a line, the
summary last; or, on a terminal, the same as lines and tables drawn by ``rich``.

Nothing here shows a secret: no token, no client secret, no code digest, no state digest. A
lease's owner is left out too: it names a worker, which helps no operator decide anything.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import IO, Any

import attrs

from ._reasons import Reason
from ._records import ConnectionRecord, ConnectionStatus, TokenSet
from ._rotation import readable_page
from .stores._base import utc_now
from .stores._protocol import Store
from .stores._skew import clock_skew

__all__ = [
    "DEFAULT_DUE_WITHIN_DAYS",
    "MAX_HOSTS",
    "PAGE_SIZE",
    "Listed",
    "Tally",
    "connection_details",
    "print_details",
    "print_lines",
    "print_rich",
    "reauthorization_reason",
    "store_now",
    "walk",
]

#: Records read per ``scan`` page.
PAGE_SIZE = 500
#: Distinct account hosts counted by name; the connections of any further host are counted
#: under ``other_hosts``. Every widget install has its own host, so an uncapped count would
#: grow with the store.
MAX_HOSTS = 1000
#: ``--due-within-days``'s default: a refresh token ending within this many days is listed.
DEFAULT_DUE_WITHIN_DAYS = 14

#: Why a connection is listed.
NEEDS_REAUTHORIZATION = "needs_reauthorization"
EXPIRING = "expiring"
#: A record whose secrets the store cannot decrypt (no ``AMO_OAUTH_KEYS``, or not its key):
#: the report needs no secret, but the store reads a record whole, so it is named and skipped.
UNREADABLE = "unreadable"
#: What to do about them (said in the summary and by ``status``).
KEYS_HINT = (
    "its secrets are encrypted and the keys given do not open them:"
    " set AMO_OAUTH_KEYS to the store's Fernet keys (docs/operations.md)"
)


def store_now(store: Store) -> datetime:
    """The store's clock now (aware, UTC): this machine's plus ``clock_skew``, as the service
    judges leases and expiries by the store's clock.

    Raises:
        StoreError: the store is unreachable.
    """
    return utc_now() + clock_skew(store)


def _ends_at(tokens: TokenSet) -> datetime:
    """When the connection stops working without a new consent (UTC): the refresh token's
    expiry, or the access token's when there is nothing to refresh it with (a long-lived
    token, or an answer that carried no refresh token: RFC 6749 §5.1)."""
    if tokens.long_lived or tokens.refresh_token is None:
        return tokens.expires_at
    return tokens.refresh_expires_at


@attrs.frozen
class Listed:
    """A connection the report names.

    Attributes:
        why: ``needs_reauthorization``, ``expiring`` (its token ends within the window), or
            ``unreadable`` (its secrets do not decrypt: every other field but the id is None).
        connection_id: the app user's id, or the account host of a widget install.
        widget: True for a widget install.
        status: the stored status (``ConnectionStatus`` value); None when unreadable.
        host: the account host, when known.
        reason: why a re-authorization is needed (a ``_reasons`` slug); None when expiring.
        ends_at: when the refresh token (or a token that cannot be refreshed) ends (UTC).
        long_lived: an admin's long-lived token (protocol notes §8): never refreshed.
    """

    why: str
    connection_id: str
    widget: bool
    status: str | None
    host: str | None
    reason: str | None
    ends_at: datetime | None
    long_lived: bool

    def as_json(self) -> dict[str, Any]:
        """The JSON line's fields (``type``: ``connection``)."""
        return {
            "type": "connection",
            "why": self.why,
            "connection_id": self.connection_id,
            "widget": self.widget,
            "status": self.status,
            "host": self.host,
            "reason": self.reason,
            "ends_at": _iso(self.ends_at),
            "long_lived": self.long_lived,
        }


@attrs.define
class Tally:
    """The counts of one walk, bounded by the distinct states, reasons and ``MAX_HOSTS``."""

    total: int = 0
    by_status: Counter[str] = attrs.Factory(Counter)
    by_reason: Counter[str] = attrs.Factory(Counter)
    hosts: Counter[str] = attrs.Factory(Counter)
    other_hosts: int = 0
    needs_reauthorization: int = 0
    expiring: int = 0
    unreadable: int = 0
    pages: int = 0

    def count(self, record: ConnectionRecord) -> None:
        """Count ``record`` in its status and host."""
        self.total += 1
        self.by_status[record.status.value] += 1
        if record.host is None:
            return
        if record.host in self.hosts or len(self.hosts) < MAX_HOSTS:
            self.hosts[record.host] += 1
        else:
            self.other_hosts += 1

    def note(self, listed: Listed) -> None:
        """Count a connection the report names."""
        if listed.why == EXPIRING:
            self.expiring += 1
            return
        if listed.why == UNREADABLE:
            self.total += 1
            self.unreadable += 1
            return
        self.needs_reauthorization += 1
        self.by_reason[str(listed.reason)] += 1

    def as_json(self, *, now: datetime, due_within_days: int) -> dict[str, Any]:
        """The summary line (``type``: ``summary``); hosts busiest first."""
        return {
            "type": "summary",
            "now": _iso(now),
            "due_within_days": due_within_days,
            "total": self.total,
            "by_status": dict(sorted(self.by_status.items())),
            "needs_reauthorization": self.needs_reauthorization,
            "needs_reauthorization_by_reason": dict(sorted(self.by_reason.items())),
            "expiring": self.expiring,
            "unreadable": self.unreadable,
            "unreadable_hint": KEYS_HINT if self.unreadable else None,
            "hosts": dict(self.hosts.most_common()),
            "other_hosts": self.other_hosts,
        }


def walk(
    store: Store,
    tally: Tally,
    *,
    integration: str,
    now: datetime,
    due_within: timedelta,
    state: ConnectionStatus | None = None,
    page_size: int = PAGE_SIZE,
) -> Iterator[Listed]:
    """Every record of ``integration`` (and those stored before keys had one) in key order,
    page by page: each counted into ``tally``, and each that needs a re-authorization or whose
    token ends before ``now + due_within`` handed out as it is met.

    Args:
        store: the store to read (``Store.scan``, ``page_size`` records at a time).
        tally: where the counts go (read it once the iterator is exhausted).
        integration: the client id whose records are read; another's are skipped.
        now: the store's clock (``store_now``), aware, UTC.
        due_within: the window for ``expiring``.
        state: only records in this status (None: all).
        page_size: records a page (>= 1).

    A record none of the store's keys opens is named (``unreadable``, whatever ``state``) and
    the walk goes on after it.

    Raises:
        StoreError: the store failed, or holds a corrupt record.
    """
    after: str | None = None
    while True:
        page, undecryptable = readable_page(store, after, page_size)
        tally.pages += 1
        for record in page:
            if record.integration not in (integration, None):
                continue
            if state is not None and record.status is not state:
                continue
            tally.count(record)
            listed = _listed(record, now, now + due_within)
            if listed is not None:
                tally.note(listed)
                yield listed
        if undecryptable is not None:
            after = undecryptable
            listed = _unreadable(undecryptable, integration)
            if listed is not None:
                tally.note(listed)
                yield listed
            continue
        if len(page) < page_size:
            return
        after = page[-1].key


def _unreadable(key: str, integration: str) -> Listed | None:
    """An undecryptable record as the report names it (by its key: the store gives no more),
    or None when it is another integration's."""
    owner, connection_id, widget = _key_parts(key)
    if owner not in (integration, None):
        return None
    return Listed(UNREADABLE, connection_id, widget, None, None, None, None, False)


def _key_parts(key: str) -> tuple[str | None, str, bool]:
    """A record key's integration, connection id and widget flag (``record_key``'s inverse);
    a key stored before keys had an integration is the bare id (integration None)."""
    kind, _, rest = key.partition(":")
    quoted, colon, connection_id = rest.partition(":")
    if kind not in ("u", "w") or not colon:
        return None, key, False
    return quoted.replace("%3A", ":").replace("%25", "%"), connection_id, kind == "w"


def reauthorization_reason(record: ConnectionRecord, now: datetime) -> str | None:
    """Why the connection needs a new consent (a ``_reasons`` slug), or None: its stored
    error, or a token nothing can renew that ended before ``now`` (the store's clock, UTC)
    even though the record still says connected. ``connections`` and ``status`` both judge
    by this one function."""
    tokens = record.tokens
    if record.error is not None:
        return record.error.reason
    if record.status is not ConnectionStatus.CONNECTED or tokens is None:
        return None
    if _ends_at(tokens) > now:
        return None
    # Nothing can renew it: the next call finds it needs a new consent.
    if tokens.long_lived:
        return Reason.LONG_LIVED_TOKEN_EXPIRED
    return Reason.REAUTHORIZATION_REQUIRED


def _listed(record: ConnectionRecord, now: datetime, horizon: datetime) -> Listed | None:
    """The record as the report names it, or None when it needs nothing."""
    reason = reauthorization_reason(record, now)
    if reason is not None:
        return _named(record, NEEDS_REAUTHORIZATION, reason)
    tokens = record.tokens
    if record.status is ConnectionStatus.CONNECTED and tokens and _ends_at(tokens) <= horizon:
        return _named(record, EXPIRING, None)
    return None


def _named(record: ConnectionRecord, why: str, reason: str | None) -> Listed:
    tokens = record.tokens
    return Listed(
        why=why,
        connection_id=record.connection_id,
        widget=record.widget,
        status=record.status.value,
        host=record.host,
        reason=reason,
        ends_at=_ends_at(tokens) if tokens is not None else None,
        long_lived=tokens.long_lived if tokens is not None else False,
    )


def connection_details(record: ConnectionRecord, now: datetime) -> dict[str, Any]:
    """One stored connection in full, for ``amo-oauth status``: never a token, a client
    secret or a digest. Times are ISO 8601, UTC; ``lease.held`` and ``needs_reauthorization``
    (a ``_reasons`` slug, or None) are judged at ``now`` (the store's clock), as ``connections``
    judges them."""
    connection, tokens = record.public(), record.tokens
    lease = record.lease
    return {
        "connection_id": connection.connection_id,
        "status": connection.status.value,
        "account": connection.account.subdomain if connection.account else None,
        "expires_at": _iso(connection.expires_at),
        "error": connection.error.reason if connection.error else None,
        "version": connection.version,
        "host": connection.host,
        "needs_reauthorization": reauthorization_reason(record, now),
        "widget": record.widget,
        "account_id": connection.account.id if connection.account else None,
        "connected_at": _iso(record.connected_at),
        "updated_at": _iso(record.updated_at),
        "refresh_expires_at": _iso(_ends_at(tokens)) if tokens else None,
        "long_lived": tokens.long_lived if tokens else False,
        "error_hint": connection.error.hint if connection.error else None,
        "error_at": _iso(connection.error.at) if connection.error else None,
        "backoff": _backoff(record),
        "pending_verification": _pending_verification(record),
        "lease": None
        if lease is None
        else {
            "held": lease.is_live(now),
            "purpose": lease.purpose,
            "until": _iso(lease.expires_at),
        },
        "client_id": record.integration,
        "own_client_id": record.credentials.client_id if record.credentials else None,
    }


def _backoff(record: ConnectionRecord) -> dict[str, Any] | None:
    backoff = record.backoff
    if backoff is None:
        return None
    return {"until": _iso(backoff.until), "attempts": backoff.attempts, "cause": backoff.cause}


def _pending_verification(record: ConnectionRecord) -> dict[str, Any] | None:
    """In ``exchanged``: when the next verification may be tried, and the tries so far."""
    if record.status is not ConnectionStatus.EXCHANGED:
        return None
    return {"after": _iso(record.verify_after), "attempts": record.verify_attempts}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


#: Said once when a terminal would get tables but rich is missing.
RICH_HINT = "tables need the cli extra: pip install 'amo_oauth[cli]'; printing JSON lines"


def print_lines(out: IO[str], items: Iterator[dict[str, Any]]) -> None:
    """Each item as one JSON line, flushed, so a reader sees each as it is found."""
    for item in items:
        out.write(json.dumps(item) + "\n")
        out.flush()


def print_rich(out: IO[str], items: Iterator[dict[str, Any]]) -> None:
    """The same items on a terminal: a line per named connection as it is met, each summary
    as tables. Raises ImportError without rich (the ``cli`` extra)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=out, highlight=False)
    for item in items:
        if item["type"] == "connection":
            console.print(_connection_text(item, Text))
            continue
        console.print(_summary_table(item, Table))
        if item["hosts"]:
            console.print(_hosts_table(item, Table))


def _connection_text(item: dict[str, Any], text: Any) -> Any:
    """One named connection as a styled line (ids are text, never markup)."""
    where = f"[{item['integration']}] " if item.get("integration") else ""
    line = text(where)
    if item["why"] == NEEDS_REAUTHORIZATION:
        line.append("needs re-authorization ", style="bold red")
        line.append(f"({item['reason']}) ")
    elif item["why"] == UNREADABLE:
        line.append("unreadable (set AMO_OAUTH_KEYS) ", style="bold red")
    else:
        line.append("expiring ", style="yellow")
        line.append(f"at {item['ends_at']}{' (long-lived)' if item['long_lived'] else ''} ")
    kind = "widget " if item["widget"] else ""
    line.append(f"{kind}{item['connection_id']} on {item['host'] or '-'}")
    return line


def _summary_table(item: dict[str, Any], table: Any) -> Any:
    from rich.markup import escape

    named = item.get("integration")
    title = "connections" + (f" of {escape(named)}" if named else "")
    summary = table(title=title, show_header=False)
    summary.add_column("what")
    summary.add_column("count", justify="right")
    summary.add_row("total", str(item["total"]))
    for status, count in item["by_status"].items():
        summary.add_row(f"  {status}", str(count))
    summary.add_row("needs re-authorization", str(item["needs_reauthorization"]))
    for reason, count in item["needs_reauthorization_by_reason"].items():
        summary.add_row(f"  {reason}", str(count))
    summary.add_row(f"expiring within {item['due_within_days']} days", str(item["expiring"]))
    if item["unreadable"]:
        summary.add_row("unreadable: set AMO_OAUTH_KEYS", str(item["unreadable"]))
    return summary


def _hosts_table(item: dict[str, Any], table: Any) -> Any:
    from rich.markup import escape

    hosts = table(title="hosts")
    hosts.add_column("host")
    hosts.add_column("connections", justify="right")
    for host, count in item["hosts"].items():
        hosts.add_row(escape(host), str(count))
    if item["other_hosts"]:
        hosts.add_row(f"(more than {MAX_HOSTS} hosts) others", str(item["other_hosts"]))
    return hosts


def print_details(out: IO[str], shown: dict[str | None, dict[str, Any]]) -> None:
    """``status`` on a terminal: a table per integration (its name as title, if any)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=out, highlight=False)
    for name, fields in shown.items():
        table = Table(title=escape(name or fields["connection_id"]), show_header=False)
        table.add_column("field")
        table.add_column("value")
        for key, value in fields.items():
            text = json.dumps(value) if isinstance(value, dict) else str(value)
            table.add_row(key, "-" if value is None else escape(text))
        console.print(table)
