"""The pacer's window (found by the load run, tests/test_load.py): at most ``floor(rate)`` of a
key's requests live at once (in flight, or answered less than a window ago), so requests whose
latencies differ cannot arrive at amoCRM more than ``rate`` within a second. Spacing alone let
a slow first request (a new connection's handshake, a busy loop) land within a second of the
eighth: the fake's 7-a-second limit answered 429 under the default pace, and that 429 paused
the host for five minutes. Every wait here is on a manual clock: a sleep moves it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from amo_oauth import AmoOAuth, AsyncAmoOAuth, MemoryStore
from amo_oauth._pace import _LIVE_AT_MOST, PACE_GUARD, Pacer, Sending
from amo_oauth.testing import FakeAmoCRM

from helpers import PaceClock, config_for, query_of, run_consent

KEY = ("client", "test.amocrm.ru")
RATE = 7.0
STEP = (1 + PACE_GUARD) / RATE
WINDOW = 1 + PACE_GUARD  # floor(7) / 7 seconds, and the guard


@pytest.fixture
def ticks() -> PaceClock:
    return PaceClock()


@pytest.fixture
def pacer(ticks: PaceClock) -> Pacer:
    return Pacer(clock=ticks, sleep=ticks.sleep, asleep=ticks.asleep)


def _send(pacer: Pacer) -> Sending:
    sending = pacer.wait_for(pacer.reserve(KEY, RATE))
    assert sending is not None
    return sending


def _slow_first_then_six(pacer: Pacer, ticks: PaceClock) -> None:
    """The first request is answered late, at 0.5 s (it may have arrived just before that);
    the next six are answered as they are sent, 0.15 s apart."""
    first = _send(pacer)
    for number in range(1, 7):
        pacer.leave(_send(pacer))
        if number == 3:  # between the fourth request (0.45 s) and the fifth (0.6 s)
            ticks.now = 0.5
            pacer.leave(first)
    assert ticks.now == pytest.approx(6 * STEP)


def test_the_eighth_waits_while_seven_are_live(pacer: Pacer, ticks: PaceClock) -> None:
    _slow_first_then_six(pacer, ticks)
    _send(pacer)  # its slot is at 7 steps (1.05 s); spacing alone would send it then
    # Seven live until the second request's answer (0.15 s) is a window old: then the eighth
    # goes. Whenever the first arrived (0.5 s at the latest), the second arrived by 0.15 s:
    # no second holds eight.
    assert ticks.now == pytest.approx(STEP + WINDOW)
    assert ticks.now > 7 * STEP


def test_an_awaited_send_waits_the_same(pacer: Pacer, ticks: PaceClock) -> None:
    _slow_first_then_six(pacer, ticks)

    async def eighth() -> Sending | None:
        return await pacer.await_for(pacer.reserve(KEY, RATE))

    assert asyncio.run(eighth()) is not None
    assert ticks.now == pytest.approx(STEP + WINDOW)


def test_prompt_answers_keep_the_plain_spacing(pacer: Pacer, ticks: PaceClock) -> None:
    for _ in range(20):
        pacer.leave(_send(pacer))
    assert ticks.now == pytest.approx(19 * STEP)


def test_a_request_never_reported_gives_its_place_up_in_the_end(
    pacer: Pacer, ticks: PaceClock
) -> None:
    for _ in range(7):
        _send(pacer)  # none of them is ever answered (a sender that lost track)
    _send(pacer)
    assert _LIVE_AT_MOST <= ticks.now < _LIVE_AT_MOST + 1


def test_a_slot_without_a_rate_has_no_window(pacer: Pacer) -> None:
    assert pacer.wait_for(None) is None
    pacer.leave(None)  # nothing to leave


def _live(oauth: AmoOAuth | AsyncAmoOAuth) -> int:
    """Requests the service's pacer holds as in flight, over every key."""
    return sum(len(lane.in_flight) for lane in oauth._pace.pacer._lanes.values())


def test_every_paced_send_leaves_the_window(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """The verification (the service's own send) and auth()'s requests report their answers:
    none stays in flight, else seven would stop the host for ``_LIVE_AT_MOST``."""
    oauth = make_oauth()
    run_consent(oauth, fake, "ann")  # the verification: GET /api/v4/account
    with httpx.Client(auth=oauth.auth("ann"), transport=fake.transport()) as api:
        for _ in range(3):
            assert api.get(f"https://{fake.account_host}/api/v4/leads").status_code == 200
    assert sum(len(lane.answered) for lane in oauth._pace.pacer._lanes.values()) == 4
    assert _live(oauth) == 0


def test_every_awaited_paced_send_leaves_the_window(fake: FakeAmoCRM) -> None:
    async def scenario() -> tuple[int, int]:
        http = httpx.AsyncClient(transport=fake.async_transport())
        async with AsyncAmoOAuth(config_for(fake), store=MemoryStore(), http=http) as oauth:
            begun = await oauth.begin("ann")
            query = query_of(fake.authorize(begun.state))
            await oauth.handle_callback(query, binding=begun.binding)
            async with httpx.AsyncClient(
                auth=oauth.auth("ann"), transport=fake.async_transport()
            ) as api:
                for _ in range(3):
                    leads = await api.get(f"https://{fake.account_host}/api/v4/leads")
                    assert leads.status_code == 200
            lanes = oauth._pace.pacer._lanes.values()
            return sum(len(lane.answered) for lane in lanes), _live(oauth)

    assert asyncio.run(scenario()) == (4, 0)
