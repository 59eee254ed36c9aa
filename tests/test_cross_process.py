"""The cross-process proofs, one per store (SQLite file, Postgres, Redis): real OS processes.

Each worker is ``_proof_worker.py`` run with ``sys.executable``; every worker and this process
reach one FakeAmoCRM served on loopback HTTP and share the store. Every process and the fake
read the same clock, the real UTC time plus an offset: a test moves time for everyone (a day
for an expired token, a lease's length after a kill) by moving the offset, so no test sleeps
through a lease.

A worker is killed with SIGKILL while the fake holds its answer: ``latency`` holds every answer
made meanwhile (the token call), a ``slow_body`` fault holds one API answer (the account
check). The fake counts a call when it handles it, before the answer leaves, so the test
knows exactly what amoCRM did before the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import _served_fake
from _pg_server import PostgresProcess, own_postgres, postgres_url  # noqa: F401
from _proof_worker import acallback, aconsent, callback, consent, digest, open_store
from _redis_server import RedisProcess, own_redis, redis_url  # noqa: F401
from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    ConnectionStatus,
    Outcome,
    StoreError,
)
from amo_oauth._reasons import Reason
from amo_oauth._records import code_digest
from amo_oauth.testing import FakeAmoCRM, LoopbackTransport
from amo_oauth.web import Handlers, Request

from helpers import OffsetClock, config_for, stored

WORKER = Path(__file__).with_name("_proof_worker.py")
PROCESSES = 4
CALLERS = 50  # per process: threads, or asyncio tasks
USER = "user-42"
SETTLE = 20.0  # seconds a duplicate waits for the winner: ample on a loaded machine
LEASE = timedelta(seconds=60)  # Config's default; the tests jump past it, never wait
HANG_GUARD = 120.0  # seconds: only a hang fails it, never a slow machine
STORES = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.services),
    pytest.param("redis", marks=pytest.mark.services),
]

# The served fake and its clock (shared with the other worker-process tests).
clock, fake, served = _served_fake.clock, _served_fake.fake, _served_fake.served


def fresh_spec(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """A store of ``kind`` that no other test uses, migrated; as a job's ``store``."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    if kind == "sqlite":
        return {"kind": "sqlite", "path": str(tmp_path / "shared.db")}
    if kind == "postgres":
        url = request.getfixturevalue("postgres_url")
        spec = {"kind": "postgres", "url": url, "table": name}
    else:
        url = request.getfixturevalue("redis_url")
        spec = {"kind": "redis", "url": url, "prefix": f"{name}:"}
    migrate(spec)
    return spec


def migrate(spec: dict[str, Any]) -> None:
    store = open_store(spec)
    try:
        store.migrate()  # type: ignore[attr-defined]
    finally:
        store.close()


@pytest.fixture(params=STORES)
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    return fresh_spec(request.param, request, tmp_path)


def make_parent(
    fake: FakeAmoCRM, served: str, spec: dict[str, Any], clock: OffsetClock
) -> AmoOAuth:
    http = httpx.Client(transport=LoopbackTransport.to(served, domain=fake.domain))
    oauth = AmoOAuth(
        config_for(fake, settle_timeout=SETTLE, lease_ttl=LEASE),
        store=open_store(spec, clock),
        http=http,
        clock=clock,
    )
    oauth.status(USER)  # SQLite: creates the schema
    return oauth


@pytest.fixture
def parent(
    fake: FakeAmoCRM, served: str, spec: dict[str, Any], clock: OffsetClock
) -> Iterator[AmoOAuth]:
    """This process's own AmoOAuth on the same store and fake."""
    oauth = make_parent(fake, served, spec, clock)
    yield oauth
    oauth.close()
    oauth.http.close()


def job_for(
    fake: FakeAmoCRM, served: str, spec: dict[str, Any], clock: OffsetClock, **task: Any
) -> dict[str, Any]:
    config = _served_fake.job_config(fake, settle_timeout=SETTLE, lease_ttl=LEASE.total_seconds())
    return {
        "store": spec,
        "url": served,
        "domain": fake.domain,
        "config": config,
        "offset": clock.offset.total_seconds(),
        "mode": "threads",
        "count": CALLERS,
        **task,
    }


