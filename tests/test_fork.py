"""A forked child is never stuck on a lock that one of the parent's other threads held at the
fork, and forgets the parent's waiters and listener threads (stores/_forks.py); a server store
used before the fork (``gunicorn --preload``) gives each child connections of its own, while
the parent's keep working."""

from __future__ import annotations

import asyncio
import http.server
import itertools
import os
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import httpx
import pytest

from _pg_server import postgres_url  # noqa: F401
from _redis_server import redis_url  # noqa: F401
from amo_oauth import AmoOAuth, AsyncAmoOAuth, Config, MemoryStore, StoreError, _kept
from amo_oauth._driving import drive
from amo_oauth._flows import Flows
from amo_oauth._kept import AsyncKeptRetry, KeptRetry
from amo_oauth._lifecycle_events import LifecycleEvent
from amo_oauth._limits import Attempt, Bounds, ExchangeLimiter
from amo_oauth._subscribers import Subscribers
from amo_oauth.stores import Hub
from amo_oauth.stores._base import BaseStore
from amo_oauth.stores._driven import offset_of
from amo_oauth.stores._listening import ChannelListener
from amo_oauth.stores._protocol import Claim, LedgerEntry, Loaded
from amo_oauth.stores._redis_memory import Eviction, MemoryGate, MemoryVerdict
from amo_oauth.stores._rows import RecordCodec
from amo_oauth.testing._contract import T0, make_record

if TYPE_CHECKING:
    from amo_oauth.stores import PostgresStore, RedisStore

    ServerStore: TypeAlias = PostgresStore | RedisStore

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")

#: Seconds a child may take before it counts as stuck: far above the few milliseconds a child
#: needs, so only a lock that is never released reaches it, however loaded the machine.
STUCK = 60.0


def _exit_code(pid: int) -> int | None:
    """The child's exit code, or None when it was still running after ``STUCK`` seconds (it is
    killed then)."""
    deadline = time.monotonic() + STUCK
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def _in_child(work: Callable[[], None]) -> int:
    """Fork; the child runs ``work()`` and exits 0 (1 on any exception), never returning into
    pytest. Returns the child's pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    return pid


@contextmanager
def _held(lock: Any) -> Iterator[None]:
    """``lock`` held by another thread, one a child forked in the block does not have."""
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    held.wait()
    try:
        yield
    finally:
        release.set()
        holder.join()


def _held_at_fork(lock: Any, child: Callable[[], None]) -> int | None:
    """Fork while another thread of this process holds ``lock``; the child runs ``child()``.
    Returns the child's exit code (None: stuck on a lock, then killed)."""
    with _held(lock):
        return _exit_code(_in_child(child))


@pytest.fixture
def busy_store() -> Iterator[MemoryStore]:
    """A MemoryStore whose lock two threads take and release all the time, and on whose hub a
    third thread waits: a fork lands while one of them holds a lock, sooner or later."""
    store = MemoryStore()
    assert store.compare_and_set(make_record(), None)
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            store.load("c1")

    def wait() -> None:
        while not stop.is_set():
            store.hub.wait("c1", 1, 0.001, lambda: 1)

    threads = [threading.Thread(target=job, daemon=True) for job in (hammer, hammer, wait)]
    for thread in threads:
        thread.start()
    yield store
    stop.set()
    for thread in threads:
        thread.join()
    store.close()


def test_a_child_forked_while_threads_use_a_memory_store_can_use_it(
    busy_store: MemoryStore,
) -> None:
    def child() -> None:
        loaded = busy_store.load("c1")
        assert loaded.record is not None
        assert busy_store.hub.waiting() == 0  # the parent's waiter is not the child's
        busy_store.hub.wait("c1", loaded.record.version, 0.01, lambda: 1)

    for _ in range(40):
        code = _exit_code(_in_child(child))
        assert code is not None, "a child stuck on a lock held at the fork"
        assert code == 0


def test_a_hub_in_a_child_forgets_the_parents_watches_and_poller() -> None:
    hub = Hub(name="fork")

    def child() -> None:
        hub.notify("c1")  # takes the lock a vanished thread held at the fork
        assert hub.waiting() == 0

    assert _held_at_fork(hub._lock, child) == 0


