"""Bounded token-endpoint calls for code exchanges: process-local sliding windows.

amoCRM blocks integrations and IPs that exceed its limits (protocol notes §9), and every code
exchange carries the client secret. A looped ``/connect`` + ``/callback?code=garbage``, or a
flood of widget installs, must not turn into a flood of token calls; and whoever floods must
not spend the budget of the app's other users. The counters live in this service object (no
store writes: a rate-limited callback writes nothing): one per process in an app that makes
one ``AmoOAuth``; run N processes and the integration-wide bound is N times as large.

Each exchange counts in its connection's window and, when the caller names one, its
source's (the app user whose consent it is, else the client's network): a source's window
keeps only what did not succeed (failed or still in flight), so junk codes count against
whoever sends them; a failure amoCRM caused (a 5xx, 429, 403, no answer) leaves it as a
success does, so an honest source stays clean. Widget installs, which nobody can tell apart,
count in hard windows (per account host and source, and in total) where every try stays; a
widget's connection window is per source too (its connection is a host anyone may name). The
host's and the process's windows are split in two shares:

- the *suspect* share (half the bound) holds every try that failed, and the tries of a
  *suspect* source (one with anything in its window, or no source at all);
- the *clean* share (the other half) holds a clean source's try only while it is in flight:
  a success leaves it, a failure moves to the suspect share.

So however many junk codes fail, from however many sources, they fill only the suspect share,
and an honest user's first callback finds room unless the clean share is full of tries in
flight at this very moment. The price: each new source adds one failed try per window beyond
the suspect share, so junk token calls are bounded by the suspect share plus the number of
sources (app users with a consent, client networks), and successes (real codes of real
consents) are bounded by the connection's window only.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

import attrs

from .stores._forks import reset_in_child

__all__ = ["MAX_WAITING", "Attempt", "Bounds", "ExchangeLimiter", "Slot", "WaitingCallbacks"]

#: The windows split into a clean and a suspect share.
_SHARED = ("host", "process")
#: How many windows may be held before the emptied ones are swept out.
_PRUNE_AT = 10_000

Key = tuple[str, str]


@attrs.frozen
class Bounds:
    """How many code exchanges each window takes (``Config.max_exchanges_per_*``)."""

    connection: int
    host: int
    process: int
    source: int
    widgets: int
    widget_host: int

    def of(self, kind: str) -> int:
        """The bound of a window kind; a ``suspect:`` share is half its window's bound, a
        ``clean:`` share the rest (each at least 1)."""
        share, _, shared = kind.partition(":")
        if share == "suspect":
            return max(1, self.of(shared) // 2)
        if share == "clean":
            whole = self.of(shared)
            return max(1, whole - whole // 2)
        bound: int = getattr(self, kind)
        return bound


@attrs.frozen
class Attempt:
    """One code exchange about to be sent: for which record, to which host, asked by whom
    (None: the caller named no source, so it is suspect)."""

    connection: str
    host: str
    source: str | None = None
    widget: bool = False

    def windows(self, suspect: bool) -> tuple[Key, ...]:
        share = "suspect" if suspect else "clean"
        # A widget install's connection is its host, which anyone may name: its windows are
        # per source too, so junk naming a host from other addresses leaves the genuine
        # install (from amoCRM's servers) its tries; "widgets" caps all of them.
        by_source = f" {self.source or ''}" if self.widget else ""
        keys = [("connection", self.connection + by_source), (f"{share}:host", self.host)]
        keys.append((f"{share}:process", ""))
        if self.widget:
            keys += [("widgets", ""), ("widget_host", self.host + by_source)]
        if self.source is not None:
            keys.append(("source", self.source))
        return tuple(keys)


@attrs.frozen
class Slot:
    """An admitted exchange: its time and the windows it was counted in."""

    attempt: Attempt
    at: float
    windows: tuple[Key, ...]

    def of(self, *kinds: str) -> list[Key]:
        """The slot's windows of these kinds (``clean:`` for the clean shares)."""
        return [key for key in self.windows if key[0].startswith(kinds)]


