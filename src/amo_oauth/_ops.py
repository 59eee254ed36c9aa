"""What a flow may ask of the outside world: one typed operation per store call, a request, a
pause, an event for the application.

A flow (``_flows_*.py``) is a generator that yields these and is sent their results; it does no
I/O itself. Each store operation knows how to run on a blocking ``Store`` and on an
``AsyncStore``, so mypy checks every call against the protocols, and a test can fail exactly one
kind of operation. ``perform`` is how a flow yields one and gets its typed result back.
"""

from __future__ import annotations

from collections.abc import Generator
from datetime import datetime
from typing import Any, Final, Generic, TypeVar, cast

import attrs
import httpx

from ._lifecycle_events import LifecycleEvent
from ._records import ConnectionRecord
from .stores._protocol import AsyncStore, Claim, ClaimResult, DueCursor, Loaded, Store

__all__ = [
    "STORE_METHODS",
    "ClaimOp",
    "CompareAndSet",
    "ConsumeState",
    "Delete",
    "DuePage",
    "Emit",
    "FindByAccount",
    "Flow",
    "HolderOf",
    "Load",
    "Op",
    "Send",
    "Sleep",
    "StoreOp",
    "WaitForChange",
    "perform",
]

T = TypeVar("T")


class StoreOp(Generic[T]):
    """One call on a store; ``run`` and ``arun`` make it on either kind."""

    def run(self, store: Store) -> T:
        raise NotImplementedError

    async def arun(self, store: AsyncStore) -> T:
        raise NotImplementedError


@attrs.frozen
class Load(StoreOp[Loaded]):
    """The record under ``key`` (or None) and the store's clock, read in one round trip: the
    flows judge every lease and ledger expiry by that clock (``Records.now``)."""

    key: str

    def run(self, store: Store) -> Loaded:
        return store.load(self.key)

    async def arun(self, store: AsyncStore) -> Loaded:
        return await store.aload(self.key)


@attrs.frozen
class CompareAndSet(StoreOp[bool]):
    record: ConnectionRecord
    expected_version: int | None

    def run(self, store: Store) -> bool:
        return store.compare_and_set(self.record, self.expected_version)

    async def arun(self, store: AsyncStore) -> bool:
        return await store.acompare_and_set(self.record, self.expected_version)


@attrs.frozen
class Delete(StoreOp[bool]):
    key: str
    expected_version: int

    def run(self, store: Store) -> bool:
        return store.delete(self.key, self.expected_version)

    async def arun(self, store: AsyncStore) -> bool:
        return await store.adelete(self.key, self.expected_version)


@attrs.frozen
class ConsumeState(StoreOp[bool]):
    nonce: str = attrs.field(repr=False)
    expires_at: datetime
    holder: str | None = None

    def run(self, store: Store) -> bool:
        return store.consume_state(self.nonce, self.expires_at, self.holder)

    async def arun(self, store: AsyncStore) -> bool:
        return await store.aconsume_state(self.nonce, self.expires_at, self.holder)


@attrs.frozen
class HolderOf(StoreOp[str | None]):
    key: str = attrs.field(repr=False)

    def run(self, store: Store) -> str | None:
        return store.holder_of(self.key)

    async def arun(self, store: AsyncStore) -> str | None:
        return await store.aholder_of(self.key)


@attrs.frozen
class ClaimOp(StoreOp[ClaimResult]):
    claim: Claim

    def run(self, store: Store) -> ClaimResult:
        return store.claim(self.claim)

    async def arun(self, store: AsyncStore) -> ClaimResult:
        return await store.aclaim(self.claim)


@attrs.frozen
class FindByAccount(StoreOp[list[ConnectionRecord]]):
    account_id: int

    def run(self, store: Store) -> list[ConnectionRecord]:
        return store.find_by_account(self.account_id)

    async def arun(self, store: AsyncStore) -> list[ConnectionRecord]:
        return await store.afind_by_account(self.account_id)


@attrs.frozen
class DuePage(StoreOp[list[ConnectionRecord]]):
    before: datetime
    limit: int
    after: DueCursor | None = None

    def run(self, store: Store) -> list[ConnectionRecord]:
        return store.due_page(self.before, self.limit, self.after)

    async def arun(self, store: AsyncStore) -> list[ConnectionRecord]:
        return await store.adue_page(self.before, self.limit, self.after)


@attrs.frozen
class WaitForChange(StoreOp[None]):
    key: str
    version: int
    timeout: float

    def run(self, store: Store) -> None:
        store.wait_for_change(self.key, self.version, self.timeout)

    async def arun(self, store: AsyncStore) -> None:
        await store.await_for_change(self.key, self.version, self.timeout)


#: The ``Store`` method each operation calls, by the operation's class name: how the metrics
#: and the fault kit (``testing.faults``) name an operation.
STORE_METHODS: Final = {
    "Load": "load",
    "CompareAndSet": "compare_and_set",
    "Delete": "delete",
    "ConsumeState": "consume_state",
    "HolderOf": "holder_of",
    "ClaimOp": "claim",
    "FindByAccount": "find_by_account",
    "DuePage": "due_page",
    "WaitForChange": "wait_for_change",
}


@attrs.frozen
class Send:
    """Send a request to amoCRM; the driver answers with the response or throws ProviderError."""

    request: httpx.Request


@attrs.frozen
class Sleep:
    seconds: float


@attrs.frozen
class Emit:
    """Tell the application's callbacks (``on()``) about a change the flow just wrote; the
    driver answers None. A callback's failure never reaches the flow."""

    event: LifecycleEvent


Op = StoreOp[Any] | Send | Sleep | Emit
Flow = Generator[Op, Any, T]


def perform(op: StoreOp[T]) -> Generator[StoreOp[T], Any, T]:
    """Yield one store operation and return its result, typed: ``x = yield from perform(op)``."""
    return cast(T, (yield op))
