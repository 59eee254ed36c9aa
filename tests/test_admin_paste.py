"""The demo's private-integration path (issue 21, parts 1 and 2), as a person clicks it: the
fake's "Keys and scopes" tab issues a long-lived token and a keys-tab code, and an admin pastes
either into the FastAPI example's ``/admin`` forms (a POST from the backend's own page, by an
admin); the connection then serves ``/api/amo-crm/status`` and the leads."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2e_support import MOBILE, Stack, fastapi_stack

pytestmark = pytest.mark.timeout(60)

PREFIX = "/api/amo-crm"
LEADS = ({"name": "Website redesign", "price": 120000},)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with fastapi_stack(tmp_path / "admin.db", leads=LEADS) as running:
        yield running


@pytest.fixture
def browser() -> Iterator[httpx.Client]:
    with httpx.Client(follow_redirects=False) as client:
        yield client


def _tab(stack: Stack, browser: httpx.Client) -> tuple[str, str, str]:
    """Open the fake's "Keys and scopes" tab: (long-lived token, code, account host)."""
    page = browser.get(f"{stack.fake_url}/keys", params={"client_id": stack.fake.client_id})
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    fields = dict(re.findall(r'<textarea id="([\w-]+)"[^>]*>([^<]*)</textarea>', page.text))
    host = re.search(r'<code id="host">([^<]+)</code>', page.text)
    assert host is not None
    return (
        html.unescape(fields["long-lived-token"]),
        html.unescape(fields["authorization-code"]),
        host.group(1),
    )


def _admin(stack: Stack, browser: httpx.Client, user: str = "admin") -> None:
    assert MOBILE.sign_in_browser(browser, stack.backend, user, "/admin") == "/admin"


def _paste(
    stack: Stack, browser: httpx.Client, form: str, origin: str | None = None, **fields: str
) -> httpx.Response:
    headers = {"origin": origin or stack.backend}
    return browser.post(f"{stack.backend}/admin/{form}", data=fields, headers=headers)


def test_an_admin_pastes_the_tabs_long_lived_token_and_the_leads_load(
    stack: Stack, browser: httpx.Client
) -> None:
    token, _, host = _tab(stack, browser)
    _admin(stack, browser)
    assert browser.get(f"{stack.backend}/admin").status_code == 200
    pasted = _paste(stack, browser, "long-lived", token=token, host=host)
    assert pasted.status_code == 200 and "Connected until" in pasted.text
    assert token not in pasted.text
    status = browser.get(f"{stack.backend}{PREFIX}/status").json()
    assert status["status"] == "connected"
    leads = browser.get(f"{stack.backend}{PREFIX}/leads").json()
    assert [lead["name"] for lead in leads["leads"]] == ["Website redesign"]
    assert stack.fake.token_call_count() == 0  # a long-lived token is never refreshed


def test_an_admin_pastes_the_tabs_code_once_and_again(stack: Stack, browser: httpx.Client) -> None:
    _, code, host = _tab(stack, browser)
    _admin(stack, browser)
    first = _paste(stack, browser, "keys-tab-code", code=code, host=host)
    assert first.status_code == 200 and "connected: connected" in first.text
    again = _paste(stack, browser, "keys-tab-code", code=code, host=host)
    assert again.status_code == 200 and "already_connected (seen before)" in again.text
    assert stack.fake.token_calls_for(code) == 1 and code not in first.text + again.text
    assert browser.get(f"{stack.backend}{PREFIX}/status").json()["status"] == "connected"


def test_a_refused_token_says_why_and_connects_nothing(stack: Stack, browser: httpx.Client) -> None:
    token, _, host = _tab(stack, browser)
    stack.fake.revoke_long_lived_token(token)
    _admin(stack, browser)
    refused = _paste(stack, browser, "long-lived", token=token, host=host)
    assert refused.status_code == 400 and "Refused: token_refused" in refused.text
    assert browser.get(f"{stack.backend}{PREFIX}/status").json()["status"] == "disconnected"


