"""Cookie names are compared exactly, as RFC 6265 §5.2 parses a pair (issue 20 #1).

A page on a sibling subdomain (``evil.app.test`` beside ``app.test``) can plant
``\\xa0__Host-amo_oauth_binding=<its binding>; Domain=app.test``: browsers store it as an
unprefixed cookie and send it back with the raw 0xA0 byte. ``str.strip()`` removed U+00A0 (and
U+0085) around the name, so the planted binding was read as the real one. Here: the one parser
(``web.Request.cookie``) on raw header bytes, then each adapter through its own test client or
server interface, handing the raw header(s) over. ``test_browser.py`` proves it in Chromium.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.util import setup_testing_defaults

import attrs
import flask
import httpx
import pytest
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.test import override_settings
from django.urls import include, path
from fastapi import FastAPI

import django_settings
from amo_oauth import AmoOAuth, AsyncAmoOAuth, MemoryStore
from amo_oauth import django as amo_django
from amo_oauth.fastapi import router
from amo_oauth.flask import blueprint
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.web import Request
from test_web import PREFIX, callback_query, user_from_header

from helpers import config_for, query_of

django_settings.setup()

BINDING = "__Host-amo_oauth_binding"
MALLORY = b"mallory"
#: Every byte ``str.strip()`` removes besides SP and HTAB: the two the issue names (0xA0, 0x85)
#: and their kind (LF, VT, FF, CR, 0x1C-0x1F).
PYTHON_BLANKS = [bytes([c]) for c in range(256) if chr(c).isspace() and c not in (0x20, 0x09)]
#: Other bytes that are no part of a token (RFC 9110 §5.6.2).
NON_TOKEN = [b"\x00", b"\x7f", b"\xad", b"\xff", b'"', b",", b"(", b"/", b"@"]


def read(*cookie_headers: bytes, name: str = BINDING) -> str | None:
    """``Request.cookie(name)`` of a request carrying these raw ``Cookie`` header values."""
    return Request("GET", "/", headers=[(b"cookie", value) for value in cookie_headers]).cookie(
        name
    )


# -- the one parser, on raw header bytes -----------------------------------------------------


def test_the_exact_name_is_read() -> None:
    assert read(b"__Host-amo_oauth_binding=v") == "v"
    assert read(b"a=1; __Host-amo_oauth_binding=v; b=2") == "v"


def test_python_blanks_are_listed() -> None:
    assert {b"\xa0", b"\x85"} <= set(PYTHON_BLANKS)


@pytest.mark.parametrize("byte", PYTHON_BLANKS + NON_TOKEN, ids=lambda byte: byte.hex())
def test_a_name_with_any_other_byte_around_it_never_matches(byte: bytes) -> None:
    name = BINDING.encode()
    assert read(byte + name + b"=planted") is None
    assert read(name + byte + b"=planted") is None
    assert read(b"a=1;" + byte + name + b"=planted") is None
    # Beside the real one, a planted name is another cookie: the real binding is still read.
    assert read(byte + name + b"=planted; " + name + b"=mine") == "mine"


def test_only_sp_and_htab_are_trimmed_around_name_and_value() -> None:
    assert read(b" \t__Host-amo_oauth_binding \t= \tv\t ") == "v"
    assert read(b"a=1;\t__Host-amo_oauth_binding=v") == "v"


def test_several_cookie_headers_are_all_read() -> None:
    """HTTP/2 browsers send one ``Cookie`` field per pair; ASGI hands them over apart."""
    assert read(b"a=1", b"__Host-amo_oauth_binding=v") == "v"
    assert read(b"a=1", b"__Host-amo_oauth_binding=v", name="a") == "1"


def test_a_name_sent_twice_counts_as_absent() -> None:
    """Which of the two its owner set cannot be told: neither is a binding."""
    assert read(b"__Host-amo_oauth_binding=a; __Host-amo_oauth_binding=b") is None
    assert read(b"__Host-amo_oauth_binding=a", b"__Host-amo_oauth_binding=b") is None
    assert read(b"__Host-amo_oauth_binding=a; __Host-amo_oauth_binding=a") is None
    assert read(b"__Host-amo_oauth_binding=a;  __Host-amo_oauth_binding =b") is None


def test_quoted_values_lose_one_pair_of_quotes() -> None:
    assert read(b'__Host-amo_oauth_binding="v"') == "v"
    assert read(b'__Host-amo_oauth_binding=""') == ""
    assert read(b'__Host-amo_oauth_binding=""v""') == '"v"'
    assert read(b'__Host-amo_oauth_binding="v') == '"v'
    assert read(b'__Host-amo_oauth_binding="') == '"'


def test_empty_names_and_pairs_without_a_value_are_skipped() -> None:
    assert read(b"=v") is None
    assert read(b"=v", name="") is None
    assert read(b"__Host-amo_oauth_binding") is None
    assert read(b"=v; __Host-amo_oauth_binding; __Host-amo_oauth_binding=w") == "w"
    assert read(b";;__Host-amo_oauth_binding=w;;") == "w"


def test_names_are_case_sensitive() -> None:
    assert read(b"__host-amo_oauth_binding=v") is None
    assert read(b"__HOST-AMO_OAUTH_BINDING=v") is None


def test_pairs_are_never_split_on_commas() -> None:
    """A WSGI server joins repeated ``Cookie`` headers with ``,``; a value may hold one too
    (one the planting page chose): a name after a comma is never a cookie of its own."""
    assert read(b"a=1, __Host-amo_oauth_binding=v") is None
    assert read(b'a=",__Host-amo_oauth_binding=planted"') is None
    assert (
        read(b'a=",__Host-amo_oauth_binding=planted"', name="a")
        == ",__Host-amo_oauth_binding=planted"
    )


# -- every adapter, raw headers in -----------------------------------------------------------


@attrs.frozen
class Answered:
    status: int
    headers: list[tuple[str, str]]
    body: str

    def header(self, name: str) -> str:
        (value,) = [value for key, value in self.headers if key == name]
        return value

    def binding_cookies(self) -> list[str]:
        cookies = [value for key, value in self.headers if key == "set-cookie"]
        return [cookie for cookie in cookies if cookie.startswith(f"{BINDING}=")]


#: One GET on an adapter: (path, query, raw header pairs) -> the answer.
Wire = Callable[[str, str, list[tuple[bytes, bytes]]], Answered]
ADAPTERS = ["fastapi", "flask", "django-wsgi", "django-asgi"]


def _lower(pairs: Any) -> list[tuple[str, str]]:
    # Django's WSGI handler writes each cookie with a leading space (``Morsel.output``).
    return [(str(name).lower(), str(value).strip()) for name, value in pairs]


def _latin(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


def _async_oauth(fake: FakeAmoCRM, clock: FakeClock) -> AsyncAmoOAuth:
    http = httpx.AsyncClient(transport=fake.async_transport())
    return AsyncAmoOAuth(config_for(fake), store=MemoryStore(), http=http, clock=clock)


def fastapi_app(oauth: AsyncAmoOAuth) -> FastAPI:
    app = FastAPI()
    app.include_router(router(oauth, connection_id=user_from_header, app_scheme="foryoure"))
    return app


@contextlib.contextmanager
def flask_wire(oauth: AmoOAuth) -> Iterator[Wire]:
    """Werkzeug's test client, without its cookie jar (which would replace the header)."""
    app = flask.Flask(__name__)
    app.register_blueprint(blueprint(oauth, connection_id=user_from_header, app_scheme="foryoure"))
    client = app.test_client(use_cookies=False)

    def wire(path: str, query: str, headers: list[tuple[bytes, bytes]]) -> Answered:
        answer = client.get(path, query_string=query, headers=_latin(headers))
        return Answered(answer.status_code, _lower(answer.headers.items()), answer.get_data(True))

    yield wire


