"""The defaults of the store seam, and the one way a blocking store is awaited.

- ``BaseStore``: subclass it, implement ``load``, ``compare_and_set``, ``delete``,
  ``consume_state``, ``scan`` and ``close``, and get the rest of ``Store``: ``find_by_account``
  and ``due_page`` read every record through ``scan`` (correct; O(n) per call, where a store
  with an index reads only what it returns), ``claim`` is three writes, ``holder_of`` reads
  nothing (None), ``wait_for_change`` waits on a ``Hub`` whose one poller loads the watched
  keys, and ``check`` is one ``load``.
- ``AsyncSide``: a blocking store's ``AsyncStore`` operations, written once: each runs the
  blocking operation (in a worker thread unless the store says its operations never block),
  and a wait awaits the store's hub, holding no thread. ``MemoryStore`` and ``SQLiteStore``
  inherit it; ``as_async_store`` wraps any other blocking store in it.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from .._errors import StoreError
from .._records import ConnectionRecord, ConnectionStatus
from ._common import check_after, check_limit, require_aware
from ._hub import Hub, LoadPoller
from ._protocol import (
    AsyncStore,
    Claim,
    ClaimResult,
    DueCursor,
    Loaded,
    Store,
    StoreCheck,
)

__all__ = [
    "AsyncSide",
    "BaseStore",
    "as_async_store",
    "is_async_store",
    "utc_now",
]

T = TypeVar("T")

#: Records ``BaseStore``'s reads of many ask ``scan`` for at a time.
_SCAN_PAGE = 500


def utc_now() -> datetime:
    """The host's clock, aware, in UTC: the default clock of the embedded stores."""
    return datetime.now(UTC)


def _missing(operation: str) -> NotImplementedError:
    return NotImplementedError(
        f"this store does not implement {operation}, one of the six BaseStore builds on"
    )


def every_record(store: Store) -> Iterator[ConnectionRecord]:
    """Every record of ``store``, by key, read through ``scan`` a page at a time."""
    after: str | None = None
    while True:
        page = store.scan(after, _SCAN_PAGE)
        yield from page
        if len(page) < _SCAN_PAGE:
            return
        after = page[-1].key


class BaseStore:
    """``Store``'s operations from six of them: subclass it and implement ``load``,
    ``compare_and_set``, ``delete``, ``consume_state``, ``scan`` and ``close``. Override any
    default to make it faster, never to change what it means.
    """

    #: Guards the making of each instance's hub; replaced in a forked child
    #: (``_new_hub_lock_in_child``).
    _hub_lock = threading.Lock()

    def load(self, key: str) -> Loaded:
        raise _missing("load(key)")

    def compare_and_set(self, record: ConnectionRecord, expected_version: int | None) -> bool:
        raise _missing("compare_and_set(record, expected_version)")

    def delete(self, key: str, expected_version: int) -> bool:
        raise _missing("delete(key, expected_version)")

    def consume_state(self, nonce: str, expires_at: datetime, holder: str | None = None) -> bool:
        raise _missing("consume_state(nonce, expires_at, holder)")

    def scan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        raise _missing("scan(after, limit)")

    def close(self) -> None:
        raise _missing("close()")

    @property
    def hub(self) -> Hub:
        """Where this store's waiters wait: one per store object, made on first use, whose
        poller loads each watched key (nothing tells it of a write)."""
        hub: Hub | None = self.__dict__.get("_base_hub")
        if hub is None:
            with BaseStore._hub_lock:
                hub = self.__dict__.setdefault(
                    "_base_hub", Hub(LoadPoller(self.load), name=type(self).__name__)
                )
        return hub

    def find_by_account(self, account_id: int) -> list[ConnectionRecord]:
        """Every record whose verified account is ``account_id``, by key: a ``scan`` of all."""
        return [
            record
            for record in every_record(self)
            if record.account is not None and record.account.id == account_id
        ]

    def due_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        """See ``Store.due_page``: a ``scan`` of every record each page, so a sweep over n
        records costs O(n²/limit) reads. A store with an index overrides it (keyset)."""
        cutoff = require_aware(before, "before").timestamp()
        check_limit(limit)
        cursor = check_after(after)
        due = (
            ((moment, record.key), record)
            for record in every_record(self)
            if record.status == ConnectionStatus.CONNECTED
            and record.tokens is not None
            and (moment := record.tokens.refresh_expires_at.timestamp()) < cutoff
            and (cursor is None or (moment, record.key) > cursor)
        )
        return [record for _, record in heapq.nsmallest(limit, due, key=lambda pair: pair[0])]

    def holder_of(self, key: str) -> str | None:
        """Unknown (None) here: ``consume_state`` has no read. Duplicates are then found by
        ``claim`` instead of before it, which costs a write, not correctness."""
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
        """See ``Store.wait_for_change``: a watch on the hub, fired by its poller."""
        self.hub.wait(key, version, timeout, lambda: self.load(key).version)

    def check(self) -> StoreCheck:
        """One ``load``: reachable when it answers; a store of one's own has no schema to
        look for, so it is taken as ready."""
        kind = type(self).__name__
        try:
            loaded = self.load("amo_oauth:check")
        except StoreError as exc:
            return StoreCheck(kind, reachable=False, schema_ready=False, detail=str(exc))
        return StoreCheck(kind, reachable=True, schema_ready=True, now=loaded.now)


