"""``RedisStore`` against a throwaway ``redis-server`` (see ``_redis_server``).

Every test gets a store with a prefix of its own in the one server of the session, so tests
never see each other's keys. The ``store`` fixture is what the shared store contract suite
plugs into.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import TypeVar

import attrs
import pytest
import redis

from _redis_server import REDIS_PASSWORD, free_port, redis_url  # noqa: F401
from _store_race_worker import increment
from amo_oauth._errors import StoreError
from amo_oauth._records import ConnectionRecord, ConnectionStatus
from amo_oauth.stores import RedisStore
from amo_oauth.stores._protocol import AsyncStore, Claim, ClaimResult, LedgerEntry, Loaded, Store
from amo_oauth.testing import StoreContract
from amo_oauth.testing._contract import make_record

pytestmark = pytest.mark.services

T = TypeVar("T")
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
NOW = datetime.now(UTC)
LATER = NOW + timedelta(days=1)  # far enough that no slow run outlives it
#: Long enough that a wait returning means it was woken; the joins below bound the test.
LONG_WAIT = 300.0
JOIN = 30.0


def unique_prefix() -> str:
    return f"test-{uuid.uuid4().hex}:"


@pytest.fixture
def make_store(redis_url: str) -> Iterator[Callable[..., RedisStore]]:  # noqa: F811
    """Make migrated stores on the session's server; every one is closed at the end."""
    made: list[RedisStore] = []

    def make(prefix: str | None = None, *, migrate: bool = True, **options: float) -> RedisStore:
        store = RedisStore(redis_url, prefix=prefix or unique_prefix(), **options)
        made.append(store)
        if migrate:
            store.migrate()
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., RedisStore]) -> RedisStore:
    """A fresh, migrated store with a prefix of its own."""
    return make_store()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:  # noqa: F811
    """A plain client on the same server, to look behind the store's back."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def run_together(count: int, task: Callable[[int], T]) -> list[T]:
    """Run ``task(0..count-1)`` in ``count`` threads released at once; re-raise any failure."""
    barrier = threading.Barrier(count)

    def started(i: int) -> T:
        barrier.wait(timeout=10)
        return task(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(started, range(count)))


def run_async(store: RedisStore, main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` on a fresh loop, closing the store's asyncio side on that loop."""

    async def wrapped() -> T:
        try:
            return await main()
        finally:
            await store.aclose()

    return asyncio.run(wrapped())


def closed_port_url(port: int) -> str:
    return f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"


# -- protocol and construction -------------------------------------------------------------


def test_implements_every_protocol(store: RedisStore) -> None:
    assert isinstance(store, Store)
    assert isinstance(store, Store)
    assert isinstance(store, AsyncStore)


def test_exported_lazily_from_the_package() -> None:
    import amo_oauth
    import amo_oauth.stores

    assert amo_oauth.RedisStore is RedisStore
    assert amo_oauth.stores.RedisStore is RedisStore
    assert "RedisStore" in amo_oauth.__all__
    assert amo_oauth.__all__ == sorted(amo_oauth.__all__)


