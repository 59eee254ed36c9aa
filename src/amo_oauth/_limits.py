"""Bounded token-endpoint calls for code exchanges: process-local sliding windows.

amoCRM blocks integrations and IPs that exceed its limits (protocol notes §9), and every code
exchange carries the client secret. A looped ``/connect`` + ``/callback?code=garbage``, or a
flood of widget installs, must not turn into a flood of token calls. The counters live in this
service object (no store writes: a rate-limited callback writes nothing): one per process in
an app that makes one ``AmoOAuth``; run N processes and the integration-wide bound is N times
as large.

Widget installs (anonymous: no session, no state) may take at most half of the per-process
bound, so a flood of them never leaves the app's own users without a code exchange.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

__all__ = ["ExchangeLimiter"]


class ExchangeLimiter:
    """At most ``per_connection``, ``per_host`` and ``per_process`` code exchanges in any
    ``window`` seconds (monotonic); widget installs at most half of ``per_process``."""

    def __init__(
        self,
        per_connection: int,
        per_host: int,
        per_process: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = {
            "connection": per_connection,
            "host": per_host,
            "process": per_process,
            "widgets": max(1, per_process // 2),
        }
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], deque[float]] = {}
        # Slots admitted whose claim has not resolved yet, by connection: while one is in
        # flight, a caller beyond the bound is more likely a duplicate about to be answered.
        self._in_flight: dict[str, int] = {}

    def admit(self, connection_key: str, host: str, *, widget: bool = False) -> float | None:
        """Count one exchange for this connection and host, unless a bound is reached (then
        nothing is counted and None is returned). Returns the slot's time, for ``claimed``."""
        now = self._clock()
        keys = _keys(connection_key, host, widget)
        with self._lock:
            windows = [self._window_of(key, now) for key in keys]
            if any(len(w) >= self._limits[key[0]] for key, w in zip(keys, windows, strict=True)):
                return None
            for window in windows:
                window.append(now)
            self._in_flight[connection_key] = self._in_flight.get(connection_key, 0) + 1
            return now

    def claimed(
        self, connection_key: str, host: str, slot: float, *, exchanged: bool, widget: bool = False
    ) -> None:
        """The claim of an admitted slot resolved. Without an exchange (the claim went to
        another worker, or the code turned out a duplicate) the slot is given back:
        duplicates never count."""
        with self._lock:
            left = self._in_flight.get(connection_key, 0) - 1
            if left > 0:
                self._in_flight[connection_key] = left
            else:
                self._in_flight.pop(connection_key, None)
            if exchanged:
                return
            for key in _keys(connection_key, host, widget):
                window = self._seen.get(key)
                if window is not None and slot in window:
                    window.remove(slot)

    def in_flight(self, connection_key: str) -> bool:
        """True while an admitted claim for this connection has not resolved."""
        with self._lock:
            return connection_key in self._in_flight

    def _window_of(self, key: tuple[str, str], now: float) -> deque[float]:
        window = self._seen.setdefault(key, deque())
        while window and window[0] <= now - self._window:
            window.popleft()
        if not window and len(self._seen) > 10_000:  # forget idle keys: memory stays bounded
            self._seen.pop(key, None)
            window = self._seen.setdefault(key, deque())
        return window


def _keys(connection_key: str, host: str, widget: bool) -> tuple[tuple[str, str], ...]:
    keys = (("connection", connection_key), ("host", host), ("process", ""))
    return (*keys, ("widgets", "")) if widget else keys