def test_lifecycle_callbacks_in_a_child_can_be_registered_and_heard() -> None:
    subscribers = Subscribers()
    heard: list[int] = []
    subscribers.add(LifecycleEvent, lambda event: heard.append(os.getpid()))

    def child() -> None:
        subscribers.add(LifecycleEvent, lambda event: None)  # takes the lock
        subscribers.deliver(LifecycleEvent(connection_id="c", client_id="i", at=T0))
        assert heard == [os.getpid()]  # the parent's callbacks are inherited

    assert _held_at_fork(subscribers._lock, child) == 0


def test_a_redis_memory_gate_in_a_child_admits() -> None:
    gate = MemoryGate("Redis store (test)", allowed=False)

    def child() -> None:
        gate.admit(MemoryVerdict(Eviction.NEVER))  # takes the lock
        assert gate.passed

    assert _held_at_fork(gate._lock, child) == 0


def test_the_access_log_filters_install_in_a_child() -> None:
    from amo_oauth.web import _redact

    def child() -> None:
        _redact.install_access_log_redaction(["amo_oauth.test.child"])  # takes the lock

    assert _held_at_fork(_redact._INSTALLING.lock, child) == 0


def test_a_listener_in_a_child_starts_its_own_thread() -> None:
    class Idle(ChannelListener[None]):
        def _open(self) -> None:
            return None

        def _serve(self, conn: None) -> None:
            self.stopping.wait()

        def _disconnect(self, conn: None) -> None:
            pass

        def _interrupt(self) -> None:
            pass

    listener = Idle("fork listener", "test", lambda key: None, lambda: None)
    listener.ensure(STUCK)

    def child() -> None:
        assert not listener.ready  # the parent's thread is not the child's
        listener.ensure(STUCK)
        assert listener.ready

    try:
        assert _held_at_fork(listener._cond, child) == 0
    finally:
        listener.close()


# -- server stores used before the fork (gunicorn --preload) --------------------------------

#: Loads of its own key each process makes while the others make theirs.
LOADS = 200
CHILDREN = 3
#: The record keys: the parent's is k0, child i's is k{i}.
KEYS = [f"k{i}" for i in range(CHILDREN + 1)]


@pytest.fixture(params=["postgres", "redis"])
def make_server_store(request: pytest.FixtureRequest) -> Iterator[Callable[[], ServerStore]]:
    """Make stores on one fresh table (PostgreSQL) or prefix (Redis) of the session's server;
    each is closed at the end. The server starts only for its own parameter."""
    made: list[ServerStore] = []
    name = f"fork_{uuid.uuid4().hex[:12]}"
    if request.param == "postgres":
        pytest.importorskip("psycopg")
        from amo_oauth.stores import PostgresStore

        url = request.getfixturevalue("postgres_url")

        def make() -> ServerStore:
            made.append(PostgresStore(url, table=name))
            return made[-1]

    else:
        pytest.importorskip("redis")
        from amo_oauth.stores import RedisStore

        url = request.getfixturevalue("redis_url")

        def make() -> ServerStore:
            made.append(RedisStore(url, prefix=f"{name}:"))
            return made[-1]

    yield make
    for store in made:
        store.close()
    if request.param == "postgres":
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            for suffix in ("", "_ledger", "_schema"):
                conn.execute(f"DROP TABLE IF EXISTS {name}{suffix}".encode())


def _load_own(store: ServerStore, key: str, until: threading.Event | None = None) -> None:
    """``LOADS`` loads of ``key``, and more until ``until`` is set; each must be that key's
    record."""
    for done in itertools.count():
        if done >= LOADS and (until is None or until.is_set()):
            return
        record = store.load(key).record
        assert record is not None, f"{key}: no record"
        assert record.key == key, f"{key}: got another key's record"


def _child_of_preload(store: ServerStore, key: str) -> None:
    """What a worker does with the store it inherited: read its own record (blocking and
    awaited), write it, wait for a change (its own listener), and close the store at exit."""
    _load_own(store, key)
    loaded = asyncio.run(store.aload(key))
    assert loaded.record is not None and loaded.record.key == key
    assert store.compare_and_set(make_record(key, version=2), 1)
    store.wait_for_change(key, 2, 0.05)  # nothing changes: returns after 50 ms
    store.close()