class Workers:
    """Worker processes that serve one job after another; ``spawn`` starts more."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    @staticmethod
    def spawn(count: int) -> list[subprocess.Popen[str]]:
        return [
            subprocess.Popen(
                [sys.executable, str(WORKER)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(count)
        ]

    def take(self, count: int) -> list[subprocess.Popen[str]]:
        """``count`` idle workers of this pool, started when there are fewer."""
        self.procs = [proc for proc in self.procs if proc.poll() is None]
        self.procs += self.spawn(count - len(self.procs))
        return self.procs[:count]

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()  # the end of its jobs: it exits
        stop(self.procs)
        self.procs = []


@pytest.fixture(scope="module")
def workers() -> Iterator[Workers]:
    pool = Workers()
    yield pool
    pool.close()


def start(tmp_path: Path, job: dict[str, Any], procs: list[subprocess.Popen[str]]) -> None:
    """Give ``job`` to each of ``procs``, wait until each is ready, then release them together.
    On any failure the processes are killed."""
    job_file = tmp_path / f"job-{uuid.uuid4().hex[:8]}.json"
    job_file.write_text(json.dumps(job), encoding="utf-8")
    try:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{job_file}\n")
            proc.stdin.flush()
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line != "ready\n":
                raise AssertionError(f"worker did not start: {line!r} {read_stderr(proc)}")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
    except BaseException:
        stop(procs)
        raise


def read_stderr(proc: subprocess.Popen[str]) -> str:
    """What a failed worker wrote to stderr (the end of it); the worker is stopped first."""
    if proc.poll() is None:
        proc.kill()
    try:
        _, err = proc.communicate(timeout=HANG_GUARD)
    except ValueError:  # already read
        return ""
    return err[-2000:]


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(ValueError):  # its pipes were read to the end before
            proc.communicate(timeout=HANG_GUARD)


def run_workers(
    tmp_path: Path, job: dict[str, Any], workers: Workers, processes: int = PROCESSES
) -> tuple[list[dict[str, Any]], list[str], int]:
    """Run ``job`` on ``processes`` workers to its end: every result, every error, how many
    distinct pids. The slowest worker's time (start line to last answer) is printed
    (``pytest -rP`` shows it)."""
    procs = workers.take(processes)
    start(tmp_path, job, procs)
    try:
        reports = []
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line, f"worker failed ({proc.poll()}): {read_stderr(proc)}"
            reports.append(json.loads(line))
    except BaseException:
        stop(procs)
        raise
    results = [result for report in reports for result in report["results"]]
    errors = [error for report in reports for error in report["errors"]]
    slowest = max(report["seconds"] for report in reports)
    print(
        f"{processes} processes x {job['count']} {job['mode']}: {job['action']} in {slowest:.2f}s"
    )
    return results, errors, len({report["pid"] for report in reports})


def kill_when(
    tmp_path: Path, job: dict[str, Any], condition: Callable[[], bool], what: str
) -> None:
    """A worker process of its own, released on ``job``, killed with SIGKILL as soon as
    ``condition`` holds (it waits for ``what``)."""
    (worker,) = Workers.spawn(1)
    start(tmp_path, job, [worker])
    try:
        until(condition, what)
        kill(worker)
    finally:
        stop([worker])


def until(condition: Callable[[], bool], what: str, timeout: float = HANG_GUARD) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == -signal.SIGKILL


def connect(parent: AmoOAuth, fake: FakeAmoCRM, connection_id: str = USER) -> None:
    assert callback(parent, consent(parent, fake, connection_id)).outcome is Outcome.CONNECTED


# -- 1. one redirect, 4 processes x 50 callers ----------------------------------------------------


def test_one_redirect_from_4_processes_x_50_threads_is_exchanged_once(
    fake: FakeAmoCRM,
    served: str,
    spec: dict[str, Any],
    clock: OffsetClock,
    parent: AmoOAuth,
    tmp_path: Path,
    workers: Workers,
) -> None:
    given = consent(parent, fake, USER)
    mode = "threads"
    job = job_for(fake, served, spec, clock, action="callback", consent=given)
    results, errors, pids = run_workers(tmp_path, job, workers)
    outcomes = Counter(result["outcome"] for result in results)
    code = given["query"]["code"]
    figures = (
        f"{spec['kind']} {mode}, {pids} processes x {CALLERS}: token calls "
        f"{dict(fake.token_calls)}, with this code {fake.token_calls_for(code)}, "
        f"outcomes {dict(outcomes)}, errors {len(errors)} {errors[:3]}"
    )
    print(figures)
    assert pids == PROCESSES, figures
    assert errors == [], figures
    assert fake.token_calls == {("authorization_code", "ok"): 1}, figures
    assert fake.token_calls_for(code) == 1, figures
    total = PROCESSES * CALLERS
    assert outcomes == {Outcome.CONNECTED.value: 1, Outcome.ALREADY_CONNECTED.value: total - 1}, (
        figures
    )
    status = parent.status(USER)
    assert status.status is ConnectionStatus.CONNECTED, figures
    assert status.account is not None and status.account.id == fake.account_id


# -- 2. an expired token, 4 processes x 50 callers -----------------------------------------------


@pytest.mark.parametrize("mode", ["threads", "asyncio"])
def test_expired_token_from_4_processes_x_50_callers_is_refreshed_once(
    fake: FakeAmoCRM,
    served: str,
    spec: dict[str, Any],
    clock: OffsetClock,
    parent: AmoOAuth,
    tmp_path: Path,
    mode: str,
    workers: Workers,
) -> None:
    connect(parent, fake)
    first = parent.access_token(USER)
    clock.offset = timedelta(hours=25)  # for the fake and this process; the workers get it too
    job = job_for(fake, served, spec, clock, action="access_token", connection_id=USER, mode=mode)
    results, errors, pids = run_workers(tmp_path, job, workers)
    tokens = Counter(result["token"] for result in results)
    figures = (
        f"{spec['kind']} {mode}, {pids} processes x {CALLERS}: token calls "
        f"{dict(fake.token_calls)}, distinct tokens {len(tokens)}, errors {len(errors)} "
        f"{errors[:3]}"
    )
    print(figures)
    assert pids == PROCESSES, figures
    assert errors == [], figures
    assert fake.token_calls == {("authorization_code", "ok"): 1, ("refresh_token", "ok"): 1}, (
        figures
    )
    assert len(tokens) == 1 and sum(tokens.values()) == PROCESSES * CALLERS, figures
    record = stored(parent, USER)
    assert record is not None and record.tokens is not None
    (token_digest,) = tokens
    assert digest(record.tokens.access_token) == token_digest, figures
    assert record.tokens.access_token != first
    assert fake.is_access_token_valid(record.tokens.access_token)


# -- 3. a worker killed during an exchange --------------------------------------------------------


def test_a_worker_killed_before_the_pair_is_stored_leaves_the_code_unsent(
    fake: FakeAmoCRM,
    served: str,
    spec: dict[str, Any],
    clock: OffsetClock,
    parent: AmoOAuth,
    tmp_path: Path,
) -> None:
    given = consent(parent, fake, USER)
    code = given["query"]["code"]
    fake.latency = 60.0  # amoCRM takes the code; its answer is held until the worker dies
    job = job_for(fake, served, spec, clock, action="callback", consent=given, count=1)
    kill_when(tmp_path, job, lambda: fake.token_calls_for(code) == 1, "the worker's token call")
    fake.latency = 0.0
    held = stored(parent, USER)
    assert held is not None and held.status is ConnectionStatus.CODE_RECEIVED
    assert held.lease is not None, "the dead worker's exchange lease"
    # While the dead worker's lease lives, the exchange reads as in flight.
    assert parent.status(USER).status is ConnectionStatus.CODE_RECEIVED

    clock.offset += LEASE + timedelta(seconds=1)
    # The worker might be alive and keep the pair (a failed store write): awaited a grace.
    assert parent.status(USER).status is ConnectionStatus.CODE_RECEIVED
    again = callback(parent, given)  # a reload during the grace: answered, never resent
    assert again.connection.status is ConnectionStatus.CODE_RECEIVED
    clock.offset += parent.config.kept_pair_grace
    status = parent.status(USER)
    assert status.status is ConnectionStatus.ERROR, status
    assert status.error is not None and status.error.reason == Reason.EXCHANGE_INTERRUPTED
    again = callback(parent, given)  # the redirect arrives again (a reload): never resent
    assert again.outcome is not Outcome.CONNECTED
    assert again.connection.status is ConnectionStatus.ERROR
    assert fake.token_calls_for(code) == 1, "the code was sent again"

    connect(parent, fake)  # a new consent connects
    assert parent.status(USER).status is ConnectionStatus.CONNECTED
    assert fake.token_calls == {("authorization_code", "ok"): 2}


def test_a_worker_killed_after_the_pair_is_stored_keeps_it_and_verifies_later(
    fake: FakeAmoCRM,
    served: str,
    spec: dict[str, Any],
    clock: OffsetClock,
    parent: AmoOAuth,
    tmp_path: Path,
) -> None:
    given = consent(parent, fake, USER)
    # The account check answers its headers, then holds the body until the worker dies.
    fake.fail_next(
        "slow_body", endpoint="api", path="/api/v4/account", chunk_size=1 << 20, every=20.0
    )
    job = job_for(fake, served, spec, clock, action="callback", consent=given, count=1)
    kill_when(
        tmp_path, job, lambda: fake.api_call_count("/api/v4/account") == 1, "the account check"
    )
    kept = stored(parent, USER)
    assert kept is not None and kept.status is ConnectionStatus.EXCHANGED, kept
    assert kept.tokens is not None, "the pair is stored before the account is checked"
    pair = kept.tokens

    clock.offset += LEASE + timedelta(seconds=1)
    status = parent.status(USER)  # the lease lapsed: this call verifies
    assert status.status is ConnectionStatus.CONNECTED, status
    assert status.account is not None and status.account.id == fake.account_id
    record = stored(parent, USER)
    assert record is not None and record.tokens == pair, "the pair was kept, not replaced"
    assert digest(parent.access_token(USER)) == digest(pair.access_token)
    assert fake.token_calls == {("authorization_code", "ok"): 1}
    assert fake.token_calls_for(given["query"]["code"]) == 1


# -- 4. a worker killed during a refresh ---------------------------------------------------------


def test_a_worker_killed_during_a_refresh_loses_nothing_under_kommos_grace(
    fake: FakeAmoCRM,
    served: str,
    spec: dict[str, Any],
    clock: OffsetClock,
    parent: AmoOAuth,
    tmp_path: Path,
) -> None:
    fake.refresh_grace = True  # Kommo: the old refresh token works until the new pair is used
    connect(parent, fake)
    before = stored(parent, USER)
    assert before is not None and before.tokens is not None
    spent = before.tokens.refresh_token
    clock.offset = timedelta(hours=25)
    fake.latency = 60.0  # amoCRM rotates the pair; its answer is held until the worker dies
    job = job_for(fake, served, spec, clock, action="access_token", connection_id=USER, count=1)
    kill_when(
        tmp_path, job, lambda: fake.token_call_count("refresh_token") == 1, "the worker's refresh"
    )
    fake.latency = 0.05
    held = stored(parent, USER)
    assert held is not None and held.lease is not None, "the dead worker's refresh lease"
    assert held.tokens is not None and held.tokens.refresh_token == spent, "nothing rotated yet"

    clock.offset += LEASE + timedelta(seconds=1)
    with ThreadPoolExecutor(max_workers=10) as pool:  # this process: the other workers
        calls = [pool.submit(parent.access_token, USER) for _ in range(10)]
        tokens = Counter(digest(call.result()) for call in calls)
    figures = f"token calls {dict(fake.token_calls)}, tokens {len(tokens)}"
    assert len(tokens) == 1, figures
    assert fake.token_calls == {("authorization_code", "ok"): 1, ("refresh_token", "ok"): 2}, (
        figures
    )
    assert fake.refresh_sends(spent) == 2, "the survivor sent the same, still graced, token"
    status = parent.status(USER)
    assert status.status is ConnectionStatus.CONNECTED, status
    record = stored(parent, USER)
    assert record is not None and record.tokens is not None and record.lease is None
    assert digest(record.tokens.access_token) in tokens
    assert fake.is_access_token_valid(record.tokens.access_token)
    assert fake.is_refresh_token_valid(record.tokens.refresh_token)


# -- 5. the server killed mid-run ------------------------------------------------------------------


class Killable:
    """A store server a test kills: a Postgres or a Redis of its own."""

    def __init__(self, kind: str, server: PostgresProcess | RedisProcess) -> None:
        self.kind = kind
        self.server = server

    def spec(self) -> dict[str, Any]:
        if self.kind == "postgres":
            spec = {"kind": "postgres", "url": self.server.url, "table": "amo", "timeout": 1.0}
        else:
            spec = {"kind": "redis", "url": self.server.url, "prefix": "amo:", "timeout": 1.0}
        migrate(spec)
        return spec


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.services),
        pytest.param("redis", marks=pytest.mark.services),
    ]
)
def killable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Killable]:
    if request.param == "postgres":
        with own_postgres() as pg:
            yield Killable("postgres", pg)
    else:
        with own_redis(tmp_path) as rs:
            yield Killable("redis", rs)


def timed(call: Callable[[], object]) -> tuple[BaseException | None, float]:
    """What ``call`` raised (None: it returned), and how long it took."""
    started = time.monotonic()
    try:
        call()
    except Exception as error:
        return error, time.monotonic() - started
    return None, time.monotonic() - started


def test_a_server_killed_mid_run_fails_calls_fast_and_loses_nothing(
    fake: FakeAmoCRM,
    served: str,
    clock: OffsetClock,
    killable: Killable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if killable.kind == "postgres":
        # psycopg_pool's reconnect backoff as it is a minute into an outage: 30 s to the next
        # try. A pool left to retry like that for 5 minutes (its default) would still time
        # out every call long after the restart; the store's must connect at once.
        from psycopg_pool.base import AttemptWithBackoff

        monkeypatch.setattr(AttemptWithBackoff, "INITIAL_DELAY", 30.0)
    spec = killable.spec()
    oauth = make_parent(fake, served, spec, clock)
    # The same on the awaited side: an AsyncAmoOAuth, on one event loop for the whole test.
    loop = asyncio.Runner()
    aoauth = AsyncAmoOAuth(
        config_for(fake, settle_timeout=SETTLE, lease_ttl=LEASE),
        store=open_store(spec, clock),
        http=httpx.AsyncClient(transport=fake.async_transport()),
        clock=clock,
    )
    try:
        users = [f"user-{n}" for n in range(3)]
        for user in users:
            connect(oauth, fake, user)
        assert loop.run(aoauth.status(users[0])).status is ConnectionStatus.CONNECTED
        before = {user: stored(oauth, user) for user in users}
        tokens = {user: oauth.access_token(user) for user in users}
        pending = consent(oauth, fake, "user-new")

        # Callers busy on every kind of call when the server dies.
        stop_running = threading.Event()
        seen: list[tuple[str, float]] = []
        lock = threading.Lock()

        def busy(n: int) -> None:
            calls: list[Callable[[], object]] = [
                lambda: oauth.status(users[n % 3]),
                lambda: oauth.access_token(users[n % 3]),
                lambda: callback(oauth, pending),
            ]
            while not stop_running.is_set():
                error, took = timed(calls[n % 3])
                if error is not None:
                    with lock:
                        seen.append((type(error).__name__, took))

        # And one caller waiting for a change that will not come: the dead server wakes it.
        quiet = stored(oauth, users[0])
        assert quiet is not None
        woken: list[BaseException | None] = []

        def wait() -> None:
            store = oauth.store
            woken.append(timed(lambda: store.wait_for_change(quiet.key, quiet.version, 600))[0])  # type: ignore[attr-defined]

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        threads = [threading.Thread(target=busy, args=(n,), daemon=True) for n in range(9)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        killable.server.kill()
        waiter.join(HANG_GUARD)
        assert not waiter.is_alive(), "a waiter slept on after the server died"
        assert woken == [None] or isinstance(woken[0], StoreError), woken
        time.sleep(0.2)
        error, took = timed(lambda: oauth.status(users[0]))
        assert isinstance(error, StoreError), error
        assert took < HANG_GUARD
        assert "pw-" not in str(error)
        error, took = timed(lambda: loop.run(aoauth.status(users[0])))
        assert isinstance(error, StoreError), error
        assert took < HANG_GUARD
        handlers = Handlers(oauth, connection_id=lambda _: users[0], app_scheme="app")
        answer = handlers.handle(Request("GET", "/api/amo-crm/status"))
        assert answer.status == 503
        assert json.loads(answer.body) == {"error": "store_unavailable"}
        stop_running.set()
        for thread in threads:
            thread.join(HANG_GUARD)
            assert not thread.is_alive(), "a call hung on a dead server"
        kinds = Counter(kind for kind, _ in seen)
        assert set(kinds) == {"StoreError"}, kinds
        assert max(took for _, took in seen) < HANG_GUARD

        killable.server.restart()
        # Every connection is intact, and the next calls succeed (the same store objects).
        for user in users:
            status = oauth.status(user)
            assert status.status is ConnectionStatus.CONNECTED, status
            assert stored(oauth, user) == before[user]
            assert oauth.access_token(user) == tokens[user]
            assert loop.run(aoauth.access_token(user)) == tokens[user]
        # The claim of the redirect in flight is all there or not at all.
        record = stored(oauth, "user-new")
        code_key = f"code:{code_digest(pending['query']['code'])}"
        held = oauth.store.holder_of(code_key)  # type: ignore[attr-defined]
        claimed = record is not None and any(
            seen_code.digest == code_digest(pending["query"]["code"])
            for seen_code in record.seen_codes
        )
        assert claimed == (held is not None), (record, held)
        clock.offset += LEASE + timedelta(seconds=1)  # a claim cut short lapses
        # A new consent: connected now, or already (the redirect in flight had connected it).
        fresh = callback(oauth, consent(oauth, fake, "user-new"))
        assert fresh.outcome in (Outcome.CONNECTED, Outcome.ALREADY_CONNECTED), fresh.outcome
        assert oauth.status("user-new").status is ConnectionStatus.CONNECTED
    finally:
        oauth.close()
        oauth.http.close()
        loop.run(aoauth.aclose())
        loop.run(aoauth.http.aclose())
        loop.close()


def test_a_sqlite_writer_killed_mid_transaction_leaves_the_file_consistent(
    fake: FakeAmoCRM, served: str, clock: OffsetClock, tmp_path: Path
) -> None:
    spec = {"kind": "sqlite", "path": str(tmp_path / "shared.db")}
    oauth = make_parent(fake, served, spec, clock)
    try:
        connect(oauth, fake)
        before = stored(oauth, USER)
        token = oauth.access_token(USER)
        writer = subprocess.Popen(
            [sys.executable, "-c", _HALF_WRITER, spec["path"]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline() == "written\n"
            kill(writer)  # its transaction is open: every row overwritten, none committed
        finally:
            stop([writer])
        with sqlite3.connect(spec["path"]) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert stored(oauth, USER) == before
        assert oauth.status(USER).status is ConnectionStatus.CONNECTED
        assert oauth.access_token(USER) == token
        connect(oauth, fake, "user-2")  # the lock died with the writer: writes go on
    finally:
        oauth.close()
        oauth.http.close()


#: Opens the file, overwrites every record inside a write transaction, says so, and waits to
#: be killed with the transaction open.
_HALF_WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE amo_connections SET data = 'torn', version = version + 1")
print("written", flush=True)
time.sleep(600)
"""


