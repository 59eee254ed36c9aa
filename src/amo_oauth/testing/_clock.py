"""Clocks for the fake server: the real UTC clock and a manually advanced one."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]
"""A zero-argument callable returning the current time as an aware datetime."""


def system_clock() -> datetime:
    """Return the current real time in UTC."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """Return `moment` converted to UTC, refusing naive datetimes.

    Raises:
        ValueError: `moment` has no timezone (a naive time is ambiguous by design).
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("clock returned a naive datetime; use an aware UTC datetime")
    return moment.astimezone(UTC)


class FakeClock:
    """A thread-safe clock that only moves when told to.

    Call the instance to read the time. Pass it as `clock=` to `FakeAmoCRM` (and to the
    code under test) so code lifetimes (20 minutes), access tokens (24 hours) and refresh
    tokens (3 months) expire exactly when a test says so.

    Args:
        start: the initial time, an aware datetime. Defaults to the current real time,
            truncated to whole seconds, so a library that uses the real clock and the fake
            agree at the start of a test.

    Raises:
        ValueError: `start` is naive.
    """

    def __init__(self, start: datetime | None = None) -> None:
        initial = system_clock().replace(microsecond=0) if start is None else as_utc(start)
        self._now = initial
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        """Return the current fake time (aware, UTC)."""
        with self._lock:
            return self._now

    def advance(self, by: float | timedelta) -> datetime:
        """Move the clock forward and return the new time.

        Args:
            by: seconds (int or float) or a timedelta; must not be negative, because
                clocks that run backwards hide bugs instead of finding them.

        Raises:
            ValueError: `by` is negative.
        """
        step = by if isinstance(by, timedelta) else timedelta(seconds=by)
        if step < timedelta(0):
            raise ValueError("FakeClock.advance() takes a non-negative step")
        with self._lock:
            self._now += step
            return self._now

    def __repr__(self) -> str:
        return f"FakeClock({self().isoformat()})"
