"""The write after a rotation fails: amoCRM has already revoked the spent refresh token, so the
new pair is the only valid one. The write is retried within the lease; if the store stays down
the pair is kept in this process and written before its next call for that connection."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from amo_oauth import AmoOAuth, ConnectionRecord, ConnectionStatus, MemoryStore, StoreError
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import run_consent

USER = "user-1"


class FailingWrites(MemoryStore):
    """Fails the next ``failures`` compare-and-sets with ``StoreError`` (a busy or full disk)."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        super().__init__(clock=clock)
        self.failures = 0

    def compare_and_set(self, record: ConnectionRecord, expected_version: int | None) -> bool:
        if self.failures:
            self.failures -= 1
            raise StoreError("SQLite store could not write a record: SQLITE_FULL")
        return super().compare_and_set(record, expected_version)


@pytest.fixture
def connected(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> tuple[AmoOAuth, FailingWrites]:
    store = FailingWrites(clock)
    oauth = make_oauth(store=store)
    run_consent(oauth, fake, USER)
    clock.advance(timedelta(days=1, minutes=1))
    return oauth, store


def test_a_few_failed_writes_are_retried(
    connected: tuple[AmoOAuth, FailingWrites], fake: FakeAmoCRM
) -> None:
    oauth, store = connected
    store.failures = 2  # the claim goes through; the first two writes of the new pair fail
    original = store.compare_and_set
    calls = {"n": 0}

    def claim_then_fail(record: ConnectionRecord, expected: int | None) -> bool:
        calls["n"] += 1
        if calls["n"] == 1:  # the refresh claim itself
            return MemoryStore.compare_and_set(store, record, expected)
        return original(record, expected)

    store.compare_and_set = claim_then_fail  # type: ignore[method-assign]
    token = oauth.access_token(USER)
    assert fake.is_access_token_valid(token)
    assert fake.token_call_count("refresh_token") == 1
    assert oauth.status(USER).status is ConnectionStatus.CONNECTED


def test_a_store_that_stays_down_keeps_the_pair_in_this_process(
    connected: tuple[AmoOAuth, FailingWrites], fake: FakeAmoCRM
) -> None:
    oauth, store = connected
    calls = {"n": 0}
    original = store.compare_and_set

    def claim_then_down(record: ConnectionRecord, expected: int | None) -> bool:
        calls["n"] += 1
        if calls["n"] == 1:
            return MemoryStore.compare_and_set(store, record, expected)
        raise StoreError("SQLite store could not write a record: SQLITE_BUSY")

    store.compare_and_set = claim_then_down  # type: ignore[method-assign]
    with pytest.raises(StoreError):
        oauth.access_token(USER)
    assert fake.token_call_count("refresh_token") == 1
    store.compare_and_set = original  # type: ignore[method-assign]
    token = oauth.access_token(USER)  # the kept pair is written first: no second refresh
    assert fake.is_access_token_valid(token)
    assert fake.token_call_count("refresh_token") == 1
    assert oauth.status(USER).status is ConnectionStatus.CONNECTED
