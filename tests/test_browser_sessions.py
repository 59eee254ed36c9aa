"""Login CSRF from a sibling subdomain, in real Chromium, against the examples' own sign-in.

The FastAPI (uvicorn) and Flask (werkzeug) examples run on ``https://app.test``. Mallory signs
in herself (JSON ``POST /login``) and gets a session token; her page on ``evil.app.test`` plants
it as a session cookie of ``app.test``. The victim signs in as herself with the site's form,
visits Mallory's page, opens ``/connect`` and presses "Allow": her amoCRM account must never be
connected to Mallory's user. Before the fix the examples named their cookie plainly ``session``
and read it with the framework's parser (Starlette's keeps the last of a repeated name and strips
U+00A0, Werkzeug's keeps the first, which Chromium sends for the longer ``Path``), so Mallory
was connected to the victim's account. Now: ``__Host-session``, read by ``web.read_cookie``.

Each test asserts the server received the planted cookie, so it cannot pass because a browser
stopped sending it; ``test_session_cookies.py`` holds the parsing without a browser.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from amo_oauth import AmoOAuth, AsyncAmoOAuth, MemoryStore
from amo_oauth.testing import FakeAmoCRM, ServedFake
from e2e_support import FASTAPI, FLASK
from test_browser import ARGS, CHROMIUM, _missing
from test_browser_cookies import Site, Tls, _config, asgi_over_tls, wsgi_over_tls

PREFIX = "/api/amo-crm"
SESSION = b"__Host-session"

#: What Mallory's page plants (her token follows ``=``), by case: names the examples once read
#: as the session (the plain name, at ``Path=/`` and at the longer ``Path`` Chromium sends
#: first, and under a near name), and a near name of the prefixed one itself.
PLANTS: dict[str, list[bytes]] = {
    "plain names": [
        b"session=%s; Domain=app.test; Path=/; Secure",
        b"session=%s; Domain=app.test; Path=" + PREFIX.encode() + b"; Secure",
        b"\xa0session=%s; Domain=app.test; Path=/; Secure",
    ],
    "near host name": [b"\xa0" + SESSION + b"=%s; Domain=app.test; Path=/; Secure"],
}


class Recording(Site):
    """``Site``, also keeping every ``Cookie`` header the app itself received."""

    def __init__(self) -> None:
        super().__init__()
        self.app_cookies: list[bytes] = []

    def asgi(self, app: Any) -> Any:
        inner = super().asgi(app)

        async def site(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http" and not self.evil(dict(scope["headers"]).get(b"host", b"")):
                self.app_cookies += [v for k, v in scope["headers"] if k == b"cookie"]
            await inner(scope, receive, send)

        return site

    def wsgi(self, app: Any) -> Any:
        inner = super().wsgi(app)

        def site(environ: dict[str, Any], start_response: Any) -> Any:
            host = environ.get("HTTP_HOST", "").encode("latin-1")
            if not self.evil(host) and "HTTP_COOKIE" in environ:
                self.app_cookies.append(environ["HTTP_COOKIE"].encode("latin-1"))
            return inner(environ, start_response)

        return site


@contextlib.contextmanager
def fastapi_example(site: Site, fake: FakeAmoCRM, served: ServedFake, tls: Tls) -> Iterator[int]:
    http = httpx.AsyncClient(transport=served.async_transport())
    oauth = AsyncAmoOAuth(_config(fake, served), store=MemoryStore(), http=http)
    app = FASTAPI.create_app(oauth, api=httpx.AsyncClient(transport=served.async_transport()))
    try:
        with asgi_over_tls(site, app, tls) as port:
            yield port
    finally:
        asyncio.run(oauth.aclose())


@contextlib.contextmanager
def flask_example(site: Site, fake: FakeAmoCRM, served: ServedFake, tls: Tls) -> Iterator[int]:
    with (
        httpx.Client(transport=served.transport()) as http,
        httpx.Client(transport=served.transport()) as api,
        AmoOAuth(_config(fake, served), store=MemoryStore(), http=http) as oauth,
        wsgi_over_tls(site, FLASK.create_app(oauth, api=api), tls) as port,
    ):
        yield port


EXAMPLES: dict[str, Callable[..., contextlib.AbstractContextManager[int]]] = {
    "fastapi": fastapi_example,
    "flask": flask_example,
}


def sign_in_as_app(port: int, user: str) -> str:
    """``user``'s session token, from the JSON sign-in a native app uses."""
    with httpx.Client(verify=False) as client:  # the self-signed certificate of this test
        answer = client.post(
            f"https://127.0.0.1:{port}/login",
            json={"user": user},
            headers={"host": f"app.test:{port}"},
        )
    assert answer.status_code == 200
    return str(answer.json()["token"])


def status_of(port: int, token: str) -> dict[str, Any]:
    with httpx.Client(verify=False) as client:
        answer = client.get(
            f"https://127.0.0.1:{port}{PREFIX}/status",
            headers={"host": f"app.test:{port}", "authorization": f"Bearer {token}"},
        )
    assert answer.status_code == 200
    payload: dict[str, Any] = answer.json()
    return payload


@pytest.mark.browser
@pytest.mark.timeout(120)
@pytest.mark.parametrize("plants", sorted(PLANTS))
@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_a_session_planted_from_a_sibling_subdomain_connects_nothing_to_its_planter(
    tmp_path: Path, kind: str, plants: str
) -> None:
    if not CHROMIUM.is_file():
        _missing(f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")

    site, tls = Recording(), Tls(tmp_path)
    app = f"https://app.test:{tls.port}"
    fake = FakeAmoCRM(redirect_uri=f"{app}{PREFIX}/callback")
    rules = "MAP app.test 127.0.0.1, MAP evil.app.test 127.0.0.1"
    with (
        fake.serve() as served,
        EXAMPLES[kind](site, fake, served, tls) as port,
        sync_playwright() as playwright,
    ):
        mallory, victim_token = sign_in_as_app(port, "mallory"), sign_in_as_app(port, "victim")
        site.planted = [plant % mallory.encode() for plant in PLANTS[plants]]
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=[*ARGS, f"--host-resolver-rules={rules}"]
        )
        try:
            victim = browser.new_context(ignore_https_errors=True).new_page()
            victim.goto(f"{app}/login?next={PREFIX}/status")  # she signs in as herself
            victim.fill("input[name=user]", "victim")
            victim.click("button")
            victim.wait_for_url(f"{app}{PREFIX}/status")
            victim.goto(f"https://evil.app.test:{port}/")  # plants Mallory's session
            connect = victim.goto(f"{app}{PREFIX}/connect")
            assert connect is not None
            if plants == "plain names":  # another cookie: she is still herself
                victim.click("#allow")
                victim.wait_for_url(f"{app}{PREFIX}/callback?*")
                title = victim.locator("h1").inner_text()
            else:  # her session's name twice, near: she is signed out, nothing begins
                title = f"{connect.status} {victim.content()}"
        finally:
            browser.close()
        hers, mallorys = status_of(port, victim_token), status_of(port, mallory)

    # The app received every planted cookie, in one request.
    planted = [plant.split(b";")[0] for plant in site.planted]
    assert any(all(pair in header for pair in planted) for header in site.app_cookies)
    assert mallorys["connected"] is False
    if plants == "plain names":
        assert title == "amoCRM is connected"
        assert hers["connected"] is True
    else:
        assert title.startswith("401 ") and "unauthenticated" in title
        assert hers["connected"] is False
    # The victim's own session came under its exact prefixed name.
    assert any(b"; " + SESSION + b"=" in b"; " + header for header in site.app_cookies)
