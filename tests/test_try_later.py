""" "Try again later" that says when (the reviews of issues 19-21).

A callback refused by the bounds on code exchanges (``rate_limited``) carries when a try would
be admitted, and every adapter answers it 429 with ``Retry-After`` and a page that names the
minutes; a new connection's verification refused during the host's API pause is deferred to
the pause's end without counting as a try; ``auth()`` refuses a paused host before it
refreshes an expired token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import timedelta
from html import escape
from typing import Any
from urllib.parse import urlencode

import flask
import httpx
import pytest
from django.test import AsyncClient, Client, override_settings
from fastapi import FastAPI
from fastapi.testclient import TestClient

from amo_oauth import AmoOAuth, AsyncAmoOAuth, CallbackRejected, MemoryStore, TryAgainLater, web
from amo_oauth._limits import Attempt, Bounds, ExchangeLimiter
from amo_oauth.django import urls
from amo_oauth.fastapi import router
from amo_oauth.flask import blueprint
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.web import Handlers, Request
from test_django import project
from test_pace import ACCOUNT, LEADS, USER, FakeSeconds, paced_by, service
from test_web import PREFIX, parse_page

from helpers import config_for, consent, query_of, stored

WINDOW = timedelta(minutes=10)
#: One widget install per account host and window: the second is rate_limited.
ONE_INSTALL = {
    "allow_widget_installs": True,
    "max_widget_exchanges_per_host": 1,
    "exchange_window": WINDOW,
}


# -- rate_limited says when ---------------------------------------------------------------------


def test_the_limiter_says_when_its_full_window_frees_a_try() -> None:
    now = [0.0]
    bounds = Bounds(connection=3, host=100, process=100, source=100, widgets=1, widget_host=1)
    limiter = ExchangeLimiter(bounds, window=60.0, clock=lambda: now[0])
    attempt = Attempt("u:c:user-1", "shop.amocrm.ru")
    for at in (0.0, 10.0, 20.0):
        now[0] = at
        slot = limiter.admit(attempt)
        assert slot is not None
        limiter.claimed(slot, exchanged=True)
    now[0] = 30.0
    assert limiter.admit(attempt) is None
    assert limiter.retry_after(attempt) == 30  # the try made at 0 s ages out at 60 s
    now[0] = 59.5
    assert limiter.retry_after(attempt) == 1  # rounded up, never 0
    now[0] = 60.0
    assert limiter.admit(attempt) is not None


def garbage(oauth: AmoOAuth, fake: FakeAmoCRM, n: int) -> tuple[dict[str, str], str | None]:
    query, binding = consent(oauth, fake, USER)
    return {**query, "code": f"garbage-{n}"}, binding


def test_a_rate_limited_callback_says_when_a_try_is_admitted(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make_oauth(max_exchanges_per_connection=2, exchange_window=WINDOW)
    for n in range(2):  # amoCRM refuses the junk: the two tries of the window
        query, binding = garbage(oauth, fake, n)
        assert oauth.handle_callback(query, binding=binding).outcome.value == "failed"
    query, binding = garbage(oauth, fake, 2)
    with pytest.raises(CallbackRejected) as refused:
        oauth.handle_callback(query, binding=binding)
    assert refused.value.reason == "rate_limited"
    assert refused.value.retry_after is not None
    assert 590 <= refused.value.retry_after <= 600  # the window's first try ages out
    assert float(refused.value.retry_after).is_integer()  # whole seconds, rounded up


def test_an_async_rate_limited_widget_install_says_when(fake: FakeAmoCRM, clock: FakeClock) -> None:
    install = query_of(fake.authorize(from_widget=True))

    async def main() -> CallbackRejected:
        http = httpx.AsyncClient(transport=fake.async_transport())
        config = config_for(fake, **ONE_INSTALL)
        async with AsyncAmoOAuth(config, store=MemoryStore(), http=http, clock=clock) as oauth:
            await oauth.handle_callback({**install, "code": "bogus-1"})
            with pytest.raises(CallbackRejected) as refused:
                await oauth.handle_callback({**install, "code": "bogus-2"})
            return refused.value

    refused = asyncio.run(main())
    assert refused.reason == "rate_limited"
    assert refused.retry_after is not None and 590 <= refused.retry_after <= 600


def test_callback_rejected_stays_backward_compatible() -> None:
    assert CallbackRejected("bad_state").retry_after is None
    with pytest.raises(ValueError, match=">= 0"):
        CallbackRejected("rate_limited", retry_after=-1)


def install_path(fake: FakeAmoCRM, code: str) -> str:
    install = query_of(fake.authorize(from_widget=True))
    return f"{PREFIX}/callback?{urlencode({**install, 'code': code})}"


def assert_says_when(status: int, headers: Any, text: str, lang: str = "en") -> None:
    assert status == 429
    assert 590 <= int(headers["retry-after"]) <= 600
    page = web.PAGE_TEXTS[lang]
    assert parse_page(text).h1 == page.title(web.PageKind.RATE_LIMITED)
    assert escape(page.body(web.PageKind.RATE_LIMITED, 10)) in text  # "... in 10 min."


@pytest.mark.parametrize(
    ("lang", "says"), [("en", "in 10 min"), ("ru", "через 10 мин"), ("uk", "через 10 хв")]
)
def test_the_handlers_answer_429_with_retry_after_and_a_page_that_says_when(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, lang: str, says: str
) -> None:
    oauth = make_oauth(**ONE_INSTALL)
    handlers = Handlers(oauth, connection_id=lambda r: None, app_scheme="app")

    def get(code: str) -> web.Response:
        path, _, query = install_path(fake, code).partition("?")
        return handlers.handle(Request("GET", path, f"{query}&lang={lang}"))

    assert get("bogus-1").status == 200  # the failure page: the one try of the window
    answer = get("bogus-2")
    assert_says_when(answer.status, dict(answer.headers), answer.text, lang)
    assert says in answer.text


def test_a_rate_limited_page_without_a_time_says_only_try_again(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, monkeypatch: pytest.MonkeyPatch
) -> None:
    oauth = make_oauth()

    def refuse(*args: object, **kwargs: object) -> object:
        raise CallbackRejected("rate_limited")

    monkeypatch.setattr(oauth, "handle_callback", refuse)
    handlers = Handlers(oauth, connection_id=lambda r: None, app_scheme="app")
    path, _, query = install_path(fake, "any").partition("?")
    answer = handlers.handle(Request("GET", path, query))
    assert answer.status == 429 and "retry-after" not in dict(answer.headers)
    assert parse_page(answer.text).h1 == web.PAGE_TEXTS["en"].title(web.PageKind.ERROR)


def test_fastapi_answers_rate_limited_with_retry_after(fake: FakeAmoCRM, clock: FakeClock) -> None:
    http = httpx.AsyncClient(transport=fake.async_transport())
    oauth = AsyncAmoOAuth(
        config_for(fake, **ONE_INSTALL), store=MemoryStore(), http=http, clock=clock
    )
    app = FastAPI()
    app.include_router(router(oauth, connection_id=lambda r: None, app_scheme="app"))
    with TestClient(app, base_url="https://testserver") as client:
        assert client.get(install_path(fake, "bogus-1")).status_code == 200
        answer = client.get(install_path(fake, "bogus-2"))
    assert_says_when(answer.status_code, answer.headers, answer.text)


def test_flask_answers_rate_limited_with_retry_after(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make_oauth(**ONE_INSTALL)
    app = flask.Flask(__name__)
    app.register_blueprint(blueprint(oauth, connection_id=lambda: None, app_scheme="app"))
    client = app.test_client()
    assert client.get(install_path(fake, "bogus-1")).status_code == 200
    answer = client.get(install_path(fake, "bogus-2"))
    assert_says_when(answer.status_code, answer.headers, answer.get_data(as_text=True))


@pytest.fixture
def async_oauth(fake: FakeAmoCRM, clock: FakeClock) -> Iterator[AsyncAmoOAuth]:
    http = httpx.AsyncClient(transport=fake.async_transport())
    oauth = AsyncAmoOAuth(
        config_for(fake, **ONE_INSTALL), store=MemoryStore(), http=http, clock=clock
    )
    yield oauth
    asyncio.run(oauth.aclose())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_django_answers_rate_limited_with_retry_after(
    make_oauth: Callable[..., AmoOAuth], async_oauth: AsyncAmoOAuth, fake: FakeAmoCRM, kind: str
) -> None:
    service = make_oauth(**ONE_INSTALL) if kind == "sync" else async_oauth
    patterns = urls(service, connection_id=lambda r: None, app_scheme="app")
    with override_settings(ROOT_URLCONF=project(patterns)):
        if kind == "sync":
            client = Client()
            assert client.get(install_path(fake, "bogus-1")).status_code == 200
            answer = client.get(install_path(fake, "bogus-2"))
        else:
            aclient = AsyncClient()
            assert asyncio.run(aclient.get(install_path(fake, "bogus-1"))).status_code == 200  # type: ignore[arg-type]
            answer = asyncio.run(aclient.get(install_path(fake, "bogus-2")))  # type: ignore[arg-type]
    assert_says_when(answer.status_code, answer.headers, answer.content.decode())


# -- a verification during the host's pause waits for the pause's end ---------------------------


@pytest.fixture
def seconds(clock: FakeClock) -> FakeSeconds:
    return FakeSeconds(clock)


def pause_the_host(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    """amoCRM answers ``auth()``'s call 429 with ``retry_after`` 300: the host is paused."""
    fake.fail_next("429", endpoint="api", path=LEADS)
    api = httpx.Client(auth=oauth.auth(USER), transport=fake.transport())
    with api, pytest.raises(TryAgainLater):
        api.get(f"https://{fake.account_host}{LEADS}")


