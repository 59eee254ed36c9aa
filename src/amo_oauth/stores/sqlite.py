"""``SQLiteStore``: the embedded default, one file shared by the threads and processes of a machine.

How a call is made safe:

- Every write is one ``BEGIN IMMEDIATE`` transaction. It takes SQLite's write lock before
  reading anything, so the ``UPDATE ... WHERE version = ?`` of a compare-and-set sees the latest
  committed row in every process, and two writers can never both match the same version.
- The connections, the file and ``fork()`` are ``_sqlite_pool.FilePool``'s: it never opens a
  descriptor on the file itself (SQLite's POSIX locks belong to the process), lends each call
  one pooled connection, and raises ``StoreError`` for a file deleted or replaced under it.
- Writers of this process also queue on a ``threading.Lock`` before ``BEGIN IMMEDIATE``. That is
  only for speed; correctness never depends on it, since SQLite's own lock is what serializes
  processes.
- ``synchronous`` stays at SQLite's default (FULL): a commit holds a freshly rotated refresh
  token, and amoCRM has already revoked the previous one, so a commit must survive a power cut.
- Waiters (``wait_for_change``) wait on one ``Hub`` per file and process (a registry by file
  identity), so they never read the store while they wait: a commit through any store object of
  the process on the file fires the watches on its key at once, and another process's commit is
  found by the hub's one poller thread (``PRAGMA data_version`` on a connection of its own,
  then the versions of the watched keys), which runs only while someone waits.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote

from .._errors import StoreError
from .._records import ConnectionRecord, ConnectionStatus
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
from ._sqlite_pool import FilePool, check_place, mapped
from ._sqlite_sql import (
    BY_ACCOUNT,
    DELETE,
    DUE,
    DUE_AFTER,
    HOLDER,
    INT64_MAX,
    LOAD,
    PRUNE,
    PRUNE_EVERY,
    SCAN,
    SCAN_AFTER,
    SCHEMA_VERSION,
    VERSION,
    commit_if,
    fits,
    put,
    take,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

T = TypeVar("T")


class SQLiteStore(AsyncSide):
    """A ``Store`` and ``AsyncStore`` in one SQLite file, safe across the threads and
    processes of one machine, and across any number of store objects on the same file.

    The file (and schema) is created on first use, not here, with mode 0600 since it holds
    tokens (here it is only checked that the file could be written); an existing file keeps
    its mode. Not for network file systems, whose locks SQLite cannot rely on: use Postgres
    or Redis across machines.

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
        StoreError: the file could never be written: its directory is missing or not
            writable, or the file is read-only (the message names its absolute path).
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
        check_place(self._path)
        self._timeout = timeout
        self._codec = codec or RecordCodec(encryption)
        self._clock = clock or utc_now
        self._calls = itertools.count()
        self._files = FilePool(self._path, timeout, max_connections)

    def __repr__(self) -> str:
        return f"SQLiteStore({self._path!r})"

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    @property
    def connections_opened(self) -> int:
        """How many SQLite connections this object has opened since it was made (an int)."""
        return self._files.opened

    @property
    def connections_open(self) -> int:
        """How many of them are open now, idle or in use; never above ``max_connections``."""
        return self._files.open

    # -- reads ---------------------------------------------------------------------------

    def load(self, key: str) -> Loaded:
        """The record stored under ``key`` (``ConnectionRecord.key``) and the store's clock.

        Raises:
            StoreError: the file could not be read, was deleted or replaced, or holds an
                unreadable record.
        """
        rows = self._files.read("read", LOAD, (key,))
        now = read_clock(self._clock)
        return Loaded(self._decode(rows[0]) if rows else None, now)

    def find_by_account(self, account_id: int) -> list[ConnectionRecord]:
        """Every record whose verified account is ``account_id``, by key.

        Raises:
            StoreError: as ``load``.
        """
        if not fits(account_id):
            return []
        return [self._decode(row) for row in self._files.read("read", BY_ACCOUNT, (account_id,))]

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
        limit = min(check_limit(limit), INT64_MAX)
        cursor = check_after(after)
        status = ConnectionStatus.CONNECTED.value
        if cursor is None:
            rows = self._files.read("read", DUE, (status, moment, limit))
        else:
            rows = self._files.read("read", DUE_AFTER, (status, moment, *cursor, limit))
        return [self._decode(row) for row in rows]

    def scan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        """Up to ``limit`` records of any status, by key, with keys strictly after ``after``
        (None: from the first).

        Raises:
            ValueError: ``limit`` is negative.
            StoreError: as ``load`` (``UndecryptableRecord`` naming the row's key).
        """
        limit = min(check_limit(limit), INT64_MAX)
        if after is None:
            rows = self._files.read("read", SCAN, (limit,))
        else:
            rows = self._files.read("read", SCAN_AFTER, (after, limit))
        return [self._decode(row) for row in rows]

    def holder_of(self, key: str) -> str | None:
        """Who holds the ledger key; None when it is free, expired or held without a holder.

        Raises:
            StoreError: the file could not be read, or was deleted or replaced.
        """
        rows = self._files.read("read the ledger", HOLDER, (key, self._now()))
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
            lambda conn: commit_if(put(conn, row, expected_version)),
            wakes=record.key,
        )

    def delete(self, key: str, expected_version: int) -> bool:
        """Delete the record if its version is still ``expected_version``.

        Raises:
            StoreError: the file could not be written, or was deleted or replaced.
        """
        if not fits(expected_version):
            return False

        def body(conn: sqlite3.Connection) -> tuple[bool, bool]:
            return commit_if(conn.execute(DELETE, (key, expected_version)).rowcount == 1)

        return self._transaction("delete a record", body, wakes=key)

    def consume_state(self, nonce: str, expires_at: datetime, holder: str | None = None) -> bool:
        """Take a single-use key until ``expires_at`` (aware): True the first time, and again
        only for the same ``holder``. An expired key is free again.

        Raises:
            ValueError: a naive ``expires_at``.
            StoreError: the file could not be written, or was deleted or replaced.
        """
        entry = LedgerEntry(nonce, holder or "", require_aware(expires_at, "expires_at"))
        prune = next(self._calls) % PRUNE_EVERY == 0

        def body(conn: sqlite3.Connection) -> tuple[bool, bool]:
            now = self._now()
            if prune:
                conn.execute(PRUNE, (now,))
            return take(conn, entry, holder, now), True

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
            if state is not None and not take(conn, state, state.holder, now):
                return ClaimResult.STATE_USED, False
            if not take(conn, claim.code, claim.code.holder, now):
                return ClaimResult.CODE_TAKEN, False
            if not put(conn, row, claim.expected_version):
                return ClaimResult.RECORD_CHANGED, False
            return ClaimResult.CLAIMED, True

        return self._transaction("claim a code", body, wakes=claim.record.key)

    # -- waiting and checking --------------------------------------------------------------

    def wait_for_change(self, key: str, version: int, timeout: float) -> None:
        """Return once the record's version may differ from ``version`` (0: no record), or
        after ``timeout`` seconds. A commit through any ``SQLiteStore`` of this process on the
        same file fires it at once; another process's commit is found by the file's one poller
        (within ``MAX_POLL`` seconds). The waiter reads the store once, never in a loop.

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
        return self._files.hub()

    def check(self) -> StoreCheck:
        """Reachable when the file answers; the schema is ready when it is at
        ``SCHEMA_VERSION``. Creates and migrates nothing: a missing file is reported."""
        if self._files.closed:
            return StoreCheck("sqlite", False, False, detail=str(closed_error()))
        if not os.path.exists(self._path):
            # The commands never make it (a typo'd path must not become an empty store);
            # an application's SQLiteStore would, on its first call.
            detail = "the database file does not exist: amo-oauth migrate creates it"
            return StoreCheck("sqlite", True, False, detail=detail)
        try:
            found = user_version(self._path, self._timeout)
        except StoreError as exc:
            return StoreCheck("sqlite", False, False, detail=str(exc))
        now = read_clock(self._clock)
        if found != SCHEMA_VERSION:
            detail = f"schema version {found}; this library knows {SCHEMA_VERSION}"
            return StoreCheck("sqlite", True, False, now, detail)
        return StoreCheck("sqlite", True, True, now)

    def close(self) -> None:
        """Close the idle connections now and the busy ones when their call ends, and end
        this store's waits with ``StoreError``. Any later call raises ``StoreError``; closing
        again does nothing.
        """
        self._files.close()

    # -- AsyncSide -------------------------------------------------------------------------

    def _blocking(self) -> Store:
        return self

    def _waits(self) -> Hub:
        return self.hub

    def _check_open(self) -> None:
        self._files.check_open()

    # -- rows and transactions -------------------------------------------------------------

    def _version(self, key: str) -> int:
        """The stored version under ``key`` (0: none), without decoding the record."""
        rows = self._files.read("read", VERSION, (key,))
        return int(rows[0][0]) if rows else 0

    def _now(self) -> float:
        """The store's clock, POSIX seconds (ledger expiry)."""
        return read_clock(self._clock).timestamp()

    def _row(self, record: ConnectionRecord) -> Row:
        row = self._codec.row(record)
        for number, name in ((row.version, "version"), (row.account_id, "account id")):
            if number is not None and not fits(number):
                raise ValueError(f"{name} does not fit in SQLite's 64-bit integers")
        return row

    def _decode(self, row: tuple[Any, ...]) -> ConnectionRecord:
        key, version, data = row
        return self._codec.decode_row(key, version, data)

    def _transaction(
        self,
        action: str,
        body: Callable[[sqlite3.Connection], tuple[T, bool]],
        *,
        wakes: str | None = None,
    ) -> T:
        """Run ``body`` in one transaction (``FilePool.transaction``); after a commit, this
        process's waiters on the record ``wakes`` are woken."""
        result, committed = self._files.transaction(action, body)
        if committed and wakes is not None:
            self.hub.notify(wakes)
        return result


def user_version(path: str, timeout: float) -> int:
    """The file's ``PRAGMA user_version``, read on a connection of its own that cannot create
    the file (``mode=rw``) and is closed through SQLite.

    Raises:
        StoreError: the file could not be opened or read.
    """
    with mapped("check", path):
        conn = sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True, timeout=timeout)
        try:
            ((found,),) = conn.execute("PRAGMA user_version").fetchall()
        finally:
            conn.close()
    return int(found)