def test_package_imports_without_redis_installed() -> None:
    probe = (
        "import sys; sys.modules['redis'] = None\n"
        "import amo_oauth\n"
        "assert 'amo_oauth.stores.redis' not in sys.modules\n"
        "try:\n"
        "    amo_oauth.RedisStore\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert "amo_oauth[redis]" in done.stdout


@pytest.mark.parametrize(
    "options",
    [{"timeout": 0}, {"timeout": -1.0}, {"timeout": float("inf")}, {"prefix": ""}],
)
def test_bad_options(redis_url: str, options: dict[str, object]) -> None:  # noqa: F811
    with pytest.raises(ValueError, match=r"timeout|prefix"):
        RedisStore(redis_url, **options)  # type: ignore[arg-type]


def test_bad_url_names_no_password() -> None:
    with pytest.raises(ValueError, match="not a Redis URL") as caught:
        RedisStore(f"http://:{REDIS_PASSWORD}@127.0.0.1:1/0")
    assert REDIS_PASSWORD not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__


def test_repr_names_host_and_db_never_the_password(store: RedisStore) -> None:
    assert store.compare_and_set(make_record(), None)
    text = repr(store)
    assert "127.0.0.1" in text
    assert "db 0" in text
    assert store.prefix in text
    assert REDIS_PASSWORD not in text
    assert "access-c1-1" not in text


# -- compare_and_set and delete ------------------------------------------------------------


def test_insert_once(store: RedisStore) -> None:
    first = make_record(host="first")
    assert store.load("c1").record is None
    assert store.compare_and_set(first, None) is True
    assert store.compare_and_set(make_record(host="second"), None) is False
    assert store.compare_and_set(make_record(version=5, host="third"), None) is False
    assert store.load("c1").record == first


def test_update_needs_the_current_version(store: RedisStore) -> None:
    assert store.compare_and_set(make_record(), None)
    second = make_record(version=2, host="second")
    assert store.compare_and_set(second, 1) is True
    for stale in (1, 3, 99):
        assert store.compare_and_set(make_record(version=stale + 1, host="stale"), stale) is False
    assert store.load("c1").record == second
    assert store.compare_and_set(make_record(version=3, host="third"), 2) is True
    assert store.load("c1").record == make_record(version=3, host="third")


def test_update_of_missing_record_creates_nothing(store: RedisStore) -> None:
    assert store.compare_and_set(make_record(version=2), 1) is False
    assert store.compare_and_set(make_record(version=1), 0) is False
    assert store.load("c1").record is None


@pytest.mark.parametrize(("version", "expected"), [(1, 1), (1, 2), (0, None), (-1, None)])
def test_version_must_increase(store: RedisStore, version: int, expected: int | None) -> None:
    with pytest.raises(ValueError, match="version"):
        store.compare_and_set(make_record(version=version), expected)
    assert store.load("c1").record is None


def test_versions_beyond_doubles_compare_exactly(store: RedisStore) -> None:
    # Lua numbers are doubles: 2**60 and 2**60 + 1 would compare equal as numbers.
    big = 2**60
    assert store.compare_and_set(make_record(version=big), None)
    assert store.compare_and_set(make_record(version=big + 2), big + 1) is False
    assert store.compare_and_set(make_record(version=big + 1), big) is True
    loaded = store.load("c1").record
    assert loaded is not None
    assert loaded.version == big + 1


def test_namespaced_keys_round_trip(store: RedisStore) -> None:
    record = make_record("user:7", integration="client-id")
    assert store.compare_and_set(record, None)
    assert store.load(record.key).record == record
    assert store.load("user:7").record is None


def test_delete_needs_the_current_version(store: RedisStore) -> None:
    assert store.compare_and_set(make_record(), None)
    assert store.compare_and_set(make_record(version=2), 1)
    assert store.delete("c1", 1) is False
    assert store.delete("c1", 3) is False
    assert store.load("c1").record == make_record(version=2)
    assert store.delete("c1", 2) is True
    assert store.load("c1").record is None
    assert store.delete("c1", 2) is False
    assert store.delete("nobody", 1) is False
    assert store.compare_and_set(make_record(host="again"), None) is True


def test_thread_race_on_one_version_has_one_winner(store: RedisStore) -> None:
    assert store.compare_and_set(make_record(), None)
    results = run_together(
        32, lambda i: store.compare_and_set(make_record(version=2, host=str(i)), 1)
    )
    assert results.count(True) == 1
    assert store.load("c1").record == make_record(version=2, host=str(results.index(True)))


def test_thread_race_to_insert_has_one_winner(store: RedisStore) -> None:
    results = run_together(32, lambda i: store.compare_and_set(make_record(host=str(i)), None))
    assert results.count(True) == 1
    assert store.load("c1").record == make_record(host=str(results.index(True)))


def test_thread_race_loses_no_update(store: RedisStore) -> None:
    assert store.compare_and_set(make_record(host="0"), None)
    conflicts = run_together(16, lambda _: increment(store, "c1", 10, pause=0.0001))
    final = store.load("c1").record
    assert final is not None
    assert final.version == 1 + 16 * 10
    assert final.host == str(16 * 10)
    assert sum(conflicts) > 0, "the threads never raced: the test proved nothing"


def test_two_stores_share_the_database(make_store: Callable[..., RedisStore]) -> None:
    one = make_store()
    other = make_store(one.prefix)
    assert one.compare_and_set(make_record(), None)
    assert other.load("c1").record == make_record()
    assert other.compare_and_set(make_record(version=2), 1)
    assert one.compare_and_set(make_record(version=2, host="late"), 1) is False
    assert make_store().load("c1").record is None  # another prefix sees nothing


def test_unreadable_record_is_store_error(store: RedisStore, raw: redis.Redis) -> None:
    assert store.compare_and_set(make_record(), None)
    raw.hset(f"{store.prefix}c:c1", "d", "{not json")
    with pytest.raises(StoreError, match="cannot read"):
        store.load("c1")


# -- the ledger ----------------------------------------------------------------------------


def test_consume_state_once_and_for_the_same_holder(store: RedisStore) -> None:
    assert store.consume_state("n1", LATER) is True
    assert store.consume_state("n1", LATER) is False
    assert store.consume_state("n1", LATER, "digest-a") is False
    assert store.consume_state("n2", LATER, "digest-a") is True
    assert store.consume_state("n2", LATER, "digest-a") is True
    assert store.consume_state("n2", LATER, "digest-b") is False
    assert store.consume_state("n2", LATER) is False


def test_holder_of(store: RedisStore) -> None:
    assert store.holder_of("n1") is None
    assert store.consume_state("n1", LATER, "digest-a")
    assert store.consume_state("n2", LATER)
    assert store.consume_state("n3", LATER, "")
    assert store.holder_of("n1") == "digest-a"
    assert store.holder_of("n2") is None  # held, but by nobody
    assert store.holder_of("n3") == ""
    assert store.holder_of("n4") is None


def test_ledger_entries_expire_at_expires_at(store: RedisStore, raw: redis.Redis) -> None:
    assert store.consume_state("fresh", LATER, "digest-a")
    key = f"{store.prefix}l:fresh"
    if int(raw.info("server")["redis_version"].split(".")[0]) >= 7:
        assert abs(raw.pexpiretime(key) - LATER.timestamp() * 1000) <= 1
    else:  # Redis 6.2 has no PEXPIRETIME
        assert 0 < raw.pttl(key) <= 10 * 60 * 1000
    # An entry that expired already is forgotten at once.
    assert store.consume_state("old", NOW - timedelta(minutes=1), "digest-a") is True
    assert store.holder_of("old") is None
    assert store.consume_state("old", LATER, "digest-b") is True


def test_consume_state_needs_an_aware_datetime(store: RedisStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store.consume_state("n1", datetime(2030, 1, 1))


def test_consume_state_race_has_one_winning_holder(store: RedisStore) -> None:
    holders = [f"digest-{i % 2}" for i in range(16)]
    results = run_together(len(holders), lambda i: store.consume_state("n", LATER, holders[i]))
    assert len({holders[i] for i, won in enumerate(results) if won}) == 1
    assert results.count(True) == 8


# -- claim -----------------------------------------------------------------------------------


def a_claim(
    expected_version: int | None = None,
    *,
    version: int = 1,
    code: str = "code:aaa",
    code_holder: str = "c1",
    state: str | None = "nonce-1",
    state_holder: str = "digest-a",
) -> Claim:
    return Claim(
        record=make_record(version=version, host=f"claimed-{version}"),
        expected_version=expected_version,
        code=LedgerEntry(code, code_holder, LATER),
        state=None if state is None else LedgerEntry(state, state_holder, LATER),
    )


def test_claim_takes_state_code_and_record(store: RedisStore) -> None:
    assert store.claim(a_claim()) is ClaimResult.CLAIMED
    assert store.load("c1").record == a_claim().record
    assert store.holder_of("nonce-1") == "digest-a"
    assert store.holder_of("code:aaa") == "c1"
    # The same holders pass again (a retry after a lost reply): only the record decides.
    assert store.claim(a_claim(1, version=2)) is ClaimResult.CLAIMED
    assert store.load("c1").record == a_claim(1, version=2).record


def test_claim_without_a_state(store: RedisStore) -> None:
    assert store.claim(a_claim(state=None)) is ClaimResult.CLAIMED
    assert store.holder_of("code:aaa") == "c1"
    assert store.holder_of("nonce-1") is None


def test_claim_state_used_writes_nothing(store: RedisStore) -> None:
    assert store.consume_state("nonce-1", LATER, "digest-other")
    assert store.claim(a_claim()) is ClaimResult.STATE_USED
    assert store.load("c1").record is None
    assert store.holder_of("code:aaa") is None


def test_claim_code_taken_writes_nothing(store: RedisStore) -> None:
    assert store.consume_state("code:aaa", LATER, "another-record")
    assert store.claim(a_claim()) is ClaimResult.CODE_TAKEN
    assert store.load("c1").record is None
    assert store.holder_of("nonce-1") is None
    assert store.holder_of("code:aaa") == "another-record"


def test_claim_record_changed_writes_nothing(store: RedisStore) -> None:
    # The default claim (three writes) would leave state and code taken here: one script does not.
    assert store.compare_and_set(make_record(version=3), None)
    assert store.claim(a_claim(1, version=2)) is ClaimResult.RECORD_CHANGED
    assert store.claim(a_claim(None)) is ClaimResult.RECORD_CHANGED
    assert store.load("c1").record == make_record(version=3)
    assert store.holder_of("nonce-1") is None
    assert store.holder_of("code:aaa") is None


def test_claim_checks_its_arguments(store: RedisStore) -> None:
    with pytest.raises(ValueError, match="version"):
        store.claim(a_claim(1, version=1))
    naive = attrs.evolve(a_claim(), code=LedgerEntry("code:aaa", "c1", datetime(2030, 1, 1)))
    with pytest.raises(ValueError, match="timezone-aware"):
        store.claim(naive)
    assert store.load("c1").record is None


def test_claim_race_has_one_winner_and_no_partial_writes(store: RedisStore) -> None:
    # 16 different codes arrive with one state: one claim wins; no loser leaves a code taken.
    results = run_together(
        16,
        lambda i: store.claim(a_claim(code=f"code:{i}", state_holder=f"digest-{i}")),
    )
    assert results.count(ClaimResult.CLAIMED) == 1
    assert set(results) == {ClaimResult.CLAIMED, ClaimResult.STATE_USED}
    winner = results.index(ClaimResult.CLAIMED)
    assert store.holder_of("nonce-1") == f"digest-{winner}"
    assert [i for i in range(16) if store.holder_of(f"code:{i}") is not None] == [winner]


# -- find_by_account and due_page -------------------------------------------------------------


def test_find_by_account_by_key_following_writes(store: RedisStore) -> None:
    for cid, account in [("b", 7), ("a", 7), ("c", 8), ("d", None)]:
        assert store.compare_and_set(make_record(cid, account_id=account), None)
    assert store.find_by_account(7) == [
        make_record("a", account_id=7),
        make_record("b", account_id=7),
    ]
    assert store.find_by_account(9) == []
    moved = make_record("a", version=2, account_id=8)
    assert store.compare_and_set(moved, 1)
    assert store.delete("b", 1)
    assert store.find_by_account(7) == []
    assert store.find_by_account(8) == [moved, make_record("c", account_id=8)]


def seed_refresh(store: RedisStore) -> None:
    """Connected records due at T0 + 5, 1, 3, 2, 4, 2 days ("b2" ties "b"), and three not."""
    for cid, days in [("e", 5), ("a", 1), ("c", 3), ("b2", 2), ("b", 2), ("d", 4)]:
        assert store.compare_and_set(
            make_record(cid, refresh_expires_at=T0 + timedelta(days)), None
        )
    for cid, status in [("x", ConnectionStatus.ERROR), ("y", ConnectionStatus.EXCHANGED)]:
        assert store.compare_and_set(make_record(cid, status=status, refresh_expires_at=T0), None)
    assert store.compare_and_set(ConnectionRecord("z", version=1), None)


def due_ids(store: RedisStore, before: datetime, limit: int) -> list[str]:
    return [record.connection_id for record in store.due_page(before, limit)]


def test_due_page_order_limit_and_cutoff(store: RedisStore) -> None:
    seed_refresh(store)
    later = T0 + timedelta(days=10)
    assert due_ids(store, later, 100) == ["a", "b", "b2", "c", "d", "e"]
    assert due_ids(store, later, 3) == ["a", "b", "b2"]
    assert due_ids(store, later, 0) == []
    assert due_ids(store, later, 2**70) == ["a", "b", "b2", "c", "d", "e"]
    assert due_ids(store, T0 + timedelta(days=3), 100) == ["a", "b", "b2"]  # strictly before
    assert due_ids(store, T0 + timedelta(days=3, microseconds=1), 100) == ["a", "b", "b2", "c"]
    msk = timezone(timedelta(hours=3))
    assert due_ids(store, (T0 + timedelta(days=2, hours=1)).replace(tzinfo=msk), 100) == ["a"]


def test_due_page_follows_updates_and_deletes(store: RedisStore) -> None:
    seed_refresh(store)
    assert store.compare_and_set(make_record("a", version=2, status=ConnectionStatus.ERROR), 1)
    later = make_record("b", version=2, refresh_expires_at=T0 + timedelta(days=30))
    assert store.compare_and_set(later, 1)
    assert store.delete("c", 1)
    assert due_ids(store, T0 + timedelta(days=10), 100) == ["b2", "d", "e"]


def test_due_page_checks_its_arguments(store: RedisStore) -> None:
    with pytest.raises(ValueError, match="limit"):
        store.due_page(T0, -1)
    with pytest.raises(ValueError, match="timezone-aware"):
        store.due_page(datetime(2030, 1, 1), 10)


# -- wait_for_change ---------------------------------------------------------------------------


def spy_loads(store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> threading.Semaphore:
    """A semaphore released after each ``store.load``: a waiter that loaded is subscribed."""
    loaded = threading.Semaphore(0)
    real = store.load

    def load(key: str) -> Loaded:
        try:
            return real(key)
        finally:
            loaded.release()

    monkeypatch.setattr(store, "load", load)
    return loaded


def test_wait_is_woken_by_another_store(
    make_store: Callable[..., RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    waiter = make_store()
    writer = make_store(waiter.prefix)
    assert writer.compare_and_set(make_record(), None)
    loaded = spy_loads(waiter, monkeypatch)
    thread = threading.Thread(target=waiter.wait_for_change, args=("c1", 1, LONG_WAIT))
    thread.start()
    assert loaded.acquire(timeout=JOIN)  # subscribed, loaded version 1: now it waits
    assert writer.compare_and_set(make_record(version=2), 1)
    thread.join(JOIN)
    assert not thread.is_alive(), "the write did not wake the waiter"


def test_waiters_share_one_subscription(
    make_store: Callable[..., RedisStore], raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    waiter = make_store()
    writer = make_store(waiter.prefix)
    keys = [f"k{i}" for i in range(5)]
    loaded = spy_loads(waiter, monkeypatch)
    threads = [
        threading.Thread(target=waiter.wait_for_change, args=(key, 0, LONG_WAIT)) for key in keys
    ]
    for thread in threads:
        thread.start()
    for _ in keys:
        assert loaded.acquire(timeout=JOIN)
    channel = f"{waiter.prefix}changed:0"
    assert raw.pubsub_numsub(channel) == [(channel, 1)]
    # A write to one key wakes only that key's waiter.
    assert writer.compare_and_set(make_record("k0"), None)
    threads[0].join(JOIN)
    assert not threads[0].is_alive()
    assert all(thread.is_alive() for thread in threads[1:])
    for key in keys[1:]:
        assert writer.compare_and_set(make_record(key), None)
    for thread in threads:
        thread.join(JOIN)
        assert not thread.is_alive()


def test_a_lost_subscription_wakes_waiters_and_is_replaced(
    make_store: Callable[..., RedisStore], raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    waiter = make_store()
    writer = make_store(waiter.prefix)
    loaded = spy_loads(waiter, monkeypatch)
    thread = threading.Thread(target=waiter.wait_for_change, args=("c1", 0, LONG_WAIT))
    thread.start()
    assert loaded.acquire(timeout=JOIN)
    assert raw.client_kill_filter(_type="pubsub") >= 1
    thread.join(JOIN)  # woken early: it may have missed a change while unsubscribed
    assert not thread.is_alive()
    # The next waiter subscribes again, and is woken by a write.
    thread = threading.Thread(target=waiter.wait_for_change, args=("c1", 0, LONG_WAIT))
    thread.start()
    assert loaded.acquire(timeout=JOIN)
    assert writer.compare_and_set(make_record(), None)
    thread.join(JOIN)
    assert not thread.is_alive()


def test_wait_returns_at_once_when_the_version_differs(store: RedisStore) -> None:
    assert store.compare_and_set(make_record(version=3), None)
    store.wait_for_change("c1", 2, LONG_WAIT)  # returns: the test would time out otherwise
    store.wait_for_change("c2", 1, LONG_WAIT)  # no record is version 0


def test_wait_returns_at_its_timeout(store: RedisStore) -> None:
    assert store.compare_and_set(make_record(), None)
    store.wait_for_change("c1", 1, 0.05)
    store.wait_for_change("c1", 1, 0)


def test_close_wakes_waiters(store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = spy_loads(store, monkeypatch)
    ended: list[BaseException | None] = []

    def wait() -> None:
        try:
            store.wait_for_change("c1", 0, LONG_WAIT)
            ended.append(None)
        except StoreError as exc:  # closed during the wait
            ended.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    assert loaded.acquire(timeout=JOIN)
    store.close()
    thread.join(JOIN)
    assert not thread.is_alive()
    assert len(ended) == 1 and isinstance(ended[0], StoreError)


def test_threads_and_tasks_share_one_subscription(
    make_store: Callable[..., RedisStore], raw: redis.Redis
) -> None:
    waiter = make_store()
    writer = make_store(waiter.prefix)  # another object: only the PUBLISH reaches the waiters
    assert writer.compare_and_set(make_record(), None)
    threads = [
        threading.Thread(target=waiter.wait_for_change, args=("c1", 1, LONG_WAIT)) for _ in range(4)
    ]

    async def main() -> None:
        for thread in threads:
            thread.start()
        tasks = [asyncio.create_task(waiter.await_for_change("c1", 1, LONG_WAIT)) for _ in range(4)]
        while waiter.hub.waiting("c1") < 8:
            await asyncio.sleep(0.005)
        channel = f"{waiter.prefix}changed:0"
        assert raw.pubsub_numsub(channel) == [(channel, 1)]
        assert await asyncio.to_thread(writer.compare_and_set, make_record(version=2), 1)
        await asyncio.wait_for(asyncio.gather(*tasks), JOIN)
        for thread in threads:  # before the store closes: a wait ended by close() raises
            await asyncio.to_thread(thread.join, JOIN)
            assert not thread.is_alive()

    run_async(waiter, main)
    assert waiter.hub.waiting() == 0


# -- the store's clock and check() -----------------------------------------------------------


def redis_now(raw: redis.Redis) -> datetime:
    seconds, micros = raw.time()
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=micros)


def test_load_reads_the_servers_clock_plus_the_offset(
    make_store: Callable[..., RedisStore], raw: redis.Redis
) -> None:
    offset = [timedelta(days=3)]
    store = make_store(clock_offset=lambda: offset[0])
    assert store.compare_and_set(make_record(), None)
    before = redis_now(raw)
    loaded = store.load("c1")
    assert loaded.record == make_record() and loaded.now.utcoffset() == timedelta(0)
    assert before + offset[0] <= loaded.now <= redis_now(raw) + offset[0]
    offset[0] = timedelta(days=-1)  # a test moves the store's time either way
    now = run_async(store, lambda: store.aload("nobody")).now
    assert now <= redis_now(raw) - timedelta(hours=23)


def test_ledger_keys_expire_by_the_stores_clock(make_store: Callable[..., RedisStore]) -> None:
    offset = [timedelta(0)]
    store = make_store(clock_offset=lambda: offset[0])
    expiry = store.load("c1").now + timedelta(hours=1)
    assert store.consume_state("n1", expiry, "digest-a")
    assert store.holder_of("n1") == "digest-a"
    assert not store.consume_state("n1", expiry, "digest-b")
    claim = attrs.evolve(
        a_claim(), state=LedgerEntry("n1", "digest-c", expiry + timedelta(hours=9))
    )
    assert store.claim(claim) is ClaimResult.STATE_USED
    offset[0] = timedelta(hours=2)  # past the entry's expiry on the store's clock
    assert store.holder_of("n1") is None
    assert store.claim(claim) is ClaimResult.CLAIMED
    assert store.holder_of("n1") == "digest-c"


def test_check_reports_the_schema_and_changes_nothing(
    make_store: Callable[..., RedisStore], raw: redis.Redis
) -> None:
    store = make_store(migrate=False)
    report = store.check()
    assert report.kind == "redis" and report.reachable and not report.schema_ready
    assert report.now is not None and "run amo-oauth migrate" in report.detail
    assert raw.keys(f"{store.prefix}*") == []  # nothing was written
    store.migrate()
    assert store.check().ok
    assert run_async(store, store.acheck).ok
    raw.set(f"{store.prefix}schema", "4")
    newer = make_store(store.prefix, migrate=False).check()
    assert newer.reachable and not newer.schema_ready and "'4'" in newer.detail


def test_check_of_a_server_down_names_no_password(refusing_port: int) -> None:
    store = RedisStore(closed_port_url(refusing_port), prefix=unique_prefix(), timeout=2.0)
    try:
        report = store.check()
        assert not report.reachable and not report.ok
        assert "127.0.0.1" in report.detail and REDIS_PASSWORD not in repr(report)
    finally:
        store.close()


# -- asyncio ---------------------------------------------------------------------------------


def test_async_operations(make_store: Callable[..., RedisStore]) -> None:
    store = make_store()

    async def main() -> None:
        assert (await store.aload("c1")).record is None
        assert await store.acompare_and_set(make_record(), None) is True
        assert await store.acompare_and_set(make_record(host="x"), None) is False
        assert await store.acompare_and_set(make_record(version=2), 1) is True
        assert (await store.aload("c1")).record == make_record(version=2)
        assert await store.afind_by_account(42) == [make_record(version=2)]
        assert await store.adue_page(T0 + timedelta(days=100), 10) == [make_record(version=2)]
        assert await store.aconsume_state("n1", LATER, "digest-a") is True
        assert await store.aconsume_state("n1", LATER, "digest-b") is False
        assert await store.aholder_of("n1") == "digest-a"
        assert await store.adelete("c1", 1) is False
        assert await store.adelete("c1", 2) is True
        used = a_claim(state="n1", state_holder="digest-z")
        assert await store.aclaim(used) is ClaimResult.STATE_USED
        assert await store.aclaim(a_claim()) is ClaimResult.CLAIMED
        with pytest.raises(ValueError, match="version"):
            await store.acompare_and_set(make_record(version=1), 1)

    run_async(store, main)
    # A blocking store sees what the asyncio side wrote.
    assert make_store(store.prefix).load("c1").record == a_claim().record


def test_async_wait_is_woken_by_a_blocking_write(
    make_store: Callable[..., RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    waiter = make_store()
    writer = make_store(waiter.prefix)
    assert writer.compare_and_set(make_record(), None)

    async def main() -> None:
        loaded = asyncio.Event()
        real = waiter.aload

        async def aload(key: str) -> Loaded:
            try:
                return await real(key)
            finally:
                loaded.set()

        monkeypatch.setattr(waiter, "aload", aload)
        waiting = asyncio.create_task(waiter.await_for_change("c1", 1, LONG_WAIT))
        await asyncio.wait_for(loaded.wait(), JOIN)
        assert await asyncio.to_thread(writer.compare_and_set, make_record(version=2), 1)
        await asyncio.wait_for(waiting, JOIN)

    run_async(waiter, main)


def test_async_wait_returns_at_its_timeout_or_at_once(store: RedisStore) -> None:
    async def main() -> None:
        assert await store.acompare_and_set(make_record(), None)
        await store.await_for_change("c1", 1, 0.05)
        await store.await_for_change("c1", 0, LONG_WAIT)

    run_async(store, main)


def test_aclose_closes_the_store(store: RedisStore) -> None:
    assert run_async(store, lambda: store.acompare_and_set(make_record(), None))
    with pytest.raises(StoreError, match="closed"):
        asyncio.run(store.aload("c1"))
    with pytest.raises(StoreError, match="closed"):
        store.load("c1")


# -- schema ------------------------------------------------------------------------------------


def test_unmigrated_database_is_refused(
    make_store: Callable[..., RedisStore], raw: redis.Redis
) -> None:
    store = make_store(migrate=False)
    calls: list[Callable[[], object]] = [
        lambda: store.load("c1"),
        lambda: store.compare_and_set(make_record(), None),
        lambda: store.delete("c1", 1),
        lambda: store.consume_state("n", LATER),
        lambda: store.holder_of("n"),
        lambda: store.claim(a_claim()),
        lambda: store.find_by_account(42),
        lambda: store.due_page(T0, 10),
        lambda: store.due_page(T0, 10, (T0, "c0")),
        lambda: store.scan(None, 10),
        lambda: run_async(store, lambda: store.aload("c1")),
    ]
    for call in calls:
        with pytest.raises(StoreError, match="run amo-oauth migrate"):
            call()
    assert raw.keys(f"{store.prefix}*") == []  # nothing was written


def test_migrate_is_idempotent(make_store: Callable[..., RedisStore], raw: redis.Redis) -> None:
    store = make_store(migrate=False)
    assert store.migrate() == 3
    assert store.compare_and_set(make_record(), None)
    assert store.migrate() == 3
    assert raw.get(f"{store.prefix}schema") == "3"
    assert store.load("c1").record == make_record()
    assert run_async(store, store.amigrate) == 3


@pytest.mark.parametrize("old", ["1", "2"])
def test_older_schema_is_refused(
    make_store: Callable[..., RedisStore], raw: redis.Redis, old: str
) -> None:
    """Schemas 1 and 2 kept a connection's status as ``state`` in their record bodies: such a
    database is refused, never converted nor misread."""
    store = make_store()
    assert store.compare_and_set(make_record(), None)
    raw.set(f"{store.prefix}schema", old)
    with pytest.raises(StoreError, match=f"schema '{old}'.*converts no older schema"):
        store.migrate()
    assert raw.get(f"{store.prefix}schema") == old  # left as it was
    with pytest.raises(StoreError, match=f"schema '{old}'"):
        store.load("c1")


def test_newer_schema_is_refused(make_store: Callable[..., RedisStore], raw: redis.Redis) -> None:
    store = make_store()
    raw.set(f"{store.prefix}schema", "4")
    with pytest.raises(StoreError, match="schema '4'"):
        store.migrate()
    with pytest.raises(StoreError, match="schema '4'"):
        store.load("c1")


# -- failures ----------------------------------------------------------------------------------


def assert_no_secret(error: BaseException, *secrets: str) -> None:
    """No secret in the error, nor in any error it was raised from."""
    seen: BaseException | None = error
    while seen is not None:
        for secret in secrets:
            assert secret not in str(seen)
            assert secret not in repr(seen)
        seen = seen.__cause__ or seen.__context__


def test_server_down_is_store_error_quickly(refusing_port: int) -> None:
    store = RedisStore(closed_port_url(refusing_port), prefix=unique_prefix(), timeout=2.0)
    try:
        with pytest.raises(StoreError, match=r"127\.0\.0\.1:\d+ db 0.*ConnectionError") as caught:
            store.load("c1")
        assert_no_secret(caught.value, REDIS_PASSWORD)
        with pytest.raises(StoreError, match="ConnectionError"):
            store.wait_for_change("c1", 0, LONG_WAIT)  # not a hang: the poll's load fails
        with pytest.raises(StoreError, match="ConnectionError"):
            store.migrate()

        async def main() -> None:
            with pytest.raises(StoreError, match="ConnectionError"):
                await store.acompare_and_set(make_record(), None)
            with pytest.raises(StoreError, match="ConnectionError"):
                await store.await_for_change("c1", 0, LONG_WAIT)

        run_async(store, main)
    finally:
        store.close()


def test_silent_server_is_store_error_not_a_hang() -> None:
    # A server that accepts connections and never answers: the socket timeout ends the call.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
        store = RedisStore(url, prefix=unique_prefix(), timeout=0.5)
        try:
            with pytest.raises(StoreError, match="TimeoutError") as caught:
                store.load("c1")
            assert_no_secret(caught.value, REDIS_PASSWORD)
        finally:
            store.close()


def test_wrong_password_names_neither_password(redis_url: str) -> None:  # noqa: F811
    wrong = "wrong-" + uuid.uuid4().hex
    store = RedisStore(redis_url.replace(REDIS_PASSWORD, wrong), prefix=unique_prefix())
    try:
        with pytest.raises(StoreError, match="db 0") as caught:
            store.migrate()
        assert_no_secret(caught.value, REDIS_PASSWORD, wrong)
        assert wrong not in repr(store)
    finally:
        store.close()


def test_closed_store_refuses_calls(store: RedisStore) -> None:
    assert store.compare_and_set(make_record(), None)
    store.close()
    store.close()
    calls: list[Callable[[], object]] = [
        lambda: store.load("c1"),
        lambda: store.compare_and_set(make_record(version=2), 1),
        lambda: store.delete("c1", 1),
        lambda: store.consume_state("n", LATER),
        lambda: store.holder_of("n"),
        lambda: store.claim(a_claim()),
        lambda: store.find_by_account(42),
        lambda: store.due_page(T0, 10),
        lambda: store.wait_for_change("c1", 1, LONG_WAIT),
        lambda: store.migrate(),
        lambda: asyncio.run(store.aload("c1")),
        lambda: asyncio.run(store.await_for_change("c1", 1, LONG_WAIT)),
    ]
    for call in calls:
        with pytest.raises(StoreError, match="closed"):
            call()


class TestRedisContract(StoreContract):
    """The public store contract, unchanged, on a real Redis server (the ``store`` fixture
    above: a fresh prefix per test)."""

    @pytest.fixture
    def skewed_store(self, make_store: Callable[..., RedisStore]) -> Callable[[timedelta], Store]:
        return lambda skew: make_store(clock_offset=lambda: skew)


def test_the_cli_names_migrate_and_migrate_makes_the_store(
    redis_url: str,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    from amo_oauth.cli import main

    url = redis_url.rsplit("/", 1)[0] + "/9"  # a database of its own: the default prefix
    args = ["--store", url, "--client-id", "c"]
    with pytest.raises(SystemExit, match="amo-oauth migrate") as missing:
        main(["status", "u", *args])
    assert REDIS_PASSWORD not in str(missing.value)
    assert main(["migrate", "--store", url]) == 0
    capsys.readouterr()
    assert main(["status", "u", *args]) == 0
    assert '"disconnected"' in capsys.readouterr().out


def test_tokens_are_encrypted_at_rest(
    make_store: Callable[..., RedisStore], raw: redis.Redis
) -> None:
    from cryptography.fernet import Fernet

    key = Fernet(Fernet.generate_key())
    prefix = unique_prefix()
    store = make_store(prefix, encryption=key)
    record = make_record()
    assert store.compare_and_set(record, None)
    assert record.tokens is not None
    stored = repr(
        [
            raw.hgetall(k) if raw.type(k) == "hash" else raw.get(k)
            for k in raw.keys(f"{prefix}*")
            if raw.type(k) in ("hash", "string")
        ]
    )
    assert record.tokens.access_token not in stored
    assert record.tokens.refresh_token not in stored
    assert store.load(record.key).record == record
    with pytest.raises(StoreError, match="wrong key"):
        make_store(prefix, encryption=Fernet(Fernet.generate_key())).load(record.key)


def test_idle_connections_are_checked_before_use(store: RedisStore) -> None:
    """A server that vanished without a reset is found by a PING on an idle connection (the
    change subscription only reads), on the blocking and the awaited clients alike."""
    assert store._clients.client.connection_pool.connection_kwargs["health_check_interval"] == 30
    assert store._clients.options["health_check_interval"] == 30  # the asyncio client's options


def test_closing_leaves_no_socket_open(redis_url: str) -> None:  # noqa: F811
    """Both clients' pools are closed with the store: redis-py leaves a pool that was passed
    in open, and its sockets used to linger until garbage collection (a ResourceWarning).
    Run in a fresh interpreter: this process holds other tests' garbage, whose warnings a
    collection here would report too."""
    script = f"""
import asyncio, gc, uuid, warnings
from amo_oauth.stores import RedisStore

async def main():
    store = RedisStore({redis_url!r}, prefix=f"test-{{uuid.uuid4().hex}}:")
    store.migrate()
    store.load("blocking")
    await store.aload("awaited")
    await store.aclose()

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", ResourceWarning)
    asyncio.run(main())
    gc.collect()
print([str(w.message) for w in caught if issubclass(w.category, ResourceWarning)])
"""
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert ran.stdout.strip() == "[]", ran.stdout + ran.stderr
