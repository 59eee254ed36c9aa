"""The store seam: ``Store`` (blocking) and ``AsyncStore`` (awaitable), and what they exchange.

A store keeps one record per connection key and a ledger of single-use keys (state nonces and
the store-wide code ledger). Correctness comes from one operation, the compare-and-set on a
record's ``version``; everything else either reads or is made of it.

``Store`` is the whole protocol the service drives; ``AsyncStore`` is the same operations,
awaited and ``a``-prefixed, so one class can implement both. A store written from scratch may
implement a few of them and take the rest from ``BaseStore`` (correct, slower); a blocking store
is awaited through ``as_async_store`` (worker threads).

Every failure of the underlying database reaches callers as ``StoreError``; ``check`` is the
exception: it reports what it found instead of raising.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

from .._records import ConnectionRecord

__all__ = [
    "AsyncStore",
    "Claim",
    "ClaimResult",
    "DueCursor",
    "LedgerEntry",
    "Loaded",
    "Store",
    "StoreCheck",
]


#: Where a page of ``due_page`` ended: the last record's refresh-token expiry (aware) and key.
DueCursor = tuple[datetime, str]


@attrs.frozen
class Loaded:
    """What ``load`` read: the record and the store's own clock at the read.

    ``now`` is read by the store in the same round trip as the record (the database's clock
    for a server: SQL ``now()``, Redis ``TIME``; the host's for an embedded store, through its
    injectable ``clock``), aware and in UTC. Leases are judged by it, so every worker on one
    store judges them by one clock.
    """

    #: The record stored under the key, or None.
    record: ConnectionRecord | None
    #: The store's clock when it read the record (aware, UTC).
    now: datetime

    @property
    def version(self) -> int:
        """The record's version; 0 when no record is stored (what ``wait_for_change`` takes)."""
        return 0 if self.record is None else self.record.version


@attrs.frozen
class StoreCheck:
    """What ``check`` found: a self-diagnosis, never a secret (no URL password, no token).

    ``ok`` is the one-word answer; ``detail`` says what is wrong in a sentence when it is not.
    """

    #: What kind of store it is: ``"memory"``, ``"sqlite"``, ``"postgres"``, ``"redis"``, or
    #: the class name of a store of one's own.
    kind: str
    #: The store answered a read.
    reachable: bool
    #: Its tables (keys, scripts) exist, at the schema this library knows. A store that makes
    #: its schema on first use reports False until then.
    schema_ready: bool
    #: The store's clock at the check (aware, UTC), when it was reachable.
    now: datetime | None = None
    #: What is wrong, in one sentence; empty when all is well.
    detail: str = ""
    #: Nothing found that would lose what the store keeps: False for a Redis whose memory
    #: policy may evict the store's keys, unless the store was told to allow it.
    safe: bool = True
    #: ``detail``'s sentence about the memory policy alone (Redis), empty when it risks
    #: nothing: so a caller can say each problem on its own without parsing ``detail``.
    memory_detail: str = ""
    #: ``detail`` without ``memory_detail``: what is wrong with reaching the store or its
    #: schema (by default ``detail`` itself when there is no ``memory_detail``).
    schema_detail: str = attrs.field(
        default=attrs.Factory(lambda self: "" if self.memory_detail else self.detail, True)
    )

    @property
    def ok(self) -> bool:
        """Reachable, with its schema in place, and safe."""
        return self.reachable and self.schema_ready and self.safe


@attrs.frozen
class LedgerEntry:
    """A single-use key taken for ``holder`` until ``expires_at`` (aware; the store's clock).

    ``key`` is a state nonce or ``code:<sha256 hex>``; ``holder`` is who may pass again (the
    digest of the code a state came with; the record key a code was claimed for).
    """

    key: str = attrs.field(repr=False)
    holder: str
    expires_at: datetime


class ClaimResult(enum.Enum):
    """What ``claim`` did. Only ``CLAIMED`` wrote anything."""

    #: The ledger entries are taken (or were already this holder's) and the record is written.
    CLAIMED = "claimed"
    #: The stored record's version is not ``expected_version`` any more: reload and look again.
    RECORD_CHANGED = "record_changed"
    #: The state nonce is held by another holder (another code came with the same state).
    STATE_USED = "state_used"
    #: The code is held by another record key: the code was claimed for another connection.
    CODE_TAKEN = "code_taken"


@attrs.frozen
class Claim:
    """The claim of a code: the state nonce, the code ledger entry and the record, one write.

    A store applies it atomically (one transaction, one script): either all three are written
    or none is. ``state`` is None for a code that came without a state (a widget install).
    """

    record: ConnectionRecord
    expected_version: int | None
    code: LedgerEntry
    state: LedgerEntry | None = None


