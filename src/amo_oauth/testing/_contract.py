"""``StoreContract``: the conformance suite every store passes, as a pytest test class.

```python
import pytest

from amo_oauth.testing import StoreContract


class TestMyStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        s = MyStore(tmp_path / "db")
        yield s
        s.close()
```

The subclass gives one fixture, ``store``: a new, empty store per test (a ``Store``, an
``AsyncStore``, or both), closed by the fixture after the test. Every case then runs against it:
the compare-and-set on ``version``, deletes, the single-use ledger (``consume_state``,
``holder_of``), ``claim``, ``wait_for_change``, the queries, ``close``, thread races that prove
the writes atomic, a thousand threads and a thousand tasks waiting on one change (and a write
landing between a waiter's read and its registration, injected through ``Hub.before_register``
for a store that waits on a hub), ``check``, and property tests over any record. A blocking
store's awaitable side is taken from ``as_async_store``, exactly as the service does; cases
about ``holder_of`` are skipped for a store that keeps ``BaseStore``'s default (which reads
nothing).

Optional hooks:

- ``failing_store`` (fixture): a store whose backend fails on every call, to check that every
  failure reaches callers as ``StoreError``. By default, the ``store`` fixture's store closed.
- ``run_async(self, main)``: runs one coroutine for the async cases; ``asyncio.run`` by default.

The cases use only the store's public operations, wait with generous bounds (30 seconds) that
only a hung store reaches, and assert no durations. Importing this module needs ``pytest`` and
``hypothesis`` (``pip install 'amo_oauth[testing]'``); ``import amo_oauth`` and
``import amo_oauth.testing`` do not import it until ``StoreContract`` is used.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import attrs

from .._errors import StoreError
from .._extras import needs_extra
from .._reasons import CONNECTION_ERRORS
from .._records import (
    Account,
    ConnectionRecord,
    ConnectionStatus,
    ErrorInfo,
    Lease,
    SeenCode,
    TokenSet,
    code_digest,
)
from ..stores._base import BaseStore, as_async_store
from ..stores._common import due_position
from ..stores._hub import Hub
from ..stores._protocol import (
    AsyncStore,
    Claim,
    ClaimResult,
    DueCursor,
    LedgerEntry,
    Store,
    StoreCheck,
)

with needs_extra("testing", "StoreContract"):  # pytest and hypothesis
    import pytest
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

__all__ = ["StoreContract"]

T = TypeVar("T")
AnyStore = Store | AsyncStore

#: A fixed moment for record contents (never compared with the real clock).
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
#: How long a thread or task may take to finish where a working store finishes at once. Only a
#: hung store reaches it; no case measures time.
HANG = 120.0
#: A wait a working store ends early: far longer than any test may take.
FOREVER = 3600.0


#: How far the ``skewed_store`` cases move a store's clock off the real one.
STORE_SKEW = timedelta(hours=2)


def later(minutes: float = 10) -> datetime:
    """A ledger expiry ``minutes`` from now (aware, real clock)."""
    return datetime.now(UTC) + timedelta(minutes=minutes)


def make_record(
    connection_id: str = "c1",
    *,
    version: int = 1,
    status: ConnectionStatus = ConnectionStatus.CONNECTED,
    account_id: int | None = 42,
    refresh_expires_at: datetime = T0 + timedelta(days=90),
    host: str | None = "example.amocrm.ru",
    integration: str | None = None,
    widget: bool = False,
) -> ConnectionRecord:
    """A connected record whose tokens name its id and version."""
    return ConnectionRecord(
        connection_id,
        status=status,
        version=version,
        host=host,
        tokens=TokenSet(
            access_token=f"access-{connection_id}-{version}",
            refresh_token=f"refresh-{connection_id}-{version}",
            expires_at=T0 + timedelta(days=1),
            refresh_expires_at=refresh_expires_at,
        ),
        account=None if account_id is None else Account(account_id, "example", "Example LLC"),
        connected_at=T0,
        updated_at=T0,
        integration=integration,
        widget=widget,
    )


def full_record() -> ConnectionRecord:
    """A record with every field set, its datetimes in three different offsets."""
    msk = timezone(timedelta(hours=3))
    return ConnectionRecord(
        "user-42/Ünïcode ✓",
        status=ConnectionStatus.ERROR,
        version=7,
        host="acme.kommo.com",
        tokens=TokenSet(
            access_token="eyJ0eXAiOiJKV1Qi.access",
            refresh_token="def50200.refresh",
            expires_at=datetime(2025, 3, 2, 15, 0, 0, 123456, tzinfo=msk),
            refresh_expires_at=datetime(2025, 5, 30, 12, 0, tzinfo=UTC),
            token_type="bearer",
        ),
        account=Account(31234567, "acme", 'ООО "Акме"'),
        error=ErrorInfo("verify_failed", "hint: a:b%c", datetime(2025, 3, 1, 9, 30, tzinfo=msk)),
        seen_codes=(SeenCode("a" * 64, T0), SeenCode("b" * 64, datetime(2025, 3, 1, tzinfo=msk))),
        lease=Lease("worker-7", "refresh", datetime(2025, 3, 1, 9, 31, tzinfo=UTC)),
        connected_at=datetime(2025, 2, 1, 0, 0, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
        updated_at=datetime(2025, 3, 1, 9, 30, 0, 1, tzinfo=UTC),
        integration="client:id%7",
        widget=True,
    )


def offsets(record: ConnectionRecord) -> list[timedelta | None]:
    """The UTC offset of every datetime in ``record`` (== on datetimes ignores them)."""
    moments = [record.connected_at, record.updated_at]
    if record.tokens:
        moments += [record.tokens.expires_at, record.tokens.refresh_expires_at]
    moments += [record.error.at if record.error else None]
    moments += [record.lease.expires_at if record.lease else None]
    moments += [seen.at for seen in record.seen_codes]
    return [moment.utcoffset() if moment else None for moment in moments]


def kept_offsets(loaded: ConnectionRecord, given: ConnectionRecord) -> bool:
    """A store keeps either the offsets it was given (in memory) or UTC (serialized)."""
    utc = [None if offset is None else timedelta(0) for offset in offsets(given)]
    return offsets(loaded) in (offsets(given), utc)


def make_claim(
    connection_id: str = "c1",
    code: str = "code-1",
    state: str | None = "state-1",
    *,
    version: int = 1,
    expected_version: int | None = None,
) -> Claim:
    """The claim of ``code`` (with ``state``) for a record ``connection_id``, as the service
    builds it: the state held by the code's digest, the code held by the record's key."""
    record = make_record(connection_id, version=version, status=ConnectionStatus.EXCHANGED)
    digest = code_digest(code)
    return Claim(
        record=record,
        expected_version=expected_version,
        code=LedgerEntry(f"code:{digest}", record.key, later()),
        state=None if state is None else LedgerEntry(state, digest, later()),
    )


def run_together(count: int, task: Callable[[int], T]) -> list[T]:
    """Run ``task(0..count-1)`` in ``count`` threads released at once; re-raise any failure."""
    barrier = threading.Barrier(count)

    def started(i: int) -> T:
        barrier.wait(timeout=HANG)
        return task(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(started, range(count)))


def increment(store: Store, key: str, times: int, pause: float) -> int:
    """Add 1 to the record's version and to the counter kept in its ``host``, ``times`` times,
    reloading after every lost compare-and-set. ``pause`` seconds between the load and the write
    let other threads in. Returns how many compare-and-sets lost."""
    conflicts = done = 0
    while done < times:
        current = store.load(key).record
        assert current is not None
        time.sleep(pause)
        bumped = attrs.evolve(
            current, version=current.version + 1, host=str(int(current.host or "0") + 1)
        )
        if store.compare_and_set(bumped, current.version):
            done += 1
        else:
            conflicts += 1
    return conflicts


def not_store_errors(calls: dict[str, Callable[[], object]]) -> dict[str, str]:
    """What each call that did not raise ``StoreError`` did instead, by name."""
    outcomes: dict[str, str] = {}
    for name, call in calls.items():
        try:
            call()
        except StoreError:
            continue
        except Exception as exc:  # which exception it is is what is checked
            outcomes[name] = f"raised {type(exc).__name__}"
        else:
            outcomes[name] = "raised nothing"
    return outcomes


def version_of(record: ConnectionRecord | None) -> int:
    return 0 if record is None else record.version


def reads_ledger(store: AnyStore) -> bool:
    """False for a store keeping ``BaseStore.holder_of``, which reads nothing (always None)."""
    default: object = BaseStore.holder_of
    return getattr(type(store), "holder_of", None) is not default


class _Waiter(threading.Thread):
    """A thread waiting until the record under ``key`` is no longer at ``version``; loops over
    ``wait_for_change`` (which may return early). ``seen`` is the version it saw last."""

    def __init__(self, store: Store, key: str, version: int) -> None:
        super().__init__(daemon=True)
        self.store, self.key, self.version = store, key, version
        self.seen = version
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while self.seen == self.version:
                self.store.wait_for_change(self.key, self.version, FOREVER)
                self.seen = version_of(self.store.load(self.key).record)
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def finish(self) -> None:
        self.join(HANG)
        assert not self.is_alive(), "wait_for_change did not return after the record changed"
        if self.error is not None:
            raise self.error


# -- many waiters, one change --------------------------------------------------------------

#: How many threads, and how many tasks, wait on one change in the wake-up cases.
CROWD = 1000


def hub_of(store: object) -> Hub | None:
    """The store's wake-up hub, when it waits on one (every store of this library does)."""
    hub = getattr(store, "hub", None)
    return hub if isinstance(hub, Hub) else None


