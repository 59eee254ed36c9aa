"""amo_oauth.web: the framework-agnostic handlers, driven directly (sync and async).

The seed's scenario lives here as ``seed_scenario(send, fake)`` so every adapter's test file runs
the very same steps through its own framework.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from html import escape
from html.parser import HTMLParser
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs
import httpx
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    Connection,
    ConnectionRecord,
    ConnectionStatus,
    Lease,
    MemoryStore,
    StoreError,
    TryAgainLater,
    web,
)
from amo_oauth._hook import hook_signature
from amo_oauth.stores import Loaded
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.web import AsyncHandlers, Handlers, PageText, Request, Response
from amo_oauth.web._catalogue import HTTP_METHODS
from amo_oauth.web._routes import NO_COOKIE_OVER_HTTP

from helpers import STATE_SECRET, config_for, examples, query_of, stored

USER = "user-42"
PREFIX = "/api/amo-crm"
AS_USER = {"x-user": USER}


# -- shared by the adapter tests ------------------------------------------------------------


@attrs.frozen
class Answer:
    """A response as any framework's test client gives it back."""

    status: int
    headers: Mapping[str, str]  # lower-cased names
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


class Send(Protocol):
    def __call__(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> Answer: ...


def user_from_header(request: Request) -> str | None:
    """The tests' stand-in for an app's authentication."""
    return request.header("x-user")


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lang: str | None = None
        self.tags: list[str] = []
        self.links: list[str] = []
        self.metas: dict[str, str] = {}
        self.h1 = ""
        self.button = ""
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {key: value or "" for key, value in attrs}
        self.tags.append(tag)
        if tag == "html":
            self.lang = found.get("lang")
        elif tag == "a":
            self.links.append(found["href"])
        elif tag == "meta" and "name" in found:
            self.metas[found["name"]] = found.get("content", "")
        self._in = tag if tag in ("h1", "a") else self._in

    def handle_endtag(self, tag: str) -> None:
        self._in = None if tag == self._in else self._in

    def handle_data(self, data: str) -> None:
        if self._in == "h1":
            self.h1 += data
        elif self._in == "a":
            self.button += data


def parse_page(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def deep_link(answer: Answer) -> tuple[str, dict[str, str]]:
    """The page's one link: (``scheme://host/path``, its query)."""
    assert answer.headers["content-type"].startswith("text/html")
    links = parse_page(answer.text).links
    assert len(links) == 1
    parts = urlsplit(links[0])
    return f"{parts.scheme}://{parts.netloc}{parts.path}", dict(parse_qsl(parts.query))


def callback_query(redirect: str) -> str:
    return urlsplit(redirect).query


def connect_url(send: Send) -> str:
    """GET /connect as a browser (302, the binding cookie) and as the mobile app (JSON: a ticket
    URL its in-app browser opens, with no session, to get the same 302): the consent URL."""
    redirect = send("GET", f"{PREFIX}/connect", headers=AS_USER)
    assert redirect.status == 302
    assert "amo_oauth_binding=" in redirect.headers["set-cookie"]
    asked = send("GET", f"{PREFIX}/connect", headers={**AS_USER, "accept": "application/json"})
    assert asked.status == 200
    ticket_url = urlsplit(asked.json()["url"])
    assert ticket_url.path == f"{PREFIX}/connect"
    assert set(query_of(asked.json()["url"])) == {"ticket"}
    opened = send("GET", ticket_url.path, query=ticket_url.query)  # the in-app browser
    assert opened.status == 302
    location = opened.headers["location"]
    assert urlsplit(location).netloc == urlsplit(redirect.headers["location"]).netloc
    return location


def connect_state(send: Send, user: str = USER) -> str:
    """GET /connect in ``send``'s browser (it keeps the binding cookie): the state it began."""
    answer = send("GET", f"{PREFIX}/connect", headers={"x-user": user})
    assert answer.status == 302
    return query_of(answer.headers["location"])["state"]


def connect_through_callback(send: Send, fake: FakeAmoCRM) -> str:
    """Connect USER as a browser does (/connect, "Allow", /callback); the code it used."""
    state = dict(parse_qsl(urlsplit(connect_url(send)).query))["state"]
    redirect = fake.authorize(state)
    assert send("GET", f"{PREFIX}/callback", query=callback_query(redirect)).status == 200
    return dict(parse_qsl(urlsplit(redirect).query))["code"]


def seed_scenario(send: Send, fake: FakeAmoCRM) -> tuple[str, str]:
    """The seed's acceptance test, with the old app that still posts the code.

    Connect -> Allow -> the callback page -> its deep link (success, no code) -> the old app
    posts the same code -> 200 connected, duplicate -> status connected -> one token call.

    Returns:
        The callback's query string and the code, for further checks.
    """
    state = query_of(connect_url(send))["state"]
    redirect = fake.authorize(state)
    code = query_of(redirect)["code"]
    page = send("GET", f"{PREFIX}/callback", query=callback_query(redirect))
    assert page.status == 200
    target, params = deep_link(page)
    assert target == "foryoure://amo-crm/callback"
    assert params == {"success": "true", "state": state}
    assert code not in page.text
    legacy = send(
        "POST",
        f"{PREFIX}/exchange-code",
        headers={**AS_USER, "content-type": "application/json"},
        body=json.dumps({"code": code, "state": state}).encode(),
    )
    assert legacy.status == 200  # never 403
    assert legacy.json()["connected"] is True
    assert (legacy.json()["outcome"], legacy.json()["duplicate"]) == ("already_connected", True)
    status = send("GET", f"{PREFIX}/status", headers=AS_USER)
    assert status.status == 200
    assert status.json()["connected"] is True
    assert status.json()["account"]["id"] == fake.account_id
    assert fake.token_calls == {("authorization_code", "ok"): 1}
    return callback_query(redirect), code


def replay_deny_and_forgery(send: Send, fake: FakeAmoCRM) -> None:
    """After ``seed_scenario``: a replayed callback, a denial and a forged state."""
    query, _ = seed_scenario(send, fake)
    first = send("GET", f"{PREFIX}/callback", query=query)
    again = send("GET", f"{PREFIX}/callback", query=query)
    assert (first.status, again.status) == (200, 200)
    assert deep_link(first) == deep_link(again)
    assert deep_link(again)[1]["success"] == "true"
    state = query_of(connect_url(send))["state"]
    denied = send("GET", f"{PREFIX}/callback", query=callback_query(fake.deny(state)))
    assert denied.status == 200
    assert deep_link(denied)[1] == {"error": "access_denied", "state": state}
    forged = state[:-3] + ("AAA" if not state.endswith("AAA") else "BBB")
    refused = send("GET", f"{PREFIX}/callback", query=callback_query(fake.authorize(forged)))
    assert refused.status == 400
    assert deep_link(refused)[1] == {"error": "bad_state"}
    assert fake.token_call_count() == 1


# -- the handlers, driven directly ------------------------------------------------------------


def answer_of(response: Response) -> Answer:
    return Answer(response.status, dict(response.headers), response.text)


class CookieJar:
    """The few lines of a browser's cookie jar the routes need (one host, Max-Age only)."""

    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}

    def headers(self, headers: Mapping[str, str] | None) -> dict[str, str]:
        sent = dict(headers or {})
        if self.cookies and "cookie" not in {name.lower() for name in sent}:
            sent["cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        return sent

    def keep(self, response: Response) -> None:
        for name, value in response.headers:
            if name == "set-cookie":
                pair, *attributes = value.split(";")
                key, _, content = pair.strip().partition("=")
                if "max-age=0" in {a.strip().lower() for a in attributes} or not content:
                    self.cookies.pop(key, None)
                else:
                    self.cookies[key] = content


def sender(handlers: Handlers, jar: CookieJar | None = None) -> Send:
    jar = jar or CookieJar()

    def send(
        method: str,
        path: str,
        *,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> Answer:
        response = handlers.handle(Request(method, path, query, jar.headers(headers), body))
        jar.keep(response)
        return answer_of(response)

    return send


def async_sender(handlers: AsyncHandlers, jar: CookieJar | None = None) -> Send:
    jar = jar or CookieJar()

    def send(
        method: str,
        path: str,
        *,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> Answer:
        request = Request(method, path, query, jar.headers(headers), body)
        response = asyncio.run(handlers.handle(request))
        jar.keep(response)
        return answer_of(response)

    return send


@pytest.fixture
def handlers(oauth: AmoOAuth) -> Handlers:
    return Handlers(oauth, connection_id=user_from_header, app_scheme="foryoure")


@pytest.fixture
def send(handlers: Handlers) -> Send:
    return sender(handlers)


@pytest.fixture
def async_oauth(fake: FakeAmoCRM, clock: FakeClock) -> Iterator[AsyncAmoOAuth]:
    oauth = AsyncAmoOAuth(
        config_for(fake),
        store=MemoryStore(),
        http=httpx.AsyncClient(transport=fake.async_transport()),
        clock=clock,
    )
    yield oauth
    asyncio.run(oauth.aclose())


def post_code(send: Send, fields: Mapping[str, str], user: str = USER) -> Answer:
    body = json.dumps(dict(fields)).encode()
    headers = {"x-user": user, "content-type": "application/json"}
    return send("POST", f"{PREFIX}/exchange-code", headers=headers, body=body)


def test_seed_scenario(send: Send, fake: FakeAmoCRM) -> None:
    seed_scenario(send, fake)


def test_replay_deny_and_forged_state(send: Send, fake: FakeAmoCRM) -> None:
    replay_deny_and_forgery(send, fake)


def test_seed_scenario_async(async_oauth: AsyncAmoOAuth, fake: FakeAmoCRM) -> None:
    async def user(request: Request) -> str | None:  # an async callable is awaited
        return request.header("x-user")

    handlers = AsyncHandlers(async_oauth, connection_id=user, app_scheme="foryoure")
    replay_deny_and_forgery(async_sender(handlers), fake)


# -- GET /connect ---------------------------------------------------------------------------


def test_connect_redirects_to_amocrm_with_a_signed_state(send: Send, fake: FakeAmoCRM) -> None:
    answer = send("GET", f"{PREFIX}/connect", headers=AS_USER)
    assert answer.status == 302
    location = urlsplit(answer.headers["location"])
    assert location.netloc == fake.consent_host
    assert query_of(answer.headers["location"])["client_id"] == fake.client_id
    assert query_of(answer.headers["location"])["state"].startswith("v2.")


@pytest.mark.parametrize(
    ("query", "accept"),
    [
        ("format=json", None),
        ("", "application/json"),
        ("", "text/html;q=0.9, application/json;q=0.5"),
    ],
)
def test_connect_answers_json_when_asked(send: Send, query: str, accept: str | None) -> None:
    headers = {**AS_USER, **({"accept": accept} if accept else {})}
    answer = send("GET", f"{PREFIX}/connect", query=query, headers=headers)
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    assert set(answer.json()) == {"url", "expires_at"}


def test_connect_stays_a_redirect_for_browsers(send: Send) -> None:
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    answer = send("GET", f"{PREFIX}/connect", headers={**AS_USER, "accept": browser})
    assert answer.status == 302
    refused = send(
        "GET", f"{PREFIX}/connect", headers={**AS_USER, "accept": "application/json;q=0"}
    )
    assert refused.status == 302


@pytest.mark.parametrize(
    "path", ["/connect", "/status", "/disconnect", "/exchange-code"], ids=str.strip
)
def test_routes_need_a_connection_id(send: Send, path: str) -> None:
    method = "POST" if path in ("/disconnect", "/exchange-code") else "GET"
    answer = send(method, PREFIX + path, body=b'{"code": "x"}')
    assert (answer.status, answer.json()) == (401, {"error": "unauthenticated"})


def test_a_401_over_http_without_a_cookie_says_why(make_oauth: Callable[..., AmoOAuth]) -> None:
    """Issue 16: a session cookie copied with Secure onto an http redirect URI never came
    back, and the 401 said nothing; over http, with no cookie at all, it now says why."""
    local = make_oauth(redirect_uri="http://127.0.0.1:8000/api/amo-crm/callback")
    send = sender(Handlers(local, connection_id=user_from_header, app_scheme="foryoure"))
    answer = send("GET", f"{PREFIX}/status")
    assert (answer.status, answer.json()) == (
        401,
        {"error": "unauthenticated", "hint": NO_COOKIE_OVER_HTTP},
    )
    assert "Secure" in NO_COOKIE_OVER_HTTP and "https_only" in NO_COOKIE_OVER_HTTP
    with_cookie = send("GET", f"{PREFIX}/status", headers={"cookie": "session=x"})
    assert with_cookie.json() == {"error": "unauthenticated"}  # a cookie came: not that
    https = sender(Handlers(make_oauth(), connection_id=user_from_header, app_scheme="x"))
    assert https("GET", f"{PREFIX}/status").json() == {"error": "unauthenticated"}


@pytest.mark.parametrize("user", ["", "x" * 256, "tab\there"])
def test_a_bad_connection_id_is_400(send: Send, user: str) -> None:
    for method, path in (("GET", "/connect"), ("GET", "/status"), ("POST", "/disconnect")):
        answer = send(method, PREFIX + path, headers={"x-user": user})
        assert (answer.status, answer.json()) == (400, {"error": "bad_connection_id"})
    answer = post_code(send, {"code": "abc"}, user=user)
    assert (answer.status, answer.json()) == (400, {"error": "bad_connection_id"})


def test_a_numeric_connection_id_is_accepted(oauth: AmoOAuth) -> None:
    handlers = Handlers(oauth, connection_id=lambda _: 42, app_scheme="app")  # type: ignore[arg-type,return-value]
    answer = handlers.handle(Request("GET", f"{PREFIX}/status"))
    assert answer.status == 200


def test_the_apps_exceptions_reach_the_framework(oauth: AmoOAuth) -> None:
    class NotSignedIn(Exception):
        pass

    def refuse(request: Request) -> str | None:
        raise NotSignedIn

    handlers = Handlers(oauth, connection_id=refuse, app_scheme="app")
    with pytest.raises(NotSignedIn):
        handlers.handle(Request("GET", f"{PREFIX}/status"))


def test_sync_handlers_refuse_an_async_connection_id(oauth: AmoOAuth) -> None:
    async def user(request: Request) -> str | None:
        return USER

    handlers = Handlers(oauth, connection_id=user, app_scheme="app")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AsyncHandlers"):
        handlers.handle(Request("GET", f"{PREFIX}/status"))


# -- GET /callback ----------------------------------------------------------------------------


def test_callback_page_is_accessible_static_html(
    send: Send, oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    redirect = fake.authorize(connect_state(send))
    answer = send("GET", f"{PREFIX}/callback", query=callback_query(redirect))
    page = parse_page(answer.text)
    assert answer.text.startswith("<!doctype html>")
    assert page.lang == "en"
    assert page.tags.count("main") == 1 and page.tags.count("h1") == 1
    assert page.tags.count("a") == 1
    assert "script" not in page.tags and "<script" not in answer.text.lower()
    assert page.metas["viewport"] == "width=device-width, initial-scale=1"
    assert page.metas["referrer"] == "no-referrer"
    assert page.h1 == "amoCRM is connected"
    assert page.button == "Return to App"


def test_callback_page_headers(send: Send, oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    redirect = fake.authorize(connect_state(send))
    for query in (callback_query(redirect), "state=forged"):
        headers = send("GET", f"{PREFIX}/callback", query=query).headers
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert headers["cache-control"] == "no-store"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        policy = headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "frame-ancestors 'none'" in policy
        assert "script-src" not in policy and "unsafe" not in policy


def test_json_responses_are_never_cached(send: Send) -> None:
    answer = send("GET", f"{PREFIX}/status", headers=AS_USER)
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-content-type-options"] == "nosniff"


def test_the_deep_link_never_carries_the_code(
    send: Send, oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    state = connect_state(send)
    redirect = fake.authorize(state)
    code = query_of(redirect)["code"]
    for _ in range(2):  # first and replayed
        answer = send("GET", f"{PREFIX}/callback", query=callback_query(redirect))
        target, params = deep_link(answer)
        assert "code" not in params
        assert code not in target + urlencode(params)
        assert code not in answer.text and all(code not in v for v in answer.headers.values())


def test_in_progress_links_pending(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make_oauth(settle_timeout=0.05)
    busy = ConnectionRecord(
        USER,
        status=ConnectionStatus.CODE_RECEIVED,
        version=1,
        host=fake.account_host,
        lease=Lease("another-worker", "exchange", clock() + timedelta(seconds=60)),
    )
    assert oauth.store.compare_and_set(busy, None)
    send = sender(Handlers(oauth, connection_id=user_from_header, app_scheme="foryoure"))
    state = connect_state(send)
    page = send("GET", f"{PREFIX}/callback", query=callback_query(fake.authorize(state)))
    assert (page.status, deep_link(page)[1]) == (200, {"pending": "true", "state": state})
    assert parse_page(page.text).h1 == "Almost done"
    legacy = post_code(send, {"code": fake.issue_code(), "referer": fake.account_host})
    assert legacy.status == 200
    assert (legacy.json()["outcome"], legacy.json()["status"]) == ("in_progress", "code_received")
    assert fake.token_call_count() == 0


def test_failed_exchange_links_the_reason(send: Send, oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    state = connect_state(send)
    query = urlencode({"code": "not-a-real-code", "state": state, "referer": fake.account_host})
    page = send("GET", f"{PREFIX}/callback", query=query)
    assert page.status == 200
    assert deep_link(page)[1] == {"error": "code_rejected", "state": state}
    assert parse_page(page.text).h1 == "amoCRM was not connected"
    assert "<code>code_rejected</code>" in page.text


def test_interrupted_exchange_links_the_reason(
    send: Send, oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    fake.fail_next("500")
    state = connect_state(send)
    page = send("GET", f"{PREFIX}/callback", query=callback_query(fake.authorize(state)))
    assert deep_link(page)[1] == {"error": "exchange_interrupted", "state": state}


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("", "bad_state"),
        ("code=abc", "bad_state"),
        ("state=v2.forged.sig&code=abc&referer=acme.amocrm.ru", "bad_state"),
        ("code=a&code=b", "malformed"),
        ("error=<script>&state=x", "malformed"),
    ],
)
def test_refused_callbacks_get_a_400_page(
    send: Send, fake: FakeAmoCRM, query: str, reason: str
) -> None:
    answer = send("GET", f"{PREFIX}/callback", query=query)
    assert answer.status == 400
    assert deep_link(answer) == ("foryoure://amo-crm/callback", {"error": reason})
    assert "<script>" not in answer.text
    assert fake.token_call_count() == 0


@pytest.mark.parametrize("lang", ["en", "ru", "uk"])
def test_another_integrations_redirect_says_the_client_id_does_not_match(
    send: Send, oauth: AmoOAuth, fake: FakeAmoCRM, lang: str
) -> None:
    """Issue 16: a callback carrying another integration's client_id was refused as
    ``malformed``; its own reason and page now say the client id does not match."""
    state = connect_state(send)
    query = dict(parse_qsl(callback_query(fake.authorize(state))))
    query["client_id"] = "another-integration"
    answer = send("GET", f"{PREFIX}/callback", query=f"{urlencode(query)}&lang={lang}")
    assert answer.status == 400
    assert deep_link(answer) == ("foryoure://amo-crm/callback", {"error": "client_id_mismatch"})
    text = web.PAGE_TEXTS[lang]
    assert parse_page(answer.text).h1 == text.title(web.PageKind.CLIENT_ID_MISMATCH)
    assert escape(text.body(web.PageKind.CLIENT_ID_MISMATCH)) in answer.text
    assert "client id" in text.client_id_mismatch_body  # the page says what does not match
    assert fake.token_call_count() == 0
    assert stored(oauth, USER) is None  # nothing written: the right redirect still works
    right = send(
        "GET", f"{PREFIX}/callback", query=urlencode({**query, "client_id": fake.client_id})
    )
    assert deep_link(right)[1]["success"] == "true"


def test_a_second_code_of_one_consent_shows_the_connection(
    send: Send, oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    state = connect_state(send)
    send("GET", f"{PREFIX}/callback", query=callback_query(fake.authorize(state)))
    answer = send("GET", f"{PREFIX}/callback", query=callback_query(fake.authorize(state)))
    assert answer.status == 200
    assert deep_link(answer)[1] == {"success": "true", "state": state}
    posted = post_code(send, {"code": fake.issue_code(), "state": state})
    assert posted.status == 200
    assert json.loads(posted.text)["outcome"] == "already_connected"
    assert fake.token_call_count() == 1


@pytest.mark.parametrize(
    ("query", "headers", "lang", "button"),
    [
        ("", {}, "en", "Return to App"),
        ("lang=ru", {}, "ru", "Вернуться в приложение"),
        ("lang=uk", {}, "uk", "Повернутися до застосунку"),
        ("lang=ua", {}, "uk", "Повернутися до застосунку"),
        ("", {"accept-language": "ru-RU,ru;q=0.9,en;q=0.8"}, "ru", "Вернуться в приложение"),
        ("", {"accept-language": "de-DE, uk;q=0.7, ru;q=0.3"}, "uk", "Повернутися до застосунку"),
        ("", {"accept-language": "ru;q=0.2, en;q=0.9"}, "en", "Return to App"),
        ("", {"accept-language": "ru;q=0, fr"}, "en", "Return to App"),
        ("", {"accept-language": "uk;q=bogus, *"}, "en", "Return to App"),
        ("lang=en", {"accept-language": "uk"}, "en", "Return to App"),
        ("lang=xx", {"accept-language": "uk"}, "uk", "Повернутися до застосунку"),
    ],
)
def test_page_language(
    send: Send, query: str, headers: dict[str, str], lang: str, button: str
) -> None:
    answer = send("GET", f"{PREFIX}/callback", query=query, headers=headers)
    page = parse_page(answer.text)
    assert (page.lang, page.button) == (lang, button)


@pytest.mark.parametrize(
    ("lang", "connected", "failed"),
    [
        ("en", "amoCRM is connected", "amoCRM was not connected"),
        ("ru", "amoCRM подключена", "amoCRM не подключена"),
        ("uk", "amoCRM підключено", "amoCRM не підключено"),
    ],
)
def test_every_message_is_translated(
    send: Send, oauth: AmoOAuth, fake: FakeAmoCRM, lang: str, connected: str, failed: str
) -> None:
    redirect = fake.authorize(connect_state(send))
    ok = send("GET", f"{PREFIX}/callback", query=f"{callback_query(redirect)}&lang={lang}")
    assert parse_page(ok.text).h1 == connected
    bad = send("GET", f"{PREFIX}/callback", query=f"lang={lang}")
    assert parse_page(bad.text).h1 == failed
    text = web.PAGE_TEXTS[lang]
    connected_body = text.body(web.PageKind.CONNECTED)
    assert connected_body in ok.text and text.body(web.PageKind.ERROR) in bad.text
    assert set(web.PAGE_TEXTS) >= {"en", "ru", "uk"}


def test_everything_on_the_page_is_escaped(oauth: AmoOAuth) -> None:
    evil = "<script>alert('x')</script>&\""
    texts = {"xx": PageText(**{field: evil for field in attrs.fields_dict(PageText)})}
    handlers = Handlers(oauth, connection_id=user_from_header, app_scheme="app", texts=texts)
    answer = handlers.handle(Request("GET", f"{PREFIX}/callback", "lang=xx"))
    assert "<script>" not in answer.text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;&quot;" in answer.text
    assert parse_page(answer.text).h1 == evil
    assert parse_page(answer.text).lang == "xx"


def test_the_echoed_state_is_escaped(send: Send, oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    state = connect_state(send)
    answer = send("GET", f"{PREFIX}/callback", query=callback_query(fake.authorize(state)))
    assert 'href="foryoure://amo-crm/callback?success=true&amp;state=' in answer.text


# -- POST /exchange-code ----------------------------------------------------------------------


def test_exchange_code_never_exchanges_a_new_code(
    send: Send, oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    """Issue: the legacy route bound any code to the signed-in user, with or without a state;
    no browser is bound to it, so it answers known codes and refuses new ones."""
    code = fake.issue_code()
    answer = post_code(send, {"code": code, "referer": fake.account_host})
    assert (answer.status, answer.json()) == (400, {"error": "new_code_refused"})
    state = connect_state(send)
    with_state = post_code(send, {"code": code, "referer": fake.account_host, "state": state})
    assert (with_state.status, with_state.json()) == (400, {"error": "new_code_refused"})
    assert fake.token_call_count() == 0
    assert code not in answer.text + with_state.text
    # The seed's old app: the code the callback exchanged is answered with the status.
    redirect = fake.authorize(connect_state(send))
    send("GET", f"{PREFIX}/callback", query=callback_query(redirect))
    known = post_code(send, {"code": query_of(redirect)["code"]})
    assert (known.status, known.json()["outcome"], known.json()["duplicate"]) == (
        200,
        "already_connected",
        True,
    )
    assert fake.token_call_count() == 1
    # Found by review: once connected, a new code with a fresh state re-authorized through
    # this route. It is refused there too.
    fresh = {"code": fake.issue_code(), "state": connect_state(send)}
    late = post_code(send, {**fresh, "referer": fake.account_host})
    assert (late.status, late.json()) == (400, {"error": "new_code_refused"})
    assert fake.token_call_count() == 1


#: The bodies ``POST /exchange-code`` reads: the seed's apps post JSON or a form.
BODIES = ["json", "form"]


def encoded(kind: str, fields: Mapping[str, str]) -> tuple[dict[str, str], bytes]:
    """The Content-Type header and the body of ``fields`` posted as ``kind``."""
    if kind == "json":
        return {"content-type": "application/json"}, json.dumps(dict(fields)).encode()
    form = "application/x-www-form-urlencoded; charset=utf-8"
    return {"content-type": form}, urlencode(dict(fields)).encode()


def post_as(send: Send, kind: str, fields: Mapping[str, str], **headers: str) -> Answer:
    content_type, body = encoded(kind, fields)
    sent = {**AS_USER, **content_type, **headers}
    return send("POST", f"{PREFIX}/exchange-code", headers=sent, body=body)


def check_known_code_is_answered(send: Send, fake: FakeAmoCRM, kind: str) -> None:
    """Issue 16: the schema said "JSON or form" while a form answered 415. A code already
    exchanged, posted either way, answers 200 ``already_connected``, and nothing is spent."""
    redirect = fake.authorize(connect_state(send))
    assert send("GET", f"{PREFIX}/callback", query=callback_query(redirect)).status == 200
    fields = {"code": query_of(redirect)["code"], "state": query_of(redirect)["state"]}
    answer = post_as(send, kind, fields)
    assert answer.status == 200
    body = answer.json()
    assert (body["outcome"], body["duplicate"], body["connected"]) == (
        "already_connected",
        True,
        True,
    )
    assert fake.token_call_count() == 1


@pytest.mark.parametrize("kind", BODIES)
def test_exchange_code_answers_a_known_code_posted_as_json_or_a_form(
    send: Send, fake: FakeAmoCRM, kind: str
) -> None:
    check_known_code_is_answered(send, fake, kind)


@pytest.mark.parametrize("kind", BODIES)
def test_exchange_code_answers_a_known_code_async(
    async_oauth: AsyncAmoOAuth, fake: FakeAmoCRM, kind: str
) -> None:
    handlers = AsyncHandlers(async_oauth, connection_id=user_from_header, app_scheme="foryoure")
    check_known_code_is_answered(async_sender(handlers), fake, kind)


@pytest.mark.parametrize("kind", BODIES)
def test_a_form_never_exchanges_a_new_code(send: Send, fake: FakeAmoCRM, kind: str) -> None:
    """What a page on another site could post (a form needs no preflight) can at most be
    answered as a code already known: a new one is refused, nothing written or sent."""
    fields = {"code": fake.issue_code(), "state": connect_state(send)}
    answer = post_as(send, kind, {**fields, "referer": fake.account_host})
    assert (answer.status, answer.json()) == (400, {"error": "new_code_refused"})
    assert fake.token_call_count() == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
        {"origin": "https://evil.example"},
        {"origin": "null"},
    ],
)
def test_a_form_from_another_site_is_refused_before_it_is_read(
    send: Send, fake: FakeAmoCRM, headers: dict[str, str]
) -> None:
    """The Origin / Sec-Fetch-Site checks apply to a form as to JSON, before the body is read
    (security.md, "Cross-site requests")."""
    redirect = fake.authorize(connect_state(send))
    send("GET", f"{PREFIX}/callback", query=callback_query(redirect))
    answer = post_as(send, "form", {"code": query_of(redirect)["code"]}, **headers)
    assert (answer.status, answer.json()) == (400, {"error": "cross_site_request"})
    garbage = send(
        "POST",
        f"{PREFIX}/exchange-code",
        headers={**AS_USER, **headers, "content-type": "application/x-www-form-urlencoded"},
        body=b"\xff",
    )
    assert (garbage.status, garbage.json()) == (400, {"error": "cross_site_request"})


def test_exchange_code_failure_is_400_with_the_status(
    send: Send, oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    begun = oauth.begin(USER)
    oauth.exchange_code(  # the service, with its consent's state, exchanged a code amoCRM refused
        USER, "never-issued", referer=fake.account_host, state=begun.state, binding=begun.binding
    )
    answer = post_code(send, {"code": "never-issued"})
    assert answer.status == 400
    body = answer.json()
    assert (body["error"], body["outcome"], body["status"]) == ("code_rejected", "failed", "error")


@pytest.mark.parametrize(
    ("content_type", "body", "status", "reason"),
    [
        ("application/json", b"{not json", 400, "malformed"),
        ("application/json", b"[1, 2]", 400, "malformed"),
        ("application/json", b'{"code": 12}', 400, "malformed"),
        ("application/json", b'{"code": "a", "state": ["x"]}', 400, "malformed"),
        ("application/json", b"\xff\xfe\xfa", 400, "malformed"),
        ("application/json", b"[" * 10_000, 400, "malformed"),
        ("application/json", b'{"n": 1' + b"0" * 5000 + b"}", 400, "malformed"),
        ("application/json", b"{}", 400, "missing_code"),
        ("application/json", b'{"code": ""}', 400, "missing_code"),
        ("application/json", b'{"code": "a\\u0000b"}', 400, "malformed"),
        ("application/json", b'{"code": "abc"}', 400, "missing_referer"),
        ("application/json", b'{"code": "abc", "referer": "evil.example"}', 400, "foreign_host"),
        ("application/json", b'{"code": "abc", "state": "v2.x.y"}', 400, "bad_state"),
        ("application/x-www-form-urlencoded", b"code=a&code=b", 400, "malformed"),
        ("application/x-www-form-urlencoded", b"code=%ff", 400, "malformed"),
        ("application/x-www-form-urlencoded", "code=é".encode(), 400, "malformed"),
        ("application/x-www-form-urlencoded", b"code=a%00b", 400, "malformed"),
        ("application/x-www-form-urlencoded", b"&".join([b"f=1"] * 33), 400, "malformed"),
        ("application/x-www-form-urlencoded", b"", 400, "missing_code"),
        ("application/x-www-form-urlencoded", b"code=&state=", 400, "missing_code"),
        ("application/x-www-form-urlencoded", b"code=abc", 400, "missing_referer"),
        (
            "application/x-www-form-urlencoded",
            b"code=abc&referer=evil.example",
            400,
            "foreign_host",
        ),
        ("application/x-www-form-urlencoded", b"code=abc&state=v2.x.y", 400, "bad_state"),
        ("", b'{"code": "abc"}', 415, "unsupported_media_type"),
        ("text/plain", b"code=abc", 415, "unsupported_media_type"),
        ("multipart/form-data; boundary=x", b"--x--", 415, "unsupported_media_type"),
        ("application/json", b" " * (16 * 1024 + 1), 413, "body_too_large"),
    ],
)
def test_exchange_code_refusals(
    send: Send, fake: FakeAmoCRM, content_type: str, body: bytes, status: int, reason: str
) -> None:
    headers = {**AS_USER, "content-type": content_type}
    answer = send("POST", f"{PREFIX}/exchange-code", headers=headers, body=body)
    assert (answer.status, answer.json()) == (status, {"error": reason})
    assert fake.token_call_count() == 0


def test_exchange_code_with_another_users_state_is_refused(
    send: Send, oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    state = oauth.begin("someone-else").state
    answer = post_code(send, {"code": fake.issue_code(), "state": state})
    assert (answer.status, answer.json()) == (400, {"error": "bad_state"})


@pytest.mark.parametrize(
    "headers",
    [
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},  # a sibling subdomain
        {"origin": "https://evil.example"},  # an older browser: no Sec-Fetch-Site
        {"origin": "null"},  # a sandboxed frame, a data: URL
        {"sec-fetch-site": "same-site", "origin": "https://evil.app.example.com"},
        {"referer": "https://evil.example/page"},  # neither Origin nor Sec-Fetch-Site
        {"referer": "https://backend.example:bad/"},  # no URL a page of ours has
    ],
)
def test_cross_site_posts_are_refused(
    send: Send, fake: FakeAmoCRM, headers: dict[str, str]
) -> None:
    """Issue: only Sec-Fetch-Site: cross-site was refused; a sibling subdomain (same-site)
    and an older browser's foreign Origin could disconnect the victim."""
    for path in ("/disconnect", "/exchange-code"):
        sent = {**AS_USER, **headers, "content-type": "application/json"}
        answer = send("POST", PREFIX + path, headers=sent, body=b'{"code": "x"}')
        assert (answer.status, answer.json()) == (400, {"error": "cross_site_request"})
    assert fake.token_call_count() == 0


@pytest.mark.parametrize(
    "headers",
    [
        {},  # a native app: no browser headers at all (the seed's mobile app)
        {"sec-fetch-site": "same-origin"},
        {"sec-fetch-site": "none"},
        {"origin": "https://backend.example"},  # the redirect_uri's own origin
        {"origin": "https://spa.example.com", "sec-fetch-site": "same-site"},  # configured
        {"referer": "https://backend.example/settings"},  # an older browser on our own page
        {"referer": "https://spa.example.com/"},
    ],
)
def test_the_apps_own_posts_pass(oauth: AmoOAuth, headers: dict[str, str]) -> None:
    handlers = Handlers(
        oauth,
        connection_id=user_from_header,
        app_scheme="foryoure",
        allowed_origins=["https://spa.example.com"],
    )
    sent = {**AS_USER, **headers, "content-type": "application/json"}
    answer = sender(handlers)("POST", f"{PREFIX}/disconnect", headers=sent, body=b"{}")
    assert answer.status == 200


@pytest.mark.parametrize(
    ("configured", "sent"),
    [
        ("https://spa.example.com:443", "https://spa.example.com"),  # browsers drop :443
        ("HTTPS://SPA.Example.COM/", "https://spa.example.com"),
        ("http://127.0.0.1:80", "http://127.0.0.1"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("https://пример.рф", "https://xn--e1afmkfd.xn--p1ai"),  # browsers send punycode
        ("https://spa.example.com.", "https://spa.example.com"),
    ],
)
def test_an_allowed_origin_matches_what_browsers_send(
    oauth: AmoOAuth, configured: str, sent: str
) -> None:
    """An origin is compared as browsers serialize it (WHATWG URL §4.1): a configured
    ``:443`` or upper case refused the app's own page before."""
    handlers = Handlers(
        oauth, connection_id=user_from_header, app_scheme="foryoure", allowed_origins=[configured]
    )
    headers = {**AS_USER, "origin": sent, "sec-fetch-site": "cross-site"}
    headers["content-type"] = "application/json"
    answer = sender(handlers)("POST", f"{PREFIX}/disconnect", headers=headers, body=b"{}")
    assert answer.status == 200


def test_a_redirect_uri_with_its_default_port_still_admits_its_own_origin(
    fake: FakeAmoCRM,
) -> None:
    oauth = AmoOAuth(
        config_for(fake, redirect_uri="https://backend.example:443/api/amo-crm/callback"),
        store=MemoryStore(),
        http=httpx.Client(transport=fake.transport()),
    )
    handlers = Handlers(oauth, connection_id=user_from_header, app_scheme="foryoure")
    headers = {**AS_USER, "origin": "https://backend.example", "sec-fetch-site": "same-site"}
    headers["content-type"] = "application/json"
    answer = sender(handlers)("POST", f"{PREFIX}/disconnect", headers=headers, body=b"{}")
    assert answer.status == 200


@pytest.mark.parametrize(
    "origin",
    ["app.example", "//app.example", "https://app.example/page", "https://app.example?x",
     "ftp://app.example", "https://user@app.example", "https://app.example:port", ""],
)  # fmt: skip
def test_an_origin_that_is_no_origin_is_refused_at_construction(
    oauth: AmoOAuth, origin: str
) -> None:
    with pytest.raises(ValueError, match="allowed_origins takes origins"):
        Handlers(
            oauth, connection_id=user_from_header, app_scheme="foryoure", allowed_origins=[origin]
        )


# -- status, disconnect, the hook ------------------------------------------------------------


def test_status_of_an_unknown_connection(send: Send) -> None:
    answer = send("GET", f"{PREFIX}/status", headers=AS_USER)
    assert answer.json() == {
        "connected": False,
        "status": "disconnected",
        "account": None,
        "expires_at": None,
        "error": None,
        "version": 0,
        "host": None,
    }


def test_status_never_shows_a_token(send: Send, oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    seed_scenario(send, fake)
    answer = send("GET", f"{PREFIX}/status", headers=AS_USER)
    record = stored(oauth, USER)
    assert record is not None and record.tokens is not None
    assert record.tokens.access_token not in answer.text
    assert record.tokens.refresh_token not in answer.text
    body = answer.json()
    assert body["account"] == {"id": fake.account_id, "subdomain": "test", "name": "Test account"}
    assert body["expires_at"] == record.tokens.expires_at.isoformat()
    assert body["version"] == record.version
    assert body["host"] == fake.account_host


def test_disconnect(send: Send, fake: FakeAmoCRM) -> None:
    seed_scenario(send, fake)
    answer = send("POST", f"{PREFIX}/disconnect", headers=AS_USER)
    assert answer.status == 200
    assert (answer.json()["connected"], answer.json()["status"]) == (False, "disconnected")
    assert send("GET", f"{PREFIX}/status", headers=AS_USER).json()["status"] == "disconnected"


def test_disconnect_hook(send: Send, fake: FakeAmoCRM) -> None:
    seed_scenario(send, fake)
    hook = fake.uninstall()
    forged = {**hook, "signature": "0" * 64}
    answer = send("GET", f"{PREFIX}/disconnect-hook", query=urlencode(forged))
    assert (answer.status, answer.json()) == (400, {"error": "bad_signature"})
    answer = send("GET", f"{PREFIX}/disconnect-hook", query=urlencode(hook))
    done = {"disconnected": 1, "checked": True, "reason": None}
    assert (answer.status, answer.json()) == (200, done)
    status = send("GET", f"{PREFIX}/status", headers=AS_USER).json()
    assert (status["status"], status["error"]) == ("error", "disconnected_by_provider")
    answer = send("GET", f"{PREFIX}/disconnect-hook", query="account_id=x")
    assert (answer.status, answer.json()) == (400, {"error": "malformed"})


# -- routing and limits ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/api", f"{PREFIX}", f"{PREFIX}/nope", "/other/status"])
def test_unknown_paths_are_404(send: Send, path: str) -> None:
    answer = send("GET", path)
    assert (answer.status, answer.json()) == (404, {"error": "not_found"})


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/connect", "GET"),
        ("POST", "/callback", "GET"),
        ("HEAD", "/callback", "GET"),
        ("GET", "/exchange-code", "POST"),
        ("DELETE", "/status", "GET"),
        ("GET", "/disconnect", "POST"),
        ("OPTIONS", "/disconnect-hook", "GET"),
    ],
)
def test_wrong_methods_are_405(send: Send, method: str, path: str, allow: str) -> None:
    answer = send(method, PREFIX + path)
    assert (answer.status, answer.json()) == (405, {"error": "method_not_allowed"})
    assert answer.headers["allow"] == allow


def test_a_trailing_slash_is_tolerated(send: Send) -> None:
    assert send("GET", f"{PREFIX}/status/", headers=AS_USER).status == 200


def test_huge_queries_are_414(send: Send) -> None:
    long = send("GET", f"{PREFIX}/status", query="a=" + "x" * 9000, headers=AS_USER)
    assert (long.status, long.json()) == (414, {"error": "query_too_large"})
    many = send("GET", f"{PREFIX}/status", query="&".join(f"k{i}=v" for i in range(65)))
    assert many.status == 414
    page = send("GET", f"{PREFIX}/callback", query="code=" + "x" * 9000)
    assert (page.status, deep_link(page)[1]) == (414, {"error": "query_too_large"})


def test_a_configurable_prefix(oauth: AmoOAuth) -> None:
    handlers = Handlers(oauth, connection_id=user_from_header, app_scheme="app", prefix="/amo/")
    assert handlers.handle(Request("GET", "/amo/status", headers=AS_USER)).status == 200
    assert handlers.handle(Request("GET", f"{PREFIX}/status", headers=AS_USER)).status == 404
    root = Handlers(oauth, connection_id=user_from_header, app_scheme="app", prefix="")
    assert root.handle(Request("GET", "/status", headers=AS_USER)).status == 200


@pytest.mark.parametrize("prefix", ["api", "/api?x=1"])
def test_a_bad_prefix_is_refused(oauth: AmoOAuth, prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        Handlers(oauth, connection_id=user_from_header, app_scheme="app", prefix=prefix)


class FlakyStore(MemoryStore):
    broken = False

    def load(self, connection_id: str) -> Loaded:
        if self.broken:
            raise StoreError("the database is down")
        return super().load(connection_id)


def test_a_store_outage_is_503(make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM) -> None:
    store = FlakyStore()
    oauth = make_oauth(store=store)
    send = sender(Handlers(oauth, connection_id=user_from_header, app_scheme="foryoure"))
    state = connect_state(send)
    store.broken = True
    answer = send("GET", f"{PREFIX}/status", headers=AS_USER)
    assert (answer.status, answer.json()) == (503, {"error": "store_unavailable"})
    answer = post_code(send, {"code": "abc", "referer": fake.account_host})
    assert (answer.status, answer.json()) == (503, {"error": "store_unavailable"})
    page = send("GET", f"{PREFIX}/callback", query=callback_query(fake.authorize(state)))
    assert (page.status, deep_link(page)[1]) == (503, {"error": "store_unavailable"})


# -- construction and the small types ------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "says"),
    [
        ("", "must not be empty"),
        ("1app", "must be a URL scheme (RFC 3986"),
        ("my app", "must be a URL scheme (RFC 3986"),
        ("a_b", "must be a URL scheme (RFC 3986"),
        ("é", "must be a URL scheme (RFC 3986"),
        ("a" * 65, "at most 64 characters"),
        ("foo://", "the scheme alone, without ':' or '/'"),
        ("foo:", "the scheme alone"),
        ("http", "not http: a deep link must open the app, not a web page"),
        ("https", "not https: a deep link must open the app, not a web page"),
        ("HTTPS", "not https: a deep link must open the app"),
        ("Http", "not http: a deep link must open the app"),
        ("javascript", "not javascript: a browser handles javascript links itself"),
        ("JavaScript", "a browser handles javascript links itself"),
        ("data", "a browser handles data links itself"),
        (None, "must be a string such as 'myapp', not NoneType"),
    ],
)
def test_bad_app_schemes_are_refused(oauth: AmoOAuth, scheme: str, says: str) -> None:
    """Issue 16: ``http``/``https`` were accepted; every refusal now names its problem."""
    with pytest.raises(ValueError, match=r"^app_scheme ") as refused:
        Handlers(oauth, connection_id=user_from_header, app_scheme=scheme)
    assert says in str(refused.value)


def test_app_schemes_follow_rfc_3986(oauth: AmoOAuth) -> None:
    handlers = Handlers(oauth, connection_id=user_from_header, app_scheme="My.App+v2-x")
    assert handlers.app_scheme == "my.app+v2-x"


def test_an_unknown_default_language_is_refused(oauth: AmoOAuth) -> None:
    with pytest.raises(ValueError, match="default_language"):
        Handlers(oauth, connection_id=user_from_header, app_scheme="a", default_language="xx")


def test_request_hides_what_it_carries() -> None:
    request = Request(
        "post", "/p", "code=SECRET", {"Cookie": "session=SECRET"}, b"SECRET", native=object()
    )
    assert "SECRET" not in repr(request)
    assert request.method == "POST"
    assert request.param("code") == "SECRET"
    assert request.cookie("session") == request.header("COOKIE").partition("=")[2]
    assert request.cookie("missing") is None
    assert "SECRET" not in repr(Response.json(200, {"token": "SECRET"}))


def test_request_decodes_any_query_without_raising() -> None:
    assert Request("GET", "/", b"a=%ff&b=%C3%A9&c").query == (
        ("a", "\ufffd"),
        ("b", "é"),
        ("c", ""),
    )
    assert Request("GET", "/", "x=\udcff").query == (("x", "\ufffd\ufffd\ufffd"),)
    assert Request("GET", "/", {"a": ["1", "2"], "b": "3"}).query == (
        ("a", "1"),
        ("a", "2"),
        ("b", "3"),
    )


def test_read_body_stops_after_the_limit() -> None:
    async def chunks() -> Any:
        for _ in range(100):
            yield b"x" * 10

    assert asyncio.run(web.read_body(chunks(), 25)) == b"x" * 26
    assert asyncio.run(web.read_body(chunks(), 5000)) == b"x" * 1000


def test_routes_table_and_public_names() -> None:
    assert [(r.method, r.path) for r in web.ROUTES] == [
        ("GET", "/connect"),
        ("GET", "/callback"),
        ("POST", "/exchange-code"),
        ("GET", "/status"),
        ("POST", "/disconnect"),
        ("GET", "/disconnect-hook"),
    ]
    # ruff's RUF022 order (isort-style): CONSTANTS, then Classes, then functions.
    order = sorted(web.__all__, key=lambda name: (not name.isupper(), name[0].islower(), name))
    assert web.__all__ == order
    assert all(hasattr(web, name) for name in web.__all__)


# -- no input reaches a 5xx, and nothing secret leaks --------------------------------------------

SECRET_CODE = "c0de-that-must-never-be-echoed"
KEYS = ["code", "state", "referer", "error", "client_id", "lang", "format", "from_widget"]
HOOK_KEYS = ["account_id", "client_uuid", "signature"]


@attrs.frozen
class Known:
    """Valid pieces for the fuzzer to mix in, so it reaches deep into every route."""

    states: list[str]
    codes: list[str]
    callbacks: list[str]  # whole, valid callback queries
    hook: str  # a whole, validly signed disconnect hook query
    values: list[str]


@st.composite
def requests(draw: st.DrawFn, known: Known) -> Request:
    """Mostly well-aimed requests (a real route, its method, a user) with arbitrary parts."""

    def mostly(aimed: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> Any:
        return draw(aimed if draw(st.integers(0, 9)) < 8 else wild)

    route = draw(st.sampled_from(web.ROUTES))
    path = mostly(st.sampled_from([PREFIX + route.path, f"{PREFIX + route.path}/"]), st.text())
    method = mostly(st.just(route.method), st.sampled_from(["PUT", "HEAD"]) | st.text(max_size=6))
    value = st.sampled_from(known.values + known.states + known.codes) | st.text(max_size=40)
    pairs = st.lists(st.tuples(st.sampled_from(KEYS + HOOK_KEYS) | st.text(max_size=8), value))
    query = mostly(
        st.sampled_from([*known.callbacks, known.hook]) | pairs.map(urlencode),
        st.binary(max_size=200) | st.text(max_size=200),
    )
    user = mostly(st.just(USER), st.sampled_from(["", "x" * 201]) | st.text(max_size=20))
    other = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=60)
    header_values = st.sampled_from(["application/json", "application/x-www-form-urlencoded"])
    headers = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["accept", "accept-language", "content-type"])
                | st.text(max_size=9),
                header_values | other,
            ),
            max_size=4,
        )
    )
    fields = st.fixed_dictionaries(
        {"code": value | st.integers()}, optional={"state": value, "referer": value}
    )
    as_json = fields.map(lambda f: ("application/json", json.dumps(f).encode()))
    as_form = fields.map(lambda f: ("application/x-www-form-urlencoded", urlencode(f).encode()))
    content_type, body = mostly(as_json | as_form, st.tuples(header_values, st.binary()))
    headers = [("x-user", user), ("content-type", content_type), *headers]
    return Request(method, path, query, headers, body)


def test_no_input_reaches_a_5xx_or_leaks_a_secret(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make_oauth(settle_timeout=0.01)
    handlers = Handlers(oauth, connection_id=user_from_header, app_scheme="foryoure")
    states = [oauth.begin(USER).state for _ in range(4)]
    callbacks = [callback_query(fake.authorize(state)) for state in states[:2]]
    codes = [SECRET_CODE, fake.issue_code(), *(dict(parse_qsl(q))["code"] for q in callbacks)]
    hook = {"client_uuid": fake.client_id, "account_id": str(fake.account_id)}
    hook["signature"] = hook_signature(fake.client_id, fake.client_secret, fake.account_id)
    values = [fake.account_host, fake.client_id, "json", "ru", "1", "access_denied"]
    known = Known(states, codes, callbacks, urlencode(hook), values)
    secrets = [*codes, fake.client_secret, STATE_SECRET]
    declared = {(route.method, PREFIX + route.path): route for route in web.ROUTES}

    @settings(max_examples=examples(400))
    @given(request=requests(known))
    def check(request: Request) -> None:
        response = handlers.handle(request)
        event(f"{request.path} {response.status}")
        assert 200 <= response.status < 500
        shown = response.text + "".join(value for _, value in response.headers)
        assert not any(secret in shown for secret in secrets)
        if response.status >= 400 and response.header("content-type") == "application/json":
            assert isinstance(json.loads(response.body)["error"], str)
        route = declared.get((request.method, request.path.rstrip("/")))
        if route is not None:  # what its OpenAPI publishes (issue 20 #8)
            assert response.status in {status for status, _ in route.responses}, route.name

    check()


#: Requests the adapters must answer with the handlers' JSON, not the framework's.
WRONG_ROUTES = [
    ("POST", "/status", 405, "GET"),
    ("GET", "/exchange-code", 405, "POST"),
    ("HEAD", "/callback", 405, "GET"),
    ("OPTIONS", "/disconnect", 405, "POST"),
    ("GET", "/nope", 404, None),
    ("DELETE", "/a/b/c", 404, None),
]


def check_wrong_route(send: Send, method: str, path: str, status: int, allow: str | None) -> None:
    answer = send(method, PREFIX + path)
    assert answer.status == status
    if method != "HEAD":
        error = "method_not_allowed" if status == 405 else "not_found"
        assert answer.json() == {"error": error}
    assert answer.headers.get("allow") == allow


#: Every route with every method it does not answer (issue 16: a wrong method answers 405 on
#: every route and adapter, whatever the prefix).
WRONG_METHODS = [
    (route.path, method)
    for route in web.ROUTES
    for method in HTTP_METHODS
    if method != route.method
]
#: The prefixes the adapters are checked under: the default, and the root (no catch-all).
PREFIXES = [PREFIX, ""]


def wrong_methods_answered_otherwise(send: Send, prefix: str) -> list[tuple[str, str, object]]:
    """Each (path, method) not answered with the handlers' 405: JSON (but for HEAD, which has
    no body) and ``Allow`` naming the route's one method."""
    allowed = {route.path: route.method for route in web.ROUTES}
    otherwise = []
    for path, method in WRONG_METHODS:
        answer = send(method, prefix + path, headers=AS_USER)
        body = None if method == "HEAD" else answer.json()
        got = (answer.status, answer.headers.get("allow"), body)
        wanted_body = None if method == "HEAD" else {"error": "method_not_allowed"}
        if got != (405, allowed[path], wanted_body):
            otherwise.append((path, method, got))
    return otherwise


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_wrong_method_is_405_on_every_route(oauth: AmoOAuth, prefix: str) -> None:
    handlers = Handlers(oauth, connection_id=user_from_header, app_scheme="app", prefix=prefix)
    assert len(WRONG_METHODS) == 6 * 7
    assert wrong_methods_answered_otherwise(sender(handlers), prefix) == []
    assert handlers.handle(Request("PROPFIND", f"{prefix}/status")).status == 405


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_wrong_method_is_405_on_every_route_async(
    async_oauth: AsyncAmoOAuth, prefix: str
) -> None:
    handlers = AsyncHandlers(
        async_oauth, connection_id=user_from_header, app_scheme="app", prefix=prefix
    )
    assert wrong_methods_answered_otherwise(async_sender(handlers), prefix) == []


def test_a_store_outage_is_logged_with_its_cause(
    fake: FakeAmoCRM, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore()
    oauth = AmoOAuth(config_for(fake), store=store, http=httpx.Client(transport=fake.transport()))
    handlers = Handlers(oauth, connection_id=user_from_header, app_scheme="myapp")
    store.close()  # every later call raises StoreError
    with caplog.at_level(logging.WARNING, logger="amo_oauth.web"):
        answer = handlers.handle(Request("GET", f"{PREFIX}/status", headers=AS_USER))
    assert (answer.status, json.loads(answer.body)) == (503, {"error": "store_unavailable"})
    (record,) = [r for r in caplog.records if r.name == "amo_oauth.web"]
    assert "GET /status: 503 store_unavailable: " in record.getMessage()
    assert "closed" in record.getMessage()


def test_an_adapter_refuses_the_other_kind_of_service_when_built(fake: FakeAmoCRM) -> None:
    from amo_oauth.fastapi import router
    from amo_oauth.flask import blueprint

    blocking = AmoOAuth(config_for(fake), store=MemoryStore())
    awaiting = AsyncAmoOAuth(config_for(fake), store=MemoryStore())
    with pytest.raises(TypeError, match="serve an AsyncAmoOAuth, not AmoOAuth"):
        router(blocking, connection_id=user_from_header, app_scheme="myapp")
    with pytest.raises(TypeError, match="serve a blocking AmoOAuth, not AsyncAmoOAuth"):
        blueprint(awaiting, connection_id=user_from_header, app_scheme="myapp")


def test_try_again_later_is_503_with_its_reason_and_retry_after(
    make_oauth: Callable[..., AmoOAuth], monkeypatch: pytest.MonkeyPatch
) -> None:
    oauth = make_oauth()

    def later(connection_id: str) -> Connection:
        raise TryAgainLater("kept_pair_pending", "a pair may land", retry_after=1.2)

    monkeypatch.setattr(oauth, "status", later)
    send = sender(Handlers(oauth, connection_id=user_from_header, app_scheme="foryoure"))
    answer = send("GET", f"{PREFIX}/status", headers=AS_USER)
    assert (answer.status, answer.json()) == (503, {"error": "kept_pair_pending"})
    assert answer.headers.get("retry-after") == "2"


def test_two_tabs_of_one_browser_then_the_apps_post_of_the_second_code(
    send: Send, fake: FakeAmoCRM
) -> None:
    """Two consents begun in one browser; "Allow" in the first connects, "Allow" in the second
    is an older consent than the connection: its page says connected and deep-links its code.
    The app then posts that code. It answered 400 ``new_code_refused`` (before that 403
    ``wrong_browser``), so the app never showed "Connected": the seed's bug. Nothing is sent."""
    first, second = connect_state(send), connect_state(send)
    done = send("GET", f"{PREFIX}/callback", query=callback_query(fake.authorize(first)))
    assert done.status == 200
    # The app's session comes along (the first callback cleared the binding cookie).
    redirect = fake.authorize(second)
    page = send("GET", f"{PREFIX}/callback", query=callback_query(redirect), headers=AS_USER)
    assert page.status == 200 and "success=true" in page.text
    fields = query_of(redirect)
    answer = post_code(send, {"code": fields["code"], "state": fields["state"]})
    assert answer.status == 200
    body = answer.json()
    assert (body["outcome"], body["connected"]) == ("already_connected", True)
    assert fake.token_call_count() == 1


def test_another_users_older_consent_hears_nothing(send: Send, fake: FakeAmoCRM) -> None:
    """Only the connection's own user hears its status: the same post as another user is
    refused (its state names someone else)."""
    state = connect_state(send)
    send("GET", f"{PREFIX}/callback", query=callback_query(fake.authorize(connect_state(send))))
    fields = query_of(fake.authorize(state))
    answer = post_code(send, {"code": fields["code"], "state": fields["state"]}, user="mallory")
    assert (answer.status, answer.json()) == (400, {"error": "bad_state"})
