"""SQLiteStore beyond the conformance suite: many store objects and processes on one file, a file
deleted or replaced under a store, corrupt rows, the native seam operations and the pool."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest

from _store_race_worker import increment
from amo_oauth._codec import record_from_json, record_to_json
from amo_oauth._errors import StoreError
from amo_oauth._records import Account, ConnectionRecord, ConnectionStatus, TokenSet
from amo_oauth.stores import MemoryStore, SQLiteStore
from amo_oauth.stores import _sqlite_pool as sqlite_pool
from amo_oauth.stores._hub import Hub
from amo_oauth.stores._protocol import Claim, ClaimResult, LedgerEntry, Store
from amo_oauth.testing._contract import until

NOW = datetime.now(UTC)
LATER = NOW + timedelta(days=1)  # far enough that no slow run outlives it
WORKER = Path(__file__).with_name("_store_race_worker.py")
#: A bound for joins that only a hang could reach; never a measure of speed.
HANG = 20.0

# Loads "u1" and moves it from version 1 to 2, printing whether its compare-and-set won.
HELPER = """
import sys, attrs
from amo_oauth.stores import SQLiteStore
store = SQLiteStore(sys.argv[1])
record = store.load("u1").record
print(store.compare_and_set(attrs.evolve(record, version=2), 1), flush=True)
store.close()
"""


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "amo.db"


def connected(key: str = "u1", version: int = 1, account_id: int = 7) -> ConnectionRecord:
    tokens = TokenSet("access-secret", "refresh-secret", NOW, NOW + timedelta(days=1))
    return ConnectionRecord(
        key,
        status=ConnectionStatus.CONNECTED,
        version=version,
        host="x.amocrm.ru",
        tokens=tokens,
        account=Account(account_id, "x", "X"),
    )


def run_helper(db: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", HELPER, str(db)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def set_data(db: Path, data: object, key: str = "u1") -> None:
    raw = sqlite3.connect(db, isolation_level=None)
    try:
        raw.execute("UPDATE amo_connections SET data = ? WHERE connection_id = ?", (data, key))
    finally:
        raw.close()


# -- 1. exactly-once with many store objects and processes ---------------------------------


def test_second_store_object_does_not_drop_the_first_ones_locks(db: Path) -> None:
    a = SQLiteStore(db)
    assert a.compare_and_set(ConnectionRecord("u1", version=1), None)
    assert a.load("u1").record is not None
    second = SQLiteStore(db)
    assert second.load("u1").record is not None  # a second object on the same file
    assert run_helper(db) == "True"  # another process moves 1 -> 2
    assert a.compare_and_set(ConnectionRecord("u1", version=2), 1) is False
    stored = a.load("u1").record
    assert stored is not None and stored.version == 2
    second.close()
    a.close()


def test_no_descriptor_is_opened_on_the_database_file(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real_os_open, real_open = os.open, builtins.open

    def spy_os_open(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(os.fspath(path))
        return real_os_open(path, *args, **kwargs)

    def spy_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, str | os.PathLike):
            opened.append(os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy_os_open)
    monkeypatch.setattr(builtins, "open", spy_open)
    first = SQLiteStore(db)
    assert first.compare_and_set(connected(), None)
    second = SQLiteStore(db)
    assert second.load("u1").record == connected()
    assert second.claim(claim_of(connected(version=2), 1)) is ClaimResult.CLAIMED
    assert not [path for path in opened if Path(path).name.startswith(db.name)]
    first.close()
    second.close()


def test_created_file_and_journal_are_private(db: Path) -> None:
    store = SQLiteStore(db)
    assert store.compare_and_set(connected(), None)
    for name in (db.name, db.name + "-wal", db.name + "-shm"):
        assert (db.with_name(name).stat().st_mode & 0o777) == 0o600, name
    store.close()


def test_store_objects_and_a_process_win_every_version_once(db: Path) -> None:
    times, threads = 60, 2
    setup = SQLiteStore(db)
    assert setup.compare_and_set(ConnectionRecord("c1", version=1, host="0"), None)
    worker = subprocess.Popen(
        [sys.executable, str(WORKER), str(db), "c1", str(times), "0.001"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None and worker.stdin is not None
    assert worker.stdout.readline() == "ready\n"
    worker.stdin.write("go\n")
    worker.stdin.flush()
    # Each thread makes its own store object, one of them while the others are writing.
    with ThreadPoolExecutor(threads) as pool:
        conflicts = list(
            pool.map(lambda _: increment(SQLiteStore(db), "c1", times, 0.001), range(threads))
        )
    worker_conflicts = int(worker.communicate(timeout=60)[0])
    assert worker.returncode == 0
    final = setup.load("c1").record
    assert final is not None
    # Every success moved the version by one and the counter in host by one: none lost.
    assert final.version - 1 == times * (threads + 1)
    assert final.host == str(times * (threads + 1))
    assert sum(conflicts) + worker_conflicts > 0, "nobody raced: the test proved nothing"
    setup.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_leaves_the_child_no_inherited_connection(db: Path) -> None:
    store = SQLiteStore(db)
    assert store.compare_and_set(ConnectionRecord("c1", version=1, host="0"), None)
    assert store.connections_open == 1  # a pooled connection, idle when we fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            inherited = store.connections_open
            increment(SQLiteStore(db), "c1", 3)  # a new store object in the child
            increment(store, "c1", 3)
            os.write(write, str(inherited).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert os.read(read, 16) == b"0"
    os.close(read)
    final = store.load("c1").record
    assert final is not None and (final.version, final.host) == (7, "6")
    store.close()


# -- 2. a file deleted or replaced under a running store -----------------------------------


def test_deleted_file_is_store_error(db: Path) -> None:
    store = SQLiteStore(db)
    assert store.compare_and_set(connected(), None)
    for name in (db.name, db.name + "-wal", db.name + "-shm"):
        db.with_name(name).unlink(missing_ok=True)
    with pytest.raises(StoreError, match="deleted or replaced"):
        store.compare_and_set(connected(version=2), 1)
    with pytest.raises(StoreError, match="deleted or replaced"):
        store.load("u1")
    assert not db.exists()  # nothing wrote a new file either
    store.close()


def test_replaced_file_is_store_error(db: Path, tmp_path: Path) -> None:
    store = SQLiteStore(db)
    assert store.compare_and_set(connected(), None)
    other = SQLiteStore(tmp_path / "other.db")
    assert other.compare_and_set(connected(), None)
    other.close()
    os.replace(tmp_path / "other.db", db)
    with pytest.raises(StoreError, match="deleted or replaced"):
        store.compare_and_set(connected(version=2), 1)
    with pytest.raises(StoreError, match="deleted or replaced"):
        store.claim(claim_of(connected(version=2), 1))
    fresh = SQLiteStore(db)  # the file now at the path was not written to
    assert fresh.load("u1").record == connected()
    assert fresh.holder_of("code:c") is None
    fresh.close()
    store.close()


# -- 3. corrupt rows -----------------------------------------------------------------------


def body_with(**changes: Any) -> str:
    body = json.loads(record_to_json(connected()))
    for path, value in changes.items():
        target = body
        *parents, leaf = path.split("__")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return json.dumps(body)


CORRUPT_BODIES = {
    "list": "[]",
    "null": "null",
    "string": '"x"',
    "number": "5",
    "not-json": "{",
    "deep": "[" * 100_000 + "]" * 100_000,
    "deep-object": '{"a":' * 100_000 + "1" + "}" * 100_000,
    "version-text": body_with(version="x"),
    "version-bool": body_with(version=True),
    "status": body_with(status="nope"),
    "tokens-empty": body_with(tokens={}),
    "expires-number": body_with(tokens__expires_at=5),
    "expires-naive": body_with(tokens__expires_at="2030-01-01T00:00:00"),
    "account-id-text": body_with(account__id="7"),
    "connection-id-number": body_with(connection_id=5),
    "seen-codes": body_with(seen_codes=[["a"]]),
    "format-bool": body_with(format=True),
    "widget-text": body_with(widget="yes"),
}


@pytest.mark.parametrize("data", CORRUPT_BODIES.values(), ids=CORRUPT_BODIES.keys())
def test_codec_refuses_corrupt_bodies_with_value_error(data: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (the message names no content, by design)
        record_from_json(data)


@pytest.mark.parametrize("data", CORRUPT_BODIES.values(), ids=CORRUPT_BODIES.keys())
def test_every_read_of_a_corrupt_row_is_store_error(db: Path, data: str) -> None:
    store = SQLiteStore(db)
    assert store.compare_and_set(connected(), None)
    set_data(db, data)
    with pytest.raises(StoreError, match="cannot read"):
        store.load("u1")
    with pytest.raises(StoreError, match="cannot read"):
        store.find_by_account(7)
    with pytest.raises(StoreError, match="cannot read"):
        store.due_page(NOW + timedelta(days=30), 10)
    store.close()


@pytest.mark.parametrize("data", [5, b"\xff\xfe", "x" * 3], ids=["integer", "blob", "text"])
def test_a_body_of_another_type_is_store_error(db: Path, data: object) -> None:
    store = SQLiteStore(db)
    assert store.compare_and_set(connected(), None)
    set_data(db, data)
    with pytest.raises(StoreError, match="cannot read"):
        store.load("u1")
    store.close()


def test_a_body_of_another_key_or_version_is_store_error(db: Path) -> None:
    store = SQLiteStore(db)
    assert store.compare_and_set(connected(), None)
    assert store.compare_and_set(connected("u2"), None)
    set_data(db, record_to_json(connected("u2")))  # u1's row holds u2's record
    with pytest.raises(StoreError, match="cannot read"):
        store.load("u1")
    set_data(db, record_to_json(connected(version=5)))
    with pytest.raises(StoreError, match="cannot read"):
        store.load("u1")
    store.close()


def test_compare_and_set_overwrites_a_corrupt_row(db: Path) -> None:
    store = SQLiteStore(db)
    assert store.compare_and_set(connected(), None)
    set_data(db, "[" * 100_000)
    replacement = ConnectionRecord("u1", version=2)  # what disconnect() writes
    assert store.compare_and_set(replacement, 1)
    assert store.load("u1").record == replacement
    store.close()


def test_store_errors_name_no_secret(db: Path) -> None:
    store = SQLiteStore(db)
    assert store.compare_and_set(connected(), None)
    set_data(db, body_with(version="x"))
    with pytest.raises(StoreError) as caught:
        store.load("u1")
    assert "secret" not in str(caught.value) and "secret" not in repr(caught.value)
    store.close()


# -- 4. claim and holder_of ----------------------------------------------------------------


def claim_of(
    record: ConnectionRecord,
    expected: int | None,
    code_holder: str | None = None,
    state_holder: str = "digest-a",
    state: str | None = "nonce-1",
) -> Claim:
    return Claim(
        record=record,
        expected_version=expected,
        code=LedgerEntry("code:c", code_holder or record.key, LATER),
        state=LedgerEntry(state, state_holder, LATER) if state is not None else None,
    )


def claim_script(store: Store) -> list[object]:
    """Claims covering every result, then what the store holds afterwards."""
    results: list[object] = [
        store.claim(claim_of(connected(), None)),
        store.claim(claim_of(connected(), None)),  # same holders, record now exists
        store.claim(claim_of(connected(version=2), 1, state_holder="digest-b")),
        store.claim(claim_of(connected("u2"), None, state="nonce-2")),  # code held for u1
        store.claim(claim_of(connected(version=2), 1)),  # same holders again: claims
        store.claim(claim_of(connected(version=3), 2, state=None)),
    ]
    # Only the results and records compare: the default's ledger keeps the state a refused
    # claim took first (three writes), where SQLite takes nothing (one transaction).
    return [*results, store.load("u1").record, store.load("u2").record]


def test_claim_returns_what_the_default_returns(db: Path) -> None:
    store = SQLiteStore(db)
    expected = claim_script(MemoryStore())
    assert claim_script(store) == expected
    assert expected[:6] == [
        ClaimResult.CLAIMED,
        ClaimResult.RECORD_CHANGED,
        ClaimResult.STATE_USED,
        ClaimResult.CODE_TAKEN,
        ClaimResult.CLAIMED,
        ClaimResult.CLAIMED,
    ]
    store.close()


def test_claim_writes_nothing_unless_claimed(db: Path) -> None:
    store = SQLiteStore(db)
    assert store.compare_and_set(connected(), None)
    # The state and code are free but the record moved on: neither may be taken.
    assert store.claim(claim_of(connected(version=3), 2)) is ClaimResult.RECORD_CHANGED
    assert store.holder_of("nonce-1") is None
    assert store.holder_of("code:c") is None
    # A free state but a code held elsewhere: the state stays free.
    assert store.consume_state("code:c", LATER, "someone-else")
    assert store.claim(claim_of(connected(version=2), 1)) is ClaimResult.CODE_TAKEN
    assert store.holder_of("nonce-1") is None
    assert store.load("u1").record == connected()
    store.close()


def test_claim_is_one_commit(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    statements: list[str] = []
    real = sqlite_pool.FilePool._open_connection

    def traced(self: sqlite_pool.FilePool) -> sqlite3.Connection:
        conn = real(self)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sqlite_pool.FilePool, "_open_connection", traced)
    store = SQLiteStore(db)
    store.load("u1")  # the schema's own commits happen here
    statements.clear()
    assert store.claim(claim_of(connected(), None)) is ClaimResult.CLAIMED
    assert [s for s in statements if s.strip().upper() == "COMMIT"] == ["COMMIT"]
    assert sum(s.strip().upper().startswith("BEGIN") for s in statements) == 1
    store.close()


def test_holder_of_reads_the_ledger(db: Path) -> None:
    store = SQLiteStore(db)
    assert store.holder_of("n1") is None
    assert store.consume_state("n1", LATER, "digest-a")
    assert store.consume_state("n2", LATER)
    assert store.consume_state("old", NOW - timedelta(seconds=1), "digest-b")
    assert store.holder_of("n1") == "digest-a"
    assert store.holder_of("n2") is None  # held without a holder
    assert store.holder_of("old") is None  # expired: free
    assert store.consume_state("old", LATER, "digest-c")  # and free to take
    assert store.holder_of("old") == "digest-c"
    store.close()


# -- 4. waiting ----------------------------------------------------------------------------


@pytest.fixture
def no_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Polls far apart: within HANG only a wake-up can end a wait."""
    monkeypatch.setattr(sqlite_pool, "FIRST_POLL", 600.0)
    monkeypatch.setattr(sqlite_pool, "MAX_POLL", 600.0)


