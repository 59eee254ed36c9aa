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
    """Sign in (cookie) -> connect -> the consent page -> Allow -> "Return to App"."""
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
            page.goto(f"{stack.backend}/login?user=ann&next={PREFIX}/connect")
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
