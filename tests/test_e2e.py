"""The seed's scenario end to end over real HTTP: FakeAmoCRM and an example backend on loopback.

A person is played by an httpx client that follows nothing by itself: it opens the backend's
connect URL, presses a button on the fake's consent page, follows amoCRM's redirect to the
backend and reads the "Return to App" page; then ``examples/mobile_client.py`` plays the old
and the new app. Every test runs against the FastAPI example (uvicorn) and the Flask example
(werkzeug).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from e2e_support import MOBILE, PREFIX, STACKS, Seen, Stack, query_of

pytestmark = pytest.mark.timeout(60)

LEADS = 260  # more than one page of 250: the backend follows _links.next


@pytest.fixture(params=sorted(STACKS))
def make_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Start stacks of the parametrized kind (FakeAmoCRM options as keywords); stop them after."""
    numbers = itertools.count()
    with contextlib.ExitStack() as running:

        def make(**fake_options: object) -> Stack:
            db = tmp_path / f"amo_oauth-{next(numbers)}.db"
            return running.enter_context(STACKS[request.param](db, **fake_options))

        yield make


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(leads=LEADS)


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def browser(seen: Seen) -> Iterator[httpx.Client]:
    """The in-app browser: follows no redirect by itself, keeps cookies."""
    with httpx.Client(
        follow_redirects=False, event_hooks={"response": [seen.hook("browser")]}
    ) as c:
        yield c


@pytest.fixture
def app(stack: Stack, seen: Seen) -> Iterator[httpx.Client]:
    """The mobile app's HTTP client, pointed at the backend."""
    hooks = {"response": [seen.hook("app")]}
    with httpx.Client(base_url=stack.backend, follow_redirects=False, event_hooks=hooks) as c:
        yield c


def test_the_seeds_scenario(
    stack: Stack, browser: httpx.Client, app: httpx.Client, seen: Seen
) -> None:
    """Connect -> Allow -> Return to App; the OLD app posts the code again, the NEW one does
    not: no 403 anywhere, "Connected", the leads listed, exactly one token call."""
    token = MOBILE.sign_in(app, "ann")
    consent = MOBILE.open_connect(browser, stack.backend, token)
    assert consent.startswith(f"{stack.fake_url}/oauth?")
    state = query_of(consent)["state"]
    callback = MOBILE.press(browser, consent, "Allow")
    assert callback.startswith(f"{stack.callback}?")
    code = query_of(callback)["code"]

    visit = MOBILE.land(browser, callback)
    assert (visit.status, visit.title) == (200, "amoCRM is connected")
    target, _, _ = visit.deep_link.partition("?")
    assert target == "foryoure://amo-crm/callback"
    assert query_of(visit.deep_link) == {"success": "true", "state": state}
    assert code not in visit.deep_link

    old = MOBILE.old_app(app, visit.callback_url)
    new = MOBILE.new_app(app, visit.deep_link)
    names = tuple(f"Lead #{n}" for n in range(1, LEADS + 1))
    for screen in (old, new):
        assert (screen.message, screen.connected, screen.leads) == (
            "Connected: Test account",
            True,
            names,
        )
    assert ("app", "POST", f"{PREFIX}/exchange-code", 200) in seen.calls  # the seed's 403
    assert 403 not in seen.statuses()
    assert all(status < 500 for status in seen.statuses())
    assert stack.fake.token_calls == {("authorization_code", "ok"): 1}
    assert stack.fake.token_calls_for(code) == 1
    assert stack.fake.api_calls[("/api/v4/leads", "ok")] == 4  # two pages, twice


def _allow(stack: Stack, browser: httpx.Client, app: httpx.Client, user: str = "ann") -> Any:
    """Sign in, tap "Connect amoCRM", tap "Allow": the Return-to-App page's ``Visit``."""
    token = MOBILE.sign_in(app, user)
    return MOBILE.authorize_in_browser(browser, stack.backend, token, "Allow")


def test_a_replayed_callback_shows_the_same_page(
    stack: Stack, browser: httpx.Client, app: httpx.Client
) -> None:
    visit = _allow(stack, browser, app)
    again = MOBILE.land(browser, visit.callback_url)  # e.g. the user reloads the page
    assert (again.status, again.title, again.deep_link) == (
        visit.status,
        visit.title,
        visit.deep_link,
    )
    assert query_of(again.deep_link)["success"] == "true"
    # A new app behind an old backend gets the code in its deep link: it falls back to
    # exchange-code, which is a no-op for a code already exchanged.
    code, state = query_of(visit.callback_url)["code"], query_of(visit.callback_url)["state"]
    legacy_link = "foryoure://amo-crm/callback?" + urlencode({"code": code, "state": state})
    assert MOBILE.new_app(app, legacy_link).connected
    assert stack.fake.token_calls == {("authorization_code", "ok"): 1}