def test_a_write_through_another_object_wakes_a_waiter(db: Path, no_polling: None) -> None:
    a, b = SQLiteStore(db), SQLiteStore(db)
    assert a.compare_and_set(connected(), None)
    waiting = threading.Event()
    waiter = threading.Thread(
        target=lambda: (waiting.set(), a.wait_for_change("u1", 1, timeout=600)), daemon=True
    )
    waiter.start()
    assert waiting.wait(HANG)
    assert b.compare_and_set(connected(version=2), 1)
    waiter.join(HANG)
    assert not waiter.is_alive(), "the waiter was not woken by the other object's commit"
    a.close()
    b.close()


def test_wait_returns_at_once_when_the_version_already_differs(db: Path) -> None:
    store = SQLiteStore(db)
    assert store.compare_and_set(connected(), None)
    store.wait_for_change("u1", 0, timeout=600)  # would hang for the timeout otherwise
    store.wait_for_change("missing", 1, timeout=600)
    store.wait_for_change("u1", 1, timeout=0.01)  # unchanged: returns after its timeout
    store.close()


def test_another_process_commit_is_seen_by_polling(db: Path) -> None:
    store = SQLiteStore(db)
    assert store.compare_and_set(ConnectionRecord("u1", version=1), None)
    waiter = threading.Thread(
        target=lambda: store.wait_for_change("u1", 1, timeout=600), daemon=True
    )
    waiter.start()
    assert run_helper(db) == "True"
    waiter.join(HANG)
    assert not waiter.is_alive()
    store.close()


