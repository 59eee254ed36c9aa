"""A real browser through the seed's flow: Debian's headless Chromium, driven by Playwright.

No browser is ever downloaded: the test uses /usr/bin/chromium. Without it the test is skipped
locally, but fails when AMO_OAUTH_REQUIRE_BROWSER=1 (CI sets it): a skip must never hide a
missing browser in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from e2e_support import PREFIX, fastapi_stack, query_of

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing(what: str) -> None:
    if os.environ.get("AMO_OAUTH_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{what}, and AMO_OAUTH_REQUIRE_BROWSER=1")
    pytest.skip(what)


@pytest.mark.browser
@pytest.mark.timeout(90)
def test_a_person_connects_amocrm_in_a_browser(tmp_path: Path) -> None:
    """Sign in (the form; a cookie) -> connect -> the consent page -> Allow -> "Return to
    App"."""
    if not CHROMIUM.is_file():
        _missing(f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")

    with fastapi_stack(tmp_path / "amo_oauth.db") as stack, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 480, "height": 640})
            page.goto(f"{stack.backend}/login?next={PREFIX}/connect")  # the sign-in form
            page.fill("input[name=user]", "ann")
            page.click("button")
            page.wait_for_url(f"{stack.fake_url}/oauth?*")
            assert page.locator("h1").inner_text() == "Grant access to your amoCRM account?"
            state = query_of(page.url)["state"]

            page.click("#allow")
            page.wait_for_url(f"{stack.callback}?*")
            code = query_of(page.url)["code"]
            assert page.locator("h1").inner_text() == "amoCRM is connected"
            button = page.locator("a.button")
            assert button.inner_text() == "Return to App"
            link = button.get_attribute("href") or ""
            page.screenshot(path=str(tmp_path / "return-to-app.png"))
            html = page.content()
        finally:
            browser.close()

    assert link.startswith("foryoure://amo-crm/callback?")
    assert query_of(link) == {"success": "true", "state": state}
    assert code not in link and code not in html
    assert stack.fake.token_calls == {("authorization_code", "ok"): 1}
    assert (tmp_path / "return-to-app.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.browser
@pytest.mark.timeout(90)
def test_the_mobile_ticket_flow_and_a_forwarded_link_in_a_browser(tmp_path: Path) -> None:
    """The app asks its backend for the ticket URL; a browser with no app session opens it,
    presses Allow and connects. A consent link forwarded to another browser connects nothing."""
    if not CHROMIUM.is_file():
        _missing(f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    import httpx

    with fastapi_stack(tmp_path / "amo_oauth.db") as stack, sync_playwright() as playwright:
        with httpx.Client(base_url=stack.backend) as app:
            token = app.post("/login", json={"user": "ann"}).json()["token"]
            signed_in = {"authorization": f"Bearer {token}", "accept": "application/json"}
            ticket_url = app.get(f"{PREFIX}/connect", headers=signed_in).json()["url"]
            mallory = app.post("/login", json={"user": "mallory"}).json()["token"]
            hers = {"authorization": f"Bearer {mallory}", "accept": "application/json"}
            her_ticket = app.get(f"{PREFIX}/connect", headers=hers).json()["url"]
        assert ticket_url.startswith(f"{stack.backend}{PREFIX}/connect?ticket=")
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            in_app = browser.new_context().new_page()  # no session: only the ticket
            in_app.goto(ticket_url)
            in_app.wait_for_url(f"{stack.fake_url}/oauth?*")
            in_app.click("#allow")
            in_app.wait_for_url(f"{stack.callback}?*")
            assert in_app.locator("h1").inner_text() == "amoCRM is connected"

            # Mallory opens her ticket in her browser and forwards the consent link it shows.
            her_page = browser.new_context().new_page()
            her_page.goto(her_ticket)
            her_page.wait_for_url(f"{stack.fake_url}/oauth?*")
            victim = browser.new_context().new_page()  # another browser: no cookie
            victim.goto(her_page.url)
            victim.click("#allow")
            victim.wait_for_url(f"{stack.callback}?*")
            assert victim.locator("h1").inner_text() == "Connect from the app"
            assert "wrong_browser" in victim.content()
        finally:
            browser.close()
    assert stack.fake.token_calls == {("authorization_code", "ok"): 1}


@pytest.mark.browser
@pytest.mark.timeout(90)
def test_a_ticket_link_on_another_sites_page_starts_nothing(tmp_path: Path) -> None:
    """Mallory puts a fresh ticket URL of hers behind a link on her own page; a victim with no
    app session clicks it. Chromium says ``Sec-Fetch-Site: cross-site``: the ticket is refused
    (and not used), no binding cookie is set, no consent page opens."""
    if not CHROMIUM.is_file():
        _missing(f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.sync_api import Route, sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    import html

    import httpx

    with fastapi_stack(tmp_path / "amo_oauth.db") as stack, sync_playwright() as playwright:
        with httpx.Client(base_url=stack.backend) as app:
            mallory = app.post("/login", json={"user": "mallory"}).json()["token"]
            hers = {"authorization": f"Bearer {mallory}", "accept": "application/json"}
            her_ticket = app.get(f"{PREFIX}/connect", headers=hers).json()["url"]
        lure = f'<a id="go" href="{html.escape(her_ticket)}">Connect your CRM</a>'

        def evil(route: Route) -> None:
            route.fulfill(status=200, content_type="text/html", body=lure)

        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            victim = browser.new_context()
            victim.route("http://evil.example/**", evil)
            page = victim.new_page()
            page.goto("http://evil.example/")
            with page.expect_navigation():
                page.click("#go")
            # Compared as booleans: a failure must not print the ticket.
            on_connect = page.url.startswith(f"{stack.backend}{PREFIX}/connect?ticket=")
            assert on_connect, "the link did not open /connect"
            # The refusal page, whose button takes the user back to the app.
            assert "<code>cross_site_request</code>" in page.content()
            assert victim.cookies() == []
            # Not used up: Mallory's own in-app browser could still open it.
            own = browser.new_context().new_page()
            own.goto(her_ticket)
            own.wait_for_url(f"{stack.fake_url}/oauth?*")
        finally:
            browser.close()
    assert stack.fake.token_calls == {}


@pytest.mark.browser
@pytest.mark.timeout(90)
def test_another_sites_page_signs_nobody_in(tmp_path: Path) -> None:
    """Login CSRF: Mallory's page posts the example's sign-in form as her (on load), and links
    its old ``GET /login?user=...``. Chromium's POST says ``Origin: http://evil.example``: it
    is refused; the GET is only the form. The victim holds no session, and ``/connect`` (the
    next step of her lure) starts nothing for her."""
    if not CHROMIUM.is_file():
        _missing(f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.sync_api import Route, sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    import html

    with fastapi_stack(tmp_path / "amo_oauth.db") as stack, sync_playwright() as playwright:
        then = f"{PREFIX}/connect"
        sign_in = html.escape(f"{stack.backend}/login")
        lure = (
            f'<img src="{sign_in}?user=mallory&amp;next={then}">'
            f'<form id="f" method="post" action="{sign_in}">'
            f'<input name="user" value="mallory"><input name="next" value="{then}"></form>'
        )

        def evil(route: Route) -> None:
            route.fulfill(status=200, content_type="text/html", body=lure)

        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            victim = browser.new_context()
            victim.route("http://evil.example/**", evil)
            page = victim.new_page()
            page.goto("http://evil.example/")
            with page.expect_response(f"{stack.backend}/login") as posted:
                page.evaluate("document.getElementById('f').submit()")
            page.wait_for_url(f"{stack.backend}/login")
            page.wait_for_load_state()
            assert posted.value.status == 403
            assert posted.value.request.header_value("origin") == "http://evil.example"
            assert "cross_site_request" in page.content()
            assert victim.cookies() == []  # no session: neither the GET nor the POST made one
            page.goto(f"{stack.backend}{then}")
            assert page.url.startswith(stack.backend)  # not sent on to amoCRM's consent
            assert "unauthenticated" in page.content()
        finally:
            browser.close()
    assert stack.fake.token_calls == {}
