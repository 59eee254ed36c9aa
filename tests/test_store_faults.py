"""The write after a rotation fails: amoCRM has already revoked the spent refresh token, so the
new pair is the only valid one. The write is retried within the lease; if the store stays down
the pair is kept in this process and written before its next store operation (the faults come
from the public kit, ``amo_oauth.testing.faults``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from amo_oauth import AmoOAuth, ConnectionRecord, ConnectionStatus, MemoryStore, StoreError
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.testing.faults import FaultyStore

from helpers import run_consent

USER = "user-1"


def _not_a_claim(args: tuple[object, ...]) -> bool:
    """A write other than the refresh claim (the claim holds a lease): the new pair's."""
    record = args[0]
    return isinstance(record, ConnectionRecord) and record.lease is None


@pytest.fixture
def connected(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> tuple[AmoOAuth, FaultyStore]:
    store = FaultyStore(MemoryStore(clock=clock))
    oauth = make_oauth(store=store)
    run_consent(oauth, fake, USER)
    clock.advance(timedelta(days=1, minutes=1))
    return oauth, store


def test_a_few_failed_writes_are_retried(
    connected: tuple[AmoOAuth, FaultyStore], fake: FakeAmoCRM
) -> None:
    oauth, store = connected
    # The claim goes through; the first two writes of the new pair fail (a busy or full disk).
    failing = store.fail("compare_and_set", times=2, when=_not_a_claim)
    token = oauth.access_token(USER)
    assert failing.fired == 2
    assert fake.is_access_token_valid(token)
    assert fake.token_call_count("refresh_token") == 1
    assert oauth.status(USER).status is ConnectionStatus.CONNECTED


def test_a_store_that_stays_down_keeps_the_pair_in_this_process(
    connected: tuple[AmoOAuth, FaultyStore], fake: FakeAmoCRM
) -> None:
    oauth, store = connected
    down = store.fail("compare_and_set", times=None, when=_not_a_claim)
    with pytest.raises(StoreError):
        oauth.access_token(USER)
    assert fake.token_call_count("refresh_token") == 1
    down.heal()
    token = oauth.access_token(USER)  # the kept pair is written first: no second refresh
    assert fake.is_access_token_valid(token)
    assert fake.token_call_count("refresh_token") == 1
    assert oauth.status(USER).status is ConnectionStatus.CONNECTED
