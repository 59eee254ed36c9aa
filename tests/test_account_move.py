"""An account renamed or moved: the refresh answers "Invalid account" (rename) or 404 (move);
the library asks amoCRM's lookup where it lives now, accepts the host only through the
allowlist, stores it with the refreshed pair in one write, and retries the refresh once.

The retry's pair is the only valid one, as any rotated pair: lost (its answer, or its worker),
it is awaited for ``Config.kept_pair_grace`` before anyone is told to re-authorize; refused by
the store, it is kept in memory and lands, with the new host.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import httpx
import pytest

from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    AsyncStore,
    ConnectionRecord,
    ConnectionStatus,
    MemoryStore,
    ProviderError,
    ReauthorizationRequired,
    Store,
    StoreError,
    TryAgainLater,
)
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.testing.faults import AsyncFaultyStore, FaultyStore

from helpers import config_for, query_of, run_consent, stored

USER = "user-1"
OTHER = "user-2"
LEASE = timedelta(seconds=60)


def connected(oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock) -> str:
    run_consent(oauth, fake, USER)
    record = stored(oauth, USER)
    assert record is not None and record.tokens is not None
    assert record.tokens.refresh_token is not None
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


# -- the moved retry's pair: lost, or kept in memory ---------------------------------------


def _moved_write(args: tuple[object, ...]) -> bool:
    """The write of the moved retry's pair: connected, no lease, the tokens never sent."""
    record = args[0]
    return (
        isinstance(record, ConnectionRecord)
        and record.status is ConnectionStatus.CONNECTED
        and record.lease is None
        and record.tokens is not None
        and record.tokens.refresh_sends == 0
    )


#: A short settle_timeout (seconds): a caller waits for the awaited pair that long before its
#: TryAgainLater; nothing lands meanwhile in these tests.
SHORT: dict[str, object] = {"lease_ttl": LEASE, "settle_timeout": 0.2}