def test_a_verification_deferred_by_the_pause_waits_for_its_end_and_keeps_its_tries(
    fake: FakeAmoCRM, clock: FakeClock, seconds: FakeSeconds
) -> None:
    oauth = service(fake, clock, seconds)
    with oauth:
        pause_the_host(oauth, fake)
        result = oauth.connect_with_code("user-2", fake.issue_keys_tab_code(), fake.account_host)
        assert result.connection.status.value == "exchanged"
        record = stored(oauth, "user-2")
        assert record is not None and record.verify_attempts == 0  # nothing was sent
        assert record.verify_after == clock() + timedelta(seconds=300)  # was 5 s
        with pytest.raises(TryAgainLater) as later:
            oauth.access_token("user-2")
        assert later.value.reason == "verification_deferred"
        assert later.value.retry_after == pytest.approx(300)  # was 5
        checks = fake.api_call_count(ACCOUNT)
        clock.advance(299)
        with pytest.raises(TryAgainLater):
            oauth.access_token("user-2")
        assert fake.api_call_count(ACCOUNT) == checks  # no try burnt inside the pause
        clock.advance(1)
        assert oauth.access_token("user-2")
        assert oauth.status("user-2").is_connected
        assert fake.api_call_count(ACCOUNT) == checks + 1


def test_a_verification_due_inside_a_longer_pause_is_deferred_again_without_a_try(
    fake: FakeAmoCRM, clock: FakeClock, seconds: FakeSeconds
) -> None:
    """The pause grew (another 429 to another caller) after the verification was deferred:
    the due try is refused unsent, deferred to the new end, and still counts no attempt."""
    oauth = service(fake, clock, seconds)
    with oauth:
        pause_the_host(oauth, fake)
        oauth.connect_with_code("user-2", fake.issue_keys_tab_code(), fake.account_host)
        clock.advance(200)
        pacer, key = oauth._pace.pacer, (oauth.config.client_id, fake.account_host)
        pacer.pause(key, 300.0, sent_at=pacer.clock())  # now paused until 500 s
        clock.advance(100)  # the verification is due; the pause has 200 s left
        checks = fake.api_call_count(ACCOUNT)
        with pytest.raises(TryAgainLater) as later:
            oauth.access_token("user-2")
        assert later.value.reason == "verification_deferred"
        assert later.value.retry_after == pytest.approx(200)
        record = stored(oauth, "user-2")
        assert record is not None and record.verify_attempts == 0
        assert fake.api_call_count(ACCOUNT) == checks
        clock.advance(200)
        assert oauth.access_token("user-2") and oauth.status("user-2").is_connected


