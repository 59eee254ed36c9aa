"""``PostgresStore``: records in PostgreSQL, shared by every process and machine of a deployment.

How a call is made safe:

- A compare-and-set is one statement: ``UPDATE ... WHERE key = %s AND version = %s`` (or
  ``INSERT ... ON CONFLICT DO NOTHING`` for an insert). Under READ COMMITTED, PostgreSQL
  re-checks the ``WHERE`` clause against the latest committed row after waiting for a
  concurrent writer's lock, so two writers can never both match the same version.
- The ledger of single-use keys (state nonces, the code ledger) is a second table. Taking a key
  is ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expires_at < now()``: free and expired keys are
  taken atomically, a live one is locked and its holder read in the same transaction.
- ``claim`` runs the state, the code and the record write in ONE transaction and rolls it back
  unless all three succeed: nothing is written unless the result is ``CLAIMED``.
- Every record write sends ``pg_notify(channel, key)`` in its transaction, so the notification
  leaves only with the commit. One listening connection per store (a daemon thread) wakes both
  blocking waiters (a ``threading.Condition``) and asyncio waiters (futures resolved with
  ``call_soon_threadsafe``); a waiter that hears nothing returns at its timeout.
- Blocking calls borrow from a ``psycopg_pool.ConnectionPool``; awaited calls from an
  ``AsyncConnectionPool`` opened on first use in the running event loop: no worker threads.
  Once that loop has closed (``asyncio.run`` returned), the next awaited call opens a new pool
  in its own loop; two loops alive at once get a ``StoreError`` saying so.
- A pool whose connect fails retries for at most half the store's ``timeout``, then gives up,
  so that the first call after an outage connects at once.
- The store never creates tables by itself: ``migrate()`` does, once, and records the schema
  version in a table of its own. Calls before then raise ``StoreError`` saying so.

Every psycopg and pool error reaches the caller as ``StoreError`` naming the host, the database
and the error class; never the password (nor any other part of the connection string).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import math
import re
import select
import socket
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from datetime import datetime
from typing import Any, Final, TypeAlias, TypeVar

try:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict
    from psycopg_pool import AsyncConnectionPool, ConnectionPool
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "PostgresStore needs psycopg 3 and psycopg-pool: pip install 'amo_oauth[postgres]'"
    ) from exc

from .._errors import StoreError
from .._records import ConnectionRecord, ConnectionState
from ._base import AsyncBaseStore, BaseStore
from ._common import (
    check_after,
    check_limit,
    check_write,
    closed_error,
    require_aware,
    wait_seconds,
)
from ._protocol import Claim, ClaimResult, DueCursor
from ._rows import Encryption, RecordCodec, Row

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

#: The schema ``migrate()`` creates; a database of a newer schema is refused.
SCHEMA_VERSION: Final = 1

#: Expired ledger keys are deleted on one ``consume_state`` in this many (the first included),
#: at most ``_PRUNE_BATCH`` at a time.
_PRUNE_EVERY: Final = 64
_PRUNE_BATCH: Final = 500
#: PostgreSQL's ``bigint``.
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
#: A ``pg_notify`` payload must stay under 8000 bytes; a longer key wakes every waiter ("").
_MAX_PAYLOAD: Final = 7000
#: A table name: lower-case letters, digits and ``_``, optionally after ``schema.``. Short
#: enough that every derived name (``<table>_ledger_expires_idx``) fits in 63 bytes.
_NAME: Final = re.compile(r"(?:([a-z_][a-z0-9_]{0,62})\.)?([a-z_][a-z0-9_]{0,39})")

_Conn: TypeAlias = "psycopg.Connection[tuple[Any, ...]]"
_AsyncConn: TypeAlias = "psycopg.AsyncConnection[tuple[Any, ...]]"
_T = TypeVar("_T")


class _Stmt:
    """One statement an operation asks its driver to run."""

    __slots__ = ("params", "query")

    def __init__(self, query: sql.SQL | sql.Composed, params: tuple[Any, ...] = ()) -> None:
        self.query = query
        self.params = params


class _Done:
    """What a statement did: its row count and the rows it returned (if any)."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rowcount: int, rows: list[tuple[Any, ...]]) -> None:
        self.rowcount = rowcount
        self.rows = rows


#: Yielded by an operation to roll its transaction back (answered with an empty ``_Done``).
_ROLLBACK: Final = _Stmt(sql.SQL(""))

#: An operation: a generator of statements, written once and run by a blocking or an async
#: driver, so both kinds of call execute exactly the same SQL.
_Op: TypeAlias = Generator[_Stmt, _Done, _T]