@contextlib.contextmanager
def django_routes(service: AmoOAuth | AsyncAmoOAuth) -> Iterator[None]:
    patterns = amo_django.urls(service, connection_id=user_from_header, app_scheme="foryoure")
    with override_settings(ROOT_URLCONF=django_settings.urlconf(path("", include(patterns)))):
        yield


def django_wsgi(path: str, query: str, headers: list[tuple[bytes, bytes]]) -> Answered:
    """Django's WSGI handler, given the environ a server builds: latin-1 text, a repeated
    header joined with ``,`` (as ``wsgiref`` and Werkzeug join it)."""
    environ: dict[str, Any] = {"PATH_INFO": path, "QUERY_STRING": query}
    for name, value in _latin(headers):
        key = "HTTP_" + name.upper().replace("-", "_")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    setup_testing_defaults(environ)
    started: list[tuple[str, list[tuple[str, str]]]] = []
    body = WSGIHandler()(environ, lambda status, lines, *exc: started.append((status, lines)))
    text = b"".join(body).decode()
    ((status, lines),) = started
    return Answered(int(status.split()[0]), _lower(lines), text)


def asgi_wire(app: Any) -> Wire:
    """An ASGI app given the scope a server builds: the raw header bytes, a repeated header
    apart (Starlette's TestClient would re-encode a 0xA0 byte as UTF-8)."""

    def wire(path: str, query: str, headers: list[tuple[bytes, bytes]]) -> Answered:
        return _asgi_get(app, path, query, headers)

    return wire


def _asgi_get(app: Any, path: str, query: str, headers: list[tuple[bytes, bytes]]) -> Answered:
    messages: list[dict[str, Any]] = []

    async def run() -> None:
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if requested:  # no disconnect: wait to be cancelled once the response is sent
                await asyncio.Event().wait()
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "https", "path": path, "raw_path": path.encode(),
                 "root_path": "", "query_string": query.encode(),
                 "headers": [(b"host", b"127.0.0.1"), *headers],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 443)}  # fmt: skip
        await app(scope, receive, send)

    asyncio.run(run())
    (start,) = [message for message in messages if message["type"] == "http.response.start"]
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    lines = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in start["headers"]]
    return Answered(start["status"], _lower(lines), body.decode())


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def wire(adapter: str, fake: FakeAmoCRM, clock: FakeClock, oauth: AmoOAuth) -> Iterator[Wire]:
    if adapter in ("fastapi", "django-asgi"):
        async_oauth = _async_oauth(fake, clock)
        try:
            if adapter == "fastapi":
                yield asgi_wire(fastapi_app(async_oauth))
            else:
                with django_routes(async_oauth):
                    yield asgi_wire(ASGIHandler())
        finally:
            asyncio.run(async_oauth.aclose())
    elif adapter == "flask":
        with flask_wire(oauth) as sent:
            yield sent
    else:
        with django_routes(oauth):
            yield django_wsgi


