"""The API's pace (issue 21, part 3): ``auth()`` spaces its requests per integration and account
host (amoCRM's 7 a second, protocol notes §9), shares that one schedule with the disconnect
hook's checks and the keep-alive sweep's token calls, honours a 429's ``retry_after`` with at
most one resend, and never makes a retry storm. Every wait is on a FakeClock: a sleep moves it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any, cast

import attrs
import httpx
import pytest

from amo_oauth import AmoOAuth, AsyncAmoOAuth, MemoryStore, TryAgainLater
from amo_oauth._pace import BLOCKED_PAUSE, PACE_GUARD, Pacer, Slot
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import config_for, run_consent, stored

USER = "user-1"
LEADS = "/api/v4/leads"
ACCOUNT = "/api/v4/account"
STEP = (1 + PACE_GUARD) / 7  # amoCRM's 7 a second, and the guard against a late send


class FakeSeconds:
    """The pacer's clock and sleeps on a FakeClock: a sleep moves the clock to its end (never
    back: concurrent sleepers end at the latest of their ends), and every slot handed out is
    recorded as the fake time its request may go."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.slept: list[float] = []
        self.slots: list[float] = []

    def now(self) -> float:
        return self.clock().timestamp()

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.slept.append(seconds)
        self.clock.advance(max(0.0, seconds))

    async def asleep(self, seconds: float) -> None:
        # The other tasks ready now run first: what reaches them at this instant (amoCRM's
        # answers to a burst) is handled at this instant, as on a real clock.
        await asyncio.sleep(0)
        self.sleep(seconds)
        await asyncio.sleep(0)

    def pacer(self) -> Pacer:
        pacer = Pacer(clock=self.now, sleep=self.sleep, asleep=self.asleep)
        reserve, claim = pacer.reserve, pacer.claim_resend

        def recorded(slot: Slot) -> Slot:
            with self.lock:
                self.slots.append(slot.at)
            return slot

        pacer.reserve = lambda *a, **k: recorded(reserve(*a, **k))  # type: ignore[method-assign]
        pacer.claim_resend = lambda *a, **k: recorded(claim(*a, **k))  # type: ignore[method-assign]
        return pacer


def paced_by(oauth: AmoOAuth | AsyncAmoOAuth, seconds: FakeSeconds) -> None:
    """Give ``oauth`` a pacer on the fake clock (the same one for auth(), hook and sweep)."""
    oauth._pace = attrs.evolve(oauth._pace, pacer=seconds.pacer())


@pytest.fixture
def seconds(clock: FakeClock) -> FakeSeconds:
    return FakeSeconds(clock)


@pytest.fixture
def limited(clock: FakeClock, seconds: FakeSeconds) -> FakeAmoCRM:
    """A fake with amoCRM's limit, 7 requests a second per account, on the same fake time."""
    return FakeAmoCRM(clock=clock, rate_limit=7, monotonic=seconds.now)


def service(
    fake: FakeAmoCRM, clock: FakeClock, seconds: FakeSeconds, **overrides: object
) -> AmoOAuth:
    oauth = AmoOAuth(
        config_for(fake, **overrides),
        store=MemoryStore(clock=clock),
        http=httpx.Client(transport=fake.transport()),
        clock=clock,
    )
    paced_by(oauth, seconds)
    run_consent(oauth, fake, USER)
    return oauth


@pytest.fixture
def make(clock: FakeClock, seconds: FakeSeconds) -> Iterator[Callable[..., AmoOAuth]]:
    made: list[AmoOAuth] = []

    def build(fake: FakeAmoCRM, **overrides: object) -> AmoOAuth:
        made.append(service(fake, clock, seconds, **overrides))
        return made[-1]

    yield build
    for oauth in made:
        oauth.close()


class Arrivals(httpx.BaseTransport):
    """The fake's transport, noting the fake time of each API request as it arrives."""

    def __init__(self, fake: FakeAmoCRM, seconds: FakeSeconds) -> None:
        self.inner, self.seconds = fake.transport(), seconds
        self.times: list[float] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/api/"):
            self.times.append(self.seconds.now())
        return self.inner.handle_request(request)


