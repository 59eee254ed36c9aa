"""The state one fake's parts share: one lock over all of it, the clocks, and the parts.

Endpoints and the public methods reach the accounts, the grants, the faults and the counts
through one `Core`, so each part stays a plain object that knows only its own job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

from ._clock import Clock, as_utc
from ._directory import Directory
from ._faults import Faults, finish, instead
from ._grants import Grants
from ._knobs import Knobs
from ._tally import Tally
from ._types import FakeResponse
from ._wire import Request

Work = Callable[[], tuple[str, FakeResponse]]
"""An endpoint's real work: its outcome slug, and its answer."""


class Core:
    """Everything a `FakeAmoCRM` holds, behind one re-entrant lock.

    The lock guards the whole state; the latency knob is slept outside it (in the transport),
    so concurrent clients really overlap. `knobs` is the fake itself, read through `Knobs` on
    every request, so a knob set on the fake applies at once.
    """

    def __init__(
        self, knobs: Knobs, clock: Clock, monotonic: Callable[[], float], user_id: int
    ) -> None:
        as_utc(clock())  # fail fast on a clock returning naive datetimes
        self.lock = threading.RLock()
        self.knobs = knobs
        self.monotonic = monotonic
        """The rate limiter's clock: monotonic seconds, independent of `clock` (as amoCRM's)."""
        self._clock = clock
        self.directory = Directory(user_id)
        self.grants = Grants(self.now, knobs)
        self.faults = Faults()
        self.tally = Tally()

    def now(self) -> datetime:
        """The current time by the fake's clock, in UTC."""
        return as_utc(self._clock())

    def answer(
        self,
        endpoint: str,
        grant: str | None,
        request: Request,
        work: Work,
        note: Callable[[str], None],
    ) -> FakeResponse:
        """Answer `request` at `endpoint` by `work`, unless a scripted fault answers instead;
        `note` counts the outcome either way."""
        fault = self.faults.take(endpoint, grant, request)
        if fault is not None and fault.answers_instead:
            note(fault.outcome)
            return finish(instead(fault.kind), fault, self.knobs.latency)  # a 429's fields
        outcome, answer = work()
        note(outcome)
        return finish(answer, fault, self.knobs.latency)