# -- 6. one AsyncAmoOAuth across event loops ------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", *STORES[1:]])
def test_an_async_service_works_from_successive_event_loops(
    fake: FakeAmoCRM,
    clock: OffsetClock,
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """Scripts and tests call ``asyncio.run`` more than once with one service object."""
    spec = fresh_spec(kind, request, tmp_path)
    oauth = AsyncAmoOAuth(
        config_for(fake, settle_timeout=SETTLE),
        store=open_store(spec, clock),
        http=httpx.AsyncClient(transport=fake.async_transport()),
        clock=clock,
    )

    async def first() -> None:
        given = await aconsent(oauth, fake, USER)
        assert (await acallback(oauth, given)).outcome is Outcome.CONNECTED

    async def later() -> str:
        await oauth.status(USER)
        return await oauth.access_token(USER)

    async def last() -> None:
        await oauth.aclose()

    def in_loops() -> list[object]:
        return [
            asyncio.run(first()),
            asyncio.run(later()),
            asyncio.run(later()),
            asyncio.run(last()),
        ]

    done: list[object] = []

    def run() -> None:
        try:
            done.extend(in_loops())
        except BaseException as error:  # reported below
            done.append(error)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(HANG_GUARD)
    assert not runner.is_alive(), "a second event loop hung"
    assert len(done) == 4, done
    _, token, again, _ = done
    assert isinstance(token, str) and token == again
    assert fake.is_access_token_valid(token)


@pytest.mark.services
def test_a_postgres_store_refuses_a_second_live_loop_clearly(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Two loops alive at once (e.g. two threads) cannot share the async pool: a clear error,
    at once; the first loop still works, and once it has ended another loop may take over."""
    spec = fresh_spec("postgres", request, tmp_path)
    store = open_store(spec)
    with asyncio.Runner() as first:  # its tasks are cancelled as it closes, as asyncio.run's
        assert first.run(store.aload("nobody")).record is None  # type: ignore[attr-defined]
        started = time.monotonic()
        with pytest.raises(StoreError, match="another event loop") as raised:
            asyncio.run(store.aload("nobody"))  # type: ignore[attr-defined]
        assert time.monotonic() - started < HANG_GUARD
        assert "pw-" not in str(raised.value)
        assert first.run(store.aload("nobody")).record is None  # type: ignore[attr-defined]
    assert asyncio.run(store.aload("nobody")).record is None  # type: ignore[attr-defined]
    store.close()
