"""RFC 9700 §4.5, authorization code injection: what holds, what cannot, what shrinks the window.

amoCRM has no PKCE: a code is bound to the client and its redirect URI, not to the consent that
produced it. So a stolen code that is still **unused**, sent by the thief through his own consent
(his own fresh state, his own browser binding), is exchanged for him: nothing on the callback can
tell it from his own code. These tests pin that limit down as docs/security.md states it, and
prove what keeps the window short: the first callback spends the code at once (a code already
spent is refused under anyone else's state), and the callback page sends no ``Referer``, in every
adapter (``callback_page_sends_no_referrer``, run by each adapter's test file).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

import pytest

from amo_oauth import AmoOAuth
from amo_oauth.testing import FakeAmoCRM
from amo_oauth.web import Handlers
from test_web import PREFIX, CookieJar, Send, connect_state, deep_link, parse_page, sender

from helpers import query_of

VICTIM = "victim"
MALLORY = "mallory"


def _browser(handlers: Handlers) -> Send:
    """A browser of its own: its own cookie jar, so its own binding."""
    return sender(handlers, CookieJar())


def _handlers(oauth: AmoOAuth) -> Handlers:
    return Handlers(oauth, connection_id=lambda request: request.header("x-user"), app_scheme="app")


def _callback(browser: Send, redirect: dict[str, str]) -> tuple[int, dict[str, str]]:
    """The callback with ``redirect``'s query: its status and its deep link's query."""
    answer = browser("GET", f"{PREFIX}/callback", query=urlencode(redirect))
    return answer.status, deep_link(answer)[1]


def _status(browser: Send, user: str) -> dict[str, object]:
    answer = browser("GET", f"{PREFIX}/status", headers={"x-user": user})
    payload: dict[str, object] = answer.json()
    return payload


def _steal_an_unused_code(victim: Send, fake: FakeAmoCRM) -> dict[str, str]:
    """The victim begins and presses "Allow"; her redirect is seen (a log, a screen share)
    before her browser lands on the callback. Returns her redirect's query."""
    return query_of(fake.authorize(connect_state(victim, VICTIM)))


def _inject(mallory: Send, stolen: dict[str, str]) -> tuple[int, dict[str, str]]:
    """Mallory sends the stolen code through a consent of his own: his state, his binding."""
    return _callback(mallory, {**stolen, "state": connect_state(mallory, MALLORY)})


def test_a_stolen_unused_code_under_the_thiefs_own_consent_connects_him(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    """The documented limit, exactly: 200 ``success=true`` for the thief, the victim's account
    on his connection, and the victim's own callback then refused. Without PKCE nothing on the
    callback can tell the two apart; the window is the code's life until its first use."""
    handlers = _handlers(oauth)
    victim, mallory = _browser(handlers), _browser(handlers)
    stolen = _steal_an_unused_code(victim, fake)
    status, link = _inject(mallory, stolen)
    assert (status, link["success"]) == (200, "true")
    assert _status(mallory, MALLORY)["account"] == {
        "id": fake.account_id,
        "subdomain": fake.account_host.split(".")[0],
        "name": fake.account_name,
    }
    status, link = _callback(victim, stolen)  # her browser lands, a moment too late
    assert (status, link["error"], "success" in link) == (200, "disconnected", False)
    assert _status(victim, VICTIM)["connected"] is False
    assert fake.token_calls == {("authorization_code", "ok"): 1}


def test_a_code_spent_by_its_first_callback_cannot_be_injected(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    """What shrinks the window: the first callback exchanges the code before it answers, so a
    code read from the page's URL, history or a log afterwards is a known code: under anyone
    else's consent it connects nothing and sends nothing."""
    handlers = _handlers(oauth)
    victim, mallory = _browser(handlers), _browser(handlers)
    stolen = _steal_an_unused_code(victim, fake)
    assert _callback(victim, stolen) == (200, {"success": "true", "state": stolen["state"]})
    assert fake.token_calls == {("authorization_code", "ok"): 1}  # spent, before the answer
    status, link = _inject(mallory, stolen)
    # Answered from reads as a known code that his connection never held: nothing connected.
    assert (status, link["error"], "success" in link) == (200, "disconnected", False)
    assert _status(mallory, MALLORY)["connected"] is False
    assert _status(victim, VICTIM)["connected"] is True
    assert fake.token_calls == {("authorization_code", "ok"): 1}


@pytest.mark.parametrize("refusal", ["wrong_browser", "rate_limited"])
def test_a_code_a_refused_callback_left_unused_can_still_be_injected(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, refusal: str
) -> None:
    """A refused callback writes nothing and sends nothing: its code stays unused (amoCRM
    keeps it 20 minutes), so the injection above still works with it."""
    budget = {"max_exchanges_per_connection": 1} if refusal == "rate_limited" else {}
    oauth = make_oauth(**budget)
    handlers = _handlers(oauth)
    victim, mallory = _browser(handlers), _browser(handlers)
    if refusal == "rate_limited":  # her one exchange of the window, spent on an earlier consent
        assert _callback(victim, _steal_an_unused_code(victim, fake))[0] == 200
    stolen = _steal_an_unused_code(victim, fake)
    browser = _browser(handlers) if refusal == "wrong_browser" else victim
    assert _callback(browser, stolen)[1]["error"] == refusal
    calls_before = fake.token_call_count()
    status, link = _inject(mallory, stolen)
    assert (status, link["success"]) == (200, "true")
    assert fake.token_call_count() == calls_before + 1
    assert _status(mallory, MALLORY)["connected"] is True


def callback_page_sends_no_referrer(send: Send, fake: FakeAmoCRM) -> None:
    """The callback page, answered and refused, never makes its URL (which holds the code) a
    ``Referer``: the header, the page's ``<meta name="referrer">``, its link's ``rel``. Each
    adapter's test file runs this through its own framework (a framework's own default, e.g.
    Django's ``SECURE_REFERRER_POLICY``, must not replace it)."""
    redirect = fake.authorize(connect_state(send))
    code = query_of(redirect)["code"]
    for query in (urlencode(query_of(redirect)), urlencode({"code": code, "state": "forged"})):
        answer = send("GET", f"{PREFIX}/callback", query=query)
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert parse_page(answer.text).metas["referrer"] == "no-referrer"
        assert 'rel="noreferrer"' in answer.text


def test_the_handlers_callback_page_sends_no_referrer(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    callback_page_sends_no_referrer(_browser(_handlers(oauth)), fake)
