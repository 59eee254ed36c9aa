"""What a reload of the callback answers once the code ledger has forgotten the code, as the
quickstart says: remembered ``CODE_MEMORY`` (24 h); later, with the binding the status,
without it ``wrong_browser``; the app's ``exchange_code`` still the status.

A reviewer found the quickstart promising the status "with or without the binding" for ever.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from amo_oauth import AmoOAuth, CallbackRejected, Outcome
from amo_oauth._records import CODE_MEMORY
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import consent


def test_a_reload_after_the_ledger_forgot_the_code_needs_the_binding(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    assert timedelta(hours=24) == CODE_MEMORY  # the figure the quickstart gives
    oauth = make_oauth()
    query, binding = consent(oauth, fake, "u")
    assert oauth.handle_callback(query, binding=binding).outcome is Outcome.CONNECTED
    clock.advance(CODE_MEMORY - timedelta(minutes=1))
    assert oauth.handle_callback(query).outcome is Outcome.ALREADY_CONNECTED  # no binding
    clock.advance(timedelta(minutes=2))
    with pytest.raises(CallbackRejected) as refused:
        oauth.handle_callback(query)
    assert refused.value.reason == "wrong_browser"
    assert oauth.handle_callback(query, binding=binding).outcome is Outcome.ALREADY_CONNECTED
    again = oauth.exchange_code("u", query["code"], state=query["state"])
    assert (again.outcome, again.duplicate) == (Outcome.ALREADY_CONNECTED, True)
    assert fake.token_call_count("authorization_code") == 1