class ExchangeLimiter:
    """Sliding windows of ``window`` seconds (monotonic) over the code exchanges sent."""

    def __init__(
        self, bounds: Bounds, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._bounds = bounds
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[Key, deque[float]] = {}
        # Slots admitted whose claim has not resolved yet, by connection: while one is in
        # flight, a caller beyond the bound is more likely a duplicate about to be answered.
        self._in_flight: dict[str, int] = {}
        self._prune_at = _PRUNE_AT
        reset_in_child(self)

    def after_fork(self) -> None:
        """In a forked child: a new lock (a thread the child does not have may have held this
        one at the fork), and windows of its own: the bounds are per process, and the slots in
        flight are the parent's threads' (they never resolve here)."""
        self._lock = threading.Lock()
        self._seen = {}
        self._in_flight = {}
        self._prune_at = _PRUNE_AT

    def admit(self, attempt: Attempt) -> Slot | None:
        """Count one exchange in its windows, unless one of them is full (then nothing is
        counted and None is returned)."""
        now = self._clock()
        with self._lock:
            suspect = attempt.source is None or bool(self._count(("source", attempt.source), now))
            keys = attempt.windows(suspect)
            if any(self._count(key, now) >= self._bounds.of(key[0]) for key in keys):
                return None
            for key in keys:
                self._seen.setdefault(key, deque()).append(now)
            if len(self._seen) > self._prune_at:
                self._prune(now)
            self._in_flight[attempt.connection] = self._in_flight.get(attempt.connection, 0) + 1
            return Slot(attempt, now, keys)

    def retry_after(self, attempt: Attempt) -> int:
        """Whole seconds (rounded up, at least 1) until ``admit`` would take ``attempt``: when
        every full window it would be counted in has let enough tries age out. Tries in
        flight may leave a clean share sooner, so this is when a try is sure to find room."""
        now = self._clock()
        with self._lock:
            suspect = attempt.source is None or bool(self._count(("source", attempt.source), now))
            waits = [self._frees_in(key, now) for key in attempt.windows(suspect)]
        return max(1, math.ceil(max(waits, default=0.0)))

    def _frees_in(self, key: Key, now: float) -> float:
        """Seconds until the window ``key`` holds fewer tries than its bound (0: it does now)."""
        over = self._count(key, now) - self._bounds.of(key[0])
        window = self._seen.get(key)
        if over < 0 or window is None:
            return 0.0
        # The (over + 1) oldest tries must age out; windows are kept in time order.
        return window[over] + self._window - now

    def claimed(self, slot: Slot, *, exchanged: bool) -> None:
        """The claim of an admitted slot resolved. Without an exchange (the claim went to
        another worker, or the code turned out a duplicate) the slot is given back:
        duplicates never count."""
        with self._lock:
            connection = slot.attempt.connection
            left = self._in_flight.get(connection, 0) - 1
            if left > 0:
                self._in_flight[connection] = left
            else:
                self._in_flight.pop(connection, None)
            if not exchanged:
                self._give_back(slot, slot.windows)

    def released(self, slot: Slot) -> None:
        """The slot's exchange ended without the source at fault (tokens, or amoCRM's own
        transient failure: 5xx, 429, 403, no answer): it leaves its source's window and the
        clean shares, so the source stays clean. The token call was sent, so the
        connection's window, the widget windows and a suspect share it was admitted to keep
        it."""
        with self._lock:
            self._give_back(slot, slot.of("source", "clean:"))

    def failed(self, slot: Slot) -> None:
        """amoCRM refused the slot's code: a clean try moves to the suspect shares (its source
        keeps it: the source is suspect from now on)."""
        with self._lock:
            for kind, name in self._give_back(slot, slot.of("clean:")):
                suspect = (kind.replace("clean:", "suspect:", 1), name)
                bisect.insort(self._seen.setdefault(suspect, deque()), slot.at)

    def admit_wait(self, source: str) -> Slot | None:
        """Count a callback about to wait for its integration's credentials (metadata mode) in
        its source's window, as a try: a source may keep as many waits going as it may send
        failed exchanges. None (nothing counted) when the window is full. Give it back with
        ``wait_answered`` when the credentials came; a wait they never came for stays, like
        a refused code."""
        key: Key = ("source", source)
        now = self._clock()
        with self._lock:
            if self._count(key, now) >= self._bounds.source:
                return None
            self._seen.setdefault(key, deque()).append(now)
            return Slot(Attempt("", "", source), now, (key,))

    def wait_answered(self, slot: Slot) -> None:
        """The credentials a counted wait was for came (or it ended by no fault of its
        source's): it leaves the source's window."""
        with self._lock:
            self._give_back(slot, slot.windows)

    def wait_retry_after(self, source: str) -> int:
        """Whole seconds (rounded up, at least 1) until ``admit_wait`` would take a wait of
        ``source``."""
        now = self._clock()
        with self._lock:
            self._count(("source", source), now)
            return max(1, math.ceil(self._frees_in(("source", source), now)))

    def in_flight(self, connection_key: str) -> bool:
        """True while an admitted claim for this connection has not resolved."""
        with self._lock:
            return connection_key in self._in_flight

    def _give_back(self, slot: Slot, keys: Iterable[Key]) -> list[Key]:
        """Take the slot out of these windows; the ones it was still in."""
        removed = []
        for key in keys:
            window = self._seen.get(key)
            if window is not None and slot.at in window:
                window.remove(slot.at)
                removed.append(key)
                if not window:
                    del self._seen[key]
        return removed

    def _prune(self, now: float) -> None:
        """Forget the windows nobody counted since they emptied; prune again once as many
        more have come as are live (each admission costs O(1) amortised)."""
        for key in list(self._seen):
            self._count(key, now)
        self._prune_at = max(_PRUNE_AT, 2 * len(self._seen))

    def _count(self, key: Key, now: float) -> int:
        """The exchanges in a window now; an emptied window is forgotten, so memory holds
        only live windows (a flood from many addresses leaves nothing behind)."""
        window = self._seen.get(key)
        if window is None:
            return 0
        while window and window[0] <= now - self._window:
            window.popleft()
        if not window:
            del self._seen[key]
        return len(window)


#: The most callbacks of one process that wait for their credentials at once: each holds a
#: worker (a sync server's thread) for up to ``Config.secrets_wait``; honest installs wait
#: seconds, one each, so a full house is a flood, answered ``credentials_missing`` at once.
MAX_WAITING: Final = 16
#: The most consents remembered as having counted a wait against their source already.
_MAX_CHARGED: Final = 4096


class WaitingCallbacks:
    """The callbacks of this process that wait for their integration's credentials (metadata
    mode), by (record key, state nonce digest): at most one per consent, ``MAX_WAITING`` in
    all. A consent has one code redirect; more under one state are a flood (made-up codes or
    client ids) or the user's reloads, each of which would hold a worker for
    ``Config.secrets_wait``.

    A consent's wait that ended without its credentials stays counted against its source
    (like a refused code), once: the consent remembers that try, so the user's reloads of the
    same redirect count nothing more, and the try is given back when the credentials come.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: set[tuple[str, str]] = set()
        self._charged: dict[tuple[str, str], Slot] = {}
        reset_in_child(self)

    def after_fork(self) -> None:
        """In a forked child: a new lock, and no waits (the parent's threads wait there)."""
        self._lock = threading.Lock()
        self._waiting = set()
        self._charged = {}

    def enter(self, consent: tuple[str, str]) -> tuple[bool, Slot | None]:
        """Take the consent's place: (False, None) when another callback holds it or the
        process waits for ``MAX_WAITING`` already; else (True, the try an earlier wait of the
        consent counted, or None)."""
        with self._lock:
            if consent in self._waiting or len(self._waiting) >= MAX_WAITING:
                return False, None
            self._waiting.add(consent)
            return True, self._charged.get(consent)

    def leave(self, consent: tuple[str, str], *, charged: Slot | None = None) -> None:
        """Free the consent's place; ``charged``: the try its wait counted, kept (the
        credentials never came), else the consent's counted try is forgotten."""
        with self._lock:
            self._waiting.discard(consent)
            self._charged.pop(consent, None)
            if charged is not None:
                self._charged[consent] = charged
                if len(self._charged) > _MAX_CHARGED:  # the oldest consent is forgotten
                    del self._charged[next(iter(self._charged))]
