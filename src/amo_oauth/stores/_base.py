"""Default implementations of the operations added to the store seam, and the two adapters.

- ``BaseStore``: ``holder_of``, ``claim``, ``wait_for_change`` and ``due_page`` built on
  ``Store``'s first operations. Correct (the record's compare-and-set decides), but three writes,
  polling, and a ``due_page`` that reads from the first due record on every page (not flat).
  ``scan`` has nothing to be built on: it raises ``NotImplementedError``.
- ``AsyncBaseStore``: the same for ``AsyncStore``.
- ``as_full_store``: any ``Store`` as a ``FullStore`` (a user's store of the first protocol).
- ``as_async_store``: any store as an ``AsyncStore``: an ``AsyncStore`` as it is, a blocking
  one with each call in a worker thread and its waits as ``asyncio.sleep`` polls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from .._records import ConnectionRecord
from ._common import check_after, check_limit, due_position, wait_seconds
from ._protocol import AsyncStore, Claim, ClaimResult, DueCursor, FullStore, Store

__all__ = ["AsyncBaseStore", "BaseStore", "as_async_store", "as_full_store"]

#: Polling waits start at this many seconds and double up to ``_MAX_POLL``.
_FIRST_POLL = 0.01
_MAX_POLL = 0.1


def _version(record: ConnectionRecord | None) -> int:
    return record.version if record is not None else 0


#: ``due_page``'s default asks ``due_for_refresh`` for this many times more rows each round.
_GROWTH = 4
_NO_SCAN = (
    "this store cannot list its records: implement scan(after, limit) (a read of every record "
    "by key) to use it with amo-oauth rotate-key"
)


def _after_cursor(
    records: list[ConnectionRecord], limit: int, cursor: tuple[float, str] | None
) -> list[ConnectionRecord]:
    """The first ``limit`` of ``records`` (in due order) placed strictly after ``cursor``."""
    if cursor is None:
        return records[:limit]
    page = []
    for record in records:
        moment, key = due_position(record)
        if (moment.timestamp(), key) > cursor:
            page.append(record)
    return page[:limit]


class BaseStore:
    """Defaults for the operations ``FullStore`` adds to ``Store``. Subclass it and implement
    ``Store``'s operations; override these to make them faster, never to change what they mean.
    """

    def load(self, key: str) -> ConnectionRecord | None:
        raise NotImplementedError

    def compare_and_set(self, record: ConnectionRecord, expected_version: int | None) -> bool:
        raise NotImplementedError

    def consume_state(self, nonce: str, expires_at: datetime, holder: str | None = None) -> bool:
        raise NotImplementedError

    def due_for_refresh(self, before: datetime, limit: int) -> list[ConnectionRecord]:
        raise NotImplementedError

    def due_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        """``due_for_refresh`` asked for more and more rows until ``limit`` of them lie past
        ``after``: correct, but each page reads every due record before it again, so a sweep
        over n records costs O(n²) reads. A store with an index overrides it (keyset)."""
        check_limit(limit)
        cursor = check_after(after)
        want = max(limit, 1)
        while True:
            records = self.due_for_refresh(before, want)
            page = _after_cursor(records, limit, cursor)
            if len(page) >= limit or len(records) < want:
                return page
            want *= _GROWTH

    def scan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        """Not available: ``Store`` has no read of every record.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError(_NO_SCAN)

    def holder_of(self, key: str) -> str | None:
        """Unknown (None) here: the first protocol has no read of the ledger. Duplicates are
        then found by ``claim`` instead of before it, which costs a write, not correctness."""
        return None

    def claim(self, claim: Claim) -> ClaimResult:
        """The state, the code, then the record: three writes. A crash between them leaves a
        ledger entry held for this holder, which lets the same holder pass again."""
        if claim.state is not None and not self.consume_state(
            claim.state.key, claim.state.expires_at, claim.state.holder
        ):
            return ClaimResult.STATE_USED
        if not self.consume_state(claim.code.key, claim.code.expires_at, claim.code.holder):
            return ClaimResult.CODE_TAKEN
        if not self.compare_and_set(claim.record, claim.expected_version):
            return ClaimResult.RECORD_CHANGED
        return ClaimResult.CLAIMED

    def wait_for_change(self, key: str, version: int, timeout: float) -> None:
        """Poll ``load`` with a doubling pause (10 ms to 100 ms) until the version moves."""
        timeout = wait_seconds(timeout)  # NaN, negative or huge: bounded
        deadline = time.monotonic() + timeout
        pause = _FIRST_POLL
        while _version(self.load(key)) == version:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(pause, left))
            pause = min(pause * 2, _MAX_POLL)