def test_the_moved_retrys_lost_answer_is_awaited_like_any_lost_pair(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make_oauth(**SHORT)
    spent = connected(oauth, fake, clock)
    moved = fake.rename_account(None, "renamed")
    fake.fail_next("lost_answer", grant="refresh_token", account=moved)
    with pytest.raises(ProviderError) as lost:
        oauth.access_token(USER)  # the retry on the new host rotated the pair; its answer lost
    assert lost.value.transient
    assert fake.refresh_sends(spent, host=moved.host) == 1
    with pytest.raises(TryAgainLater) as later:
        oauth.access_token(USER)  # the spent token again: the lookup refuses it (401)
    assert later.value.reason == "kept_pair_pending"
    with pytest.raises(TryAgainLater):
        oauth.access_token(USER)  # during the grace nobody sends it again
    assert fake.refresh_sends(spent) == 3  # old host, new host, old host: no third retry
    assert fake.lookup_calls_for(spent) == 2
    assert oauth.status(USER).status is ConnectionStatus.CONNECTED
    clock.advance(oauth.config.kept_pair_grace + timedelta(seconds=1))
    with pytest.raises(ReauthorizationRequired) as needed:
        oauth.access_token(USER)
    assert needed.value.reason == "reauthorization_required"  # the lost pair, not the move
    status = oauth.status(USER)
    assert status.error is not None and status.error.reason == "reauthorization_required"
    assert fake.refresh_sends(spent) == 3


def test_a_moved_retrys_pair_the_store_refused_is_kept_awaited_and_landed(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    shared = MemoryStore(clock=clock)
    a_store = FaultyStore(shared)
    a = make_oauth(a_store, **SHORT)
    b = make_oauth(shared, **SHORT)
    spent = connected(a, fake, clock)
    run_consent(a, fake, OTHER)
    moved = fake.rename_account(None, "renamed")
    down = a_store.fail("compare_and_set", times=None, when=_moved_write)
    a._kept_retry.stop(0)  # landed by a call here: the background retry has its own tests
    with pytest.raises(StoreError):
        a.access_token(USER)
    assert a._flows.records.kept_pairs() == 1
    clock.advance(LEASE + timedelta(seconds=1))  # A's lease lapses; A lives, keeping the pair
    with pytest.raises(TryAgainLater) as later:
        b.access_token(USER)
    assert later.value.reason == "kept_pair_pending"
    down.heal()
    assert a.status(OTHER).status is ConnectionStatus.CONNECTED  # lands USER's kept pair first
    assert a._flows.records.kept_pairs() == 0
    assert fake.is_access_token_valid(b.access_token(USER))
    status = b.status(USER)
    assert (status.status, status.host) == (ConnectionStatus.CONNECTED, moved.host)
    assert fake.refresh_sends(spent, host=moved.host) == 1  # the one retry, A's


async def _aconnected(oauth: AsyncAmoOAuth, fake: FakeAmoCRM, who: str) -> None:
    begun = await oauth.begin(who)
    query = query_of(fake.authorize(begun.state))
    done = await oauth.handle_callback(query, binding=begun.binding)
    assert done.connection.status is ConnectionStatus.CONNECTED


def _async_oauth(fake: FakeAmoCRM, clock: FakeClock, store: Store | AsyncStore) -> AsyncAmoOAuth:
    return AsyncAmoOAuth(
        config_for(fake, **SHORT),
        store=store,
        http=httpx.AsyncClient(transport=fake.async_transport()),
        clock=clock,
    )


def test_async_the_moved_retrys_lost_answer_is_awaited_like_any_lost_pair(
    fake: FakeAmoCRM, clock: FakeClock
) -> None:
    async def scenario() -> None:
        oauth = _async_oauth(fake, clock, MemoryStore(clock=clock))
        try:
            await _aconnected(oauth, fake, USER)
            clock.advance(timedelta(days=1, minutes=1))
            moved = fake.rename_account(None, "renamed")
            fake.fail_next("lost_answer", grant="refresh_token", account=moved)
            with pytest.raises(ProviderError):
                await oauth.access_token(USER)
            with pytest.raises(TryAgainLater) as later:
                await oauth.access_token(USER)
            assert later.value.reason == "kept_pair_pending"
            clock.advance(oauth.config.kept_pair_grace + timedelta(seconds=1))
            with pytest.raises(ReauthorizationRequired) as needed:
                await oauth.access_token(USER)
            assert needed.value.reason == "reauthorization_required"
        finally:
            await oauth.aclose()

    asyncio.run(scenario())


def test_async_a_moved_retrys_pair_the_store_refused_is_kept_awaited_and_landed(
    fake: FakeAmoCRM, clock: FakeClock
) -> None:
    async def scenario() -> None:
        shared = MemoryStore(clock=clock)
        a_store = AsyncFaultyStore(shared)
        a, b = _async_oauth(fake, clock, a_store), _async_oauth(fake, clock, shared)
        try:
            await _aconnected(a, fake, USER)
            await _aconnected(a, fake, OTHER)
            clock.advance(timedelta(days=1, minutes=1))
            moved = fake.rename_account(None, "renamed")
            down = a_store.fail("compare_and_set", times=None, when=_moved_write)
            await a._kept_retry.stop()  # landed by a call here
            with pytest.raises(StoreError):
                await a.access_token(USER)
            clock.advance(LEASE + timedelta(seconds=1))
            with pytest.raises(TryAgainLater) as later:
                await b.access_token(USER)
            assert later.value.reason == "kept_pair_pending"
            down.heal()
            await a.status(OTHER)
            assert a._flows.records.kept_pairs() == 0
            assert fake.is_access_token_valid(await b.access_token(USER))
            status = await b.status(USER)
            assert (status.status, status.host) == (ConnectionStatus.CONNECTED, moved.host)
        finally:
            a_store.heal()
            await a.aclose()
            await b.aclose()

    asyncio.run(scenario())
