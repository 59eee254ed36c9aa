"""The store conformance suite: every store passes every test here.

A new store (Postgres, Redis, ...) joins by appending a factory to ``STORE_FACTORIES``; the
tests below then run against it unchanged. Tests specific to one store come at the end.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _store_race_worker import increment
from amo_oauth._errors import StoreError
from amo_oauth._records import (
    Account,
    ConnectionRecord,
    ConnectionState,
    ErrorInfo,
    Lease,
    SeenCode,
    TokenSet,
)
from amo_oauth.stores import MemoryStore, SQLiteStore, Store

from helpers import examples

T = TypeVar("T")
StoreFactory = Callable[[Path], Store]

#: (test id, factory) for every store under test. The factory gets a fresh per-test directory.
STORE_FACTORIES: list[tuple[str, StoreFactory]] = [
    ("memory", lambda _tmp: MemoryStore()),
    ("sqlite", lambda tmp: SQLiteStore(tmp / "store.db")),
]

NOW = datetime.now(UTC)
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
WORKER = Path(__file__).with_name("_store_race_worker.py")


@pytest.fixture(
    params=[factory for _, factory in STORE_FACTORIES], ids=[i for i, _ in STORE_FACTORIES]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store = request.param(tmp_path)
    yield made
    made.close()


def make_record(
    connection_id: str = "c1",
    *,
    version: int = 1,
    state: ConnectionState = ConnectionState.CONNECTED,
    account_id: int | None = 42,
    refresh_expires_at: datetime = T0 + timedelta(days=90),
    host: str | None = "example.amocrm.ru",
) -> ConnectionRecord:
    return ConnectionRecord(
        connection_id,
        state=state,
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
    )


def full_record() -> ConnectionRecord:
    """A record with every field set, datetimes in three different offsets."""
    msk = timezone(timedelta(hours=3))
    return ConnectionRecord(
        "user-42/Ünïcode ✓",
        state=ConnectionState.ERROR,
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
        error=ErrorInfo("verify_failed", None, datetime(2025, 3, 1, 9, 30, tzinfo=msk)),
        seen_codes=(SeenCode("a" * 64, T0), SeenCode("b" * 64, datetime(2025, 3, 1, tzinfo=msk))),
        lease=Lease("worker-7", "refresh", datetime(2025, 3, 1, 9, 31, tzinfo=UTC)),
        connected_at=datetime(2025, 2, 1, 0, 0, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
        updated_at=datetime(2025, 3, 1, 9, 30, 0, 1, tzinfo=UTC),
    )


def utc_offsets(record: ConnectionRecord) -> list[timedelta | None]:
    return [None if offset is None else timedelta(0) for offset in offsets(record)]


def offsets(record: ConnectionRecord) -> list[timedelta | None]:
    """The UTC offset of every datetime in ``record``: == on datetimes ignores them.

    A store keeps either the offsets it was given (memory) or UTC (serializing stores)."""
    moments = [record.connected_at, record.updated_at]
    if record.tokens:
        moments += [record.tokens.expires_at, record.tokens.refresh_expires_at]
    moments += [record.error.at if record.error else None]
    moments += [record.lease.expires_at if record.lease else None]
    return [moment.utcoffset() if moment else None for moment in moments]


# -- protocol ------------------------------------------------------------------------------


def test_store_implements_protocol(store: Store) -> None:
    assert isinstance(store, Store)


def test_repr_holds_no_secret(store: Store) -> None:
    assert store.compare_and_set(make_record(), None)
    text = repr(store)
    assert "access-c1-1" not in text
    assert "refresh-c1-1" not in text


def test_load_missing_is_none(store: Store) -> None:
    assert store.load("nobody") is None


# -- compare_and_set -----------------------------------------------------------------------


def test_insert_then_load(store: Store) -> None:
    record = make_record()
    assert store.compare_and_set(record, None) is True
    assert store.load("c1") == record
    assert store.load("c2") is None


def test_insert_twice_fails_and_keeps_the_first(store: Store) -> None:
    first = make_record(host="first")
    assert store.compare_and_set(first, None) is True
    assert store.compare_and_set(make_record(host="second"), None) is False
    assert store.compare_and_set(make_record(version=5, host="third"), None) is False
    assert store.load("c1") == first


def test_update_with_current_version(store: Store) -> None:
    assert store.compare_and_set(make_record(), None)
    second = make_record(version=2, host="second")
    assert store.compare_and_set(second, 1) is True
    assert store.load("c1") == second
    third = make_record(version=3, host="third")
    assert store.compare_and_set(third, 2) is True
    assert store.load("c1") == third


@pytest.mark.parametrize("stale", [1, 2, 4, 99])
def test_update_with_wrong_version_writes_nothing(store: Store, stale: int) -> None:
    assert store.compare_and_set(make_record(), None)
    current = make_record(version=3, host="current")
    assert store.compare_and_set(current, 1)
    assert store.compare_and_set(make_record(version=stale + 1, host="stale"), stale) is False
    assert store.load("c1") == current


def test_update_of_missing_record_creates_nothing(store: Store) -> None:
    assert store.compare_and_set(make_record(version=2), 1) is False
    assert store.load("c1") is None


def test_version_zero_is_not_an_insert(store: Store) -> None:
    # None inserts; 0 is a version no stored record has (inserts start at >= 1).
    assert store.compare_and_set(make_record(version=1), 0) is False
    assert store.load("c1") is None


@pytest.mark.parametrize(("version", "expected"), [(1, 1), (1, 2), (3, 5), (0, None), (-1, None)])
def test_version_must_increase(store: Store, version: int, expected: int | None) -> None:
    if expected is not None:
        assert store.compare_and_set(make_record(version=expected), None)
    before = store.load("c1")
    with pytest.raises(ValueError, match="version"):
        store.compare_and_set(make_record(version=version, host="bad"), expected)
    assert store.load("c1") == before


def test_record_round_trips_exactly(store: Store) -> None:
    record = full_record()
    assert store.compare_and_set(record, None)
    loaded = store.load(record.connection_id)
    assert loaded == record
    assert loaded is not None
    assert offsets(loaded) in (offsets(record), utc_offsets(record))
    assert loaded.tokens is not None
    assert loaded.tokens.access_token == "eyJ0eXAiOiJKV1Qi.access"
    assert loaded.tokens.refresh_token == "def50200.refresh"
    assert loaded.state is ConnectionState.ERROR


def test_bare_record_round_trips(store: Store) -> None:
    record = ConnectionRecord("bare", version=1)
    assert store.compare_and_set(record, None)
    assert store.load("bare") == record


# -- delete --------------------------------------------------------------------------------


def test_delete_with_right_version(store: Store) -> None:
    assert store.compare_and_set(make_record(), None)
    assert store.compare_and_set(make_record(version=2), 1)
    assert store.delete("c1", 2) is True
    assert store.load("c1") is None
    assert store.delete("c1", 2) is False
    # A deleted id can be inserted again.
    assert store.compare_and_set(make_record(host="again"), None) is True
    assert store.load("c1") == make_record(host="again")


@pytest.mark.parametrize("wrong", [1, 3])
def test_delete_with_wrong_version_keeps_the_record(store: Store, wrong: int) -> None:
    assert store.compare_and_set(make_record(), None)
    assert store.compare_and_set(make_record(version=2), 1)
    assert store.delete("c1", wrong) is False
    assert store.load("c1") == make_record(version=2)


def test_delete_missing(store: Store) -> None:
    assert store.delete("nobody", 1) is False


# -- consume_state -------------------------------------------------------------------------


def test_consume_state_once(store: Store) -> None:
    later = NOW + timedelta(minutes=10)
    assert store.consume_state("n1", later) is True
    assert store.consume_state("n2", later) is True
    assert store.consume_state("n1", later, "digest-a") is False
    assert store.consume_state("n1", later) is False  # no holder: plainly single-use


def test_consume_state_same_holder_again(store: Store) -> None:
    later = NOW + timedelta(minutes=10)
    assert store.consume_state("n1", later, "digest-a") is True
    assert store.consume_state("n1", later, "digest-a") is True
    assert store.consume_state("n1", later, "digest-b") is False
    assert store.consume_state("n1", later) is False
    assert store.consume_state("n1", later, "digest-a") is True


def test_consume_state_after_expiry(store: Store) -> None:
    # Nonces may be forgotten after they expire: only a fresh nonce is sure to work.
    assert store.consume_state("old", NOW - timedelta(minutes=1), "digest-a") is True
    assert store.consume_state("fresh", NOW + timedelta(minutes=10), "digest-b") is True
    assert store.consume_state("fresh", NOW + timedelta(minutes=10), "digest-c") is False


def test_consume_state_needs_aware_datetime(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store.consume_state("n1", datetime(2030, 1, 1))


def test_consume_state_race_has_one_winner_per_holder(store: Store) -> None:
    later = NOW + timedelta(minutes=10)
    holders = [f"digest-{i % 2}" for i in range(16)]
    results = run_together(len(holders), lambda i: store.consume_state("n", later, holders[i]))
    winners = {holders[i] for i, won in enumerate(results) if won}
    assert len(winners) == 1
    assert results.count(True) == 8


# -- find_by_account -----------------------------------------------------------------------


def test_find_by_account(store: Store) -> None:
    for cid, account in [("b", 7), ("a", 7), ("c", 8), ("d", None)]:
        assert store.compare_and_set(make_record(cid, account_id=account), None)
    assert store.find_by_account(7) == [
        make_record("a", account_id=7),
        make_record("b", account_id=7),
    ]
    assert store.find_by_account(8) == [make_record("c", account_id=8)]
    assert store.find_by_account(9) == []


def test_find_by_account_follows_updates_and_deletes(store: Store) -> None:
    assert store.compare_and_set(make_record("a", account_id=7), None)
    assert store.compare_and_set(make_record("b", account_id=7), None)
    moved = make_record("a", version=2, account_id=8)
    assert store.compare_and_set(moved, 1)
    assert store.delete("b", 1)
    assert store.find_by_account(7) == []
    assert store.find_by_account(8) == [moved]


# -- due_for_refresh -----------------------------------------------------------------------


def seed_refresh(store: Store) -> None:
    """Five connected records expiring at T0 + 5, 1, 3, 2, 4 days, and three not connected."""
    for cid, days in [("e", 5), ("a", 1), ("c", 3), ("b", 2), ("d", 4)]:
        record = make_record(cid, refresh_expires_at=T0 + timedelta(days=days))
        assert store.compare_and_set(record, None)
    for cid, state in [("x", ConnectionState.ERROR), ("y", ConnectionState.EXCHANGED)]:
        record = make_record(cid, state=state, refresh_expires_at=T0)
        assert store.compare_and_set(record, None)
    bare = ConnectionRecord("z", state=ConnectionState.DISCONNECTED, version=1)
    assert store.compare_and_set(bare, None)


def due_ids(store: Store, before: datetime, limit: int) -> list[str]:
    return [record.connection_id for record in store.due_for_refresh(before, limit)]


def test_due_for_refresh_soonest_first_connected_only(store: Store) -> None:
    seed_refresh(store)
    assert due_ids(store, T0 + timedelta(days=10), 100) == ["a", "b", "c", "d", "e"]
    assert store.due_for_refresh(T0 + timedelta(days=10), 1) == [
        make_record("a", refresh_expires_at=T0 + timedelta(days=1))
    ]


def test_due_for_refresh_limit_and_cutoff(store: Store) -> None:
    seed_refresh(store)
    assert due_ids(store, T0 + timedelta(days=10), 3) == ["a", "b", "c"]
    assert due_ids(store, T0 + timedelta(days=10), 0) == []
    assert due_ids(store, T0 + timedelta(days=10), 2**70) == ["a", "b", "c", "d", "e"]
    # Strictly before: a token expiring at the cutoff is not due yet.
    assert due_ids(store, T0 + timedelta(days=3), 100) == ["a", "b"]
    assert due_ids(store, T0 + timedelta(days=3, microseconds=1), 100) == ["a", "b", "c"]
    assert due_ids(store, T0 + timedelta(days=1), 100) == []


def test_due_for_refresh_compares_instants_not_wall_clocks(store: Store) -> None:
    seed_refresh(store)
    # T0 + 2 days 01:00 in UTC+3 is T0 + 1 day 22:00 in UTC: only "a" expired before it.
    cutoff = (T0 + timedelta(days=2, hours=1)).replace(tzinfo=timezone(timedelta(hours=3)))
    assert due_ids(store, cutoff, 100) == ["a"]


def test_due_for_refresh_follows_updates(store: Store) -> None:
    seed_refresh(store)
    assert store.compare_and_set(make_record("a", version=2, state=ConnectionState.ERROR), 1)
    later = make_record("b", version=2, refresh_expires_at=T0 + timedelta(days=30))
    assert store.compare_and_set(later, 1)
    assert due_ids(store, T0 + timedelta(days=10), 100) == ["c", "d", "e"]


def test_due_for_refresh_bad_arguments(store: Store) -> None:
    with pytest.raises(ValueError, match="limit"):
        store.due_for_refresh(T0, -1)
    with pytest.raises(ValueError, match="timezone-aware"):
        store.due_for_refresh(datetime(2030, 1, 1), 10)


# -- close ---------------------------------------------------------------------------------


def test_closed_store_refuses_calls(store: Store) -> None:
    assert store.compare_and_set(make_record(), None)
    store.close()
    store.close()  # closing twice is harmless
    calls: list[Callable[[], object]] = [
        lambda: store.load("c1"),
        lambda: store.compare_and_set(make_record(version=2), 1),
        lambda: store.delete("c1", 1),
        lambda: store.consume_state("n", NOW + timedelta(minutes=1)),
        lambda: store.find_by_account(42),
        lambda: store.due_for_refresh(T0, 10),
    ]
    for call in calls:
        with pytest.raises(StoreError, match="closed"):
            call()


# -- concurrency ---------------------------------------------------------------------------


def run_together(count: int, task: Callable[[int], T]) -> list[T]:
    """Run ``task(0..count-1)`` in ``count`` threads released at once; re-raise any failure."""
    barrier = threading.Barrier(count)

    def started(i: int) -> T:
        barrier.wait(timeout=10)
        return task(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(started, range(count)))


def test_thread_race_loses_no_update(store: Store) -> None:
    assert store.compare_and_set(make_record(host="0"), None)
    # The pause between load and compare-and-set lets the other threads in (it releases the GIL).
    conflicts = run_together(32, lambda _: increment(store, "c1", 20, pause=0.0001))
    final = store.load("c1")
    assert final is not None
    assert final.version == 1 + 32 * 20
    assert final.host == str(32 * 20)
    assert sum(conflicts) > 0, "the threads never raced: the test proved nothing"


def test_thread_race_to_insert_has_one_winner(store: Store) -> None:
    results = run_together(32, lambda i: store.compare_and_set(make_record(host=str(i)), None))
    assert results.count(True) == 1
    assert store.load("c1") == make_record(host=str(results.index(True)))


# -- any record ----------------------------------------------------------------------------

# Whole-minute offsets, as every real zone has today, and years far from datetime's limits
# (the codec stores UTC, and converting year 1 or 9999 at an offset would overflow).
fixed_offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
aware = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(9000, 1, 1), timezones=fixed_offsets
)
texts = st.text(max_size=40)
token_sets = st.builds(
    TokenSet,
    access_token=texts,
    refresh_token=texts,
    expires_at=aware,
    refresh_expires_at=aware,
    token_type=texts,
)
accounts = st.builds(Account, id=st.integers(1, 2**53), subdomain=texts, name=texts)
errors = st.builds(ErrorInfo, reason=texts, hint=st.none() | texts, at=aware)
leases = st.builds(
    Lease, owner=texts, purpose=st.sampled_from(["exchange", "refresh"]), expires_at=aware
)
hexes = st.text("0123456789abcdef", min_size=64, max_size=64)
records = st.builds(
    ConnectionRecord,
    connection_id=st.text(min_size=1, max_size=40),
    state=st.sampled_from(ConnectionState),
    version=st.integers(1, 2**31),
    host=st.none() | texts,
    tokens=st.none() | token_sets,
    account=st.none() | accounts,
    error=st.none() | errors,
    seen_codes=st.lists(st.builds(SeenCode, hexes, aware), max_size=4).map(tuple),
    lease=st.none() | leases,
    connected_at=st.none() | aware,
    updated_at=st.none() | aware,
)


# One store serves every example on purpose: records pile up in it as they would in use.
@settings(
    max_examples=examples(200),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(record=records)
def test_any_record_round_trips(store: Store, record: ConnectionRecord) -> None:
    cid = record.connection_id
    existing = store.load(cid)
    if existing is not None:
        assert store.delete(cid, existing.version)
    assert store.compare_and_set(record, None)
    loaded = store.load(cid)
    assert loaded == record
    assert loaded is not None
    assert offsets(loaded) in (offsets(record), utc_offsets(record))
    if record.account is not None:
        assert record in store.find_by_account(record.account.id)
    bumped = attrs.evolve(record, version=record.version + 1)
    assert store.compare_and_set(bumped, record.version)
    assert store.load(cid) == bumped


# -- SQLite only ---------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "amo.db"


def test_sqlite_two_process_race_loses_no_update(db: Path) -> None:
    processes, times = 4, 100
    store = SQLiteStore(db)
    assert store.compare_and_set(make_record(host="0"), None)
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(db), "c1", str(times), "0.001"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    for worker in workers:  # every process has the file open before any starts writing
        assert worker.stdout is not None
        assert worker.stdout.readline() == "ready\n"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    conflicts = [int(worker.communicate(timeout=60)[0]) for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * processes
    final = store.load("c1")
    assert final is not None
    assert final.version == 1 + processes * times
    assert final.host == str(processes * times)
    assert sum(conflicts) > 0, "the processes never raced: the test proved nothing"
    store.close()


def test_sqlite_data_persists_across_reopen(db: Path) -> None:
    first = SQLiteStore(db)
    assert first.compare_and_set(full_record(), None)
    assert first.consume_state("n1", NOW + timedelta(hours=1), "digest-a")
    first.close()
    second = SQLiteStore(db)
    assert second.load(full_record().connection_id) == full_record()
    assert second.consume_state("n1", NOW + timedelta(hours=1), "digest-b") is False
    second.close()


def test_sqlite_file_is_private(db: Path) -> None:
    store = SQLiteStore(db)
    assert not db.exists()  # nothing is created before first use
    assert store.compare_and_set(make_record(), None)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    wal = db.with_name(db.name + "-wal")
    assert wal.exists()
    assert stat.S_IMODE(wal.stat().st_mode) == 0o600
    store.close()


def test_sqlite_schema(db: Path) -> None:
    store = SQLiteStore(db)
    store.load("c1")
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (1,)
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {name for (name,) in raw.execute("SELECT name FROM sqlite_master")}
    raw.close()
    assert {
        "amo_connections",
        "amo_states",
        "amo_connections_account",
        "amo_connections_refresh",
    } <= tables
    store.close()


def test_sqlite_repr_shows_the_path(db: Path) -> None:
    store = SQLiteStore(db)
    assert repr(store) == f"SQLiteStore({str(db)!r})"
    assert store.path == str(db)


@pytest.mark.parametrize("path", [":memory:", "", "file:x?mode=memory"])
def test_sqlite_refuses_memory_databases(path: str) -> None:
    with pytest.raises(ValueError, match="MemoryStore"):
        SQLiteStore(path)


def test_sqlite_corrupt_file_is_store_error(db: Path) -> None:
    db.write_bytes(b"this is not an SQLite database, only bytes. " * 100)
    store = SQLiteStore(db)
    with pytest.raises(StoreError, match="SQLITE_NOTADB") as caught:
        store.load("c1")
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


def test_sqlite_locked_file_is_store_error(db: Path) -> None:
    store = SQLiteStore(db, timeout=0.05)
    assert store.compare_and_set(make_record(), None)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="SQLITE_BUSY") as caught:
            store.compare_and_set(make_record(version=2), 1)
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        assert store.load("c1") == make_record()  # WAL: readers are not blocked by a writer
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.compare_and_set(make_record(version=2), 1)  # the store recovered
    store.close()


def test_sqlite_unreadable_record_is_store_error(db: Path) -> None:
    store = SQLiteStore(db)
    assert store.compare_and_set(make_record(), None)
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE amo_connections SET data = '{\"format\": 99}'")
    raw.close()
    with pytest.raises(StoreError, match="cannot read"):
        store.load("c1")
    store.close()


def test_sqlite_newer_schema_is_store_error(db: Path) -> None:
    raw = sqlite3.connect(db)
    raw.execute("PRAGMA user_version = 2")
    raw.close()
    with pytest.raises(StoreError, match="schema version 2"):
        SQLiteStore(db).load("c1")


def test_sqlite_missing_directory_is_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="could not open"):
        SQLiteStore(tmp_path / "missing" / "amo.db").load("c1")


def test_sqlite_prunes_expired_nonces(db: Path) -> None:
    store = SQLiteStore(db)
    assert store.consume_state("old", NOW - timedelta(seconds=1))
    for i in range(64):
        assert store.consume_state(f"fresh-{i}", NOW + timedelta(hours=1))
    with sqlite3.connect(db) as raw:
        nonces = {nonce for (nonce,) in raw.execute("SELECT nonce FROM amo_states")}
    raw.close()
    assert "old" not in nonces
    assert len(nonces) == 64
    store.close()


@pytest.mark.parametrize(
    "record",
    [
        make_record(version=2**63),
        make_record(account_id=2**63),
        make_record(account_id=-(2**63) - 1),
    ],
    ids=["version", "account", "negative-account"],
)
def test_sqlite_refuses_numbers_beyond_64_bits(db: Path, record: ConnectionRecord) -> None:
    store = SQLiteStore(db)
    with pytest.raises(ValueError, match="64-bit"):
        store.compare_and_set(record, None)
    assert store.find_by_account(2**64) == []
    assert store.delete("c1", 2**64) is False
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_sqlite_store_works_in_a_forked_child(db: Path) -> None:
    store = SQLiteStore(db)
    assert store.compare_and_set(make_record(host="0"), None)  # the parent has a pooled connection
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            code = 0 if increment(store, "c1", 5) >= 0 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.load("c1") == attrs.evolve(make_record(host="5"), version=6)
    store.close()