def test_a_commit_before_the_poll_of_a_key_watched_after_its_list_is_seen(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poller takes the list of watched keys, a waiter registers on "u1" and reads it,
    another process commits "u1", then the poller asks ``PRAGMA data_version``: that commit
    moved the answer before "u1" was ever compared, so every later poll sees the answer
    unchanged; "u1" must still be read on the next one (no other commit comes)."""
    store = SQLiteStore(db)
    assert store.compare_and_set(ConnectionRecord("u1", version=1), None)
    assert store.compare_and_set(ConnectionRecord("other", version=1), None)
    hub = store.hub
    read_u1 = threading.Event()
    seam_done = threading.Event()
    failures: list[BaseException] = []

    version_of = SQLiteStore._version

    def traced_version(self: SQLiteStore, key: str) -> int:
        found = version_of(self, key)
        if key == "u1":
            read_u1.set()
        return found

    monkeypatch.setattr(SQLiteStore, "_version", traced_version)
    watched_of = Hub._watched
    armed = [True]

    def seam(self: Hub) -> dict[str, frozenset[int]]:
        watched = watched_of(self)
        if self is hub and armed[0] and "other" in watched:
            armed[0] = False  # once: between this list (without "u1") and the PRAGMA
            try:
                assert "u1" not in watched
                waiter.start()
                assert read_u1.wait(HANG), "the waiter never read u1"
                assert run_helper(db) == "True"  # another process commits u1 at version 2
            except BaseException as exc:  # surfaced by the test's thread
                failures.append(exc)
            finally:
                seam_done.set()
        return watched

    monkeypatch.setattr(Hub, "_watched", seam)
    waiter = threading.Thread(
        target=lambda: store.wait_for_change("u1", 1, timeout=600), daemon=True
    )

    def keep() -> None:
        with contextlib.suppress(StoreError):  # ended by the store's close
            store.wait_for_change("other", 1, timeout=600)

    # A waiter on another key starts the poller and keeps it running.
    keeper = threading.Thread(target=keep, daemon=True)
    keeper.start()
    assert seam_done.wait(HANG), "the poller never took its list of watched keys"
    assert not failures, failures
    waiter.join(HANG)
    assert not waiter.is_alive(), "the other process's commit of u1 never woke its waiter"
    assert store.load("u1").version == 2
    store.close()
    keeper.join(HANG)


def test_async_waiter_is_woken_without_holding_a_thread(db: Path, no_polling: None) -> None:
    a, b = SQLiteStore(db), SQLiteStore(db)
    assert a.compare_and_set(connected(), None)

    async def scenario() -> None:
        # One worker thread: a waiter that held it would starve the aload below.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(1))
        waiters = [asyncio.create_task(a.await_for_change("u1", 1, 600)) for _ in range(3)]
        await asyncio.sleep(0)
        assert (await asyncio.wait_for(a.aload("u1"), HANG)).record == connected()
        assert await asyncio.wait_for(a.aholder_of("n"), HANG) is None
        await asyncio.to_thread(b.compare_and_set, connected(version=2), 1)
        await asyncio.wait_for(asyncio.gather(*waiters), HANG)

    asyncio.run(scenario())
    a.close()
    b.close()


def test_async_operations(db: Path) -> None:
    store = SQLiteStore(db)

    async def scenario() -> None:
        assert await store.aclaim(claim_of(connected(), None)) is ClaimResult.CLAIMED
        assert await store.aholder_of("nonce-1") == "digest-a"
        assert await store.acompare_and_set(connected(version=2), 1)
        assert [r.version for r in await store.afind_by_account(7)] == [2]
        assert len(await store.adue_page(NOW + timedelta(days=30), 5)) == 1
        assert await store.aconsume_state("n", LATER)
        assert await store.adelete("u1", 2)
        assert (await store.aload("u1")).record is None
        await store.await_for_change("u1", 1, 600)  # no record: version 0 differs
        await store.aclose()

    asyncio.run(scenario())
    with pytest.raises(StoreError, match="closed"):
        store.load("u1")


# -- 4. the pool ---------------------------------------------------------------------------


def test_pool_is_bounded(db: Path) -> None:
    store = SQLiteStore(db, max_connections=4)
    assert store.compare_and_set(connected(), None)
    start = threading.Barrier(64)

    def read(_: int) -> ConnectionRecord | None:
        start.wait(HANG)
        return store.load("u1").record

    with ThreadPoolExecutor(64) as pool:
        assert list(pool.map(read, range(64))) == [connected()] * 64
    assert 1 <= store.connections_opened <= 4
    assert store.connections_open <= 4
    store.close()
    assert store.connections_open == 0


def test_waiting_for_a_connection_times_out(db: Path) -> None:
    store = SQLiteStore(db, max_connections=1, timeout=0.05)
    store.load("u1")
    # The only connection is busy.
    with store._files.connection(), pytest.raises(StoreError, match="free connection"):
        store.load("u1")
    assert store.load("u1").record is None  # and free again
    store.close()


def test_close_wakes_callers_waiting_for_a_connection(db: Path) -> None:
    store = SQLiteStore(db, max_connections=1, timeout=600)
    store.load("u1")
    caught: list[BaseException] = []

    def load() -> None:
        try:
            store.load("u1")
        except StoreError as exc:
            caught.append(exc)

    with store._files.connection():
        waiter = threading.Thread(target=load, daemon=True)
        waiter.start()
        store.close()
        waiter.join(HANG)
    assert not waiter.is_alive()
    assert caught and "closed" in str(caught[0])


@pytest.mark.parametrize("bad", [{"max_connections": 0}, {"timeout": -1}])
def test_bad_arguments(db: Path, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        SQLiteStore(db, **bad)


def test_a_missing_directory_is_refused_at_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The common deployment mistake, told when the store is made (not at a user's first
    # click), naming the file by its absolute path so the operator need not guess.
    monkeypatch.chdir(tmp_path)
    where = tmp_path / "missing-dir" / "amo.db"
    with pytest.raises(StoreError) as caught:
        SQLiteStore(Path("missing-dir") / "amo.db")
    assert str(caught.value) == (
        f"SQLite store {str(where)!r} cannot be used: its directory {str(where.parent)!r} "
        "does not exist: create it, or choose another path"
    )
    assert not where.parent.exists()


def _deny_writes_under(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``folder`` read-only to this process: its mode, and for root (whom modes do not
    stop) the kernel's answer, as a read-only file system gives it."""
    folder.chmod(0o555)
    real = os.access

    def access(path: Any, mode: int, **kwargs: Any) -> bool:
        inside = Path(path) == folder or Path(path).parent == folder
        return False if inside and mode & os.W_OK else real(path, mode, **kwargs)

    if os.geteuid() == 0:
        monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "existing-file"])