def most_in_a_second(times: list[float]) -> int:
    return max(sum(1 for t in times if start <= t <= start + 1.0) for start in times)


def spaced(slots: list[float], step: float = STEP) -> bool:
    return all(b - a >= step - 1e-6 for a, b in itertools.pairwise(sorted(slots)))


# -- the pace ---------------------------------------------------------------------------------


def test_auth_sends_7_a_second_to_one_host_and_amocrms_limit_never_answers_429(
    make: Callable[..., AmoOAuth], limited: FakeAmoCRM, seconds: FakeSeconds
) -> None:
    oauth = make(limited)
    seconds.clock.advance(1)  # the consent's own account check is out of the fake's window
    arrivals = Arrivals(limited, seconds)
    with httpx.Client(auth=oauth.auth(USER), transport=arrivals) as api:
        statuses = [
            api.get(f"https://{limited.account_host}{LEADS}").status_code for _ in range(50)
        ]
    assert statuses == [200] * 50  # unpaced, the fake's 7/s limit answered 429 from the 8th
    assert limited.api_call_count(LEADS, outcome="rate_limited") == 0
    gaps = [b - a for a, b in itertools.pairwise(arrivals.times)]
    assert min(gaps) == pytest.approx(STEP) and most_in_a_second(arrivals.times) == 7


@pytest.mark.parametrize("off", [None, 0])
def test_api_rate_none_or_0_turns_the_pace_off(
    make: Callable[..., AmoOAuth], limited: FakeAmoCRM, seconds: FakeSeconds, off: float | None
) -> None:
    oauth = make(limited, api_rate=off)
    seconds.clock.advance(1)  # the consent's own account check is out of the fake's window
    with httpx.Client(auth=oauth.auth(USER), transport=limited.transport()) as api:
        statuses = [
            api.get(f"https://{limited.account_host}{LEADS}").status_code for _ in range(10)
        ]
    # Nothing waits, nothing is refused: amoCRM's own answers reach the caller as they are.
    assert statuses == [200] * 7 + [429] * 3
    assert seconds.slept == [] and seconds.slots == []


def test_keys_are_independent_per_host_and_per_integration() -> None:
    now = [100.0]
    pacer = Pacer(clock=lambda: now[0])
    assert [pacer.reserve(("one", "a.amocrm.ru"), 7).wait for _ in range(2)] == [
        0.0,
        pytest.approx(STEP),
    ]
    assert pacer.reserve(("one", "b.amocrm.ru"), 7).wait == 0.0  # another account host
    assert pacer.reserve(("two", "a.amocrm.ru"), 7).wait == 0.0  # another integration
    pacer.pause(("one", "a.amocrm.ru"), 300, sent_at=100.0)
    assert pacer.reserve(("two", "a.amocrm.ru"), 7, within=2).wait == pytest.approx(STEP)


def test_a_caller_whose_slot_is_further_than_api_max_wait_is_refused_without_sending() -> None:
    now = [100.0]
    pacer = Pacer(clock=lambda: now[0])
    key = ("one", "a.amocrm.ru")
    waits = [pacer.reserve(key, 7, within=2.0).wait for _ in range(14)]  # 13 * 0.15 s = 1.95 s
    assert waits[-1] == pytest.approx(13 * STEP)
    with pytest.raises(TryAgainLater) as busy:
        pacer.reserve(key, 7, within=2.0)
    assert (busy.value.reason, busy.value.status) == ("api_busy", None)
    assert busy.value.retry_after == pytest.approx(14 * STEP)
    assert pacer.reserve(key, 7).wait == pytest.approx(14 * STEP)  # the refusal took no slot


