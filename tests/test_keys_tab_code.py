"""The keys-tab code (issue 21, part 2): ``connect_with_code`` exchanges an admin-supplied code
through the callback's machinery (the code ledger, one claim, one token call, the verification),
server-side only; the same code again answers the connection's status, never
``TryAgainLater``."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Callable
from datetime import timedelta

import httpx
import pytest

import amo_oauth.web
from _backends import Backend
from _pg_server import postgres_url  # noqa: F401
from _redis_server import redis_url  # noqa: F401
from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    CallbackRejected,
    ConnectionStatus,
    MemoryStore,
    Outcome,
    StoreError,
    TryAgainLater,
)
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.testing.faults import FaultyStore

from helpers import config_for, run_consent, stored

USER = "crm"


# -- on every store ------------------------------------------------------------------------------


def test_a_keys_tab_code_connects_once_and_again_answers_already_connected(
    backend: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make_oauth(store=backend.open())
    code = fake.issue_keys_tab_code()
    result = oauth.connect_with_code(USER, code, fake.account_host)
    assert (result.outcome, result.duplicate) == (Outcome.CONNECTED, False)
    assert result.connection.account is not None
    assert result.connection.account.id == fake.account_id
    other_machine = make_oauth(store=backend.open())
    again = other_machine.connect_with_code(USER, code, fake.account_host)
    assert (again.outcome, again.duplicate) == (Outcome.ALREADY_CONNECTED, True)
    assert fake.token_calls_for(code) == 1
    assert other_machine.access_token(USER)  # an ordinary pair


def test_two_services_on_one_store_racing_one_code_make_one_token_call(
    backend: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    fake.latency = 0.05  # the first exchange is still in flight when the others arrive
    services = [make_oauth(store=backend.open()) for _ in range(2)]
    code = fake.issue_keys_tab_code()
    start = threading.Barrier(6)
    outcomes: list[Outcome] = []
    errors: list[BaseException] = []

    def paste(index: int) -> None:
        start.wait()
        try:
            result = services[index % 2].connect_with_code(USER, code, fake.account_host)
            outcomes.append(result.outcome)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=paste, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert fake.token_calls_for(code) == 1
    assert outcomes.count(Outcome.CONNECTED) == 1
    assert set(outcomes) <= {Outcome.CONNECTED, Outcome.ALREADY_CONNECTED}
    assert services[0].status(USER).is_connected


# -- the guarantees the callback gives --------------------------------------------------------


def test_a_code_claimed_for_another_connection_is_refused_and_never_sent_again(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    code = fake.issue_keys_tab_code()
    assert oauth.connect_with_code("first", code, fake.account_host).outcome is Outcome.CONNECTED
    with pytest.raises(CallbackRejected) as refused:
        oauth.connect_with_code("second", code, fake.account_host)
    assert refused.value.reason == "code_used_elsewhere"
    assert fake.token_calls_for(code) == 1 and stored(oauth, "second") is None


def test_a_callbacks_code_pasted_for_another_connection_is_refused(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    begun = oauth.begin("first")
    query = dict(
        item.split("=", 1) for item in fake.authorize(begun.state).split("?", 1)[1].split("&")
    )
    assert oauth.handle_callback(query, binding=begun.binding).outcome is Outcome.CONNECTED
    with pytest.raises(CallbackRejected) as refused:
        oauth.connect_with_code("second", query["code"], fake.account_host)
    assert refused.value.reason == "code_used_elsewhere"
    assert fake.token_calls_for(query["code"]) == 1


def test_a_new_code_reauthorizes_a_connected_connection(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    assert run_consent(oauth, fake, USER).connection.is_connected
    before = stored(oauth, USER)
    code = fake.issue_keys_tab_code()
    result = oauth.connect_with_code(USER, code, fake.account_host)
    after = stored(oauth, USER)
    assert result.outcome is Outcome.CONNECTED and not result.duplicate
    assert before is not None and after is not None and before.tokens and after.tokens
    assert after.tokens.access_token != before.tokens.access_token
    assert after.connected_version is not None and after.connected_version > before.version


def test_an_expired_code_fails_and_its_replay_sends_nothing(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    code = fake.issue_keys_tab_code()
    clock.advance(timedelta(minutes=21))  # a keys-tab code lives 20 minutes
    failed = oauth.connect_with_code(USER, code, fake.account_host)
    assert failed.outcome is Outcome.FAILED and failed.connection.error is not None
    assert failed.connection.error.reason == "code_rejected"
    replay = oauth.connect_with_code(USER, code, fake.account_host)
    assert (replay.outcome, replay.duplicate) == (Outcome.FAILED, True)
    assert fake.token_calls_for(code) == 1


def test_a_lost_answer_never_resends_the_code(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    code = fake.issue_keys_tab_code()
    fake.fail_next("lost_answer", grant="authorization_code")
    first = oauth.connect_with_code(USER, code, fake.account_host)
    assert first.outcome is Outcome.FAILED
    assert first.connection.error is not None
    assert first.connection.error.reason == "exchange_interrupted"
    again = oauth.connect_with_code(USER, code, fake.account_host)
    assert again.duplicate and fake.token_calls_for(code) == 1


@pytest.mark.parametrize("kind", ["500", "timeout_before", "429"])
def test_a_replay_during_a_deferred_verification_answers_never_try_again_later(
    oauth: AmoOAuth, fake: FakeAmoCRM, kind: str
) -> None:
    code = fake.issue_keys_tab_code()
    fake.fail_next(kind, times=2, endpoint="api", path="/api/v4/account")  # type: ignore[arg-type]
    first = oauth.connect_with_code(USER, code, fake.account_host)
    assert first.outcome is Outcome.IN_PROGRESS  # the pair is kept, verified later
    replay = oauth.connect_with_code(USER, code, fake.account_host)  # the seed's replay
    assert (replay.outcome, replay.duplicate) == (Outcome.IN_PROGRESS, True)
    assert fake.token_calls_for(code) == 1


def test_a_replay_during_a_refresh_back_off_answers_already_connected(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    code = fake.issue_keys_tab_code()
    assert oauth.connect_with_code(USER, code, fake.account_host).outcome is Outcome.CONNECTED
    clock.advance(timedelta(days=1, minutes=1))
    fake.fail_next("429", grant="refresh_token")
    with pytest.raises(TryAgainLater):
        oauth.access_token(USER)  # the connection is now held back
    replay = oauth.connect_with_code(USER, code, fake.account_host)
    assert (replay.outcome, replay.duplicate) == (Outcome.ALREADY_CONNECTED, True)
    assert fake.token_calls_for(code) == 1


def test_a_store_failing_on_the_claim_sends_nothing_and_a_retry_connects(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    store = FaultyStore(MemoryStore(clock=clock))
    oauth = make_oauth(store=store)
    code = fake.issue_keys_tab_code()
    store.fail("claim", times=1)
    with pytest.raises(StoreError):
        oauth.connect_with_code(USER, code, fake.account_host)
    assert fake.token_calls_for(code) == 0
    assert oauth.connect_with_code(USER, code, fake.account_host).outcome is Outcome.CONNECTED
    assert fake.token_calls_for(code) == 1


@pytest.mark.parametrize(
    ("host", "code", "reason"),
    [
        ("evil.example.com", "def50200abc", "foreign_host"),
        ("", "def50200abc", "missing_referer"),
        ("test.amocrm.ru", "", "missing_code"),
        ("test.amocrm.ru", "bad\ncode", "malformed"),
        ("test.amocrm.ru", "x" * 5000, "malformed"),
    ],
)
def test_refusals_write_and_send_nothing(
    oauth: AmoOAuth, fake: FakeAmoCRM, host: str, code: str, reason: str
) -> None:
    with pytest.raises(CallbackRejected) as refused:
        oauth.connect_with_code(USER, code, host)
    assert refused.value.reason == reason
    assert fake.token_call_count() == 0 and stored(oauth, USER) is None


@pytest.mark.parametrize("spelling", ["https://{}/", "{}/", "http://{}"])
def test_a_keys_tab_host_typed_with_a_scheme_a_slash_or_in_capitals_connects(
    oauth: AmoOAuth, fake: FakeAmoCRM, spelling: str
) -> None:
    typed = spelling.format(fake.account_host.upper())
    result = oauth.connect_with_code(USER, fake.issue_keys_tab_code(), typed)
    assert result.outcome is Outcome.CONNECTED
    record = stored(oauth, USER)
    assert record is not None and record.host == fake.account_host


@pytest.mark.parametrize("spelling", ["https://{}/leads", "https://{}:443/", "https://u@{}"])
def test_a_keys_tab_host_with_a_path_port_or_userinfo_is_refused(
    oauth: AmoOAuth, fake: FakeAmoCRM, spelling: str
) -> None:
    with pytest.raises(CallbackRejected) as refused:
        oauth.connect_with_code(USER, "def50200abc", spelling.format(fake.account_host))
    assert refused.value.reason == "foreign_host" and fake.token_call_count() == 0


def test_the_async_twin_races_one_code_to_one_token_call(
    fake: FakeAmoCRM, clock: FakeClock
) -> None:
    async def scenario() -> None:
        http = httpx.AsyncClient(transport=fake.async_transport())
        store = MemoryStore(clock=clock)
        fake.latency = 0.02
        async with AsyncAmoOAuth(config_for(fake), store=store, http=http, clock=clock) as oauth:
            code = fake.issue_keys_tab_code()
            results = await asyncio.gather(
                *(oauth.connect_with_code(USER, code, fake.account_host) for _ in range(5))
            )
            assert sorted(r.outcome for r in results).count(Outcome.CONNECTED) == 1
            assert {r.outcome for r in results} <= {Outcome.CONNECTED, Outcome.ALREADY_CONNECTED}
            again = await oauth.connect_with_code(USER, code, fake.account_host)
            assert again.duplicate
            assert (await oauth.status(USER)).status is ConnectionStatus.CONNECTED

    asyncio.run(scenario())
    assert fake.token_call_count("authorization_code") == 1


# -- server-side only; secrets --------------------------------------------------------------------


def test_no_web_route_exchanges_an_admin_code() -> None:
    """An admin's code has no state and no browser to tie it to anyone: a web route that took
    one would let any visitor bind their account to a connection."""
    for module in (amo_oauth.web._calls, amo_oauth.web._routes, amo_oauth.web._handlers):
        assert "connect_with_code" not in inspect.getsource(module)


def test_the_code_is_never_in_a_log_a_repr_or_an_error(
    oauth: AmoOAuth, fake: FakeAmoCRM, caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    caplog.set_level(logging.DEBUG)
    code, stale = fake.issue_keys_tab_code(), fake.issue_keys_tab_code()
    seen: list[object] = [oauth.connect_with_code(USER, code, fake.account_host)]
    seen.append(oauth.connect_with_code(USER, code, fake.account_host))
    with pytest.raises(CallbackRejected) as refused:
        oauth.connect_with_code("other", code, fake.account_host)
    clock.advance(timedelta(minutes=21))
    seen.append(oauth.connect_with_code("late", stale, fake.account_host))
    seen += [refused.value, stored(oauth, USER), oauth, fake]
    texts = [caplog.text] + [f"{item!r} {item}" for item in seen]
    assert all(code not in text and stale not in text for text in texts)


# -- a connected connection keeps working until the new pair is in hand (review of issue 21) -----


def _connected_long_lived(oauth: AmoOAuth, fake: FakeAmoCRM) -> str:
    token = fake.issue_long_lived_token()
    assert oauth.connect_long_lived(USER, token, fake.account_host).is_connected
    return token


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (None, "code_rejected"),  # a typo: amoCRM cannot decrypt it
        ("500", "exchange_interrupted"),
        ("timeout_before", "exchange_interrupted"),
        ("lost_answer", "exchange_interrupted"),  # the code may be spent: never sent again
    ],
)
def test_a_refused_admin_code_leaves_a_connected_connection_as_it_was(
    backend: Backend,
    make_oauth: Callable[..., AmoOAuth],
    fake: FakeAmoCRM,
    fault: str | None,
    reason: str,
) -> None:
    oauth = make_oauth(store=backend.open())
    token = _connected_long_lived(oauth, fake)
    before = stored(oauth, USER)
    code = "def502typo" if fault is None else fake.issue_keys_tab_code()
    if fault is not None:
        fake.fail_next(fault, grant="authorization_code")  # type: ignore[arg-type]
    result = oauth.connect_with_code(USER, code, fake.account_host)
    assert (result.outcome, result.refused) == (Outcome.FAILED, reason)
    assert result.connection.status is ConnectionStatus.CONNECTED
    assert result.connection.error is None
    assert oauth.access_token(USER) == token
    after = stored(oauth, USER)
    assert before is not None and after is not None
    assert (after.host, after.account, after.lease) == (before.host, before.account, None)
    replay = oauth.connect_with_code(USER, code, fake.account_host)  # never sent again
    assert (replay.outcome, replay.duplicate) == (Outcome.ALREADY_CONNECTED, True)
    assert fake.token_call_count("authorization_code") == 1


def test_the_old_token_is_served_while_an_admin_code_is_at_amocrm(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    store = MemoryStore(clock=clock)
    oauth, other = make_oauth(store=store), make_oauth(store=store)
    token = _connected_long_lived(oauth, fake)
    served: list[str] = []

    class AsksMeanwhile(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.startswith("/oauth2/access_token"):
                served.append(other.access_token(USER))
            return fake.transport().handle_request(request)

    oauth.http = httpx.Client(transport=AsksMeanwhile())
    code = fake.issue_keys_tab_code()
    result = oauth.connect_with_code(USER, code, fake.account_host)
    assert result.outcome is Outcome.CONNECTED and served == [token]
    assert oauth.access_token(USER) != token  # the new pair replaced it once in hand


def test_the_async_twin_keeps_a_connected_connection_on_a_refused_code(
    fake: FakeAmoCRM, clock: FakeClock
) -> None:
    async def scenario() -> None:
        http = httpx.AsyncClient(transport=fake.async_transport())
        store = MemoryStore(clock=clock)
        async with AsyncAmoOAuth(config_for(fake), store=store, http=http, clock=clock) as oauth:
            token = fake.issue_long_lived_token()
            await oauth.connect_long_lived(USER, token, fake.account_host)
            fake.fail_next("500", grant="authorization_code")
            result = await oauth.connect_with_code(
                USER, fake.issue_keys_tab_code(), fake.account_host
            )
            assert (result.outcome, result.refused) == (Outcome.FAILED, "exchange_interrupted")
            assert await oauth.access_token(USER) == token

    asyncio.run(scenario())


def test_connections_racing_one_code_lose_with_code_used_elsewhere(
    backend: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    fake.latency = 0.05  # the winner's exchange is in flight when the others claim
    services = [make_oauth(store=backend.open()) for _ in range(2)]
    assert services[0].connect_with_code("c0", fake.issue_keys_tab_code(), fake.account_host)
    connected_before = stored(services[0], "c0")
    code = fake.issue_keys_tab_code()
    ids = ["c0", "c1", "c2", "c3"]
    start = threading.Barrier(len(ids))
    answers: dict[str, object] = {}

    def paste(index: int) -> None:
        start.wait()
        try:
            answers[ids[index]] = (
                services[index % 2].connect_with_code(ids[index], code, fake.account_host).outcome
            )
        except CallbackRejected as refused:
            answers[ids[index]] = refused.reason

    threads = [threading.Thread(target=paste, args=(i,)) for i in range(len(ids))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [name for name, answer in answers.items() if answer is Outcome.CONNECTED]
    assert len(winners) == 1 and fake.token_calls_for(code) == 1
    assert {answers[name] for name in ids if name not in winners} == {"code_used_elsewhere"}
    for loser in (name for name in ids if name not in winners):
        record = stored(services[0], loser)
        if loser == "c0":  # it was connected: it is still, with its own pair
            assert record is not None and connected_before is not None
            assert record.status is ConnectionStatus.CONNECTED
            assert record.tokens == connected_before.tokens
        else:
            assert record is None or record.status is ConnectionStatus.DISCONNECTED