def test_deny_shows_try_again(stack: Stack, browser: httpx.Client, app: httpx.Client) -> None:
    token = MOBILE.sign_in(app, "ann")
    consent = MOBILE.open_connect(browser, stack.backend, token)
    visit = MOBILE.land(browser, MOBILE.press(browser, consent, "Deny"))
    assert (visit.status, visit.title) == (200, "amoCRM was not connected")
    assert query_of(visit.deep_link) == {
        "error": "access_denied",
        "state": query_of(consent)["state"],
    }
    assert MOBILE.new_app(app, visit.deep_link).message == MOBILE.TRY_AGAIN
    assert MOBILE.old_app(app, visit.callback_url).message == MOBILE.TRY_AGAIN
    assert MOBILE.home(app).message == MOBILE.CONNECT
    assert stack.fake.token_calls == {}


def test_a_forged_state_is_refused(stack: Stack, browser: httpx.Client, app: httpx.Client) -> None:
    token = MOBILE.sign_in(app, "ann")
    consent = MOBILE.open_connect(browser, stack.backend, token)
    state = query_of(consent)["state"]
    forged = state[:-3] + ("AAA" if not state.endswith("AAA") else "BBB")
    tampered = consent.replace(f"state={state}", f"state={forged}")
    assert tampered != consent
    visit = MOBILE.land(browser, MOBILE.press(browser, tampered, "Allow"))
    assert visit.status == 400
    assert query_of(visit.deep_link) == {"error": "bad_state"}
    assert stack.fake.token_calls == {}
    assert MOBILE.home(app).message == MOBILE.CONNECT


def test_leads_need_a_connection(stack: Stack, app: httpx.Client) -> None:
    answer = app.get(f"{PREFIX}/leads")
    assert (answer.status_code, answer.json()) == (401, {"error": "unauthenticated"})
    MOBILE.sign_in(app, "ann")
    answer = app.get(f"{PREFIX}/leads")
    assert (answer.status_code, answer.json()) == (409, {"error": "not_connected"})


def test_an_account_without_leads(
    make_stack: Callable[..., Stack], browser: httpx.Client, seen: Seen
) -> None:
    empty = make_stack(leads=0)
    with httpx.Client(base_url=empty.backend, event_hooks={"response": [seen.hook("app")]}) as app:
        visit = _allow(empty, browser, app)
        screen = MOBILE.new_app(app, visit.deep_link)
        assert app.get(f"{PREFIX}/leads").json() == {"leads": []}  # amoCRM's 204
    assert (screen.connected, screen.leads) == (True, ())
    assert empty.fake.api_calls[("/api/v4/leads", "no_content")] == 2


def test_a_browser_signs_in_by_cookie(stack: Stack, browser: httpx.Client) -> None:
    form = {"user": "ann", "next": f"{PREFIX}/connect"}
    answer = browser.post(f"{stack.backend}/login", data=form, headers={"origin": stack.backend})
    assert answer.status_code == 303
    assert answer.headers["location"] == f"{PREFIX}/connect"
    assert "httponly" in answer.headers["set-cookie"].lower()
    connect = browser.get(f"{stack.backend}{PREFIX}/connect")  # the cookie signs it in
    assert connect.status_code == 302
    assert connect.headers["location"].startswith(f"{stack.fake_url}/oauth?")
    # `next` is a local path only: no open redirect.
    for elsewhere in ("https://evil.example/", "//evil.example/", "/\\evil.example/"):
        assert MOBILE.sign_in_browser(browser, stack.backend, "ann", elsewhere) == "/"


#: What a browser says of a sign-in POST that another site's page sent (login CSRF): the
#: ``Origin`` of every current browser (``null`` from a sandboxed frame or a no-referrer page),
#: or, without one, ``Sec-Fetch-Site`` or a ``Referer``; and a form that says nothing.
CROSS_SITE = {
    "origin": {"origin": "http://evil.example"},
    "null origin": {"origin": "null"},
    "fetch site": {"sec-fetch-site": "cross-site"},
    "same site": {"sec-fetch-site": "same-site"},
    "referer": {"referer": "http://evil.example/lure.html"},
    "nothing": {},
}


