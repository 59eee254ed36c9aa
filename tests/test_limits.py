"""Bounded token-endpoint calls for code exchanges: a looped /connect + /callback with garbage
codes, or a flood of widget installs, is cut at the configured bounds; a rate-limited callback
writes nothing, and duplicates never count."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import partial

import pytest

from amo_oauth import AmoOAuth, CallbackRejected, MemoryStore, Outcome, _flow_codes
from amo_oauth._limits import ExchangeLimiter
from amo_oauth._records import record_key
from amo_oauth.stores import Claim, ClaimResult
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import consent, query_of

USER = "user-1"


Redirect = tuple[dict[str, str], str | None]  # amoCRM's redirect, and the browser's binding


def attempt(oauth: AmoOAuth, redirect: Redirect) -> str | None:
    """The callback's refusal reason, or None when it went through."""
    query, binding = redirect
    try:
        oauth.handle_callback(query, binding=binding)
    except CallbackRejected as rejected:
        return rejected.reason
    return None


def garbage_callback(oauth: AmoOAuth, fake: FakeAmoCRM, n: int) -> Redirect:
    query, binding = consent(oauth, fake, USER)
    return {**query, "code": f"garbage-{n}"}, binding


def test_a_looping_user_is_cut_at_the_bound_and_writes_nothing_beyond_it(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue: one signed-in user looping /connect + /callback?code=garbageN made 200 token
    calls, each carrying the client secret."""
    # The window's own clock, moved by hand: on a loaded machine 200 callbacks can outlast a
    # real second, and the window would slide under the loop (13 calls instead of 10).
    ticks = [0.0]
    monkeypatch.setattr(
        _flow_codes, "ExchangeLimiter", partial(ExchangeLimiter, clock=lambda: ticks[0])
    )
    oauth = make_oauth(max_exchanges_per_connection=10, exchange_window=timedelta(seconds=1))
    reasons = [attempt(oauth, garbage_callback(oauth, fake, n)) for n in range(200)]
    assert fake.token_call_count("authorization_code") == 10  # was 200
    assert reasons.count("rate_limited") == 190 and reasons.count(None) == 10
    # A rate-limited callback wrote nothing: the same redirect succeeds after the window.
    good, binding = consent(oauth, fake, USER)
    version = oauth.status(USER).version
    with pytest.raises(CallbackRejected, match="rate_limited"):
        oauth.handle_callback(good, binding=binding)
    assert oauth.status(USER).version == version
    assert oauth.store.holder_of(f"code:{good['code']}") is None  # type: ignore[attr-defined]
    ticks[0] += 1.05
    assert oauth.handle_callback(good, binding=binding).outcome is Outcome.CONNECTED
    # Duplicates never reach the limiter: the seed's replay, many times, in a full window.
    for n in range(9):
        attempt(oauth, garbage_callback(oauth, fake, 1000 + n))  # fill it again
    for _ in range(50):
        assert oauth.handle_callback(good).duplicate  # no binding needed for a known code


def test_a_flood_of_widget_installs_is_cut_per_host_and_leaves_no_records(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make_oauth(
        allow_widget_installs=True, max_exchanges_per_process=20, max_widget_exchanges_per_host=3
    )
    install = query_of(fake.authorize(from_widget=True))
    outcomes = []
    for n in range(60):
        try:
            outcomes.append(oauth.handle_callback({**install, "code": f"bogus-{n}"}).outcome)
        except CallbackRejected as rejected:
            outcomes.append(rejected.reason)  # type: ignore[arg-type]
    # One account host takes max_widget_exchanges_per_host (3) widget installs a window.
    assert fake.token_call_count("authorization_code") == 3
    assert outcomes.count("rate_limited") == 57  # type: ignore[arg-type]
    assert outcomes.count(Outcome.FAILED) == 3
    # A failed install leaves no permanent record.
    key = record_key(oauth.config.client_id, fake.account_host, widget=True)
    assert oauth.store.load(key).record is None  # type: ignore[union-attr]


def test_the_same_host_is_bounded_across_connections(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """Each user's first try is clean (it may be an honest one: issue 20.4's review); what
    failed fills the host's suspect share (half its bound), so every further try is cut."""
    oauth = make_oauth(max_exchanges_per_host=5)
    reasons = []
    for n in range(24):
        query, binding = consent(oauth, fake, f"user-{n % 12}")
        reasons.append(attempt(oauth, ({**query, "code": f"garbage-{n}"}, binding)))
    assert reasons[12:] == ["rate_limited"] * 12
    assert fake.token_call_count("authorization_code") == 12


