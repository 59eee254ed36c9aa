"""Two codes of one consent (a double click on "Allow"), the second claimed a moment late: it
read the state free, then lost the claim to the first. It reports the connection the first
made; it is not refused as a reused state (the flaky ``test_two_codes_of_one_consent_at_once``
of test_service.py, made deterministic)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from amo_oauth import AmoOAuth, CallbackRejected, ConnectionStatus, MemoryStore, Outcome
from amo_oauth._state_token import read_state
from amo_oauth.stores import Claim, ClaimResult
from amo_oauth.testing import FakeAmoCRM

from helpers import query_of

USER = "user-42"


class LateClaims(MemoryStore):
    """Runs ``meanwhile`` once, just before the first claim is taken: another worker's whole
    callback gets in between a worker's reads and its claim."""

    meanwhile: Callable[[], None] | None = None

    def claim(self, claim: Claim) -> ClaimResult:
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            meanwhile()
        return super().claim(claim)


def test_a_second_code_that_loses_the_state_reports_the_first_connection(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    store = LateClaims()
    oauth = make_oauth(store=store)
    begun = oauth.begin(USER)
    first, second = (query_of(fake.authorize(begun.state)) for _ in range(2))
    won: list[Outcome] = []
    store.meanwhile = lambda: won.append(
        oauth.handle_callback(first, binding=begun.binding).outcome
    )

    late = oauth.handle_callback(second, binding=begun.binding)

    assert won == [Outcome.CONNECTED]
    assert late.outcome is Outcome.ALREADY_CONNECTED
    assert late.connection.status is ConnectionStatus.CONNECTED
    assert fake.token_call_count() == 1
    assert fake.token_calls_for(second["code"]) == 0


def test_a_state_taken_without_a_holder_is_still_refused_after_one_more_look(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """A state taken without a holder reads as free, yet every claim of it fails: the flow looks
    once more, then refuses it as before (it does not loop)."""
    store = LateClaims()
    oauth = make_oauth(store=store)
    request = oauth.begin(USER)
    claims = read_state(oauth.config.accepted_state_secrets, request.state)
    store.consume_state(claims.nonce, claims.expires_at)
    with pytest.raises(CallbackRejected) as refused:
        oauth.handle_callback(query_of(fake.authorize(request.state)), binding=request.binding)
    assert refused.value.reason == "reused_state"
    assert fake.token_call_count() == 0
