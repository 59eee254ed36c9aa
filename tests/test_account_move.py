"""An account renamed or moved: the refresh answers "Invalid account" (rename) or 404 (move);
the library asks amoCRM's lookup where it lives now, accepts the host only through the
allowlist, stores it with the refreshed pair in one write, and retries the refresh once."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from amo_oauth import (
    AmoOAuth,
    ConnectionStatus,
    MemoryStore,
    ProviderError,
    ReauthorizationRequired,
)
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import config_for, run_consent, stored

USER = "user-1"


def connected(oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock) -> str:
    run_consent(oauth, fake, USER)
    record = stored(oauth, USER)
    assert record is not None and record.tokens is not None
    clock.advance(timedelta(days=1, minutes=1))
    return record.tokens.refresh_token


@pytest.mark.parametrize("how", ["rename", "move"])
def test_a_renamed_or_moved_account_is_followed(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock, how: str
) -> None:
    spent = connected(oauth, fake, clock)
    old_host = fake.account_host
    if how == "rename":
        moved = fake.rename_account(None, "renamed")
    else:
        moved = fake.move_account(None, domain="kommo.com")
    token = oauth.access_token(USER)
    assert fake.is_access_token_valid(token)
    status = oauth.status(USER)
    assert (status.status, status.host) == (ConnectionStatus.CONNECTED, moved.host)
    assert status.host != old_host
    assert fake.refresh_sends(spent, host=moved.host) == 1  # one retry on the new host
    assert fake.refresh_sends(spent) == 2  # the refused one on the old host, and the retry


def test_a_failed_lookup_leaves_connected_with_a_clear_reason(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    connected(oauth, fake, clock)
    fake.move_account(None, domain="kommo.com")
    fake.fail_next("500", endpoint="lookup")  # amoCRM did not say: the pair is kept
    with pytest.raises(ProviderError) as unsure:
        oauth.access_token(USER)
    assert unsure.value.transient
    assert oauth.status(USER).status is ConnectionStatus.CONNECTED
    # The lookup's answer holds refreshes back (test_backoff.py); the next try follows it.
    assert unsure.value.retry_after is not None
    clock.advance(timedelta(seconds=unsure.value.retry_after + 1))
    assert fake.is_access_token_valid(oauth.access_token(USER))
    fake.move_account(None, domain="amocrm.com")
    fake.revoke_refresh_tokens()  # now the lookup refuses for good (401)
    clock.advance(timedelta(days=1, minutes=1))
    with pytest.raises(ReauthorizationRequired) as needed:
        oauth.access_token(USER)
    assert needed.value.reason == "account_moved"
    status = oauth.status(USER)
    assert status.status is ConnectionStatus.ERROR
    assert status.error is not None and status.error.reason == "account_moved"


def test_a_lookup_naming_a_foreign_host_is_not_followed(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    spent = connected(oauth, fake, clock)
    fake.move_account(None, domain="kommo.com")
    fake.fail_next("override", endpoint="lookup", fields={"domain": "evil.example"})
    with pytest.raises(ReauthorizationRequired) as needed:
        oauth.access_token(USER)
    assert needed.value.reason == "account_moved"
    assert fake.refresh_sends(spent) == 1  # nothing went to the foreign host
    assert all(request.host != "evil.example" for request in fake.requests)


def test_a_token_without_the_api_domain_claim_cannot_be_followed(clock: FakeClock) -> None:
    fake = FakeAmoCRM(clock=clock, rate_limit=None, api_domain_claim=False)
    oauth = AmoOAuth(
        config_for(fake),
        store=MemoryStore(clock=clock),
        http=httpx.Client(transport=fake.transport()),
        clock=clock,
    )
    connected(oauth, fake, clock)
    fake.rename_account(None, "renamed")
    with pytest.raises(ReauthorizationRequired) as needed:
        oauth.access_token(USER)
    assert needed.value.reason == "account_moved"
    assert sum(fake.lookup_calls.values()) == 0