def test_a_duplicate_that_lost_the_claim_gives_its_slot_back(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """Found by review: concurrent copies of one redirect each took a slot before the claim
    picked the one sender, so duplicates used up a user's bound. A lost claim gives it back."""

    class SlipInAtClaim(MemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.slip_in: Callable[[], object] | None = None

        def claim(self, claim: Claim) -> ClaimResult:
            hook, self.slip_in = self.slip_in, None
            if hook is not None:
                hook()  # another worker delivers the same redirect first
            return super().claim(claim)

    store = SlipInAtClaim()
    oauth = make_oauth(store=store, max_exchanges_per_connection=2)
    query, binding = consent(oauth, fake, USER)
    store.slip_in = lambda: oauth.handle_callback(query, binding=binding)
    assert oauth.handle_callback(query, binding=binding).duplicate  # the outer call lost
    assert fake.token_call_count("authorization_code") == 1
    clock.advance(1)  # a re-authorization: a state issued after the connection was made
    again, binding = consent(oauth, fake, USER)
    result = oauth.handle_callback(again, binding=binding)
    assert result.outcome is Outcome.CONNECTED  # the 2nd slot was free


def test_a_burst_of_one_redirect_is_never_rate_limited(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """A thousand workers delivering the seed's redirect at once are duplicates of one
    exchange, even with a bound of one exchange per connection: while a claim of the
    connection is in flight, a caller beyond the bound waits for it instead of being refused."""
    from concurrent.futures import ThreadPoolExecutor

    fake.latency = 0.02
    oauth = make_oauth(max_exchanges_per_connection=1)
    redirect = consent(oauth, fake, USER)
    with ThreadPoolExecutor(max_workers=50) as pool:
        reasons = list(pool.map(lambda _: attempt(oauth, redirect), range(200)))
    assert reasons == [None] * 200  # nobody rate_limited
    assert fake.token_call_count("authorization_code") == 1


def test_a_wait_counts_in_its_sources_window_until_its_credentials_come() -> None:
    """Metadata mode's waiting callbacks (_flow_codes): a wait is a try of its source; one whose
    credentials came leaves the window, one they never came for stays; the window's bound
    refuses the next wait, and says when one frees."""
    from amo_oauth._limits import Bounds, ExchangeLimiter, WaitingCallbacks

    now = [0.0]
    limiter = ExchangeLimiter(Bounds(10, 30, 300, 2, 30, 3), 600.0, clock=lambda: now[0])
    answered = limiter.admit_wait("user:ann")
    assert answered is not None
    limiter.wait_answered(answered)
    assert limiter.admit_wait("user:ann") is not None  # never answered: stays
    assert limiter.admit_wait("user:ann") is not None
    assert limiter.admit_wait("user:ann") is None
    assert limiter.wait_retry_after("user:ann") == 600
    assert limiter.admit_wait("user:bob") is not None  # another source: its own window
    now[0] = 601.0
    assert limiter.admit_wait("user:ann") is not None
    waiting = WaitingCallbacks()
    consent = ("u:ns:ann", "digest")
    assert waiting.enter(consent) == (True, None) and waiting.enter(consent) == (False, None)
    waiting.after_fork()  # a forked child: the parent's waits are not its own
    assert waiting.enter(consent) == (True, None)
    waiting.leave(consent)
    assert waiting.enter(consent) == (True, None)


def test_a_consents_reloads_count_once_and_the_process_waits_a_bounded_number() -> None:
    """A wait its credentials never came for stays counted against its source once: the
    user's reloads of the same redirect reuse that try (an honest user reloading while amoCRM's
    post is late is never locked out); and one process lets MAX_WAITING callbacks wait."""
    from amo_oauth._limits import MAX_WAITING, Attempt, Slot, WaitingCallbacks

    waiting = WaitingCallbacks()
    consent = ("u:ns:ann", "digest")
    tried = Slot(Attempt("", "", "user:ann"), 0.0, (("source", "user:ann"),))
    assert waiting.enter(consent) == (True, None)
    waiting.leave(consent, charged=tried)  # timed out: the try stays, remembered
    assert waiting.enter(consent) == (True, tried)  # the reload reuses it
    waiting.leave(consent)  # the credentials came: forgotten
    assert waiting.enter(consent) == (True, None)
    waiting.leave(consent)
    held = [(f"u:ns:{n}", "d") for n in range(MAX_WAITING)]
    assert all(waiting.enter(other)[0] for other in held)
    assert waiting.enter(consent) == (False, None)  # a full house: refused at once
    waiting.leave(held[0])
    assert waiting.enter(consent)[0]