def test_a_read_only_directory_is_refused_at_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    if existing:
        sqlite3.connect(folder / "amo.db").close()
    _deny_writes_under(folder, monkeypatch)
    try:
        with pytest.raises(StoreError) as caught:
            SQLiteStore(folder / "amo.db")
    finally:
        folder.chmod(0o755)
    assert str(caught.value).startswith(
        f"SQLite store {str(folder / 'amo.db')!r} cannot be used: this process may not write "
        f"in its directory {str(folder)!r}"
    )


def test_a_read_only_file_is_refused_at_construction(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqlite3.connect(db).close()
    db.chmod(0o444)
    real = os.access
    if os.geteuid() == 0:  # root writes any file: the kernel's answer is what is checked

        def access(path: Any, mode: int, **kwargs: Any) -> bool:
            return False if Path(path) == db else real(path, mode, **kwargs)

        monkeypatch.setattr(os, "access", access)
    with pytest.raises(StoreError, match="the file is read-only to this process") as caught:
        SQLiteStore(db)
    assert repr(str(db)) in str(caught.value)


def test_every_construction_message_is_on_the_stores_page(tmp_path: Path) -> None:
    page = (Path(__file__).parents[1] / "docs" / "stores.md").read_text(encoding="utf-8")
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-dir").mkdir()
    for path in (tmp_path / "missing" / "amo.db", tmp_path / "a-file" / "amo.db"):
        with pytest.raises(StoreError) as caught:
            SQLiteStore(path)
        listed = str(caught.value).replace(repr(str(path)), "'<absolute path>'")
        listed = listed.replace(repr(str(path.parent)), "'<directory>'")
        assert f"`{listed}`" in page
    with pytest.raises(StoreError) as caught:
        SQLiteStore(tmp_path / "a-dir")
    listed = str(caught.value).replace(repr(str(tmp_path / "a-dir")), "'<absolute path>'")
    assert f"`{listed}`" in page


def test_a_directory_removed_later_names_the_file_and_the_code(tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    folder.mkdir()
    path = folder / "amo.db"
    store = SQLiteStore(path)
    folder.rmdir()
    with pytest.raises(StoreError, match="SQLITE_CANTOPEN") as caught:
        store.load("u1")
    message = str(caught.value)
    assert message.startswith(f"SQLite store {str(path)!r} could not open its file:")
    assert "directory" in message  # the likely cause


def test_sqlite_errors_name_the_file(db: Path) -> None:
    raw = sqlite3.connect(db)
    raw.execute("PRAGMA user_version = 4")
    raw.close()
    with pytest.raises(StoreError, match="schema version 4") as newer:
        SQLiteStore(db).load("u1")
    assert repr(str(db)) in str(newer.value)
    other = db.with_name("other.db")
    store = SQLiteStore(other)
    assert store.compare_and_set(connected(), None)
    for name in (other.name, other.name + "-wal", other.name + "-shm"):
        other.with_name(name).unlink(missing_ok=True)
    with pytest.raises(StoreError, match="deleted or replaced") as replaced:
        store.load("u1")
    assert repr(str(other)) in str(replaced.value)


def test_records_are_keyed_by_record_key(db: Path) -> None:
    store = SQLiteStore(db)
    record = attrs.evolve(connected(), integration="client:1")
    assert store.compare_and_set(record, None)
    assert store.load(record.key).record == record
    assert store.load("u1").record is None
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("SELECT connection_id FROM amo_connections").fetchall() == [
            (record.key,)
        ]
    finally:
        raw.close()
    store.close()


# -- the store's clock, check(), and the file's one hub --------------------------------------


def test_load_carries_the_injected_clock(db: Path) -> None:
    moment = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=3)))
    store = SQLiteStore(db, clock=lambda: moment)
    assert store.compare_and_set(connected(), None)
    loaded = store.load("u1")
    assert (loaded.record, loaded.now) == (connected(), moment)
    assert loaded.now.utcoffset() == timedelta(0)  # given in UTC
    assert store.check().now == moment
    store.close()


