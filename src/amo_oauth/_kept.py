"""The background retry of pairs kept in memory: a daemon thread (``AmoOAuth``) or a task
(``AsyncAmoOAuth``) that tries to store them while there are any, until ``close()``.

A kept pair is a pair amoCRM gave (a rotated pair, the pair from a code) that the store refused
to write: the only valid one. Every store operation of the process tries it first
(``Records.landing``); this retry lands it when no call comes. Both write through the flow
``Records.store_kept``, so the table decides, and a pair is written by one of them only (each
takes it out of the process's map while it tries).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator

from .stores._forks import reset_in_child

__all__ = ["KEPT_RETRY_PAUSES", "AsyncKeptRetry", "KeptRetry"]

#: Pauses (seconds) between the background tries; the last repeats until the pairs land.
KEPT_RETRY_PAUSES = (0.5, 1.0, 2.0, 4.0, 8.0)

logger = logging.getLogger("amo_oauth")


def _pauses() -> Iterator[float]:
    return itertools.chain(KEPT_RETRY_PAUSES, itertools.repeat(KEPT_RETRY_PAUSES[-1]))


class KeptRetry:
    """A daemon thread that calls ``store_kept`` while ``pending()`` says pairs are kept.

    Args:
        store_kept: tries to store every kept pair once (raises nothing for a store that is
            down; anything else it raises is logged at DEBUG and the retry goes on).
        pending: how many pairs are kept.
    """

    def __init__(self, store_kept: Callable[[], object], pending: Callable[[], int]) -> None:
        self._store_kept = store_kept
        self._pending = pending
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        reset_in_child(self)

    def after_fork(self) -> None:
        """In a forked child: a new lock and stop event (the parent's thread may have held
        either's lock at the fork), and no thread: the parent's is not the child's, so the
        next kept pair starts one. A retry stopped before the fork stays stopped."""
        stopped = self._stop.is_set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if stopped:
            self._stop.set()
        self._thread = None

    def start(self) -> None:
        """Start the thread unless it runs (a pair was kept), or ``stop`` was called."""
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(
                target=self._loop, name="amo_oauth-kept-pairs", daemon=True
            )
            self._thread.start()

    def _loop(self) -> None:
        for pause in _pauses():
            if self._stop.wait(pause):
                return
            try:
                self._store_kept()
            except Exception:  # a store in a state nobody planned for: the next try may do
                logger.debug("storing the kept pairs failed; retried", exc_info=True)
            with self._lock:  # checked under the lock ``start`` takes: no pair is missed
                if not self._pending():
                    self._thread = None
                    return

    def stop(self, timeout: float) -> None:
        """Stop the thread, waiting for it at most ``timeout`` seconds (a try in flight ends
        with its store call; a daemon thread never holds the process up)."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


class AsyncKeptRetry:
    """``KeptRetry`` as a task on the running event loop.

    Args:
        store_kept: awaited to try to store every kept pair once.
        pending: how many pairs are kept.
    """

    def __init__(
        self, store_kept: Callable[[], Awaitable[object]], pending: Callable[[], int]
    ) -> None:
        self._store_kept = store_kept
        self._pending = pending
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        reset_in_child(self)

    def after_fork(self) -> None:
        """In a forked child: the task is the parent's loop's; the child runs a loop of its own
        (docs/stores.md, After fork()), where the next kept pair starts a task."""
        self._task = None

    def start(self) -> None:
        """Start the task unless it runs or ``stop`` was called; needs a running loop (a pair
        is kept by a flow awaited on it)."""
        if self._stopped or (self._task is not None and not self._task.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: the next call on the loop lands it
            return
        self._task = loop.create_task(self._loop(), name="amo_oauth-kept-pairs")

    async def _loop(self) -> None:
        for pause in _pauses():
            await asyncio.sleep(pause)
            try:
                await self._store_kept()
            except Exception:  # a store in a state nobody planned for: the next try may do
                logger.debug("storing the kept pairs failed; retried", exc_info=True)
            if not self._pending():
                return

    async def stop(self) -> None:
        """Cancel the task and wait for it: a pair whose write it interrupts stays kept."""
        self._stopped = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
