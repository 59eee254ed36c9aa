"""``SQLiteStore``: the embedded default, one file shared by the threads and processes of a machine.

How a call is made safe:

- Every write is one ``BEGIN IMMEDIATE`` transaction. It takes SQLite's write lock before
  reading anything, so the ``UPDATE ... WHERE version = ?`` of a compare-and-set sees the latest
  committed row in every process, and two writers can never both match the same version.
- Connections come from a small pool, one borrowed per call and never shared by two threads at
  once (hence ``check_same_thread=False``). A pool rather than one connection per thread: threads
  of a server come and go and would leak their connections, and ``close()`` could not close
  another thread's. Rather than one shared connection: WAL lets readers run beside the writer.
- Writers of this process also queue on a ``threading.Lock`` before ``BEGIN IMMEDIATE``. That is
  only for speed (a lock wakes the next writer at once; SQLite's busy handler sleeps and polls);
  correctness never depends on it, since SQLite's own lock is what serializes processes.
- ``synchronous`` stays at SQLite's default (FULL): a commit holds a freshly rotated refresh
  token, and amoCRM has already revoked the previous one, so a commit must survive a power cut.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Final

from .._codec import record_from_json, record_to_json
from .._errors import StoreError
from .._records import ConnectionRecord, ConnectionState
from ._common import check_limit, check_write, closed_error, require_aware

__all__ = ["SQLiteStore"]

#: ``PRAGMA user_version`` of the schema below; a file of a newer schema is refused.
SCHEMA_VERSION: Final = 1

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS amo_connections (
        connection_id TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        state TEXT NOT NULL,
        account_id INTEGER,
        refresh_expires_at REAL,
        data TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS amo_connections_account ON amo_connections (account_id)",
    """CREATE INDEX IF NOT EXISTS amo_connections_refresh
        ON amo_connections (state, refresh_expires_at)""",
    """CREATE TABLE IF NOT EXISTS amo_states (
        nonce TEXT PRIMARY KEY,
        holder TEXT,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS amo_states_expires ON amo_states (expires_at)",
)

_INSERT: Final = """INSERT INTO amo_connections
    (version, state, account_id, refresh_expires_at, data, connection_id)
    VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (connection_id) DO NOTHING"""
_UPDATE: Final = """UPDATE amo_connections
    SET version = ?, state = ?, account_id = ?, refresh_expires_at = ?, data = ?
    WHERE connection_id = ? AND version = ?"""
_DUE: Final = """SELECT data FROM amo_connections
    WHERE state = ? AND refresh_expires_at < ?
    ORDER BY refresh_expires_at, connection_id LIMIT ?"""

#: Expired nonces are deleted on one ``consume_state`` in this many (the first one included).
_PRUNE_EVERY: Final = 64
#: Idle connections kept for reuse; more are closed when given back.
_MAX_IDLE: Final = 8
#: SQLite integers are signed 64-bit; Python's are not.
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