def _fork_reporting(work: Callable[[], None]) -> tuple[int, int]:
    """Fork; the child runs ``work()``, writes "ok" or its error to a pipe and exits. Returns
    the child's pid and the pipe's reading end."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        message = "ok"
        try:
            work()
        except BaseException as exc:
            message = "".join(traceback.format_exception_only(exc))[-2000:]
        finally:
            os.write(write_end, message.encode())
            os._exit(0)
    os.close(write_end)
    return pid, read_end


def _report(pid: int, read_end: int) -> str:
    """What the child wrote, or "stuck" when it was still running after ``STUCK`` seconds."""
    try:
        if _exit_code(pid) is None:
            return "stuck"
        return os.read(read_end, 4096).decode() or "exited without a word"
    finally:
        os.close(read_end)


def _in_thread(work: Callable[[], None]) -> Callable[[], str]:
    """Run ``work`` in a daemon thread; the returned call waits up to ``STUCK`` seconds and says
    "ok", the error, or "stuck"."""
    outcome: list[str] = []

    def run() -> None:
        try:
            work()
            outcome.append("ok")
        except BaseException as exc:
            outcome.append(repr(exc)[:500])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result() -> str:
        thread.join(STUCK)
        return outcome[0] if outcome else "stuck"

    return result


def test_children_of_a_parent_that_used_a_server_store_read_only_their_own_records(
    make_server_store: Callable[[], ServerStore],
) -> None:
    """The reviewer's gunicorn --preload scenario: the parent migrates and writes, has used
    both pools and listens, then forks; every process loads its own key at once. Before the
    fix (PostgreSQL) a child got other keys' records or an IndexError, and processes hung."""
    store = make_server_store()
    store.migrate()
    for key in KEYS:
        assert store.compare_and_set(make_record(key), None)
    assert store.load("k0").record is not None  # the blocking pool is open at the fork
    assert asyncio.run(store.aload("k0")).record is not None  # and the awaited one
    # A waiter listens at the fork: the listener's thread and connection are the parent's.
    parent_waits = _in_thread(lambda: store.wait_for_change("k0", 1, STUCK))
    deadline = time.monotonic() + STUCK
    while store.hub.waiting() == 0 or not store._listener.ready:
        assert time.monotonic() < deadline, "the parent's waiter never listened"
        time.sleep(0.01)
    # And a thread of the parent's loads all along: the fork lands while it holds a connection.
    children_done = threading.Event()
    parent_loads = _in_thread(lambda: _load_own(store, "k0", until=children_done))

    children = [_fork_reporting(partial(_child_of_preload, store, key)) for key in KEYS[1:]]
    reports = [_report(pid, read_end) for pid, read_end in children]
    children_done.set()

    assert reports == ["ok"] * CHILDREN
    assert parent_loads() == "ok"
    # The parent sees every child's write, and still hears another writer's change.
    for key in KEYS[1:]:
        record = store.load(key).record
        assert record is not None and record.version == 2
    writer = make_server_store()
    assert writer.compare_and_set(make_record("k0", version=2), 1)
    assert parent_waits() == "ok"
    # A wait with nothing to hear lasts its timeout: the children's close() ended no listener
    # of the parent's (an ended listener fires every watch, and the wait returns at once).
    started = time.monotonic()
    store.wait_for_change("k0", 2, 0.5)
    assert time.monotonic() - started >= 0.45


# -- defence in depth: an answer that is not the statement's ---------------------------------

#: A load's answer for k0: the row a caller of k1 got before the fix, when a connection
#: shared across fork() handed it another process's answer.
K0_ROW = (T0, "k0", 1, RecordCodec(None).row(make_record("k0")).data)
LATER = T0 + timedelta(hours=1)


def _works(ops: Any) -> dict[str, Callable[[], Any]]:
    """The operations on one key, made on ``ops`` (a ``PostgresOps``)."""
    return {
        "load": lambda: ops.load("k1"),
        "compare_and_set": lambda: ops.compare_and_set(make_record("k1", version=2), 1),
        "insert": lambda: ops.compare_and_set(make_record("k1"), None),
        "delete": lambda: ops.delete("k1", 1),
        "consume_state": lambda: ops.consume_state("n1", LATER, None),
        "holder_of": lambda: ops.holder_of("n1"),
        "claim": lambda: ops.claim(
            Claim(make_record("k1", version=2), 1, LedgerEntry("code1", "me", LATER), None)
        ),
    }


