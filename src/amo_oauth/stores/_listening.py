"""``ChannelListener``: a server store's one cross-process listener in this process.

PostgreSQL (LISTEN/NOTIFY) and Redis (pub/sub) tell every subscriber which record key changed,
in any process. A store keeps at most one such subscription per process: a daemon thread, started
by the first waiter, that passes each changed key to ``changed`` (the store's hub fires the
watches on it) and, when its connection fails or a message names no key, calls ``lost`` (every
watch fires: those waiters read again). The next waiter then starts another.

A waiter calls ``ensure`` (or ``aensure``) after registering its watch and before it reads the
record: once it returns, a change committed after the read is heard, and a loss after the
registration fires the watch (a loss before it fired nothing of this waiter's, which is why
``ensure`` comes after the registration, not before). What differs per server is only how the
connection is opened (``_open``), read (``_serve``) and interrupted (``_interrupt``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from .._errors import StoreError
from ._common import closed_error
from ._forks import reset_in_child

__all__ = ["ChannelListener"]

C = TypeVar("C")  # the listening connection


class ChannelListener(Generic[C]):
    """One daemon thread holding one subscription; restarted by the next waiter after a loss.

    Args:
        name: the thread's name (no secret).
        where: names the server in errors (no secret).
        changed: called from the thread with each key a notification names.
        lost: called from the thread when notifications may have been missed.
    """

    def __init__(
        self, name: str, where: str, changed: Callable[[str], None], lost: Callable[[], None]
    ) -> None:
        self._name = name
        self._where = where
        self.changed = changed
        self.lost = lost
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._ready = False
        self._error: StoreError | None = None
        self._starts = 0  # how many threads reported their start (ready or failed)
        self._ready_futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.stopping = threading.Event()
        reset_in_child(self)

    def after_fork(self) -> None:
        """In a forked child: the thread and its connection stayed in the parent, and a
        vanished thread may hold the lock; the child's first waiter starts its own."""
        self._cond = threading.Condition()
        self._thread, self._ready, self._error = None, False, None
        self._ready_futures = []

    # -- what each server does -------------------------------------------------------------

    def _open(self) -> C:
        """Connect and subscribe; return once the server has the subscription.

        Raises:
            Exception: the server's own errors; reported to waiters as ``StoreError``.
        """
        raise NotImplementedError

    def _serve(self, conn: C) -> None:
        """Read notifications, calling ``changed`` (or ``lost``), until the connection fails
        or ``stopping`` is set."""
        raise NotImplementedError

    def _prepare(self) -> None:
        """Before a thread starts (in the waiter's thread, under the listener's lock)."""

    def _interrupt(self) -> None:
        """Make ``_serve`` return soon (from another thread); ``stopping`` is set already."""

    def _disconnect(self, conn: C) -> None:
        raise NotImplementedError

    # -- waiting for the subscription --------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Subscribed now (a thread runs and has its subscription)."""
        with self._cond:
            return self._listening()

    def ensure(self, timeout: float) -> None:
        """Return once the channel is listened to.

        Raises:
            StoreError: the subscription failed, or was not made within ``timeout``; or the
                listener is closed.
        """
        with self._cond:
            if self._listening():
                return
            self._start()
            starts = self._starts
            # The thread's report, not ``_ready``: one that listened and was lost at once has
            # flipped ``_ready`` back to False before this thread looks.
            if not self._cond.wait_for(lambda: self._starts != starts, timeout):
                raise StoreError(f"{self._where} could not listen: timed out")
            self._check_started()

    async def aensure(self, timeout: float) -> None:
        """``ensure`` on the event loop: awaits a future, blocking no thread."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if self._listening():
                return
            self._start()
            self._ready_futures.append((loop, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise StoreError(f"{self._where} could not listen: timed out") from None
        finally:
            with self._cond:
                if (loop, future) in self._ready_futures:
                    self._ready_futures.remove((loop, future))
        with self._cond:
            self._check_started()

    def _check_started(self) -> None:
        """After a thread's report (with ``_cond`` held): raise unless it listens now."""
        if self._error is not None:
            raise self._error
        if not self._listening():
            raise StoreError(f"{self._where} could not listen: the connection was lost")

    def _listening(self) -> bool:
        return self._ready and self._thread is not None and self._thread.is_alive()

    def _start(self) -> None:
        """Start the thread unless one runs (call with ``_cond`` held)."""
        if self.stopping.is_set():
            raise closed_error()
        if self._thread is not None and self._thread.is_alive():
            return
        self._ready, self._error = False, None
        self._prepare()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            conn = self._open()
        except Exception as exc:
            error = StoreError(f"{self._where} could not listen: {type(exc).__name__}")
            error.__cause__ = exc
            self._started(error)
            self._ended()
            return
        try:
            self._started(None)
            self._serve(conn)
        except Exception:  # noqa: S110 - a lost connection: the waiters are woken below
            pass
        finally:
            with contextlib.suppress(Exception):
                self._disconnect(conn)
            self._ended()
            self.lost()  # they return early and look again

    def _ended(self) -> None:
        """The thread is ending: the next waiter starts another at once (not after this one
        is gone: it is not listening any more)."""
        with self._cond:
            self._ready = False
            if self._thread is threading.current_thread():
                self._thread = None

    def _started(self, error: StoreError | None) -> None:
        with self._cond:
            self._ready, self._error = error is None, error
            self._starts += 1
            self._cond.notify_all()
            futures, self._ready_futures = self._ready_futures, []
        for loop, future in futures:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody awaits
                loop.call_soon_threadsafe(_resolve, future)

    def close(self, *, join: float | None = 5.0) -> None:
        """Stop the thread for good (it calls ``lost`` as it ends); later waiters get
        ``StoreError``. ``join``: seconds to wait for it (None: do not wait)."""
        with self._cond:
            self.stopping.set()
            thread = self._thread
        self._interrupt()
        if join is not None and thread is not None and thread is not threading.current_thread():
            thread.join(timeout=join)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
