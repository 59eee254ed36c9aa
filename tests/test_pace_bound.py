"""A paced API request's whole wait, its slot and then its key's window, is bounded by its
``within`` (``Config.api_max_wait`` for ``auth()`` and the hook), counted from its
reservation: when the window will not have room in time it is refused ``api_busy``, nothing
sent. A review found the window's wait unbounded: callers arriving at 6/s on a host answering
in 1 s queued ever longer (14 s in 12 s), and seven hung answers held an eighth caller for as
long as they hung. Every wait here is on a virtual clock: a sleep moves it, nothing is timed."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

import attrs
import httpx
import pytest

from amo_oauth import AmoOAuth, AsyncAmoOAuth, MemoryStore, TryAgainLater
from amo_oauth._pace import PACE_GUARD, Pacer
from amo_oauth._reasons import Reason
from amo_oauth.testing import FakeAmoCRM

from helpers import PaceClock, config_for, query_of, run_consent

KEY = ("client", "test.amocrm.ru")
RATE = 7.0
WINDOW = 1 + PACE_GUARD  # floor(7) / 7 seconds, and the guard
MAX_WAIT = 2.0


@pytest.fixture
def ticks() -> PaceClock:
    return PaceClock()


@pytest.fixture
def pacer(ticks: PaceClock) -> Pacer:
    return Pacer(clock=ticks, sleep=ticks.sleep)


def _fill_with_hung(pacer: Pacer) -> None:
    """Seven requests let in and never answered (a client without a timeout)."""
    for _ in range(int(RATE)):
        assert pacer.wait_for(pacer.reserve(KEY, RATE, within=MAX_WAIT)) is not None


def test_hung_answers_refuse_the_next_caller_within_its_wait(
    pacer: Pacer, ticks: PaceClock
) -> None:
    _fill_with_hung(pacer)
    start = ticks.now
    slot = pacer.reserve(KEY, RATE, within=MAX_WAIT)
    with pytest.raises(TryAgainLater) as refused:
        pacer.wait_for(slot)
    assert refused.value.reason is Reason.API_BUSY
    assert refused.value.retry_after is not None and refused.value.retry_after >= WINDOW - 1e-9
    assert ticks.now - start <= MAX_WAIT


def test_an_answer_aging_out_too_late_refuses_without_waiting(
    pacer: Pacer, ticks: PaceClock
) -> None:
    sendings = [pacer.wait_for(pacer.reserve(KEY, RATE)) for _ in range(int(RATE))]
    for sending in sendings:
        pacer.leave(sending)  # all answered at 6 * STEP: the window has room a WINDOW later
    answered_at = ticks.now
    slot = pacer.reserve(KEY, RATE, within=0.5)
    with pytest.raises(TryAgainLater) as refused:
        pacer.wait_for(slot)
    assert refused.value.reason is Reason.API_BUSY
    assert refused.value.retry_after == pytest.approx(answered_at + WINDOW - ticks.now)
    assert ticks.now == answered_at + slot.wait  # its slot's wait, not a moment of the window's


def test_room_within_the_wait_lets_the_caller_in(pacer: Pacer, ticks: PaceClock) -> None:
    sendings = [pacer.wait_for(pacer.reserve(KEY, RATE)) for _ in range(int(RATE))]
    for sending in sendings:
        pacer.leave(sending)
    answered_at = ticks.now
    assert pacer.wait_for(pacer.reserve(KEY, RATE, within=MAX_WAIT)) is not None
    assert ticks.now == pytest.approx(answered_at + WINDOW)


def test_an_unbounded_caller_still_waits_for_the_window(pacer: Pacer, ticks: PaceClock) -> None:
    """A verification (and the sweep's slots, which have no window) wait however long."""
    sendings = [pacer.wait_for(pacer.reserve(KEY, RATE)) for _ in range(int(RATE))]
    ticks.sleep(5.0)  # answered late: the window is full until 5 s + WINDOW from here
    for sending in sendings:
        pacer.leave(sending)
    answered_at = ticks.now
    assert pacer.wait_for(pacer.reserve(KEY, RATE)) is not None
    assert ticks.now == pytest.approx(answered_at + WINDOW)


def test_a_resend_is_bounded_the_same(pacer: Pacer, ticks: PaceClock) -> None:
    _fill_with_hung(pacer)
    pacer.pause(KEY, 0.1, sent_at=ticks.now)
    slot = pacer.claim_resend(KEY, RATE, within=MAX_WAIT)
    start = ticks.now
    with pytest.raises(TryAgainLater) as refused:
        pacer.wait_for(slot)
    assert refused.value.reason is Reason.API_BUSY
    assert ticks.now - start <= MAX_WAIT


class VirtualTime:
    """Tasks' sleeps on a virtual clock: ``run`` wakes the earliest sleeper once every task is
    waiting, so the schedule is the same on any machine."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def asleep(self, seconds: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(seconds, 0.0), next(self._order), woken))
        await woken

    async def run(self, main: asyncio.Task[None]) -> None:
        while not main.done() or self._sleepers:
            for _ in range(20):  # let every woken task run up to its next sleep
                await asyncio.sleep(0)
            if self._sleepers:
                at, _, woken = heapq.heappop(self._sleepers)
                self.now = max(self.now, at)
                woken.set_result(None)
        await main


def test_callers_at_six_a_second_on_one_second_answers_wait_at_most_api_max_wait() -> None:
    """The review's case: 48 callers 1/6 s apart, each answered a second after it is sent."""
    time = VirtualTime()
    pacer = Pacer(clock=time, asleep=time.asleep)
    waits: list[float] = []
    sent: list[float] = []
    refused: list[Reason] = []

    async def caller() -> None:
        start = time.now
        try:
            sending = await pacer.await_for(pacer.reserve(KEY, RATE, within=MAX_WAIT))
        except TryAgainLater as error:
            refused.append(error.reason)
            return
        waits.append(time.now - start)
        sent.append(time.now)
        await time.asleep(1.0)
        pacer.leave(sending)

    async def arrivals() -> None:
        callers = []
        for _ in range(48):
            callers.append(asyncio.ensure_future(caller()))
            await time.asleep(1 / 6)
        await asyncio.gather(*callers)

    async def main() -> None:
        await time.run(asyncio.ensure_future(arrivals()))

    asyncio.run(main())
    assert len(waits) + len(refused) == 48
    assert max(waits) <= MAX_WAIT + 1e-9, f"waited {max(waits):.2f} s"
    assert refused and set(refused) == {Reason.API_BUSY}
    assert len(waits) >= 20  # about 7 per WINDOW + 1 s round trip over 8 s: the pace still serves
    for first in sent:  # the arrival guarantee: never more than 7 sent within a second
        assert sum(first <= other <= first + 1.0 for other in sent) <= int(RATE)


def _hang_the_window(oauth: AmoOAuth | AsyncAmoOAuth, fake: FakeAmoCRM, ticks: PaceClock) -> Pacer:
    """The service's pacer on ``ticks``, its host's window held by seven hung requests."""
    pacer = Pacer(clock=ticks, sleep=ticks.sleep, asleep=ticks.asleep)
    oauth._pace = attrs.evolve(oauth._pace, pacer=pacer)
    for _ in range(int(RATE)):
        pacer.wait_for(pacer.reserve((fake.client_id, fake.account_host), RATE))
    return pacer


def test_auth_refuses_api_busy_within_api_max_wait(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, ticks: PaceClock
) -> None:
    oauth = make_oauth()
    run_consent(oauth, fake, "ann")
    _hang_the_window(oauth, fake, ticks)
    start = ticks.now
    api = httpx.Client(auth=oauth.auth("ann"), transport=fake.transport())
    with api, pytest.raises(TryAgainLater) as refused:
        api.get(f"https://{fake.account_host}/api/v4/leads")
    assert refused.value.reason is Reason.API_BUSY
    assert 0 < ticks.now - start <= oauth.config.api_max_wait


def test_async_auth_refuses_api_busy_within_api_max_wait(
    fake: FakeAmoCRM, ticks: PaceClock
) -> None:
    async def scenario() -> tuple[Reason, float]:
        http = httpx.AsyncClient(transport=fake.async_transport())
        async with AsyncAmoOAuth(config_for(fake), store=MemoryStore(), http=http) as oauth:
            begun = await oauth.begin("ann")
            query = query_of(fake.authorize(begun.state))
            await oauth.handle_callback(query, binding=begun.binding)
            _hang_the_window(oauth, fake, ticks)
            start = ticks.now
            async with httpx.AsyncClient(
                auth=oauth.auth("ann"), transport=fake.async_transport()
            ) as api:
                with pytest.raises(TryAgainLater) as refused:
                    await api.get(f"https://{fake.account_host}/api/v4/leads")
            return refused.value.reason, ticks.now - start

    reason, waited = asyncio.run(scenario())
    assert reason is Reason.API_BUSY
    assert 0 < waited <= config_for(fake).api_max_wait