def test_check_creates_nothing_and_names_what_is_missing(db: Path) -> None:
    store = SQLiteStore(db)
    report = store.check()
    assert (report.reachable, report.schema_ready) == (True, False)
    assert "does not exist" in report.detail
    assert not db.exists()  # a check is no first use
    assert store.compare_and_set(connected(), None)
    assert store.check().ok
    raw = sqlite3.connect(db)
    raw.execute("PRAGMA user_version = 4")
    raw.close()
    newer = SQLiteStore(db).check()
    assert (newer.reachable, newer.schema_ready) == (True, False)
    assert "schema version 4" in newer.detail
    store.close()
    assert not store.check().ok


def test_store_objects_on_one_file_share_one_hub_and_one_poller(db: Path) -> None:
    a, b = SQLiteStore(db), SQLiteStore(str(db).replace("/amo.db", "/./amo.db"))
    assert a.compare_and_set(connected(), None)
    assert a.hub is b.hub

    def pollers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == f"amo_oauth poller {a.path}"]

    waiters = [
        threading.Thread(target=store.wait_for_change, args=("u1", 1, 600))
        for store in (a, b, a, b)
    ]
    for waiter in waiters:
        waiter.start()
    until(lambda: a.hub.waiting("u1") == 4, "four waiters registered")
    assert len(pollers()) == 1  # one poller for the file, whoever waits on it
    assert b.compare_and_set(connected(version=2), 1)
    for waiter in waiters:
        waiter.join(HANG)
        assert not waiter.is_alive()
    until(lambda: not pollers(), "the poller ended once nobody waited")
    a.close()
    b.close()