class _Tables:
    """The store's SQL, composed once from its validated table name."""

    def __init__(self, table: str) -> None:
        match = _NAME.fullmatch(table)
        if match is None:
            raise ValueError(
                "table must be lower-case letters, digits and _ (at most 40), optionally "
                "after 'schema.'"
            )
        schema, name = match.group(1), match.group(2)
        self.qualified = table

        def ident(suffix: str) -> sql.Identifier:
            return (
                sql.Identifier(schema, name + suffix) if schema else sql.Identifier(name + suffix)
            )

        records, ledger, meta = ident(""), ident("_ledger"), ident("_schema")
        self.meta = meta
        digest = hashlib.sha256(table.encode()).hexdigest()
        #: The LISTEN/NOTIFY channel: one per table, whatever its schema.
        self.channel = f"amo_oauth_{digest[:24]}"
        #: The advisory lock ``migrate`` holds, so that concurrent migrations queue.
        self.lock_id = int.from_bytes(bytes.fromhex(digest[:16]), "big", signed=True)
        fmt = {"records": records, "ledger": ledger}
        self.schema = [
            sql.SQL(
                """CREATE TABLE {records} (
                    key TEXT COLLATE "C" PRIMARY KEY,
                    version BIGINT NOT NULL,
                    state TEXT NOT NULL,
                    account_id BIGINT,
                    refresh_due DOUBLE PRECISION,
                    data TEXT NOT NULL
                )"""
            ).format(**fmt),
            sql.SQL("CREATE INDEX {idx} ON {records} (account_id, key)").format(
                idx=sql.Identifier(name + "_account_idx"), **fmt
            ),
            sql.SQL("CREATE INDEX {idx} ON {records} (state, refresh_due, key)").format(
                idx=sql.Identifier(name + "_refresh_idx"), **fmt
            ),
            sql.SQL(
                """CREATE TABLE {ledger} (
                    key TEXT COLLATE "C" PRIMARY KEY,
                    holder TEXT,
                    expires_at TIMESTAMPTZ NOT NULL
                )"""
            ).format(**fmt),
            sql.SQL("CREATE INDEX {idx} ON {ledger} (expires_at)").format(
                idx=sql.Identifier(name + "_ledger_expires_idx"), **fmt
            ),
        ]
        self.load = sql.SQL("SELECT key, version, data FROM {records} WHERE key = %s").format(**fmt)
        self.insert = sql.SQL(
            """INSERT INTO {records} (key, version, state, account_id, refresh_due, data)
            VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING"""
        ).format(**fmt)
        self.update = sql.SQL(
            """UPDATE {records}
            SET version = %s, state = %s, account_id = %s, refresh_due = %s, data = %s
            WHERE key = %s AND version = %s"""
        ).format(**fmt)
        self.delete = sql.SQL("DELETE FROM {records} WHERE key = %s AND version = %s").format(**fmt)
        self.by_account = sql.SQL(
            "SELECT data FROM {records} WHERE account_id = %s ORDER BY key"
        ).format(**fmt)
        self.due = sql.SQL(
            """SELECT data FROM {records} WHERE state = %s AND refresh_due < %s
            ORDER BY refresh_due, key LIMIT %s"""
        ).format(**fmt)
        # Keyset pages on the (state, refresh_due, key) index: no offset, no sort.
        self.due_after = sql.SQL(
            """SELECT key, version, data FROM {records}
            WHERE state = %s AND refresh_due < %s AND (refresh_due, key) > (%s, %s)
            ORDER BY refresh_due, key LIMIT %s"""
        ).format(**fmt)
        self.due_first = sql.SQL(
            """SELECT key, version, data FROM {records} WHERE state = %s AND refresh_due < %s
            ORDER BY refresh_due, key LIMIT %s"""
        ).format(**fmt)
        self.scan_first = sql.SQL(
            "SELECT key, version, data FROM {records} ORDER BY key LIMIT %s"
        ).format(**fmt)
        self.scan_after = sql.SQL(
            "SELECT key, version, data FROM {records} WHERE key > %s ORDER BY key LIMIT %s"
        ).format(**fmt)
        # A free key is inserted; an expired one is taken over; a live one is locked (the
        # WHERE of DO UPDATE is false) so that the SELECT of its holder that follows sees it.
        self.take = sql.SQL(
            """INSERT INTO {ledger} AS l (key, holder, expires_at) VALUES (%s, %s, %s)
            ON CONFLICT (key) DO UPDATE SET holder = excluded.holder,
                expires_at = excluded.expires_at
            WHERE l.expires_at < now()
            RETURNING 1"""
        ).format(**fmt)
        self.holder = sql.SQL("SELECT holder FROM {ledger} WHERE key = %s").format(**fmt)
        self.live_holder = sql.SQL(
            "SELECT holder FROM {ledger} WHERE key = %s AND expires_at >= now()"
        ).format(**fmt)
        # SKIP LOCKED: two pruning writers never wait for (or deadlock on) each other's rows.
        self.prune = sql.SQL(
            """DELETE FROM {ledger} WHERE key IN (
                SELECT key FROM {ledger} WHERE expires_at < now()
                LIMIT %s FOR UPDATE SKIP LOCKED)"""
        ).format(**fmt)
        self.notify = sql.SQL("SELECT pg_notify(%s, %s)")
        self.listen = sql.SQL("LISTEN {}").format(sql.Identifier(self.channel))