def test_threads_share_one_schedule(
    make: Callable[..., AmoOAuth], fake: FakeAmoCRM, seconds: FakeSeconds
) -> None:
    oauth = make(fake, api_max_wait=30.0)
    statuses: list[int] = []

    def call() -> None:
        with httpx.Client(auth=oauth.auth(USER), transport=fake.transport()) as api:
            statuses.append(api.get(f"https://{fake.account_host}{LEADS}").status_code)

    threads = [threading.Thread(target=call) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 20
    # The consent's account check took the first slot, the 20 calls the next ones.
    assert len(seconds.slots) == 21 and spaced(seconds.slots)


def test_asyncio_tasks_share_one_schedule(
    fake: FakeAmoCRM, clock: FakeClock, seconds: FakeSeconds
) -> None:
    async def main() -> list[int]:
        http = httpx.AsyncClient(transport=fake.async_transport())
        # FakeSeconds adds up concurrent tasks' sleeps (20 waits of up to 3 s move its clock
        # about 30 s), and api_max_wait bounds the slot and the window on that clock: bound
        # far beyond the sum, so every call is let in and the test sees the shared schedule.
        config = config_for(fake, api_max_wait=3600.0)
        async with AsyncAmoOAuth(
            config, store=MemoryStore(clock=clock), http=http, clock=clock
        ) as oauth:
            paced_by(oauth, seconds)
            begun = await oauth.begin(USER)
            query = dict(httpx.URL(fake.authorize(begun.state)).params)
            await oauth.handle_callback(query, binding=begun.binding)
            async with httpx.AsyncClient(
                auth=oauth.auth(USER), transport=fake.async_transport()
            ) as api:
                url = f"https://{fake.account_host}{LEADS}"
                answers = await asyncio.gather(*(api.get(url) for _ in range(20)))
        return [answer.status_code for answer in answers]

    assert asyncio.run(main()) == [200] * 20
    # The consent's account check took the first slot, the 20 calls the next ones.
    assert len(seconds.slots) == 21 and spaced(seconds.slots)


def test_auth_the_hook_and_the_sweep_share_one_schedule(
    make: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock, seconds: FakeSeconds
) -> None:
    oauth = make(fake)
    with httpx.Client(auth=oauth.auth(USER), transport=fake.transport()) as api:
        assert api.get(f"https://{fake.account_host}{LEADS}").status_code == 200
    # The call waited a step after the consent's account check; the hook's token check goes
    # to the same host: it takes the next slot, a step later.
    assert oauth.handle_disconnect_hook(fake.hook_query()).reason == "hook_replayed"
    assert seconds.slept == [pytest.approx(STEP)] * 2
    # The sweep's token call takes the next one (at the sweep's rate, on the same schedule),
    # and auth()'s next request waits a step after it.
    clock.advance(timedelta(days=85))
    assert oauth.refresh_due(timedelta(days=7)).refreshed == (USER,)
    with httpx.Client(auth=oauth.auth(USER), transport=fake.transport()) as api:
        assert api.get(f"https://{fake.account_host}{LEADS}").status_code == 200
    assert seconds.slept[-1] == pytest.approx(STEP)
    assert spaced(seconds.slots)


def test_a_paused_host_refuses_the_hooks_check_without_sending(
    make: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make(fake)
    fake.fail_next("429", endpoint="api", path=LEADS)
    api = httpx.Client(auth=oauth.auth(USER), transport=fake.transport())
    with api, pytest.raises(TryAgainLater):
        api.get(f"https://{fake.account_host}{LEADS}")
    before = fake.api_call_count(ACCOUNT)
    result = oauth.handle_disconnect_hook(fake.hook_query())
    assert (result.reason, fake.api_call_count(ACCOUNT)) == ("provider_unavailable", before)
    assert oauth.status(USER).is_connected  # a hook during a pause changes nothing


# -- amoCRM's push-back ------------------------------------------------------------------------


def test_a_429_pauses_the_host_and_every_caller_is_refused_without_sending(
    make: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make(fake)
    fake.fail_next("429", endpoint="api")  # amoCRM's body: retry_after 300 (§9)
    url = f"https://{fake.account_host}{LEADS}"
    with httpx.Client(auth=oauth.auth(USER), transport=fake.transport()) as api:
        with pytest.raises(TryAgainLater) as answered:
            api.get(url)
        assert (answered.value.reason, answered.value.status) == ("api_paused", 429)
        assert answered.value.retry_after == pytest.approx(300)
        sent = sum(fake.api_calls.values())
        for _ in range(5):
            with pytest.raises(TryAgainLater) as paused:
                api.get(url)
            assert (paused.value.reason, paused.value.status) == ("api_paused", None)
        assert sum(fake.api_calls.values()) == sent  # nothing sent during the pause
        assert paused.value.retry_after == pytest.approx(300)
        clock.advance(300)
        assert api.get(url).status_code == 200


def test_a_429_whose_pause_ends_within_api_max_wait_is_resent_once(
    make: Callable[..., AmoOAuth], fake: FakeAmoCRM, seconds: FakeSeconds
) -> None:
    oauth = make(fake)
    fake.fail_next("429", endpoint="api", fields={"retry_after": 1})
    with httpx.Client(auth=oauth.auth(USER), transport=fake.transport()) as api:
        assert api.get(f"https://{fake.account_host}{LEADS}").status_code == 200
    # A step after the consent's account check, then the pause.
    assert fake.api_call_count(LEADS) == 2
    assert seconds.slept == [pytest.approx(STEP), pytest.approx(1.0)]
    # A second 429 to the resend is not resent again.
    fake.fail_next("429", times=2, endpoint="api", fields={"retry_after": 1})
    api = httpx.Client(auth=oauth.auth(USER), transport=fake.transport())
    with api, pytest.raises(TryAgainLater) as again:
        api.get(f"https://{fake.account_host}{LEADS}")
    assert again.value.status == 429 and fake.api_call_count(LEADS) == 4


class AllInFlight(httpx.BaseTransport):
    """Holds the first ``n`` API requests until all ``n`` arrived: they are all in flight when
    amoCRM answers."""

    def __init__(self, fake: FakeAmoCRM, n: int) -> None:
        self.inner, self.barrier = fake.transport(), threading.Barrier(n, timeout=60)
        self.count = itertools.count()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if next(self.count) < self.barrier.parties:
            self.barrier.wait()
        return self.inner.handle_request(request)


def test_50_concurrent_callers_answered_429_make_one_resend(
    make: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make(fake, api_rate=1000.0)
    fake.fail_next("429", times=50, endpoint="api", fields={"retry_after": 1})
    transport = AllInFlight(fake, 50)
    outcomes: list[Any] = []

    def call() -> None:
        with httpx.Client(auth=oauth.auth(USER), transport=transport) as api:
            try:
                outcomes.append(api.get(f"https://{fake.account_host}{LEADS}").status_code)
            except TryAgainLater as error:
                outcomes.append((error.reason, error.status))

    threads = [threading.Thread(target=call) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fake.api_call_count(LEADS) == 51  # 50, then one resend: no storm
    assert Counter(outcomes) == {200: 1, ("api_paused", 429): 49}


def test_50_concurrent_tasks_answered_429_make_one_resend(
    fake: FakeAmoCRM, clock: FakeClock, seconds: FakeSeconds
) -> None:
    class AllInFlightAsync(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner, self.arrived, self.all_in = fake.async_transport(), 0, asyncio.Event()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            self.arrived += 1
            if self.arrived <= 50:
                if self.arrived == 50:
                    self.all_in.set()
                await self.all_in.wait()
            return await self.inner.handle_async_request(request)

    async def main() -> list[Any]:
        http = httpx.AsyncClient(transport=fake.async_transport())
        config = config_for(fake, api_rate=1000.0)
        async with AsyncAmoOAuth(
            config, store=MemoryStore(clock=clock), http=http, clock=clock
        ) as oauth:
            paced_by(oauth, seconds)
            begun = await oauth.begin(USER)
            query = dict(httpx.URL(fake.authorize(begun.state)).params)
            await oauth.handle_callback(query, binding=begun.binding)
            fake.fail_next("429", times=50, endpoint="api", fields={"retry_after": 1})
            async with httpx.AsyncClient(
                auth=oauth.auth(USER), transport=AllInFlightAsync()
            ) as api:

                async def call() -> Any:
                    try:
                        return (await api.get(f"https://{fake.account_host}{LEADS}")).status_code
                    except TryAgainLater as error:
                        return (error.reason, error.status)

                return await asyncio.gather(*(call() for _ in range(50)))

    outcomes = asyncio.run(main())
    assert fake.api_call_count(LEADS) == 51
    assert Counter(outcomes) == {200: 1, ("api_paused", 429): 49}


def test_a_403_is_returned_and_pauses_the_host(
    make: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make(fake)
    fake.fail_next("403_html", endpoint="api")  # a blocked client (§9)
    url = f"https://{fake.account_host}{LEADS}"
    with httpx.Client(auth=oauth.auth(USER), transport=fake.transport()) as api:
        assert api.get(url).status_code == 403  # amoCRM's answer, as it came: never resent
        sent = sum(fake.api_calls.values())
        with pytest.raises(TryAgainLater) as paused:
            api.get(url)
        assert paused.value.reason == "api_paused"
        assert paused.value.retry_after == pytest.approx(BLOCKED_PAUSE)
        assert sum(fake.api_calls.values()) == sent
        clock.advance(BLOCKED_PAUSE)
        assert api.get(url).status_code == 200


# -- a resend sends the whole body -------------------------------------------------------------


class AnswersFirst(httpx.BaseTransport):
    """Answers the first API request with ``status`` (a 429 with retry_after 1, or a 401), the
    next 200; keeps every body it received."""

    def __init__(self, fake: FakeAmoCRM, status: int) -> None:
        self.inner, self.status, self.bodies = fake.transport(), status, list[bytes]()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.startswith("/api/v4/leads"):
            return self.inner.handle_request(request)
        # Iterated as a real transport does (read() would keep a copy and hide a lost body).
        self.bodies.append(b"".join(cast(Iterable[bytes], request.stream)))
        if len(self.bodies) == 1:
            body = {"status": self.status, "retry_after": 1}
            return httpx.Response(self.status, json=body, request=request)
        return httpx.Response(200, json={}, request=request)


@pytest.mark.parametrize("status", [429, 401])
def test_a_streamed_body_is_resent_whole(
    make: Callable[..., AmoOAuth], fake: FakeAmoCRM, status: int
) -> None:
    oauth = make(fake)
    transport = AnswersFirst(fake, status)
    with httpx.Client(auth=oauth.auth(USER), transport=transport) as api:
        sent = api.post(f"https://{fake.account_host}{LEADS}", content=iter([b"[{", b"}]"]))
    assert sent.status_code == 200
    assert transport.bodies == [b"[{}]", b"[{}]"]  # a generator is read once: buffered first


def test_the_fakes_429_takes_fields_and_other_short_answers_do_not(fake: FakeAmoCRM) -> None:
    fake.fail_next("429", endpoint="api", fields={"retry_after": 2})
    with httpx.Client(transport=fake.transport()) as plain:
        answer = plain.get(f"https://{fake.account_host}{LEADS}")
    assert (answer.status_code, answer.json()["retry_after"]) == (429, 2)
    assert answer.json()["title"] == "Too Many Requests"  # amoCRM's body, one field changed
    with pytest.raises(ValueError, match="fields"):
        fake.fail_next("500", endpoint="api", fields={"retry_after": 2})


def test_async_auth_the_hook_and_the_sweep_share_one_schedule(
    fake: FakeAmoCRM, clock: FakeClock, seconds: FakeSeconds
) -> None:
    async def main() -> None:
        http = httpx.AsyncClient(transport=fake.async_transport())
        store = MemoryStore(clock=clock)
        async with AsyncAmoOAuth(config_for(fake), store=store, http=http, clock=clock) as oauth:
            paced_by(oauth, seconds)
            begun = await oauth.begin(USER)
            query = dict(httpx.URL(fake.authorize(begun.state)).params)
            await oauth.handle_callback(query, binding=begun.binding)
            transport = fake.async_transport()
            async with httpx.AsyncClient(auth=oauth.auth(USER), transport=transport) as api:
                assert (await api.get(f"https://{fake.account_host}{LEADS}")).status_code == 200
                hook = await oauth.handle_disconnect_hook(fake.hook_query())
                assert hook.reason == "hook_replayed"
                assert seconds.slept == [pytest.approx(STEP)] * 2  # as in the sync test
                clock.advance(timedelta(days=85))
                assert (await oauth.refresh_due(timedelta(days=7))).refreshed == (USER,)
                assert (await api.get(f"https://{fake.account_host}{LEADS}")).status_code == 200
                assert seconds.slept[-1] == pytest.approx(STEP)

    asyncio.run(main())
    assert spaced(seconds.slots)


# -- a pause stops the callers already waiting for their turn ----------------------------------


def test_a_pause_voids_the_slots_it_covers_and_the_resend_it_outgrows() -> None:
    now = [100.0]
    pacer = Pacer(clock=lambda: now[0])
    key = ("one", "a.amocrm.ru")
    pacer.reserve(key, 7)  # the request whose answer pauses the key
    waiting, later = (pacer.reserve(key, 7, within=30) for _ in range(2))
    sweeps = pacer.reserve(key, 7)
    pacer.pause(key, later.at - 100.0 - 0.01, sent_at=100.0)  # ends just before ``later``
    now[0] = waiting.at
    with pytest.raises(TryAgainLater) as refused:
        pacer.recheck(waiting)  # its turn came inside the pause: nothing is sent
    assert (refused.value.reason, refused.value.status) == ("api_paused", None)
    assert pacer.recheck(later) is None  # its turn comes after the pause: it goes
    # A 429 of 300 s: the sweep's slot is void too (a sweep skips a paused host), and the
    # resend outgrown by a late answer of the same burst is refused with that 429.
    pacer.pause(key, 300, sent_at=now[0])
    with pytest.raises(TryAgainLater, match="api_paused"):
        pacer.recheck(sweeps)
    pacer.pause(key, 1, sent_at=now[0] + 1)  # a new burst: its resend may be claimed ...
    resend = pacer.claim_resend(key, 7, within=400)
    pacer.pause(key, 350, sent_at=now[0])  # ... and a late answer of it lengthens the pause
    with pytest.raises(TryAgainLater) as outgrown:
        pacer.recheck(resend)
    assert (outgrown.value.reason, outgrown.value.status) == ("api_paused", 429)


class HeldFirst(httpx.BaseTransport):
    """The fake's transport holding the first API request until ``release`` is set: amoCRM
    answers it while the other callers wait for their turns."""

    def __init__(self, fake: FakeAmoCRM) -> None:
        self.inner, self.release, self.held = fake.transport(), threading.Event(), False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/api/") and not self.held:
            self.held = True
            assert self.release.wait(60)
        return self.inner.handle_request(request)


def test_threads_waiting_for_their_turn_when_a_429_lands_send_nothing(
    make: Callable[..., AmoOAuth], fake: FakeAmoCRM, seconds: FakeSeconds
) -> None:
    oauth = make(fake)
    seconds.clock.advance(1)  # the consent's check is a second behind: the first call goes now
    fake.fail_next("429", endpoint="api")  # retry_after 300 (§9)
    transport = HeldFirst(fake)
    answered, all_waiting = threading.Event(), threading.Barrier(13, timeout=60)

    def sleep(wait: float) -> None:
        # amoCRM answers the first request 429 once the 13 others all wait for their turns,
        # and their turns come only after that answer.
        all_waiting.wait()
        transport.release.set()
        assert answered.wait(60)
        seconds.sleep(wait)

    oauth._pace = attrs.evolve(oauth._pace, pacer=Pacer(clock=seconds.now, sleep=sleep))
    outcomes: list[Any] = []

    def call(first: bool) -> None:
        with httpx.Client(auth=oauth.auth(USER), transport=transport) as api:
            try:
                outcomes.append(api.get(f"https://{fake.account_host}{LEADS}").status_code)
            except TryAgainLater as error:
                outcomes.append((error.reason, error.status))
            finally:
                if first:
                    answered.set()

    first = threading.Thread(target=call, args=(True,))
    first.start()
    while not transport.held:  # the first request is in flight: the others queue behind it
        first.join(0.01)
    waiters = [threading.Thread(target=call, args=(False,)) for _ in range(13)]
    for thread in [*waiters]:
        thread.start()
    for thread in [first, *waiters]:
        thread.join()
    # Only the first request reached amoCRM: each waiter looked at the pause after its wait.
    assert fake.api_call_count(LEADS) == 1
    assert Counter(outcomes) == {("api_paused", 429): 1, ("api_paused", None): 13}


def test_tasks_waiting_for_their_turn_when_a_429_lands_send_nothing(
    fake: FakeAmoCRM, clock: FakeClock, seconds: FakeSeconds
) -> None:
    class HeldFirstAsync(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner, self.release, self.held = fake.async_transport(), asyncio.Event(), False

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.startswith("/api/") and not self.held:
                self.held = True
                await self.release.wait()
            return await self.inner.handle_async_request(request)

    async def main() -> list[Any]:
        http = httpx.AsyncClient(transport=fake.async_transport())
        async with AsyncAmoOAuth(
            config_for(fake), store=MemoryStore(clock=clock), http=http, clock=clock
        ) as oauth:
            paced_by(oauth, seconds)
            begun = await oauth.begin(USER)
            query = dict(httpx.URL(fake.authorize(begun.state)).params)
            await oauth.handle_callback(query, binding=begun.binding)
            clock.advance(1)  # as in the thread test
            fake.fail_next("429", endpoint="api")
            transport, answered, waiting = HeldFirstAsync(), asyncio.Event(), [0]

            async def asleep(wait: float) -> None:
                waiting[0] += 1
                if waiting[0] == 13:  # as in the thread test
                    transport.release.set()
                await answered.wait()
                seconds.sleep(wait)

            oauth._pace = attrs.evolve(
                oauth._pace, pacer=Pacer(clock=seconds.now, sleep=seconds.sleep, asleep=asleep)
            )
            async with httpx.AsyncClient(auth=oauth.auth(USER), transport=transport) as api:

                async def call(first: bool) -> Any:
                    try:
                        return (await api.get(f"https://{fake.account_host}{LEADS}")).status_code
                    except TryAgainLater as error:
                        return (error.reason, error.status)
                    finally:
                        if first:
                            answered.set()

                return await asyncio.gather(call(True), *(call(False) for _ in range(13)))

    outcomes = asyncio.run(main())
    assert fake.api_call_count(LEADS) == 1
    assert Counter(outcomes) == {("api_paused", 429): 1, ("api_paused", None): 13}


# -- the library's own account checks take their slots too -------------------------------------


def connect(kind: str, oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    """Connect ``USER`` the ``kind`` way: each ends with ``GET /api/v4/account``."""
    if kind == "consent":
        assert run_consent(oauth, fake, USER).connection.is_connected
    elif kind == "keys_tab_code":
        code = fake.issue_keys_tab_code()
        assert oauth.connect_with_code(USER, code, fake.account_host).connection.is_connected
    else:
        token = fake.issue_long_lived_token()
        assert oauth.connect_long_lived(USER, token, fake.account_host).is_connected


@pytest.mark.parametrize("kind", ["consent", "keys_tab_code", "long_lived"])
def test_connecting_then_loading_at_once_stays_within_amocrms_limit(
    limited: FakeAmoCRM, clock: FakeClock, seconds: FakeSeconds, kind: str
) -> None:
    http = httpx.Client(transport=Arrivals(limited, seconds))
    oauth = AmoOAuth(config_for(limited), store=MemoryStore(clock=clock), http=http, clock=clock)
    paced_by(oauth, seconds)
    arrivals = cast(Arrivals, http._transport)
    with oauth, httpx.Client(auth=oauth.auth(USER), transport=arrivals) as api:
        connect(kind, oauth, limited)  # its account check takes the host's first slot
        statuses = [api.get(f"https://{limited.account_host}{LEADS}").status_code for _ in range(7)]
    assert statuses == [200] * 7  # unpaced, the check and 7 calls in 0.9 s made a 429
    assert limited.api_call_count(outcome="rate_limited") == 0
    assert most_in_a_second(arrivals.times) == 7 and len(arrivals.times) == 8


def test_connecting_then_50_tasks_at_once_stay_within_amocrms_limit(
    limited: FakeAmoCRM, clock: FakeClock, seconds: FakeSeconds
) -> None:
    class AsyncArrivals(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner, self.times = limited.async_transport(), list[float]()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.startswith("/api/"):
                self.times.append(seconds.now())
            return await self.inner.handle_async_request(request)

    async def asleep(wait: float) -> None:
        # Fake seconds that pass in order: asyncio wakes its sleepers in the order of their
        # ends (a hundredth of the wait, in real time), each at its own end in fake time.
        wake = seconds.now() + wait
        await asyncio.sleep(wait / 100)
        clock.advance(max(0.0, wake - seconds.now()))

    arrivals = AsyncArrivals()

    async def main() -> list[Any]:
        http = httpx.AsyncClient(transport=arrivals)
        store = MemoryStore(clock=clock)
        async with AsyncAmoOAuth(config_for(limited), store=store, http=http, clock=clock) as oauth:
            pacer = Pacer(clock=seconds.now, sleep=seconds.sleep, asleep=asleep)
            oauth._pace = attrs.evolve(oauth._pace, pacer=pacer)
            token = limited.issue_long_lived_token()
            await oauth.connect_long_lived(USER, token, limited.account_host)
            async with httpx.AsyncClient(auth=oauth.auth(USER), transport=arrivals) as api:

                async def call() -> Any:
                    try:
                        return (await api.get(f"https://{limited.account_host}{LEADS}")).status_code
                    except TryAgainLater as error:
                        return error.reason

                return await asyncio.gather(*(call() for _ in range(50)))

    outcomes = asyncio.run(main())
    # 13 slots within api_max_wait (2 s) after the check's; the others are refused unsent.
    assert Counter(outcomes) == {200: 13, "api_busy": 37}
    assert limited.api_call_count(outcome="rate_limited") == 0
    assert most_in_a_second(arrivals.times) == 7 and len(arrivals.times) == 14


def test_a_verification_during_a_pause_is_deferred_without_sending(
    make: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make(fake)
    fake.fail_next("429", endpoint="api", path=LEADS)  # retry_after 300: the host is paused
    api = httpx.Client(auth=oauth.auth(USER), transport=fake.transport())
    with api, pytest.raises(TryAgainLater):
        api.get(f"https://{fake.account_host}{LEADS}")
    checks = fake.api_call_count(ACCOUNT)
    # A keys-tab code is exchanged (the token endpoint is not paced: a spent code must land);
    # its verification is not sent into the pause but deferred, as after a transient failure.
    code = fake.issue_keys_tab_code()
    result = oauth.connect_with_code("user-2", code, fake.account_host)
    assert (result.outcome.value, result.connection.status.value) == ("in_progress", "exchanged")
    # A long-lived token's check is refused as it stands: nothing is written.
    with pytest.raises(TryAgainLater) as paused:
        oauth.connect_long_lived("user-3", fake.issue_long_lived_token(), fake.account_host)
    assert (paused.value.reason, paused.value.retry_after) == ("api_paused", pytest.approx(300))
    assert not oauth.status("user-3").is_connected
    assert fake.api_call_count(ACCOUNT) == checks  # nothing sent during the pause
    clock.advance(300)
    assert oauth.access_token("user-2")  # the deferred verification is sent, and passes
    assert oauth.status("user-2").is_connected and fake.api_call_count(ACCOUNT) == checks + 1


def test_a_sweep_skips_a_host_paused_by_a_429_instead_of_sitting_it_out(
    make: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock, seconds: FakeSeconds
) -> None:
    """An API call answered 429 (retry_after 300) pauses its host; a sweep then waited the 300 s
    out for every connection on that host (a user's test of ``refresh_due`` against the fake
    sat still for five minutes). Now they are left for a later run before anything is
    claimed: reported ``api_paused``, nothing sent, nothing counted, nobody waits."""
    oauth = make(fake)
    run_consent(oauth, fake, "user-2")
    clock.advance(timedelta(days=85))  # both due; the pacer's clock moves with it
    fake.fail_next("429", endpoint="api", path=LEADS)  # amoCRM's body: retry_after 300
    api = httpx.Client(auth=oauth.auth(USER), transport=fake.transport())
    with api, pytest.raises(TryAgainLater):
        api.get(f"https://{fake.account_host}{LEADS}")  # refreshes USER, then the 429
    refreshes, slept = fake.token_call_count("refresh_token"), len(seconds.slept)
    report = oauth.refresh_due(timedelta(days=7), concurrency=1)
    assert dict(report.failed) == {"user-2": "api_paused"}
    assert fake.token_call_count("refresh_token") == refreshes  # nothing sent into the pause
    assert max(seconds.slept[slept:], default=0.0) < 1.0  # nobody sat the pause out
    record = stored(oauth, "user-2")
    assert record is not None and record.lease is None and record.backoff is None
