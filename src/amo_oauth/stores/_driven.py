"""A server store written once: each operation one generator of the store's own database steps.

``PostgresStore`` and ``RedisStore`` each describe an operation once, as a ``Work``: a generator
that yields what it needs the database to do (a statement, a script call) and is sent the reply,
the way the flows yield their ``StoreOp``s. ``DrivenStore`` turns every operation into both
public methods, ``holder_of`` and ``aholder_of`` alike, by handing the same ``Work`` to the
store's blocking driver (``_run``) or to its awaited one (``_arun``); the drivers are
``_driving.drive``/``adrive`` with a ``perform`` per store. So the blocking and the awaited side
send exactly the same statements, and an operation exists once per store.

Waiting is written once too: a waiter makes sure the store's one cross-process listener
(``_listening.ChannelListener``: LISTEN, or a pub/sub subscription) is up, then waits on the
store's ``Hub`` (register, read once, sleep until fired). The listener fires the hub for every
change in any process; a write of this process fires it directly as well. No waiter polls.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

from .._errors import StoreError
from .._records import ConnectionRecord
from ._common import require_aware, wait_seconds
from ._hub import Hub
from ._listening import ChannelListener
from ._protocol import Claim, ClaimResult, DueCursor, Loaded, StoreCheck

__all__ = ["DrivenStore", "Offset", "Ops", "Work", "offset_of", "server_now"]

S = TypeVar("S")  # a step the store's drivers perform
R = TypeVar("R")  # what a performed step sends back
T = TypeVar("T")

#: What a server store adds to its server's clock (``clock_offset``): tests move time with it.
Offset = Callable[[], timedelta]


def offset_of(clock_offset: Offset | None) -> Offset:
    """``clock_offset``, or no offset at all."""
    return clock_offset if clock_offset is not None else _no_offset


def _no_offset() -> timedelta:
    return timedelta(0)


def server_now(moment: datetime, offset: Offset) -> datetime:
    """The store's clock: the server's ``moment`` (aware) plus ``offset``, in UTC."""
    return (require_aware(moment, "the server's clock") + offset()).astimezone(UTC)


class Work(Generic[S, R, T]):
    """One operation, ready to drive: its steps, what it does (for errors), and whether its
    steps must commit or roll back together (a transaction; a store whose steps are each
    atomic ignores it)."""

    __slots__ = ("action", "atomic", "steps")

    def __init__(self, action: str, steps: Generator[S, R, T], *, atomic: bool = False) -> None:
        self.action = action
        self.steps = steps
        self.atomic = atomic


class Ops(Protocol[S, R]):
    """A store's operations, each written once. Arguments are checked when an operation is
    made (``ValueError`` before any connection is borrowed), not when it is driven."""

    def load(self, key: str) -> Work[S, R, Loaded]: ...

    def compare_and_set(
        self, record: ConnectionRecord, expected_version: int | None
    ) -> Work[S, R, bool]: ...

    def delete(self, key: str, expected_version: int) -> Work[S, R, bool]: ...

    def consume_state(
        self, nonce: str, expires_at: datetime, holder: str | None
    ) -> Work[S, R, bool]: ...

    def holder_of(self, key: str) -> Work[S, R, str | None]: ...

    def claim(self, claim: Claim) -> Work[S, R, ClaimResult]: ...

    def find_by_account(self, account_id: int) -> Work[S, R, list[ConnectionRecord]]: ...

    def due_page(
        self, before: datetime, limit: int, after: DueCursor | None
    ) -> Work[S, R, list[ConnectionRecord]]: ...

    def scan(self, after: str | None, limit: int) -> Work[S, R, list[ConnectionRecord]]: ...

    def check(self) -> Work[S, R, StoreCheck]: ...


class DrivenStore(Generic[S, R]):
    """``Store``'s and ``AsyncStore``'s operations, each made once by ``_ops`` and run by the
    subclass's ``_run`` (blocking) or ``_arun`` (awaited, occupying no thread).

    Every database failure raises ``StoreError`` (naming the server, never a password); a
    store holding an unreadable record raises ``UnreadableRecord`` / ``UndecryptableRecord``.
    """

    _ops: Ops[S, R]
    _kind: str
    #: The store's one cross-process listener in this process; fires ``hub``.
    _listener: ChannelListener[Any]
    #: Where this store's waiters in this process wait.
    hub: Hub

    def _run(self, work: Work[S, R, T]) -> T:
        raise NotImplementedError

    async def _arun(self, work: Work[S, R, T]) -> T:
        raise NotImplementedError

    def _run_check(self, work: Work[S, R, StoreCheck]) -> StoreCheck:
        """Run ``check``'s work. A store that vets its server before its first call (Redis:
        its memory policy) runs it without that, since ``check`` reports what it refuses."""
        return self._run(work)

    async def _arun_check(self, work: Work[S, R, StoreCheck]) -> StoreCheck:
        """``_run_check``, awaited."""
        return await self._arun(work)

    def _check_open(self) -> None:
        """Raise ``StoreError`` when the store is closed."""
        raise NotImplementedError

    @property
    def _listen_timeout(self) -> float:
        """Seconds a waiter waits for the listener's subscription before ``StoreError``."""
        raise NotImplementedError

    def load(self, key: str) -> Loaded:
        """The record stored under ``key`` (``ConnectionRecord.key``; ``record`` None when there
        is none) and the store's clock (the server's, plus ``clock_offset``), read together.

        Raises:
            StoreError: the database failed or is not migrated, or the record is unreadable.
        """
        return self._run(self._ops.load(key))

    async def aload(self, key: str) -> Loaded:
        """See ``load``."""
        return await self._arun(self._ops.load(key))

    def compare_and_set(self, record: ConnectionRecord, expected_version: int | None) -> bool:
        """Write ``record`` if the stored version is still ``expected_version`` (None: insert).

        Returns:
            True when written; False, writing nothing, when another writer got there first.

        Raises:
            ValueError: ``record.version`` does not move past ``expected_version`` (or a number
                in it does not fit the database).
            StoreError: the database failed (a write whose reply was lost may have been
                applied) or is not migrated.
        """
        return self._wrote(
            record.key, self._run(self._ops.compare_and_set(record, expected_version))
        )

    async def acompare_and_set(
        self, record: ConnectionRecord, expected_version: int | None
    ) -> bool:
        """See ``compare_and_set``."""
        written = await self._arun(self._ops.compare_and_set(record, expected_version))
        return self._wrote(record.key, written)

    def delete(self, key: str, expected_version: int) -> bool:
        """Delete the record if its version is still ``expected_version``.

        Raises:
            StoreError: the database failed or is not migrated.
        """
        return self._wrote(key, self._run(self._ops.delete(key, expected_version)))

    async def adelete(self, key: str, expected_version: int) -> bool:
        """See ``delete``."""
        return self._wrote(key, await self._arun(self._ops.delete(key, expected_version)))

    def consume_state(self, nonce: str, expires_at: datetime, holder: str | None = None) -> bool:
        """Take a single-use key until ``expires_at`` (aware): True the first time, and again
        only for the same ``holder``. Expired keys are free again.

        Raises:
            ValueError: ``expires_at`` is naive.
            StoreError: the database failed or is not migrated.
        """
        return self._run(self._ops.consume_state(nonce, expires_at, holder))

    async def aconsume_state(
        self, nonce: str, expires_at: datetime, holder: str | None = None
    ) -> bool:
        """See ``consume_state``."""
        return await self._arun(self._ops.consume_state(nonce, expires_at, holder))

    def holder_of(self, key: str) -> str | None:
        """Who holds a live ledger key; None when it is free, expired or held without a holder.

        Raises:
            StoreError: the database failed or is not migrated.
        """
        return self._run(self._ops.holder_of(key))

    async def aholder_of(self, key: str) -> str | None:
        """See ``holder_of``."""
        return await self._arun(self._ops.holder_of(key))

    def claim(self, claim: Claim) -> ClaimResult:
        """Take ``claim.state`` and ``claim.code`` and write ``claim.record`` atomically: all
        three are written, or (any result but ``CLAIMED``) none is.

        Raises:
            ValueError: as ``compare_and_set``, or an ``expires_at`` is naive.
            StoreError: the database failed (the claim may or may not have been applied) or
                is not migrated.
        """
        result = self._run(self._ops.claim(claim))
        self._wrote(claim.record.key, result is ClaimResult.CLAIMED)
        return result

    async def aclaim(self, claim: Claim) -> ClaimResult:
        """See ``claim``."""
        result = await self._arun(self._ops.claim(claim))
        self._wrote(claim.record.key, result is ClaimResult.CLAIMED)
        return result

    def find_by_account(self, account_id: int) -> list[ConnectionRecord]:
        """Every record whose verified account is ``account_id``, by key.

        Raises:
            StoreError: the database failed or is not migrated, or a record is unreadable.
        """
        return self._run(self._ops.find_by_account(account_id))

    async def afind_by_account(self, account_id: int) -> list[ConnectionRecord]:
        """See ``find_by_account``."""
        return await self._arun(self._ops.find_by_account(account_id))

    def due_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        """Up to ``limit`` connected records whose refresh token expires strictly before
        ``before`` (aware), soonest first, ties by key, strictly after the position ``after``
        (the last record's refresh-token expiry and key; None: from the start): one keyset
        read on an index, the same cost wherever the page starts.

        Raises:
            ValueError: ``before`` or ``after``'s time is naive, or ``limit`` is negative.
            StoreError: the database failed or is not migrated, or a record is unreadable.
        """
        return self._run(self._ops.due_page(before, limit, after))

    async def adue_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        """See ``due_page``."""
        return await self._arun(self._ops.due_page(before, limit, after))

    def scan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        """Up to ``limit`` records of any status, by key (byte order), with keys strictly after
        ``after`` (None: from the first).

        Raises:
            ValueError: ``limit`` is negative.
            StoreError: the database failed or is not migrated, or a record is unreadable
                (``UndecryptableRecord`` naming the row's key).
        """
        return self._run(self._ops.scan(after, limit))

    async def ascan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        """See ``scan``."""
        return await self._arun(self._ops.scan(after, limit))

    def check(self) -> StoreCheck:
        """Diagnose the store: reachable, its schema in place, its clock. Raises nothing for
        what it finds (a server down, a closed store: ``reachable=False``); creates nothing."""
        try:
            return self._run_check(self._ops.check())
        except StoreError as exc:
            return StoreCheck(self._kind, reachable=False, schema_ready=False, detail=str(exc))

    async def acheck(self) -> StoreCheck:
        """See ``check``."""
        try:
            return await self._arun_check(self._ops.check())
        except StoreError as exc:
            return StoreCheck(self._kind, reachable=False, schema_ready=False, detail=str(exc))

    # -- waiting -----------------------------------------------------------------------------

    def wait_for_change(self, key: str, version: int, timeout: float) -> None:
        """Return once the record's version may differ from ``version`` (0: no record), at
        once when it differs already, or after ``timeout`` seconds; it may return early.
        Woken by a write of any process: the store's one listener in this process hears it
        and fires the hub. The waiter reads the store once, never in a loop.

        Raises:
            StoreError: the database failed, the listener could not subscribe, or the store
                is closed (before or during the wait).
        """
        timeout = wait_seconds(timeout)  # NaN, negative or huge: bounded
        self._check_open()
        # Registered, then subscribed, then read: a change committed after the read is heard,
        # and a listener lost before the registration (its ``lost`` firing no watch of ours) is
        # replaced before the read; one lost after it fires our watch.
        self.hub.wait(
            key,
            version,
            timeout,
            lambda: self.load(key).version,
            registered=lambda: self._listener.ensure(self._listen_timeout),
        )
        self._check_open()

    async def await_for_change(self, key: str, version: int, timeout: float) -> None:
        """See ``wait_for_change``; waits on the event loop, occupying no thread."""
        timeout = wait_seconds(timeout)
        self._check_open()

        async def listen() -> None:  # after the registration, before the read: see above
            await self._listener.aensure(self._listen_timeout)

        async def read() -> int:
            return (await self.aload(key)).version

        await self.hub.await_change(key, version, timeout, read, registered=listen)
        self._check_open()

    def _wrote(self, key: str, written: bool) -> bool:
        """After a write of this process: its waiters on ``key`` wake now, without waiting
        for the listener to hear the server's notification."""
        if written:
            self.hub.notify(key)
        return written