class PostgresStore(BaseStore, AsyncBaseStore):
    """A ``FullStore`` and an ``AsyncStore`` in PostgreSQL, safe across processes and machines.

    Nothing connects until the first call. Run ``migrate()`` once (or ``amo-oauth migrate``)
    to create the tables; the store never creates them by itself.

    Args:
        conninfo: a psycopg 3 connection string (``"host=... dbname=..."``) or URL
            (``postgresql://user:password@host:5432/db``, ``postgres://...``).
        table: the records table, ``name`` or ``schema.name`` (lower-case letters, digits and
            ``_``; the name at most 40 characters). The ledger and the schema version live in
            ``<table>_ledger`` and ``<table>_schema`` beside it.
        min_size: connections each pool keeps open (blocking calls and awaited calls each have
            a pool, plus one listening connection once someone waits for a change).
        max_size: connections each pool opens at most.
        timeout: seconds a call waits for a connection (and to connect: ``connect_timeout``,
            unless ``conninfo`` sets it) before raising ``StoreError``. After an outage, the
            first call once the server is back gets a connection within it.
        encryption: encrypts the token pair at rest (e.g. ``cryptography``'s ``Fernet`` or
            ``MultiFernet``); rows are then useless without the key.

    Raises:
        ValueError: a malformed ``conninfo`` (the message quotes none of it), a bad table
            name, sizes out of order, or a timeout that is not positive.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        table: str = "amo_oauth_connections",
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 10.0,
        encryption: Encryption | None = None,
    ) -> None:
        try:
            params = conninfo_to_dict(conninfo)
        except psycopg.Error:
            # libpq's message quotes the string, password and all.
            raise ValueError("conninfo is not a valid PostgreSQL connection string") from None
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError("need 0 <= min_size <= max_size and max_size >= 1")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError("timeout must be a positive number of seconds")
        self._tables = _Tables(table)
        self._conninfo = conninfo
        self._host = str(params.get("host") or params.get("hostaddr") or "localhost")
        self._dbname = str(params.get("dbname") or params.get("user") or "")
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout
        self._kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:
            self._kwargs["connect_timeout"] = max(2, math.ceil(timeout))
        # A server that vanishes without a reset (a dead host, a dropped route) must still end
        # in StoreError: TCP keepalives find an idle connection dead (the listening one waits
        # on it indefinitely), tcp_user_timeout a busy one. libpq's names; conninfo may set them.
        for name, value in _TCP_DEFAULTS.items():
            if name not in params:
                self._kwargs[name] = value
        self._codec = RecordCodec(encryption)
        self._guard = threading.Lock()  # guards the pools and _closed
        self._closed = False
        self._pool: ConnectionPool[_Conn] | None = None
        self._apool: AsyncConnectionPool[_AsyncConn] | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._calls = itertools.count()
        self._listener = _Listener(self)

    def __repr__(self) -> str:
        return f"PostgresStore(host={self._host!r}, dbname={self._dbname!r}, table={self.table!r})"

    @property
    def table(self) -> str:
        """The records table, as given."""
        return self._tables.qualified

    # -- schema --------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create the tables and indexes, or bring them to ``SCHEMA_VERSION``. Idempotent, and
        safe to run from several processes at once (they queue on an advisory lock).

        Raises:
            StoreError: the database could not be reached or written, or it holds a newer
                schema than this library knows.
        """
        self._run("migrate the schema", self._op_migrate(), transaction=True)

    def _op_migrate(self) -> _Op[None]:
        t = self._tables
        yield _Stmt(sql.SQL("SELECT pg_advisory_xact_lock(%s)"), (t.lock_id,))
        yield _Stmt(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} (version INTEGER NOT NULL)").format(t.meta)
        )
        done = yield _Stmt(sql.SQL("SELECT max(version) FROM {}").format(t.meta))
        found = done.rows[0][0] or 0
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"{self._where()}: table {t.qualified!r} has schema version {found}; "
                f"this library knows {SCHEMA_VERSION}"
            )
        if found < SCHEMA_VERSION:
            for statement in t.schema:
                yield _Stmt(statement)
            yield _Stmt(
                sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(t.meta), (SCHEMA_VERSION,)
            )

    # -- blocking operations -------------------------------------------------------------

    def load(self, key: str) -> ConnectionRecord | None:
        """The record stored under ``key``, or None.

        Raises:
            StoreError: the database could not be read, or holds an unreadable record.
        """
        return self._run("read a record", self._op_load(key))

    def compare_and_set(self, record: ConnectionRecord, expected_version: int | None) -> bool:
        """Write ``record`` if the stored version is still ``expected_version`` (None: insert).

        Raises:
            ValueError: ``record.version`` does not move past ``expected_version``, or a number
                in it does not fit PostgreSQL's 64-bit ``bigint``.
            StoreError: the database could not be written.
        """
        op = self._op_cas(record, expected_version)
        return self._run("write a record", op, transaction=True)

    def delete(self, key: str, expected_version: int) -> bool:
        """Delete the record if its version is still ``expected_version``.

        Raises:
            StoreError: the database could not be written.
        """
        return self._run("delete a record", self._op_delete(key, expected_version), True)

    def consume_state(self, nonce: str, expires_at: datetime, holder: str | None = None) -> bool:
        """Take a single-use key: True the first time, and again only for the same holder.

        Expired keys are free again; they are deleted now and then.

        Raises:
            ValueError: ``expires_at`` is naive.
            StoreError: the database could not be written.
        """
        op = self._op_consume(nonce, expires_at, holder)
        return self._run("consume a ledger key", op, transaction=True)

    def holder_of(self, key: str) -> str | None:
        """Who holds a live ledger key; None when it is free, expired or held without a holder.

        Raises:
            StoreError: the database could not be read.
        """
        return self._run("read the ledger", self._op_holder(key))

    def claim(self, claim: Claim) -> ClaimResult:
        """Take ``claim.state`` and ``claim.code`` and write ``claim.record`` in one
        transaction, rolled back unless the result is ``CLAIMED``.

        Raises:
            ValueError: as ``compare_and_set``, or a naive expiry.
            StoreError: the database could not be written.
        """
        return self._run("claim a code", self._op_claim(claim), transaction=True)

    def find_by_account(self, account_id: int) -> list[ConnectionRecord]:
        """Every record whose verified account is ``account_id``, by key.

        Raises:
            StoreError: the database could not be read, or holds an unreadable record.
        """
        return self._run("find records", self._op_by_account(account_id))

    def due_for_refresh(self, before: datetime, limit: int) -> list[ConnectionRecord]:
        """Up to ``limit`` connected records whose refresh token expires before ``before``,
        soonest first (ties by key).

        Raises:
            ValueError: ``before`` is naive, or ``limit`` is negative.
            StoreError: the database could not be read, or holds an unreadable record.
        """
        return self._run("find records due", self._op_due(before, limit))

    def due_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        """Up to ``limit`` connected records whose refresh token expires before ``before``,
        soonest first (ties by key), strictly after the position ``after`` (the last record's
        refresh-token expiry and key; None: from the start): one range read on the
        ``(state, refresh_due, key)`` index, the same cost wherever the page starts.

        Raises:
            ValueError: ``before`` or ``after``'s time is naive, or ``limit`` is negative.
            StoreError: the database could not be read, or holds an unreadable record.
        """
        return self._run("find records due", self._op_due_page(before, limit, after))

    def scan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        """Up to ``limit`` records of any state, by key (byte order: the key column is
        ``COLLATE "C"``), with keys strictly after ``after`` (None: from the first).

        Raises:
            ValueError: ``limit`` is negative.
            StoreError: the database could not be read, or holds an unreadable record
                (``UndecryptableRecord`` naming the row's key).
        """
        return self._run("scan records", self._op_scan(after, limit))

    def wait_for_change(self, key: str, version: int, timeout: float) -> None:
        """Return once the record's version may differ from ``version`` (0: no record), or
        after ``timeout`` seconds: woken by the NOTIFY of any writer, in any process.

        Raises:
            StoreError: the database could not be reached.
        """
        timeout = wait_seconds(timeout)  # NaN, negative or huge: bounded
        if self._closed:
            raise closed_error()
        self._listener.ensure(self._timeout)
        with self._listener.waiting(key) as waiter:
            if _version(self.load(key)) != version:
                return
            self._listener.wait(waiter, timeout)

    def close(self) -> None:
        """Close the pools and the listening connection. Any later call raises
        ``StoreError``; closing again does nothing. An async pool whose event loop is still
        running should be closed with ``aclose()`` from that loop instead."""
        with self._guard:
            self._closed = True
            pool, self._pool = self._pool, None
            apool, self._apool = self._apool, None
        self._listener.close()
        if pool is not None:
            pool.close(timeout=self._timeout)
        loop = self._aloop
        if apool is not None and loop is not None and loop.is_running():
            # Closed in its own loop.
            asyncio.run_coroutine_threadsafe(apool.close(timeout=self._timeout), loop)
        elif apool is not None and (loop is None or loop.is_closed()):
            _abandon(apool)  # its loop has ended: nothing can be awaited there any more

    # -- awaited operations --------------------------------------------------------------

    async def aload(self, key: str) -> ConnectionRecord | None:
        """See ``load``."""
        return await self._arun("read a record", self._op_load(key))

    async def acompare_and_set(
        self, record: ConnectionRecord, expected_version: int | None
    ) -> bool:
        """See ``compare_and_set``."""
        op = self._op_cas(record, expected_version)
        return await self._arun("write a record", op, transaction=True)

    async def adelete(self, key: str, expected_version: int) -> bool:
        """See ``delete``."""
        return await self._arun("delete a record", self._op_delete(key, expected_version), True)

    async def aconsume_state(
        self, nonce: str, expires_at: datetime, holder: str | None = None
    ) -> bool:
        """See ``consume_state``."""
        op = self._op_consume(nonce, expires_at, holder)
        return await self._arun("consume a ledger key", op, transaction=True)

    async def afind_by_account(self, account_id: int) -> list[ConnectionRecord]:
        """See ``find_by_account``."""
        return await self._arun("find records", self._op_by_account(account_id))

    async def adue_for_refresh(self, before: datetime, limit: int) -> list[ConnectionRecord]:
        """See ``due_for_refresh``."""
        return await self._arun("find records due", self._op_due(before, limit))

    async def aholder_of(self, key: str) -> str | None:
        """See ``holder_of``."""
        return await self._arun("read the ledger", self._op_holder(key))

    async def adue_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        """See ``due_page``."""
        return await self._arun("find records due", self._op_due_page(before, limit, after))

    async def ascan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        """See ``scan``."""
        return await self._arun("scan records", self._op_scan(after, limit))

    async def aclaim(self, claim: Claim) -> ClaimResult:
        """See ``claim``."""
        return await self._arun("claim a code", self._op_claim(claim), transaction=True)

    async def await_for_change(self, key: str, version: int, timeout: float) -> None:
        """See ``wait_for_change``; waits on the event loop, occupying no thread."""
        timeout = wait_seconds(timeout)  # NaN, negative or huge: bounded
        if self._closed:
            raise closed_error()
        await self._listener.aensure(self._timeout)
        with self._listener.waiting(key, asyncio.get_running_loop()) as waiter:
            if _version(await self.aload(key)) != version:
                return
            await self._listener.await_(waiter, timeout)

    async def aclose(self) -> None:
        """See ``close``; closes the async pool in its own event loop."""
        with self._guard:
            apool = self._apool
            if apool is not None and self._aloop is asyncio.get_running_loop():
                self._apool = None
            else:
                apool = None  # made on another loop: close() lets go of it there
        if apool is not None:
            await apool.close(timeout=self._timeout)
        self.close()

    # -- the operations, once for both drivers -------------------------------------------

    def _op_load(self, key: str) -> _Op[ConnectionRecord | None]:
        done = yield _Stmt(self._tables.load, (key,))
        return self._codec.decode_row(*done.rows[0]) if done.rows else None

    # Each ``_op_*`` checks its arguments when called (raising ValueError before any
    # connection is borrowed) and returns the generator of its statements.

    def _op_cas(self, record: ConnectionRecord, expected_version: int | None) -> _Op[bool]:
        check_write(record, expected_version)
        row = self._codec.row(record)
        for number, name in ((row.version, "version"), (row.account_id, "account id")):
            if number is not None and not _fits(number):
                raise ValueError(f"{name} does not fit in PostgreSQL's 64-bit bigint")
        return self._write_record(row, expected_version)

    def _write_record(self, row: Row, expected_version: int | None) -> _Op[bool]:
        t = self._tables
        columns = (row.version, row.state, row.account_id, row.refresh_due, row.data)
        if expected_version is None:
            done = yield _Stmt(t.insert, (row.key, *columns))
        elif not _fits(expected_version):
            return False  # no stored version can be that number
        else:
            done = yield _Stmt(t.update, (*columns, row.key, expected_version))
        if done.rowcount != 1:
            return False
        yield self._notify(row.key)
        return True

    def _op_delete(self, key: str, expected_version: int) -> _Op[bool]:
        if not _fits(expected_version):
            return False  # no stored version can be that number
        done = yield _Stmt(self._tables.delete, (key, expected_version))
        if done.rowcount != 1:
            return False
        yield self._notify(key)
        return True

    def _op_consume(self, nonce: str, expires_at: datetime, holder: str | None) -> _Op[bool]:
        require_aware(expires_at, "expires_at")
        return self._consume(nonce, expires_at, holder, next(self._calls) % _PRUNE_EVERY == 0)

    def _consume(
        self, nonce: str, expires_at: datetime, holder: str | None, prune: bool
    ) -> _Op[bool]:
        if prune:
            yield _Stmt(self._tables.prune, (_PRUNE_BATCH,))
        taken = yield from self._take(nonce, holder, expires_at)
        return taken

    def _take(self, key: str, holder: str | None, expires_at: datetime) -> _Op[bool]:
        """Take a ledger key for ``holder`` (None: plainly single-use), inside a transaction."""
        t = self._tables
        done = yield _Stmt(t.take, (key, holder, expires_at))
        if done.rows:
            return True
        # The live entry is locked by this transaction now: it is still there to be read.
        done = yield _Stmt(t.holder, (key,))
        return holder is not None and bool(done.rows) and done.rows[0][0] == holder

    def _op_holder(self, key: str) -> _Op[str | None]:
        done = yield _Stmt(self._tables.live_holder, (key,))
        if not done.rows:
            return None
        holder: str | None = done.rows[0][0]
        return holder

    def _op_claim(self, claim: Claim) -> _Op[ClaimResult]:
        write = self._op_cas(claim.record, claim.expected_version)
        require_aware(claim.code.expires_at, "code.expires_at")
        if claim.state is not None:
            require_aware(claim.state.expires_at, "state.expires_at")
        return self._claim(claim, write)

    def _claim(self, claim: Claim, write: _Op[bool]) -> _Op[ClaimResult]:
        if claim.state is not None:
            state = claim.state
            if not (yield from self._take(state.key, state.holder, state.expires_at)):
                yield _ROLLBACK
                return ClaimResult.STATE_USED
        code = claim.code
        if not (yield from self._take(code.key, code.holder, code.expires_at)):
            yield _ROLLBACK
            return ClaimResult.CODE_TAKEN
        if not (yield from write):
            yield _ROLLBACK
            return ClaimResult.RECORD_CHANGED
        return ClaimResult.CLAIMED

    def _op_by_account(self, account_id: int) -> _Op[list[ConnectionRecord]]:
        if not _fits(account_id):
            return []  # no stored account can be that number
        done = yield _Stmt(self._tables.by_account, (account_id,))
        return [self._codec.decode(data) for (data,) in done.rows]

    def _op_due(self, before: datetime, limit: int) -> _Op[list[ConnectionRecord]]:
        moment = require_aware(before, "before").timestamp()
        return self._due(moment, min(check_limit(limit), _INT64_MAX))

    def _due(self, moment: float, limit: int) -> _Op[list[ConnectionRecord]]:
        done = yield _Stmt(self._tables.due, (ConnectionState.CONNECTED.value, moment, limit))
        return [self._codec.decode(data) for (data,) in done.rows]

    def _op_due_page(
        self, before: datetime, limit: int, after: DueCursor | None
    ) -> _Op[list[ConnectionRecord]]:
        moment = require_aware(before, "before").timestamp()
        count = min(check_limit(limit), _INT64_MAX)
        cursor = check_after(after)
        state = ConnectionState.CONNECTED.value
        if cursor is None:
            statement = _Stmt(self._tables.due_first, (state, moment, count))
        else:
            statement = _Stmt(self._tables.due_after, (state, moment, *cursor, count))
        return self._keyed_rows(statement)

    def _op_scan(self, after: str | None, limit: int) -> _Op[list[ConnectionRecord]]:
        count = min(check_limit(limit), _INT64_MAX)
        if after is None:
            return self._keyed_rows(_Stmt(self._tables.scan_first, (count,)))
        return self._keyed_rows(_Stmt(self._tables.scan_after, (after, count)))

    def _keyed_rows(self, statement: _Stmt) -> _Op[list[ConnectionRecord]]:
        done = yield statement
        return [self._codec.decode_row(key, version, data) for key, version, data in done.rows]

    def _notify(self, key: str) -> _Stmt:
        payload = key if len(key.encode()) <= _MAX_PAYLOAD else ""
        return _Stmt(self._tables.notify, (self._tables.channel, payload))

    # -- drivers -------------------------------------------------------------------------

    def _run(self, action: str, op: _Op[_T], transaction: bool = False) -> _T:
        """Run ``op`` on a pooled connection (in one transaction if ``transaction``)."""
        with self._mapped(action):
            pool = self._sync_pool()
            with pool.connection() as conn:
                if not transaction:
                    with conn.cursor() as cur:
                        value, _ = _drive(op, lambda s: _execute(cur, s))
                    return value
                with conn.transaction():
                    with conn.cursor() as cur:
                        value, rollback = _drive(op, lambda s: _execute(cur, s))
                    if rollback:
                        raise psycopg.Rollback()
                return value

    async def _arun(self, action: str, op: _Op[_T], transaction: bool = False) -> _T:
        """``_run`` on the async pool: the same statements, awaited."""
        with self._mapped(action):
            pool = await self._async_pool()
            async with pool.connection() as conn:
                if not transaction:
                    async with conn.cursor() as cur:
                        value, _ = await _adrive(op, cur)
                    return value
                async with conn.transaction():
                    async with conn.cursor() as cur:
                        value, rollback = await _adrive(op, cur)
                    if rollback:
                        raise psycopg.Rollback()
                return value

    def _sync_pool(self) -> ConnectionPool[_Conn]:
        with self._guard:
            if self._closed:
                raise closed_error()
            if self._pool is not None:
                return self._pool
            pool: ConnectionPool[_Conn] = ConnectionPool(
                check=ConnectionPool.check_connection, **self._pool_options("")
            )
            try:
                pool.open(wait=self._min_size > 0, timeout=self._timeout)
            except BaseException:
                pool.close(timeout=0)
                raise
            self._pool = pool
            return pool

    async def _async_pool(self) -> AsyncConnectionPool[_AsyncConn]:
        loop = asyncio.get_running_loop()
        with self._guard:
            if self._closed:
                raise closed_error()
            if self._apool is not None and self._aloop is not loop:
                old_loop = self._aloop
                if old_loop is not None and not old_loop.is_closed():
                    raise StoreError(
                        f"{self._where()}: awaited from another event loop while the loop of "
                        "its first awaited call still exists; use one store per event loop"
                    )
                # That loop has ended (``asyncio.run`` again, as scripts and tests do): its
                # pool's tasks ended with it, so its connections are closed here and a new
                # pool is made on this loop.
                _abandon(self._apool)
                self._apool = self._aloop = None
            if self._apool is not None:
                return self._apool
            apool: AsyncConnectionPool[_AsyncConn] = AsyncConnectionPool(
                check=AsyncConnectionPool.check_connection, **self._pool_options("-async")
            )
            # Claimed before the first await, so that concurrent first calls share one pool.
            self._apool, self._aloop = apool, loop
        try:
            await apool.open(wait=self._min_size > 0, timeout=self._timeout)
        except BaseException:
            with self._guard:
                if self._apool is apool:
                    self._apool = None
            await apool.close(timeout=0)
            raise
        return apool

    def _pool_options(self, suffix: str) -> dict[str, Any]:
        """What the blocking and the awaited pool share; opened by the caller.

        ``reconnect_timeout``: psycopg_pool retries a failed connect with a backoff that
        doubles for 5 minutes by default, and meanwhile starts no other attempt; after an
        outage of a minute the server would be back long before the pool looked again, and
        every call would still time out. Bounded by half a call's timeout, the attempt gives
        up and the next call starts a fresh one at once.
        """
        return {
            "conninfo": self._conninfo,
            "kwargs": self._kwargs,
            "min_size": self._min_size,
            "max_size": self._max_size,
            "open": False,
            "name": self._pool_name() + suffix,
            "timeout": self._timeout,
            "reconnect_timeout": self._timeout / 2,
        }

    def _pool_name(self) -> str:
        return f"amo_oauth:{self._host}/{self._dbname}/{self.table}"

    def _where(self) -> str:
        return f"PostgreSQL store ({self._host}/{self._dbname})"

    @contextlib.contextmanager
    def _mapped(self, action: str) -> Iterator[None]:
        """Turn psycopg's and the pool's errors into ``StoreError``, naming the host, the
        database and the error class, never the connection string or the data."""
        try:
            yield
        except psycopg.errors.UndefinedTable as exc:
            raise StoreError(
                f"{self._where()} could not {action}: table {self.table!r} does not exist; "
                "run amo-oauth migrate (PostgresStore.migrate())"
            ) from exc
        except psycopg.Error as exc:
            code = f" [{exc.sqlstate}]" if exc.sqlstate else ""
            raise StoreError(
                f"{self._where()} could not {action}: {type(exc).__name__}{code}"
            ) from exc


