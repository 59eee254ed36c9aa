"""A pair from a spent code is never thrown away because verification failed for a moment:
the connection stays ``exchanged``, the next try's time is stored in the record (one backoff for
every process), and the next status, callback duplicate or token request verifies it."""

from __future__ import annotations

from datetime import timedelta

import attrs
import pytest

from amo_oauth import AmoOAuth, ConnectionStatus, Outcome, TryAgainLater
from amo_oauth._ops import Send, StoreOp
from amo_oauth._pace import Pacer
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import query_of, run_consent, stored

USER = "user-1"
ACCOUNT = "/api/v4/account"


def account_calls(fake: FakeAmoCRM) -> int:
    return sum(1 for request in fake.requests if request.path == ACCOUNT)


@pytest.mark.parametrize("fault", ["500", "429", "403_html"])
def test_a_transient_verification_failure_keeps_the_pair(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock, fault: str
) -> None:
    fake.fail_next(fault, endpoint="api", path=ACCOUNT)  # type: ignore[arg-type]
    begun = oauth.begin(USER)
    query = query_of(fake.authorize(begun.state))
    result = oauth.handle_callback(query, binding=begun.binding)
    assert (result.outcome, result.connection.status) == (
        Outcome.IN_PROGRESS,
        ConnectionStatus.EXCHANGED,
    )
    record = stored(oauth, USER)
    assert record is not None and record.tokens is not None and record.verify_after is not None
    calls = account_calls(fake)
    assert oauth.status(USER).status is ConnectionStatus.EXCHANGED  # not due: no network I/O
    assert account_calls(fake) == calls
    with pytest.raises(TryAgainLater) as pending:
        oauth.access_token(USER)
    assert pending.value.transient and account_calls(fake) == calls
    assert pending.value.reason == "verification_deferred"
    assert pending.value.retry_after is not None and pending.value.retry_after > 0
    during = oauth.handle_callback(query)  # a replay during the back-off: answered, not raised
    assert (during.duplicate, during.connection.status) == (True, ConnectionStatus.EXCHANGED)
    assert account_calls(fake) == calls
    clock.advance(timedelta(seconds=5))
    if fault != "500":  # amoCRM's 429 or 403 paused the host: the next try awaits its end
        assert oauth.status(USER).status is ConnectionStatus.EXCHANGED
        assert account_calls(fake) == calls
        record = stored(oauth, USER)
        assert record is not None and record.verify_after is not None
        # A 429's retry_after (300 s), a blocked account's minute: was 5 s, into the pause.
        left = {"429": 295, "403_html": 55}[fault]
        assert record.verify_after - clock() == timedelta(seconds=left)
        oauth._pace = attrs.evolve(oauth._pace, pacer=Pacer())  # the pause is over
        clock.advance(timedelta(seconds=left))
    assert oauth.status(USER).status is ConnectionStatus.CONNECTED  # due: verified now
    assert fake.token_call_count("authorization_code") == 1
    assert fake.is_access_token_valid(oauth.access_token(USER))
    replay = oauth.handle_callback(query)
    assert (replay.outcome, replay.duplicate) == (Outcome.ALREADY_CONNECTED, True)


def test_the_backoff_grows_and_is_shared_through_the_record(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    fake.fail_next("500", times=3, endpoint="api", path=ACCOUNT)
    run_consent(oauth, fake, USER)
    waits = []
    for _ in range(2):
        record = stored(oauth, USER)
        assert record is not None and record.verify_after is not None
        waits.append(record.verify_after - clock())
        clock.advance(record.verify_after - clock())
        oauth.status(USER)
    assert waits == [timedelta(seconds=5), timedelta(seconds=10)]
    clock.advance(timedelta(seconds=20))
    assert oauth.status(USER).status is ConnectionStatus.CONNECTED


def test_a_definite_refusal_still_fails_verification(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    fake.expire_access_tokens_on_issue = (
        True if hasattr(fake, "expire_access_tokens_on_issue") else None
    )
    fake.fail_next("override", endpoint="api", path=ACCOUNT, fields={"id": 2**70})
    result = run_consent(oauth, fake, USER)
    assert result.outcome is Outcome.FAILED
    assert result.connection.error is not None
    assert result.connection.error.reason == "verify_failed"


def test_a_lease_that_lapses_after_the_pair_was_stored_keeps_the_pair(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """The worker died between storing the pair and verifying it: the pair is kept and the
    next caller verifies (only a lease lapsing before the pair is stored is the end)."""
    begun = oauth.begin(USER)
    flow = oauth._flows.codes.handle_callback(
        query_of(fake.authorize(begun.state)), binding=begun.binding
    )
    store = oauth.store
    item = next(flow)
    sends = 0
    while True:
        if isinstance(item, StoreOp):
            item = flow.send(item.run(store))
        elif isinstance(item, Send):
            sends += 1
            if sends == 2:  # the account check: the worker dies here
                break
            item = flow.send(oauth.http.send(item.request))
    flow.close()
    assert oauth.status(USER).status is ConnectionStatus.EXCHANGED  # its lease is still live
    clock.advance(oauth.config.lease_ttl + timedelta(seconds=1))
    status = oauth.status(USER)
    assert (status.status, status.error) == (ConnectionStatus.CONNECTED, None)
    assert fake.token_call_count("authorization_code") == 1


def test_an_account_that_is_not_the_codes_hosts_is_not_connected(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    """Defence in depth: the first verification checks that the account's subdomain is the
    one of the ``referer`` host the code came with (the answer has no domain field)."""
    fake.fail_next("override", endpoint="api", path=ACCOUNT, fields={"subdomain": "someone"})
    result = run_consent(oauth, fake, USER)
    assert result.outcome is Outcome.FAILED
    assert result.connection.error is not None
    assert result.connection.error.reason == "verify_failed"
    assert "not the one of the code's host" in (result.connection.error.hint or "")
    assert result.connection.account is None


def test_a_verification_retried_after_the_access_token_expired_renews_the_pair(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """Nobody called for a day after a deferred verification: the access token has expired,
    so the retry renews the pair with its refresh token and verifies, losing nothing."""
    fake.fail_next("500", endpoint="api", path=ACCOUNT)
    run_consent(oauth, fake, USER)
    clock.advance(timedelta(days=1, seconds=10))
    status = oauth.status(USER)
    assert (status.status, status.error) == (ConnectionStatus.CONNECTED, None)
    assert fake.token_call_count("refresh_token") == 1
    assert fake.is_access_token_valid(oauth.access_token(USER))
