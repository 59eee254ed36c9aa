"""Interleavings driven step by step: a worker paused mid-call while another one acts.

The flows are generators (``_flows.py``), so a test can run one up to its HTTP call, let other
calls happen, then deliver the answer: the exact interleavings that threads hit only by luck.
"""

from __future__ import annotations

from collections.abc import Generator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from amo_oauth import (
    AmoOAuth,
    ConnectionStatus,
    MemoryStore,
    Outcome,
    ProviderError,
    ReauthorizationRequired,
    TryAgainLater,
)
from amo_oauth._ops import Send, StoreOp
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import config_for, query_of, run_consent, stored

Flow = Generator[Any, Any, Any]


def run_to_send(oauth: AmoOAuth, flow: Flow, answer: httpx.Response | None = None) -> Send:
    """Run ``flow`` (delivering ``answer`` to its pending request, if any) against the store
    until it wants to send a request; return that."""
    item = next(flow) if answer is None else flow.send(answer)
    while not isinstance(item, Send):
        reply = item.run(oauth.store) if isinstance(item, StoreOp) else None
        item = flow.send(reply)
    return item


def finish(oauth: AmoOAuth, flow: Flow, answer: httpx.Response) -> Any:
    """Deliver ``answer`` to a paused flow and run it to the end."""
    try:
        item = flow.send(answer)
        while True:
            if isinstance(item, StoreOp):
                item = flow.send(item.run(oauth.store))
            elif isinstance(item, Send):
                item = flow.send(oauth.http.send(item.request))
            else:
                item = flow.send(None)
    except StopIteration as stop:
        return stop.value


class TwoAccounts(httpx.BaseTransport):
    """Routes each account host to its own fake amoCRM."""

    def __init__(self, *fakes: FakeAmoCRM) -> None:
        self.routes = {fake.account_host: fake.transport() for fake in fakes}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.routes[request.url.host].handle_request(request)


def test_an_overtaken_exchange_never_writes_onto_the_new_connection() -> None:
    clock = FakeClock()
    alpha = FakeAmoCRM(clock=clock, rate_limit=None, subdomain="alpha", account_id=111)
    beta = FakeAmoCRM(clock=clock, rate_limit=None, subdomain="beta", account_id=222)
    http = httpx.Client(transport=TwoAccounts(alpha, beta))
    oauth = AmoOAuth(config_for(alpha), store=MemoryStore(clock=clock), http=http, clock=clock)
    # Worker 1 exchanges a code of account alpha; its answer is slow.
    begun = oauth.begin("u1")
    first = oauth._flows.codes.handle_callback(
        query_of(alpha.authorize(begun.state)), binding=begun.binding
    )
    slow_answer = http.send(run_to_send(oauth, first).request)
    # Meanwhile the user disconnects and connects account beta instead: worker 2 has stored
    # beta's tokens and is about to verify them when worker 1's answer arrives.
    oauth.disconnect("u1")
    begun = oauth.begin("u1", binding=begun.binding)  # the same browser connects again
    second = oauth._flows.codes.handle_callback(
        query_of(beta.authorize(begun.state)), binding=begun.binding
    )
    tokens = http.send(run_to_send(oauth, second).request)
    verify = run_to_send(oauth, second, tokens)
    late = finish(oauth, first, slow_answer)
    assert (late.outcome, late.duplicate) == (Outcome.IN_PROGRESS, False)
    assert late.connection.account is None
    assert finish(oauth, second, http.send(verify.request)).outcome is Outcome.CONNECTED
    record = stored(oauth, "u1")
    assert record is not None and record.account is not None and record.tokens is not None
    assert (record.account.id, record.host) == (222, beta.account_host)
    assert beta.is_access_token_valid(record.tokens.access_token)


@pytest.fixture
def connected(fake: FakeAmoCRM, clock: FakeClock) -> AmoOAuth:
    http = httpx.Client(transport=fake.transport())
    oauth = AmoOAuth(config_for(fake), store=MemoryStore(clock=clock), http=http, clock=clock)
    run_consent(oauth, fake, "u1")
    return oauth


def test_a_refresh_answered_after_its_lease_lapsed_still_keeps_the_new_pair(
    connected: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    clock.advance(timedelta(days=1))
    slow = connected._flows.tokens.access_token("u1")
    answer = connected.http.send(run_to_send(connected, slow).request)  # amoCRM rotated
    clock.advance(connected.config.lease_ttl + timedelta(seconds=1))  # worker 1 looks dead
    with pytest.raises(TryAgainLater) as later:
        connected.access_token("u1")  # worker 2 resends the spent token: "revoked"
    # Worker 1 may keep the rotated pair in memory: transient for a grace, not re-auth.
    assert later.value.reason == "kept_pair_pending"
    assert connected.status("u1").status is ConnectionStatus.CONNECTED
    token = finish(connected, slow, answer)
    assert fake.is_access_token_valid(token)
    status = connected.status("u1")
    assert (status.status, status.error) == (ConnectionStatus.CONNECTED, None)
    assert connected.access_token("u1") == token
    assert fake.token_calls[("refresh_token", "ok")] == 1


def test_a_network_failure_carries_no_request_in_its_chain(
    connected: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    clock.advance(timedelta(days=1))
    fake.fail_next("timeout_before", grant="refresh_token")
    with pytest.raises(ProviderError) as failed:
        connected.access_token("u1")
    chained = [failed.value.__context__, failed.value.__cause__]
    assert chained == [None, None]


def test_a_real_uninstall_is_not_undone_by_a_late_refresh_answer(
    connected: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """Found by attack: worker 1's refresh rotated the pair but its answer is late; worker 2
    resent the spent token (refused: error); then the integration was uninstalled. The late
    answer used to bring the connection back, with tokens amoCRM had revoked."""
    clock.advance(timedelta(days=1))
    slow = connected._flows.tokens.access_token("u1")
    answer = connected.http.send(run_to_send(connected, slow).request)
    clock.advance(connected.config.lease_ttl + timedelta(seconds=1))
    with pytest.raises(TryAgainLater):
        connected.access_token("u1")
    connected.handle_disconnect_hook(fake.uninstall())
    with pytest.raises(ReauthorizationRequired):  # the late answer finds the uninstall
        finish(connected, slow, answer)
    status = connected.status("u1")
    assert status.status is ConnectionStatus.ERROR
    assert status.error is not None and status.error.reason == "disconnected_by_provider"
