"""Every consent is bound to the browser that started it (issue 9 #1, RFC 9700 §4.7.1), and the
state names nobody (issue 9 #4). Every binding travels as a browser (or the app) would carry it:
a cookie jar, a ticket URL, or ``binding=`` on the service."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
import pytest

from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    CallbackRejected,
    ConnectionStatus,
    MemoryStore,
    Outcome,
    web,
)
from amo_oauth._state_token import MAX_CLOCK_SKEW, read_state
from amo_oauth.stores import Loaded
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.web import Handlers, Request, Response
from test_web import PREFIX, CookieJar, deep_link, parse_page, sender

from helpers import config_for, query_of

MALLORY, VICTIM = "mallory", "victim-admin"


def as_user(user: str) -> dict[str, str]:
    return {"x-user": user}


def user_from_header(request: Request) -> str | None:
    return request.header("x-user")


@pytest.fixture
def handlers(oauth: AmoOAuth) -> Handlers:
    return Handlers(oauth, connection_id=user_from_header, app_scheme="foryoure")


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


def rejected(call: object) -> str:
    assert callable(call)
    with pytest.raises(CallbackRejected) as caught:
        call()
    return caught.value.reason


def mallorys_consent_link(handlers: Handlers) -> str:
    """Mallory gets her consent link the way she still can: her ticket, /connect, the 302's
    Location; the binding cookie that came with it is thrown away."""
    her_app = sender(handlers)
    asked = her_app("GET", f"{PREFIX}/connect", headers={**as_user(MALLORY), "accept": "json"})
    asked = her_app("GET", f"{PREFIX}/connect", query="format=json", headers=as_user(MALLORY))
    ticket_url = urlsplit(asked.json()["url"])
    opened = sender(handlers)("GET", ticket_url.path, query=ticket_url.query)
    assert opened.status == 302 and "set-cookie" in opened.headers
    return opened.headers["location"]


# -- the regression: a forwarded consent link ------------------------------------------------


def test_a_forwarded_consent_link_hands_nothing_to_its_sender(
    handlers: Handlers, oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    link = mallorys_consent_link(handlers)
    # The victim, with no session and no cookie, presses "Allow" on amoCRM's page.
    redirect = fake.authorize(query_of(link)["state"])
    victims_browser = sender(handlers)
    page = victims_browser("GET", f"{PREFIX}/callback", query=urlsplit(redirect).query)
    assert page.status == 403
    assert parse_page(page.text).h1 == web.PAGE_TEXTS["en"].title(web.PageKind.WRONG_BROWSER)
    assert "another browser or app" in page.text
    assert deep_link(page)[1] == {"error": "wrong_browser"}
    assert fake.token_call_count() == 0
    mallory = oauth.status(MALLORY)
    assert (mallory.status, mallory.version, mallory.account) == (
        ConnectionStatus.DISCONNECTED,
        0,
        None,
    )
    # The service refuses the same redirect with no binding: fail closed, writing nothing.
    assert rejected(lambda: oauth.handle_callback(query_of(redirect))) == "wrong_browser"
    assert fake.token_call_count() == 0
    assert oauth.status(MALLORY).version == 0
    # Nothing was consumed: in the right browser the same consent would still go through.
    begun = oauth.begin(MALLORY)
    assert oauth.handle_callback(query_of(fake.authorize(begun.state)), binding=begun.binding)


def test_a_forwarded_link_is_refused_by_the_async_service(
    async_oauth: AsyncAmoOAuth, fake: FakeAmoCRM
) -> None:
    begun = asyncio.run(async_oauth.begin(MALLORY))
    redirect = query_of(fake.authorize(begun.state))
    reason = rejected(lambda: asyncio.run(async_oauth.handle_callback(redirect)))
    assert reason == "wrong_browser"
    assert fake.token_call_count() == 0
    result = asyncio.run(async_oauth.handle_callback(redirect, binding=begun.binding))
    assert result.outcome is Outcome.CONNECTED


def test_another_browsers_binding_is_refused(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    first, second = oauth.begin(MALLORY), oauth.begin(MALLORY)  # two browsers, two bindings
    assert first.binding != second.binding
    redirect = query_of(fake.authorize(first.state))
    reason = rejected(lambda: oauth.handle_callback(redirect, binding=second.binding))
    assert reason == "wrong_browser"
    assert fake.token_call_count() == 0
    assert oauth.handle_callback(redirect, binding=first.binding).outcome is Outcome.CONNECTED


def test_a_binding_made_for_another_connection_is_refused(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    victims = oauth.begin(VICTIM)
    redirect = query_of(fake.authorize(oauth.begin(MALLORY).state))
    assert rejected(lambda: oauth.handle_callback(redirect, binding=victims.binding)) == (
        "wrong_browser"
    )
    assert fake.token_call_count() == 0
    assert oauth.status(VICTIM).version == 0


@pytest.mark.parametrize("garbage", ["", "x", "a.b.c", "é" * 40, "A" * 43 + ".!!!", "A" * 5000])
def test_a_malformed_binding_counts_as_none(oauth: AmoOAuth, fake: FakeAmoCRM, garbage) -> None:
    begun = oauth.begin(MALLORY, binding=garbage)  # not reused: a fresh binding instead
    assert begun.binding and begun.binding != garbage
    redirect = query_of(fake.authorize(begun.state))
    assert rejected(lambda: oauth.handle_callback(redirect, binding=garbage)) == "wrong_browser"


def test_a_signed_in_user_other_than_the_states_is_refused(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    begun = oauth.begin(MALLORY)
    redirect = query_of(fake.authorize(begun.state))
    reason = rejected(
        lambda: oauth.handle_callback(redirect, connection_id=VICTIM, binding=begun.binding)
    )
    assert reason == "bad_state"
    assert fake.token_call_count() == 0


def test_an_opted_out_state_needs_the_signed_in_user(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    begun = oauth.begin(MALLORY, browser_binding=False)
    assert begun.binding is None
    redirect = query_of(fake.authorize(begun.state))
    assert rejected(lambda: oauth.handle_callback(redirect)) == "wrong_browser"
    # A binding cannot stand in for the session the state was bound to.
    other = oauth.begin(MALLORY).binding
    assert rejected(lambda: oauth.handle_callback(redirect, binding=other)) == "wrong_browser"
    assert fake.token_call_count() == 0
    result = oauth.handle_callback(redirect, connection_id=MALLORY)
    assert result.outcome is Outcome.CONNECTED


def test_a_denial_from_another_browser_changes_nothing(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    begun = oauth.begin(MALLORY)
    denial = query_of(fake.deny(begun.state))
    assert rejected(lambda: oauth.handle_callback(denial)) == "wrong_browser"
    assert oauth.status(MALLORY).version == 0
    assert oauth.handle_callback(denial, binding=begun.binding).outcome is Outcome.DENIED


def test_known_codes_are_answered_without_a_binding(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    begun = oauth.begin(MALLORY)
    redirect = query_of(fake.authorize(begun.state))
    assert oauth.handle_callback(redirect, binding=begun.binding).outcome is Outcome.CONNECTED
    reload = oauth.handle_callback(redirect)  # the ledger names the connection; "h" agrees
    assert (reload.outcome, reload.duplicate) == (Outcome.ALREADY_CONNECTED, True)
    replay = oauth.exchange_code(MALLORY, redirect["code"], state=redirect["state"])
    assert (replay.outcome, replay.duplicate) == (Outcome.ALREADY_CONNECTED, True)
    assert fake.token_call_count() == 1


def test_a_known_code_under_another_connections_state_is_refused(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    begun = oauth.begin(MALLORY)
    redirect = query_of(fake.authorize(begun.state))
    oauth.handle_callback(redirect, binding=begun.binding)
    victims_state = oauth.begin(VICTIM).state
    spliced = {**redirect, "state": victims_state}
    assert rejected(lambda: oauth.handle_callback(spliced)) == "bad_state"


def test_exchange_code_with_a_bound_state_needs_its_binding(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    begun = oauth.begin(MALLORY)
    code, host = fake.issue_code(), fake.account_host
    reason = rejected(lambda: oauth.exchange_code(MALLORY, code, referer=host, state=begun.state))
    assert reason == "wrong_browser"
    assert fake.token_call_count() == 0
    done = oauth.exchange_code(
        MALLORY, code, referer=host, state=begun.state, binding=begun.binding
    )
    assert done.outcome is Outcome.CONNECTED
    unbound = oauth.begin(VICTIM, browser_binding=False)  # the session is the binding
    other = oauth.exchange_code(VICTIM, fake.issue_code(), referer=host, state=unbound.state)
    assert other.outcome is Outcome.CONNECTED


# -- the state names nobody, and needs no store --------------------------------------------


@pytest.mark.parametrize("user", ["user-42", "alice.smith@corp.example", "Аліса"])
def test_the_state_decodes_to_no_connection_id(oauth: AmoOAuth, user: str) -> None:
    begun = oauth.begin(user)
    payload = begun.state.split(".")[1]
    decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    assert user not in decoded and user not in begun.url
    # "k": the integration's namespace, keyed: not readable either.
    assert set(json.loads(decoded)) == {"h", "b", "n", "i", "e", "v", "k"}
    assert oauth.config.client_id not in decoded
    assert begun.binding is not None
    secret = begun.binding.split(".")[0]
    assert secret not in begun.url and secret not in decoded
    assert begun.binding not in repr(begun)


class ReadOnly:
    """A store begin() may read (one ``load``: the record's version, the store's clock) and
    must not otherwise touch."""

    def __init__(self) -> None:
        self.inner = MemoryStore()

    def load(self, key: str) -> Loaded:
        return self.inner.load(key)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"begin() touched the store: {name}")


def test_the_state_verifies_without_a_store(fake: FakeAmoCRM, clock: FakeClock) -> None:
    config = config_for(fake)
    with AmoOAuth(config, store=MemoryStore(), http=httpx.Client(), clock=clock) as oauth:
        oauth._store = ReadOnly()  # type: ignore[assignment]  # begin reads once, writes nothing
        begun = oauth.begin(MALLORY)
        claims = read_state(config.accepted_state_secrets, begun.state)
        oauth._store = MemoryStore()  # type: ignore[assignment]
    assert claims.names(MALLORY)
    assert not claims.names(VICTIM)
    assert claims.bound and claims.expires_at == begun.expires_at


# -- mobile tickets --------------------------------------------------------------------------


def test_a_ticket_is_single_use(oauth: AmoOAuth) -> None:
    ticket = oauth.issue_ticket(MALLORY)
    assert MALLORY not in repr(ticket.split(".")[0])
    assert oauth.redeem_ticket(ticket) == MALLORY
    assert rejected(lambda: oauth.redeem_ticket(ticket)) == "used_ticket"


def test_a_ticket_of_another_user_is_refused_where_one_is_signed_in(oauth: AmoOAuth) -> None:
    ticket = oauth.issue_ticket(MALLORY)
    refused = rejected(lambda: oauth.redeem_ticket(ticket, connection_id=VICTIM))
    assert refused == "wrong_browser"
    # Left unused: the refusal took nothing, and the signed-in owner redeems it.
    assert oauth.redeem_ticket(ticket, connection_id=MALLORY) == MALLORY
    assert rejected(lambda: oauth.redeem_ticket(ticket)) == "used_ticket"


def test_a_ticket_expires(oauth: AmoOAuth, clock: FakeClock) -> None:
    ticket = oauth.issue_ticket(MALLORY)
    clock.advance(oauth.config.ticket_ttl + MAX_CLOCK_SKEW)  # its issuer may run behind
    assert rejected(lambda: oauth.redeem_ticket(ticket)) == "expired_ticket"


def test_a_tampered_or_foreign_ticket_is_refused(oauth: AmoOAuth) -> None:
    ticket = oauth.issue_ticket(MALLORY)
    head, payload, mac = ticket.split(".")
    tampered = f"{head}.{payload[:-2]}{'AB' if payload[-2:] != 'AB' else 'CD'}.{mac}"
    for bad in (tampered, ticket + "x", oauth.begin(MALLORY).state, "", "t1..", "é"):
        assert rejected(lambda bad=bad: oauth.redeem_ticket(bad)) == "bad_ticket"


def test_tickets_on_the_async_service(async_oauth: AsyncAmoOAuth) -> None:
    ticket = asyncio.run(async_oauth.issue_ticket(MALLORY))
    refused = rejected(lambda: asyncio.run(async_oauth.redeem_ticket(ticket, connection_id=VICTIM)))
    assert refused == "wrong_browser"
    assert asyncio.run(async_oauth.redeem_ticket(ticket)) == MALLORY
    assert rejected(lambda: asyncio.run(async_oauth.redeem_ticket(ticket))) == "used_ticket"


def test_the_ticket_routes(handlers: Handlers, clock: FakeClock) -> None:
    app = sender(handlers)
    asked = app(
        "GET", f"{PREFIX}/connect", headers={**as_user(MALLORY), "accept": "application/json"}
    )
    assert asked.status == 200
    url = asked.json()["url"]
    assert url.startswith(f"https://backend.example{PREFIX}/connect?ticket=t1.")
    assert asked.json()["expires_at"]
    path_query = urlsplit(url)
    first = sender(handlers)("GET", path_query.path, query=path_query.query)
    assert first.status == 302
    again = sender(handlers)("GET", path_query.path, query=path_query.query)
    # The in-app browser shows a page whose button takes the user back to the app, not JSON.
    assert again.status == 400
    assert deep_link(again)[1] == {"error": "used_ticket"}
    late = urlsplit(
        app("GET", f"{PREFIX}/connect", query="format=json", headers=as_user(MALLORY)).json()["url"]
    )
    clock.advance(timedelta(seconds=61) + MAX_CLOCK_SKEW)
    expired = sender(handlers)("GET", late.path, query=late.query)
    assert (expired.status, deep_link(expired)[1]) == (400, {"error": "expired_ticket"})
    bad = sender(handlers)("GET", f"{PREFIX}/connect", query="ticket=t1.forged.mac")
    assert (bad.status, deep_link(bad)[1]) == (400, {"error": "bad_ticket"})


# -- the cookie ------------------------------------------------------------------------------


def cookie_attributes(header: str) -> tuple[str, str, set[str]]:
    pair, *attributes = header.split("; ")
    name, _, value = pair.partition("=")
    return name, value, set(attributes)


@pytest.mark.parametrize(
    ("redirect_uri", "name", "secure"),
    [
        ("https://backend.example/api/amo-crm/callback", "__Host-amo_oauth_binding", True),
        ("http://127.0.0.1:8000/api/amo-crm/callback", "amo_oauth_binding", False),
        ("http://localhost/api/amo-crm/callback", "amo_oauth_binding", False),
    ],
)
def test_the_cookie_follows_the_configured_redirect_uri(
    make_oauth, redirect_uri: str, name: str, secure: bool
) -> None:
    handlers = Handlers(
        make_oauth(redirect_uri=redirect_uri), connection_id=user_from_header, app_scheme="app"
    )
    # The request's scheme (a TLS proxy's X-Forwarded-Proto) never decides.
    headers = {**as_user(MALLORY), "x-forwarded-proto": "http" if secure else "https"}
    answer = handlers.handle(Request("GET", f"{PREFIX}/connect", headers=headers))
    (cookie,) = [value for key, value in answer.headers if key == "set-cookie"]
    got_name, value, attributes = cookie_attributes(cookie)
    assert got_name == name and value
    expected = {"Path=/", "Max-Age=1800", "HttpOnly", "SameSite=Lax"}
    assert attributes == (expected | {"Secure"} if secure else expected)


@pytest.mark.parametrize(
    ("redirect_uri", "connect"),
    [
        # Mounted under more than the handlers' prefix (include_router, url_prefix, a proxy):
        # the redirect URI is /callback as the world reaches it, so /connect is its sibling.
        (
            "https://backend.example/v2/api/amo-crm/callback",
            "https://backend.example/v2/api/amo-crm/connect",
        ),
        (
            "https://backend.example/api/amo-crm/callback",
            "https://backend.example/api/amo-crm/connect",
        ),
        ("https://backend.example/oauth/amo", f"https://backend.example{PREFIX}/connect"),
    ],
)
def test_the_ticket_url_is_the_public_sibling_of_the_redirect_uri(
    make_oauth, redirect_uri: str, connect: str
) -> None:
    handlers = Handlers(
        make_oauth(redirect_uri=redirect_uri), connection_id=user_from_header, app_scheme="app"
    )
    headers = {**as_user(MALLORY), "accept": "application/json"}
    answer = handlers.handle(Request("GET", f"{PREFIX}/connect", headers=headers))
    url = urlsplit(json.loads(answer.body)["url"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == connect
    assert url.query.startswith("ticket=t1.")


def test_a_second_connect_in_the_same_browser_keeps_its_binding(handlers: Handlers) -> None:
    jar = CookieJar()
    browser = sender(handlers, jar)
    browser("GET", f"{PREFIX}/connect", headers=as_user(MALLORY))
    first = dict(jar.cookies)
    browser("GET", f"{PREFIX}/connect", headers=as_user(MALLORY))
    assert jar.cookies == first
    browser("GET", f"{PREFIX}/connect", headers=as_user(VICTIM))  # another user: a new one
    assert jar.cookies != first


def test_the_cookie_is_cleared_once_connected_and_a_reload_shows_the_same_page(
    handlers: Handlers, oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    jar = CookieJar()
    browser = sender(handlers, jar)
    location = browser("GET", f"{PREFIX}/connect", headers=as_user(MALLORY)).headers["location"]
    redirect = urlsplit(fake.authorize(query_of(location)["state"])).query
    page = browser("GET", f"{PREFIX}/callback", query=redirect)  # no session: the cookie is it
    assert page.status == 200 and deep_link(page)[1]["success"] == "true"
    assert jar.cookies == {}
    cleared = cookie_attributes(page.headers["set-cookie"])
    assert cleared[1] == "" and "Max-Age=0" in cleared[2]
    reload = sender(handlers)("GET", f"{PREFIX}/callback", query=redirect)  # no cookie at all
    assert (reload.status, deep_link(reload)) == (200, deep_link(page))
    # The seed's replay: the app posts the code, authenticated, with no cookie: never 403.
    body = json.dumps({"code": query_of("?" + redirect)["code"]}).encode()
    headers = {**as_user(MALLORY), "content-type": "application/json"}
    replay = sender(handlers)("POST", f"{PREFIX}/exchange-code", headers=headers, body=body)
    assert replay.status == 200
    assert (replay.json()["outcome"], replay.json()["duplicate"]) == ("already_connected", True)
    assert fake.token_call_count() == 1
    assert oauth.status(MALLORY).status is ConnectionStatus.CONNECTED


def test_the_callback_needs_no_session_and_survives_an_apps_refusal(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    def refuse(request: Request) -> str | None:
        raise PermissionError("not signed in")

    handlers = Handlers(oauth, connection_id=refuse, app_scheme="foryoure")
    begun = oauth.begin(MALLORY)
    redirect = urlsplit(fake.authorize(begun.state)).query
    cookie = {"cookie": f"__Host-amo_oauth_binding={begun.binding}"}
    page = handlers.handle(Request("GET", f"{PREFIX}/callback", redirect, cookie))
    assert page.status == 200
    assert oauth.status(MALLORY).is_connected


# -- repeated headers survive every adapter ------------------------------------------------

TWO_COOKIES = Response(
    200, [("content-type", "text/plain"), ("set-cookie", "a=1"), ("set-cookie", "b=2")], b"ok"
)


def test_fastapi_keeps_repeated_headers(
    async_oauth: AsyncAmoOAuth, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from amo_oauth.fastapi import router

    async def handle(self: object, request: Request) -> Response:
        return TWO_COOKIES

    monkeypatch.setattr(web.AsyncHandlers, "handle", handle)
    app = FastAPI()
    app.include_router(router(async_oauth, connection_id=user_from_header, app_scheme="app"))
    with TestClient(app) as client:
        answer = client.get(f"{PREFIX}/status")
    assert answer.headers.get_list("set-cookie") == ["a=1", "b=2"]


def test_flask_keeps_repeated_headers(oauth: AmoOAuth, monkeypatch: pytest.MonkeyPatch) -> None:
    import flask

    from amo_oauth.flask import blueprint

    monkeypatch.setattr(web.Handlers, "handle", lambda self, request: TWO_COOKIES)
    app = flask.Flask(__name__)
    app.register_blueprint(blueprint(oauth, connection_id=user_from_header, app_scheme="app"))
    answer = app.test_client().get(f"{PREFIX}/status")
    assert answer.headers.getlist("set-cookie") == ["a=1", "b=2"]


def test_the_starlette_example_keeps_repeated_headers(
    async_oauth: AsyncAmoOAuth, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.testclient import TestClient

    from test_starlette_example import load_example

    async def handle(self: object, request: Request) -> Response:
        return TWO_COOKIES

    monkeypatch.setattr(web.AsyncHandlers, "handle", handle)
    app = load_example().create_app(async_oauth, {}, app_scheme="app")
    with TestClient(app) as client:
        answer = client.get(f"{PREFIX}/status")
    assert answer.headers.get_list("set-cookie") == ["a=1", "b=2"]


# -- RFC 9700 §4.11, and the threat table's own honesty ------------------------------------


def test_a_redirect_from_the_token_endpoint_is_never_followed(
    fake: FakeAmoCRM, clock: FakeClock
) -> None:
    hosts: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        location = "https://evil.example/collect"
        return httpx.Response(307, headers={"location": location})

    # The app's client says "follow redirects": the library's calls to amoCRM still do not.
    http = httpx.Client(transport=httpx.MockTransport(answer), follow_redirects=True)
    with AmoOAuth(config_for(fake), store=MemoryStore(), http=http, clock=clock) as oauth:
        begun = oauth.begin(MALLORY)
        redirect = query_of(fake.authorize(begun.state))
        result = oauth.handle_callback(redirect, binding=begun.binding)
    assert result.outcome is Outcome.FAILED
    assert hosts == [fake.account_host]


def test_openapi_documents_the_ticket_parameter(async_oauth: AsyncAmoOAuth) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from amo_oauth.fastapi import router

    app = FastAPI()
    app.include_router(router(async_oauth, connection_id=user_from_header, app_scheme="app"))
    with TestClient(app) as client:
        schema = client.get("/openapi.json").json()
    connect = schema["paths"][f"{PREFIX}/connect"]["get"]
    names = {parameter["name"] for parameter in connect["parameters"]}
    assert {"ticket", "format"} <= names
    assert "403" in schema["paths"][f"{PREFIX}/callback"]["get"]["responses"]


def test_bindings_and_tickets_never_show(oauth: AmoOAuth) -> None:
    from amo_oauth._binding import parse_binding, read_ticket
    from amo_oauth.web._calls import Begin, HandleCallback, RedeemTicket

    begun = oauth.begin(MALLORY)
    ticket = oauth.issue_ticket(MALLORY)
    assert begun.binding is not None
    shown = " ".join(
        repr(value)
        for value in (
            begun,
            parse_binding(begun.binding),
            read_ticket(oauth.config.accepted_state_secrets, ticket, oauth.config.client_id),
            Request(
                "GET",
                f"{PREFIX}/connect",
                query={"ticket": ticket},
                headers={"cookie": begun.binding},
            ),
            RedeemTicket(ticket, connection_id=MALLORY),
            Begin(MALLORY, binding=begun.binding),
            HandleCallback({"state": begun.state}, connection_id=None, binding=begun.binding),
        )
    )
    assert ticket not in shown and begun.binding.split(".")[0] not in shown
    with pytest.raises(CallbackRejected) as caught:
        oauth.redeem_ticket(ticket + "x")
    assert ticket not in str(caught.value) and ticket not in repr(caught.value)
