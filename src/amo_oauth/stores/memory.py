"""``MemoryStore``: records in a dict, for tests and single-process tools."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import threading
import time
from datetime import datetime

from .._records import ConnectionRecord, ConnectionState
from ._base import AsyncBaseStore, BaseStore
from ._common import (
    check_after,
    check_claim,
    check_limit,
    check_write,
    closed_error,
    require_aware,
    wait_seconds,
)
from ._protocol import Claim, ClaimResult, DueCursor, LedgerEntry

__all__ = ["MemoryStore"]


class _ThreadWaiter:
    """A thread blocked in ``wait_for_change``."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()

    def wake(self) -> None:
        self.event.set()


class _LoopWaiter:
    """A coroutine awaiting ``await_for_change`` on ``loop``; woken from any thread."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def wake(self) -> None:
        # A closed loop raises RuntimeError: nobody awaits on it any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


_Waiter = _ThreadWaiter | _LoopWaiter


class MemoryStore(BaseStore, AsyncBaseStore):
    """A ``FullStore`` and an ``AsyncStore`` in this process's memory: nothing survives the
    process.

    Records are kept under ``ConnectionRecord.key``. Safe across threads and event loops: one
    lock guards every call, so each compare-and-set and each ``claim`` is atomic. The records are
    kept as they are given: they are frozen, so no caller can change a stored one.

    ``wait_for_change`` and ``await_for_change`` do not poll: every write to a key wakes the
    threads and coroutines waiting on it at once (a coroutine through its loop's
    ``call_soon_threadsafe``, so a write from any thread reaches it, and no worker thread is
    ever held by a wait). The ``a``-prefixed methods run the blocking ones directly: each holds
    the lock for a few dictionary operations only.

    After ``close`` every call raises ``StoreError``; closing wakes every waiter.
    """

    def __init__(self, *, encryption: object = None) -> None:
        # ``encryption`` is taken for symmetry with the other stores: records never leave this
        # process's memory, so there is nothing at rest to encrypt.
        del encryption
        self._lock = threading.Lock()
        self._records: dict[str, ConnectionRecord] = {}
        # ledger key -> (holder, expires_at as a POSIX timestamp), and a heap of (expires_at,
        # key) with one entry per stored key, so expired keys are pruned in O(log n) per call
        # instead of a sweep over the whole dict.
        self._nonces: dict[str, tuple[str | None, float]] = {}
        self._expiries: list[tuple[float, str]] = []
        # record key -> whoever waits for that record to change.
        self._waiters: dict[str, set[_Waiter]] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryStore(records={len(self._records)})"

    # -- Store ---------------------------------------------------------------------------

    def load(self, key: str) -> ConnectionRecord | None:
        """The record stored under ``key`` (``ConnectionRecord.key``), or None.

        Raises:
            StoreError: the store is closed.
        """
        with self._lock:
            self._check_open()
            return self._records.get(key)

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
            self._write(record)
            return True

    def delete(self, key: str, expected_version: int) -> bool:
        """Delete the record under ``key`` if its version is still ``expected_version``.

        Raises:
            StoreError: the store is closed.
        """
        with self._lock:
            self._check_open()
            current = self._records.get(key)
            if current is None or current.version != expected_version:
                return False
            del self._records[key]
            self._wake(key)
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
            self._prune(time.time())
            if not self._may_take(nonce, holder):
                return False
            self._take(nonce, holder, expiry)
            return True

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

    def due_for_refresh(self, before: datetime, limit: int) -> list[ConnectionRecord]:
        """Up to ``limit`` connected records whose refresh token expires before ``before``
        (aware), soonest first (ties by key).

        Raises:
            ValueError: ``before`` is naive, or ``limit`` is negative.
            StoreError: the store is closed.
        """
        require_aware(before, "before")
        check_limit(limit)
        with self._lock:
            self._check_open()
            due = [
                (record.tokens.refresh_expires_at, record.key, record)
                for record in self._records.values()
                if record.state == ConnectionState.CONNECTED
                and record.tokens is not None
                and record.tokens.refresh_expires_at < before
            ]
        return [record for _, _, record in heapq.nsmallest(limit, due, key=lambda t: t[:2])]

    def due_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        """Up to ``limit`` connected records whose refresh token expires before ``before``
        (aware), soonest first (ties by key), strictly after the position ``after`` (the last
        record's refresh-token expiry and key; None: from the start).

        Each page looks at every record once (a dictionary has no order to seek in) and keeps
        ``limit`` of them: memory per page stays ``limit`` records.

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
                if record.state == ConnectionState.CONNECTED
                and record.tokens is not None
                and (moment := record.tokens.refresh_expires_at.timestamp()) < cutoff
                and (cursor is None or (moment, record.key) > cursor)
            )
            page = heapq.nsmallest(limit, due, key=lambda pair: pair[0])
        return [record for _, record in page]

    def scan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        """Up to ``limit`` records of any state, by key, with keys strictly after ``after``
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

    def close(self) -> None:
        """Drop every record and wake every waiter. Any later call raises ``StoreError``;
        closing again does nothing."""
        with self._lock:
            self._closed = True
            self._records.clear()
            self._nonces.clear()
            self._expiries.clear()
            for key in list(self._waiters):
                self._wake(key)

    # -- FullStore -----------------------------------------------------------------------

    def holder_of(self, key: str) -> str | None:
        """Who holds the ledger ``key``; None when it is free, expired, or held without a
        holder. Takes nothing.

        Raises:
            StoreError: the store is closed.
        """
        with self._lock:
            self._check_open()
            self._prune(time.time())
            stored = self._nonces.get(key)
            return None if stored is None else stored[0]

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
            self._prune(time.time())
            if claim.state is not None and not self._may_take(claim.state.key, claim.state.holder):
                return ClaimResult.STATE_USED
            if not self._may_take(claim.code.key, claim.code.holder):
                return ClaimResult.CODE_TAKEN
            if self._stored_version(claim.record.key) != claim.expected_version:
                return ClaimResult.RECORD_CHANGED
            for entry in (claim.state, claim.code):
                if entry is not None:
                    self._take_entry(entry)
            self._write(claim.record)
            return ClaimResult.CLAIMED

    def wait_for_change(self, key: str, version: int, timeout: float) -> None:
        """Return once the record under ``key`` is written or deleted, at once when its version
        already differs from ``version`` (0: no record), or after ``timeout`` seconds. It may
        return early; the caller loads and looks again.

        Raises:
            StoreError: the store is closed, before or during the wait.
        """
        with self._lock:
            self._check_open()
            if self._stored_version(key) != (version or None):
                return
            waiter = _ThreadWaiter()
            self._waiters.setdefault(key, set()).add(waiter)
        try:
            waiter.event.wait(wait_seconds(timeout))
        finally:
            self._forget(key, waiter)
        if self._closed:
            raise closed_error()

    # -- AsyncStore ----------------------------------------------------------------------

    async def aload(self, key: str) -> ConnectionRecord | None:
        """See ``load``."""
        return self.load(key)

    async def acompare_and_set(
        self, record: ConnectionRecord, expected_version: int | None
    ) -> bool:
        """See ``compare_and_set``."""
        return self.compare_and_set(record, expected_version)

    async def adelete(self, key: str, expected_version: int) -> bool:
        """See ``delete``."""
        return self.delete(key, expected_version)

    async def aconsume_state(
        self, nonce: str, expires_at: datetime, holder: str | None = None
    ) -> bool:
        """See ``consume_state``."""
        return self.consume_state(nonce, expires_at, holder)

    async def afind_by_account(self, account_id: int) -> list[ConnectionRecord]:
        """See ``find_by_account``."""
        return self.find_by_account(account_id)

    async def adue_for_refresh(self, before: datetime, limit: int) -> list[ConnectionRecord]:
        """See ``due_for_refresh``."""
        return self.due_for_refresh(before, limit)

    async def adue_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        """See ``due_page``."""
        return self.due_page(before, limit, after)

    async def ascan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        """See ``scan``."""
        return self.scan(after, limit)

    async def aholder_of(self, key: str) -> str | None:
        """See ``holder_of``."""
        return self.holder_of(key)

    async def aclaim(self, claim: Claim) -> ClaimResult:
        """See ``claim``."""
        return self.claim(claim)

    async def await_for_change(self, key: str, version: int, timeout: float) -> None:
        """See ``wait_for_change``. Awaits a future of the running loop that a write from any
        thread resolves; no thread waits.

        Raises:
            StoreError: the store is closed, before or during the wait.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            self._check_open()
            if self._stored_version(key) != (version or None):
                return
            waiter = _LoopWaiter(loop)
            self._waiters.setdefault(key, set()).add(waiter)
        try:
            await asyncio.wait_for(waiter.future, wait_seconds(timeout))
        except TimeoutError:
            pass
        finally:
            self._forget(key, waiter)
        if self._closed:
            raise closed_error()

    async def aclose(self) -> None:
        """See ``close``."""
        self.close()

    # -- under the lock ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise closed_error()

    def _stored_version(self, key: str) -> int | None:
        current = self._records.get(key)
        return None if current is None else current.version

    def _write(self, record: ConnectionRecord) -> None:
        self._records[record.key] = record
        self._wake(record.key)

    def _wake(self, key: str) -> None:
        for waiter in self._waiters.pop(key, ()):
            waiter.wake()

    def _forget(self, key: str, waiter: _Waiter) -> None:
        with self._lock:
            waiting = self._waiters.get(key)
            if waiting is not None:
                waiting.discard(waiter)
                if not waiting:
                    del self._waiters[key]

    def _may_take(self, key: str, holder: str | None) -> bool:
        stored = self._nonces.get(key)
        return stored is None or (holder is not None and stored[0] == holder)

    def _take_entry(self, entry: LedgerEntry) -> None:
        self._take(entry.key, entry.holder, entry.expires_at.timestamp())

    def _take(self, key: str, holder: str | None, expiry: float) -> None:
        if key not in self._nonces:  # the same holder passing again keeps the first expiry
            self._nonces[key] = (holder, expiry)
            heapq.heappush(self._expiries, (expiry, key))

    def _prune(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] < now:
            _, key = heapq.heappop(self._expiries)
            del self._nonces[key]