class SQLiteStore:
    """A ``Store`` in one SQLite file, safe across the threads and processes of one machine.

    The file (and schema) is created on first use, not here, with mode 0600 since it holds
    tokens; an existing file keeps its mode. Not for network file systems, whose locks SQLite
    cannot rely on: use Postgres or Redis across machines.

    Args:
        path: the database file.
        timeout: seconds a write waits for another writer before raising ``StoreError``.

    Raises:
        ValueError: an in-memory or temporary database (each connection would get its own:
            use ``MemoryStore``), or a negative timeout.
    """

    def __init__(self, path: str | os.PathLike[str] = "amo_oauth.db", *, timeout: float = 30.0):
        self._path = os.fspath(path)
        if self._path in ("", ":memory:") or self._path.startswith("file:"):
            raise ValueError("SQLiteStore needs a file path; use MemoryStore for memory")
        if timeout < 0:
            raise ValueError("timeout must be >= 0")
        self._timeout = timeout
        self._guard = threading.Lock()  # guards _idle and _closed
        self._write_lock = threading.Lock()
        self._prepare_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._inherited: list[sqlite3.Connection] = []
        self._ready = False
        self._closed = False
        self._calls = itertools.count()
        _STORES.add(self)

    def __repr__(self) -> str:
        return f"SQLiteStore({self._path!r})"

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    def load(self, connection_id: str) -> ConnectionRecord | None:
        """The stored record, or None when there is none.

        Raises:
            StoreError: the file could not be read, or holds an unreadable record.
        """
        rows = self._read(
            "SELECT data FROM amo_connections WHERE connection_id = ?", (connection_id,)
        )
        return _decode(rows[0][0]) if rows else None

    def compare_and_set(self, record: ConnectionRecord, expected_version: int | None) -> bool:
        """Write ``record`` if the stored version is still ``expected_version`` (None: insert).

        Raises:
            ValueError: ``record.version`` does not move past ``expected_version``, or a number
                in it does not fit SQLite's 64-bit integers.
            StoreError: the file could not be written.
        """
        check_write(record, expected_version)
        row = _row(record)
        if expected_version is not None and not _fits(expected_version):
            return False  # no stored version can be that number
        with self._writing("write a record") as conn:
            if expected_version is None:
                cursor = conn.execute(_INSERT, row)
            else:
                cursor = conn.execute(_UPDATE, (*row, expected_version))
            return cursor.rowcount == 1

    def delete(self, connection_id: str, expected_version: int) -> bool:
        """Delete the record if its version is still ``expected_version``.

        Raises:
            StoreError: the file could not be written.
        """
        if not _fits(expected_version):
            return False
        with self._writing("delete a record") as conn:
            cursor = conn.execute(
                "DELETE FROM amo_connections WHERE connection_id = ? AND version = ?",
                (connection_id, expected_version),
            )
            return cursor.rowcount == 1

    def consume_state(self, nonce: str, expires_at: datetime, holder: str | None = None) -> bool:
        """Mark a state nonce used: True the first time, and again only for the same holder.

        Expired nonces are deleted now and then, after which they are forgotten.

        Raises:
            StoreError: the file could not be written.
        """
        expiry = require_aware(expires_at, "expires_at").timestamp()
        prune = next(self._calls) % _PRUNE_EVERY == 0
        with self._writing("consume a state") as conn:
            if prune:
                conn.execute("DELETE FROM amo_states WHERE expires_at < ?", (time.time(),))
            inserted = conn.execute(
                "INSERT INTO amo_states (nonce, holder, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (nonce) DO NOTHING",
                (nonce, holder, expiry),
            ).rowcount
            if inserted:
                return True
            rows = conn.execute("SELECT holder FROM amo_states WHERE nonce = ?", (nonce,))
            return holder is not None and bool(rows.fetchall()[0][0] == holder)

    def find_by_account(self, account_id: int) -> list[ConnectionRecord]:
        """Every record whose verified account is ``account_id``, by connection id.

        Raises:
            StoreError: the file could not be read, or holds an unreadable record.
        """
        if not _fits(account_id):
            return []
        rows = self._read(
            "SELECT data FROM amo_connections WHERE account_id = ? ORDER BY connection_id",
            (account_id,),
        )
        return [_decode(data) for (data,) in rows]

    def due_for_refresh(self, before: datetime, limit: int) -> list[ConnectionRecord]:
        """Up to ``limit`` connected records whose refresh token expires before ``before``,
        soonest first (ties by connection id).

        Raises:
            StoreError: the file could not be read, or holds an unreadable record.
        """
        moment = require_aware(before, "before").timestamp()
        limit = min(check_limit(limit), _INT64_MAX)
        rows = self._read(_DUE, (ConnectionState.CONNECTED.value, moment, limit))
        return [_decode(data) for (data,) in rows]

    def close(self) -> None:
        """Close the idle connections now and the busy ones when their call ends.

        Any later call raises ``StoreError``; closing again does nothing.
        """
        with self._guard:
            self._closed = True
            idle, self._idle = self._idle, []
        _STORES.discard(self)
        for conn in idle:
            conn.close()

    # -- connections ---------------------------------------------------------------------

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with _mapped("read"), self._connection() as conn:
            # fetchall() runs the statement to its end: a statement left open would keep its
            # read snapshot on the pooled connection, and the next borrower would read stale rows.
            return conn.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def _writing(self, action: str) -> Iterator[sqlite3.Connection]:
        with _mapped(action), self._queued(action), self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _queued(self, action: str) -> Iterator[None]:
        if not self._write_lock.acquire(timeout=self._timeout):
            raise StoreError(f"SQLite store could not {action}: timed out waiting for a writer")
        try:
            yield
        finally:
            self._write_lock.release()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        conn = self._borrow()
        try:
            yield conn
        finally:
            self._give_back(conn)

    def _borrow(self) -> sqlite3.Connection:
        with self._guard:
            if self._closed:
                raise closed_error()
            if self._idle:
                return self._idle.pop()
        if not self._ready:
            self._prepare()
        return self._open()

    def _give_back(self, conn: sqlite3.Connection) -> None:
        # A connection still inside a transaction failed to roll back: never reuse it.
        with self._guard:
            if not self._closed and not conn.in_transaction and len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit BEGIN; this module says where transactions start.
        return sqlite3.connect(
            self._path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )

    def _prepare(self) -> None:
        """Create the file (0600), switch it to WAL and create the schema, once per store."""
        with self._prepare_lock:
            if self._ready:
                return
            try:
                os.close(os.open(self._path, os.O_CREAT | os.O_RDWR, 0o600))
            except OSError as exc:
                raise StoreError(f"SQLite store could not open its file: {exc.strerror}") from exc
            conn = self._open()
            try:
                _migrate(conn)
            finally:
                conn.close()
            self._ready = True

    def _after_fork(self) -> None:
        # A connection must not cross fork() (SQLite's "how to corrupt" page): the child opens
        # its own. The inherited ones are kept referenced and never closed, so that closing them
        # cannot disturb the parent's locks or WAL. The locks are replaced, since a thread that
        # does not exist in the child may have held them.
        self._inherited.extend(self._idle)
        self._idle = []
        self._guard = threading.Lock()
        self._write_lock = threading.Lock()
        self._prepare_lock = threading.Lock()


