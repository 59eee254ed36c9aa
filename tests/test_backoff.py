"""Back-pressure on refresh (issue 19, item 1): when amoCRM pushes back on a refresh (a 429 with
``retry_after``, a blocked account's 403, a 5xx), the connection's refreshes are held back by a
back-off kept in its record, so every process sharing the store honours it; callers hear
``TryAgainLater`` (``refresh_backoff``) with ``retry_after``; a successful refresh clears it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from _backends import KINDS, Backend
from _pg_server import postgres_url  # noqa: F401
from _redis_server import redis_url  # noqa: F401
from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    ConnectionStatus,
    MemoryStore,
    Outcome,
    ProviderError,
    SQLiteStore,
    TryAgainLater,
    _flow_tokens,
    _service,
    cli,
)
from amo_oauth._codec import record_from_json, record_to_json
from amo_oauth._provider_reads import read_account, read_tokens
from amo_oauth._record_view import MAX_RETRY_AFTER, backoff_until
from amo_oauth._records import Backoff, ConnectionRecord
from amo_oauth.stores import Store
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.testing.faults import AsyncFaultyTransport, FaultyStore, FaultyTransport

from helpers import config_for, consent, run_consent, stored

USER = "user-1"
#: Past the access token's lifetime (a day), well inside the refresh token's (90 days).
EXPIRED = timedelta(days=1, minutes=1)
#: Exact back-offs: no jitter unless a test asks for it.
EXACT = {"refresh_backoff_jitter": 0.0}
CLI_ENV = ("AMO_CLIENT_ID", "AMO_CLIENT_SECRET", "AMO_REDIRECT_URI", "AMO_STATE_SECRET")


@pytest.fixture(params=KINDS[:2])
def local(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Backend:
    """Memory and SQLite only: for what no store decides (the back-off is data in the record;
    the server stores carry it like any field, which ``backend`` checks)."""
    return Backend(request, tmp_path, clock)


def _connected(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, store: Store, **overrides: object
) -> AmoOAuth:
    oauth = make_oauth(store=store, **{**EXACT, **overrides})
    assert run_consent(oauth, fake, USER).connection.is_connected
    return oauth


def _through(
    transport: httpx.BaseTransport,
    fake: FakeAmoCRM,
    clock: FakeClock,
    store: Store,
    **overrides: object,
) -> AmoOAuth:
    """A service on ``store`` whose calls go through ``transport``, with USER connected; its
    pacer never sleeps (the sweep waits through a 429's pause, in real time)."""
    oauth = AmoOAuth(
        config_for(fake, **{**EXACT, **overrides}),
        store=store,
        http=httpx.Client(transport=transport),
        clock=clock,
    )
    oauth._pace.pacer.sleep = lambda seconds: None
    assert run_consent(oauth, fake, USER).connection.is_connected
    return oauth


def _refused_later(oauth: AmoOAuth) -> TryAgainLater:
    with pytest.raises(TryAgainLater) as later:
        oauth.access_token(USER)
    return later.value


# -- the two examples ------------------------------------------------------------------


def test_a_429_with_retry_after_300_holds_60_calls_in_120_s_to_one_refresh(
    backend: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = _connected(make_oauth, fake, backend.open())
    clock.advance(EXPIRED)
    fake.fail_next("429", times=100, grant="refresh_token")
    with pytest.raises(TryAgainLater) as first:  # the caller that met the 429 too
        oauth.access_token(USER)
    assert (first.value.reason, first.value.status) == ("refresh_backoff", 429)
    assert first.value.retry_after == pytest.approx(300, abs=1)  # amoCRM's retry_after
    for _ in range(59):
        clock.advance(timedelta(seconds=2))
        later = _refused_later(oauth)
        assert later.reason == "refresh_backoff" and later.retry_after is not None
        assert 300 - 121 <= later.retry_after <= 300
    assert fake.token_call_count("refresh_token") == 1
    record = stored(oauth, USER)
    assert record is not None and record.status is ConnectionStatus.CONNECTED
    assert record.backoff is not None and record.backoff.cause == "unavailable"


def test_a_403_is_sent_once_in_5_calls_then_at_growing_intervals(
    backend: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = _connected(make_oauth, fake, backend.open())
    clock.advance(EXPIRED)
    fake.block_account()
    for _ in range(5):
        with pytest.raises(ProviderError):
            oauth.access_token(USER)
    assert fake.token_call_count("refresh_token") == 1
    sent = 1
    for interval in (60, 120, 240, 480):  # from 60 s, doubling
        clock.advance(timedelta(seconds=interval - 1))
        assert _refused_later(oauth).retry_after == pytest.approx(1, abs=0.5)
        assert fake.token_call_count("refresh_token") == sent
        clock.advance(timedelta(seconds=2))  # a server store's clock follows to a few ms
        with pytest.raises(ProviderError) as blocked:
            oauth.access_token(USER)
        assert isinstance(blocked.value, TryAgainLater) and blocked.value.status == 403
        assert blocked.value.reason == "refresh_backoff"
        sent += 1
        assert fake.token_call_count("refresh_token") == sent
        assert blocked.value.retry_after == pytest.approx(2 * interval, abs=0.5)
    fake.unblock_account()
    clock.advance(timedelta(seconds=961))
    assert oauth.access_token(USER)  # the refresh goes through and clears the back-off
    record = stored(oauth, USER)
    assert record is not None and record.backoff is None


# -- every machine honours it -------------------------------------------------------------------


def test_a_second_service_on_the_same_store_honours_the_back_off(
    backend: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    first = _connected(make_oauth, fake, backend.open())
    second = make_oauth(store=backend.open(), **EXACT)
    clock.advance(EXPIRED)
    fake.fail_next("500", times=10, grant="refresh_token")
    with pytest.raises(ProviderError):
        first.access_token(USER)
    later = _refused_later(second)
    assert later.reason == "refresh_backoff" and later.retry_after == pytest.approx(60, abs=1)
    assert fake.token_call_count("refresh_token") == 1
    clock.advance(timedelta(seconds=61))
    with pytest.raises(ProviderError):
        second.access_token(USER)  # due: the second machine tries, amoCRM still answers 500
    assert _refused_later(first).retry_after == pytest.approx(120, abs=1)
    assert fake.token_call_count("refresh_token") == 2


def test_the_async_service_honours_the_back_off(
    backend: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    store = backend.open()
    _connected(make_oauth, fake, store)
    clock.advance(EXPIRED)
    fake.fail_next("429", times=10, grant="refresh_token")

    async def main() -> None:
        http = httpx.AsyncClient(transport=fake.async_transport())
        config = config_for(fake, **EXACT)
        async with AsyncAmoOAuth(config, store=store, http=http, clock=clock) as oauth:
            with pytest.raises(ProviderError) as first:
                await oauth.access_token(USER)
            assert first.value.status == 429
            for _ in range(5):
                with pytest.raises(TryAgainLater) as later:
                    await oauth.access_token(USER)
                assert later.value.reason == "refresh_backoff"
            report = await oauth.refresh_due(timedelta(days=91))
            assert report.failed == ((USER, "refresh_backoff"),)
        await http.aclose()

    asyncio.run(main())
    assert fake.token_call_count("refresh_token") == 1


def test_the_cli_sweep_reports_a_held_back_connection_and_sends_nothing(
    tmp_path: Path,
    make_oauth: Callable[..., AmoOAuth],
    fake: FakeAmoCRM,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = tmp_path / "cli.db"
    oauth = _connected(make_oauth, fake, SQLiteStore(db, clock=clock))
    clock.advance(EXPIRED)
    fake.fail_next("403_html", grant="refresh_token")
    with pytest.raises(ProviderError):
        oauth.access_token(USER)
    values = (fake.client_id, fake.client_secret, fake.redirect_uri, "s" * 32)
    for name, value in zip(CLI_ENV, values, strict=True):
        monkeypatch.setenv(name, value)
    real = _service.AmoOAuth.__init__

    def on_the_fakes(self: AmoOAuth, config: object, **options: object) -> None:
        options["http"] = httpx.Client(transport=fake.transport())
        options["clock"] = clock
        real(self, config, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(_service.AmoOAuth, "__init__", on_the_fakes)
    monkeypatch.setattr(cli, "_open_store", lambda args: SQLiteStore(args.db, clock=clock))
    assert cli.main(["refresh-due", "--db", str(db), "--within-days", "91"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["failed"] == {USER: "refresh_backoff"}
    assert fake.token_call_count("refresh_token") == 1


# -- what is still served, and what is not held back -------------------------------------------


def test_a_valid_access_token_is_served_during_a_back_off(
    local: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """The sweep's refresh is held back by a 403, yet the access token (valid for a day) is
    still handed out: only refreshes wait. Once it expires, callers hear ``TryAgainLater``."""
    two_days = timedelta(days=2)  # a back-off that outlasts the access token
    longer = {"refresh_backoff_initial": two_days, "refresh_backoff_max": two_days}
    oauth = _connected(make_oauth, fake, local.open(), **longer)
    token = oauth.access_token(USER)
    fake.fail_next("403_html", grant="refresh_token")
    every_pair = timedelta(days=91)  # past a refresh token's life: every connection is due
    assert oauth.refresh_due(every_pair).failed == ((USER, "account_blocked"),)
    assert oauth.refresh_due(every_pair).failed == ((USER, "refresh_backoff"),)
    assert oauth.access_token(USER) == token
    clock.advance(EXPIRED)
    assert _refused_later(oauth).reason == "refresh_backoff"
    assert fake.token_call_count("refresh_token") == 1


def test_a_token_inside_the_refresh_margin_is_served_while_the_refresh_is_held_back(
    local: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """Within ``refresh_margin`` of its expiry a token is due a refresh, yet still valid: during
    a back-off it is served (up to its expiry), not refused."""
    oauth = _connected(make_oauth, fake, local.open())
    token = oauth.access_token(USER)
    clock.advance(timedelta(days=1) - timedelta(minutes=4))  # 4 minutes left, margin 5
    fake.fail_next("429", grant="refresh_token")
    with pytest.raises(ProviderError):
        oauth.access_token(USER)  # the refresh it was due: answered 429
    for _ in range(3):
        clock.advance(timedelta(minutes=1))
        assert oauth.access_token(USER) == token
    clock.advance(timedelta(minutes=1, seconds=1))  # expired now, the back-off still live
    assert _refused_later(oauth).reason == "refresh_backoff"
    assert fake.token_call_count("refresh_token") == 1


def test_auth_raises_try_again_later_also_on_the_401_path(
    local: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """``auth()``: an expired token during a back-off raises ``TryAgainLater`` before sending;
    a 401 for a still-valid token asks for a refresh, which the back-off holds back too."""
    oauth = _connected(make_oauth, fake, local.open())
    host = oauth.status(USER).host
    clock.advance(EXPIRED)
    fake.fail_next("429", grant="refresh_token")
    with pytest.raises(ProviderError):
        oauth.access_token(USER)
    with httpx.Client(transport=fake.transport(), auth=oauth.auth(USER)) as client:
        with pytest.raises(TryAgainLater, match=r"try again later \(refresh_backoff\)"):
            client.get(f"https://{host}/api/v4/account")
        clock.advance(timedelta(seconds=301))
        client.get(f"https://{host}/api/v4/account").raise_for_status()  # refreshed
        fake.expire_access_tokens()
        fake.fail_next("500", grant="refresh_token")
        with pytest.raises(ProviderError) as answered:
            client.get(f"https://{host}/api/v4/account")  # 401, then a refresh: 500
        assert answered.value.status == 500
        with pytest.raises(TryAgainLater) as later:
            client.get(f"https://{host}/api/v4/account")  # 401, then the back-off
        assert later.value.reason == "refresh_backoff"
    assert fake.token_call_count("refresh_token") == 3


def test_async_auth_raises_try_again_later_on_the_401_path(
    local: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """The awaited twin of ``auth()``: a 401, a refresh answered 503, then the back-off."""
    store = local.open()
    host = _connected(make_oauth, fake, store).status(USER).host
    fake.expire_access_tokens()
    fake.fail_next("500", grant="refresh_token")

    async def main() -> None:
        http = httpx.AsyncClient(transport=fake.async_transport())
        config = config_for(fake, **EXACT)
        async with AsyncAmoOAuth(config, store=store, http=http, clock=clock) as oauth:
            api = httpx.AsyncClient(transport=fake.async_transport(), auth=oauth.auth(USER))
            with pytest.raises(ProviderError) as answered:
                await api.get(f"https://{host}/api/v4/account")
            assert answered.value.status == 500
            with pytest.raises(TryAgainLater) as later:
                await api.get(f"https://{host}/api/v4/account")
            assert later.value.reason == "refresh_backoff"
            assert later.value.retry_after == pytest.approx(60, abs=1)
            await api.aclose()
        await http.aclose()

    asyncio.run(main())
    assert fake.token_call_count("refresh_token") == 1


def test_a_request_that_may_have_arrived_unanswered_releases_the_refresh_without_a_back_off(
    local: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """A read timeout may have spent the refresh token: its second send must not wait a
    back-off (amoCRM honours the old token only a while). Only an answer, or a request that
    surely never arrived, holds refreshes back."""
    transport = FaultyTransport(fake.transport())
    oauth = _through(transport, fake, clock, local.open())
    clock.advance(EXPIRED)
    transport.fail(grant="refresh_token", error=lambda: httpx.ReadTimeout("injected"))
    with pytest.raises(ProviderError, match=r"^no answer from amoCRM: "):
        oauth.access_token(USER)
    record = stored(oauth, USER)
    assert record is not None and record.backoff is None
    assert oauth.access_token(USER)
    assert fake.token_call_count("refresh_token") == 1  # the injected timeout reached nothing


@pytest.mark.parametrize("failure", [httpx.ConnectTimeout, httpx.ConnectError])
def test_a_connect_failure_holds_back_no_other_machine_and_ends_nothing(
    local: Backend,
    make_oauth: Callable[..., AmoOAuth],
    fake: FakeAmoCRM,
    clock: FakeClock,
    failure: type[httpx.TransportError],
) -> None:
    """A machine whose connections to amoCRM fail (the request surely never left) pushed
    nothing to amoCRM: it writes no back-off, so a healthy machine on the same store refreshes
    at once (a review saw it refused 180 times in 3 hours behind one broken machine's
    back-off), and however often it fails, the connection is never ended."""
    store = local.open()
    broken_transport = FaultyTransport(fake.transport())
    broken = _through(broken_transport, fake, clock, store)
    clock.advance(EXPIRED)
    tries = broken_transport.fail(
        grant="refresh_token", times=None, error=lambda: failure("injected")
    )
    for _ in range(20):
        with pytest.raises(ProviderError) as unreached:
            broken.access_token(USER)
        assert not isinstance(unreached.value, TryAgainLater)
        assert str(unreached.value) == f"no answer from amoCRM: {failure.__name__}"
        clock.advance(timedelta(seconds=5))
    assert tries.fired == 20  # nothing reached amoCRM: nothing to hold back for it
    record = stored(broken, USER)
    assert record is not None and record.status is ConnectionStatus.CONNECTED
    assert record.backoff is None
    healthy = _through(FaultyTransport(fake.transport()), fake, clock, store)
    assert healthy.access_token(USER)  # not held back by the broken machine's failures


def test_the_async_service_ends_nothing_after_connect_failures(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    store = MemoryStore(clock=clock)
    _connected(make_oauth, fake, store)
    clock.advance(EXPIRED)

    async def main() -> int:
        transport = AsyncFaultyTransport(fake.async_transport())
        tries = transport.fail(
            grant="refresh_token", times=None, error=lambda: httpx.ConnectError("injected")
        )
        http = httpx.AsyncClient(transport=transport)
        async with AsyncAmoOAuth(
            config_for(fake, **EXACT), store=store, http=http, clock=clock
        ) as oauth:
            for _ in range(10):
                with pytest.raises(ProviderError) as unreached:
                    await oauth.access_token(USER)
                assert not isinstance(unreached.value, TryAgainLater)
                clock.advance(timedelta(seconds=5))
            transport.heal()
            assert await oauth.access_token(USER)
        await http.aclose()
        return tries.fired

    assert asyncio.run(main()) == 10


# -- the guard: replays keep the seed's answer --------------------------------------------------


def test_a_replayed_code_answers_its_connection_during_a_back_off(
    backend: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """The seed's replay of a code the ledger holds answers the connection's status (the web
    route's 200) during a back-off, before and after the access token expires: never
    ``TryAgainLater``, and nothing is sent."""
    two_days = timedelta(days=2)  # a back-off live for the whole test
    oauth = make_oauth(
        store=backend.open(),
        refresh_backoff_initial=two_days,
        refresh_backoff_max=two_days,
        **EXACT,
    )
    query, binding = consent(oauth, fake, USER)
    assert oauth.handle_callback(query, binding=binding).outcome is Outcome.CONNECTED
    fake.fail_next("429", grant="refresh_token")
    assert oauth.refresh_due(timedelta(days=91)).failed == ((USER, "unavailable"),)
    for wait in (timedelta(0), timedelta(hours=23)):  # the ledger keeps a code for a day
        clock.advance(wait)
        for replay in (oauth.handle_callback(query), oauth.handle_callback(query, binding=binding)):
            assert (replay.outcome, replay.duplicate) == (Outcome.ALREADY_CONNECTED, True)
        legacy = oauth.exchange_code(USER, query["code"])
        assert (legacy.outcome, legacy.duplicate) == (Outcome.ALREADY_CONNECTED, True)
    clock.advance(timedelta(hours=2))  # the access token expired; the record knows the code
    replay = oauth.handle_callback(query, binding=binding)
    assert (replay.outcome, replay.duplicate) == (Outcome.ALREADY_CONNECTED, True)
    assert _refused_later(oauth).reason == "refresh_backoff"  # the back-off was live throughout
    assert fake.token_call_count("authorization_code") == 1
    assert fake.token_call_count("refresh_token") == 1


# -- the pure parts: intervals, the record's field ---------------------------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _after(attempts: int) -> ConnectionRecord:
    backoff = Backoff(NOW, attempts, "unavailable") if attempts else None
    return ConnectionRecord("c", backoff=backoff)


@pytest.mark.parametrize(
    ("attempts", "seconds"), [(0, 60), (1, 120), (2, 240), (5, 1920), (6, 3600), (500, 3600)]
)
def test_the_interval_doubles_from_the_first_to_the_most(attempts: int, seconds: int) -> None:
    until = backoff_until(
        _after(attempts),
        NOW,
        initial=timedelta(seconds=60),
        maximum=timedelta(hours=1),
        jitter=0.0,
    )
    assert until - NOW == timedelta(seconds=seconds)


def test_retry_after_is_a_floor_and_jitter_only_lengthens() -> None:
    limits = {"initial": timedelta(seconds=60), "maximum": timedelta(hours=1)}
    assert backoff_until(_after(0), NOW, jitter=0.0, retry_after=300, **limits) == NOW + (
        timedelta(seconds=300)
    )
    # A retry_after past the cap is honoured, up to a day (a damaged body holds nothing for good).
    huge = backoff_until(_after(0), NOW, jitter=0.0, retry_after=1e12, **limits)
    assert huge == NOW + MAX_RETRY_AFTER
    jittered = backoff_until(_after(0), NOW, jitter=0.05, retry_after=300, **limits)
    assert jittered == NOW + timedelta(seconds=315)


def test_the_jitter_is_drawn_from_the_service_and_bounded_by_the_config(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make_oauth(refresh_backoff_jitter=0.5)
    run_consent(oauth, fake, USER)
    oauth._flows.records.draw = lambda: 0.5  # a quarter longer
    clock.advance(EXPIRED)
    fake.fail_next("500", grant="refresh_token")
    with pytest.raises(ProviderError) as answered:
        oauth.access_token(USER)
    assert answered.value.retry_after == pytest.approx(75)


def test_the_back_off_round_trips_and_old_records_decode() -> None:
    held = ConnectionRecord("c", backoff=Backoff(NOW, 3, "account_blocked"))
    assert record_from_json(record_to_json(held)) == held
    old = record_to_json(ConnectionRecord("c")).replace(',"backoff":null', "")
    assert '"backoff"' not in old
    assert record_from_json(old).backoff is None
    with pytest.raises(ValueError, match="attempts"):
        record_from_json(record_to_json(held).replace('"attempts":3', '"attempts":0'))


# -- a fault review (issue 19, item 1): odd answers, a failing store, the sweep's limit --------


def _answer_429(retry_after: object) -> Callable[[], httpx.Response]:
    return lambda: httpx.Response(
        429, json={"title": "Too Many Requests", "status": 429, "retry_after": retry_after}
    )


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        (1e15, 86400),
        (1e300, 86400),
        (2**80, 86400),
        (10**400, 86400),
        ("300", 300),
        ("300.5", 300.5),
        (" 120 ", 120),
        ("1e999", 86400),
        ("9" * 500, 86400),
        ("abc", 60),
        (-5, 60),
    ],
)
def test_a_retry_after_of_any_size_is_cut_to_a_day_and_holds_the_refresh_back(
    local: Backend, fake: FakeAmoCRM, clock: FakeClock, given: object, seconds: float
) -> None:
    """A 429 whose ``retry_after`` is huge (no OverflowError), a numeric string (taken), or
    unreadable (the 60 s back-off): the caller hears ``refresh_backoff`` with the cut value,
    the back-off is in the record, the lease given up; after the lease's time nothing is sent
    and the connection stays connected (a 429 spends nothing)."""
    transport = FaultyTransport(fake.transport())
    oauth = _through(transport, fake, clock, local.open())
    clock.advance(EXPIRED)
    transport.answer(_answer_429(given), grant="refresh_token", times=None)
    with pytest.raises(TryAgainLater) as first:
        oauth.access_token(USER)
    assert (first.value.reason, first.value.status) == ("refresh_backoff", 429)
    assert first.value.retry_after == pytest.approx(seconds, abs=1)
    record = stored(oauth, USER)
    assert record is not None and record.backoff is not None
    assert record.backoff.until == clock() + timedelta(seconds=seconds)
    clock.advance(timedelta(seconds=59))
    assert _refused_later(oauth).reason == "refresh_backoff"
    assert fake.token_call_count("refresh_token") == 0  # the 429s came from the transport
    status = oauth.status(USER)
    assert status.status is ConnectionStatus.CONNECTED and status.error is None


def test_a_long_back_off_doubled_many_times_stays_at_its_cap() -> None:
    week = timedelta(weeks=1)
    until = backoff_until(_after(40), NOW, initial=week, maximum=week, jitter=1.0)
    assert until == NOW + 2 * week


@pytest.mark.parametrize("given", [1e15, 10**20])
def test_the_sweep_reports_a_huge_retry_after_and_refreshes_the_rest(
    fake: FakeAmoCRM, clock: FakeClock, given: float
) -> None:
    transport = FaultyTransport(fake.transport())
    oauth = _through(transport, fake, clock, MemoryStore(clock=clock))
    for user in ("u2", "u3"):
        run_consent(oauth, fake, user)
    clock.advance(timedelta(days=85))
    transport.answer(_answer_429(given), grant="refresh_token", times=1)
    report = oauth.refresh_due(timedelta(days=7), concurrency=1)
    # A token endpoint's 429 pauses no host (docs/api-pace.md): the others are refreshed.
    assert len(report.refreshed) == 2 and len(report.failed) == 1
    assert report.failed[0][1] == "unavailable"
    again = oauth.refresh_due(timedelta(days=7), concurrency=1)
    assert again.failed == ((report.failed[0][0], "refresh_backoff"),)


def test_the_async_sweep_reports_a_huge_retry_after_and_refreshes_the_rest(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    store = MemoryStore(clock=clock)
    first = _connected(make_oauth, fake, store)
    run_consent(first, fake, "u2")
    clock.advance(timedelta(days=85))

    async def main() -> tuple[object, object]:
        transport = AsyncFaultyTransport(fake.async_transport())
        transport.answer(_answer_429(10**20), grant="refresh_token", times=1)
        http = httpx.AsyncClient(transport=transport)
        config = config_for(fake, **EXACT)
        async with AsyncAmoOAuth(config, store=store, http=http, clock=clock) as oauth:

            async def no_wait(seconds: float) -> None:
                return None

            oauth._pace.pacer.asleep = no_wait
            report = await oauth.refresh_due(timedelta(days=7), concurrency=1)
            with pytest.raises(TryAgainLater) as later:
                await oauth.access_token(report.failed[0][0])
        await http.aclose()
        return report, later.value.retry_after

    report, retry_after = asyncio.run(main())
    assert len(report.refreshed) == 1  # type: ignore[attr-defined]
    assert [reason for _, reason in report.failed] == ["unavailable"]  # type: ignore[attr-defined]
    assert retry_after == pytest.approx(86400, abs=1)


def test_an_unexpected_error_for_one_connection_does_not_end_the_sweep(
    make_oauth: Callable[..., AmoOAuth],
    fake: FakeAmoCRM,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever one connection's refresh raises, the sweep reports it (by its class name,
    never its message) and goes on with the rest."""
    oauth = _connected(make_oauth, fake, MemoryStore(clock=clock))
    run_consent(oauth, fake, "u2")
    clock.advance(timedelta(days=85))
    real = _flow_tokens.read_tokens
    calls = []

    def overflowing_once(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise OverflowError("date value out of range: secret-ish detail")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_flow_tokens, "read_tokens", overflowing_once)
    report = oauth.refresh_due(timedelta(days=7), concurrency=1)
    assert len(report.refreshed) == 1
    assert [reason for _, reason in report.failed] == ["OverflowError"]


def _writes_a_back_off(args: tuple[object, ...]) -> bool:
    return getattr(args[0], "backoff", None) is not None


def _fail_back_off_writes(store: FaultyStore, times: int | None) -> None:
    """Fail the compare-and-set that writes a back-off (the claim before it goes through)."""
    store.fail("compare_and_set", times=times, when=_writes_a_back_off)


def test_a_failed_back_off_write_is_tried_again_and_never_ends_the_connection(
    backend: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """A 429 (retry_after 300) whose back-off write fails once: the write is tried again, the
    back-off holds (one 429 in four rounds 61 s apart, not four), and the connection never
    moves to ``error`` ("sent twice without an answer"): an answer proves the token unspent."""
    store = FaultyStore(backend.open())
    oauth = _connected(make_oauth, fake, store)
    clock.advance(EXPIRED)
    for _ in range(4):
        fake.fail_next("429", grant="refresh_token")
        _fail_back_off_writes(store, times=1)
        assert _refused_later(oauth).reason == "refresh_backoff"
        status = oauth.status(USER)
        assert status.status is ConnectionStatus.CONNECTED and status.error is None
        clock.advance(timedelta(seconds=61))
    assert fake.token_call_count("refresh_token", "injected_429") == 1


def test_a_back_off_the_store_never_takes_still_answers_try_again_later(
    local: Backend,
    make_oauth: Callable[..., AmoOAuth],
    fake: FakeAmoCRM,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The store refuses every try to write the back-off: the caller hears the back-off it
    earned (``TryAgainLater``, amoCRM's 429 as the cause), not a bare ``StoreError``; the
    store's failure is logged."""
    store = FaultyStore(local.open())
    oauth = _connected(make_oauth, fake, store)
    clock.advance(EXPIRED)
    fake.fail_next("429", grant="refresh_token")
    _fail_back_off_writes(store, times=None)
    later = _refused_later(oauth)
    assert (later.reason, later.status) == ("refresh_backoff", 429)
    assert later.retry_after == pytest.approx(300, abs=1)
    assert isinstance(later.__cause__, ProviderError) and later.__cause__.status == 429
    assert "back-off could not be stored (StoreError)" in caplog.text


def test_a_back_off_the_store_refuses_round_after_round_never_ends_the_connection(
    local: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """A 429 (retry_after 300) whose back-off the store refuses on every try, round after
    round, each past the claim's lease (60 s): the 429 was an answer, so the send is never
    counted as unanswered and the connection stays connected; this process sends no refresh
    inside the back-off it earned. Once the store takes writes again, the next refresh after
    the window goes out (a second 429, stored this time; then a pair). Before the fix, the
    second round sent the refresh token again at 61 s, and (with the 429 met again and its
    back-off refused too) the third ended the connection: "sent twice without an answer"."""
    store = FaultyStore(local.open())
    oauth = _connected(make_oauth, fake, store)
    clock.advance(EXPIRED)
    fake.fail_next("429", times=2, grant="refresh_token")
    _fail_back_off_writes(store, times=None)
    for left in (300, 239, 178, 117):  # 4 rounds 61 s apart: past the lease, in the back-off
        later = _refused_later(oauth)
        assert later.reason == "refresh_backoff"
        assert later.retry_after == pytest.approx(left, abs=1)
        status = oauth.status(USER)
        assert status.status is ConnectionStatus.CONNECTED and status.error is None
        clock.advance(timedelta(seconds=61))
    assert fake.token_call_count("refresh_token") == 1
    store.heal()
    clock.advance(timedelta(seconds=60))  # past the back-off (300 s after the 429)
    assert _refused_later(oauth).status == 429  # the second 429 is met only now, and stored
    assert fake.token_call_count("refresh_token") == 2
    clock.advance(timedelta(seconds=301))
    assert oauth.access_token(USER)
    assert fake.token_call_count("refresh_token") == 3
    record = stored(oauth, USER)
    assert record is not None and record.status is ConnectionStatus.CONNECTED
    assert record.backoff is None and record.lease is None


class _During(httpx.BaseTransport):
    """Passes every request to ``inner``; runs ``during()`` as a refresh is being sent."""

    def __init__(self, inner: httpx.BaseTransport, during: Callable[[], None]) -> None:
        self.inner = inner
        self.during = during

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if b"refresh_token" in request.content:
            self.during()
        return self.inner.handle_request(request)


def test_a_kept_back_off_never_concludes_another_workers_claim(
    local: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """The back-off this process kept (the store refused it) answered its own claim: once
    another worker has claimed the refresh since, a load here neither releases that worker's
    lease nor takes its send back, and the kept back-off is dropped."""
    store = FaultyStore(local.open())
    oauth = _connected(make_oauth, fake, store)
    clock.advance(EXPIRED)
    fake.fail_next("429", grant="refresh_token")
    fault = store.fail("compare_and_set", times=None, when=_writes_a_back_off)
    assert _refused_later(oauth).status == 429
    fault.heal()
    clock.advance(timedelta(seconds=61))  # the claim's lease lapsed; no back-off was stored
    seen: list[ConnectionRecord | None] = []

    def look_from_the_first() -> None:
        oauth.status(USER)  # loads: the kept back-off meets the other worker's claim
        seen.append(stored(oauth, USER))

    other = AmoOAuth(
        config_for(fake, **EXACT),
        store=store,
        http=httpx.Client(transport=_During(fake.transport(), look_from_the_first)),
        clock=clock,
    )
    assert other.access_token(USER)
    (during,) = seen
    assert during is not None and during.lease is not None and during.backoff is None
    assert during.tokens is not None and during.tokens.refresh_sends == 2
    record = stored(oauth, USER)
    assert record is not None and record.status is ConnectionStatus.CONNECTED
    assert record.backoff is None and record.lease is None
    assert oauth.access_token(USER) == other.access_token(USER)  # nothing held back here


@pytest.mark.parametrize("concurrency", [1, 4])
def test_held_back_connections_do_not_use_up_the_sweeps_limit(
    local: Backend, fake: FakeAmoCRM, clock: FakeClock, concurrency: int
) -> None:
    """10 due connections, 4 held back: ``limit=5`` refreshes 5 due ones and reports the 4
    held back (nothing sent for them) and the 1 that remains; the next run the last one."""
    transport = FaultyTransport(fake.transport())
    oauth = _through(transport, fake, clock, local.open())
    for n in range(9):
        run_consent(oauth, fake, f"u{n}")
    clock.advance(timedelta(days=85))
    # retry_after 0: the host's pace is not paused (a pause would hold the others back too,
    # test_pace.py), so only the record's back-off (60 s on the fake clock) holds these 4.
    fake.fail_next("429", times=4, grant="refresh_token", fields={"retry_after": 0})
    first = oauth.refresh_due(timedelta(days=7), limit=4, concurrency=concurrency)
    held = {connection_id for connection_id, _ in first.failed}
    assert len(held) == 4 and first.remaining == 6
    sent = fake.token_call_count("refresh_token")
    second = oauth.refresh_due(timedelta(days=7), limit=5, concurrency=concurrency)
    assert len(second.refreshed) == 5 and second.remaining == 1
    assert set(second.failed) == {(connection_id, "refresh_backoff") for connection_id in held}
    third = oauth.refresh_due(timedelta(days=7), limit=5, concurrency=concurrency)
    assert len(third.refreshed) == 1 and third.remaining == 0 and len(third.failed) == 4
    assert fake.token_call_count("refresh_token") == sent + 6


def test_the_async_sweeps_limit_skips_over_held_back_connections(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    store = MemoryStore(clock=clock)
    first = _connected(make_oauth, fake, store)
    for n in range(4):
        run_consent(first, fake, f"u{n}")
    clock.advance(timedelta(days=85))
    first._pace.pacer.sleep = lambda seconds: None
    # retry_after 0: no pause of the host's pace, only the records' back-offs hold these two.
    fake.fail_next("429", times=2, grant="refresh_token", fields={"retry_after": 0})
    first.refresh_due(timedelta(days=7), limit=2)

    async def main() -> object:
        http = httpx.AsyncClient(transport=fake.async_transport())
        config = config_for(fake, **EXACT)
        async with AsyncAmoOAuth(config, store=store, http=http, clock=clock) as oauth:
            report = await oauth.refresh_due(timedelta(days=7), limit=2)
        await http.aclose()
        return report

    report = asyncio.run(main())
    assert len(report.refreshed) == 2 and report.remaining == 1  # type: ignore[attr-defined]
    assert [reason for _, reason in report.failed] == ["refresh_backoff"] * 2  # type: ignore[attr-defined]


def test_a_hint_never_quotes_what_the_request_sent() -> None:
    """amoCRM's error body echoes the client secret and the refresh token, both shorter than
    the token-shape rule: the error's message holds neither."""
    secret, token = "short-secret-42", "rt-0123"
    request = httpx.Request(
        "POST",
        "https://test.amocrm.ru/oauth2/access_token",
        json={"client_secret": secret, "refresh_token": token, "client_id": "id"},
    )
    for status in (429, 403, 500, 400):
        echo = {"hint": f"token {token} / {secret}", "retry_after": 5}
        response = httpx.Response(status, json=echo, request=request)
        with pytest.raises(ProviderError) as failed:
            read_tokens(response, NOW, grant="refresh_token", sent=token)
        shown = f"{failed.value} {failed.value!r} {failed.value.args}"
        assert secret not in shown and token not in shown
        assert "token [redacted] / [redacted]" in shown
    bearer = httpx.Request("GET", "https://test.amocrm.ru/api/v4/account")
    bearer.headers["Authorization"] = "Bearer at-short"
    with pytest.raises(ProviderError) as refused:
        read_account(httpx.Response(401, json={"title": "bad at-short"}, request=bearer))
    assert "at-short" not in str(refused.value)