def test_a_verification_answered_429_waits_for_amocrms_retry_after(
    fake: FakeAmoCRM, clock: FakeClock, seconds: FakeSeconds
) -> None:
    """The sibling: the verification itself is answered 429 (it was sent, so it counts)."""
    oauth = service(fake, clock, seconds)
    with oauth:
        fake.fail_next("429", endpoint="api", path=ACCOUNT)
        result = oauth.connect_with_code("user-2", fake.issue_keys_tab_code(), fake.account_host)
        assert result.connection.status.value == "exchanged"
        record = stored(oauth, "user-2")
        assert record is not None and record.verify_attempts == 1
        assert record.verify_after == clock() + timedelta(seconds=300)  # was 5 s


# -- auth() looks at the pause before it refreshes ----------------------------------------------

#: The token, a day long, is fresh until 5 minutes before it expires (Config.refresh_margin).
BEFORE_THE_MARGIN = timedelta(days=1, seconds=-400)


def test_auth_on_an_expired_token_during_a_pause_refuses_before_refreshing(
    fake: FakeAmoCRM, clock: FakeClock, seconds: FakeSeconds
) -> None:
    oauth = service(fake, clock, seconds)
    with oauth:
        clock.advance(BEFORE_THE_MARGIN)
        pause_the_host(oauth, fake)  # 300 s, from here
        clock.advance(150)  # the token is due for a refresh; the pause has 150 s left
        refreshes = fake.token_call_count("refresh_token")
        with httpx.Client(auth=oauth.auth(USER), transport=fake.transport()) as api:
            with pytest.raises(TryAgainLater) as paused:
                api.get(f"https://{fake.account_host}{LEADS}")
            assert paused.value.reason == "api_paused"
            assert paused.value.retry_after == pytest.approx(150)
            assert fake.token_call_count("refresh_token") == refreshes  # no refresh spent
            clock.advance(150)
            assert api.get(f"https://{fake.account_host}{LEADS}").status_code == 200
        assert fake.token_call_count("refresh_token") == refreshes + 1  # once it can be used