def until(condition: Callable[[], bool], what: str) -> None:
    """Return once ``condition()`` holds; fail after ``HANG`` seconds (a hung store)."""
    deadline = time.monotonic() + HANG
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.005)


def crowd_of_threads(store: Store, count: int = CROWD) -> list[_Waiter]:
    """``count`` threads waiting for ``c1`` to leave version 1, each ended and checked. With a
    hub, the change is made only once every one of them is registered on it."""
    assert store.compare_and_set(make_record(), None)
    waiters = [_Waiter(store, "c1", 1) for _ in range(count)]
    for waiter in waiters:
        waiter.start()
    hub = hub_of(store)
    if hub is not None:
        until(lambda: hub.waiting("c1") >= count, f"{count} threads registered on the hub")
    assert store.compare_and_set(make_record(version=2), 1)
    for waiter in waiters:
        waiter.finish()
    return waiters


async def crowd_of_tasks(store: AnyStore, count: int = CROWD) -> list[int]:
    """``crowd_of_threads`` for tasks on the store's awaitable side: the versions they saw."""
    astore = as_async_store(store)
    assert await astore.acompare_and_set(make_record(), None)

    async def wait() -> int:
        seen = 1
        while seen == 1:
            await astore.await_for_change("c1", 1, FOREVER)
            seen = (await astore.aload("c1")).version
        return seen

    tasks = [asyncio.ensure_future(wait()) for _ in range(count)]
    hub = hub_of(store)
    if hub is not None:
        await asyncio.to_thread(until, lambda: hub.waiting("c1") >= count, "tasks registered")
    assert await astore.acompare_and_set(make_record(version=2), 1)
    return list(await asyncio.wait_for(asyncio.gather(*tasks), HANG))


class ChangeBeforeRegistering:
    """``Hub.before_register`` for a test: the first time a waiter on ``c1`` is about to
    register (after it read version 1), the record moves to version 2 first: a write landing
    in the pause between a waiter's read and its registration. ``moved``: it happened."""

    def __init__(self, store: AnyStore) -> None:
        self.store = store
        self.moved = False

    def __call__(self, key: str) -> None:
        if key != "c1" or self.moved:
            return
        self.moved = True
        write = make_record(version=2)
        if isinstance(self.store, Store):
            assert self.store.compare_and_set(write, 1)
            return
        astore = self.store  # async only: its own loop, on a thread of its own

        def other_loop() -> None:
            assert asyncio.run(astore.acompare_and_set(write, 1))

        helper = threading.Thread(target=other_loop)
        helper.start()
        helper.join(HANG)


# -- any record ----------------------------------------------------------------------------

# Whole-minute offsets, as every real zone has today, and years far from datetime's limits
# (a store may keep UTC, and converting year 1 or 9999 at an offset would overflow).
_offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
_aware = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(9000, 1, 1), timezones=_offsets
)
# Any text UTF-8 can carry (no lone surrogates) but NUL: no record the service writes holds
# either (ids are printable, tokens printable ASCII), and PostgreSQL's text type cannot store NUL.
_text_chars = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
_texts = st.text(_text_chars, max_size=40)
_records = st.builds(
    ConnectionRecord,
    connection_id=st.text(_text_chars, min_size=1, max_size=40),
    status=st.sampled_from(ConnectionStatus),
    version=st.integers(1, 2**31),
    host=st.none() | _texts,
    tokens=st.none()
    | st.builds(
        TokenSet,
        access_token=_texts,
        refresh_token=_texts,
        expires_at=_aware,
        refresh_expires_at=_aware,
        token_type=_texts,
    ),
    account=st.none() | st.builds(Account, id=st.integers(1, 2**53), subdomain=_texts, name=_texts),
    error=st.none()
    | st.builds(
        ErrorInfo,
        reason=st.sampled_from(sorted(CONNECTION_ERRORS)),
        hint=st.none() | _texts,
        at=_aware,
    ),
    seen_codes=st.lists(
        st.builds(SeenCode, st.text("0123456789abcdef", min_size=64, max_size=64), _aware),
        max_size=4,
    ).map(tuple),
    lease=st.none()
    | st.builds(
        Lease, owner=_texts, purpose=st.sampled_from(["exchange", "refresh"]), expires_at=_aware
    ),
    connected_at=st.none() | _aware,
    updated_at=st.none() | _aware,
    integration=st.none() | _texts,
    widget=st.booleans(),
)
# A write: (which key, insert/update/delete, how the expected version relates to the stored one).
_writes = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.sampled_from(["insert", "update", "delete"]),
        st.integers(-1, 1),
    ),
    max_size=30,
)
# One store serves every example on purpose: records pile up in it as they would in use.
_shared_store = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors],
)