class AsyncBaseStore:
    """``BaseStore``'s defaults for ``AsyncStore``."""

    async def aload(self, key: str) -> ConnectionRecord | None:
        raise NotImplementedError

    async def acompare_and_set(
        self, record: ConnectionRecord, expected_version: int | None
    ) -> bool:
        raise NotImplementedError

    async def aconsume_state(
        self, nonce: str, expires_at: datetime, holder: str | None = None
    ) -> bool:
        raise NotImplementedError

    async def adue_for_refresh(self, before: datetime, limit: int) -> list[ConnectionRecord]:
        raise NotImplementedError

    async def aholder_of(self, key: str) -> str | None:
        """See ``BaseStore.holder_of``."""
        return None

    async def adue_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        """See ``BaseStore.due_page`` (not flat either)."""
        check_limit(limit)
        cursor = check_after(after)
        want = max(limit, 1)
        while True:
            records = await self.adue_for_refresh(before, want)
            page = _after_cursor(records, limit, cursor)
            if len(page) >= limit or len(records) < want:
                return page
            want *= _GROWTH

    async def ascan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        """See ``BaseStore.scan``.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError(_NO_SCAN)

    async def aclaim(self, claim: Claim) -> ClaimResult:
        """See ``BaseStore.claim``."""
        if claim.state is not None and not await self.aconsume_state(
            claim.state.key, claim.state.expires_at, claim.state.holder
        ):
            return ClaimResult.STATE_USED
        if not await self.aconsume_state(claim.code.key, claim.code.expires_at, claim.code.holder):
            return ClaimResult.CODE_TAKEN
        if not await self.acompare_and_set(claim.record, claim.expected_version):
            return ClaimResult.RECORD_CHANGED
        return ClaimResult.CLAIMED

    async def await_for_change(self, key: str, version: int, timeout: float) -> None:
        """See ``BaseStore.wait_for_change``; sleeps with ``asyncio.sleep``."""
        timeout = wait_seconds(timeout)  # NaN, negative or huge: bounded
        await _poll(lambda: self.aload(key), version, timeout)


async def _poll(
    load: Callable[[], Awaitable[ConnectionRecord | None]], version: int, timeout: float
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pause = _FIRST_POLL
    while _version(await load()) == version:
        left = deadline - loop.time()
        if left <= 0:
            return
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, _MAX_POLL)


class _Extended(BaseStore):
    """A first-protocol ``Store`` with ``BaseStore``'s defaults for the later operations."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __repr__(self) -> str:
        return repr(self._store)

    def load(self, key: str) -> ConnectionRecord | None:
        return self._store.load(key)

    def compare_and_set(self, record: ConnectionRecord, expected_version: int | None) -> bool:
        return self._store.compare_and_set(record, expected_version)

    def delete(self, key: str, expected_version: int) -> bool:
        return self._store.delete(key, expected_version)

    def consume_state(self, nonce: str, expires_at: datetime, holder: str | None = None) -> bool:
        return self._store.consume_state(nonce, expires_at, holder)

    def find_by_account(self, account_id: int) -> list[ConnectionRecord]:
        return self._store.find_by_account(account_id)

    def due_for_refresh(self, before: datetime, limit: int) -> list[ConnectionRecord]:
        return self._store.due_for_refresh(before, limit)

    def due_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        own = getattr(self._store, "due_page", None)
        if callable(own):
            return own(before, limit, after)  # type: ignore[no-any-return]
        return super().due_page(before, limit, after)

    def scan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        own = getattr(self._store, "scan", None)
        if callable(own):
            return own(after, limit)  # type: ignore[no-any-return]
        return super().scan(after, limit)

    def close(self) -> None:
        self._store.close()


class _ExtendedFull(_Extended):
    """A ``FullStore`` written before the paged reads: its own ``holder_of``, ``claim`` and
    ``wait_for_change``, with ``BaseStore``'s ``due_page`` and ``scan`` where it lacks them."""

    _store: FullStore

    def holder_of(self, key: str) -> str | None:
        return self._store.holder_of(key)

    def claim(self, claim: Claim) -> ClaimResult:
        return self._store.claim(claim)

    def wait_for_change(self, key: str, version: int, timeout: float) -> None:
        self._store.wait_for_change(key, version, timeout)


#: ``FullStore``'s operations before the paged reads were added.
_EARLIER_FULL = ("holder_of", "claim", "wait_for_change")
#: ``AsyncStore``'s operations before the paged reads were added.
_EARLIER_ASYNC = (
    "aload",
    "acompare_and_set",
    "adelete",
    "aconsume_state",
    "afind_by_account",
    "adue_for_refresh",
    "aholder_of",
    "aclaim",
    "await_for_change",
    "aclose",
)


def _has(store: object, names: tuple[str, ...]) -> bool:
    return all(callable(getattr(store, name, None)) for name in names)


def is_async_store(store: object) -> bool:
    """True for an ``AsyncStore``, and for one written before ``adue_page`` and ``ascan`` were
    added (``as_async_store`` gives it ``AsyncBaseStore``'s defaults for those)."""
    return isinstance(store, AsyncStore) or _has(store, _EARLIER_ASYNC)


