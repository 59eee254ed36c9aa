"""``SQLiteStore``: the embedded default, one file shared by the threads and processes of a machine.

How a call is made safe:

- Every write is one ``BEGIN IMMEDIATE`` transaction. It takes SQLite's write lock before
  reading anything, so the ``UPDATE ... WHERE version = ?`` of a compare-and-set sees the latest
  committed row in every process, and two writers can never both match the same version.
- SQLite's locks are POSIX record locks, which belong to the *process*: closing any descriptor
  of the file drops every lock the process holds on it, those of SQLite's connections included.
  So this module never opens a descriptor on the database file itself: the file is created by
  ``sqlite3.connect`` (under a temporary umask, for mode 0600), checked with ``os.stat`` (which
  opens nothing) and closed only through SQLite, which defers closing a descriptor while another
  connection of the process holds a lock on the file.
- Connections come from a bounded pool (``max_connections``), one borrowed per call and never
  shared by two threads at once (hence ``check_same_thread=False``); callers wait for a free one.
- Writers of this process also queue on a ``threading.Lock`` before ``BEGIN IMMEDIATE``. That is
  only for speed (a lock wakes the next writer at once; SQLite's busy handler sleeps and polls);
  correctness never depends on it, since SQLite's own lock is what serializes processes.
- Every transaction compares the file's ``(st_dev, st_ino)`` with the one the store opened, so a
  file deleted or replaced under a running store raises ``StoreError`` instead of taking writes
  no other process will ever see.
- ``synchronous`` stays at SQLite's default (FULL): a commit holds a freshly rotated refresh
  token, and amoCRM has already revoked the previous one, so a commit must survive a power cut.
- Waiters (``wait_for_change``) wait on one ``Hub`` per file and process (a registry by file
  identity), so they never read the store while they wait: a commit through any store object of
  the process on the file fires the watches on its key at once, and another process's commit is
  found by the hub's one poller thread (``PRAGMA data_version`` on a connection of its own,
  then the versions of the watched keys), which runs only while someone waits.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, Final, TypeVar

from .._errors import StoreError
from .._records import ConnectionRecord, ConnectionState
from ._base import AsyncSide, utc_now
from ._common import (
    check_after,
    check_limit,
    check_write,
    closed_error,
    read_clock,
    require_aware,
)
from ._hub import Hub
from ._protocol import (
    Claim,
    ClaimResult,
    DueCursor,
    LedgerEntry,
    Loaded,
    Store,
    StoreCheck,
)
from ._rows import Encryption, RecordCodec, Row
from ._sqlite_poll import FilePoller, Identity, file_identity, named

__all__ = ["SQLiteStore"]

T = TypeVar("T")

#: ``PRAGMA user_version`` of the schema below; a file of a newer schema is refused, an older
#: one brought up to it (every statement is ``IF NOT EXISTS``). 2 added the sweep's keyset index.
SCHEMA_VERSION: Final = 2

# ``connection_id`` holds ``ConnectionRecord.key`` (the same text as before for legacy records).
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
    # The keyset order of due_page: (expiry, key) after a cursor, with no sort.
    """CREATE INDEX IF NOT EXISTS amo_connections_due
        ON amo_connections (state, refresh_expires_at, connection_id)""",
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
_LOAD: Final = "SELECT connection_id, version, data FROM amo_connections WHERE connection_id = ?"
_VERSION: Final = "SELECT version FROM amo_connections WHERE connection_id = ?"
_BY_ACCOUNT: Final = """SELECT connection_id, version, data FROM amo_connections
    WHERE account_id = ? ORDER BY connection_id"""
_DUE: Final = """SELECT connection_id, version, data FROM amo_connections
    WHERE state = ? AND refresh_expires_at < ?
    ORDER BY refresh_expires_at, connection_id LIMIT ?"""
_DUE_AFTER: Final = """SELECT connection_id, version, data FROM amo_connections
    WHERE state = ? AND refresh_expires_at < ? AND (refresh_expires_at, connection_id) > (?, ?)
    ORDER BY refresh_expires_at, connection_id LIMIT ?"""
_SCAN: Final = """SELECT connection_id, version, data FROM amo_connections
    ORDER BY connection_id LIMIT ?"""
_SCAN_AFTER: Final = """SELECT connection_id, version, data FROM amo_connections
    WHERE connection_id > ? ORDER BY connection_id LIMIT ?"""
# An expired entry is free: taking it over is what forgetting it would allow anyway.
_TAKE: Final = """INSERT INTO amo_states (nonce, holder, expires_at) VALUES (?, ?, ?)
    ON CONFLICT (nonce) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
    WHERE amo_states.expires_at < ?"""
_HOLDER: Final = "SELECT holder FROM amo_states WHERE nonce = ? AND expires_at >= ?"

#: Expired nonces are deleted on one ``consume_state`` in this many (the first one included).
_PRUNE_EVERY: Final = 64
#: SQLite integers are signed 64-bit; Python's are not.
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
#: The poller looks at ``PRAGMA data_version`` this often (seconds) while nothing changes, up to
#: ``_MAX_POLL``; a look costs no disk read.
_FIRST_POLL: Final = 0.005
_MAX_POLL: Final = 0.05
_REPLACED: Final = "the database file was deleted or replaced"
#: Seconds a fork waits for a hub's poller thread to let go of its connection.
_FORK_WAIT: Final = 5.0

#: What an error code most often means, added to the message.
_HINTS: Final = {
    "SQLITE_CANTOPEN": " (does its directory exist, and may this process write there?)",
}


#: One hub per database file of this process, by (st_dev, st_ino): every store object on the
#: file shares it, whatever path spelling it was given.
_HUBS: dict[Identity, Hub] = {}
_HUBS_LOCK = threading.Lock()
#: ``os.umask`` is process-wide: two stores creating files at once must not restore each
#: other's mask.
_UMASK_LOCK = threading.Lock()


def _hub_for(identity: Identity, path: str) -> Hub:
    with _HUBS_LOCK:
        hub = _HUBS.get(identity)
        if hub is None:
            poller = FilePoller(path, identity)
            hub = _HUBS[identity] = Hub(
                poller, interval=_FIRST_POLL, max_interval=_MAX_POLL, name=path
            )
        return hub


class SQLiteStore(AsyncSide):
    """A ``Store`` and ``AsyncStore`` in one SQLite file, safe across the threads and
    processes of one machine, and across any number of store objects on the same file.

    The file (and schema) is created on first use, not here, with mode 0600 since it holds
    tokens; an existing file keeps its mode. Not for network file systems, whose locks SQLite
    cannot rely on: use Postgres or Redis across machines.

    Args:
        path: the database file.
        timeout: seconds a call waits for another writer, or for a free connection, before
            raising ``StoreError``.
        max_connections: the most connections this object keeps open at once (>= 1).
        codec: how records become rows; ``RecordCodec(encryption)`` by default.
        encryption: encrypts the token pair at rest (e.g. ``cryptography``'s ``Fernet`` or
            ``MultiFernet``); rows are then useless without the key.
        clock: the store's clock (aware datetimes): ``Loaded.now``, and when ledger keys
            expire. The host's UTC clock by default.

    The ``a``-prefixed operations run the blocking ones in a worker thread (``AsyncSide``);
    waits hold no thread.

    Raises:
        ValueError: an in-memory or temporary database (each connection would get its own:
            use ``MemoryStore``), a negative timeout, or ``max_connections`` < 1.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = "amo_oauth.db",
        *,
        timeout: float = 30.0,
        max_connections: int = 16,
        codec: RecordCodec | None = None,
        encryption: Encryption | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._path = os.fspath(path)
        if self._path in ("", ":memory:") or self._path.startswith("file:"):
            raise ValueError("SQLiteStore needs a file path; use MemoryStore for memory")
        if timeout < 0:
            raise ValueError("timeout must be >= 0")
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self._timeout = timeout
        self._max = max_connections
        self._codec = codec or RecordCodec(encryption)
        self._clock = clock or utc_now
        self._calls = itertools.count()
        self._identity: Identity | None = None
        self._closed = False
        self._idle: list[sqlite3.Connection] = []
        self._open = 0  # connections open now, idle or borrowed
        self._opened = 0  # connections ever opened
        self._new_locks()
        _STORES.add(self)

    def _new_locks(self) -> None:
        self._pool = threading.Condition()  # guards _idle, _open, _opened, _closed
        self._write_lock = threading.Lock()
        self._prepare_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SQLiteStore({self._path!r})"

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    @property
    def connections_opened(self) -> int:
        """How many SQLite connections this object has opened since it was made (an int)."""
        return self._opened

    @property
    def connections_open(self) -> int:
        """How many of them are open now, idle or in use; never above ``max_connections``."""
        return self._open

    # -- reads ---------------------------------------------------------------------------

    def load(self, key: str) -> Loaded:
        """The record stored under ``key`` (``ConnectionRecord.key``) and the store's clock.

        Raises:
            StoreError: the file could not be read, was deleted or replaced, or holds an
                unreadable record.
        """
        rows = self._read("read", _LOAD, (key,))
        now = read_clock(self._clock)
        return Loaded(self._decode(rows[0]) if rows else None, now)

    def find_by_account(self, account_id: int) -> list[ConnectionRecord]:
        """Every record whose verified account is ``account_id``, by key.

        Raises:
            StoreError: as ``load``.
        """
        if not _fits(account_id):
            return []
        return [self._decode(row) for row in self._read("read", _BY_ACCOUNT, (account_id,))]

    def due_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        """Up to ``limit`` connected records whose refresh token expires before ``before``
        (aware), soonest first (ties by key), strictly after the position ``after`` (the last
        record's refresh-token expiry and key; None: from the start). One indexed range read:
        a page costs the same wherever it starts.

        Raises:
            ValueError: ``before`` or ``after``'s time is naive, or ``limit`` is negative.
            StoreError: as ``load``.
        """
        moment = require_aware(before, "before").timestamp()
        limit = min(check_limit(limit), _INT64_MAX)
        cursor = check_after(after)
        state = ConnectionState.CONNECTED.value
        if cursor is None:
            rows = self._read("read", _DUE, (state, moment, limit))
        else:
            rows = self._read("read", _DUE_AFTER, (state, moment, *cursor, limit))
        return [self._decode(row) for row in rows]

    def scan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        """Up to ``limit`` records of any state, by key, with keys strictly after ``after``
        (None: from the first).

        Raises:
            ValueError: ``limit`` is negative.
            StoreError: as ``load`` (``UndecryptableRecord`` naming the row's key).
        """
        limit = min(check_limit(limit), _INT64_MAX)
        if after is None:
            rows = self._read("read", _SCAN, (limit,))
        else:
            rows = self._read("read", _SCAN_AFTER, (after, limit))
        return [self._decode(row) for row in rows]

    def holder_of(self, key: str) -> str | None:
        """Who holds the ledger key; None when it is free, expired or held without a holder.

        Raises:
            StoreError: the file could not be read, or was deleted or replaced.
        """
        rows = self._read("read the ledger", _HOLDER, (key, self._now()))
        holder = rows[0][0] if rows else None
        return holder if isinstance(holder, str) else None

    # -- writes --------------------------------------------------------------------------

    def compare_and_set(self, record: ConnectionRecord, expected_version: int | None) -> bool:
        """Write ``record`` under ``record.key`` if the stored version is still
        ``expected_version`` (None: insert). A stored body that cannot be read is overwritten
        all the same: only the version column decides.

        Raises:
            ValueError: ``record.version`` does not move past ``expected_version``, or a number
                in it does not fit SQLite's 64-bit integers.
            StoreError: the file could not be written, or was deleted or replaced.
        """
        check_write(record, expected_version)
        row = self._row(record)
        return self._transaction(
            "write a record",
            lambda conn: _commit_if(_put(conn, row, expected_version)),
            wakes=record.key,
        )

    def delete(self, key: str, expected_version: int) -> bool:
        """Delete the record if its version is still ``expected_version``.

        Raises:
            StoreError: the file could not be written, or was deleted or replaced.
        """
        if not _fits(expected_version):
            return False

        def body(conn: sqlite3.Connection) -> tuple[bool, bool]:
            cursor = conn.execute(
                "DELETE FROM amo_connections WHERE connection_id = ? AND version = ?",
                (key, expected_version),
            )
            return _commit_if(cursor.rowcount == 1)

        return self._transaction("delete a record", body, wakes=key)

    def consume_state(self, nonce: str, expires_at: datetime, holder: str | None = None) -> bool:
        """Take a single-use key until ``expires_at`` (aware): True the first time, and again
        only for the same ``holder``. An expired key is free again.

        Raises:
            ValueError: a naive ``expires_at``.
            StoreError: the file could not be written, or was deleted or replaced.
        """
        entry = LedgerEntry(nonce, holder or "", require_aware(expires_at, "expires_at"))
        prune = next(self._calls) % _PRUNE_EVERY == 0

        def body(conn: sqlite3.Connection) -> tuple[bool, bool]:
            now = self._now()
            if prune:
                conn.execute("DELETE FROM amo_states WHERE expires_at < ?", (now,))
            return _take(conn, entry, holder, now), True

        return self._transaction("consume a state", body)

    def claim(self, claim: Claim) -> ClaimResult:
        """Take ``claim.state`` and ``claim.code`` and write ``claim.record`` in one
        transaction (one commit): all of it when the result is ``CLAIMED``, nothing otherwise.

        Raises:
            ValueError: as ``compare_and_set``, or a naive expiry.
            StoreError: the file could not be written, or was deleted or replaced.
        """
        check_write(claim.record, claim.expected_version)
        row = self._row(claim.record)
        for entry in (claim.state, claim.code):
            if entry is not None:
                require_aware(entry.expires_at, "expires_at")

        def body(conn: sqlite3.Connection) -> tuple[ClaimResult, bool]:
            now = self._now()
            state = claim.state
            if state is not None and not _take(conn, state, state.holder, now):
                return ClaimResult.STATE_USED, False
            if not _take(conn, claim.code, claim.code.holder, now):
                return ClaimResult.CODE_TAKEN, False
            if not _put(conn, row, claim.expected_version):
                return ClaimResult.RECORD_CHANGED, False
            return ClaimResult.CLAIMED, True

        return self._transaction("claim a code", body, wakes=claim.record.key)

    # -- waiting and checking --------------------------------------------------------------

    def wait_for_change(self, key: str, version: int, timeout: float) -> None:
        """Return once the record's version may differ from ``version`` (0: no record), or
        after ``timeout`` seconds. A commit through any ``SQLiteStore`` of this process on the
        same file fires it at once; another process's commit is found by the file's one poller
        (within ``_MAX_POLL`` seconds). The waiter reads the store once, never in a loop.

        Raises:
            StoreError: as ``load``, or the store is closed.
        """
        self.hub.wait(key, version, timeout, lambda: self._version(key))
        self._check_open()

    @property
    def hub(self) -> Hub:
        """Where this process's waiters on the file wait (one per file, opened on first use).

        Raises:
            StoreError: the file could not be opened.
        """
        self._prepare()
        assert self._identity is not None
        return _hub_for(self._identity, self._path)

    def check(self) -> StoreCheck:
        """Reachable when the file opens and answers; the schema is ready when it is at
        ``SCHEMA_VERSION``. A missing file is not created: it is reported (schema not ready)."""
        if self._closed:
            return StoreCheck("sqlite", False, False, detail=str(closed_error()))
        if not os.path.exists(self._path):
            detail = "the database file does not exist yet (it is made on first use)"
            return StoreCheck("sqlite", True, False, detail=detail)
        try:
            ((found,),) = self._read("check", "PRAGMA user_version", ())
        except StoreError as exc:
            return StoreCheck("sqlite", False, False, detail=str(exc))
        now = read_clock(self._clock)
        if found != SCHEMA_VERSION:
            detail = f"schema version {found}; this library knows {SCHEMA_VERSION}"
            return StoreCheck("sqlite", True, False, now, detail)
        return StoreCheck("sqlite", True, True, now)

    # -- AsyncSide -------------------------------------------------------------------------

    def _blocking(self) -> Store:
        return self

    def _waits(self) -> Hub:
        return self.hub

    def _check_open(self) -> None:
        with self._pool:
            if self._closed:
                raise closed_error()

    def close(self) -> None:
        """Close the idle connections now and the busy ones when their call ends.

        Any later call raises ``StoreError``; closing again does nothing.
        """
        with self._pool:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._pool.notify_all()  # callers waiting for a connection now raise
        _STORES.discard(self)
        for conn in idle:
            conn.close()  # through SQLite, which keeps a descriptor open while locks need it
        if self._identity is not None:
            _hub_for(self._identity, self._path).notify_all()  # this store's waiters raise

    # -- rows ----------------------------------------------------------------------------

    def _version(self, key: str) -> int:
        """The stored version under ``key`` (0: none), without decoding the record."""
        rows = self._read("read", _VERSION, (key,))
        return int(rows[0][0]) if rows else 0

    def _now(self) -> float:
        """The store's clock, POSIX seconds (ledger expiry)."""
        return read_clock(self._clock).timestamp()

    def _row(self, record: ConnectionRecord) -> Row:
        row = self._codec.row(record)
        for number, name in ((row.version, "version"), (row.account_id, "account id")):
            if number is not None and not _fits(number):
                raise ValueError(f"{name} does not fit in SQLite's 64-bit integers")
        return row

    def _decode(self, row: tuple[Any, ...]) -> ConnectionRecord:
        key, version, data = row
        return self._codec.decode_row(key, version, data)

    # -- transactions --------------------------------------------------------------------

    def _read(self, action: str, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with _mapped(action, self._path), self._connection() as conn:
            # fetchall() runs the statement to its end: a statement left open would keep its
            # read snapshot on the pooled connection, and the next borrower would read stale rows.
            rows = conn.execute(sql, params).fetchall()
        self._check_file()  # rows of a deleted or replaced file are nobody's rows
        return rows

    def _transaction(
        self,
        action: str,
        body: Callable[[sqlite3.Connection], tuple[T, bool]],
        *,
        wakes: str | None = None,
    ) -> T:
        """Run ``body`` in one ``BEGIN IMMEDIATE`` transaction, committed when it says so.

        ``wakes``: the key of the record a commit changes; this process's waiters on it are
        woken.
        """
        with _mapped(action, self._path), self._queued(action), self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._check_file()  # holding the write lock: a replacement shows by now
                result, commit = body(conn)
                conn.execute("COMMIT" if commit else "ROLLBACK")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        if commit and wakes is not None:
            self.hub.notify(wakes)
        return result

    @contextlib.contextmanager
    def _queued(self, action: str) -> Iterator[None]:
        if not self._write_lock.acquire(timeout=self._timeout):
            raise StoreError(
                f"{named(self._path)} could not {action}: timed out waiting for a writer"
            )
        try:
            yield
        finally:
            self._write_lock.release()

    # -- the file --------------------------------------------------------------------------

    def _check_file(self) -> None:
        """Raise unless the path still names the file this store opened. ``os.stat`` opens no
        descriptor, so it cannot drop the process's locks."""
        if file_identity(self._path) != self._identity:
            raise StoreError(f"{named(self._path)}: {_REPLACED}")

    def _prepare(self) -> None:
        """On first use: create the file (0600), switch it to WAL, create the schema and
        remember the file's identity. The connection used for it joins the pool."""
        if self._identity is not None:
            return
        with self._prepare_lock:
            if self._identity is not None:
                return
            with self._pool:
                if self._closed:
                    raise closed_error()
            with _mapped("open its file", self._path):
                conn = self._connect()
                try:
                    _migrate(conn, self._path)
                    identity = file_identity(self._path)
                    if identity is None:
                        raise StoreError(f"{named(self._path)}: {_REPLACED}")
                except BaseException:
                    conn.close()
                    raise
            with self._pool:
                self._open += 1
                self._opened += 1
                self._idle.append(conn)
            self._identity = identity

    def _connect(self) -> sqlite3.Connection:
        """A new connection; the file is created with mode 0600 when missing.

        ``os.path.exists`` is a stat: no descriptor. A missing file has no inode yet, so no
        connection of this process can hold a lock that creating it could drop.
        """
        if os.path.exists(self._path):
            return self._open_connection()
        with _UMASK_LOCK:
            previous = os.umask(0o077)  # SQLite creates the file, its -wal and -shm with 0600
            try:
                return self._open_connection()
            finally:
                os.umask(previous)

    def _open_connection(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit BEGIN; this module says where transactions start.
        return sqlite3.connect(
            self._path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )

    # -- the pool --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        conn = self._borrow()
        try:
            yield conn
        finally:
            self._give_back(conn)

    def _borrow(self) -> sqlite3.Connection:
        self._prepare()
        with self._pool:
            ready = self._pool.wait_for(
                lambda: self._closed or bool(self._idle) or self._open < self._max,
                self._timeout,
            )
            if self._closed:
                raise closed_error()
            if not ready:
                raise StoreError(f"{named(self._path)}: timed out waiting for a free connection")
            if self._idle:
                return self._idle.pop()
            self._open += 1  # the slot is ours while the connection is made
            self._opened += 1
        try:
            return self._connect()
        except BaseException:
            self._release_slot()
            raise

    def _give_back(self, conn: sqlite3.Connection) -> None:
        # A connection still inside a transaction failed to roll back: never reuse it.
        with self._pool:
            if not self._closed and not conn.in_transaction:
                self._idle.append(conn)
                self._pool.notify()
                return
        conn.close()
        self._release_slot()

    def _release_slot(self) -> None:
        with self._pool:
            self._open -= 1
            self._pool.notify()

    # -- fork ----------------------------------------------------------------------------

    def _before_fork(self) -> None:
        """Quiesce before ``fork()``: wait (up to ``timeout``) for borrowed connections, close
        the idle ones through SQLite, and keep the pool locked until the fork is done.

        A connection must not cross fork() (SQLite's "how to corrupt" page), and a child whose
        SQLite library remembers the parent's open connections on the file would share their
        lock and WAL-index state. With none open at the fork, the child starts clean.
        """
        self._pool.acquire()
        self._pool.wait_for(lambda: self._open == len(self._idle), self._timeout)
        idle, self._idle = self._idle, []
        self._open -= len(idle)
        for conn in idle:
            conn.close()

    def _after_fork_in_parent(self) -> None:
        self._pool.release()

    def _after_fork_in_child(self) -> None:
        # Connections still borrowed at the fork belong to threads the child does not have:
        # they are never given back, so never closed here (closing one would drop this
        # process's locks on the file). The locks are replaced: a vanished thread may hold one.
        self._new_locks()
        self._open = 0


#: Every open store of this process, for the fork handlers below.
_STORES: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()


def _before_fork() -> None:
    for hub in list(_HUBS.values()):
        hub.pause(_FORK_WAIT)  # its poller's connection must not cross fork() either
    for store in list(_STORES):
        store._before_fork()


def _after_fork_in_parent() -> None:
    for store in list(_STORES):
        store._after_fork_in_parent()
    for hub in list(_HUBS.values()):
        hub.resume()


def _after_fork_in_child() -> None:
    global _HUBS_LOCK, _UMASK_LOCK
    _HUBS_LOCK, _UMASK_LOCK = threading.Lock(), threading.Lock()
    _HUBS.clear()  # their waiters are threads the child does not have
    for store in list(_STORES):
        store._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # one registration for every store, not one per store
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    """Put the file in WAL mode and bring its schema to ``SCHEMA_VERSION``."""
    # WAL is a property of the file, kept once set; readers then never block the writer.
    conn.execute("PRAGMA journal_mode = WAL").fetchall()
    conn.execute("BEGIN IMMEDIATE")
    try:
        ((found,),) = conn.execute("PRAGMA user_version").fetchall()
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"{named(path)}: the database has schema version {found}; this library knows "
                f"{SCHEMA_VERSION}"
            )
        if found < SCHEMA_VERSION:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _put(conn: sqlite3.Connection, row: Row, expected_version: int | None) -> bool:
    """The compare-and-set itself, inside the caller's transaction."""
    columns = (row.version, row.state, row.account_id, row.refresh_due, row.data, row.key)
    if expected_version is None:
        return conn.execute(_INSERT, columns).rowcount == 1
    if not _fits(expected_version):
        return False  # no stored version can be that number
    return conn.execute(_UPDATE, (*columns, expected_version)).rowcount == 1


def _take(conn: sqlite3.Connection, entry: LedgerEntry, holder: str | None, now: float) -> bool:
    """Take a ledger key for ``holder`` (None: nobody may pass again), inside a transaction."""
    expiry = entry.expires_at.timestamp()
    if conn.execute(_TAKE, (entry.key, holder, expiry, now)).rowcount:
        return True
    rows = conn.execute("SELECT holder FROM amo_states WHERE nonce = ?", (entry.key,)).fetchall()
    return holder is not None and bool(rows[0][0] == holder)


def _commit_if(changed: bool) -> tuple[bool, bool]:
    return changed, changed


def _fits(number: int) -> bool:
    return _INT64_MIN <= number <= _INT64_MAX


@contextlib.contextmanager
def _mapped(action: str, path: str) -> Iterator[None]:
    """Turn sqlite3's errors into ``StoreError``, naming the file and the error code but no
    data."""
    try:
        yield
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        hint = _HINTS.get(code, "")
        raise StoreError(f"{named(path)} could not {action}: {code}{hint}") from exc