@runtime_checkable
class Store(Protocol):
    """Where connection records live, for blocking callers (``AmoOAuth``).

    Every write is one atomic compare-and-set on ``version``. Implementations must be safe to
    call from many threads at once; stores meant for many processes or machines keep the
    compare-and-set atomic across them too. Every failure raises ``StoreError``.

    ``BaseStore`` implements ``find_by_account``, ``holder_of``, ``claim``,
    ``wait_for_change``, ``due_page`` and ``check`` from the others; a store overrides them to
    be faster (one transaction instead of three, an index instead of a scan), never to change
    what they mean.
    """

    def load(self, key: str) -> Loaded:
        """The record stored under ``key`` (``ConnectionRecord.key``; ``record`` None when there
        is none) and the store's clock, read in one round trip."""
        ...

    def compare_and_set(self, record: ConnectionRecord, expected_version: int | None) -> bool:
        """Write ``record`` under ``record.key`` if the stored version is still
        ``expected_version``.

        ``expected_version=None`` inserts and fails when a record exists (stored versions start
        at 1, so 0 never matches). ``record.version`` must be greater than ``expected_version``
        (``ValueError`` otherwise). Returns False, writing nothing, when another writer got
        there first.
        """
        ...

    def delete(self, key: str, expected_version: int) -> bool:
        """Delete the record if its version is still ``expected_version``."""
        ...

    def consume_state(self, nonce: str, expires_at: datetime, holder: str | None = None) -> bool:
        """Take a single-use key. True the first time, and again only for the same ``holder``.

        Without a holder a key is plainly single-use: True once, then never again. Keys may be
        forgotten after ``expires_at`` (aware, on the store's clock). The service keeps two
        kinds here: state nonces (held by the digest of the code they came with) and its code
        ledger (``code:<sha256 hex>``, held by the record key the code was claimed for).
        """
        ...

    def find_by_account(self, account_id: int) -> list[ConnectionRecord]:
        """Every record whose verified account is ``account_id``, by key."""
        ...

    def holder_of(self, key: str) -> str | None:
        """Who holds a ledger key taken by ``consume_state`` or ``claim``; None when it is free,
        forgotten, or held without a holder. A read: it takes nothing."""
        ...

    def claim(self, claim: Claim) -> ClaimResult:
        """Take ``claim.state`` and ``claim.code`` and write ``claim.record``, atomically."""
        ...

    def wait_for_change(self, key: str, version: int, timeout: float) -> None:
        """Return once the record's version may differ from ``version`` (0: no record), or
        after ``timeout`` seconds. It may return early; the caller loads and looks again.

        A change made before the call (after the caller's read) ends it at once."""
        ...

    def due_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        """One page of the records due for a refresh, read by keyset: up to ``limit``
        connected records whose refresh token expires before ``before`` (aware), soonest first,
        ties by key, strictly after ``after`` (the refresh-token expiry and key of the previous
        page's last record; None: from the start).

        Paging on with the last record's position visits every record due when the sweep
        began exactly once, whatever is written meanwhile: a record written after its position
        was passed is not met again unless its new expiry puts it after the cursor.

        Raises:
            ValueError: ``before`` or ``after``'s time is naive, or ``limit`` is negative.
            StoreError: the store failed or holds an unreadable record.
        """
        ...

    def scan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        """Up to ``limit`` records of any status, by key (code-point order), with keys strictly
        after ``after`` (None: from the first). For jobs that visit every record
        (``amo-oauth rotate-key``), and what ``BaseStore`` builds its reads of many on.

        Raises:
            ValueError: ``limit`` is negative.
            StoreError: the store failed or holds an unreadable record
                (``UndecryptableRecord`` for one its key does not open, naming the row's key).
        """
        ...

    def check(self) -> StoreCheck:
        """Diagnose the store: reachable, schema in place, its clock. Raises nothing for what
        it finds (a store down is ``reachable=False``); it creates nothing."""
        ...

    def close(self) -> None:
        """Release connections and files, and end every wait with ``StoreError``. Any later
        call raises ``StoreError``."""
        ...


@runtime_checkable
class AsyncStore(Protocol):
    """``Store`` for asyncio callers (``AsyncAmoOAuth``): each operation awaited, named with
    an ``a`` prefix so that one class can implement both protocols. Waiting never occupies a
    worker thread. Every failure raises ``StoreError``."""

    async def aload(self, key: str) -> Loaded:
        """See ``Store.load``."""
        ...

    async def acompare_and_set(
        self, record: ConnectionRecord, expected_version: int | None
    ) -> bool:
        """See ``Store.compare_and_set``."""
        ...

    async def adelete(self, key: str, expected_version: int) -> bool:
        """See ``Store.delete``."""
        ...

    async def aconsume_state(
        self, nonce: str, expires_at: datetime, holder: str | None = None
    ) -> bool:
        """See ``Store.consume_state``."""
        ...

    async def afind_by_account(self, account_id: int) -> list[ConnectionRecord]:
        """See ``Store.find_by_account``."""
        ...

    async def aholder_of(self, key: str) -> str | None:
        """See ``Store.holder_of``."""
        ...

    async def aclaim(self, claim: Claim) -> ClaimResult:
        """See ``Store.claim``."""
        ...

    async def await_for_change(self, key: str, version: int, timeout: float) -> None:
        """See ``Store.wait_for_change``."""
        ...

    async def adue_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        """See ``Store.due_page``."""
        ...

    async def ascan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        """See ``Store.scan``."""
        ...

    async def acheck(self) -> StoreCheck:
        """See ``Store.check``."""
        ...

    async def aclose(self) -> None:
        """See ``Store.close``."""
        ...
