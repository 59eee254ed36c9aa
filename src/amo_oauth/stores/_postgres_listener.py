"""``PostgresStore``'s one listening connection: LISTEN on the store's channel, wake waiters.

Every record write sends ``pg_notify(channel, key)`` in its transaction, so the notification
leaves only with the commit. One listening connection per store (a daemon thread) wakes both
blocking waiters (a ``threading.Condition``) and asyncio waiters (futures resolved with
``call_soon_threadsafe``); a waiter that hears nothing returns at its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
from collections.abc import Iterable, Iterator

import psycopg
from psycopg import sql

from .._errors import StoreError
from ._common import closed_error
from ._postgres_pools import Conn, Connections

__all__ = ["Listener"]


class _Waiter:
    """One caller waiting for a key; ``future`` is set for an awaiting one."""

    __slots__ = ("fired", "future", "key", "loop", "parked")

    def __init__(
        self, key: str, loop: asyncio.AbstractEventLoop | None, future: asyncio.Future[None] | None
    ) -> None:
        self.key = key
        self.fired = False
        #: True once its caller has read the record and sleeps (what tests wait for).
        self.parked = False
        self.loop = loop
        self.future = future


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Listener:
    """The store's one listening connection: a daemon thread that LISTENs on the store's
    channel and wakes the waiters of each notified key.

    Started on the first wait; when its connection fails it wakes every waiter (an early
    return they may take) and the next wait starts it again.
    """

    def __init__(self, conns: Connections, listen: sql.Composed) -> None:
        self._conns = conns
        self._listen = listen
        self._cond = threading.Condition()
        self._waiters: dict[str, set[_Waiter]] = {}
        self._thread: threading.Thread | None = None
        self._ready = False
        self._error: StoreError | None = None
        self._ready_waiters: list[_Waiter] = []
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._closed = False

    # -- starting ------------------------------------------------------------------------

    def _start(self) -> None:
        """Start the thread unless it runs (call with ``_cond`` held)."""
        if self._closed:
            raise closed_error()
        if self._thread is not None and self._thread.is_alive():
            return
        self._ready, self._error = False, None
        if self._wake is not None:  # the last thread's, which has ended
            for end in self._wake:
                end.close()
        self._wake = socket.socketpair()
        self._thread = threading.Thread(
            target=self._run, args=(self._wake[1],), name="amo_oauth-pg-listener", daemon=True
        )
        self._thread.start()

    def ensure(self, timeout: float) -> None:
        """Return once the channel is listened to.

        Raises:
            StoreError: the listening connection failed, or was not made within ``timeout``.
        """
        with self._cond:
            if self._ready and self._thread is not None and self._thread.is_alive():
                return
            self._start()
            if not self._cond.wait_for(lambda: self._ready or self._error is not None, timeout):
                raise StoreError(f"{self._conns.place.where} could not listen: timed out")
            if self._error is not None:
                raise self._error

    async def aensure(self, timeout: float) -> None:
        """``ensure`` on the event loop: waits on a future, blocking no thread."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter("", loop, loop.create_future())
        with self._cond:
            if self._ready and self._thread is not None and self._thread.is_alive():
                return
            self._start()
            self._ready_waiters.append(waiter)
        assert waiter.future is not None
        try:
            await asyncio.wait_for(waiter.future, timeout)
        except TimeoutError:
            raise StoreError(f"{self._conns.place.where} could not listen: timed out") from None
        finally:
            with self._cond:
                if waiter in self._ready_waiters:
                    self._ready_waiters.remove(waiter)
        with self._cond:
            if self._error is not None:
                raise self._error

    # -- waiting -------------------------------------------------------------------------

    @contextlib.contextmanager
    def waiting(self, key: str, loop: asyncio.AbstractEventLoop | None = None) -> Iterator[_Waiter]:
        """A waiter for ``key``, registered before the caller reads the record (so that a
        write committed after that read cannot go unheard) and removed at the end."""
        waiter = _Waiter(key, loop, loop.create_future() if loop is not None else None)
        with self._cond:
            self._waiters.setdefault(key, set()).add(waiter)
        try:
            yield waiter
        finally:
            with self._cond:
                found = self._waiters.get(key)
                if found is not None:
                    found.discard(waiter)
                    if not found:
                        del self._waiters[key]

    def wait(self, waiter: _Waiter, timeout: float) -> None:
        with self._cond:
            waiter.parked = True
            self._cond.wait_for(lambda: waiter.fired, max(timeout, 0.0))

    async def await_(self, waiter: _Waiter, timeout: float) -> None:
        assert waiter.future is not None
        with self._cond:
            waiter.parked = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter.future, max(timeout, 0.0))

    def _fire(self, waiters: Iterable[_Waiter]) -> None:
        """Wake ``waiters`` (call with ``_cond`` held)."""
        for waiter in waiters:
            waiter.fired = True
            if waiter.future is not None and waiter.loop is not None:
                with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                    waiter.loop.call_soon_threadsafe(_resolve, waiter.future)
        self._cond.notify_all()

    def _everyone(self) -> list[_Waiter]:
        return [w for group in self._waiters.values() for w in group]

    # -- the thread ----------------------------------------------------------------------

    def _run(self, wake: socket.socket) -> None:
        where = self._conns.place.where
        try:
            conn = psycopg.connect(self._conns.conninfo, **self._conns.kwargs)
        except psycopg.Error as exc:
            self._started(StoreError(f"{where} could not listen: {type(exc).__name__}"), exc)
            return
        try:
            try:
                conn.execute(self._listen)
            except psycopg.Error as exc:
                self._started(StoreError(f"{where} could not listen: {type(exc).__name__}"), exc)
                return
            self._started(None, None)
            self._serve(conn, wake)
        finally:
            conn.close()
            with self._cond:
                self._ready = False
                self._fire(self._everyone())  # they return early and look again

    def _started(self, error: StoreError | None, cause: BaseException | None) -> None:
        if error is not None:
            error.__cause__ = cause
        with self._cond:
            self._ready, self._error = error is None, error
            self._fire(self._ready_waiters)
            self._ready_waiters = []

    def _serve(self, conn: Conn, wake: socket.socket) -> None:
        pgconn = conn.pgconn
        fileno = conn.fileno()
        while True:
            readable, _, _ = select.select([fileno, wake.fileno()], [], [])
            if wake.fileno() in readable:
                return
            try:
                pgconn.consume_input()
            except psycopg.Error:
                return  # the connection is gone
            keys: set[str] = set()
            everyone = False
            while (notice := pgconn.notifies()) is not None:
                payload = notice.extra.decode("utf-8", "replace")
                if payload:
                    keys.add(payload)
                else:
                    everyone = True
            if keys or everyone:
                with self._cond:
                    if everyone:
                        self._fire(self._everyone())
                    else:
                        for key in keys:
                            self._fire(self._waiters.get(key, ()))

    def close(self) -> None:
        """Stop the thread (it wakes every waiter as it ends)."""
        with self._cond:
            self._closed = True
            thread, wake = self._thread, self._wake
            self._thread = self._wake = None
        if wake is not None:
            with contextlib.suppress(OSError):
                wake[0].send(b"x")
        if thread is not None:
            thread.join(timeout=5)
        if wake is not None:
            wake[0].close()
            wake[1].close()