def test_async_auth_on_an_expired_token_during_a_pause_refuses_before_refreshing(
    fake: FakeAmoCRM, clock: FakeClock, seconds: FakeSeconds
) -> None:
    url = f"https://{fake.account_host}{LEADS}"

    async def main() -> tuple[TryAgainLater, int]:
        http = httpx.AsyncClient(transport=fake.async_transport())
        store = MemoryStore(clock=clock)
        async with AsyncAmoOAuth(config_for(fake), store=store, http=http, clock=clock) as oauth:
            paced_by(oauth, seconds)
            begun = await oauth.begin(USER)
            redirect = query_of(fake.authorize(begun.state))
            await oauth.handle_callback(redirect, binding=begun.binding)
            clock.advance(BEFORE_THE_MARGIN)
            fake.fail_next("429", endpoint="api", path=LEADS)
            transport = fake.async_transport()
            async with httpx.AsyncClient(auth=oauth.auth(USER), transport=transport) as api:
                with pytest.raises(TryAgainLater):
                    await api.get(url)
                clock.advance(150)
                refreshes = fake.token_call_count("refresh_token")
                with pytest.raises(TryAgainLater) as paused:
                    await api.get(url)
                return paused.value, fake.token_call_count("refresh_token") - refreshes

    paused, refreshed = asyncio.run(main())
    assert (paused.reason, paused.retry_after) == ("api_paused", pytest.approx(150))
    assert refreshed == 0
