"""A server store written once: each operation one generator of the store's own database steps.

``PostgresStore`` and ``RedisStore`` each describe an operation once, as a ``Work``: a generator
that yields what it needs the database to do (a statement, a script call) and is sent the reply,
the way the flows yield their ``StoreOp``s. ``DrivenStore`` turns every operation into both
public methods, ``holder_of`` and ``aholder_of`` alike, by handing the same ``Work`` to the
store's blocking driver (``_run``) or to its awaited one (``_arun``); the drivers are
``_driving.drive``/``adrive`` with a ``perform`` per store. So the blocking and the awaited side
send exactly the same statements, and an operation exists once per store.
"""

from __future__ import annotations

from collections.abc import Generator
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from .._records import ConnectionRecord
from ._protocol import Claim, ClaimResult, DueCursor

__all__ = ["DrivenStore", "Ops", "Work"]

S = TypeVar("S")  # a step the store's drivers perform
R = TypeVar("R")  # what a performed step sends back
T = TypeVar("T")


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

    def load(self, key: str) -> Work[S, R, ConnectionRecord | None]: ...

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

    def due_for_refresh(
        self, before: datetime, limit: int
    ) -> Work[S, R, list[ConnectionRecord]]: ...

    def due_page(
        self, before: datetime, limit: int, after: DueCursor | None
    ) -> Work[S, R, list[ConnectionRecord]]: ...

    def scan(self, after: str | None, limit: int) -> Work[S, R, list[ConnectionRecord]]: ...


class DrivenStore(Generic[S, R]):
    """``Store``'s and ``AsyncStore``'s operations, each made once by ``_ops`` and run by the
    subclass's ``_run`` (blocking) or ``_arun`` (awaited, occupying no thread).

    Every database failure raises ``StoreError`` (naming the server, never a password); a
    store holding an unreadable record raises ``UnreadableRecord`` / ``UndecryptableRecord``.
    """

    _ops: Ops[S, R]

    def _run(self, work: Work[S, R, T]) -> T:
        raise NotImplementedError

    async def _arun(self, work: Work[S, R, T]) -> T:
        raise NotImplementedError

    def load(self, key: str) -> ConnectionRecord | None:
        """The record stored under ``key`` (``ConnectionRecord.key``), or None.

        Raises:
            StoreError: the database failed or is not migrated, or the record is unreadable.
        """
        return self._run(self._ops.load(key))

    async def aload(self, key: str) -> ConnectionRecord | None:
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
        return self._run(self._ops.compare_and_set(record, expected_version))

    async def acompare_and_set(
        self, record: ConnectionRecord, expected_version: int | None
    ) -> bool:
        """See ``compare_and_set``."""
        return await self._arun(self._ops.compare_and_set(record, expected_version))

    def delete(self, key: str, expected_version: int) -> bool:
        """Delete the record if its version is still ``expected_version``.

        Raises:
            StoreError: the database failed or is not migrated.
        """
        return self._run(self._ops.delete(key, expected_version))

    async def adelete(self, key: str, expected_version: int) -> bool:
        """See ``delete``."""
        return await self._arun(self._ops.delete(key, expected_version))

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
        return self._run(self._ops.claim(claim))

    async def aclaim(self, claim: Claim) -> ClaimResult:
        """See ``claim``."""
        return await self._arun(self._ops.claim(claim))

    def find_by_account(self, account_id: int) -> list[ConnectionRecord]:
        """Every record whose verified account is ``account_id``, by key.

        Raises:
            StoreError: the database failed or is not migrated, or a record is unreadable.
        """
        return self._run(self._ops.find_by_account(account_id))

    async def afind_by_account(self, account_id: int) -> list[ConnectionRecord]:
        """See ``find_by_account``."""
        return await self._arun(self._ops.find_by_account(account_id))

    def due_for_refresh(self, before: datetime, limit: int) -> list[ConnectionRecord]:
        """Up to ``limit`` connected records whose refresh token expires strictly before
        ``before`` (aware), soonest first, ties by key.

        Raises:
            ValueError: ``before`` is naive, or ``limit`` is negative.
            StoreError: the database failed or is not migrated, or a record is unreadable.
        """
        return self._run(self._ops.due_for_refresh(before, limit))

    async def adue_for_refresh(self, before: datetime, limit: int) -> list[ConnectionRecord]:
        """See ``due_for_refresh``."""
        return await self._arun(self._ops.due_for_refresh(before, limit))

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
        """Up to ``limit`` records of any state, by key (byte order), with keys strictly after
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
