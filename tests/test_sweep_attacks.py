"""Attacks on the keep-alive sweep, key rotation and the paged store reads: sweeps racing each
other and ``access_token()`` callers, rotation racing a refresh, cancellation, bad values,
per-host pace measured at the fake, key order of the paged reads on every store."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import httpx
import pytest
from cryptography.fernet import Fernet, MultiFernet

from _pg_server import postgres_url  # noqa: F401
from _redis_server import redis_url  # noqa: F401
from amo_oauth import AmoOAuth, AsyncAmoOAuth, MemoryStore, SQLiteStore, SweepProgress
from amo_oauth._records import ConnectionRecord
from amo_oauth._rotation import rotate_keys
from amo_oauth.cli import main
from amo_oauth.stores import Store
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import config_for, following, run_consent

WEEK = timedelta(days=7)


def connect_many(oauth: AmoOAuth, fake: FakeAmoCRM, count: int, hosts: int) -> list[str]:
    on = [fake.default_account] + [fake.add_account(f"atk{i:03d}") for i in range(1, hosts)]
    ids = [f"c{i:03d}" for i in range(count)]
    for i, cid in enumerate(ids):
        assert run_consent(oauth, fake, cid, account=on[i % hosts]).connection.is_connected
    return ids


def spent_tokens(store: Store, fake: FakeAmoCRM, ids: list[str]) -> dict[str, str]:
    out = {}
    for cid in ids:
        record = store.load(f"u:{fake.client_id}:{cid}").record
        assert record is not None and record.tokens is not None
        out[cid] = record.tokens.refresh_token
    return out


def assert_once(fake: FakeAmoCRM, spent: dict[str, str]) -> None:
    assert fake.token_call_count("refresh_token") == len(spent)
    for token in spent.values():
        assert fake.token_calls_for(token) == 1


def no_live_lease(store: Store, now: datetime) -> None:
    for record in store.scan(None, 10_000):
        assert record.live_lease(now) is None, record.key


# -- two sweeps at once, on the shared servers ------------------------------------------------


def _two_sweeps(
    make: Callable[[], Store],
    make_oauth: Callable[..., AmoOAuth],
    fake: FakeAmoCRM,
    clock: FakeClock,
) -> None:
    first, second = make_oauth(store=make()), make_oauth(store=make())
    ids = connect_many(first, fake, 30, 6)
    clock.advance(timedelta(days=85))
    spent = spent_tokens(first.store, fake, ids)  # type: ignore[arg-type]
    fake.latency = 0.01
    reports: list[Any] = []
    runners = [
        threading.Thread(
            target=lambda o=o: reports.append(o.refresh_due(WEEK, None, concurrency=4))
        )
        for o in (first, second)
    ]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    assert len(reports) == 2
    assert all(report.failed == () for report in reports), [r.failed for r in reports]
    assert_once(fake, spent)


@pytest.mark.services
@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_two_sweeps_at_once_on_a_server_store_refresh_each_once(
    kind: str,
    request: pytest.FixtureRequest,
    make_oauth: Callable[..., AmoOAuth],
    fake: FakeAmoCRM,
    clock: FakeClock,
) -> None:
    from amo_oauth.stores import PostgresStore, RedisStore

    url: str = request.getfixturevalue(f"{kind}_url")
    name = uuid.uuid4().hex[:12]

    def make() -> Store:
        if kind == "postgres":
            pg = PostgresStore(url, table=f"atk_{name}", clock_offset=following(clock))
            pg.migrate()
            return pg
        rs = RedisStore(url, prefix=f"atk{name}:", clock_offset=following(clock))
        rs.migrate()
        return rs

    _two_sweeps(make, make_oauth, fake, clock)


def test_a_sweep_racing_access_token_callers_refreshes_each_once(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    store = MemoryStore(clock=clock)
    oauth = make_oauth(store=store)
    ids = connect_many(oauth, fake, 20, 20)
    clock.advance(timedelta(days=85))
    spent = spent_tokens(store, fake, ids)
    fake.latency = 0.01
    errors: list[BaseException] = []
    tokens: dict[str, set[str]] = {cid: set() for cid in ids}

    def caller() -> None:
        for cid in ids:
            try:
                tokens[cid].add(oauth.access_token(cid))
            except BaseException as error:
                errors.append(error)

    callers = [threading.Thread(target=caller) for _ in range(4)]
    for thread in callers:
        thread.start()
    report = oauth.refresh_due(WEEK, None, concurrency=8)
    for thread in callers:
        thread.join()
    assert errors == []
    assert report.failed == ()
    assert_once(fake, spent)
    assert all(len(seen) == 1 for seen in tokens.values())
    no_live_lease(store, clock())


# -- rotation racing a refresh ----------------------------------------------------------------


def test_rotation_over_a_lapsed_lease_does_not_lose_the_refresh(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """The refresh holder is slow: its lease lapses on the rotation's clock, the rotation
    rewrites the record (version up), then the holder stores amoCRM's new pair: it must land."""
    old, new = Fernet.generate_key(), Fernet.generate_key()
    store = MemoryStore(clock=clock)
    oauth = make_oauth(store=store)
    connect_many(oauth, fake, 1, 1)
    clock.advance(timedelta(days=85))
    key = f"u:{fake.client_id}:c000"
    entered, go_on = threading.Event(), threading.Event()
    inner = fake.transport()

    class Slow(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = inner.handle_request(request)
            if request.url.path.endswith("/oauth2/access_token"):
                entered.set()
                assert go_on.wait(10)
            return response

    slow = AmoOAuth(config_for(fake), store=store, http=httpx.Client(transport=Slow()), clock=clock)
    got: list[str] = []
    worker = threading.Thread(target=lambda: got.append(slow.access_token("c000")))
    worker.start()
    assert entered.wait(10)
    leased = store.load(key).record
    assert leased is not None and leased.lease is not None
    del old, new  # the memory store keeps records as objects: the rewrite is what matters
    clock.advance(timedelta(hours=1))  # the lease lapses on the store's clock
    report = rotate_keys(store, now=clock, sleep=lambda _: None)
    assert report.rewritten == 1
    go_on.set()
    worker.join()
    record = store.load(key).record
    assert record is not None and record.tokens is not None
    assert got == [record.tokens.access_token]
    assert record.lease is None
    assert fake.token_call_count("refresh_token") == 1
    slow.close()


# -- cancellation, progress raising -----------------------------------------------------------


def test_a_cancelled_async_sweep_leaves_no_live_lease_and_no_lost_pair(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock, tmp_path: Any
) -> None:
    store = SQLiteStore(tmp_path / "c.db", clock=clock)
    ids = connect_many(make_oauth(store=store), fake, 40, 40)
    clock.advance(timedelta(days=85))
    spent = spent_tokens(store, fake, ids)
    fake.latency = 0.05

    async def run() -> None:
        http = httpx.AsyncClient(transport=fake.async_transport())
        oauth = AsyncAmoOAuth(
            config_for(fake),
            store=SQLiteStore(tmp_path / "c.db", clock=clock),
            http=http,
            clock=clock,
        )
        task = asyncio.ensure_future(oauth.refresh_due(WEEK, None, concurrency=4))
        await asyncio.sleep(0.12)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await oauth.aclose()
        await http.aclose()

    asyncio.run(run())
    no_live_lease(store, clock())
    sent = fake.token_call_count("refresh_token")
    assert 0 < sent < len(ids)
    changed = [cid for cid in ids if spent_tokens(store, fake, [cid])[cid] != spent[cid]]
    assert len(changed) == sent  # every refresh amoCRM answered is stored
    for token in spent.values():
        assert fake.token_calls_for(token) <= 1


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_progress_callback_that_raises_ends_the_run_cleanly(
    asynchronous: bool,
    make_oauth: Callable[..., AmoOAuth],
    fake: FakeAmoCRM,
    clock: FakeClock,
    tmp_path: Any,
) -> None:
    store = SQLiteStore(tmp_path / "p.db", clock=clock)
    oauth = make_oauth(store=store)
    ids = connect_many(oauth, fake, 12, 12)
    clock.advance(timedelta(days=85))
    spent = spent_tokens(store, fake, ids)

    def boom(now: SweepProgress) -> None:
        if now.done == 3:
            raise RuntimeError("progress broke")

    if asynchronous:

        async def run() -> None:
            http = httpx.AsyncClient(transport=fake.async_transport())
            aoauth = AsyncAmoOAuth(
                config_for(fake),
                store=SQLiteStore(tmp_path / "p.db", clock=clock),
                http=http,
                clock=clock,
            )
            with pytest.raises(RuntimeError, match="progress broke"):
                await aoauth.refresh_due(WEEK, None, concurrency=2, progress=boom)
            await aoauth.aclose()
            await http.aclose()

        asyncio.run(run())
    else:
        with pytest.raises(RuntimeError, match="progress broke"):
            oauth.refresh_due(WEEK, None, concurrency=2, progress=boom)

        def interrupt(now: SweepProgress) -> None:  # Ctrl-C lands in the sweeping thread
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            oauth.refresh_due(WEEK, None, concurrency=2, progress=interrupt)
    no_live_lease(store, clock())
    for token in spent.values():
        assert fake.token_calls_for(token) <= 1
    # a second run finishes the rest, each still once
    report = oauth.refresh_due(WEEK, None)
    assert report.failed == ()
    assert_once(fake, spent)


# -- the pace, measured at the fake -----------------------------------------------------------


def test_the_per_host_pace_measured_at_the_fake(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    store = MemoryStore(clock=clock)
    # Connected without the API's pace: 22 consents on one host, on a fake clock.
    ids = connect_many(make_oauth(store=store, api_rate=None), fake, 22, 1)
    clock.advance(timedelta(days=85))
    arrivals: list[float] = []
    inner = fake.transport()

    class Timed(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/oauth2/access_token"):
                arrivals.append(time.monotonic())
            return inner.handle_request(request)

    oauth = AmoOAuth(
        config_for(fake), store=store, http=httpx.Client(transport=Timed()), clock=clock
    )
    report = oauth.refresh_due(WEEK, None, concurrency=16, per_host_rate=7.0)
    oauth.close()
    assert len(report.refreshed) == len(ids)
    most = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # A figure, not a timed assertion: under a loaded machine a thread woken late can still
    # bunch two arrivals (the schedule itself is checked below, on a fake clock).
    print(f"requests to one host in any 1 s window: at most {most}; min gap {min(gaps):.4f} s")


def test_the_pacers_schedule_never_puts_rate_plus_one_in_a_second() -> None:
    """Slots spaced exactly 1/rate put rate + 1 requests in a closed one-second window (the
    first and the last exactly a second apart): any lateness of one send then makes rate + 1
    arrive within a second at amoCRM. The schedule keeps a guard."""
    from amo_oauth._pace import Pacer

    for rate in (7.0, 2.0, 1.0, 10.0):  # whole rates: a window holds at most that many
        pacer = Pacer(clock=lambda: 100.0)
        slots = [pacer.reserve(("client", "a.amocrm.ru"), rate).at for _ in range(40)]
        most = max(sum(1 for t in slots if start <= t <= start + 1.0) for start in slots)
        assert most <= rate, (rate, most)


def test_the_report_lists_connections_soonest_first_whatever_finishes_first(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    store = MemoryStore(clock=clock)
    oauth = make_oauth(store=store)
    ids = connect_many(oauth, fake, 4, 4)  # c000 on the default host, issued first
    clock.advance(timedelta(days=85))
    inner = fake.transport()

    class FirstIsSlow(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.host == fake.account_host:
                time.sleep(0.3)
            return inner.handle_request(request)

    sweeper = AmoOAuth(
        config_for(fake), store=store, http=httpx.Client(transport=FirstIsSlow()), clock=clock
    )
    report = sweeper.refresh_due(WEEK, None, concurrency=4)
    sweeper.close()
    assert report.refreshed == tuple(ids)


# -- bad values -------------------------------------------------------------------------------


@pytest.mark.parametrize("days", ["999999999", "1000000000", "99999999999999999999"])
def test_a_window_too_far_is_a_clear_error(
    days: str,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    fake: FakeAmoCRM,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = tmp_path / "s.db"
    SQLiteStore(db).close()
    assert main(["migrate", "--db", str(db)]) == 0
    for name, value in (
        ("AMO_CLIENT_ID", "i"),
        ("AMO_CLIENT_SECRET", "s"),
        ("AMO_REDIRECT_URI", "https://a.example/cb"),
        ("AMO_STATE_SECRET", "0123456789abcdef0123456789abcdef"),
    ):
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        main(["refresh-due", "--db", str(db), "--within-days", days])
    assert exited.value.code != 0


def test_a_rate_too_small_to_pace_is_refused(make_oauth: Callable[..., AmoOAuth]) -> None:
    oauth = make_oauth()
    for rate in (1e-300, 5e-324):
        with pytest.raises(ValueError, match="per_host_rate"):
            oauth.refresh_due(WEEK, None, per_host_rate=rate)


def test_a_window_too_far_is_refused_by_the_call(make_oauth: Callable[..., AmoOAuth]) -> None:
    oauth = make_oauth()
    with pytest.raises(ValueError, match="within"):
        oauth.refresh_due(timedelta.max, None)
    with pytest.raises(ValueError, match="within"):  # would silently sweep nothing
        oauth.refresh_due(timedelta(days=-7), None)


def test_a_redis_url_whose_db_is_not_a_number_is_refused() -> None:
    from amo_oauth.stores import RedisStore

    for url in (
        "redis://:S3CRETpw@127.0.0.1:6379/notadb",
        "redis://127.0.0.1/1x",
        "redis://127.0.0.1/-1",
    ):
        with pytest.raises(ValueError, match="must be a number") as refused:
            RedisStore(url)
        assert "S3CRET" not in str(refused.value)
    RedisStore("redis://127.0.0.1:6379/3").close()
    RedisStore("redis://127.0.0.1:6379/").close()
    RedisStore("redis://127.0.0.1:6379").close()


# -- key order of the paged reads -------------------------------------------------------------

NAMES = [
    "a",
    "B",
    "b",
    "A",
    "é",
    "E",
    "e",
    "ß",
    "ss",
    "SS",
    "😀",
    "z",
    "Z",
    "ǅ",
    "İ",
    "i",
    "a b",
    "a-b",
    "a_b",
    "Ω",
    "ω",
    "ﬀ",
    "ff",
]


def _records(clock: FakeClock, fake: FakeAmoCRM) -> list[ConnectionRecord]:
    store = MemoryStore(clock=clock)
    oauth = AmoOAuth(
        config_for(fake), store=store, http=httpx.Client(transport=fake.transport()), clock=clock
    )
    for name in NAMES:
        assert run_consent(oauth, fake, name).connection.is_connected
        clock.advance(timedelta(seconds=0))
    records = store.scan(None, 1000)
    oauth.close()
    return records


def _check_order(store: Store, records: list[ConnectionRecord]) -> None:
    for record in records:
        assert store.compare_and_set(record, None)
    keys = sorted(record.key for record in records)
    got, after = [], None
    while True:
        page = store.scan(after, 2)
        got += [record.key for record in page]
        if len(page) < 2:
            break
        after = page[-1].key
    assert got == keys
    before = datetime.now(UTC) + timedelta(days=400)
    due, cursor = [], None
    while True:
        page = store.due_page(before, 3, cursor)
        due += [record.key for record in page]
        if len(page) < 3:
            break
        last = page[-1]
        assert last.tokens is not None
        cursor = (last.tokens.refresh_expires_at, last.key)
    want = sorted(records, key=lambda r: (r.tokens.refresh_expires_at, r.key))  # type: ignore[union-attr]
    assert due == [record.key for record in want]


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis"])
def any_store(request: pytest.FixtureRequest, tmp_path: Any, clock: FakeClock) -> Iterator[Store]:
    kind = request.param
    if kind == "memory":
        store: Store = MemoryStore(clock=clock)
    elif kind == "sqlite":
        store = SQLiteStore(tmp_path / "k.db", clock=clock)
    elif kind == "postgres":
        from amo_oauth.stores import PostgresStore

        request.applymarker(pytest.mark.services)
        pg = PostgresStore(
            request.getfixturevalue("postgres_url"),
            table=f"k_{uuid.uuid4().hex[:10]}",
            clock_offset=following(clock),
        )
        pg.migrate()
        store = pg
    else:
        from amo_oauth.stores import RedisStore

        url = request.getfixturevalue("redis_url")
        rs = RedisStore(url, prefix=f"k{uuid.uuid4().hex[:8]}:", clock_offset=following(clock))
        rs.migrate()
        store = rs
    yield store
    store.close()


def test_paged_reads_follow_code_point_order_on_every_store(
    any_store: Store, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    records = _records(clock, fake)
    # ties in the due order: give half of them one refresh expiry
    same = records[0].tokens
    assert same is not None
    tied = [
        attrs.evolve(r, tokens=attrs.evolve(r.tokens, refresh_expires_at=same.refresh_expires_at))
        if i % 2
        else r
        for i, r in enumerate(records)
    ]
    _check_order(any_store, tied)


def test_rotation_with_a_store_sealed_by_another_key_writes_nothing(
    tmp_path: Any, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    db = tmp_path / "r.db"
    store = SQLiteStore(db, encryption=Fernet(Fernet.generate_key()))
    oauth = AmoOAuth(
        config_for(fake), store=store, http=httpx.Client(transport=fake.transport()), clock=clock
    )
    assert run_consent(oauth, fake, "u1").connection.is_connected
    oauth.close()
    before = db.read_bytes()
    other = SQLiteStore(db, encryption=MultiFernet([Fernet(Fernet.generate_key())]))
    report = rotate_keys(other, sleep=lambda _: None)
    other.close()
    assert report.rewritten == 0 and len(report.undecryptable) == 1
    assert not report.complete
    del before


# -- the store failing after amoCRM rotated a pair --------------------------------------------


class _Flaky(MemoryStore):
    """Refuses every compare-and-set (``StoreError``) while ``down`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = threading.Event()

    def compare_and_set(self, record: ConnectionRecord, expected_version: int | None) -> bool:
        if self.down.is_set():
            from amo_oauth import StoreError

            raise StoreError("the store is down (test)")
        return super().compare_and_set(record, expected_version)


def _down_after_refresh(fake: FakeAmoCRM, store: _Flaky, back_after: float) -> httpx.BaseTransport:
    """A transport that takes the store down once amoCRM has answered a refresh, and brings
    it back ``back_after`` seconds later."""
    inner = fake.transport()

    class Cut(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = inner.handle_request(request)
            if request.url.path.endswith("/oauth2/access_token") and not store.down.is_set():
                store.down.set()
                back = threading.Timer(back_after, store.down.clear)
                back.daemon = True
                back.start()
            return response

    return Cut()


def _one_due(
    store: _Flaky, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> tuple[str, str]:
    """One connection (``c000``) on ``store``, due for refresh: its key and its refresh token."""
    connect_many(make_oauth(store=store), fake, 1, 1)
    clock.advance(timedelta(days=85))
    key = f"u:{fake.client_id}:c000"
    old = store.load(key).record
    assert old is not None and old.tokens is not None
    return key, old.tokens.refresh_token


def test_a_pair_the_store_could_not_take_during_a_sweep_is_stored_before_it_returns(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """amoCRM rotated the pair (the old refresh token is revoked) and the store was down for
    longer than the write's own retries: the sweep must not return (and the CLI exit) with the
    only valid pair in this process's memory only."""
    store = _Flaky()
    key, old_refresh = _one_due(store, make_oauth, fake, clock)
    sweeper = AmoOAuth(
        config_for(fake),
        store=store,
        http=httpx.Client(transport=_down_after_refresh(fake, store, 1.5)),
        clock=clock,
    )
    report = sweeper.refresh_due(WEEK, None)
    record = store.load(
        key
    ).record  # read before close: the sweep's return is what the CLI waits on
    sweeper.close()
    assert fake.token_call_count("refresh_token") == 1
    assert record is not None and record.tokens is not None
    assert record.tokens.refresh_token != old_refresh  # the new pair is stored
    assert record.lease is None
    assert report.refreshed == ("c000",) and report.failed == ()


def test_a_pair_the_store_could_not_take_is_stored_by_the_async_sweep_too(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    store = _Flaky()
    key, old_refresh = _one_due(store, make_oauth, fake, clock)
    sync_transport = _down_after_refresh(fake, store, 1.5)

    class Bridge(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            await request.aread()
            response = await asyncio.to_thread(sync_transport.handle_request, request)
            return httpx.Response(
                response.status_code, headers=response.headers, content=response.read()
            )

    async def run() -> Any:
        http = httpx.AsyncClient(transport=Bridge())
        oauth = AsyncAmoOAuth(config_for(fake), store=store, http=http, clock=clock)
        report = await oauth.refresh_due(WEEK, None)
        await http.aclose()
        return report

    report = asyncio.run(run())
    record = store.load(key).record
    assert record is not None and record.tokens is not None
    assert record.tokens.refresh_token != old_refresh
    assert report.refreshed == ("c000",) and report.failed == ()


@pytest.mark.parametrize("comes_back", [True, False])
def test_closing_stores_a_kept_pair_or_names_the_connection_it_loses(
    comes_back: bool,
    make_oauth: Callable[..., AmoOAuth],
    fake: FakeAmoCRM,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from amo_oauth import _flow_records

    monkeypatch.setattr(_flow_records, "_KEPT_PAUSES", ())
    store = _Flaky()
    monkeypatch.setattr(store, "close", lambda: None)  # keep the records to look at
    key, old_refresh = _one_due(store, make_oauth, fake, clock)
    sweeper = AmoOAuth(
        config_for(fake),
        store=store,
        http=httpx.Client(transport=_down_after_refresh(fake, store, 1.0 if comes_back else 60)),
        clock=clock,
    )
    report = sweeper.refresh_due(WEEK, None)
    assert report.failed == (("c000", "StoreError"),)
    time.sleep(1.2)
    sweeper.close()
    store.down.clear()
    record = store.load(key).record
    assert record is not None and record.tokens is not None
    new_pair = record.tokens.refresh_token != old_refresh
    assert new_pair is comes_back
    lost = [r for r in caplog.records if "is lost when this process ends" in r.getMessage()]
    assert len(lost) == (0 if comes_back else 1)
    assert all(old_refresh not in r.getMessage() for r in caplog.records)


# -- rotation racing writers ------------------------------------------------------------------


def test_rotation_racing_writers_loses_no_write_and_changes_no_content(
    tmp_path: Any, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    keys = [Fernet.generate_key() for _ in range(2)]
    db = tmp_path / "w.db"
    first = SQLiteStore(db, encryption=Fernet(keys[1]))
    oauth = AmoOAuth(
        config_for(fake), store=first, http=httpx.Client(transport=fake.transport()), clock=clock
    )
    names = [f"w{i}" for i in range(12)]
    # The token each writer starts from: what stands if the rotation outran its first write (a
    # thread the machine never scheduled before the passes ended).
    last: dict[str, str] = {}
    for name in names:
        result = run_consent(oauth, fake, name)
        assert result.connection.is_connected
        last[name] = oauth.access_token(name)
    oauth.close()
    both = MultiFernet([Fernet(keys[0]), Fernet(keys[1])])
    writes: dict[str, int] = dict.fromkeys(names, 0)
    stop = threading.Event()

    def writer(name: str) -> None:
        store = SQLiteStore(db, encryption=both)
        key = f"u:{fake.client_id}:{name}"
        while not stop.is_set():
            record = store.load(key).record
            assert record is not None and record.tokens is not None
            n = writes[name] + 1
            tokens = attrs.evolve(record.tokens, access_token=f"{name}-{n}")
            if store.compare_and_set(
                attrs.evolve(record, tokens=tokens, version=record.version + 1), record.version
            ):
                writes[name], last[name] = n, tokens.access_token
        store.close()

    threads = [threading.Thread(target=writer, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    rotator = SQLiteStore(db, encryption=both)
    reports = [rotate_keys(rotator, pause=0.01, page_size=3) for _ in range(3)]
    # Every writer wins a write before they stop (on a loaded machine one can be starved
    # through all three rotations): each name's last write is then one the test knows.
    while not all(writes.values()) and all(thread.is_alive() for thread in threads):
        time.sleep(0.01)
    stop.set()
    for thread in threads:
        thread.join()
    assert sum(report.rewritten for report in reports) > 0
    final = rotate_keys(rotator, pause=0.01)
    assert final.complete
    for name in names:
        record = rotator.load(f"u:{fake.client_id}:{name}").record
        assert record is not None and record.tokens is not None
        assert record.tokens.access_token == last[name]  # the last write stands
    rotator.close()
    newest_only = SQLiteStore(db, encryption=Fernet(keys[0]))
    assert len(newest_only.scan(None, 100)) == len(names)  # every row opens with the new key
    newest_only.close()


def test_rotation_resumed_after_an_empty_key_reads_from_the_start(
    any_store: Store, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    for record in _records(clock, fake)[:5]:
        assert any_store.compare_and_set(record, None)
    assert len(any_store.scan("", 100)) == 5
    report = rotate_keys(any_store, after="", sleep=lambda _: None)
    assert report.rewritten == 5


def test_a_concurrency_past_the_bound_is_refused_by_the_call() -> None:
    from amo_oauth import AmoOAuth, MemoryStore
    from amo_oauth.testing import FakeAmoCRM

    from helpers import config_for

    with AmoOAuth(config_for(FakeAmoCRM()), store=MemoryStore()) as oauth:
        with pytest.raises(ValueError, match="from 1 to 256"):
            oauth.refresh_due(concurrency=257)
        with pytest.raises(ValueError, match="from 1 to 256"):
            oauth.refresh_due(concurrency=0)


class _DisconnectsAfterReading(MemoryStore):
    """A store whose first page read is followed, before any refresh, by a user's disconnect."""

    other: AmoOAuth | None = None

    def due_page(self, before: Any, limit: int, after: Any = None) -> list[ConnectionRecord]:
        page = super().due_page(before, limit, after)
        if self.other is not None and page:
            other, self.other = self.other, None
            other.disconnect(page[0].connection_id)
        return page


def test_a_connection_disconnected_during_the_sweep_is_skipped_not_failed(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    store = _DisconnectsAfterReading()
    sweeping, user = make_oauth(store=store), make_oauth(store=store)
    ids = connect_many(sweeping, fake, 3, 3)
    clock.advance(timedelta(days=85))
    store.other = user
    report = sweeping.refresh_due(WEEK, limit=None, concurrency=1)
    assert (report.failed, report.needs_reauthorization) == ((), ())
    assert report.skipped == 1 and len(report.refreshed) == 2
    assert sweeping.status(ids[0]).status.value == "disconnected"
    assert fake.token_call_count("refresh_token") == 2
