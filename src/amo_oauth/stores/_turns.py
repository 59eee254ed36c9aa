"""``Turns``: callers of a server store queue for a pooled connection rather than fail.

A pool's wait for a free connection is bounded by the store's ``timeout``. Under a burst (a
thousand asyncio tasks on a pool of 16 on a loaded machine) a caller's turn can come later than
that while the store is healthy and serving every caller ahead of it; failing it then is an
error nobody needed. So a pool wait that expires is tried again while operations of this store
completed during it (the queue moves), for up to ``PATIENCE`` seconds in all. A wait during which
nothing completed means the store is not serving (down, or every connection stuck): it fails
as before, after one ``timeout``, with the pool's error (the store maps it to ``StoreError``).
Only the wait for a connection is tried again, never a statement or command that was sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

__all__ = ["PATIENCE", "Turns"]

T = TypeVar("T")

#: Seconds one call may spend queueing for a connection (monotonic), while the store keeps
#: serving others: a thousand callers on a pool of 16 on a loaded 2-core machine drain in a
#: few seconds; a queue that still moves after this long is not a burst. A wait that starts
#: before it ends lasts its full ``timeout``.
PATIENCE: Final = 30.0


class Turns:
    """Counts a store's completed operations; retries an expired pool wait while it grows.

    Args:
        expired: tells the pool's "no connection within timeout" error from any other.
        patience: ``PATIENCE`` (seconds); tests give others.
        monotonic: the clock of ``patience`` (seconds).
    """

    def __init__(
        self,
        expired: Callable[[BaseException], bool],
        *,
        patience: float = PATIENCE,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._expired = expired
        self._patience = patience
        self._monotonic = monotonic
        self.served = 0

    def served_one(self) -> None:
        """An operation completed. Unlocked: two threads adding at once may lose one count,
        never both, and a waiter only asks whether the count moved."""
        self.served += 1

    def take(self, get: Callable[[], T]) -> T:
        """``get()`` (a pool wait), tried again after an expiry while others were served.

        Raises:
            Exception: what ``get`` raised, when it is not an expiry, or nothing was served
                during the expired wait, or ``patience`` seconds have passed.
        """
        until = self._monotonic() + self._patience
        while True:
            seen = self.served
            try:
                return get()
            except Exception as exc:
                if not self._again(exc, seen, until):
                    raise

    async def atake(self, get: Callable[[], Awaitable[T]]) -> T:
        """``take`` for an awaited pool wait."""
        until = self._monotonic() + self._patience
        while True:
            seen = self.served
            try:
                return await get()
            except Exception as exc:
                # A loop that stalled (a loaded machine) runs an expired wait's timer in the
                # same pass as the operations that finished meanwhile: let those count first.
                await asyncio.sleep(0)
                if not self._again(exc, seen, until):
                    raise

    def _again(self, exc: BaseException, seen: int, until: float) -> bool:
        return self.served != seen and self._expired(exc) and self._monotonic() < until
