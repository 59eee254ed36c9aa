"""Messages name the right party (issue 19, item 6): "amoCRM answered None: ..." appeared where no
answer came (a transport error) and where nothing was asked of amoCRM (a local wait for another
worker). An answer says who answered what; no answer says so; a local wait says why to try
again later, as ``TryAgainLater``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from amo_oauth import AmoOAuth, ProviderError, TryAgainLater
from amo_oauth._ops import Send, StoreOp
from amo_oauth._reasons import RETRY_LATER
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import run_consent

USER = "user-1"


def test_an_answer_names_amocrm_and_its_status() -> None:
    assert str(ProviderError(429, "Too Many Requests")) == "amoCRM answered 429: Too Many Requests"


def test_no_answer_says_none_came_and_what_the_transport_said() -> None:
    assert str(ProviderError(None, "ConnectTimeout")) == "no answer from amoCRM: ConnectTimeout"


@pytest.mark.parametrize("reason", sorted(RETRY_LATER))
def test_try_again_later_names_its_reason_never_an_answer(reason: str) -> None:
    later = TryAgainLater(reason, "why", retry_after=1.0)
    assert str(later) == f"try again later ({reason}): why"
    assert "amoCRM answered" not in str(later) and "None" not in str(later)
    assert (later.status, later.hint, later.reason) == (None, "why", reason)


def test_a_transport_error_says_no_answer_came(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make_oauth()
    run_consent(oauth, fake, USER)
    clock.advance(timedelta(days=1, minutes=1))
    fake.fail_next("timeout_before", grant="refresh_token")
    with pytest.raises(ProviderError) as failed:
        oauth.access_token(USER)
    assert not isinstance(failed.value, TryAgainLater)
    assert str(failed.value) == "no answer from amoCRM: ConnectTimeout"


def test_a_local_wait_for_another_worker_is_try_again_later_not_amocrm(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make_oauth(settle_timeout=0.1)
    run_consent(oauth, fake, USER)
    clock.advance(timedelta(days=1))
    other = oauth._flows.tokens.access_token(USER)  # another worker: claims, then stalls
    item = next(other)
    while not isinstance(item, Send):
        item = other.send(item.run(oauth.store) if isinstance(item, StoreOp) else None)
    with pytest.raises(TryAgainLater) as later:
        oauth.access_token(USER)
    assert str(later.value) == (
        "try again later (refresh_in_progress): a refresh by another worker is still running"
    )
    other.close()


def test_an_answer_during_a_refresh_names_its_status_and_keeps_retry_after(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make_oauth(refresh_backoff_jitter=0.0)
    run_consent(oauth, fake, USER)
    clock.advance(timedelta(days=1, minutes=1))
    fake.fail_next("429", grant="refresh_token")
    with pytest.raises(TryAgainLater) as answered:
        oauth.access_token(USER)
    assert str(answered.value) == (
        "try again later (refresh_backoff): amoCRM answered 429: Too Many Requests"
    )
    assert (answered.value.status, answered.value.retry_after) == (429, 300)
