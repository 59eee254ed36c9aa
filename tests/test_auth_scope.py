"""``auth()`` sends a connection's bearer token only to https requests to that connection's
own account host (RFC 9700 §4.1.1's spirit: a token for one resource server); a 401 from
anywhere else refreshes nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import httpx
import pytest

from amo_oauth import AmoOAuth, TokenScopeError
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import run_consent

USER = "alice"


class Recording(httpx.BaseTransport):
    """The fake for its hosts; anything else is recorded and answered 401 (an attacker's
    server keeps asking for a "fresh" token)."""

    def __init__(self, fake: FakeAmoCRM) -> None:
        self.inner = fake.transport()
        self.fake = fake
        self.elsewhere: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v4/redirect":
            return httpx.Response(302, headers={"location": "https://evil.example/steal"})
        if request.url.host.endswith(self.fake.domain):
            return self.inner.handle_request(request)
        self.elsewhere.append(request)
        return httpx.Response(401)


@pytest.fixture
def connected(make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM) -> AmoOAuth:
    oauth = make_oauth()
    run_consent(oauth, fake, USER)
    return oauth


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/",
        "http://{host}/api/v4/leads",  # in clear
        "https://other.amocrm.ru/api/v4/leads",  # another account on the same domain
        "https://{host}:8443/api/v4/leads",
        "https://{host}.evil.example/api/v4/leads",
    ],
)
def test_the_token_goes_nowhere_but_the_accounts_host(
    connected: AmoOAuth, fake: FakeAmoCRM, url: str
) -> None:
    transport = Recording(fake)
    api = httpx.Client(auth=connected.auth(USER), transport=transport)
    with api, pytest.raises(TokenScopeError, match="only https://"):
        api.get(url.format(host=fake.account_host))
    assert transport.elsewhere == []
    assert fake.token_call_count("refresh_token") == 0


def test_the_accounts_host_gets_it(connected: AmoOAuth, fake: FakeAmoCRM) -> None:
    with httpx.Client(auth=connected.auth(USER), transport=fake.transport()) as api:
        assert api.get(f"https://{fake.account_host}/api/v4/account").status_code == 200


def test_a_401_after_a_redirect_elsewhere_refreshes_nothing(
    connected: AmoOAuth, fake: FakeAmoCRM
) -> None:
    transport = Recording(fake)
    client = httpx.Client(auth=connected.auth(USER), transport=transport, follow_redirects=True)
    with client as api:
        answer = api.get(f"https://{fake.account_host}/api/v4/redirect")
    assert answer.status_code == 401
    assert fake.token_call_count("refresh_token") == 0  # was: one refresh per 401
    assert all("authorization" not in r.headers for r in transport.elsewhere)


def test_after_an_account_move_the_old_host_is_refused(
    connected: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    old = fake.account_host
    moved = fake.move_account(None, domain="kommo.com")
    clock.advance(timedelta(days=1, minutes=1))  # the next token follows the move
    with httpx.Client(auth=connected.auth(USER), transport=fake.transport()) as api:
        assert api.get(f"https://{moved.host}/api/v4/account").status_code == 200
        with pytest.raises(TokenScopeError):
            api.get(f"https://{old}/api/v4/account")
