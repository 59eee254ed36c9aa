"""Attacks on the browser binding, the mobile tickets and the state (issue 9, RFC 9700 §4.2-4.16):
each test is an attack that must fail, written as the attacker would try it."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import ModuleType
from urllib.parse import urlsplit

import pytest

from amo_oauth import AmoOAuth, CallbackRejected, ConnectionStatus, Outcome
from amo_oauth._binding import parse_binding
from amo_oauth.stores import MemoryStore
from amo_oauth.testing import FakeAmoCRM
from amo_oauth.web import Handlers
from e2e_support import FASTAPI, FLASK
from test_browser_binding import MALLORY, VICTIM, as_user, user_from_header
from test_web import PREFIX, deep_link, sender

from helpers import config_for, consent, query_of


@pytest.fixture
def routes(oauth: AmoOAuth) -> Handlers:
    return Handlers(oauth, connection_id=user_from_header, app_scheme="foryoure")


def mallorys_ticket_url(routes: Handlers) -> tuple[str, str]:
    """Mallory asks her backend, as her app does, for a ticket URL: (path, query)."""
    her_app = sender(routes)
    asked = her_app("GET", f"{PREFIX}/connect", query="format=json", headers=as_user(MALLORY))
    url = urlsplit(asked.json()["url"])
    return url.path, url.query


def assert_mallory_untouched(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    mallory = oauth.status(MALLORY)
    assert (mallory.status, mallory.account) == (ConnectionStatus.DISCONNECTED, None)
    assert fake.token_call_count() == 0


@pytest.mark.parametrize("fetch_site", ["cross-site", "same-site"])
def test_a_forwarded_ticket_link_opened_from_another_site_is_refused(
    routes: Handlers, oauth: AmoOAuth, fake: FakeAmoCRM, fetch_site: str
) -> None:
    """A ticket URL is a bearer link: forwarded (or minted on demand behind a redirector on
    Mallory's site) it would bind the victim's browser to Mallory's consent, and the victim's
    "Allow" would connect the victim's account to Mallory. A browser navigating from another
    site says so (Sec-Fetch-Site); an in-app browser opening the URL says ``none``."""
    path, query = mallorys_ticket_url(routes)
    victim = sender(routes)
    navigation = {"sec-fetch-site": fetch_site, "sec-fetch-mode": "navigate"}
    opened = victim("GET", path, query=query, headers=navigation)
    # A page (a browser is looking) whose button reports the refusal to the app.
    assert (opened.status, deep_link(opened)[1]) == (400, {"error": "cross_site_request"})
    assert "set-cookie" not in opened.headers and "location" not in opened.headers
    assert_mallory_untouched(oauth, fake)
    # Not consumed: the in-app browser the app opens it in (typed-URL navigation) still can.
    in_app = sender(routes)("GET", path, query=query, headers={"sec-fetch-site": "none"})
    assert in_app.status == 302


def test_a_ticket_opened_from_the_apps_own_page_is_redeemed(routes: Handlers) -> None:
    path, query = mallorys_ticket_url(routes)
    opened = sender(routes)("GET", path, query=query, headers={"sec-fetch-site": "same-origin"})
    assert opened.status == 302


def test_a_ticket_opened_where_another_user_is_signed_in_is_refused(
    routes: Handlers, oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    """The victim, signed in to the app, opens Mallory's ticket: the ticket must not win over the
    session (it would replace the victim's binding cookie and start Mallory's consent here)."""
    path, query = mallorys_ticket_url(routes)
    victim = sender(routes)
    own = victim("GET", f"{PREFIX}/connect", headers=as_user(VICTIM))
    assert own.status == 302
    opened = victim("GET", path, query=query, headers=as_user(VICTIM))
    assert (opened.status, deep_link(opened)[1]) == (403, {"error": "wrong_browser"})
    assert "set-cookie" not in opened.headers
    assert_mallory_untouched(oauth, fake)
    # The victim's own consent, started first, still completes in this browser.
    redirect = fake.authorize(query_of(own.headers["location"])["state"])
    page = victim("GET", f"{PREFIX}/callback", query=urlsplit(redirect).query)
    assert page.status == 200
    assert oauth.status(VICTIM).is_connected and not oauth.status(MALLORY).is_connected


def test_the_ticket_of_the_signed_in_user_is_redeemed(routes: Handlers) -> None:
    path, query = mallorys_ticket_url(routes)
    opened = sender(routes)("GET", path, query=query, headers=as_user(MALLORY))
    assert opened.status == 302


@pytest.mark.parametrize("suffix", ["==", "(){}"])
def test_a_binding_in_any_other_form_than_the_librarys_counts_as_none(
    routes: Handlers, suffix: str
) -> None:
    """A second /connect keeps the browser's binding and sends it back in Set-Cookie; a lenient
    base64 decoder (stray characters, padding skipped) would let the browser's own bytes travel
    back out. Only the form the library writes is a binding."""
    first = sender(routes)("GET", f"{PREFIX}/connect", headers=as_user(MALLORY))
    name, _, value = first.headers["set-cookie"].split(";")[0].partition("=")
    assert parse_binding(value) is not None
    assert parse_binding(value + suffix) is None
    noisy = {**as_user(MALLORY), "cookie": f"{name}={value}{suffix}"}
    again = sender(routes)("GET", f"{PREFIX}/connect", headers=noisy)
    sent = again.headers["set-cookie"].split(";")[0].partition("=")[2]
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", sent) and sent != value


def test_a_ticket_is_single_use_when_the_stores_clock_runs_ahead(
    make_oauth: Callable[..., AmoOAuth],
) -> None:
    """The store forgets a used ticket (or state) by its own clock. Two minutes ahead of the
    app's, it would forget a one-minute ticket at once, and the ticket would redeem twice; used
    tickets and states are remembered ``LEDGER_SKEW`` longer than they live."""
    ahead = MemoryStore(clock=lambda: datetime.now(UTC) + timedelta(seconds=120))
    oauth = make_oauth(store=ahead)
    ticket = oauth.issue_ticket(MALLORY)
    assert oauth.redeem_ticket(ticket) == MALLORY
    with pytest.raises(CallbackRejected) as caught:
        oauth.redeem_ticket(ticket)
    assert caught.value.reason == "used_ticket"


@pytest.mark.parametrize("example", [FASTAPI, FLASK], ids=["fastapi", "flask"])
@pytest.mark.parametrize(
    "then",
    ["//evil.example", "/\\evil.example", "/\t/evil.example", "/\n/evil.example", "/\r/x", "/\\/x"],
)
def test_the_examples_login_redirects_only_to_a_local_path(example: ModuleType, then: str) -> None:
    """Browsers drop tabs and newlines from a URL and read a backslash as a slash, so each of
    these leads to another host (Werkzeug itself turns "/\\t/evil.example" into "//evil...")."""
    assert not example._is_local_path(then)


@pytest.mark.parametrize("example", [FASTAPI, FLASK], ids=["fastapi", "flask"])
def test_the_examples_login_keeps_a_local_path(example: ModuleType) -> None:
    assert example._is_local_path(f"{PREFIX}/connect?x=1")


def test_a_flood_of_widget_installs_leaves_the_users_their_exchanges(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """Widget installs need no session and no state: anyone can send them, to many account
    hosts. They take at most half of the process's bound on code exchanges, so a flood of them
    never leaves the app's users rate_limited."""
    oauth = make_oauth(allow_widget_installs=True, max_exchanges_per_process=8)
    reasons = []
    for n in range(40):
        install = query_of(fake.authorize(from_widget=True))
        install = {**install, "code": f"bogus-{n}", "referer": f"shop{n % 10}.amocrm.ru"}
        try:
            reasons.append(oauth.handle_callback(install).outcome.value)
        except CallbackRejected as rejected:
            reasons.append(rejected.reason)
    assert (reasons.count("rate_limited"), fake.token_call_count("authorization_code")) == (36, 4)
    for user in ("ann", "bob", "cid", "dan"):
        query, binding = consent(oauth, fake, user)
        assert oauth.handle_callback(query, binding=binding).outcome is Outcome.CONNECTED


@pytest.mark.parametrize("ttl", [timedelta(minutes=11), timedelta(days=1)])
def test_a_ticket_cannot_be_made_into_a_long_lived_bearer_link(
    fake: FakeAmoCRM, ttl: timedelta
) -> None:
    """A ticket is good for whoever opens it first: a day-long one would be a consent link to
    forward at leisure."""
    with pytest.raises(ValueError, match="ticket_ttl"):
        config_for(fake, ticket_ttl=ttl)
    assert config_for(fake, ticket_ttl=timedelta(minutes=10)).ticket_ttl == timedelta(minutes=10)
