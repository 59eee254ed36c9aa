"""The site button's install in a real browser, through the library's own /connect page
(issue 22's review, browser.py): what docs/site-button.md says the user sees after "Allow".

FastAPI's router in metadata mode under uvicorn, FakeAmoCRM served on loopback (its stand-in
button script, its consent page, its post to secrets_uri), Debian's headless Chromium.
"""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from amo_oauth import AsyncAmoOAuth, ButtonMetadata, Config, MemoryStore
from amo_oauth._demo import listening_socket, serve_asgi
from amo_oauth.fastapi import router
from amo_oauth.testing import FakeAmoCRM
from test_browser import ARGS, CHROMIUM, _missing

from helpers import STATE_SECRET

PREFIX = "/api/amo-crm"


@pytest.mark.browser
def test_after_allow_the_popup_shows_the_callback_page_and_the_opener_stays() -> None:
    if not CHROMIUM.is_file():
        _missing(f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    sock = listening_socket()
    backend = f"http://127.0.0.1:{sock.getsockname()[1]}"
    fake = FakeAmoCRM(rate_limit=None, redirect_uri=f"{backend}{PREFIX}/callback")
    with fake.serve() as served, sync_playwright() as playwright:
        config = Config(
            client_id="acme-leads",
            secrets_uri=f"{backend}{PREFIX}/secrets",
            redirect_uri=fake.redirect_uri,
            state_secret=STATE_SECRET,
            button_script_url=f"{served.url}/auth/button.min.js",  # the fake's stand-in
        )
        http = httpx.AsyncClient(transport=served.async_transport())
        oauth = AsyncAmoOAuth(config, store=MemoryStore(), http=http)
        app = FastAPI()
        app.include_router(
            router(
                oauth,
                connection_id=lambda request: "ann",  # stands for the app's session
                app_scheme="myapp",
                button=ButtonMetadata("Acme leads", "Leads from your site"),
            )
        )
        with serve_asgi(app, sock):
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            try:
                page = browser.new_page()
                page.goto(f"{backend}{PREFIX}/connect")
                assert page.locator("h1").inner_text() == "Connect amoCRM"
                with page.expect_popup() as opened:
                    page.click("button.amocrm_oauth")
                popup = opened.value
                popup.click("#allow")
                popup.wait_for_url(f"{backend}{PREFIX}/callback?*")
                assert popup.locator("h1").inner_text() == "amoCRM is connected"
                assert page.url == f"{backend}{PREFIX}/connect"  # the opener stays
                assert page.locator("h1").inner_text() == "Connect amoCRM"
                status = httpx.get(f"{backend}{PREFIX}/status").json()  # how the app learns
            finally:
                browser.close()
    assert status["connected"] is True
    assert fake.token_calls == {("authorization_code", "ok"): 1}
