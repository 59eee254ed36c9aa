"""``PostgresStore`` against a throwaway PostgreSQL server (``_pg_server.postgres_url``).

The ``store`` fixture yields a fresh, migrated store on a table of its own per test (dropped
afterwards), so that the generic store contract can run against it unchanged.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from _pg_server import PASSWORD_MARK, postgres_url  # noqa: F401
from amo_oauth import StoreError
from amo_oauth._records import ConnectionStatus
from amo_oauth.stores import PostgresStore
from amo_oauth.stores._protocol import AsyncStore, Claim, ClaimResult, LedgerEntry, Store
from amo_oauth.testing import StoreContract
from amo_oauth.testing._contract import make_record

psycopg = pytest.importorskip("psycopg")

pytestmark = pytest.mark.services

T = TypeVar("T")
NOW = datetime.now(UTC)
LATER = NOW + timedelta(days=1)  # far enough that no slow run outlives it
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
#: Long enough never to be reached by a waiter that is woken as it should be.
FOREVER = 3600.0


def unique_table() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"


def drop_tables(url: str, table: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for suffix in ("", "_ledger", "_schema"):
            conn.execute(f'DROP TABLE IF EXISTS "{table}{suffix}"'.encode())


@pytest.fixture
def table(postgres_url: str) -> Iterator[str]:  # noqa: F811
    """A table name no other test uses; its tables are dropped afterwards."""
    name = unique_table()
    yield name
    drop_tables(postgres_url, name)


@pytest.fixture
def make_store(postgres_url: str, table: str) -> Iterator[Callable[..., PostgresStore]]:  # noqa: F811
    """Build more store objects (each with its own pools) on the test's table."""
    made: list[PostgresStore] = []

    def make(**options: Any) -> PostgresStore:
        made_store = PostgresStore(postgres_url, table=table, **options)
        made.append(made_store)
        return made_store

    yield make
    for each in made:
        each.close()


@pytest.fixture
def store(make_store: Callable[..., PostgresStore]) -> PostgresStore:
    """A fresh, migrated store on a table of its own."""
    fresh = make_store()
    fresh.migrate()
    return fresh


def run_together(count: int, task: Callable[[int], T]) -> list[T]:
    """Run ``task(0..count-1)`` in ``count`` threads released at once; re-raise any failure."""
    barrier = threading.Barrier(count)

    def started(i: int) -> T:
        barrier.wait(timeout=30)
        return task(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(started, range(count)))


def registered(store: PostgresStore, key: str | None = None) -> int:
    """How many of the store's waiters are registered on its hub (for ``key``, or in all)."""
    return store.hub.waiting(key)