class StoreContract:
    """The store conformance suite: subclass it as ``Test<YourStore>`` and give a ``store``
    fixture (a new, empty ``Store`` and/or ``AsyncStore`` per test, closed after it).

    Optional: override the ``failing_store`` fixture (a store whose backend fails; default: the
    ``store`` closed), ``skewed_store`` (a factory of stores on the same data whose clock runs a
    given ``timedelta`` off the real one, e.g. through the store's ``clock=`` or
    ``clock_offset=``; default: none, and the cases on ledger expiry by the store's clock are
    skipped) and ``run_async`` (how async cases run; default ``asyncio.run``). See the module
    docstring. Needs ``pytest`` and ``hypothesis``.
    """

    # -- hooks ---------------------------------------------------------------------------

    @pytest.fixture
    def failing_store(self, store: AnyStore) -> AnyStore:
        """A store every call of which fails: by default ``store``, closed."""
        if isinstance(store, Store):
            store.close()
        else:
            self.run_async(store.aclose())
        return store

    @pytest.fixture
    def skewed_store(self) -> Callable[[timedelta], Store] | None:
        """Make a store whose clock runs the given offset off the real clock (seconds of a
        ``timedelta``; positive: ahead); None when the store's clock cannot be moved."""
        return None

    @pytest.fixture
    def full_store(self, store: AnyStore) -> Store:
        """``store``'s blocking side (skipped for an async-only store)."""
        if not isinstance(store, Store):
            pytest.skip("the store has no blocking operations")
        return store

    @pytest.fixture
    def async_store(self, store: AnyStore) -> AsyncStore:
        """``store``'s awaitable side (``as_async_store``)."""
        return as_async_store(store)

    def run_async(self, main: Coroutine[Any, Any, T]) -> T:
        """Run one async case to its end. Override to use another runner."""
        return asyncio.run(main)

    # -- protocol ------------------------------------------------------------------------

    def test_store_implements_the_protocols(self, store: AnyStore) -> None:
        assert isinstance(store, (Store, AsyncStore))
        assert isinstance(as_async_store(store), AsyncStore)

    def test_repr_holds_no_secret(self, store: AnyStore, full_store: Store) -> None:
        assert full_store.compare_and_set(make_record(), None)
        for text in (repr(store), repr(full_store)):
            assert "access-c1-1" not in text
            assert "refresh-c1-1" not in text

    def test_load_missing_is_none(self, full_store: Store) -> None:
        loaded = full_store.load("nobody")
        assert loaded.record is None
        assert loaded.version == 0

    # -- the store's clock and check -----------------------------------------------------

    def test_load_carries_the_store_clock_in_utc(self, full_store: Store) -> None:
        record = make_record()
        assert full_store.compare_and_set(record, None)
        for loaded in (full_store.load(record.key), full_store.load("nobody")):
            assert loaded.now.utcoffset() == timedelta(0)
        assert full_store.load(record.key).version == 1

    def test_async_load_carries_the_store_clock_in_utc(self, async_store: AsyncStore) -> None:
        async def main() -> None:
            assert await async_store.acompare_and_set(make_record(), None)
            loaded = await async_store.aload("c1")
            assert loaded.record == make_record()
            assert loaded.now.utcoffset() == timedelta(0)

        self.run_async(main())

    def test_check_of_a_store_in_use(self, full_store: Store) -> None:
        assert full_store.compare_and_set(make_record(), None)  # the schema exists by now
        report = full_store.check()
        assert isinstance(report, StoreCheck)
        assert report.ok and report.reachable and report.schema_ready, report.detail
        assert report.kind
        assert report.now is not None and report.now.utcoffset() == timedelta(0)
        assert "access-c1-1" not in repr(report)

    def test_async_check_of_a_store_in_use(self, async_store: AsyncStore) -> None:
        async def main() -> StoreCheck:
            assert await async_store.acompare_and_set(make_record(), None)
            return await async_store.acheck()

        assert self.run_async(main()).ok

    def test_check_of_a_failing_store_reports_and_raises_nothing(
        self, failing_store: AnyStore
    ) -> None:
        if isinstance(failing_store, Store):
            report = failing_store.check()
        else:
            report = self.run_async(failing_store.acheck())
        assert not report.ok
        assert report.detail

    # -- compare_and_set -----------------------------------------------------------------

    def test_insert_then_load(self, full_store: Store) -> None:
        record = make_record()
        assert full_store.compare_and_set(record, None) is True
        assert full_store.load(record.key).record == record
        assert full_store.load("c2").record is None

    def test_insert_twice_fails_and_keeps_the_first(self, full_store: Store) -> None:
        first = make_record(host="first")
        assert full_store.compare_and_set(first, None) is True
        assert full_store.compare_and_set(make_record(host="second"), None) is False
        assert full_store.compare_and_set(make_record(version=5, host="third"), None) is False
        assert full_store.load("c1").record == first

    def test_update_with_current_version(self, full_store: Store) -> None:
        assert full_store.compare_and_set(make_record(), None)
        second = make_record(version=2, host="second")
        assert full_store.compare_and_set(second, 1) is True
        assert full_store.load("c1").record == second
        third = make_record(version=3, host="third")
        assert full_store.compare_and_set(third, 2) is True
        assert full_store.load("c1").record == third

    @pytest.mark.parametrize("stale", [1, 2, 4, 99])
    def test_update_with_wrong_version_writes_nothing(self, full_store: Store, stale: int) -> None:
        assert full_store.compare_and_set(make_record(), None)
        current = make_record(version=3, host="current")
        assert full_store.compare_and_set(current, 1)
        assert full_store.compare_and_set(make_record(version=stale + 1, host="x"), stale) is False
        assert full_store.load("c1").record == current

    def test_update_of_missing_record_creates_nothing(self, full_store: Store) -> None:
        assert full_store.compare_and_set(make_record(version=2), 1) is False
        assert full_store.load("c1").record is None

    def test_version_zero_is_not_an_insert(self, full_store: Store) -> None:
        # None inserts; 0 is a version no stored record has (inserts start at >= 1).
        assert full_store.compare_and_set(make_record(version=1), 0) is False
        assert full_store.load("c1").record is None

    @pytest.mark.parametrize(
        ("version", "expected"), [(1, 1), (1, 2), (3, 5), (0, None), (-1, None)]
    )
    def test_version_must_increase(
        self, full_store: Store, version: int, expected: int | None
    ) -> None:
        if expected is not None:
            assert full_store.compare_and_set(make_record(version=expected), None)
        before = full_store.load("c1").record
        with pytest.raises(ValueError, match="version"):
            full_store.compare_and_set(make_record(version=version, host="bad"), expected)
        assert full_store.load("c1").record == before

    def test_record_with_every_field_round_trips(self, full_store: Store) -> None:
        record = full_record()
        assert full_store.compare_and_set(record, None)
        loaded = full_store.load(record.key).record
        assert loaded == record
        assert loaded is not None
        assert kept_offsets(loaded, record)
        assert loaded.tokens is not None
        assert loaded.tokens.access_token == "eyJ0eXAiOiJKV1Qi.access"
        assert loaded.tokens.refresh_token == "def50200.refresh"
        assert loaded.status is ConnectionStatus.ERROR
        assert (loaded.integration, loaded.widget) == ("client:id%7", True)
        assert full_store.load(record.connection_id).record is None  # kept under its key only

    def test_bare_record_round_trips(self, full_store: Store) -> None:
        record = ConnectionRecord("bare", version=1)
        assert full_store.compare_and_set(record, None)
        assert full_store.load("bare").record == record

    def test_records_are_kept_under_their_key(self, full_store: Store) -> None:
        # One connection id, four keys: no namespace, two integrations, a widget install.
        records = [
            make_record("x", host="bare"),
            make_record("x", host="app-a", integration="a"),
            make_record("x", host="app-b", integration="b"),
            make_record("x", host="widget-a", integration="a", widget=True),
        ]
        assert len({record.key for record in records}) == len(records)
        for record in records:
            assert full_store.compare_and_set(record, None), record.key
        for record in records:
            assert full_store.load(record.key).record == record
        assert full_store.find_by_account(42) == sorted(records, key=lambda r: r.key)
        moved = attrs.evolve(records[1], version=2, host="moved")
        assert full_store.compare_and_set(moved, 1)
        assert full_store.delete(records[2].key, 1)
        assert [full_store.load(record.key).record for record in records] == [
            records[0],
            moved,
            None,
            records[3],
        ]

    # -- delete --------------------------------------------------------------------------

    def test_delete_with_right_version(self, full_store: Store) -> None:
        assert full_store.compare_and_set(make_record(), None)
        assert full_store.compare_and_set(make_record(version=2), 1)
        assert full_store.delete("c1", 2) is True
        assert full_store.load("c1").record is None
        assert full_store.delete("c1", 2) is False
        # A deleted key can be inserted again.
        assert full_store.compare_and_set(make_record(host="again"), None) is True
        assert full_store.load("c1").record == make_record(host="again")

    @pytest.mark.parametrize("wrong", [1, 3])
    def test_delete_with_wrong_version_keeps_the_record(
        self, full_store: Store, wrong: int
    ) -> None:
        assert full_store.compare_and_set(make_record(), None)
        assert full_store.compare_and_set(make_record(version=2), 1)
        assert full_store.delete("c1", wrong) is False
        assert full_store.load("c1").record == make_record(version=2)

    def test_delete_missing(self, full_store: Store) -> None:
        assert full_store.delete("nobody", 1) is False

    # -- consume_state and holder_of -----------------------------------------------------

    def test_consume_state_once(self, full_store: Store) -> None:
        assert full_store.consume_state("n1", later()) is True
        assert full_store.consume_state("n2", later()) is True
        assert full_store.consume_state("n1", later(), "digest-a") is False
        assert full_store.consume_state("n1", later()) is False  # no holder: plainly single-use

    def test_consume_state_same_holder_again(self, full_store: Store) -> None:
        assert full_store.consume_state("n1", later(), "digest-a") is True
        assert full_store.consume_state("n1", later(), "digest-a") is True
        assert full_store.consume_state("n1", later(), "digest-b") is False
        assert full_store.consume_state("n1", later()) is False
        assert full_store.consume_state("n1", later(), "digest-a") is True

    def test_consume_state_after_expiry(self, full_store: Store) -> None:
        # Keys may be forgotten after they expire: only a fresh key is sure to be kept.
        assert full_store.consume_state("old", later(-1), "digest-a") is True
        assert full_store.consume_state("fresh", later(), "digest-b") is True
        assert full_store.consume_state("fresh", later(), "digest-c") is False

    def test_ledger_keeps_an_entry_live_on_the_stores_clock(
        self, skewed_store: Callable[[timedelta], Store] | None
    ) -> None:
        # Two hours behind: an expiry a minute ahead of the store's clock is in the real past,
        # and the store must still hold it (a client's clock never decides).
        if skewed_store is None:
            pytest.skip("no skewed_store fixture: the store's clock cannot be moved")
        store = skewed_store(-STORE_SKEW)
        now = store.load("nobody").now
        assert store.consume_state("k", now + timedelta(minutes=1), "digest-a")
        assert not store.consume_state("k", now + timedelta(minutes=1), "digest-b")
        if reads_ledger(store):
            assert store.holder_of("k") == "digest-a"

    def test_ledger_forgets_an_entry_expired_on_the_stores_clock(
        self, skewed_store: Callable[[timedelta], Store] | None
    ) -> None:
        # Two hours ahead: an expiry a minute behind the store's clock is in the real future,
        # and the store must have forgotten it.
        if skewed_store is None:
            pytest.skip("no skewed_store fixture: the store's clock cannot be moved")
        store = skewed_store(STORE_SKEW)
        now = store.load("nobody").now
        assert store.consume_state("k", now - timedelta(minutes=1), "digest-a")
        if reads_ledger(store):
            assert store.holder_of("k") is None
        assert store.consume_state("k", now + timedelta(minutes=1), "digest-b")

    def test_load_reads_the_skewed_clock(
        self, skewed_store: Callable[[timedelta], Store] | None
    ) -> None:
        if skewed_store is None:
            pytest.skip("no skewed_store fixture: the store's clock cannot be moved")
        store = skewed_store(STORE_SKEW)
        skew = store.load("nobody").now - datetime.now(UTC)
        assert abs(skew - STORE_SKEW) < timedelta(minutes=1)

    def test_consume_state_needs_aware_datetime(self, full_store: Store) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            full_store.consume_state("n1", datetime(2030, 1, 1))

    def test_consume_state_race_has_one_winner_per_holder(self, full_store: Store) -> None:
        holders = [f"digest-{i % 2}" for i in range(16)]
        results = run_together(
            len(holders), lambda i: full_store.consume_state("n", later(), holders[i])
        )
        winners = {holders[i] for i, won in enumerate(results) if won}
        assert len(winners) == 1
        assert results.count(True) == 8

    def test_holder_of_follows_the_ledger(self, full_store: Store) -> None:
        if not reads_ledger(full_store):
            pytest.skip("the store keeps BaseStore.holder_of, which reads nothing")
        assert full_store.holder_of("n1") is None
        assert full_store.consume_state("n1", later(), "digest-a")
        assert full_store.holder_of("n1") == "digest-a"
        assert full_store.consume_state("n1", later(), "digest-b") is False
        assert full_store.holder_of("n1") == "digest-a"
        assert full_store.consume_state("n2", later())
        assert full_store.holder_of("n2") is None  # taken, but by nobody in particular
        assert full_store.consume_state("n2", later(), "digest-a") is False
        assert full_store.consume_state("old", later(-1), "digest-a")
        assert full_store.holder_of("old") is None  # expired: forgotten

    def test_holder_of_takes_nothing(self, full_store: Store) -> None:
        assert full_store.holder_of("n1") is None
        assert full_store.consume_state("n1", later(), "digest-b") is True

    # -- claim ---------------------------------------------------------------------------

    def test_claim_takes_state_and_code_and_writes_the_record(self, full_store: Store) -> None:
        claim = make_claim()
        assert claim.state is not None
        assert full_store.claim(claim) is ClaimResult.CLAIMED
        assert full_store.load(claim.record.key).record == claim.record
        # Both ledger entries are now held: nobody else passes, their holders pass again.
        assert full_store.consume_state(claim.state.key, later(), "other-digest") is False
        assert full_store.consume_state(claim.code.key, later(), "other-key") is False
        assert full_store.consume_state(claim.code.key, later(), claim.code.holder) is True
        if reads_ledger(full_store):
            assert full_store.holder_of(claim.state.key) == claim.state.holder
            assert full_store.holder_of(claim.code.key) == claim.code.holder

    def test_claim_again_by_the_same_holders(self, full_store: Store) -> None:
        assert full_store.claim(make_claim()) is ClaimResult.CLAIMED
        again = make_claim(version=2, expected_version=1)
        assert full_store.claim(again) is ClaimResult.CLAIMED
        assert full_store.load(again.record.key).record == again.record

    def test_claim_without_state(self, full_store: Store) -> None:
        claim = make_claim(state=None)
        assert full_store.claim(claim) is ClaimResult.CLAIMED
        assert full_store.load(claim.record.key).record == claim.record
        assert full_store.consume_state(claim.code.key, later(), "other-key") is False

    def test_claim_state_used_writes_nothing(self, full_store: Store) -> None:
        claim = make_claim()
        assert claim.state is not None
        assert full_store.consume_state(claim.state.key, later(), "another-code-digest")
        assert full_store.claim(claim) is ClaimResult.STATE_USED
        assert full_store.load(claim.record.key).record is None
        # The code was not taken: it can still be claimed for another connection.
        assert full_store.claim(make_claim("c2", state=None)) is ClaimResult.CLAIMED

    def test_claim_code_taken_writes_nothing(self, full_store: Store) -> None:
        first = make_claim("c1", state=None)
        assert full_store.claim(first) is ClaimResult.CLAIMED
        second = make_claim("c2", state="state-2")
        assert full_store.claim(second) is ClaimResult.CODE_TAKEN
        assert full_store.load(second.record.key).record is None
        assert full_store.load(first.record.key).record == first.record
        assert full_store.consume_state(first.code.key, later(), first.code.holder) is True
        # Taken before the record existed: the code is still the first connection's.
        third = make_claim("c2", state=None)
        assert full_store.claim(third) is ClaimResult.CODE_TAKEN
        assert full_store.load(third.record.key).record is None

    def test_claim_code_taken_leaves_an_existing_record(self, full_store: Store) -> None:
        assert full_store.claim(make_claim("c1", state=None)) is ClaimResult.CLAIMED
        existing = make_record("c2", host="existing")
        assert full_store.compare_and_set(existing, None)
        taken = make_claim("c2", state=None, version=2, expected_version=1)
        assert full_store.claim(taken) is ClaimResult.CODE_TAKEN
        assert full_store.load("c2").record == existing

    @pytest.mark.parametrize(("stored", "expected"), [(1, None), (3, 2), (None, 1)])
    def test_claim_record_changed_writes_nothing(
        self, full_store: Store, stored: int | None, expected: int | None
    ) -> None:
        existing = None
        if stored is not None:
            existing = make_record(version=stored, host="existing")
            assert full_store.compare_and_set(existing, None)
        claim = make_claim(version=(expected or 0) + 1, expected_version=expected)
        assert full_store.claim(claim) is ClaimResult.RECORD_CHANGED
        assert full_store.load(claim.record.key).record == existing
        # Whatever the ledger kept is held for this claim's holders: a retry passes.
        retry = make_claim(version=(stored or 0) + 1, expected_version=stored)
        assert full_store.claim(retry) is ClaimResult.CLAIMED
        assert full_store.load(claim.record.key).record == retry.record

    def test_claim_refuses_a_version_that_does_not_move(self, full_store: Store) -> None:
        assert full_store.compare_and_set(make_record(version=2, host="existing"), None)
        with pytest.raises(ValueError, match="version"):
            full_store.claim(make_claim(version=2, expected_version=2))
        assert full_store.load("c1").record == make_record(version=2, host="existing")

    def test_concurrent_claims_of_one_code_have_one_winner(self, full_store: Store) -> None:
        claims = [make_claim(f"c{i}", state=f"state-{i}") for i in range(16)]
        results = run_together(len(claims), lambda i: full_store.claim(claims[i]))
        assert results.count(ClaimResult.CLAIMED) == 1
        assert results.count(ClaimResult.CODE_TAKEN) == len(claims) - 1
        winner = claims[results.index(ClaimResult.CLAIMED)]
        stored = [full_store.load(claim.record.key).record for claim in claims]
        assert stored == [claim.record if claim is winner else None for claim in claims]
        assert full_store.consume_state(winner.code.key, later(), winner.code.holder) is True

    def test_concurrent_claims_of_one_state_have_one_winner(self, full_store: Store) -> None:
        claims = [make_claim(f"c{i}", code=f"code-{i}", state="state-1") for i in range(16)]
        results = run_together(len(claims), lambda i: full_store.claim(claims[i]))
        assert results.count(ClaimResult.CLAIMED) == 1
        assert results.count(ClaimResult.STATE_USED) == len(claims) - 1
        stored = [full_store.load(claim.record.key).record for claim in claims]
        assert sum(record is not None for record in stored) == 1

    # -- wait_for_change -----------------------------------------------------------------

    def test_wait_for_change_returns_after_timeout(self, full_store: Store) -> None:
        record = make_record()
        assert full_store.compare_and_set(record, None)
        full_store.wait_for_change(record.key, 1, 0.05)
        full_store.wait_for_change("nobody", 0, 0.05)
        full_store.wait_for_change(record.key, 1, 0)
        assert full_store.load(record.key).record == record

    def test_wait_for_change_returns_when_the_version_already_differs(
        self, full_store: Store
    ) -> None:
        assert full_store.compare_and_set(make_record(version=2), None)
        waiters = [_Waiter(full_store, "c1", 1), _Waiter(full_store, "nobody", 3)]
        for waiter in waiters:
            waiter.start()
        for waiter in waiters:
            waiter.finish()
        assert [waiter.seen for waiter in waiters] == [2, 0]

    @pytest.mark.parametrize("timeout", [math.nan, -1.0, -math.inf])
    def test_a_wait_without_a_time_returns_at_once(self, full_store: Store, timeout: float) -> None:
        waiter = threading.Thread(
            target=full_store.wait_for_change, args=("c1", 0, timeout), daemon=True
        )
        waiter.start()
        waiter.join(HANG)
        assert not waiter.is_alive(), f"wait_for_change({timeout}) did not return"

    @pytest.mark.parametrize("timeout", [1e300, math.inf])
    def test_a_huge_wait_is_still_woken_by_a_write(self, full_store: Store, timeout: float) -> None:
        errors: list[BaseException] = []

        def wait() -> None:
            try:
                full_store.wait_for_change("c1", 0, timeout)
            except BaseException as exc:  # handed to the test thread
                errors.append(exc)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        time.sleep(0.05)
        assert full_store.compare_and_set(make_record(), None)
        waiter.join(HANG)
        assert not waiter.is_alive(), "a huge wait was not woken by the write"
        assert errors == []

    def test_wait_for_change_is_woken_by_a_write(self, full_store: Store) -> None:
        waiter = _Waiter(full_store, "c1", 0)
        waiter.start()
        time.sleep(0.05)  # most likely waiting by now; either way it must see the write
        assert full_store.compare_and_set(make_record(), None)
        waiter.finish()
        assert waiter.seen == 1

    def test_wait_for_change_is_woken_by_an_update_and_a_delete(self, full_store: Store) -> None:
        assert full_store.compare_and_set(make_record(), None)
        waiter = _Waiter(full_store, "c1", 1)
        waiter.start()
        time.sleep(0.05)
        assert full_store.compare_and_set(make_record(version=2), 1)
        waiter.finish()
        assert waiter.seen == 2
        waiter = _Waiter(full_store, "c1", 2)
        waiter.start()
        time.sleep(0.05)
        assert full_store.delete("c1", 2)
        waiter.finish()
        assert waiter.seen == 0

    def test_wait_for_change_is_woken_by_a_claim(self, full_store: Store) -> None:
        waiter = _Waiter(full_store, "c1", 0)
        waiter.start()
        time.sleep(0.05)
        assert full_store.claim(make_claim()) is ClaimResult.CLAIMED
        waiter.finish()
        assert waiter.seen == 1

    def test_close_ends_a_wait(self, full_store: Store) -> None:
        waiter = _Waiter(full_store, "c1", 0)
        waiter.start()
        time.sleep(0.05)
        full_store.close()
        waiter.join(HANG)
        assert not waiter.is_alive(), "a wait outlived close()"
        assert waiter.error is None or isinstance(waiter.error, StoreError), waiter.error

    # -- many waiters, one change, and the pause before registering ------------------------

    def test_a_thousand_threads_wait_on_one_change(self, full_store: Store) -> None:
        waiters = crowd_of_threads(full_store)
        assert [waiter.seen for waiter in waiters] == [2] * CROWD
        hub = hub_of(full_store)
        assert hub is None or hub.waiting() == 0

    def test_a_thousand_tasks_wait_on_one_change(self, store: AnyStore) -> None:
        assert self.run_async(crowd_of_tasks(store)) == [2] * CROWD
        hub = hub_of(store)
        assert hub is None or hub.waiting() == 0

    def test_a_write_between_a_read_and_the_wait_is_seen(
        self, full_store: Store, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        assert full_store.compare_and_set(make_record(), None)
        read = full_store.load("c1").version  # the waiter's read: version 1
        change = ChangeBeforeRegistering(full_store)
        monkeypatch.setattr(Hub, "before_register", staticmethod(change))
        waiter = threading.Thread(
            target=full_store.wait_for_change, args=("c1", read, FOREVER), daemon=True
        )
        waiter.start()
        if hub_of(full_store) is None:  # a store of its own, with no hub: an ordinary write
            change("c1")
        waiter.join(HANG)
        assert not waiter.is_alive(), "a write made before the wait registered was missed"
        assert change.moved and full_store.load("c1").version == 2

    def test_an_async_write_between_a_read_and_the_wait_is_seen(
        self, store: AnyStore, async_store: AsyncStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        change = ChangeBeforeRegistering(store)

        async def main() -> int:
            assert await async_store.acompare_and_set(make_record(), None)
            read = (await async_store.aload("c1")).version
            monkeypatch.setattr(Hub, "before_register", staticmethod(change))
            waiting = asyncio.ensure_future(async_store.await_for_change("c1", read, FOREVER))
            if hub_of(store) is None:
                await asyncio.sleep(0)
                await asyncio.to_thread(change, "c1")
            await asyncio.wait_for(waiting, HANG)
            return (await async_store.aload("c1")).version

        assert self.run_async(main()) == 2
        assert change.moved

    # -- find_by_account -----------------------------------------------------------------

    def test_find_by_account(self, full_store: Store) -> None:
        for cid, account in [("b", 7), ("a", 7), ("c", 8), ("d", None)]:
            assert full_store.compare_and_set(make_record(cid, account_id=account), None)
        assert full_store.find_by_account(7) == [
            make_record("a", account_id=7),
            make_record("b", account_id=7),
        ]
        assert full_store.find_by_account(8) == [make_record("c", account_id=8)]
        assert full_store.find_by_account(9) == []

    def test_find_by_account_follows_updates_and_deletes(self, full_store: Store) -> None:
        assert full_store.compare_and_set(make_record("a", account_id=7), None)
        assert full_store.compare_and_set(make_record("b", account_id=7), None)
        moved = make_record("a", version=2, account_id=8)
        assert full_store.compare_and_set(moved, 1)
        assert full_store.delete("b", 1)
        assert full_store.find_by_account(7) == []
        assert full_store.find_by_account(8) == [moved]

    # -- due_page: the first page --------------------------------------------------------

    @staticmethod
    def seed_refresh(store: Store) -> None:
        """Five connected records expiring at T0 + 5, 1, 3, 2, 4 days, three not connected."""
        for cid, days in [("e", 5), ("a", 1), ("c", 3), ("b", 2), ("d", 4)]:
            record = make_record(cid, refresh_expires_at=T0 + timedelta(days=days))
            assert store.compare_and_set(record, None)
        for cid, status in [("x", ConnectionStatus.ERROR), ("y", ConnectionStatus.EXCHANGED)]:
            record = make_record(cid, status=status, refresh_expires_at=T0)
            assert store.compare_and_set(record, None)
        bare = ConnectionRecord("z", status=ConnectionStatus.DISCONNECTED, version=1)
        assert store.compare_and_set(bare, None)

    @staticmethod
    def due_ids(store: Store, before: datetime, limit: int) -> list[str]:
        return [record.connection_id for record in store.due_page(before, limit)]

    def test_due_page_first_page_soonest_first_connected_only(self, full_store: Store) -> None:
        self.seed_refresh(full_store)
        assert self.due_ids(full_store, T0 + timedelta(days=10), 100) == ["a", "b", "c", "d", "e"]
        assert full_store.due_page(T0 + timedelta(days=10), 1) == [
            make_record("a", refresh_expires_at=T0 + timedelta(days=1))
        ]

    def test_due_page_first_page_ties_by_key(self, full_store: Store) -> None:
        for cid in ["b", "c", "a"]:
            assert full_store.compare_and_set(make_record(cid, refresh_expires_at=T0), None)
        assert self.due_ids(full_store, T0 + timedelta(days=1), 100) == ["a", "b", "c"]
        assert self.due_ids(full_store, T0 + timedelta(days=1), 2) == ["a", "b"]

    def test_due_page_first_page_limit_and_cutoff(self, full_store: Store) -> None:
        self.seed_refresh(full_store)
        cutoff = T0 + timedelta(days=10)
        assert self.due_ids(full_store, cutoff, 3) == ["a", "b", "c"]
        assert self.due_ids(full_store, cutoff, 0) == []
        assert self.due_ids(full_store, cutoff, 2**70) == ["a", "b", "c", "d", "e"]
        # Strictly before: a token expiring at the cutoff is not due yet.
        assert self.due_ids(full_store, T0 + timedelta(days=3), 100) == ["a", "b"]
        just_after = T0 + timedelta(days=3, microseconds=1)
        assert self.due_ids(full_store, just_after, 100) == ["a", "b", "c"]
        assert self.due_ids(full_store, T0 + timedelta(days=1), 100) == []

    def test_due_page_first_page_compares_instants_not_wall_clocks(self, full_store: Store) -> None:
        self.seed_refresh(full_store)
        # T0 + 2 days 01:00 in UTC+3 is T0 + 1 day 22:00 in UTC: only "a" expired before it.
        cutoff = (T0 + timedelta(days=2, hours=1)).replace(tzinfo=timezone(timedelta(hours=3)))
        assert self.due_ids(full_store, cutoff, 100) == ["a"]

    def test_due_page_first_page_follows_updates(self, full_store: Store) -> None:
        self.seed_refresh(full_store)
        error = make_record("a", version=2, status=ConnectionStatus.ERROR)
        assert full_store.compare_and_set(error, 1)
        pushed = make_record("b", version=2, refresh_expires_at=T0 + timedelta(days=30))
        assert full_store.compare_and_set(pushed, 1)
        assert self.due_ids(full_store, T0 + timedelta(days=10), 100) == ["c", "d", "e"]

    def test_due_page_first_page_bad_arguments(self, full_store: Store) -> None:
        with pytest.raises(ValueError, match="limit"):
            full_store.due_page(T0, -1)
        with pytest.raises(ValueError, match="timezone-aware"):
            full_store.due_page(datetime(2030, 1, 1), 10)

    # -- due_page ------------------------------------------------------------------------

    #: Keys whose code-point order is not their order in some collations (case, accents).
    PAGE_KEYS = ("B", "a", "a-1", "a1", "b", "z", "\u00e9", "\u00e9t\u00e9", "\u0436", "\U0001f600")

    @classmethod
    def seed_pages(cls, store: Store) -> list[str]:
        """Records due on three days, most of them on one (ties), two not due, one not
        connected. Returns the due keys in due order."""
        tied = T0 + timedelta(days=2)
        for cid in cls.PAGE_KEYS:
            assert store.compare_and_set(make_record(cid, refresh_expires_at=tied), None)
        early = make_record("early", refresh_expires_at=T0 + timedelta(days=1))
        late = make_record("late", refresh_expires_at=T0 + timedelta(days=3))
        for record in (early, late):
            assert store.compare_and_set(record, None)
        for cid, days in (("later", 40), ("latest", 50)):
            record = make_record(cid, refresh_expires_at=T0 + timedelta(days=days))
            assert store.compare_and_set(record, None)
        error = make_record("err", status=ConnectionStatus.ERROR, refresh_expires_at=T0)
        assert store.compare_and_set(error, None)
        return ["early", *sorted(cls.PAGE_KEYS), "late"]

    @staticmethod
    def all_pages(store: Store, before: datetime, limit: int) -> list[list[str]]:
        pages: list[list[str]] = []
        after: DueCursor | None = None
        while True:
            page = store.due_page(before, limit, after)
            assert len(page) <= limit
            if not page:
                return pages
            pages.append([record.key for record in page])
            after = due_position(page[-1])
            assert len(pages) < 100, "due_page never ran out of records"

    def test_due_page_visits_every_due_record_once_in_order(self, full_store: Store) -> None:
        due = self.seed_pages(full_store)
        cutoff = T0 + timedelta(days=10)
        assert [r.key for r in full_store.due_page(cutoff, 100)] == due
        for limit in (1, 2, 3, 5, len(due), 100):
            pages = self.all_pages(full_store, cutoff, limit)
            assert [key for page in pages for key in page] == due, limit
            assert all(len(page) == limit for page in pages[:-1])

    def test_due_page_limits(self, full_store: Store) -> None:
        due = self.seed_pages(full_store)
        cutoff = T0 + timedelta(days=10)
        assert [r.key for r in full_store.due_page(cutoff, 4)] == due[:4]
        assert full_store.due_page(cutoff, 0) == []
        assert full_store.due_page(cutoff, 0, (T0, "a")) == []
        assert len(full_store.due_page(cutoff, 2**70)) == len(self.PAGE_KEYS) + 2

    def test_due_page_of_an_empty_store(self, full_store: Store) -> None:
        assert full_store.due_page(T0 + timedelta(days=1000), 10) == []
        assert full_store.due_page(T0 + timedelta(days=1000), 10, (T0, "x")) == []

    def test_due_page_resumes_after_a_position_no_record_holds(self, full_store: Store) -> None:
        self.seed_pages(full_store)
        tied = T0 + timedelta(days=2)
        cutoff = T0 + timedelta(days=10)
        # Between "a1" and "b" of the tied run, then past every key of it, then before it.
        assert [r.key for r in full_store.due_page(cutoff, 2, (tied, "a2"))] == ["b", "z"]
        assert [r.key for r in full_store.due_page(cutoff, 2, (tied, "\U0010ffff"))] == ["late"]
        assert [r.key for r in full_store.due_page(cutoff, 1, (tied, ""))] == ["B"]
        just_before = tied - timedelta(microseconds=1)
        assert [r.key for r in full_store.due_page(cutoff, 1, (just_before, "zzz"))] == ["B"]
        assert full_store.due_page(cutoff, 5, (cutoff, "")) == []

    def test_due_page_cutoff_is_strict_and_instants_not_wall_clocks(
        self, full_store: Store
    ) -> None:
        self.seed_pages(full_store)
        tied = T0 + timedelta(days=2)
        assert [r.key for r in full_store.due_page(tied, 10)] == ["early"]
        elsewhere = (tied + timedelta(hours=3)).replace(tzinfo=timezone(timedelta(hours=3)))
        assert [r.key for r in full_store.due_page(elsewhere, 10)] == ["early"]
        cursor = (tied.astimezone(timezone(timedelta(hours=-5))), "a1")
        assert [r.key for r in full_store.due_page(T0 + timedelta(days=10), 1, cursor)] == ["b"]

    def test_due_page_ignores_records_moved_behind_the_cursor(self, full_store: Store) -> None:
        due = self.seed_pages(full_store)
        cutoff = T0 + timedelta(days=10)
        first = full_store.due_page(cutoff, 3)
        assert [r.key for r in first] == due[:3]
        # A record of the first page refreshed (pushed past the cutoff), one not yet reached
        # moved before the cursor: neither is met again; the rest follow in order.
        pushed = make_record(first[0].key, version=2, refresh_expires_at=T0 + timedelta(days=90))
        assert full_store.compare_and_set(pushed, 1)
        back = make_record("late", version=2, refresh_expires_at=T0)
        assert full_store.compare_and_set(back, 1)
        rest = full_store.due_page(cutoff, 100, due_position(first[-1]))
        assert [r.key for r in rest] == due[3:-1]

    def test_due_page_bad_arguments(self, full_store: Store) -> None:
        with pytest.raises(ValueError, match="limit"):
            full_store.due_page(T0, -1)
        with pytest.raises(ValueError, match="timezone-aware"):
            full_store.due_page(datetime(2030, 1, 1), 10)
        with pytest.raises(ValueError, match="timezone-aware"):
            full_store.due_page(T0, 10, (datetime(2030, 1, 1), "a"))

    # -- scan ----------------------------------------------------------------------------

    @staticmethod
    def scan_pages(store: Store, limit: int) -> list[list[str]]:
        pages: list[list[str]] = []
        after: str | None = None
        while True:
            page = store.scan(after, limit)
            assert len(page) <= limit
            if not page:
                return pages
            pages.append([record.key for record in page])
            after = page[-1].key
            assert len(pages) < 100, "scan never ran out of records"

    def test_scan_visits_every_record_once_by_key(self, full_store: Store) -> None:
        self.seed_pages(full_store)
        bare = ConnectionRecord("bare", status=ConnectionStatus.DISCONNECTED, version=3)
        assert full_store.compare_and_set(bare, None)
        keys = sorted([*self.PAGE_KEYS, "early", "late", "later", "latest", "err", "bare"])
        for limit in (1, 2, 4, len(keys), 1000):
            pages = self.scan_pages(full_store, limit)
            assert [key for page in pages for key in page] == keys, limit
            assert all(len(page) == limit for page in pages[:-1])
        found = {record.key: record for record in full_store.scan(None, 1000)}
        assert found["bare"] == bare
        assert found["err"].status is ConnectionStatus.ERROR

    def test_scan_limits_cursors_and_an_empty_store(self, full_store: Store) -> None:
        assert full_store.scan(None, 10) == []
        assert full_store.scan("m", 10) == []
        for cid in ("b", "d", "f"):
            assert full_store.compare_and_set(make_record(cid), None)
        assert full_store.scan(None, 0) == []
        assert [r.key for r in full_store.scan("c", 10)] == ["d", "f"]
        assert [r.key for r in full_store.scan("b", 1)] == ["d"]
        assert full_store.scan("f", 10) == []
        assert [r.key for r in full_store.scan("", 2**70)] == ["b", "d", "f"]
        assert full_store.delete("d", 1)
        assert [r.key for r in full_store.scan("b", 10)] == ["f"]
        with pytest.raises(ValueError, match="limit"):
            full_store.scan(None, -1)

    def test_async_paged_reads(self, store: AnyStore, async_store: AsyncStore) -> None:
        async def main() -> None:
            tied = T0 + timedelta(days=1)
            for cid in ("c", "a", "b"):
                record = make_record(cid, refresh_expires_at=tied)
                assert await async_store.acompare_and_set(record, None)
            first = await async_store.adue_page(T0 + timedelta(days=3), 2)
            assert [record.key for record in first] == ["a", "b"]
            rest = await async_store.adue_page(T0 + timedelta(days=3), 2, due_position(first[-1]))
            assert [record.key for record in rest] == ["c"]
            assert [r.key for r in await async_store.ascan(None, 2)] == ["a", "b"]
            assert [r.key for r in await async_store.ascan("b", 2)] == ["c"]

        self.run_async(main())

    # -- close and failures --------------------------------------------------------------

    @staticmethod
    def blocking_calls(store: Store) -> dict[str, Callable[[], object]]:
        calls: dict[str, Callable[[], object]] = {
            "load": lambda: store.load("c1").record,
            "compare_and_set": lambda: store.compare_and_set(make_record(version=2), 1),
            "insert": lambda: store.compare_and_set(make_record("c9"), None),
            "delete": lambda: store.delete("c1", 1),
            "consume_state": lambda: store.consume_state("n", later()),
            "find_by_account": lambda: store.find_by_account(42),
            "due_page": lambda: store.due_page(T0, 10, (T0, "c0")),
            "claim": lambda: store.claim(make_claim("c8", code="code-8")),
            "wait_for_change": lambda: store.wait_for_change("c1", 1, 0.05),
        }
        if reads_ledger(store):
            calls["holder_of"] = lambda: store.holder_of("n")
        calls["scan"] = lambda: store.scan(None, 10)
        return calls

    @staticmethod
    def async_calls(store: AsyncStore) -> dict[str, Callable[[], Coroutine[Any, Any, object]]]:
        calls: dict[str, Callable[[], Coroutine[Any, Any, object]]] = {
            "aload": lambda: store.aload("c1"),
            "acompare_and_set": lambda: store.acompare_and_set(make_record(version=2), 1),
            "ainsert": lambda: store.acompare_and_set(make_record("c9"), None),
            "adelete": lambda: store.adelete("c1", 1),
            "aconsume_state": lambda: store.aconsume_state("n", later()),
            "afind_by_account": lambda: store.afind_by_account(42),
            "adue_page": lambda: store.adue_page(T0, 10, (T0, "c0")),
            "ascan": lambda: store.ascan(None, 10),
            "aclaim": lambda: store.aclaim(make_claim("c8", code="code-8")),
            "await_for_change": lambda: store.await_for_change("c1", 1, 0.05),
            "aholder_of": lambda: store.aholder_of("n"),
        }
        return calls

    def test_closed_store_refuses_calls(self, full_store: Store) -> None:
        assert full_store.compare_and_set(make_record(), None)
        full_store.close()
        full_store.close()  # closing twice is harmless
        assert not_store_errors(self.blocking_calls(full_store)) == {}

    def test_every_failure_reaches_callers_as_store_error(self, failing_store: AnyStore) -> None:
        if not isinstance(failing_store, Store):
            pytest.skip("the store has no blocking operations")
        assert not_store_errors(self.blocking_calls(failing_store)) == {}

    def test_every_async_failure_reaches_callers_as_store_error(
        self, failing_store: AnyStore
    ) -> None:
        astore = as_async_store(failing_store)
        calls = self.async_calls(astore)
        if not reads_ledger(failing_store):
            del calls["aholder_of"]

        async def main() -> dict[str, str]:
            outcomes: dict[str, str] = {}
            for name, call in calls.items():
                try:
                    await call()
                except StoreError:
                    continue
                except Exception as exc:
                    outcomes[name] = f"raised {type(exc).__name__}"
                else:
                    outcomes[name] = "raised nothing"
            return outcomes

        assert self.run_async(main()) == {}, "not StoreError"

    # -- concurrency ---------------------------------------------------------------------

    def test_thread_race_loses_no_update(self, full_store: Store) -> None:
        assert full_store.compare_and_set(make_record(host="0"), None)
        # The pause between load and compare-and-set lets the other threads in.
        conflicts = run_together(32, lambda _: increment(full_store, "c1", 20, pause=0.0001))
        final = full_store.load("c1").record
        assert final is not None
        assert final.version == 1 + 32 * 20
        assert final.host == str(32 * 20)
        assert sum(conflicts) > 0, "the threads never raced: the test proved nothing"

    def test_thread_race_to_insert_has_one_winner(self, full_store: Store) -> None:
        results = run_together(
            32, lambda i: full_store.compare_and_set(make_record(host=str(i)), None)
        )
        assert results.count(True) == 1
        assert full_store.load("c1").record == make_record(host=str(results.index(True)))

    # -- the awaitable side --------------------------------------------------------------

    def test_async_compare_and_set_and_delete(self, async_store: AsyncStore) -> None:
        async def main() -> None:
            first = make_record(host="first")
            assert (await async_store.aload("c1")).record is None
            assert await async_store.acompare_and_set(first, None) is True
            assert await async_store.acompare_and_set(make_record(host="x"), None) is False
            assert (await async_store.aload("c1")).record == first
            second = make_record(version=2)
            assert await async_store.acompare_and_set(make_record(version=3), 2) is False
            assert await async_store.acompare_and_set(second, 1) is True
            assert (await async_store.aload("c1")).record == second
            with pytest.raises(ValueError, match="version"):
                await async_store.acompare_and_set(make_record(version=2), 2)
            assert await async_store.adelete("c1", 1) is False
            assert await async_store.adelete("c1", 2) is True
            assert (await async_store.aload("c1")).record is None
            record = full_record()
            assert await async_store.acompare_and_set(record, None)
            assert (await async_store.aload(record.key)).record == record

        self.run_async(main())

    def test_async_ledger(self, store: AnyStore, async_store: AsyncStore) -> None:
        reads = reads_ledger(store)

        async def main() -> None:
            assert await async_store.aconsume_state("n1", later(), "digest-a") is True
            assert await async_store.aconsume_state("n1", later(), "digest-a") is True
            assert await async_store.aconsume_state("n1", later(), "digest-b") is False
            assert await async_store.aconsume_state("n2", later()) is True
            assert await async_store.aconsume_state("n2", later()) is False
            if reads:
                assert await async_store.aholder_of("n1") == "digest-a"
                assert await async_store.aholder_of("n2") is None
                assert await async_store.aholder_of("n3") is None

        self.run_async(main())

    def test_async_queries(self, async_store: AsyncStore) -> None:
        async def main() -> None:
            for cid, days in [("b", 2), ("a", 1), ("c", 3)]:
                record = make_record(cid, refresh_expires_at=T0 + timedelta(days=days))
                assert await async_store.acompare_and_set(record, None)
            found = await async_store.afind_by_account(42)
            assert [record.key for record in found] == ["a", "b", "c"]
            due = await async_store.adue_page(T0 + timedelta(days=3), 100)
            assert [record.key for record in due] == ["a", "b"]
            assert await async_store.adue_page(T0 + timedelta(days=3), 1) == found[:1]

        self.run_async(main())

    def test_async_claim_results(self, async_store: AsyncStore) -> None:
        async def main() -> None:
            claim = make_claim()
            assert await async_store.aclaim(claim) is ClaimResult.CLAIMED
            assert (await async_store.aload("c1")).record == claim.record
            used = make_claim("c2", code="code-2", state="state-1")
            assert await async_store.aclaim(used) is ClaimResult.STATE_USED
            taken = make_claim("c3", code="code-1", state="state-3")
            assert await async_store.aclaim(taken) is ClaimResult.CODE_TAKEN
            stale = make_claim(version=2, expected_version=None)
            assert await async_store.aclaim(stale) is ClaimResult.RECORD_CHANGED
            assert [(await async_store.aload(key)).record for key in ("c1", "c2", "c3")] == [
                claim.record,
                None,
                None,
            ]

        self.run_async(main())

    def test_async_concurrent_claims_of_one_code_have_one_winner(
        self, async_store: AsyncStore
    ) -> None:
        claims = [make_claim(f"c{i}", state=f"state-{i}") for i in range(16)]

        async def main() -> list[ClaimResult]:
            return list(await asyncio.gather(*(async_store.aclaim(c) for c in claims)))

        results = self.run_async(main())
        assert results.count(ClaimResult.CLAIMED) == 1
        assert results.count(ClaimResult.CODE_TAKEN) == len(claims) - 1

    def test_async_wait_returns_after_timeout(self, async_store: AsyncStore) -> None:
        async def main() -> None:
            assert await async_store.acompare_and_set(make_record(), None)
            await async_store.await_for_change("c1", 1, 0.05)
            await async_store.await_for_change("nobody", 0, 0)
            assert (await async_store.aload("c1")).record == make_record()

        self.run_async(main())

    def test_async_wait_is_woken_by_a_write_from_another_thread(
        self, store: AnyStore, async_store: AsyncStore
    ) -> None:
        written: list[bool] = []

        async def until_changed() -> int:
            seen = 0
            while seen == 0:
                await async_store.await_for_change("c1", 0, FOREVER)
                seen = version_of((await async_store.aload("c1")).record)
            return seen

        async def main() -> int:
            waiting = asyncio.ensure_future(until_changed())
            await asyncio.sleep(0.05)  # most likely waiting by now; either way it must see it
            if isinstance(store, Store):
                writer = threading.Thread(
                    target=lambda: written.append(store.compare_and_set(make_record(), None))
                )
                writer.start()
                await asyncio.to_thread(writer.join, HANG)
            else:  # an async-only store: the write comes from another task instead
                written.append(await async_store.acompare_and_set(make_record(), None))
            return await asyncio.wait_for(waiting, HANG)

        assert self.run_async(main()) == 1
        assert written == [True]

    def test_async_closed_store_refuses_calls(
        self, store: AnyStore, async_store: AsyncStore
    ) -> None:
        calls = self.async_calls(async_store)
        if not reads_ledger(store):
            del calls["aholder_of"]

        async def main() -> list[str]:
            await async_store.aclose()
            await async_store.aclose()  # closing twice is harmless
            accepted = []
            for name, call in calls.items():
                try:
                    await call()
                except StoreError:
                    continue
                accepted.append(name)
            return accepted

        assert self.run_async(main()) == [], "called on a closed store without StoreError"

    # -- any record, any writes ----------------------------------------------------------

    @_shared_store
    @given(record=_records)
    def test_any_record_round_trips(self, full_store: Store, record: ConnectionRecord) -> None:
        key = record.key
        existing = full_store.load(key).record
        if existing is not None:
            assert full_store.delete(key, existing.version)
        assert full_store.compare_and_set(record, None)
        loaded = full_store.load(key).record
        assert loaded == record
        assert loaded is not None
        assert kept_offsets(loaded, record)
        if record.account is not None:
            assert record in full_store.find_by_account(record.account.id)
        bumped = attrs.evolve(record, version=record.version + 1)
        assert full_store.compare_and_set(bumped, record.version)
        assert full_store.load(key).record == bumped

    @_shared_store
    @given(writes=_writes)
    def test_any_writes_match_a_model(
        self, full_store: Store, writes: list[tuple[str, str, int]]
    ) -> None:
        model: dict[str, int] = {}
        for key in ("a", "b"):  # forget the previous example's records
            current = full_store.load(key).record
            if current is not None:
                assert full_store.delete(key, current.version)
        for key, kind, offset in writes:
            stored = model.get(key)
            # The expected version: the stored one, one off it, or 0 (which nothing has).
            expected = max((stored or 0) + offset, 0)
            if kind == "insert":
                won = full_store.compare_and_set(make_record(key, version=expected + 1), None)
                assert won == (stored is None)
            elif kind == "update":
                won = full_store.compare_and_set(make_record(key, version=expected + 1), expected)
                assert won == (stored is not None and expected == stored)
            else:
                won = full_store.delete(key, expected)
                assert won == (stored is not None and expected == stored)
            if won:
                if kind == "delete":
                    del model[key]
                else:
                    model[key] = expected + 1
            assert version_of(full_store.load(key).record) == model.get(key, 0)
        found = full_store.find_by_account(42)
        assert {record.key: record.version for record in found} == model