def _abandon(apool: AsyncConnectionPool[_AsyncConn]) -> None:
    """Let go of an async pool whose event loop has ended: nothing can be awaited on that loop
    any more, so its idle connections are closed without it (libpq's ``finish``), rather than
    left open until the collector finds them. Connections borrowed when the loop ended went
    with their callers' tasks."""
    idle = getattr(apool, "_pool", ())  # psycopg_pool keeps no public list of idle connections
    for conn in list(idle):
        with contextlib.suppress(Exception):
            conn.pgconn.finish()


def _drive(op: _Op[_T], execute: Callable[[_Stmt], _Done]) -> tuple[_T, bool]:
    """Run an operation's statements with ``execute(stmt) -> _Done``; (its value, rollback?)."""
    rollback = False
    try:
        stmt = next(op)
        while True:
            if stmt is _ROLLBACK:
                rollback = True
                stmt = op.send(_Done(0, []))
            else:
                stmt = op.send(execute(stmt))
    except StopIteration as stop:
        return stop.value, rollback


def _execute(cur: psycopg.Cursor[tuple[Any, ...]], stmt: _Stmt) -> _Done:
    cur.execute(stmt.query, stmt.params)
    rows = cur.fetchall() if cur.description is not None else []
    return _Done(cur.rowcount, rows)