def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds (bounded by pytest's timeout, not asserted on)."""
    while not condition():
        time.sleep(0.005)


def all_text(exc: BaseException) -> str:
    """The message and repr of the exception and of every exception in its chain (what a
    logged traceback shows, less the source lines)."""
    texts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(texts) < 40:
        texts += [str(seen), repr(seen), *traceback.format_exception_only(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(texts)


# -- the seam ------------------------------------------------------------------------------


def test_store_implements_both_protocols(store: PostgresStore) -> None:
    assert isinstance(store, Store)
    assert isinstance(store, AsyncStore)


# -- compare-and-set -----------------------------------------------------------------------


def test_load_missing_is_none(store: PostgresStore) -> None:
    assert store.load("nobody").record is None


def test_insert_once_and_keep_the_first(store: PostgresStore) -> None:
    assert store.compare_and_set(make_record(host="first.amocrm.ru"), None) is True
    assert store.compare_and_set(make_record(host="second.amocrm.ru"), None) is False
    assert store.load("c1").record == make_record(host="first.amocrm.ru")


def test_update_needs_the_current_version(store: PostgresStore) -> None:
    assert store.compare_and_set(make_record(), None)
    assert store.compare_and_set(make_record(version=3, host="stale"), 2) is False
    assert store.compare_and_set(make_record(version=2, host="new"), 1) is True
    assert store.compare_and_set(make_record(version=3, host="stale"), 1) is False
    assert store.load("c1").record == make_record(version=2, host="new")


def test_update_of_a_missing_record_creates_nothing(store: PostgresStore) -> None:
    assert store.compare_and_set(make_record(version=2), 1) is False
    assert store.load("c1").record is None


@pytest.mark.parametrize(("version", "expected"), [(0, None), (1, 1), (1, 2)])
def test_version_must_increase(store: PostgresStore, version: int, expected: int | None) -> None:
    with pytest.raises(ValueError, match="version"):
        store.compare_and_set(make_record(version=version), expected)


def test_numbers_beyond_bigint(store: PostgresStore) -> None:
    with pytest.raises(ValueError, match="bigint"):
        store.compare_and_set(make_record(version=2**63), None)
    assert store.compare_and_set(make_record(), None)
    assert store.delete("c1", 2**63) is False
    assert store.find_by_account(2**63) == []


def test_namespaced_record_round_trips(store: PostgresStore) -> None:
    record = make_record("user-42/Ünïcode ✓", integration="client-id", account_id=7)
    assert store.compare_and_set(record, None)
    assert store.load(record.key).record == record
    assert store.load(record.connection_id).record is None


def test_delete_needs_the_current_version(store: PostgresStore) -> None:
    assert store.compare_and_set(make_record(), None)
    assert store.delete("c1", 2) is False
    assert store.load("c1").record is not None
    assert store.delete("c1", 1) is True
    assert store.load("c1").record is None
    assert store.delete("c1", 1) is False


# -- the ledger ----------------------------------------------------------------------------


def test_consume_state_once_and_for_the_same_holder(store: PostgresStore) -> None:
    assert store.consume_state("n1", LATER) is True
    assert store.consume_state("n1", LATER) is False
    assert store.consume_state("n1", LATER, "digest-a") is False
    assert store.consume_state("n2", LATER, "digest-a") is True
    assert store.consume_state("n2", LATER, "digest-a") is True
    assert store.consume_state("n2", LATER, "digest-b") is False
    assert store.consume_state("n2", LATER) is False


def test_expired_ledger_keys_are_free(store: PostgresStore) -> None:
    assert store.consume_state("old", NOW - timedelta(minutes=1), "digest-a") is True
    assert store.holder_of("old") is None
    assert store.consume_state("old", LATER, "digest-b") is True
    assert store.holder_of("old") == "digest-b"


def test_consume_state_needs_an_aware_datetime(store: PostgresStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store.consume_state("n1", datetime(2030, 1, 1))


def test_holder_of(store: PostgresStore) -> None:
    assert store.holder_of("n1") is None
    assert store.consume_state("n1", LATER, "digest-a")
    assert store.consume_state("n2", LATER)
    assert store.holder_of("n1") == "digest-a"
    assert store.holder_of("n2") is None  # held without a holder
    assert store.consume_state("n1", LATER, "digest-b") is False  # holder_of took nothing


def test_consume_state_race_has_one_winner_per_holder(store: PostgresStore) -> None:
    holders = [f"digest-{i % 2}" for i in range(16)]
    results = run_together(len(holders), lambda i: store.consume_state("n", LATER, holders[i]))
    winners = {holders[i] for i, won in enumerate(results) if won}
    assert len(winners) == 1
    assert results.count(True) == 8


def test_expired_ledger_keys_are_pruned(
    store: PostgresStore,
    make_store: Callable[..., PostgresStore],
    postgres_url: str,  # noqa: F811
) -> None:
    for i in range(5):
        assert store.consume_state(f"old-{i}", NOW - timedelta(minutes=1))
    assert store.consume_state("live", LATER)

    def count() -> int:
        with psycopg.connect(postgres_url) as conn:
            query = f'SELECT count(*) FROM "{store.table}_ledger"'.encode()
            found: int = conn.execute(query).fetchone()[0]
            return found

    assert count() == 6
    assert make_store().consume_state("new", LATER)  # a new store prunes on its first call
    assert count() == 2


# -- claim ---------------------------------------------------------------------------------


def code_entry(holder: str = "c1", key: str = "code:" + "a" * 64) -> LedgerEntry:
    return LedgerEntry(key, holder, LATER)


def state_entry(holder: str = "digest-a", key: str = "nonce-1") -> LedgerEntry:
    return LedgerEntry(key, holder, LATER)


def test_claim_writes_all_three(store: PostgresStore) -> None:
    claim = Claim(make_record(), None, code_entry(), state_entry())
    assert store.claim(claim) is ClaimResult.CLAIMED
    assert store.load("c1").record == make_record()
    assert store.holder_of("nonce-1") == "digest-a"
    assert store.holder_of("code:" + "a" * 64) == "c1"
    # The same holders pass again; only the record's version decides then.
    again = Claim(make_record(version=2), 1, code_entry(), state_entry())
    assert store.claim(again) is ClaimResult.CLAIMED
    assert store.claim(again) is ClaimResult.RECORD_CHANGED


def test_claim_without_state(store: PostgresStore) -> None:
    assert store.claim(Claim(make_record(), None, code_entry())) is ClaimResult.CLAIMED
    assert store.load("c1").record == make_record()


def test_claim_state_used_writes_nothing(store: PostgresStore) -> None:
    assert store.consume_state("nonce-1", LATER, "digest-other")
    result = store.claim(Claim(make_record(), None, code_entry(), state_entry()))
    assert result is ClaimResult.STATE_USED
    assert store.load("c1").record is None
    assert store.holder_of("code:" + "a" * 64) is None
    assert store.holder_of("nonce-1") == "digest-other"


def test_claim_code_taken_writes_nothing(store: PostgresStore) -> None:
    assert store.consume_state("code:" + "a" * 64, LATER, "other-record")
    result = store.claim(Claim(make_record(), None, code_entry(), state_entry()))
    assert result is ClaimResult.CODE_TAKEN
    assert store.load("c1").record is None
    assert store.holder_of("nonce-1") is None  # the state taken first was rolled back


def test_claim_record_changed_writes_nothing(store: PostgresStore) -> None:
    assert store.compare_and_set(make_record(), None)
    result = store.claim(Claim(make_record(version=3), 2, code_entry(), state_entry()))
    assert result is ClaimResult.RECORD_CHANGED
    assert store.load("c1").record == make_record()
    assert store.holder_of("nonce-1") is None
    assert store.holder_of("code:" + "a" * 64) is None
    # Nothing was left taken, so another record may still claim the code.
    other = Claim(make_record("c2"), None, code_entry("c2"), state_entry())
    assert store.claim(other) is ClaimResult.CLAIMED


def test_claim_checks_its_arguments_before_writing(store: PostgresStore) -> None:
    with pytest.raises(ValueError, match="version"):
        store.claim(Claim(make_record(version=1), 1, code_entry(), state_entry()))
    naive = LedgerEntry("nonce-1", "digest-a", datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        store.claim(Claim(make_record(), None, code_entry(), naive))
    assert store.holder_of("code:" + "a" * 64) is None


def test_claim_race_has_one_winner(store: PostgresStore) -> None:
    # 16 connections race for one code, each for its own record: one claims it.
    results = run_together(
        16, lambda i: store.claim(Claim(make_record(f"c{i}"), None, code_entry(f"c{i}")))
    )
    assert results.count(ClaimResult.CLAIMED) == 1
    assert results.count(ClaimResult.CODE_TAKEN) == 15
    winner = results.index(ClaimResult.CLAIMED)
    assert store.holder_of("code:" + "a" * 64) == f"c{winner}"
    assert [r.connection_id for r in store.find_by_account(42)] == [f"c{winner}"]


# -- races ---------------------------------------------------------------------------------


def test_thread_race_on_one_version_has_one_winner(store: PostgresStore) -> None:
    assert store.compare_and_set(make_record(), None)
    results = run_together(
        32, lambda i: store.compare_and_set(make_record(version=2, host=f"h{i}"), 1)
    )
    assert results.count(True) == 1
    assert store.load("c1").record == make_record(version=2, host=f"h{results.index(True)}")


def test_thread_race_to_insert_has_one_winner(store: PostgresStore) -> None:
    results = run_together(32, lambda i: store.compare_and_set(make_record(host=f"h{i}"), None))
    assert results.count(True) == 1
    assert store.load("c1").record == make_record(host=f"h{results.index(True)}")


def test_two_stores_race_loses_no_update(
    store: PostgresStore, make_store: Callable[..., PostgresStore]
) -> None:
    stores = [store, make_store()]
    assert store.compare_and_set(make_record(host="0"), None)

    def bump(i: int) -> int:
        mine, conflicts, done = stores[i % 2], 0, 0
        while done < 10:
            current = mine.load("c1").record
            assert current is not None and current.host is not None
            new = make_record(version=current.version + 1, host=str(int(current.host) + 1))
            if mine.compare_and_set(new, current.version):
                done += 1
            else:
                conflicts += 1
        return conflicts

    conflicts = run_together(8, bump)
    final = store.load("c1").record
    assert final is not None
    assert (final.version, final.host) == (81, "80")
    assert sum(conflicts) > 0, "the threads never raced: the test proved nothing"


# -- queries -------------------------------------------------------------------------------


def test_find_by_account_by_key(store: PostgresStore) -> None:
    for cid, account in [("b", 7), ("é", 7), ("Z", 7), ("a", 7), ("c", 8), ("d", None)]:
        assert store.compare_and_set(make_record(cid, account_id=account), None)
    assert [r.connection_id for r in store.find_by_account(7)] == ["Z", "a", "b", "é"]
    assert store.find_by_account(8) == [make_record("c", account_id=8)]
    assert store.find_by_account(9) == []
    assert store.compare_and_set(make_record("a", version=2, account_id=8), 1)
    assert store.delete("b", 1)
    assert [r.connection_id for r in store.find_by_account(7)] == ["Z", "é"]


def test_due_page_order_cutoff_and_limit(store: PostgresStore) -> None:
    seeds = [
        ("late", ConnectionStatus.CONNECTED, 30),
        ("tie-b", ConnectionStatus.CONNECTED, 10),
        ("tie-a", ConnectionStatus.CONNECTED, 10),
        ("soon", ConnectionStatus.CONNECTED, 5),
        ("error", ConnectionStatus.ERROR, 1),
        ("after", ConnectionStatus.CONNECTED, 100),
    ]
    for cid, status, days in seeds:
        record = make_record(cid, status=status, refresh_expires_at=T0 + timedelta(days=days))
        assert store.compare_and_set(record, None)

    def due(before: datetime, limit: int) -> list[str]:
        return [r.connection_id for r in store.due_page(before, limit)]

    assert due(T0 + timedelta(days=50), 10) == ["soon", "tie-a", "tie-b", "late"]
    assert due(T0 + timedelta(days=50), 2) == ["soon", "tie-a"]
    assert due(T0 + timedelta(days=10), 10) == ["soon"]  # strictly before
    assert due(T0 + timedelta(days=50), 0) == []
    with pytest.raises(ValueError, match="limit"):
        store.due_page(T0, -1)
    with pytest.raises(ValueError, match="timezone-aware"):
        store.due_page(datetime(2030, 1, 1), 1)


# -- waiting for a change ------------------------------------------------------------------


def test_wait_for_change_is_woken_by_another_store(
    store: PostgresStore, make_store: Callable[..., PostgresStore]
) -> None:
    writer = make_store()  # another object, other pools: only NOTIFY can reach the waiter
    assert writer.compare_and_set(make_record(), None)
    returned = threading.Event()

    def wait() -> None:
        store.wait_for_change("c1", 1, FOREVER)
        returned.set()

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    until(lambda: registered(store, "c1"))
    assert not returned.is_set()
    assert writer.compare_and_set(make_record(version=2), 1)
    waiter.join(timeout=60)
    assert returned.is_set(), "the waiter was not woken by the write"


def test_a_wait_works_with_descriptors_above_1024(
    store: PostgresStore, make_store: Callable[..., PostgresStore]
) -> None:
    """select.select refuses a descriptor of 1024 or more; a busy server process has them."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1400
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.fail(f"the machine allows only {hard} open files; this test needs {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        writer = make_store()
        assert writer.compare_and_set(make_record(), None)
        returned = threading.Event()

        def wait() -> None:
            store.wait_for_change("c1", 1, FOREVER)  # the listener's socket is now above 1024
            returned.set()

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        until(lambda: registered(store, "c1"))
        assert writer.compare_and_set(make_record(version=2), 1)
        waiter.join(timeout=60)
        assert returned.is_set(), "the waiter was not woken by the write"
    finally:
        for descriptor in held:
            os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_wait_for_change_returns_at_once_when_the_version_differs(store: PostgresStore) -> None:
    assert store.compare_and_set(make_record(version=3), None)
    store.wait_for_change("c1", 2, FOREVER)  # would hang the test if it waited
    store.wait_for_change("missing", 1, FOREVER)


def test_wait_for_change_returns_at_its_timeout(store: PostgresStore) -> None:
    assert store.compare_and_set(make_record(), None)
    store.wait_for_change("c1", 1, 0.05)
    store.wait_for_change("c1", 1, 0)
    assert registered(store) == 0


def test_wait_for_change_survives_a_lost_listener(
    store: PostgresStore, make_store: Callable[..., PostgresStore]
) -> None:
    assert store.compare_and_set(make_record(), None)
    store.wait_for_change("c1", 1, 0)  # starts the listener
    with psycopg.connect(store._conns.conninfo, autocommit=True) as conn:
        killed = conn.execute(
            b"SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            b" WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()"
        ).fetchall()
    assert killed
    until(lambda: not store._listener.ready)
    # The next wait listens again, and is woken by a write as before.
    returned = threading.Event()
    waiter = threading.Thread(
        target=lambda: (store.wait_for_change("c1", 1, FOREVER), returned.set()), daemon=True
    )
    waiter.start()
    until(lambda: registered(store, "c1"))
    assert make_store().compare_and_set(make_record(version=2), 1)
    waiter.join(timeout=60)
    assert returned.is_set()


def test_threads_and_tasks_wait_on_the_hub_behind_one_listening_connection(
    store: PostgresStore, make_store: Callable[..., PostgresStore]
) -> None:
    writer = make_store()  # another object: only NOTIFY reaches the waiters
    assert writer.compare_and_set(make_record(), None)
    threads = [
        threading.Thread(target=store.wait_for_change, args=("c1", 1, FOREVER), daemon=True)
        for _ in range(4)
    ]

    async def main() -> None:
        for thread in threads:
            thread.start()
        tasks = [asyncio.create_task(store.await_for_change("c1", 1, FOREVER)) for _ in range(4)]
        while registered(store, "c1") < 8:
            await asyncio.sleep(0.005)
        await asyncio.to_thread(until, lambda: store._listener.ready)  # LISTEN sent (on load)
        with psycopg.connect(store._conns.conninfo) as conn:
            listening = conn.execute(
                b"SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'"
            ).fetchone()[0]
        assert listening == 1
        assert await asyncio.to_thread(writer.compare_and_set, make_record(version=2), 1)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        for thread in threads:  # before the store closes: a wait ended by close() raises
            await asyncio.to_thread(thread.join, 60)
            assert not thread.is_alive()
        await store.aclose()

    asyncio.run(main())
    assert registered(store) == 0


# -- the store's clock and check() ---------------------------------------------------------


def server_now(store: PostgresStore) -> datetime:
    with psycopg.connect(store._conns.conninfo) as conn:
        moment: datetime = conn.execute(b"SELECT now()").fetchone()[0]
    return moment


def test_load_reads_the_servers_clock_plus_the_offset(
    make_store: Callable[..., PostgresStore],
) -> None:
    offset = [timedelta(days=3)]
    store = make_store(clock_offset=lambda: offset[0])
    store.migrate()
    before = server_now(store)
    loaded = store.load("c1")
    assert loaded.record is None and loaded.now.utcoffset() == timedelta(0)
    assert before + offset[0] <= loaded.now <= server_now(store) + offset[0]
    offset[0] = timedelta(days=-1)  # a test moves the store's time either way
    assert asyncio.run(store.aload("c1")).now <= server_now(store) - timedelta(hours=23)


def test_ledger_keys_expire_by_the_stores_clock(make_store: Callable[..., PostgresStore]) -> None:
    offset = [timedelta(0)]
    store = make_store(clock_offset=lambda: offset[0])
    store.migrate()
    expiry = store.load("c1").now + timedelta(hours=1)
    assert store.consume_state("n1", expiry, "digest-a")
    assert store.holder_of("n1") == "digest-a"
    assert not store.consume_state("n1", expiry, "digest-b")
    offset[0] = timedelta(hours=2)  # past the entry's expiry on the store's clock
    assert store.holder_of("n1") is None
    assert store.consume_state("n1", expiry + offset[0], "digest-b")
    assert store.holder_of("n1") == "digest-b"


def test_check_reports_an_unmigrated_table_and_creates_nothing(
    make_store: Callable[..., PostgresStore],
) -> None:
    store = make_store()
    for report in (store.check(), asyncio.run(store.acheck())):
        assert report.kind == "postgres"
        assert report.reachable and not report.schema_ready and not report.ok
        assert report.now is not None and "migrate" in report.detail
    with pytest.raises(StoreError, match="does not exist"):
        store.load("c1")
    store.migrate()
    assert store.check().ok


def test_check_of_a_newer_schema(store: PostgresStore) -> None:
    with psycopg.connect(store._conns.conninfo, autocommit=True) as conn:
        conn.execute(f'INSERT INTO "{store.table}_schema" (version) VALUES (99)'.encode())
    report = store.check()
    assert report.reachable and not report.schema_ready
    assert "99" in report.detail


# -- awaited operations --------------------------------------------------------------------


def test_async_operations(store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_threads(*_: object, **__: object) -> None:
        raise AssertionError("an awaited call used a worker thread")

    monkeypatch.setattr(asyncio, "to_thread", no_threads)

    async def main() -> None:
        assert (await store.aload("c1")).record is None
        assert await store.acompare_and_set(make_record(), None) is True
        assert await store.acompare_and_set(make_record(), None) is False
        assert await store.acompare_and_set(make_record(version=2), 1) is True
        assert (await store.aload("c1")).record == make_record(version=2)
        assert await store.afind_by_account(42) == [make_record(version=2)]
        due = await store.adue_page(T0 + timedelta(days=365), 10)
        assert due == [make_record(version=2)]
        assert await store.aconsume_state("n1", LATER, "digest-a") is True
        assert await store.aconsume_state("n1", LATER, "digest-b") is False
        assert await store.aholder_of("n1") == "digest-a"
        claim = Claim(make_record("c2"), None, code_entry("c2"), state_entry("d", "nonce-2"))
        assert await store.aclaim(claim) is ClaimResult.CLAIMED
        changed = Claim(make_record("c2", version=5), 3, code_entry("c2", "code:b"))
        assert await store.aclaim(changed) is ClaimResult.RECORD_CHANGED
        assert await store.aholder_of("code:b") is None
        assert await store.adelete("c1", 1) is False
        assert await store.adelete("c1", 2) is True
        assert store.load("c1").record is None  # the blocking pool sees the awaited writes
        await store.aclose()

    asyncio.run(main())
    with pytest.raises(StoreError, match="closed"):
        store.load("c1")


def test_await_for_change_is_woken_by_a_blocking_write(
    store: PostgresStore, make_store: Callable[..., PostgresStore]
) -> None:
    writer = make_store()
    assert writer.compare_and_set(make_record(), None)

    async def main() -> None:
        waiting = asyncio.create_task(store.await_for_change("c1", 1, FOREVER))
        while not registered(store, "c1"):
            await asyncio.sleep(0.005)
        assert not waiting.done()
        write = threading.Thread(target=writer.compare_and_set, args=(make_record(version=2), 1))
        write.start()
        await asyncio.wait_for(waiting, 60)
        write.join()
        await store.await_for_change("c1", 1, FOREVER)  # differs now: returns at once
        await store.await_for_change("c1", 2, 0.01)  # at its timeout
        await store.aclose()

    asyncio.run(main())


def test_many_waiters_share_one_listening_connection(
    store: PostgresStore, make_store: Callable[..., PostgresStore]
) -> None:
    writer = make_store()
    for i in range(8):
        assert writer.compare_and_set(make_record(f"c{i}"), None)

    async def main() -> None:
        waits = [asyncio.create_task(store.await_for_change(f"c{i}", 1, FOREVER)) for i in range(8)]
        while registered(store) < 8:
            await asyncio.sleep(0.005)
        await asyncio.to_thread(until, lambda: store._listener.ready)  # LISTEN sent (on load)
        with psycopg.connect(store._conns.conninfo) as conn:
            listening = conn.execute(
                b"SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'"
            ).fetchone()[0]
        assert listening == 1
        for i in range(8):
            assert await store.acompare_and_set(make_record(f"c{i}", version=2), 1)
        await asyncio.wait_for(asyncio.gather(*waits), 60)
        await store.aclose()

    asyncio.run(main())


# -- schema --------------------------------------------------------------------------------


def test_migrate_is_idempotent(store: PostgresStore, postgres_url: str) -> None:  # noqa: F811
    assert store.compare_and_set(make_record(), None)
    store.migrate()
    store.migrate()
    assert store.load("c1").record == make_record()
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(f'SELECT version FROM "{store.table}_schema"'.encode()).fetchall()
    assert rows == [(2,)]


def test_concurrent_migrations(make_store: Callable[..., PostgresStore]) -> None:
    stores = [make_store() for _ in range(4)]
    run_together(4, lambda i: stores[i].migrate())
    assert stores[0].compare_and_set(make_record(), None)


def test_calls_before_migrate_say_so(make_store: Callable[..., PostgresStore]) -> None:
    fresh = make_store()
    for call in (
        lambda: fresh.load("c1"),
        lambda: fresh.compare_and_set(make_record(), None),
        lambda: fresh.consume_state("n", LATER),
        lambda: fresh.claim(Claim(make_record(), None, code_entry())),
    ):
        with pytest.raises(StoreError, match="run amo-oauth migrate"):
            call()
    with pytest.raises(StoreError, match="run amo-oauth migrate"):
        asyncio.run(fresh.aload("c1"))


def test_newer_schema_is_refused(store: PostgresStore, postgres_url: str) -> None:  # noqa: F811
    with psycopg.connect(postgres_url) as conn:
        conn.execute(f'INSERT INTO "{store.table}_schema" VALUES (3)'.encode())
    with pytest.raises(StoreError, match="schema version 3"):
        store.migrate()


def test_older_schema_is_refused(
    make_store: Callable[..., PostgresStore],
    postgres_url: str,  # noqa: F811
) -> None:
    """Schema 1 kept a connection's status as ``state`` (its column and its record bodies):
    such a table is refused, never converted nor misread."""
    old = make_store()
    with psycopg.connect(postgres_url) as conn:
        conn.execute(f'CREATE TABLE "{old.table}_schema" (version INTEGER NOT NULL)'.encode())
        conn.execute(f'INSERT INTO "{old.table}_schema" VALUES (1)'.encode())
    with pytest.raises(StoreError, match=r"schema version 1.*converts no older table"):
        old.migrate()
    report = old.check()
    assert report.reachable and not report.schema_ready and "schema version 1" in report.detail


def test_schema_qualified_table(postgres_url: str) -> None:  # noqa: F811
    schema = unique_table()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"'.encode())
    qualified = PostgresStore(postgres_url, table=f"{schema}.records")
    try:
        qualified.migrate()
        assert qualified.compare_and_set(make_record(), None)
        assert qualified.load("c1").record == make_record()
    finally:
        qualified.close()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE'.encode())


@pytest.mark.parametrize(
    "name", ["", "Upper", "with-dash", 'quo"te', "a.b.c", "1st", "x" * 41, "s.", "; drop"]
)
def test_bad_table_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="table"):
        PostgresStore("postgresql://u@127.0.0.1/app", table=name)


# -- secrets and failures ------------------------------------------------------------------


def test_repr_names_host_and_database_not_the_password(store: PostgresStore) -> None:
    assert PASSWORD_MARK in store._conns.conninfo  # the fixture's URL carries a password
    text = repr(store)
    assert "127.0.0.1" in text
    assert "amo_test" in text
    assert PASSWORD_MARK not in text
    assert "amo_test:" not in text


def test_errors_never_show_the_password(make_store: Callable[..., PostgresStore]) -> None:
    with pytest.raises(StoreError) as missing:
        make_store().load("c1")  # no table yet
    text = all_text(missing.value)
    assert "127.0.0.1/amo_test" in str(missing.value)
    assert PASSWORD_MARK not in text


def test_wrong_password_is_store_error_without_it(postgres_url: str) -> None:  # noqa: F811
    wrong = postgres_url.replace(PASSWORD_MARK, "pw-Wr0ng-")
    bad = PostgresStore(wrong, timeout=2)
    try:
        with pytest.raises(StoreError) as caught:
            bad.load("c1")
    finally:
        bad.close()
    assert "127.0.0.1/amo_test" in str(caught.value)
    assert "pw-Wr0ng-" not in all_text(caught.value)


def test_malformed_conninfo_is_not_quoted() -> None:
    with pytest.raises(ValueError, match="conninfo") as caught:
        PostgresStore("host=127.0.0.1 password=pw-Secr3t-x dbname")
    assert "pw-Secr3t-x" not in all_text(caught.value)


def test_server_down_is_store_error(refusing_port: int) -> None:
    url = f"postgresql://amo:pw-Secr3t-down@127.0.0.1:{refusing_port}/app"
    down = PostgresStore(url, timeout=1)
    try:
        for call in (
            lambda: down.load("c1"),
            lambda: down.migrate(),
            lambda: down.wait_for_change("c1", 0, FOREVER),
            lambda: asyncio.run(down.aload("c1")),
            lambda: asyncio.run(down.await_for_change("c1", 0, FOREVER)),
        ):
            with pytest.raises(StoreError, match=r"127\.0\.0\.1/app") as caught:
                call()
            assert "pw-Secr3t-down" not in all_text(caught.value)
        for report in (down.check(), asyncio.run(down.acheck())):
            assert not report.reachable and not report.ok
            assert "127.0.0.1/app" in report.detail and "pw-Secr3t-down" not in repr(report)
    finally:
        down.close()


#: A timeout long enough that a refused connection answered within half of it cannot be the
#: pool's timeout running out.
LONG_TIMEOUT = 30.0


def _first_call(store: PostgresStore, awaited: bool) -> None:
    if awaited:
        asyncio.run(store.aload("c1"))
    else:
        store.load("c1")


@pytest.mark.parametrize("awaited", [False, True], ids=["blocking", "awaited"])
def test_a_refusing_server_fails_at_once_with_the_cause(
    refusing_port: int, awaited: bool, record_property: Callable[[str, object], None]
) -> None:
    url = f"postgresql://amo:pw-Secr3t-down@127.0.0.1:{refusing_port}/app"
    down = PostgresStore(url, timeout=LONG_TIMEOUT)
    try:
        started = time.monotonic()
        with pytest.raises(StoreError) as caught:
            _first_call(down, awaited)
        took = time.monotonic() - started
        report = down.acheck() if awaited else None
        detail = asyncio.run(report).detail if report else down.check().detail
    finally:
        down.close()
    print(f"refused ({'awaited' if awaited else 'blocking'}): StoreError after {took:.3f} s")
    record_property("refused_seconds", round(took, 3))
    message = str(caught.value)
    assert "127.0.0.1/app" in message
    assert "connection refused" in message.lower()
    assert "connection refused" in detail.lower()
    assert "pw-Secr3t-down" not in all_text(caught.value) + detail
    assert took < LONG_TIMEOUT / 2  # not the pool's timeout running out


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port whose server accepts TCP connections (the kernel's backlog) and never
    answers: a host that cannot be reached in time."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen(8)
        yield held.getsockname()[1]


@pytest.mark.parametrize("awaited", [False, True], ids=["blocking", "awaited"])
def test_a_silent_server_fails_within_the_timeout_naming_it(
    silent_port: int, awaited: bool
) -> None:
    down = PostgresStore(f"postgresql://amo:pw-Secr3t-down@127.0.0.1:{silent_port}/app", timeout=2)
    try:
        with pytest.raises(StoreError, match=r"127\.0\.0\.1/app") as caught:
            _first_call(down, awaited)
    finally:
        down.close()
    assert "timeout" in str(caught.value).lower()
    assert "pw-Secr3t-down" not in all_text(caught.value)


def test_closed_store_refuses_calls(store: PostgresStore) -> None:
    assert store.compare_and_set(make_record(), None)
    store.close()
    store.close()
    calls: list[Callable[[], object]] = [
        lambda: store.load("c1"),
        lambda: store.compare_and_set(make_record(version=2), 1),
        lambda: store.delete("c1", 1),
        lambda: store.consume_state("n", LATER),
        lambda: store.holder_of("n"),
        lambda: store.claim(Claim(make_record(version=2), 1, code_entry())),
        lambda: store.find_by_account(42),
        lambda: store.due_page(T0, 10),
        lambda: store.wait_for_change("c1", 1, FOREVER),
        lambda: asyncio.run(store.aload("c1")),
        lambda: asyncio.run(store.await_for_change("c1", 1, FOREVER)),
    ]
    for call in calls:
        with pytest.raises(StoreError, match="closed"):
            call()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"min_size": 3, "max_size": 2}, "min_size"),
        ({"max_size": 0, "min_size": 0}, "max_size"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PostgresStore("postgresql://u@127.0.0.1/app", **options)


class TestPostgresContract(StoreContract):
    """The public store contract, unchanged, on a real PostgreSQL server (the ``store`` fixture
    above: a fresh migrated table per test).

    The async cases run on one event loop per test, and the store's async pool is closed in
    that loop before it ends: a psycopg ``AsyncConnectionPool`` belongs to the loop that opened
    it, and ``asyncio.run`` per call would leave its tasks to a loop being torn down (which can
    wait for ever on them)."""

    @pytest.fixture(autouse=True)
    def _one_loop(self, store: PostgresStore) -> Iterator[None]:
        self._loop = asyncio.new_event_loop()
        yield
        try:
            self._loop.run_until_complete(store.aclose())
        finally:
            self._loop.close()

    def run_async(self, main: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(main)

    @pytest.fixture
    def skewed_store(
        self, make_store: Callable[..., PostgresStore]
    ) -> Callable[[timedelta], Store]:
        return lambda skew: make_store(clock_offset=lambda: skew)


def test_the_cli_names_migrate_and_migrate_makes_the_store(
    postgres_url: str,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    from amo_oauth.cli import main

    args = ["--store", postgres_url, "--client-id", "c"]
    try:
        with pytest.raises(SystemExit, match="amo-oauth migrate") as missing:
            main(["status", "u", *args])
        assert PASSWORD_MARK not in str(missing.value)
        assert main(["migrate", "--store", postgres_url]) == 0
        assert main(["migrate", "--store", postgres_url]) == 0  # idempotent
        capsys.readouterr()
        assert main(["status", "u", *args]) == 0
        assert '"disconnected"' in capsys.readouterr().out
    finally:
        drop_tables(postgres_url, "amo_oauth_connections")


def test_tokens_are_encrypted_at_rest(
    make_store: Callable[..., PostgresStore],
    postgres_url: str,  # noqa: F811
    table: str,
) -> None:
    from cryptography.fernet import Fernet

    key = Fernet(Fernet.generate_key())
    store = make_store(encryption=key)
    store.migrate()
    record = make_record()
    assert store.compare_and_set(record, None)
    assert record.tokens is not None
    with psycopg.connect(postgres_url) as conn:
        raw = repr(conn.execute(f'SELECT * FROM "{table}"'.encode()).fetchall())
    assert record.tokens.access_token not in raw and record.tokens.refresh_token not in raw
    assert store.load(record.key).record == record
    with pytest.raises(StoreError, match="wrong key"):
        make_store(encryption=Fernet(Fernet.generate_key())).load(record.key)


def test_connections_find_a_silent_server_dead(store: PostgresStore, postgres_url: str) -> None:  # noqa: F811
    """A server that vanishes without a reset still ends in StoreError: the store's
    connections carry TCP keepalives and a user timeout, unless the conninfo sets its own."""
    with store._conns.pool().connection() as conn:
        used = conn.info.get_parameters()
    assert used["keepalives"] == "1" and used["keepalives_idle"] == "30"
    assert used["tcp_user_timeout"] == "60000"
    own = PostgresStore(postgres_url + "?keepalives_idle=5", table=store.table)
    try:
        with own._conns.pool().connection() as conn:
            assert conn.info.get_parameters()["keepalives_idle"] == "5"
    finally:
        own.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:hun@ter2@127.0.0.1:1/db",
        "postgresql://app:s3cr/et@127.0.0.1:1/db",
        "postgres://app:pa@ss/wo@rd@127.0.0.1/db",
    ],
)
def test_a_url_with_an_unescaped_password_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(ValueError, match="percent-encode") as refused:
        PostgresStore(url)
    for fragment in ("ter2", "hun", "s3cr", "et@", "pa@ss", "wo@rd"):
        assert fragment not in str(refused.value)


def test_a_url_with_an_encoded_password_is_accepted() -> None:
    store = PostgresStore("postgresql://app:hun%40ter2@127.0.0.1:1/db", timeout=1)
    try:
        assert "ter2" not in repr(store) and "127.0.0.1" in repr(store)
    finally:
        store.close()