def mallorys_consent(wire: Wire) -> tuple[str, bytes]:
    """Mallory's own ``/connect``: her consent's state, and her binding as a cookie pair."""
    answer = wire(f"{PREFIX}/connect", "", [(b"x-user", MALLORY)])
    assert answer.status == 302
    (cookie,) = answer.binding_cookies()
    return query_of(answer.header("location"))["state"], cookie.split(";")[0].encode()


def callback(wire: Wire, redirect: str, *cookie_headers: bytes) -> Answered:
    headers = [(b"cookie", value) for value in cookie_headers]
    return wire(f"{PREFIX}/callback", callback_query(redirect), headers)


@pytest.mark.parametrize("byte", [b"\xa0", b"\x85"], ids=["a0", "85"])
def test_a_binding_planted_under_a_near_name_connects_nothing(
    wire: Wire, fake: FakeAmoCRM, byte: bytes
) -> None:
    """The issue's attack: the victim presses "Allow" on Mallory's consent link, and the victim's
    browser carries Mallory's binding under ``\\xa0__Host-amo_oauth_binding``."""
    state, mine = mallorys_consent(wire)
    redirect = fake.authorize(state)
    refused = callback(wire, redirect, byte + mine)
    assert refused.status == 403
    assert "wrong_browser" in refused.body
    assert fake.token_call_count() == 0
    # The same redirect with the exact name (Mallory's own browser) connects: the refusal was
    # the name's doing, and it spent nothing.
    assert callback(wire, redirect, mine).status == 200
    assert fake.token_call_count() == 1


def test_a_binding_sent_twice_is_no_binding_yet_a_replay_is_answered(
    wire: Wire, fake: FakeAmoCRM
) -> None:
    state, mine = mallorys_consent(wire)
    redirect = fake.authorize(state)
    twice = callback(wire, redirect, mine + b"; " + mine)
    assert twice.status == 403
    assert "wrong_browser" in twice.body
    assert fake.token_call_count() == 0
    assert callback(wire, redirect, mine).status == 200
    # The seed's replay of the same code, from a webview that carries a planted cookie: the
    # duplicate rules answer it before the binding is asked for.
    other = BINDING.encode() + b"=planted"
    for cookies in ([mine + b"; " + mine], [mine + b"; " + other], [b"\xa0" + other + b"; " + mine],
                    [other, mine], []):  # fmt: skip
        replay = callback(wire, redirect, *cookies)
        assert replay.status == 200, cookies
        assert "success=true" in replay.body
    assert fake.token_call_count() == 1


@pytest.mark.parametrize("adapter", ["fastapi", "django-asgi"], indirect=True)
def test_the_binding_in_a_second_cookie_header_is_read_under_asgi(
    wire: Wire, fake: FakeAmoCRM
) -> None:
    """ASGI hands repeated headers over apart, and the adapters pass them on raw (Django's own
    META joins them with ``,``, which would lose the binding). Under WSGI the server has
    joined them already: a pair after the comma is never read (see
    ``test_pairs_are_never_split_on_commas``)."""
    state, mine = mallorys_consent(wire)
    redirect = fake.authorize(state)
    assert callback(wire, redirect, b"a=1", mine).status == 200
    assert fake.token_call_count() == 1


def host_rules(cookie: str) -> set[str]:
    """A ``__Host-`` cookie's rules (RFC 6265bis §4.1.3.2) hold: Secure, Path=/, no Domain;
    the attributes, lower-cased."""
    pair, *parts = [part.strip() for part in cookie.split(";")]
    attributes = {part.lower() for part in parts}
    assert pair.startswith(f"{BINDING}=")
    assert {"secure", "path=/", "httponly", "samesite=lax"} <= attributes
    assert not any(attribute.startswith("domain") for attribute in attributes)
    return attributes


def test_the_binding_cookie_keeps_the_host_prefix_rules(wire: Wire, fake: FakeAmoCRM) -> None:
    answer = wire(f"{PREFIX}/connect", "", [(b"x-user", MALLORY)])
    (set_cookie,) = answer.binding_cookies()
    assert "max-age=1800" in host_rules(set_cookie)
    state, mine = query_of(answer.header("location"))["state"], set_cookie.split(";")[0]
    done = callback(wire, fake.authorize(state), mine.encode())
    assert done.status == 200
    (cleared,) = done.binding_cookies()
    assert "max-age=0" in host_rules(cleared)
