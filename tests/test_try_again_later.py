"""``TryAgainLater``: one public "try again later" error, a transient ``ProviderError``."""

from __future__ import annotations

import pytest

import amo_oauth
from amo_oauth import ProviderError, TryAgainLater
from amo_oauth._reasons import RETRY_LATER, WEB_REFUSALS, Reason


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