async def _adrive(op: _Op[_T], cur: psycopg.AsyncCursor[tuple[Any, ...]]) -> tuple[_T, bool]:
    rollback = False
    try:
        stmt = next(op)
        while True:
            if stmt is _ROLLBACK:
                rollback = True
                stmt = op.send(_Done(0, []))
                continue
            await cur.execute(stmt.query, stmt.params)
            rows = await cur.fetchall() if cur.description is not None else []
            stmt = op.send(_Done(cur.rowcount, rows))
    except StopIteration as stop:
        return stop.value, rollback


class _Waiter:
    """One caller waiting for a key; ``future`` is set for an awaiting one."""

    __slots__ = ("fired", "future", "key", "loop", "parked")

    def __init__(
        self, key: str, loop: asyncio.AbstractEventLoop | None, future: asyncio.Future[None] | None
    ) -> None:
        self.key = key
        self.fired = False
        #: True once its caller has read the record and sleeps (what tests wait for).
        self.parked = False
        self.loop = loop
        self.future = future


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


#: libpq's TCP settings unless the conninfo gives its own: a peer that stops answering is
#: found dead within about a minute (keepalives after 30 s idle, then 3 probes 10 s apart;
#: sent data unacknowledged for 60 s).
_TCP_DEFAULTS: Final = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}


