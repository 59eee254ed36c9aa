"""``Turns``: callers of one connection pool queue for a connection rather than fail.

A pool's wait for a free connection is bounded by the store's ``timeout``. Under a burst (a
thousand asyncio tasks on a pool of 16 on a loaded machine) a caller's turn can come later than
that while the pool is healthy and serving every caller ahead of it; failing it then is an
error nobody needed. So a pool wait that expires is tried again while operations on the same
pool completed during it (its queue moves), for up to ``PATIENCE`` seconds in all. The count is
per pool: a store's blocking pool serving threads says nothing of its awaited pool, whose
connections may all be stuck. A wait during which nothing completed on its pool means the pool
is not serving (store down, or every connection stuck): it fails as before, after one
``timeout``, with the pool's error (the store maps it to ``StoreError``). Only the wait for a
connection is tried again, never a statement or command that was sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

__all__ = ["PATIENCE", "Turns"]

T = TypeVar("T")

#: Seconds (monotonic) one call may spend in all queueing for a connection while its pool keeps
#: serving others: a thousand callers on a pool of 16 on a loaded 2-core machine drain in a
#: few seconds; a queue that still moves after this long is not a burst. The first wait is a
#: full ``timeout``; a later one is cut to what remains of ``PATIENCE`` (a pool whose wait
#: cannot be cut starts no wait that would end after it), so a call waits at most
#: ``max(PATIENCE, timeout)`` seconds for a connection.
PATIENCE: Final = 30.0


class Turns:
    """Counts one pool's completed operations; retries an expired wait on it while it grows.

    Args:
        expired: tells the pool's "no connection within timeout" error from any other.
        timeout: one pool wait (seconds), the store's ``timeout``.
        cuts: the pool takes a shorter wait per call (``get(seconds)`` is obeyed); when
            False a retry is only made when a full ``timeout`` still fits in ``patience``.
        patience: ``PATIENCE`` (seconds); tests give others.
        monotonic: the clock of ``patience`` (seconds).
    """

    def __init__(
        self,
        expired: Callable[[BaseException], bool],
        timeout: float,
        *,
        cuts: bool = True,
        patience: float = PATIENCE,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._expired = expired
        self._timeout = timeout
        self._cuts = cuts
        self._patience = patience
        self._monotonic = monotonic
        self.served = 0

    def served_one(self) -> None:
        """An operation on this pool completed. Unlocked: two threads adding at once may lose
        one count, never both, and a waiter only asks whether the count moved."""
        self.served += 1

    def take(self, get: Callable[[float], T]) -> T:
        """``get(seconds)`` (a pool wait of at most ``seconds``), tried again after an expiry
        while others were served on this pool.

        Raises:
            Exception: what ``get`` raised, when it is not an expiry, or nothing was served
                during the expired wait, or ``patience`` seconds have passed.
        """
        until = self._monotonic() + self._patience
        wait = self._timeout
        while True:
            seen = self.served
            try:
                return get(wait)
            except Exception as exc:
                left = self._again(exc, seen, until)
                if left is None:
                    raise
                wait = left

    async def atake(self, get: Callable[[float], Awaitable[T]]) -> T:
        """``take`` for an awaited pool wait."""
        until = self._monotonic() + self._patience
        wait = self._timeout
        while True:
            seen = self.served
            try:
                return await get(wait)
            except Exception as exc:
                # A loop that stalled (a loaded machine) runs an expired wait's timer in the
                # same pass as the operations that finished meanwhile: let those count first.
                await asyncio.sleep(0)
                left = self._again(exc, seen, until)
                if left is None:
                    raise
                wait = left

    def _again(self, exc: BaseException, seen: int, until: float) -> float | None:
        """The next wait (seconds), or None to give up."""
        if self.served == seen or not self._expired(exc):
            return None
        left = until - self._monotonic()
        if left <= 0 or (not self._cuts and left < self._timeout):
            return None
        return min(self._timeout, left)