def _new_hub_lock_in_child() -> None:
    """A forked child: a thread it does not have may have held the class's lock at the fork
    (``stores/_forks.py``). A class attribute, so no instance's ``after_fork`` replaces it."""
    BaseStore._hub_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_hub_lock_in_child)


class AsyncSide:
    """``AsyncStore``'s operations for a blocking store, each the blocking one: written once
    for every store that is blocking underneath. Waits await ``_waits()``'s hub.

    ``_inline``: True when the blocking operations never block (a lock held for a few
    dictionary operations): they then run on the event loop, with no worker thread.
    """

    _inline: ClassVar[bool] = False

    def _blocking(self) -> Store:
        """The blocking store the operations run on."""
        raise NotImplementedError

    def _waits(self) -> Hub:
        """The hub the blocking store's waiters wait on."""
        raise NotImplementedError

    def _check_open(self) -> None:
        """Raise ``StoreError`` if the store is closed (checked after a wait ends)."""

    async def _call(self, operation: Callable[..., T], *args: Any) -> T:
        if self._inline:
            return operation(*args)
        return await asyncio.to_thread(operation, *args)

    async def aload(self, key: str) -> Loaded:
        """See ``Store.load``."""
        return await self._call(self._blocking().load, key)

    async def acompare_and_set(
        self, record: ConnectionRecord, expected_version: int | None
    ) -> bool:
        """See ``Store.compare_and_set``."""
        return await self._call(self._blocking().compare_and_set, record, expected_version)

    async def adelete(self, key: str, expected_version: int) -> bool:
        """See ``Store.delete``."""
        return await self._call(self._blocking().delete, key, expected_version)

    async def aconsume_state(
        self, nonce: str, expires_at: datetime, holder: str | None = None
    ) -> bool:
        """See ``Store.consume_state``."""
        return await self._call(self._blocking().consume_state, nonce, expires_at, holder)

    async def afind_by_account(self, account_id: int) -> list[ConnectionRecord]:
        """See ``Store.find_by_account``."""
        return await self._call(self._blocking().find_by_account, account_id)

    async def aholder_of(self, key: str) -> str | None:
        """See ``Store.holder_of``."""
        return await self._call(self._blocking().holder_of, key)

    async def aclaim(self, claim: Claim) -> ClaimResult:
        """See ``Store.claim``."""
        return await self._call(self._blocking().claim, claim)

    async def adue_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        """See ``Store.due_page``."""
        return await self._call(self._blocking().due_page, before, limit, after)

    async def ascan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        """See ``Store.scan``."""
        return await self._call(self._blocking().scan, after, limit)

    async def acheck(self) -> StoreCheck:
        """See ``Store.check``."""
        return await self._call(self._blocking().check)

    async def aclose(self) -> None:
        """See ``Store.close``."""
        await self._call(self._blocking().close)

    async def await_for_change(self, key: str, version: int, timeout: float) -> None:
        """See ``Store.wait_for_change``: a watch on the hub, awaited; only the one read after
        registering runs the blocking store."""

        async def read() -> int:
            return (await self.aload(key)).version

        await self._waits().await_change(key, version, timeout, read)
        self._check_open()


class _Threaded(AsyncSide):
    """A blocking store that is not an ``AsyncStore``, awaited through ``AsyncSide``."""

    def __init__(self, store: Store) -> None:
        self._store = store
        own = getattr(store, "hub", None)
        # A store with a hub fires it on its own writes; any other is polled, by one thread.
        self._hub = (
            own if isinstance(own, Hub) else Hub(LoadPoller(store.load), name=type(store).__name__)
        )

    def __repr__(self) -> str:
        return repr(self._store)

    def _blocking(self) -> Store:
        return self._store

    def _waits(self) -> Hub:
        return self._hub


def as_async_store(store: Store | AsyncStore) -> AsyncStore:
    """``store`` itself when it is an ``AsyncStore``; a blocking store run in worker threads."""
    if isinstance(store, AsyncStore):
        return store
    return _Threaded(store)


def is_async_store(store: object) -> bool:
    """True for an ``AsyncStore``."""
    return isinstance(store, AsyncStore)
