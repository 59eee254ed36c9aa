"""``TryAgainLater``: one public "try again later" error, a transient ``ProviderError``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

import amo_oauth
from amo_oauth import AmoOAuth, ProviderError, TryAgainLater
from amo_oauth._ops import Send, StoreOp
from amo_oauth._reasons import RETRY_LATER, WEB_REFUSALS, Reason
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import run_consent


def test_it_is_a_transient_provider_error_with_a_reason_and_retry_after() -> None:
    later = TryAgainLater(Reason.KEPT_PAIR_PENDING, "waiting", retry_after=2.5)
    assert isinstance(later, ProviderError)
    assert later.transient and later.status is None
    assert later.reason == "kept_pair_pending" and later.retry_after == 2.5
    assert amo_oauth.TryAgainLater is TryAgainLater


def test_it_refuses_a_reason_outside_its_set_and_a_negative_retry_after() -> None:
    with pytest.raises(ValueError, match="unknown retry reason"):
        TryAgainLater(Reason.BAD_STATE, "no")
    with pytest.raises(ValueError, match="retry_after"):
        TryAgainLater(Reason.REFRESH_IN_PROGRESS, "no", retry_after=-1.0)


def test_its_reasons_are_web_answers() -> None:
    assert RETRY_LATER <= WEB_REFUSALS


def test_a_refresh_lease_held_past_settle_timeout_raises_it(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """Another worker's live refresh lease outlasts ``settle_timeout``: ``TryAgainLater``
    (``refresh_in_progress``, until the lease lapses), which is still a transient
    ``ProviderError`` for code that catches that."""
    oauth = make_oauth(settle_timeout=0.1)
    run_consent(oauth, fake, "u1")
    clock.advance(timedelta(days=1))
    other = oauth._flows.tokens.access_token("u1")  # another worker: claims, then stalls
    item = next(other)
    while not isinstance(item, Send):
        item = other.send(item.run(oauth.store) if isinstance(item, StoreOp) else None)
    with pytest.raises(TryAgainLater) as later:
        oauth.access_token("u1")
    assert later.value.reason == "refresh_in_progress"
    assert later.value.retry_after is not None
    assert 0 < later.value.retry_after <= oauth.config.lease_ttl.total_seconds()
    assert fake.token_call_count("refresh_token") == 0
    other.close()
