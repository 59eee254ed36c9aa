"""The keep-alive sweep at scale: paged, concurrent, paced per account host, each connection
refreshed at most once per run, the outcome tallied; sync (threads) and async (tasks)."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    ConnectionStatus,
    MemoryStore,
    RefreshReport,
    SQLiteStore,
    StoreError,
    SweepProgress,
    _pace,
    _sweep,
)
from amo_oauth._pace import Pacer
from amo_oauth.stores import Store
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.testing._fake import FakeAccount

from helpers import config_for, run_consent, stored

WEEK = timedelta(days=7)


def accounts(fake: FakeAmoCRM, hosts: int) -> list[FakeAccount]:
    return [fake.default_account] + [fake.add_account(f"host{i:03d}") for i in range(1, hosts)]


def connect_many(oauth: AmoOAuth, fake: FakeAmoCRM, count: int, hosts: int) -> list[str]:
    """``count`` connections, connection i on host i % hosts; returns their ids."""
    on = accounts(fake, hosts)
    ids = [f"c{i:03d}" for i in range(count)]
    for i, cid in enumerate(ids):
        assert run_consent(oauth, fake, cid, account=on[i % hosts]).connection.is_connected
    return ids


def refresh_tokens(oauth: AmoOAuth, ids: list[str]) -> dict[str, str]:
    tokens = {}
    for cid in ids:
        record = stored(oauth, cid)
        assert record is not None and record.tokens is not None
        tokens[cid] = record.tokens.refresh_token
    return tokens


@pytest.fixture
def idle(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> tuple[AmoOAuth, list[str], dict[str, str]]:
    """24 connections on 6 hosts, 85 days idle: every refresh token expires within a week."""
    oauth = make_oauth()
    ids = connect_many(oauth, fake, 24, 6)
    clock.advance(timedelta(days=85))
    return oauth, ids, refresh_tokens(oauth, ids)


def assert_refreshed_once(fake: FakeAmoCRM, spent: dict[str, str]) -> None:
    assert fake.token_call_count("refresh_token") == len(spent)
    for token in spent.values():
        assert fake.token_calls_for(token) == 1


# -- the sweep ---------------------------------------------------------------------------------


def test_every_due_connection_is_refreshed_once(
    idle: tuple[AmoOAuth, list[str], dict[str, str]], fake: FakeAmoCRM
) -> None:
    oauth, ids, spent = idle
    seen: list[SweepProgress] = []
    report = oauth.refresh_due(WEEK, None, concurrency=4, progress=seen.append)
    assert sorted(report.refreshed) == ids
    assert report.failed == () and report.needs_reauthorization == () and report.skipped == 0
    assert_refreshed_once(fake, spent)
    assert [p.done for p in seen] == list(range(1, 25))
    assert seen[-1] == SweepProgress(24, 24, 0, 0)
    # Nothing is due any more, and a second run refreshes nothing.
    assert oauth.refresh_due(WEEK, None) == RefreshReport()
    assert fake.token_call_count("refresh_token") == 24


def test_the_old_call_still_works_and_limit_takes_the_soonest(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make_oauth()
    for cid in ("c0", "c1", "c2", "c3", "c4"):  # issued a day apart: c0 expires first
        run_consent(oauth, fake, cid)
        clock.advance(timedelta(days=1))
    clock.advance(timedelta(days=80))  # c0..c4 expire in 5, 6, ... 9 days
    first = oauth.refresh_due(timedelta(days=8), 2)
    assert (first.refreshed, first.remaining) == (("c0", "c1"), 1)  # c2 is due too
    assert oauth.refresh_due(within=timedelta(days=8), limit=0) == RefreshReport(remaining=1)
    assert oauth.refresh_due().refreshed == ()  # the default window: 7 days
    assert sorted(oauth.refresh_due(timedelta(days=10)).refreshed) == ["c2", "c3", "c4"]


def test_failures_are_tallied_by_reason(
    idle: tuple[AmoOAuth, list[str], dict[str, str]], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth, _, spent = idle
    fake.revoke_refresh_tokens(account=fake.default_account)  # c000, c006, c012, c018
    fake.fail_next("500", grant="refresh_token", account=fake.accounts[1])  # c001's host
    report = oauth.refresh_due(WEEK, None, concurrency=1)
    revoked = ["c000", "c006", "c012", "c018"]
    assert sorted(report.needs_reauthorization) == revoked
    assert report.failed_by_reason["reauthorization_required"] == 4
    transient = [cid for cid, reason in report.failed if cid not in revoked]
    assert len(transient) == 1 and report.failed_by_reason.get("unavailable") == 1
    assert len(report.refreshed) == 24 - 5
    for cid in revoked:
        record = stored(oauth, cid)
        assert record is not None and record.status is ConnectionStatus.ERROR
    # The transient one kept its pair and is refreshed by the next run once its back-off
    # (60 s and up to a tenth more: test_backoff.py) has lapsed.
    assert oauth.refresh_due(WEEK).failed == ((transient[0], "refresh_backoff"),)
    clock.advance(timedelta(minutes=2))
    again = oauth.refresh_due(WEEK, None)
    assert again.refreshed == (transient[0],) and again.failed == ()
    assert fake.token_calls_for(spent[transient[0]]) == 2  # the 500, then the refresh


def test_another_integrations_records_are_skipped(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    store = MemoryStore()
    other = fake.add_integration("other-client", "other-secret", fake.redirect_uri)
    theirs = make_oauth(store=store, client_id=other.client_id, client_secret="other-secret")
    assert run_consent(theirs, fake, "t1", integration=other).connection.is_connected
    ours = make_oauth(store=store)
    connect_many(ours, fake, 2, 1)
    clock.advance(timedelta(days=85))
    report = ours.refresh_due(WEEK, None)
    assert sorted(report.refreshed) == ["c000", "c001"]
    assert report.skipped == 1


def test_a_window_past_the_refresh_lifetime_still_refreshes_each_once(
    idle: tuple[AmoOAuth, list[str], dict[str, str]], fake: FakeAmoCRM
) -> None:
    oauth, ids, spent = idle
    # 120 days: even the pairs this run makes are due before the window ends.
    report = oauth.refresh_due(timedelta(days=120), None, concurrency=3)
    assert sorted(report.refreshed) == ids
    assert_refreshed_once(fake, spent)


def test_pages_are_read_by_keyset_never_all_at_once(
    idle: tuple[AmoOAuth, list[str], dict[str, str]],
    fake: FakeAmoCRM,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    oauth, ids, spent = idle
    monkeypatch.setattr(_sweep, "PAGE_SIZE", 5)
    reads: list[tuple[int, object]] = []
    real = oauth._store.due_page

    def spy(before: Any, limit: int, after: Any = None) -> Any:
        page = real(before, limit, after)
        reads.append((limit, after))
        return page

    monkeypatch.setattr(oauth._store, "due_page", spy)
    report = oauth.refresh_due(WEEK, None, concurrency=2)
    assert sorted(report.refreshed) == ids
    assert [limit for limit, _ in reads] == [5] * 5  # 24 records: 5 pages, the last short
    cursors = [after for _, after in reads]
    assert cursors[0] is None and len(set(cursors)) == 5
    assert_refreshed_once(fake, spent)


class _InFlight(httpx.BaseTransport):
    """Counts the token calls in flight at once, and when each host was sent one."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            return self.inner.handle_request(request)
        finally:
            with self.lock:
                self.now -= 1


