"""The API's pace: one schedule per integration and account host, in this process.

amoCRM allows about 7 requests per second per integration and answers more with 429 and a
``retry_after`` (300 s in its example); an account that keeps exceeding it is blocked, 403 on
every request (protocol notes §9). So every request a service sends to an account host's API
(``auth()``'s calls, a new connection's verification and a long-lived token's check, the
disconnect hook's token checks), and the keep-alive sweep's token calls, takes a slot of one
``Pacer``, keyed by ``(client id, host)``:

- spacing, not a bucket: a key's requests go out ``(1 + PACE_GUARD) / rate`` seconds apart, so
  an idle minute saves up no burst and no one-second window holds more than ``rate``;
- and, for API requests, a window that holds for arrivals, not only sends: amoCRM counts a
  request when it arrives, and one that arrives late (a new connection's handshake, a busy
  event loop) lands closer to the next ones than they were sent. So at most ``floor(rate)``
  (at least one) of a key's requests are *live* at once: in flight, or answered less than a
  window ago (``floor(rate) / rate`` seconds, plus the guard). A request arrives before its
  answer does, so requests sent this way never put more than ``rate`` in any second at
  amoCRM, whatever their latencies. A send whose window is full waits for the oldest answer
  to age out (``Pacer.wait_for``), but a bounded caller (``auth()``, the hook) only until
  its ``api_max_wait`` from its reservation is up, slot and window together: when the window
  will not have room by then it is refused ``api_busy``, nothing sent; each send reports its
  answer (``Pacer.leave``);
- a 429 (or a 403) pauses the key: until the pause ends, ``auth()``, the hook and the
  verification are refused without sending (``TryAgainLater``, ``api_paused``), the sweep
  waits; a caller already waiting for its slot looks again when its turn comes (``recheck``),
  so none sends into a pause that began while it waited; after a 429 one caller, and one
  only, may resend when the pause ends within ``Config.api_max_wait``.

Thread-safe (a lock around a few arithmetic steps, never held while waiting) and usable from
asyncio tasks (the same reservation, then ``asleep``). Process-local: processes sharing an
integration share amoCRM's budget only by configuration (each gets ``rate / N``).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import httpx

from ._errors import TryAgainLater
from ._reasons import Reason
from .stores._forks import reset_in_child

__all__ = [
    "BLOCKED_PAUSE",
    "DEFAULT_API_RATE",
    "MAX_PAUSE",
    "PACE_GUARD",
    "ApiPace",
    "Pacer",
    "Sending",
    "Slot",
    "is_api_request",
    "pause_after",
]

#: amoCRM's documented limit: requests per second per integration (protocol notes §9).
DEFAULT_API_RATE: Final = 7.0
#: A key's requests are spaced this much more than ``1 / rate`` apart. Spaced exactly
#: ``1 / rate``, ``rate + 1`` requests fit in one closed second (the first and the last exactly
#: a second apart), so the least lateness of one send puts ``rate + 1`` in a window at amoCRM;
#: the guard absorbs a send up to 5 % of a second late at 7/s.
PACE_GUARD: Final = 0.05
#: The pause after a 403 (a blocked account or client, §9) that gives no ``retry_after``: the
#: block is lifted by amoCRM's support, not by time, so requests meanwhile only add to it.
BLOCKED_PAUSE: Final = 60.0
#: The pause after a 429 without a readable ``retry_after``.
DEFAULT_429_PAUSE: Final = 1.0
#: The longest pause taken from an answer (amoCRM's example says 300 s): a larger number in a
#: damaged body must not stop a key's requests for a day.
MAX_PAUSE: Final = 900.0
#: A pacer forgets keys with no slot ahead and no pause once it tracks this many.
_PRUNE_AT: Final = 4096
#: A request in flight longer than this (seconds) no longer holds its place in the window: a
#: sender that never reported its answer must not stop its key for good. Longer than any
#: ``Config.http_timeout`` a request runs under.
_LIVE_AT_MOST: Final = 600.0
#: A pruned pacer keeps the keys answered within this many seconds (a window at 1/s or more
#: is at most 1.05 s long).
_KEEP_ANSWERS: Final = 60.0
#: Seconds by which an answer may be short of a window's age and still age out.
_TOLERANCE: Final = 1e-6
#: How long a window that only requests in flight fill is looked at again (seconds).
_IN_FLIGHT_POLL: Final = 0.02

Key = tuple[str, str]
"""``(client id, host)``."""


def pause_after(status: int | None, retry_after: float | None) -> float | None:
    """How long an answer pauses its key, in seconds: a 429 for its ``retry_after``
    (``DEFAULT_429_PAUSE`` when it has none), a 403 for ``BLOCKED_PAUSE`` (or a longer
    ``retry_after``), each at most ``MAX_PAUSE``; None for any other answer."""
    if status == 429:
        seconds = DEFAULT_429_PAUSE if retry_after is None else retry_after
    elif status == 403:
        seconds = max(BLOCKED_PAUSE, retry_after or 0.0)
    else:
        return None
    return min(seconds, MAX_PAUSE)


@attrs.frozen
class Slot:
    """One request's turn on a key's schedule: ``at`` (the pacer's clock) it may be sent, ``wait``
    seconds after it was handed out; ``resend_of`` is the status (429) of the answer a resend
    repeats, for its refusal."""

    key: Key
    at: float
    wait: float
    resend_of: int | None = None
    #: The rate the slot was taken at: its window's size (None: no window, e.g. a test's slot).
    rate: float | None = None
    #: The latest moment (the pacer's clock) its request may wait until, slot and window
    #: together: ``reserve``'s ``within`` counted from the reservation (inf: no bound).
    deadline: float = math.inf


@attrs.define
class _Lane:
    """One key's schedule: its next free slot, its pause, and whether the pause's one resend
    was taken (monotonic seconds)."""

    next_slot: float = -math.inf
    paused_until: float = -math.inf
    #: When the latest pause began: a 429 to a request sent before it is of the same burst.
    pause_began: float = -math.inf
    resend_taken: bool = False
    #: The live requests (see the module): when each was sent, while in flight, by its
    #: ticket; then when each was answered, oldest first.
    in_flight: dict[int, float] = attrs.Factory(dict)
    answered: collections.deque[float] = attrs.Factory(collections.deque)


@attrs.frozen
class Sending:
    """A request let through its key's window (``Pacer.enter``): pass it to ``Pacer.leave``
    once its answer (or its failure) is in."""

    key: Key
    ticket: int


async def _asyncio_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


class Pacer:
    """Slots and pauses per key, for threads and asyncio tasks.

    Args:
        clock: monotonic seconds (``time.monotonic``); a test passes a fake clock's.
        sleep: how a thread waits for its slot (``time.sleep``).
        asleep: how a task waits for its slot (``asyncio.sleep``).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
        asleep: Callable[[float], Awaitable[object]] = _asyncio_sleep,
    ) -> None:
        self.clock = clock
        self.sleep = sleep
        self.asleep = asleep
        self._lock = threading.Lock()
        self._lanes: dict[Key, _Lane] = {}
        self._tickets = itertools.count()
        reset_in_child(self)

    def after_fork(self) -> None:
        """In a forked child: a new lock (another thread may have held this one at the fork)
        and a schedule of its own (a child is one more process sharing the budget)."""
        self._lock = threading.Lock()
        self._lanes = {}

    def reserve(
        self,
        key: Key,
        rate: float,
        *,
        within: float = math.inf,
    ) -> Slot:
        """Take the key's next slot for one request at ``rate`` requests per second.

        Args:
            within: the most seconds the caller may wait, for its slot and then for its
                window together (``auth()``, the hook: ``Config.api_max_wait``; a
                verification, the sweep: no bound): it is refused, and takes no slot, when
                the slot is further away, and ``wait_for`` refuses it when the window will
                not have room by then (the slot's ``deadline``). It is refused while the key
                is paused, and its slot is void if a pause begun after it covers it
                (``recheck``).

        Returns:
            The ``Slot``: sleep ``slot.wait`` seconds, then ``recheck`` it before sending.

        Raises:
            TryAgainLater: ``api_paused`` (a 429 or 403 paused the key) or ``api_busy`` (this
                process's requests for the key fill more than ``within`` seconds), with
                ``retry_after``.
        """
        with self._lock:
            now = self.clock()
            lane = self._lane(key, now)
            if lane.paused_until > now:
                raise _paused(lane.paused_until - now, None)
            slot = max(now, lane.next_slot, lane.paused_until)
            if slot - now > within:
                raise TryAgainLater(
                    Reason.API_BUSY,
                    f"this process's requests to that host fill the next {slot - now:.2f} s",
                    retry_after=slot - now,
                )
            lane.next_slot = slot + (1.0 + PACE_GUARD) / rate
            return Slot(key, slot, slot - now, rate=rate, deadline=now + within)

    def recheck(self, slot: Slot) -> Slot | None:
        """Whether a slot whose time has come may still be sent: a pause that began (or grew)
        while its caller waited, and runs past the slot's time, voids it. Called after the
        wait and right before the send, so no caller sends into a pause that began while it
        waited (a request already sent is beyond recall).

        Returns:
            None: send now.

        Raises:
            TryAgainLater: ``api_paused`` (``status``: the slot's ``resend_of``), nothing sent.
        """
        with self._lock:
            now = self.clock()
            paused_until = self._lane(slot.key, now).paused_until
        if paused_until <= slot.at:
            return None
        raise _paused(max(paused_until - now, 0.0), slot.resend_of)

    def wait_for(self, slot: Slot | None) -> Sending | None:
        """Sleep (``sleep``) until ``slot`` comes, ``recheck`` it, and so on until it may be sent
        (None: nothing to wait for); then until its key's window has room (``_enter``), but
        never past the slot's ``deadline``.

        Returns:
            The ``Sending`` to ``leave`` once the request is answered (or failed); None for
            no slot, or a slot without a window.

        Raises:
            TryAgainLater: ``api_paused``, from ``recheck``; ``api_busy`` when the window will
                not have room by the slot's ``deadline`` (nothing sent; ``retry_after``: the
                seconds until it might).
        """
        turn = slot
        while turn is not None:
            if turn.wait > 0:
                self.sleep(turn.wait)
            turn = self.recheck(turn)
            if turn is None and slot is not None:
                turn, sending = self._enter(slot)
                if turn is None:
                    return sending
        return None

    async def await_for(self, slot: Slot | None) -> Sending | None:
        """``wait_for`` for a task: it awaits ``asleep``."""
        turn = slot
        while turn is not None:
            if turn.wait > 0:
                await self.asleep(turn.wait)
            turn = self.recheck(turn)
            if turn is None and slot is not None:
                turn, sending = self._enter(slot)
                if turn is None:
                    return sending
        return None

    def _enter(self, slot: Slot) -> tuple[Slot | None, Sending | None]:
        """Let ``slot``'s request into its key's window (see the module), or say how long to
        wait first: ``(None, sending)`` to send now, ``(slot to wait for, None)`` otherwise
        (the same slot, its ``wait`` the seconds until the oldest answer ages out).

        Raises:
            TryAgainLater: ``api_busy`` when the window cannot have room by ``slot.deadline``.
        """
        if slot.rate is None:
            return None, None
        size = max(1, math.floor(slot.rate))
        window = (1.0 + PACE_GUARD) * size / slot.rate
        with self._lock:
            now = self.clock()
            lane = self._lane(slot.key, now)
            # A microsecond's tolerance: a sleep of exactly the wait may end a rounding
            # error short of it, and a wait of 1e-16 s would not move a float clock at all.
            while lane.answered and lane.answered[0] + window <= now + _TOLERANCE:
                lane.answered.popleft()
            for ticket, sent in list(lane.in_flight.items()):
                if sent <= now - _LIVE_AT_MOST:
                    del lane.in_flight[ticket]
            if len(lane.in_flight) + len(lane.answered) < size:
                ticket = next(self._tickets)
                lane.in_flight[ticket] = now
                return None, Sending(slot.key, ticket)
            # Full. The soonest room: the oldest answer ages out, or (only requests in flight)
            # one is answered now and ages out a window later, never sooner.
            room = lane.answered[0] + window if lane.answered else now + window
            wait = room - now if lane.answered else _IN_FLIGHT_POLL
        if room > slot.deadline + _TOLERANCE:
            # Its slot is not given back: the slot's moment has passed, and the spacing of the
            # slots handed out after it holds whether or not this one is sent.
            raise TryAgainLater(
                Reason.API_BUSY,
                f"this process's requests to that host fill its window for {room - now:.2f} s",
                retry_after=room - now,
            )
        return attrs.evolve(slot, wait=max(wait, 0.0)), None

    def leave(self, sending: Sending | None) -> None:
        """A request let through the window was answered, or failed, just now: its place
        stays taken until the window's length has passed (its arrival was before now)."""
        if sending is None:
            return
        with self._lock:
            now = self.clock()
            lane = self._lane(sending.key, now)
            if lane.in_flight.pop(sending.ticket, None) is not None:
                lane.answered.append(now)

    def paused_for(self, key: Key) -> float:
        """Seconds left of the key's pause (0: not paused)."""
        with self._lock:
            now = self.clock()
            return max(self._lane(key, now).paused_until - now, 0.0)

    def pause(self, key: Key, seconds: float, sent_at: float, *, resent: bool = False) -> None:
        """Pause the key for ``seconds`` from now (a longer pause already running stays), for
        an answer to a request sent at ``sent_at`` (this pacer's clock). An answer to a request
        sent before the latest pause began is of the burst that began it, and an answer to the
        pause's own resend (``resent``) is of that pause: either lengthens it and brings no
        resend of its own, however late it arrives.
        """
        with self._lock:
            now = self.clock()
            lane = self._lane(key, now)
            if sent_at > lane.pause_began and not resent:  # news: a pause with its one resend
                lane.pause_began = now
                lane.resend_taken = False
            lane.paused_until = max(lane.paused_until, now + seconds)

    def claim_resend(self, key: Key, rate: float, within: float) -> Slot:
        """The one resend of the key's current pause, for a caller amoCRM answered 429: the
        first claimant whose wait (the pause's end, then a slot) is at most ``within`` seconds
        gets it. Every other one is refused, so N callers answered 429 make one resend.

        Returns:
            The resend's ``Slot`` (``resend_of`` 429), at or after the pause's end.

        Raises:
            TryAgainLater: ``api_paused``, status 429, with the pause's ``retry_after``.
        """
        with self._lock:
            now = self.clock()
            lane = self._lane(key, now)
            slot = max(now, lane.next_slot, lane.paused_until)
            if lane.resend_taken or slot - now > within:
                raise _paused(max(lane.paused_until - now, 0.0), 429)
            lane.resend_taken = True
            lane.next_slot = slot + (1.0 + PACE_GUARD) / rate
            return Slot(key, slot, slot - now, resend_of=429, rate=rate, deadline=now + within)

    def refusal(self, key: Key, status: int | None) -> TryAgainLater:
        """The ``api_paused`` error for the key's pause as it stands (``retry_after``: what is
        left of it)."""
        with self._lock:
            now = self.clock()
            return _paused(max(self._lane(key, now).paused_until - now, 0.0), status)

    def _lane(self, key: Key, now: float) -> _Lane:
        if key not in self._lanes and len(self._lanes) >= _PRUNE_AT:
            self._lanes = {
                name: lane
                for name, lane in self._lanes.items()
                if lane.next_slot > now
                or lane.paused_until > now
                or lane.resend_taken
                or lane.in_flight
                or (lane.answered and lane.answered[-1] > now - _KEEP_ANSWERS)
            }
        return self._lanes.setdefault(key, _Lane())


