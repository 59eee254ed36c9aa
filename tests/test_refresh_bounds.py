"""Refresh bounds: a short-lived token is not refreshed on every call, one refresh token is
sent at most twice ever, and an API that keeps answering 401 does not get a refresh a call."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

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

from helpers import config_for, run_consent, stored

USER = "user-1"


def connect(fake: FakeAmoCRM, clock: FakeClock, transport: httpx.BaseTransport | None = None):
    oauth = AmoOAuth(
        config_for(fake),
        store=MemoryStore(clock=clock),
        http=httpx.Client(transport=transport or fake.transport()),
        clock=clock,
    )
    result = run_consent(oauth, fake, USER)
    assert result.outcome is Outcome.CONNECTED
    return oauth


def test_a_token_living_2_seconds_is_not_refreshed_on_every_call(
    fake: FakeAmoCRM, clock: FakeClock
) -> None:
    fake.fail_next("override", grant="authorization_code", fields={"expires_in": 2})
    oauth = connect(fake, clock)
    with ThreadPoolExecutor(max_workers=50) as pool:
        tokens = set(pool.map(lambda _: oauth.access_token(USER), range(50)))
    assert (len(tokens), fake.token_call_count("refresh_token")) == (1, 0)
    clock.advance(timedelta(seconds=1.5))  # within half the lifetime of its end: refresh once
    with ThreadPoolExecutor(max_workers=50) as pool:
        tokens = set(pool.map(lambda _: oauth.access_token(USER), range(50)))
    assert (len(tokens), fake.token_call_count("refresh_token")) == (1, 1)


def test_a_refresh_token_whose_answers_are_lost_is_sent_at_most_twice(
    fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = connect(fake, clock)
    record = stored(oauth, USER)
    assert record is not None and record.tokens is not None
    spent = record.tokens.refresh_token
    clock.advance(timedelta(days=1, minutes=1))
    fake.fail_next("lost_answer", times=5, grant="refresh_token")
    for _ in range(2):
        with pytest.raises(ProviderError):
            oauth.access_token(USER)
    with pytest.raises(ReauthorizationRequired):
        oauth.access_token(USER)
    with pytest.raises(ReauthorizationRequired):
        oauth.access_token(USER)
    assert fake.refresh_sends(spent) == 2
    assert oauth.status(USER).status is ConnectionStatus.ERROR


def test_with_kommos_grace_the_second_send_of_a_lost_refresh_connects(
    clock: FakeClock,
) -> None:
    fake = FakeAmoCRM(clock=clock, rate_limit=None, refresh_grace=True)
    oauth = connect(fake, clock)
    clock.advance(timedelta(days=1, minutes=1))
    fake.fail_next("lost_answer", grant="refresh_token")
    with pytest.raises(ProviderError):
        oauth.access_token(USER)
    assert fake.is_access_token_valid(oauth.access_token(USER))
    assert oauth.status(USER).status is ConnectionStatus.CONNECTED


def test_a_refresh_that_never_left_does_not_count_as_a_send(
    fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = connect(fake, clock)
    clock.advance(timedelta(days=1, minutes=1))
    fake.fail_next("timeout_before", times=3, grant="refresh_token")
    for _ in range(3):
        with pytest.raises(ProviderError):
            oauth.access_token(USER)
        clock.advance(timedelta(hours=1, minutes=7))  # past its back-off (issue 19)
    assert fake.is_access_token_valid(oauth.access_token(USER))


class Refusing401(httpx.BaseTransport):
    """amoCRM's API answering 401 to everything; OAuth itself works."""

    def __init__(self, fake: FakeAmoCRM) -> None:
        self.inner = fake.transport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v4/leads":
            return httpx.Response(401, json={"title": "Unauthorized", "status": 401})
        return self.inner.handle_request(request)


def test_an_api_that_keeps_answering_401_gets_at_most_two_refreshes(
    fake: FakeAmoCRM, clock: FakeClock
) -> None:
    transport = Refusing401(fake)
    oauth = connect(fake, clock, transport)
    outcomes: list[int | ProviderError] = []
    with httpx.Client(auth=oauth.auth(USER), transport=transport) as api:
        for _ in range(10):
            try:
                outcomes.append(api.get(f"https://{fake.account_host}/api/v4/leads").status_code)
            except ProviderError as error:
                outcomes.append(error)
    assert fake.token_call_count("refresh_token") <= 2  # was 10
    errors = [o for o in outcomes if isinstance(o, ProviderError)]
    assert outcomes[0] == 401 and len(errors) >= 8
    assert all(error.status == 401 and "refused" in error.hint for error in errors)
    status = oauth.status(USER)
    assert (status.status, status.error) == (ConnectionStatus.CONNECTED, None)  # pair kept


@pytest.mark.parametrize("kind", ["429", "500", "403_html"])
def test_answers_that_did_not_spend_the_token_never_use_up_the_bound(
    fake: FakeAmoCRM, clock: FakeClock, kind: str
) -> None:
    """Found by attack: two 429s (routine under amoCRM's rate limit) used to count as the two
    allowed sends and dropped a pair amoCRM still accepted. Only a lost answer counts."""
    oauth = connect(fake, clock)
    clock.advance(timedelta(days=1, minutes=1))
    fake.fail_next(kind, times=4, grant="refresh_token")  # type: ignore[arg-type]
    for _ in range(4):
        with pytest.raises(ProviderError) as answered:
            oauth.access_token(USER)
        assert answered.value.status is not None  # amoCRM's answer, not a held-back call
        clock.advance(timedelta(hours=1, minutes=10))  # past the back-off (test_backoff.py)
    assert fake.token_call_count("refresh_token") == 4
    assert fake.is_access_token_valid(oauth.access_token(USER))
    assert oauth.status(USER).status is ConnectionStatus.CONNECTED
