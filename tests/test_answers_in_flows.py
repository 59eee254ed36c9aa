"""What amoCRM's answers mean, as the flows act on them: a misconfigured client is said so,
a refresh refused for good is never sent again, anything else keeps the pair. Each failed
exchange or refresh logs one WARNING with the reason and amoCRM's hint, never a secret."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import timedelta
from urllib.parse import urlencode

import httpx
import pytest

from amo_oauth import (
    AmoOAuth,
    ConnectionStatus,
    MemoryStore,
    Outcome,
    ProviderError,
    ReauthorizationRequired,
)
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.web import Handlers, Request

from helpers import config_for, query_of, run_consent

USER = "user-1"
PROBLEM = "application/problem+json"


class Refusing(httpx.BaseTransport):
    """The fake, except that refresh grants get ``answer`` (counted)."""

    def __init__(self, fake: FakeAmoCRM, answer: Callable[[], httpx.Response]) -> None:
        self.inner = fake.transport()
        self.answer: Callable[[], httpx.Response] | None = answer
        self.refresh_sends: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth2/access_token":
            body = json.loads(request.content)
            if body.get("grant_type") == "refresh_token":
                self.refresh_sends.append(body["refresh_token"])
                if self.answer is not None:
                    return self.answer()
        return self.inner.handle_request(request)


def problem(code: int, **fields: object) -> Callable[[], httpx.Response]:
    return lambda: httpx.Response(code, json=fields, headers={"content-type": PROBLEM})


def html(status: int) -> Callable[[], httpx.Response]:
    return lambda: httpx.Response(status, text="<html>nginx</html>")


def connected(fake: FakeAmoCRM, clock: FakeClock, transport: httpx.BaseTransport) -> AmoOAuth:
    oauth = AmoOAuth(
        config_for(fake),
        store=MemoryStore(clock=clock),
        http=httpx.Client(transport=transport),
        clock=clock,
    )
    result = run_consent(oauth, fake, USER)
    assert result.outcome is Outcome.CONNECTED
    clock.advance(timedelta(days=1, minutes=1))  # the access token has expired
    return oauth


def secrets_of(fake: FakeAmoCRM, sends: list[str]) -> list[str]:
    return [fake.client_secret, *sends]


@pytest.mark.parametrize(
    "refusal",
    [
        problem(400, error="invalid_grant"),
        problem(401, hint="Cannot decrypt the refresh token", status=401),
        problem(401, hint="Token has been revoked", status=401),
    ],
    ids=["invalid_grant", "undecryptable", "revoked"],
)
def test_a_refresh_refused_for_good_is_never_sent_again(
    fake: FakeAmoCRM,
    clock: FakeClock,
    refusal: Callable[[], httpx.Response],
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = Refusing(fake, refusal)
    oauth = connected(fake, clock, transport)
    for _ in range(5):
        with pytest.raises(ReauthorizationRequired) as failed:
            oauth.access_token(USER)
        assert failed.value.reason == "reauthorization_required"
    assert len(transport.refresh_sends) == 1  # was 5 sends in 5 calls
    status = oauth.status(USER)
    assert status.status is ConnectionStatus.ERROR
    assert status.error is not None and status.error.reason == "reauthorization_required"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "refresh failed" in warnings[0].getMessage()
    for secret in secrets_of(fake, transport.refresh_sends):
        assert secret not in caplog.text


@pytest.mark.parametrize(
    "answer",
    [html(403), problem(403, title="Forbidden"), html(503), problem(429, title="Too Many")],
    ids=["403-html", "403-blocked", "503", "429"],
)
def test_a_refresh_that_is_not_the_tokens_fault_keeps_the_pair(
    fake: FakeAmoCRM, clock: FakeClock, answer: Callable[[], httpx.Response]
) -> None:
    transport = Refusing(fake, answer)
    oauth = connected(fake, clock, transport)
    with pytest.raises(ProviderError) as failed:
        oauth.access_token(USER)
    assert failed.value.transient
    status = oauth.status(USER)
    assert (status.status, status.error) == (ConnectionStatus.CONNECTED, None)
    transport.answer = None  # amoCRM answers again: the kept pair refreshes
    clock.advance(timedelta(minutes=6))  # once the back-off lapses (test_backoff.py)
    assert fake.is_access_token_valid(oauth.access_token(USER))
    assert len(transport.refresh_sends) == 2 and len(set(transport.refresh_sends)) == 1


def test_a_misconfigured_redirect_uri_is_said_so(
    fake: FakeAmoCRM, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    oauth = AmoOAuth(
        config_for(fake, redirect_uri="https://elsewhere.example/callback"),
        store=MemoryStore(clock=clock),
        http=httpx.Client(transport=fake.transport()),
        clock=clock,
    )
    begun = oauth.begin(USER)
    query = query_of(fake.authorize(begun.state))
    result = oauth.handle_callback(query, binding=begun.binding)
    assert result.outcome is Outcome.FAILED
    error = result.connection.error
    assert error is not None and error.reason == "client_misconfigured"
    assert error.hint == "Redirect URI is not associated with client"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    line = warnings[0].getMessage()
    assert "bad_redirect_uri" in line and "Redirect URI is not associated" in line
    assert query["code"] not in caplog.text and fake.client_secret not in caplog.text
    # The page says the integration is misconfigured, not "try again".
    handlers = Handlers(oauth, connection_id=lambda _: USER, app_scheme="app")
    begun = oauth.begin(USER)
    again = query_of(fake.authorize(begun.state))
    cookie = {"cookie": f"__Host-amo_oauth_binding={begun.binding}"}  # the same browser
    page = handlers.handle(Request("GET", "/api/amo-crm/callback", urlencode(again), cookie))
    assert "misconfigured" in page.text and "try again" not in page.text
    assert "error=client_misconfigured" in page.text


@pytest.mark.parametrize(
    ("client", "reason"),
    [({"client_secret": "wrong-secret"}, "client_misconfigured")],
)
def test_a_wrong_client_secret_is_a_misconfiguration(
    fake: FakeAmoCRM, clock: FakeClock, client: dict[str, str], reason: str
) -> None:
    oauth = AmoOAuth(
        config_for(fake, **client),
        store=MemoryStore(clock=clock),
        http=httpx.Client(transport=fake.transport()),
        clock=clock,
    )
    result = run_consent(oauth, fake, USER)
    assert result.connection.error is not None
    assert result.connection.error.reason == reason


def test_out_of_range_values_never_escape_as_a_crash(
    fake: FakeAmoCRM, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue: expires_in of 1e400 or a non-ASCII access token escaped handle_callback as
    OverflowError / UnicodeEncodeError and left the record claimed (FastAPI answered 500)."""
    from amo_oauth.testing import RawJSON

    oauth = AmoOAuth(
        config_for(fake),
        store=MemoryStore(clock=clock),
        http=httpx.Client(transport=fake.transport()),
        clock=clock,
    )
    fake.fail_next("override", grant="authorization_code", fields={"expires_in": RawJSON("1e400")})
    clamped = run_consent(oauth, fake, USER)
    assert clamped.outcome is Outcome.CONNECTED  # clamped to the bound, the pair kept
    assert clamped.connection.expires_at is not None
    assert clamped.connection.expires_at - clock() <= timedelta(days=3650)
    assert "expires_in" in caplog.text
    oauth.disconnect(USER)
    fake.fail_next("override", grant="authorization_code", fields={"access_token": "токен"})
    unusable = run_consent(oauth, fake, USER)
    assert unusable.outcome is Outcome.FAILED  # a defined state, not a 500
    assert unusable.connection.error is not None
    assert unusable.connection.error.reason == "code_rejected"
    handlers = Handlers(oauth, connection_id=lambda _: USER, app_scheme="app")
    fake.fail_next("override", grant="authorization_code", fields={"expires_in": RawJSON("1e18")})
    begun = oauth.begin(USER)
    again = query_of(fake.authorize(begun.state))
    cookie = {"cookie": f"__Host-amo_oauth_binding={begun.binding}"}  # the same browser
    page = handlers.handle(Request("GET", "/api/amo-crm/callback", urlencode(again), cookie))
    assert page.status == 200


def test_a_trickling_answer_is_cut_at_http_timeout_over_real_http(clock: FakeClock) -> None:
    """Issue: an answer trickling in (a chunk every 0.2 s with http_timeout=1) took 6 s, past
    the lease, and a second worker sent the same refresh token. http_timeout now bounds the
    whole call, so lease_ttl > 3 x http_timeout really holds."""
    from amo_oauth.testing import LoopbackTransport

    fake = FakeAmoCRM(clock=clock, rate_limit=None)
    with fake.serve() as served:
        http = httpx.Client(transport=LoopbackTransport.to(served.url, domain=fake.domain))
        oauth = AmoOAuth(
            config_for(fake, http_timeout=1.0),
            store=MemoryStore(clock=clock),
            http=http,
            clock=clock,
        )
        run_consent(oauth, fake, USER)
        clock.advance(timedelta(days=1, minutes=1))
        fake.fail_next("slow_body", grant="refresh_token", chunk_size=4, every=0.2)
        with pytest.raises(ProviderError) as slow:
            oauth.access_token(USER)
        assert slow.value.transient and "within 1" in slow.value.hint
        http.close()