def test_concurrency_bounds_the_calls_in_flight(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make_oauth()
    ids = connect_many(oauth, fake, 12, 12)
    clock.advance(timedelta(days=85))
    counting = _InFlight(fake.transport())
    oauth.http = httpx.Client(transport=counting)
    fake.latency = 0.05
    report = oauth.refresh_due(WEEK, None, concurrency=3)
    oauth.http.close()
    assert sorted(report.refreshed) == ids
    assert 1 < counting.most <= 3


def test_one_host_is_paced_at_the_per_host_rate(
    make_oauth: Callable[..., AmoOAuth],
    fake: FakeAmoCRM,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    oauth = make_oauth()
    ids = connect_many(oauth, fake, 6, 1)  # all on one host
    clock.advance(timedelta(days=85))
    pauses: list[float] = []
    lock = threading.Lock()

    def no_sleep(seconds: float) -> None:  # record the pacer's pauses instead of waiting
        with lock:
            pauses.append(seconds)

    # A schedule of its own: the consents' account checks took slots of the host too.
    oauth._pace = attrs.evolve(oauth._pace, pacer=Pacer(sleep=no_sleep))
    report = oauth.refresh_due(WEEK, None, concurrency=6, per_host_rate=2.0)
    assert sorted(report.refreshed) == ids
    # Six requests to one host at 2/s: the slots are 0, 0.525, ..., 2.625 s from the first
    # one (1/2 s plus the 5 % guard; the first goes at once: no pause); real time passing
    # meanwhile only shortens a pause.
    assert len(pauses) == 5
    step = (1 + _pace.PACE_GUARD) / 2.0
    for n, pause in enumerate(sorted(pauses), start=1):
        assert n * step - 0.4 < pause <= n * step


@pytest.mark.parametrize(
    ("options", "error", "says"),
    [
        ({"concurrency": 0}, ValueError, "concurrency"),
        ({"concurrency": 1.5}, ValueError, "concurrency"),
        ({"per_host_rate": 0}, ValueError, "per_host_rate"),
        ({"per_host_rate": -7}, ValueError, "per_host_rate"),
        ({"per_host_rate": math.nan}, ValueError, "per_host_rate"),
        ({"per_host_rate": math.inf}, ValueError, "per_host_rate"),
        ({"limit": -1}, ValueError, "limit"),
        ({"limit": 2.5}, TypeError, "limit"),
        ({"within": 7}, TypeError, "timedelta"),
    ],
)
def test_bad_arguments_are_refused(
    oauth: AmoOAuth, fake: FakeAmoCRM, options: dict[str, Any], error: type, says: str
) -> None:
    with pytest.raises(error, match=says):
        oauth.refresh_due(**options)
    assert fake.token_call_count() == 0


def test_several_machines_sweeping_at_once_refresh_each_once(
    tmp_path: Path, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    db = tmp_path / "shared.db"
    first = make_oauth(store=SQLiteStore(db, clock=clock))
    second = make_oauth(store=SQLiteStore(db, clock=clock))
    ids = connect_many(first, fake, 20, 5)
    clock.advance(timedelta(days=85))
    spent = refresh_tokens(first, ids)
    fake.latency = 0.01
    reports: list[RefreshReport] = []
    runners = [
        threading.Thread(target=lambda o=o: reports.append(o.refresh_due(WEEK, None)))
        for o in (first, second)
    ]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    assert len(reports) == 2
    assert all(report.failed == () for report in reports)
    assert {cid for report in reports for cid in report.refreshed} == set(ids)
    assert_refreshed_once(fake, spent)


# -- asyncio -----------------------------------------------------------------------------------


def test_the_async_sweep_refreshes_each_once_and_bounds_its_tasks(
    fake: FakeAmoCRM, clock: FakeClock, make_oauth: Callable[..., AmoOAuth]
) -> None:
    store = MemoryStore()
    ids = connect_many(make_oauth(store=store), fake, 12, 12)
    clock.advance(timedelta(days=85))
    spent = {cid: stored_token(store, fake, cid) for cid in ids}
    fake.latency = 0.02
    in_flight = {"now": 0, "most": 0}

    class Counting(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = fake.async_transport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            in_flight["now"] += 1
            in_flight["most"] = max(in_flight["most"], in_flight["now"])
            try:
                return await self.inner.handle_async_request(request)
            finally:
                in_flight["now"] -= 1

    async def main() -> RefreshReport:
        http = httpx.AsyncClient(transport=Counting())
        oauth = AsyncAmoOAuth(config_for(fake), store=store, http=http, clock=clock)
        seen: list[SweepProgress] = []
        report = await oauth.refresh_due(WEEK, None, concurrency=3, progress=seen.append)
        assert [p.done for p in seen] == list(range(1, 13))
        await http.aclose()
        return report

    report = asyncio.run(main())
    assert sorted(report.refreshed) == ids
    assert 1 < in_flight["most"] <= 3
    assert_refreshed_once(fake, spent)


def stored_token(store: Store, fake: FakeAmoCRM, cid: str) -> str:
    record = store.load(f"u:{fake.client_id}:{cid}").record
    assert record is not None and record.tokens is not None
    return record.tokens.refresh_token


def test_the_async_sweep_validates_like_the_blocking_one(fake: FakeAmoCRM) -> None:
    async def main() -> None:
        oauth = AsyncAmoOAuth(config_for(fake), store=MemoryStore())
        with pytest.raises(ValueError, match="concurrency"):
            await oauth.refresh_due(concurrency=0)
        with pytest.raises(ValueError, match="per_host_rate"):
            await oauth.refresh_due(per_host_rate=0.0)
        await oauth.aclose()

    asyncio.run(main())


# -- the pacer ---------------------------------------------------------------------------------


class _Ticks:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_pacer_spaces_one_hosts_requests() -> None:
    ticks = _Ticks()
    pacer = Pacer(clock=ticks)
    step = 0.25 * (1 + _pace.PACE_GUARD)  # 1/4 s, and the guard against a late send
    a, b = ("client", "a.amocrm.ru"), ("client", "b.amocrm.ru")
    got = [pacer.reserve(a, 4.0).wait for _ in range(3)]
    assert got == [0.0, pytest.approx(step), pytest.approx(2 * step)]
    assert pacer.reserve(b, 4.0).wait == 0.0  # another host has its own pace
    ticks.now += 0.6
    assert pacer.reserve(a, 4.0).wait == pytest.approx(3 * step - 0.6)  # its slot
    ticks.now += 10
    assert pacer.reserve(a, 4.0).wait == 0.0  # no credit saved up: idle is not a burst
    assert pacer.reserve(a, 4.0).wait == pytest.approx(step)


def test_the_pacer_forgets_idle_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_pace, "_PRUNE_AT", 10)
    ticks = _Ticks()
    pacer = Pacer(clock=ticks)
    for i in range(10):
        pacer.reserve(("client", f"h{i}"), 1.0)
    ticks.now += 5
    pacer.reserve(("client", "new"), 1.0)
    assert pacer._lanes.keys() == {("client", "new")}


@pytest.fixture
def no_threads_left() -> Iterator[None]:
    before = {t.name for t in threading.enumerate()}
    yield
    left = {t.name for t in threading.enumerate()} - before
    assert not {name for name in left if name.startswith("amo-oauth-sweep")}


def test_the_sweep_leaves_no_worker_thread(
    idle: tuple[AmoOAuth, list[str], dict[str, str]], no_threads_left: None
) -> None:
    oauth, ids, _ = idle
    assert len(oauth.refresh_due(WEEK, None).refreshed) == len(ids)


def test_an_unreadable_page_ends_the_run_after_the_refreshes_in_flight(
    idle: tuple[AmoOAuth, list[str], dict[str, str]],
    fake: FakeAmoCRM,
    monkeypatch: pytest.MonkeyPatch,
    no_threads_left: None,
) -> None:
    oauth, ids, spent = idle
    monkeypatch.setattr(_sweep, "PAGE_SIZE", 5)
    real = oauth._store.due_page
    pages = []

    def second_page_fails(before: Any, limit: int, after: Any = None) -> Any:
        pages.append(after)
        if len(pages) == 2:
            raise StoreError("the database went away")
        return real(before, limit, after)

    monkeypatch.setattr(oauth._store, "due_page", second_page_fails)
    with pytest.raises(StoreError, match="went away"):
        oauth.refresh_due(WEEK, None, concurrency=2)
    # What was in flight finished and is stored; what was queued was dropped, unsent.
    done = []
    for cid in ids:
        record = stored(oauth, cid)
        assert record is not None and record.tokens is not None
        if record.tokens.refresh_token != spent[cid]:
            done.append(cid)
    assert 1 <= len(done) <= 5 and set(done) <= set(ids[:5])
    assert fake.token_call_count("refresh_token") == len(done)
    monkeypatch.setattr(oauth._store, "due_page", real)
    assert sorted(oauth.refresh_due(WEEK, None).refreshed) == sorted(set(ids) - set(done))
    assert_refreshed_once(fake, spent)