@pytest.mark.parametrize(
    ("operation", "answers"),
    [
        ("load", {"load": [K0_ROW]}),  # was k0's record, handed to a caller of k1
        ("load", {"load": []}),  # no row where one always comes: was an IndexError
        ("load", {"load": [(1,)]}),  # another statement's row
        ("compare_and_set", {"update": [("k0",)]}),  # was a write reported that did not happen
        ("insert", {"insert": [("k0",)]}),
        ("delete", {"delete": [("k0",)]}),
        ("consume_state", {"take": [("x9",)]}),  # was a ledger key taken that nobody took
        ("consume_state", {}),  # neither taken nor held: a missing row where one must be
        ("holder_of", {"live_holder": [("x9", "someone")]}),
        ("claim", {"take": [("x9",)]}),
    ],
)
def test_an_answer_for_another_key_or_statement_is_a_store_error_naming_the_operation(
    operation: str, answers: dict[str, list[tuple[object, ...]]]
) -> None:
    """Each statement is answered from ``answers`` (keyed by its name on ``Tables``; any other
    statement: no rows), as a connection shared by two processes may answer it."""
    pytest.importorskip("psycopg")
    from amo_oauth.stores._postgres_ops import PostgresOps, Query, Result
    from amo_oauth.stores._postgres_pools import Place
    from amo_oauth.stores._postgres_sql import Tables

    tables = Tables("t")
    ops = PostgresOps(tables, RecordCodec(None), "PostgreSQL store (h/d)", offset_of(None))
    by_statement = {id(getattr(tables, name)): rows for name, rows in answers.items()}

    def perform(query: Query) -> Result:
        rows = by_statement.get(id(query.query), [])
        return Result(len(rows), list(rows))

    work = _works(ops)[operation]()
    with pytest.raises(StoreError) as caught, Place("h", "d", "t").mapped(work.action):
        drive(work.steps, perform)
    message = str(caught.value)
    assert f"could not {work.action}: the server's answer does not fit the statement" in message
    assert "k0" not in message and "x9" not in message


def test_children_reusing_the_parents_event_loop_read_only_their_own_records(
    make_server_store: Callable[[], ServerStore],
) -> None:
    """One event loop kept by the parent (as a sync wrapper over the awaited store does) and
    used again in each child: RedisStore's asyncio client is cached per loop, and redis-py's
    asyncio pool does not check the process id, so the children shared the parent's
    connections and read each other's replies (k1 got k3). The parent does not use that loop
    after the fork: a copied loop shares its selector with the child (asyncio does not support
    that; docs/stores.md says so), which no store can mend."""
    store = make_server_store()
    store.migrate()
    for key in KEYS:
        assert store.compare_and_set(make_record(key), None)
    loop = asyncio.new_event_loop()

    async def load_own(key: str) -> None:
        for _ in range(LOADS):
            record = (await store.aload(key)).record
            assert record is not None and record.key == key, f"{key}: got another key's record"

    try:
        loop.run_until_complete(load_own("k0"))  # the loop's client is open at the fork
        children = [
            _fork_reporting(lambda key=key: loop.run_until_complete(load_own(key)))
            for key in KEYS[1:]
        ]
        assert [_report(pid, read_end) for pid, read_end in children] == ["ok"] * CHILDREN
    finally:
        loop.run_until_complete(store.aclose())  # its asyncio client closes on its own loop
        loop.close()


# -- the service's own parts: the limiter, the kept pairs, the base store, the http client ---


def _until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STUCK / 2  # fails before _exit_code kills the child
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_an_exchange_limiter_in_a_child_counts_its_own_exchanges() -> None:
    limiter = ExchangeLimiter(Bounds(1, 2, 2, 2, 2, 2), window=3600.0)
    attempt = Attempt("c1", "test.amocrm.ru", "u1")
    assert limiter.admit(attempt) is not None  # in flight at the fork, in a parent's thread

    def child() -> None:
        assert not limiter.in_flight("c1")  # the parent's slot never resolves here
        assert limiter.admit(attempt) is not None  # the bounds are per process

    assert _held_at_fork(limiter._lock, child) == 0
    assert limiter.in_flight("c1")  # the parent's are unchanged
    assert limiter.admit(attempt) is None


def test_the_kept_pairs_retry_in_a_child_starts_its_own_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_kept, "KEPT_RETRY_PAUSES", (0.01,))
    tried: list[int] = []  # the pid of each try (appending needs no lock of ours)
    retry = KeptRetry(lambda: tried.append(os.getpid()), lambda: 1)
    retry.start()  # the parent's thread runs at the fork: its pair never lands
    _until(lambda: bool(tried), "the parent's retry never tried")

    def child() -> None:
        retry.start()  # the next kept pair
        _until(lambda: os.getpid() in tried, "no retry thread in the child")

    try:
        assert _held_at_fork(retry._lock, child) == 0
    finally:
        retry.stop(STUCK)