def test_a_host_typed_as_a_url_connects_and_a_foreign_one_says_why(
    stack: Stack, browser: httpx.Client
) -> None:
    token, _, host = _tab(stack, browser)
    _admin(stack, browser)
    refused = _paste(stack, browser, "long-lived", token=token, host="https://evil.example.com/")
    assert refused.status_code == 400
    assert "Refused: foreign_host (type the account&#x27;s host" in refused.text
    pasted = _paste(stack, browser, "long-lived", token=token, host=f"https://{host.upper()}/")
    assert pasted.status_code == 200
    assert browser.get(f"{stack.backend}{PREFIX}/status").json()["status"] == "connected"


@pytest.mark.parametrize("button", ["revoke", "expire"])
def test_the_tabs_buttons_end_the_pasted_token_and_the_app_says_so(
    stack: Stack, browser: httpx.Client, button: str
) -> None:
    page = browser.get(f"{stack.fake_url}/keys", params={"client_id": stack.fake.client_id})
    form = re.search(
        rf'<form method="post" action="([^"]+)">((?:(?!</form>).)*)id="{button}"', page.text, re.S
    )
    assert form is not None
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', form.group(2)))
    token = html.unescape(fields["token"])
    host = re.search(r'<code id="host">([^<]+)</code>', page.text)
    assert host is not None
    _admin(stack, browser)
    assert _paste(stack, browser, "long-lived", token=token, host=host.group(1)).status_code == 200
    assert browser.get(f"{stack.backend}{PREFIX}/leads").status_code == 200
    clicked = browser.post(f"{stack.fake_url}{html.unescape(form.group(1))}", data=fields)
    assert clicked.status_code == 200 and "refuses it from now on" in clicked.text
    assert token not in clicked.text
    browser.get(f"{stack.backend}{PREFIX}/leads")  # amoCRM's 401 ends the connection
    status = browser.get(f"{stack.backend}{PREFIX}/status").json()
    assert status["status"] == "error" and status["connected"] is False
    unknown = browser.post(
        f"{stack.fake_url}{html.unescape(form.group(1))}", data={"do": button, "token": "nope"}
    )
    assert unknown.status_code == 400


def test_only_an_admin_on_this_site_may_paste(stack: Stack, browser: httpx.Client) -> None:
    token, code, host = _tab(stack, browser)
    # Signed in as an admin, but the post comes from another site's page.
    _admin(stack, browser)
    crossed = _paste(stack, browser, "long-lived", "https://evil.example", token=token, host=host)
    assert crossed.status_code == 403 and crossed.json() == {"error": "cross_site_request"}
    # A signed-in user who is not an admin.
    with httpx.Client(follow_redirects=False) as other:
        _admin(stack, other, user="ann")
        assert other.get(f"{stack.backend}/admin").status_code == 403
        denied = _paste(stack, other, "keys-tab-code", code=code, host=host)
        assert denied.status_code == 403 and denied.json() == {"error": "not_an_admin"}
    # Nobody signed in.
    with httpx.Client(follow_redirects=False) as anonymous:
        nobody = _paste(stack, anonymous, "keys-tab-code", code=code, host=host)
        assert nobody.status_code == 403
    assert stack.fake.token_calls_for(code) == 0 and stack.fake.api_call_count() == 0


def test_the_tab_is_on_the_consent_host_only_and_needs_a_known_integration(
    stack: Stack, browser: httpx.Client
) -> None:
    unknown = browser.get(f"{stack.fake_url}/keys", params={"client_id": "nobody"})
    assert unknown.status_code == 400
    url = f"https://{stack.fake.account_host}/keys?client_id={stack.fake.client_id}"
    assert stack.fake.handle("GET", url).status == 404
    consent = f"https://{stack.fake.consent_host}/keys?client_id={stack.fake.client_id}"
    assert stack.fake.handle("GET", consent).status == 200