def is_api_request(url: httpx.URL) -> bool:
    """A request to amoCRM's REST API (``/api/...`` on an account host): what its limit of 7 a
    second counts (protocol notes §9). The token endpoint (``/oauth2/access_token``: whether it
    shares the limit is unknown, §9) and the shared hosts' account lookup are not."""
    return url.path.startswith("/api/")


def _paused(seconds: float, status: int | None) -> TryAgainLater:
    hint = f"amoCRM asked for a pause of this host's requests; {seconds:.0f} s left"
    return TryAgainLater(Reason.API_PAUSED, hint, retry_after=seconds, status=status)


@attrs.frozen
class ApiPace:
    """One service's view of its pacer: whose requests (``client_id``), at what ``rate``
    (requests per second; None: ``auth()`` and the hook are not paced) and how long a caller
    may wait (``max_wait`` seconds). The service sleeps (or awaits) the seconds returned."""

    pacer: Pacer
    client_id: str
    rate: float | None
    max_wait: float

    def turn(self, host: str) -> Slot | None:
        """An API call's slot (``auth()``, the hook), at most ``max_wait`` seconds away, its
        window's wait bounded by the same ``max_wait`` (``Pacer.wait_for``); None when the pace
        is off.

        Raises:
            TryAgainLater: ``api_paused`` or ``api_busy`` (see ``Pacer.reserve``).
        """
        if self.rate is None:
            return None
        return self.pacer.reserve(self._key(host), self.rate, within=self.max_wait)

    def check_turn(self, host: str) -> Slot | None:
        """The slot of a check the library makes on its own (a new connection's verification,
        a long-lived token's check): it waits its turn however far away (a consent must not
        fail for the pace), but is refused during a pause; None when the pace is off.

        Raises:
            TryAgainLater: ``api_paused`` (the caller defers, as for a transient failure).
        """
        if self.rate is None:
            return None
        return self.pacer.reserve(self._key(host), self.rate)

    def paused(self, host: str) -> bool:
        """Whether ``host``'s schedule is paused just now."""
        return self.pacer.paused_for(self._key(host)) > 0

    def refuse_if_paused(self, host: str) -> None:
        """Refuse at once while ``host``'s schedule is paused (``auth()`` looks before it
        reads, and perhaps refreshes, a token); nothing when the pace is off.

        Raises:
            TryAgainLater: ``api_paused``, ``retry_after``: what is left of the pause.
        """
        if self.rate is not None and self.paused(host):
            raise self.pacer.refusal(self._key(host), None)

    def sweep_turn(self, host: str, rate: float) -> Slot:
        """A sweep's token call's slot at the sweep's own ``rate``, however far; refused while
        the host is paused (a sweep must not sit out a 429's five minutes per host: nothing
        is sent, the claim is released unspent, and the sweep reports ``api_paused``).

        Raises:
            TryAgainLater: ``api_paused``.
        """
        slot = self.pacer.reserve(self._key(host), rate)
        # Spaced, but outside the API's window: the token endpoint is not what amoCRM's 7 a
        # second counts (``is_api_request``), and a sweep's refresh must not wait for the
        # app's API answers to age out.
        return attrs.evolve(slot, rate=None)

    def answered(
        self,
        host: str,
        status: int | None,
        retry_after: float | None,
        sent_at: float,
        *,
        resent: bool = False,
    ) -> None:
        """Note amoCRM's answer from ``host`` to a request sent at ``sent_at`` (the pacer's
        clock; ``resent``: the pause's resend): a 429 or 403 pauses the key (``pause_after``,
        ``Pacer.pause``)."""
        seconds = pause_after(status, retry_after)
        if seconds is not None:
            self.pacer.pause(self._key(host), seconds, sent_at, resent=resent)

    def resend_turn(self, host: str, *, first: bool) -> Slot:
        """After a 429 (``answered`` first): the slot of the one resend (see
        ``Pacer.claim_resend``); a request answered 429 ``first`` time only is resent.

        Raises:
            TryAgainLater: ``api_paused``, status 429.
        """
        if not first:
            raise self.pacer.refusal(self._key(host), 429)
        rate = self.rate if self.rate is not None else DEFAULT_API_RATE
        return self.pacer.claim_resend(self._key(host), rate, self.max_wait)

    def _key(self, host: str) -> Key:
        return (self.client_id, host)