def test_the_async_kept_pairs_retry_in_a_child_starts_its_own_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_kept, "KEPT_RETRY_PAUSES", (0.01,))
    tried: list[int] = []

    async def store_kept() -> None:
        tried.append(os.getpid())

    retry = AsyncKeptRetry(store_kept, lambda: 1)
    loop = asyncio.new_event_loop()

    async def start() -> None:
        retry.start()

    async def child_retries() -> None:
        retry.start()  # the next kept pair, on the child's own loop
        deadline = time.monotonic() + STUCK / 2
        while os.getpid() not in tried:
            assert time.monotonic() < deadline, "no retry task in the child"
            await asyncio.sleep(0.01)

    try:
        loop.run_until_complete(start())  # the parent's task is pending at the fork
        assert _exit_code(_in_child(lambda: asyncio.run(child_retries()))) == 0
    finally:
        loop.run_until_complete(retry.stop())
        loop.close()


def test_records_in_a_child_leave_the_parents_kept_pairs_to_the_parent(
    amo_config: Config,
) -> None:
    records = Flows(amo_config, lambda: datetime.now(UTC)).records
    records._writing.add("k1")  # a kept pair a parent's thread is writing at the fork

    def child() -> None:
        assert records.kept_pairs() == 0  # that write never ends here: not the child's

    assert _held_at_fork(records._unwritten_lock, child) == 0
    assert records.kept_pairs() == 1


def test_a_base_store_in_a_child_makes_its_hub() -> None:
    class Minimal(BaseStore):
        def load(self, key: str) -> Loaded:
            return Loaded(None, T0)

    store = Minimal()

    def child() -> None:
        assert store.hub.waiting() == 0  # made under the class's lock

    assert _held_at_fork(BaseStore._hub_lock, child) == 0


class _CountingServer(http.server.ThreadingHTTPServer):
    """Answers every GET with 204 over keep-alive HTTP/1.1, noting each connection's peer."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Counted)
        self.peers: set[tuple[str, int]] = set()
        self.url = f"http://127.0.0.1:{self.server_address[1]}/"


class _Counted(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        cast(_CountingServer, self.server).peers.add(self.client_address)
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def counting_server() -> Iterator[_CountingServer]:
    """A loopback server in the parent's thread: the children's requests reach it too."""
    server = _CountingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_child_sends_over_connections_of_its_own_not_the_parents(
    amo_config: Config, counting_server: _CountingServer
) -> None:
    """httpx has no fork check: a child using the service's client used before the fork sent
    over the parent's keep-alive connection (one process could read the other's answer)."""
    oauth = AmoOAuth(amo_config, store=MemoryStore())
    parents = oauth.http
    assert parents.get(counting_server.url).status_code == 204  # kept alive at the fork

    def child() -> None:
        assert oauth.http.get(counting_server.url).status_code == 204

    try:
        assert _exit_code(_in_child(child)) == 0
        assert len(counting_server.peers) == 2  # the child's request came on its own
        assert oauth.http is parents and not parents.is_closed  # the parent's is untouched
        assert parents.get(counting_server.url).status_code == 204
        assert len(counting_server.peers) == 2  # over its kept connection, still open
    finally:
        oauth.close()


def test_an_async_service_in_a_child_sends_over_connections_of_its_own(
    amo_config: Config, counting_server: _CountingServer
) -> None:
    oauth = AsyncAmoOAuth(amo_config, store=MemoryStore())
    loop = asyncio.new_event_loop()

    async def get() -> int:
        return (await oauth.http.get(counting_server.url)).status_code

    try:
        assert loop.run_until_complete(get()) == 204  # kept alive at the fork

        def child() -> None:
            assert asyncio.run(get()) == 204  # on the child's own loop

        assert _exit_code(_in_child(child)) == 0
        assert len(counting_server.peers) == 2
        assert loop.run_until_complete(get()) == 204
        assert len(counting_server.peers) == 2
    finally:
        loop.run_until_complete(oauth.aclose())
        loop.close()


def test_a_client_passed_in_stays_the_callers_in_a_child(amo_config: Config) -> None:
    with httpx.Client() as client:
        oauth = AmoOAuth(amo_config, store=MemoryStore(), http=client)

        def child() -> None:
            assert oauth.http is client  # the caller's to replace (docs/stores.md)

        assert _exit_code(_in_child(child)) == 0
        oauth.close()