def test_another_sites_sign_in_form_signs_nobody_in(stack: Stack, browser: httpx.Client) -> None:
    form = {"user": "mallory", "next": f"{PREFIX}/connect"}
    for case, said in CROSS_SITE.items():  # one stack for all: each stack costs a server
        answer = browser.post(f"{stack.backend}/login", data=form, headers=said)
        assert (answer.status_code, answer.json()) == (403, {"error": "cross_site_request"}), case
        assert "set-cookie" not in answer.headers, case
        assert browser.get(f"{stack.backend}{PREFIX}/connect").status_code == 401, case
        # JSON too, had a preflight ever let it through: a browser names the page's site.
        answer = browser.post(f"{stack.backend}/login", json={"user": "mallory"}, headers=said)
        assert (answer.status_code, "set-cookie" in answer.headers) == (
            (403, False) if said else (200, True)  # naming nothing: the app's own sign-in
        ), case
        browser.cookies.clear()


def test_a_sign_in_link_signs_nobody_in(stack: Stack, browser: httpx.Client) -> None:
    """The old ``GET /login?user=...`` (an image or a link on any page) is only the form."""
    lure = {"user": "mallory", "next": f'{PREFIX}/connect"><b>'}
    answer = browser.get(f"{stack.backend}/login", params=lure)
    assert answer.status_code == 200 and "set-cookie" not in answer.headers
    assert '<form method="post" action="/login">' in answer.text
    assert "mallory" not in answer.text  # nothing filled in for the person
    assert f'value="{PREFIX}/connect&quot;&gt;&lt;b&gt;"' in answer.text  # `next`, escaped
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert browser.get(f"{stack.backend}{PREFIX}/connect").status_code == 401


#: What a browser says of a POST from the backend's own page (``{site}``: the backend).
SAME_SITE = {
    "origin": {"origin": "{site}"},
    "fetch site": {"sec-fetch-site": "same-origin"},
    "referer": {"referer": "{site}/login?next=/"},
}


def test_the_sites_own_sign_in_form_signs_in(stack: Stack, browser: httpx.Client) -> None:
    form = {"user": "ann", "next": f"{PREFIX}/connect"}
    for case, said in SAME_SITE.items():
        browser.cookies.clear()
        headers = {name: value.format(site=stack.backend) for name, value in said.items()}
        answer = browser.post(f"{stack.backend}/login", data=form, headers=headers)
        assert (answer.status_code, answer.headers["location"]) == (303, form["next"]), case
        connect = browser.get(f"{stack.backend}{PREFIX}/connect")
        assert connect.status_code == 302, case  # signed in: on to amoCRM's consent page


def test_the_mobile_client_as_a_script(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    for version in ("old", "new"):
        assert MOBILE.main(["--backend", stack.backend, "--version", version]) == 0
    out = capsys.readouterr().out
    assert out.count("The app shows: Connected: Test account") == 2
    assert "exchange-code: 200 (already_connected, duplicate=true)" in out
    assert "def50200" not in out and "eyJ" not in out  # no code, no token
    # The same user ("demo") connected twice: the second is a deliberate re-authorization
    # (a fresh state), so each run exchanged its own code once.
    assert stack.fake.token_calls == {("authorization_code", "ok"): 2}


def test_screens_without_a_backend() -> None:
    """What the apps show from the link alone, without asking the backend."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"unexpected call: {request.method} {request.url.path}")

    with httpx.Client(transport=httpx.MockTransport(refuse), base_url="http://x") as app:
        link = "foryoure://amo-crm/callback"
        assert MOBILE.new_app(app, f"{link}?state=s").message == MOBILE.CODE_MISSING
        assert MOBILE.new_app(app, f"{link}?error=bad_state").message == MOBILE.TRY_AGAIN
        callback = "http://backend/api/amo-crm/callback"
        assert MOBILE.old_app(app, f"{callback}?state=s").message == MOBILE.CODE_MISSING
        assert MOBILE.old_app(app, f"{callback}?error=access_denied").message == MOBILE.TRY_AGAIN


def test_leads_answer_503_with_retry_after_while_amocrm_pushes_back(
    stack: Stack, browser: httpx.Client, app: httpx.Client
) -> None:
    """The reviewer's example: amoCRM answered the refresh 429 (`retry_after: 300`) and the
    example's /leads answered 502 `amocrm_unavailable`, dropping when to come back (the docs'
    recipe let `TryAgainLater` escape: 500). It is a 503 with `Retry-After`, and the calls
    during the back-off send no refresh."""
    visit = _allow(stack, browser, app)
    MOBILE.new_app(app, visit.deep_link)
    stack.fake.expire_access_tokens()  # the next API call is a 401: the auth refreshes
    stack.fake.fail_next("429", grant="refresh_token")
    for _ in range(2):
        answer = app.get(f"{PREFIX}/leads")
        assert (answer.status_code, answer.json()) == (503, {"error": "refresh_backoff"})
        assert 295 <= int(answer.headers["retry-after"]) <= 300 * 1.25  # amoCRM's, jittered
    assert (
        sum(n for (grant, _), n in stack.fake.token_calls.items() if grant == "refresh_token") == 1
    )
