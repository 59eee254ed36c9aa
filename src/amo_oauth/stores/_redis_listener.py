"""``RedisStore``'s subscriptions to its change channel: one per kind of caller.

Every write PUBLISHes the record key on one channel. A store holds ONE subscription per kind of
caller (a listener thread for blocking waiters, a listener task for awaiting ones) and wakes the
waiters of that key; a waiter never subscribes itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final, Generic, TypeVar, cast

import redis
import redis.asyncio

from ._redis_lua import SCRIPTS

__all__ = ["LISTEN_POLL", "AsyncSide", "Listener", "wait_event"]

#: Seconds a listener blocks for a message before looking whether it should stop.
LISTEN_POLL: Final = 0.2

_E = TypeVar("_E", threading.Event, asyncio.Event)


class _Listening(Generic[_E]):
    """One subscription's life: ``ready`` is set once it is up, or once it died (``alive``
    then False), so that a waiter never waits for a subscription that will not come."""

    def __init__(self, ready: _E) -> None:
        self.ready: _E = ready
        self.alive = True


def _dispatch(
    message: Mapping[str, Any] | None,
    listening: _Listening[threading.Event] | _Listening[asyncio.Event],
    wake: Callable[[str | None], None],
) -> None:
    """Act on one pub/sub message, for the blocking and the awaited listener alike: the
    subscription's confirmation makes it ready; a change wakes the waiters of its key."""
    if message is None:
        return
    if message["type"] == "subscribe":
        listening.ready.set()
    elif message["type"] == "message":
        wake(message["data"])


class Listener:
    """The blocking side's one subscription: a daemon thread that wakes the waiters of a key.

    It runs while the store is open; when its connection fails it wakes every waiter and ends,
    and the next waiter starts another.
    """

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._thread: threading.Thread | None = None
        self._listening = _Listening(threading.Event())
        self._stopping = threading.Event()

    def add(self, key: str, event: threading.Event) -> _Listening[threading.Event]:
        """Register ``event`` to be set on a change of ``key``; start the thread if needed."""
        with self._lock:
            self._waiters.setdefault(key, set()).add(event)
            if self._stopping.is_set():
                event.set()
                return self._listening
            if self._thread is None or not self._listening.alive:
                self._listening = _Listening(threading.Event())
                self._thread = threading.Thread(
                    target=self._run,
                    args=(self._listening,),
                    name="amo_oauth-redis-listener",
                    daemon=True,
                )
                self._thread.start()
            return self._listening

    def remove(self, key: str, event: threading.Event) -> None:
        with self._lock:
            events = self._waiters.get(key)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[key]

    def stop(self, *, join: bool) -> None:
        with self._lock:
            self._stopping.set()
            thread = self._thread
        self._wake(None)
        if join and thread is not None and thread is not threading.current_thread():
            thread.join(timeout=LISTEN_POLL * 5)

    def _run(self, listening: _Listening[threading.Event]) -> None:
        # redis-py annotates PubSub from 8.2 on only: held as Any, it type-checks alike at the
        # floor and at the lock (tasks.py checks both).
        pubsub: Any = cast("Callable[[], Any]", self._client.pubsub)()
        try:
            pubsub.subscribe(self._channel)
            while not self._stopping.is_set():
                message = pubsub.get_message(timeout=LISTEN_POLL)
                _dispatch(message, listening, self._wake)
        except (redis.RedisError, OSError, ValueError):
            pass  # the waiters are woken below; the next one starts another listener
        finally:
            listening.alive = False
            listening.ready.set()
            self._wake(None)
            with contextlib.suppress(redis.RedisError, OSError):
                pubsub.close()

    def _wake(self, key: str | None) -> None:
        """Set the events of ``key``'s waiters, or of every waiter (None)."""
        with self._lock:
            if key is None:
                events = [event for waiting in self._waiters.values() for event in waiting]
            else:
                events = list(self._waiters.get(key, ()))
        for event in events:
            event.set()


class AsyncSide:
    """The asyncio client of one event loop, its scripts, and its one listener task."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: redis.asyncio.Redis, channel: str):
        self.loop = loop
        self.client = client
        self.scripts = {name: client.register_script(src) for name, src in SCRIPTS.items()}
        self._channel = channel
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._listening = _Listening(asyncio.Event())
        self._stopped = False
        self._closing: asyncio.Task[None] | None = None

    def add(self, key: str, event: asyncio.Event) -> _Listening[asyncio.Event]:
        """Register ``event`` for ``key``; start the listener task if needed (on this loop)."""
        self._waiters.setdefault(key, set()).add(event)
        if self._stopped:
            event.set()
            return self._listening
        if self._task is None or not self._listening.alive:
            self._listening = _Listening(asyncio.Event())
            self._task = self.loop.create_task(
                self._run(self._listening), name="amo_oauth-redis-listener"
            )
        return self._listening

    def remove(self, key: str, event: asyncio.Event) -> None:
        events = self._waiters.get(key)
        if events is not None:
            events.discard(event)
            if not events:
                del self._waiters[key]

    async def close(self) -> None:
        """Cancel the listener task and close the client (on this side's loop)."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._wake(None)
        with contextlib.suppress(redis.RedisError, OSError):
            await self.client.aclose()

    def stop_soon(self) -> None:
        """Close from outside this side's loop: scheduled on it when it still runs."""
        if self._stopped:
            return
        self._stopped = True
        if self.loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self.loop.call_soon_threadsafe(self._close_soon)

    def _close_soon(self) -> None:
        self._closing = self.loop.create_task(self.close())

    async def _run(self, listening: _Listening[asyncio.Event]) -> None:
        pubsub: Any = self.client.pubsub()  # Any: see Listener._run
        try:
            await pubsub.subscribe(self._channel)
            while True:
                message = await pubsub.get_message(timeout=LISTEN_POLL * 5)
                _dispatch(message, listening, self._wake)
        except (redis.RedisError, OSError, ValueError):
            pass  # the waiters are woken below; the next one starts another listener
        finally:
            listening.alive = False
            listening.ready.set()
            self._wake(None)
            with contextlib.suppress(redis.RedisError, OSError):
                await pubsub.aclose()

    def _wake(self, key: str | None) -> None:
        if key is None:
            events = [event for waiting in self._waiters.values() for event in waiting]
        else:
            events = list(self._waiters.get(key, ()))
        for event in events:
            event.set()


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """True once ``event`` is set; False after ``timeout`` seconds."""
    if event.is_set():
        return True
    if timeout <= 0:
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
    return event.is_set()
