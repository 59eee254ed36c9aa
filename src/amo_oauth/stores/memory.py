"""``MemoryStore``: records in a dict, for tests and single-process tools."""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable
from datetime import datetime

from .._records import ConnectionRecord, ConnectionStatus
from ._base import AsyncSide, utc_now
from ._common import (
    check_after,
    check_claim,
    check_limit,
    check_write,
    closed_error,
    read_clock,
    require_aware,
)
from ._forks import reset_in_child
from ._hub import Hub
from ._protocol import Claim, ClaimResult, DueCursor, LedgerEntry, Loaded, Store, StoreCheck

__all__ = ["MemoryStore"]


class MemoryStore(AsyncSide):
    """A ``Store`` and an ``AsyncStore`` in this process's memory: nothing survives the
    process.

    Records are kept under ``ConnectionRecord.key``. Safe across threads and event loops: one
    lock guards every call, so each compare-and-set and each ``claim`` is atomic. The records are
    kept as they are given: they are frozen, so no caller can change a stored one.

    Waits do not poll: every write to a key fires the watches on it in ``hub`` (threads at
    once, tasks through their loop's ``call_soon_threadsafe``, so a write from any thread
    reaches them and no worker thread is ever held by a wait). The ``a``-prefixed methods run
    the blocking ones directly: each holds the lock for a few dictionary operations only.

    Args:
        encryption: taken for symmetry with the other stores and ignored: records never leave
            this process's memory, so there is nothing at rest to encrypt.
        clock: the store's clock (aware datetimes): ``Loaded.now``, and when ledger keys
            expire. The host's UTC clock by default.

    After ``close`` every call raises ``StoreError``; closing wakes every waiter.
    """

    _inline = True  # every operation is a few dictionary operations under a lock

    def __init__(
        self, *, encryption: object = None, clock: Callable[[], datetime] | None = None
    ) -> None:
        del encryption
        self._clock = clock or utc_now
        self._lock = threading.Lock()
        self._records: dict[str, ConnectionRecord] = {}
        # ledger key -> (holder, expires_at as a POSIX timestamp), and a heap of (expires_at,
        # key) with one entry per stored key, so expired keys are pruned in O(log n) per call
        # instead of a sweep over the whole dict.
        self._nonces: dict[str, tuple[str | None, float]] = {}
        self._expiries: list[tuple[float, str]] = []
        self._closed = False
        #: Where this store's waiters wait; every change passes through ``_write``/``delete``.
        self.hub = Hub(name="memory")
        reset_in_child(self)

    def after_fork(self) -> None:
        """In a forked child: a thread the child does not have may hold the lock. The child
        keeps a copy of the records: its own store from now on, shared with nobody."""
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryStore(records={len(self._records)})"

    # -- reads -----------------------------------------------------------------------------

    def load(self, key: str) -> Loaded:
        """The record stored under ``key`` (``ConnectionRecord.key``) and the store's clock.

        Raises:
            StoreError: the store is closed.
        """
        with self._lock:
            self._check_open()
            return Loaded(self._records.get(key), read_clock(self._clock))

    def find_by_account(self, account_id: int) -> list[ConnectionRecord]:
        """Every record whose verified account is ``account_id``, by key.

        Raises:
            StoreError: the store is closed.
        """
        with self._lock:
            self._check_open()
            found = [
                record
                for record in self._records.values()
                if record.account is not None and record.account.id == account_id
            ]
        return sorted(found, key=lambda record: record.key)

    def due_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        """See ``Store.due_page``. Each page looks at every record once (a dictionary has no
        order to seek in) and keeps ``limit`` of them: memory per page stays ``limit`` records.

        Raises:
            ValueError: ``before`` or ``after``'s time is naive, or ``limit`` is negative.
            StoreError: the store is closed.
        """
        cutoff = require_aware(before, "before").timestamp()
        check_limit(limit)
        cursor = check_after(after)
        with self._lock:
            self._check_open()
            due = (
                ((moment, record.key), record)
                for record in self._records.values()
                if record.status == ConnectionStatus.CONNECTED
                and record.tokens is not None
                and (moment := record.tokens.refresh_expires_at.timestamp()) < cutoff
                and (cursor is None or (moment, record.key) > cursor)
            )
            page = heapq.nsmallest(limit, due, key=lambda pair: pair[0])
        return [record for _, record in page]

    def scan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        """Up to ``limit`` records of any status, by key, with keys strictly after ``after``
        (None: from the first).

        Raises:
            ValueError: ``limit`` is negative.
            StoreError: the store is closed.
        """
        check_limit(limit)
        with self._lock:
            self._check_open()
            found = (
                (key, record)
                for key, record in self._records.items()
                if after is None or key > after
            )
            page = heapq.nsmallest(limit, found, key=lambda pair: pair[0])
        return [record for _, record in page]

    def holder_of(self, key: str) -> str | None:
        """Who holds the ledger ``key``; None when it is free, expired, or held without a
        holder. Takes nothing.

        Raises:
            StoreError: the store is closed.
        """
        with self._lock:
            self._check_open()
            self._prune()
            stored = self._nonces.get(key)
            return None if stored is None else stored[0]

    def check(self) -> StoreCheck:
        """Reachable and ready until closed; ``now`` is the store's clock."""
        with self._lock:
            if self._closed:
                return StoreCheck("memory", False, False, detail=str(closed_error()))
            return StoreCheck("memory", True, True, now=read_clock(self._clock))

    # -- writes ----------------------------------------------------------------------------

    def compare_and_set(self, record: ConnectionRecord, expected_version: int | None) -> bool:
        """Write ``record`` under ``record.key`` if the stored version is still
        ``expected_version`` (None: insert, only when no record is stored).

        Returns False, writing nothing, when the stored version differs.

        Raises:
            ValueError: ``record.version`` does not move past ``expected_version``.
            StoreError: the store is closed.
        """
        check_write(record, expected_version)
        with self._lock:
            self._check_open()
            if self._stored_version(record.key) != expected_version:
                return False
            self._records[record.key] = record
        self.hub.notify(record.key)
        return True

    def delete(self, key: str, expected_version: int) -> bool:
        """Delete the record under ``key`` if its version is still ``expected_version``.

        Raises:
            StoreError: the store is closed.
        """
        with self._lock:
            self._check_open()
            if self._stored_version(key) != expected_version:
                return False
            del self._records[key]
        self.hub.notify(key)
        return True

    def consume_state(self, nonce: str, expires_at: datetime, holder: str | None = None) -> bool:
        """Take a single-use ledger key until ``expires_at`` (aware): True the first time, and
        again only for the same ``holder``. Expired keys are forgotten (pruned on every call).

        Raises:
            ValueError: ``expires_at`` is naive.
            StoreError: the store is closed.
        """
        expiry = require_aware(expires_at, "expires_at").timestamp()
        with self._lock:
            self._check_open()
            self._prune()
            if not self._may_take(nonce, holder):
                return False
            self._take(nonce, holder, expiry)
            return True

    def claim(self, claim: Claim) -> ClaimResult:
        """Take ``claim.state`` (if any) and ``claim.code`` and write ``claim.record``, all
        under one lock: either all three happen (``CLAIMED``) or nothing is written.

        The checks run in ``BaseStore.claim``'s order: the state, the code, then the record's
        version, and the first that fails names the result.

        Raises:
            ValueError: the record's version does not move past ``claim.expected_version``,
                or a ledger entry's ``expires_at`` is naive.
            StoreError: the store is closed.
        """
        check_claim(claim)
        with self._lock:
            self._check_open()
            result = self._claim(claim)
        if result is ClaimResult.CLAIMED:
            self.hub.notify(claim.record.key)
        return result

    def close(self) -> None:
        """Drop every record and wake every waiter. Any later call raises ``StoreError``;
        closing again does nothing."""
        with self._lock:
            self._closed = True
            self._records.clear()
            self._nonces.clear()
            self._expiries.clear()
        self.hub.notify_all()

    # -- waiting ---------------------------------------------------------------------------

    def wait_for_change(self, key: str, version: int, timeout: float) -> None:
        """Return once the record under ``key`` is written or deleted, at once when its version
        already differs from ``version`` (0: no record), or after ``timeout`` seconds. It may
        return early; the caller loads and looks again.

        Raises:
            StoreError: the store is closed, before or during the wait.
        """
        self.hub.wait(key, version, timeout, lambda: self.load(key).version)
        self._check_open()

    # -- AsyncSide -------------------------------------------------------------------------

    def _blocking(self) -> Store:
        return self

    def _waits(self) -> Hub:
        return self.hub

    # -- under the lock --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise closed_error()

    def _stored_version(self, key: str) -> int | None:
        current = self._records.get(key)
        return None if current is None else current.version

    def _claim(self, claim: Claim) -> ClaimResult:
        self._prune()
        if claim.state is not None and not self._may_take(claim.state.key, claim.state.holder):
            return ClaimResult.STATE_USED
        if not self._may_take(claim.code.key, claim.code.holder):
            return ClaimResult.CODE_TAKEN
        if self._stored_version(claim.record.key) != claim.expected_version:
            return ClaimResult.RECORD_CHANGED
        for entry in (claim.state, claim.code):
            if entry is not None:
                self._take_entry(entry)
        self._records[claim.record.key] = claim.record
        return ClaimResult.CLAIMED

    def _may_take(self, key: str, holder: str | None) -> bool:
        stored = self._nonces.get(key)
        return stored is None or (holder is not None and stored[0] == holder)

    def _take_entry(self, entry: LedgerEntry) -> None:
        self._take(entry.key, entry.holder, entry.expires_at.timestamp())

    def _take(self, key: str, holder: str | None, expiry: float) -> None:
        if key not in self._nonces:  # the same holder passing again keeps the first expiry
            self._nonces[key] = (holder, expiry)
            heapq.heappush(self._expiries, (expiry, key))

    def _prune(self) -> None:
        now = read_clock(self._clock).timestamp()
        while self._expiries and self._expiries[0][0] < now:
            _, key = heapq.heappop(self._expiries)
            del self._nonces[key]