class _AsyncExtended(AsyncBaseStore):
    """An ``AsyncStore`` written before the paged reads, with ``AsyncBaseStore``'s defaults
    for those it lacks."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __repr__(self) -> str:
        return repr(self._store)

    async def aload(self, key: str) -> ConnectionRecord | None:
        return await self._store.aload(key)  # type: ignore[no-any-return]

    async def acompare_and_set(
        self, record: ConnectionRecord, expected_version: int | None
    ) -> bool:
        return await self._store.acompare_and_set(record, expected_version)  # type: ignore[no-any-return]

    async def adelete(self, key: str, expected_version: int) -> bool:
        return await self._store.adelete(key, expected_version)  # type: ignore[no-any-return]

    async def aconsume_state(
        self, nonce: str, expires_at: datetime, holder: str | None = None
    ) -> bool:
        return await self._store.aconsume_state(nonce, expires_at, holder)  # type: ignore[no-any-return]

    async def afind_by_account(self, account_id: int) -> list[ConnectionRecord]:
        return await self._store.afind_by_account(account_id)  # type: ignore[no-any-return]

    async def adue_for_refresh(self, before: datetime, limit: int) -> list[ConnectionRecord]:
        return await self._store.adue_for_refresh(before, limit)  # type: ignore[no-any-return]

    async def aholder_of(self, key: str) -> str | None:
        return await self._store.aholder_of(key)  # type: ignore[no-any-return]

    async def aclaim(self, claim: Claim) -> ClaimResult:
        return await self._store.aclaim(claim)  # type: ignore[no-any-return]

    async def await_for_change(self, key: str, version: int, timeout: float) -> None:
        await self._store.await_for_change(key, version, timeout)

    async def adue_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        own = getattr(self._store, "adue_page", None)
        if callable(own):
            return await own(before, limit, after)  # type: ignore[no-any-return]
        return await super().adue_page(before, limit, after)

    async def ascan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        own = getattr(self._store, "ascan", None)
        if callable(own):
            return await own(after, limit)  # type: ignore[no-any-return]
        return await super().ascan(after, limit)

    async def aclose(self) -> None:
        await self._store.aclose()


def as_full_store(store: Store) -> FullStore:
    """``store`` itself when it has every ``FullStore`` operation, else wrapped with defaults."""
    if isinstance(store, FullStore):
        return store
    if _has(store, _EARLIER_FULL):
        return _ExtendedFull(store)
    return _Extended(store)


class _Threaded:
    """A blocking ``FullStore`` awaited: each call in a worker thread, each wait a poll."""

    def __init__(self, store: FullStore) -> None:
        self._store = store

    def __repr__(self) -> str:
        return repr(self._store)

    async def aload(self, key: str) -> ConnectionRecord | None:
        return await asyncio.to_thread(self._store.load, key)

    async def acompare_and_set(
        self, record: ConnectionRecord, expected_version: int | None
    ) -> bool:
        return await asyncio.to_thread(self._store.compare_and_set, record, expected_version)

    async def adelete(self, key: str, expected_version: int) -> bool:
        return await asyncio.to_thread(self._store.delete, key, expected_version)

    async def aconsume_state(
        self, nonce: str, expires_at: datetime, holder: str | None = None
    ) -> bool:
        return await asyncio.to_thread(self._store.consume_state, nonce, expires_at, holder)

    async def afind_by_account(self, account_id: int) -> list[ConnectionRecord]:
        return await asyncio.to_thread(self._store.find_by_account, account_id)

    async def adue_for_refresh(self, before: datetime, limit: int) -> list[ConnectionRecord]:
        return await asyncio.to_thread(self._store.due_for_refresh, before, limit)

    async def aholder_of(self, key: str) -> str | None:
        return await asyncio.to_thread(self._store.holder_of, key)

    async def adue_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        return await asyncio.to_thread(self._store.due_page, before, limit, after)

    async def ascan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        return await asyncio.to_thread(self._store.scan, after, limit)

    async def aclaim(self, claim: Claim) -> ClaimResult:
        return await asyncio.to_thread(self._store.claim, claim)

    async def await_for_change(self, key: str, version: int, timeout: float) -> None:
        timeout = wait_seconds(timeout)  # NaN, negative or huge: bounded
        # Never a thread blocked in wait_for_change: poll, sleeping on the event loop.
        await _poll(lambda: self.aload(key), version, timeout)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._store.close)


def as_async_store(store: Store | AsyncStore) -> AsyncStore:
    """``store`` itself when it is an ``AsyncStore``; a blocking store run in worker threads."""
    if isinstance(store, AsyncStore):
        return store
    if _has(store, _EARLIER_ASYNC):
        return _AsyncExtended(store)
    return _Threaded(as_full_store(store))