#: Every open store of this process, for the fork handler below.
_STORES: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._after_fork()


if hasattr(os, "register_at_fork"):  # one registration for every store, not one per store
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _migrate(conn: sqlite3.Connection) -> None:
    """Put the file in WAL mode and bring its schema to ``SCHEMA_VERSION``."""
    # WAL is a property of the file, kept once set; readers then never block the writer.
    conn.execute("PRAGMA journal_mode = WAL").fetchall()
    conn.execute("BEGIN IMMEDIATE")
    try:
        ((found,),) = conn.execute("PRAGMA user_version").fetchall()
        if found > SCHEMA_VERSION:
            raise StoreError(f"the database has schema version {found}; this library knows 1")
        if found < SCHEMA_VERSION:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def _mapped(action: str) -> Iterator[None]:
    """Turn sqlite3's errors into ``StoreError``, naming the error code but no data."""
    try:
        yield
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        raise StoreError(f"SQLite store could not {action}: {code}") from exc


def _row(record: ConnectionRecord) -> tuple[Any, ...]:
    """The columns of ``record``, in the order of ``_INSERT`` and ``_UPDATE``."""
    account_id = record.account.id if record.account is not None else None
    for number, name in ((record.version, "version"), (account_id, "account id")):
        if number is not None and not _fits(number):
            raise ValueError(f"{name} does not fit in SQLite's 64-bit integers")
    refresh = record.tokens.refresh_expires_at.timestamp() if record.tokens else None
    data = record_to_json(record)
    return (record.version, record.state.value, account_id, refresh, data, record.key)


def _fits(number: int) -> bool:
    return _INT64_MIN <= number <= _INT64_MAX


def _decode(data: str) -> ConnectionRecord:
    try:
        return record_from_json(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError("SQLite store holds a record it cannot read") from exc