class _Listener:
    """The store's one listening connection: a daemon thread that LISTENs on the store's
    channel and wakes the waiters of each notified key.

    Started on the first wait; when its connection fails it wakes every waiter (an early
    return they may take) and the next wait starts it again.
    """

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._cond = threading.Condition()
        self._waiters: dict[str, set[_Waiter]] = {}
        self._thread: threading.Thread | None = None
        self._ready = False
        self._error: StoreError | None = None
        self._ready_waiters: list[_Waiter] = []
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._closed = False

    # -- starting ------------------------------------------------------------------------

    def _start(self) -> None:
        """Start the thread unless it runs (call with ``_cond`` held)."""
        if self._closed:
            raise closed_error()
        if self._thread is not None and self._thread.is_alive():
            return
        self._ready, self._error = False, None
        if self._wake is not None:  # the last thread's, which has ended
            for end in self._wake:
                end.close()
        self._wake = socket.socketpair()
        self._thread = threading.Thread(
            target=self._run, args=(self._wake[1],), name="amo_oauth-pg-listener", daemon=True
        )
        self._thread.start()

    def ensure(self, timeout: float) -> None:
        """Return once the channel is listened to.

        Raises:
            StoreError: the listening connection failed, or was not made within ``timeout``.
        """
        with self._cond:
            if self._ready and self._thread is not None and self._thread.is_alive():
                return
            self._start()
            if not self._cond.wait_for(lambda: self._ready or self._error is not None, timeout):
                raise StoreError(f"{self._store._where()} could not listen: timed out")
            if self._error is not None:
                raise self._error

    async def aensure(self, timeout: float) -> None:
        """``ensure`` on the event loop: waits on a future, blocking no thread."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter("", loop, loop.create_future())
        with self._cond:
            if self._ready and self._thread is not None and self._thread.is_alive():
                return
            self._start()
            self._ready_waiters.append(waiter)
        assert waiter.future is not None
        try:
            await asyncio.wait_for(waiter.future, timeout)
        except TimeoutError:
            raise StoreError(f"{self._store._where()} could not listen: timed out") from None
        finally:
            with self._cond:
                if waiter in self._ready_waiters:
                    self._ready_waiters.remove(waiter)
        with self._cond:
            if self._error is not None:
                raise self._error

    # -- waiting -------------------------------------------------------------------------

    @contextlib.contextmanager
    def waiting(self, key: str, loop: asyncio.AbstractEventLoop | None = None) -> Iterator[_Waiter]:
        """A waiter for ``key``, registered before the caller reads the record (so that a
        write committed after that read cannot go unheard) and removed at the end."""
        waiter = _Waiter(key, loop, loop.create_future() if loop is not None else None)
        with self._cond:
            self._waiters.setdefault(key, set()).add(waiter)
        try:
            yield waiter
        finally:
            with self._cond:
                found = self._waiters.get(key)
                if found is not None:
                    found.discard(waiter)
                    if not found:
                        del self._waiters[key]

    def wait(self, waiter: _Waiter, timeout: float) -> None:
        with self._cond:
            waiter.parked = True
            self._cond.wait_for(lambda: waiter.fired, max(timeout, 0.0))

    async def await_(self, waiter: _Waiter, timeout: float) -> None:
        assert waiter.future is not None
        with self._cond:
            waiter.parked = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter.future, max(timeout, 0.0))

    def _fire(self, waiters: Iterable[_Waiter]) -> None:
        """Wake ``waiters`` (call with ``_cond`` held)."""
        for waiter in waiters:
            waiter.fired = True
            if waiter.future is not None and waiter.loop is not None:
                with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                    waiter.loop.call_soon_threadsafe(_resolve, waiter.future)
        self._cond.notify_all()

    def _everyone(self) -> list[_Waiter]:
        return [w for group in self._waiters.values() for w in group]

    # -- the thread ----------------------------------------------------------------------

    def _run(self, wake: socket.socket) -> None:
        store = self._store
        try:
            conn = psycopg.connect(store._conninfo, **store._kwargs)
        except psycopg.Error as exc:
            self._started(
                StoreError(f"{store._where()} could not listen: {type(exc).__name__}"), exc
            )
            return
        try:
            try:
                conn.execute(store._tables.listen)
            except psycopg.Error as exc:
                self._started(
                    StoreError(f"{store._where()} could not listen: {type(exc).__name__}"), exc
                )
                return
            self._started(None, None)
            self._serve(conn, wake)
        finally:
            conn.close()
            with self._cond:
                self._ready = False
                self._fire(self._everyone())  # they return early and look again

    def _started(self, error: StoreError | None, cause: BaseException | None) -> None:
        if error is not None:
            error.__cause__ = cause
        with self._cond:
            self._ready, self._error = error is None, error
            self._fire(self._ready_waiters)
            self._ready_waiters = []

    def _serve(self, conn: _Conn, wake: socket.socket) -> None:
        pgconn = conn.pgconn
        fileno = conn.fileno()
        while True:
            readable, _, _ = select.select([fileno, wake.fileno()], [], [])
            if wake.fileno() in readable:
                return
            try:
                pgconn.consume_input()
            except psycopg.Error:
                return  # the connection is gone
            keys: set[str] = set()
            everyone = False
            while (notice := pgconn.notifies()) is not None:
                payload = notice.extra.decode("utf-8", "replace")
                if payload:
                    keys.add(payload)
                else:
                    everyone = True
            if keys or everyone:
                with self._cond:
                    if everyone:
                        self._fire(self._everyone())
                    else:
                        for key in keys:
                            self._fire(self._waiters.get(key, ()))

    def close(self) -> None:
        """Stop the thread (it wakes every waiter as it ends)."""
        with self._cond:
            self._closed = True
            thread, wake = self._thread, self._wake
            self._thread = self._wake = None
        if wake is not None:
            with contextlib.suppress(OSError):
                wake[0].send(b"x")
        if thread is not None:
            thread.join(timeout=5)
        if wake is not None:
            wake[0].close()
            wake[1].close()


def _version(record: ConnectionRecord | None) -> int:
    return record.version if record is not None else 0


def _fits(number: int) -> bool:
    return _INT64_MIN <= number <= _INT64_MAX
