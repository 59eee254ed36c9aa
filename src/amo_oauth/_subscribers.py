"""The application's lifecycle callbacks: who hears which event, and calling them safely.

A service's driver hands each ``Emit`` a flow yields to ``Subscribers.deliver`` (blocking) or
``adeliver`` (asyncio), right after the write the event describes. A callback is the
application's code: its exception is logged and swallowed, since the write already happened and
the flow's answer must not depend on whether an email went out.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs

from ._lifecycle_events import LifecycleEvent
from .stores._forks import reset_in_child

__all__ = ["DEFAULT_CALLBACK_TIMEOUT", "Subscribers", "is_async_callable"]

#: Seconds an async callback is awaited by default before it is cancelled (and logged).
DEFAULT_CALLBACK_TIMEOUT = 10.0

#: Seconds ``aclose`` waits for the async callbacks it cancelled.
_CLOSE_TIMEOUT = 1.0

logger = logging.getLogger("amo_oauth")

E = TypeVar("E", bound=LifecycleEvent)


def is_async_callable(callback: object) -> bool:
    """True for an ``async def`` function, a partial of one, or an object whose ``__call__``
    is one: what a blocking service cannot call."""
    call = type(callback).__call__ if not inspect.isroutine(callback) else None
    return inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(call)


@attrs.frozen(eq=False)
class _Subscription:
    kind: type[LifecycleEvent]
    callback: Callable[[Any], object]
    timeout: float


class Subscribers:
    """The callbacks registered on one service, each for one event class (and its subclasses)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: tuple[_Subscription, ...] = ()
        #: Async callbacks' tasks not yet ended (one cancelled at its timeout may run on).
        self._running: set[asyncio.Future[object]] = set()
        reset_in_child(self)

    def add(
        self,
        kind: type[E],
        callback: Callable[[E], object],
        timeout: float = DEFAULT_CALLBACK_TIMEOUT,
    ) -> Callable[[], None]:
        """Register ``callback`` for events of class ``kind``; returns what unregisters it.

        Raises:
            TypeError: ``kind`` is not a lifecycle event class, or ``callback`` not callable.
            ValueError: ``timeout`` is not > 0 seconds.
        """
        if not (isinstance(kind, type) and issubclass(kind, LifecycleEvent)):
            raise TypeError(
                f"on() takes a lifecycle event class such as amo_oauth.Connected, not {kind!r}"
            )
        if not callable(callback):
            raise TypeError(f"on() takes a callable, not {type(callback).__name__}")
        if not timeout > 0:
            raise ValueError("timeout must be > 0 seconds")
        subscription = _Subscription(kind, callback, timeout)
        with self._lock:
            self._subscriptions = (*self._subscriptions, subscription)

        def unsubscribe() -> None:
            with self._lock:
                self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)

        return unsubscribe

    def _for(self, event: LifecycleEvent) -> tuple[_Subscription, ...]:
        return tuple(s for s in self._subscriptions if isinstance(event, s.kind))

    def deliver(self, event: LifecycleEvent) -> None:
        """Call every callback for ``event`` in turn, in this thread; never raises."""
        for subscription in self._for(event):
            try:
                result = subscription.callback(event)
            except (Exception, asyncio.CancelledError):  # the callback's own, never the flow's
                _failed(subscription, event)
                continue
            if inspect.isawaitable(result):  # registration refuses these; a lambda may not
                _close(result)
                logger.error(
                    "lifecycle callback %s returned an awaitable for %s: a blocking service"
                    " cannot await it (use AsyncAmoOAuth)",
                    _name(subscription),
                    type(event).__name__,
                )

    async def adeliver(self, event: LifecycleEvent) -> None:
        """Call every callback for ``event`` in turn, awaiting an async one for at most its
        ``timeout``; never raises (a cancellation of the caller excepted)."""
        for subscription in self._for(event):
            try:
                result = subscription.callback(event)
            except (Exception, asyncio.CancelledError):  # a plain callback's own, not ours
                _failed(subscription, event)
                continue
            if inspect.isawaitable(result):
                await self._bounded(subscription, event, result)

    async def _bounded(
        self, subscription: _Subscription, event: LifecycleEvent, awaitable: Awaitable[object]
    ) -> None:
        """Await ``awaitable`` as its own task for at most the subscription's ``timeout``.

        Past it the task is cancelled and left to end on its own: a callback that swallows
        ``CancelledError`` must not hold up the call that wrote. The task is kept in
        ``_running`` (the loop holds tasks only weakly) until it ends or ``aclose`` drops it.
        """
        task = asyncio.ensure_future(awaitable)
        self._running.add(task)
        task.add_done_callback(self._ended)
        try:
            done, _ = await asyncio.wait({task}, timeout=subscription.timeout)
        except asyncio.CancelledError:  # the caller's own cancellation: the callback goes too
            task.cancel()
            raise
        if not done:
            task.cancel()
            logger.error(
                "lifecycle callback %s did not finish within %s s for %s; it was cancelled",
                _name(subscription),
                subscription.timeout,
                event,
            )
        elif task.cancelled() or task.exception() is not None:
            # Its own CancelledError (an inner task of its own was cancelled) or exception
            # (a TimeoutError of its own too): a failure of the callback, never the caller's.
            _failed(subscription, event, task)

    def _ended(self, task: asyncio.Future[object]) -> None:
        self._running.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a late one was reported as the timeout already

    async def aclose(self, timeout: float = _CLOSE_TIMEOUT) -> None:
        """Cancel the async callbacks still running past their timeout and wait for them at
        most ``timeout`` seconds (one that swallows its cancellation is left behind)."""
        loop = asyncio.get_running_loop()  # another loop's tasks are that loop's to end
        running = tuple(task for task in self._running if task.get_loop() is loop)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=timeout)

    def after_fork(self) -> None:
        """In a forked child (``stores._forks``): a fresh lock (a thread the child does not
        have may have held it), and none of the parent's tasks (its event loop's)."""
        self._lock = threading.Lock()
        self._running = set()


def _close(awaitable: object) -> None:
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()  # a coroutine never awaited would warn


def _name(subscription: _Subscription) -> str:
    callback = subscription.callback
    return getattr(callback, "__qualname__", None) or type(callback).__qualname__


def _failed(
    subscription: _Subscription,
    event: LifecycleEvent,
    task: asyncio.Future[object] | None = None,
) -> None:
    # The event holds no secret; the traceback is the application's own code.
    if task is None:
        exc_info: BaseException | bool = True
    else:
        exc_info = asyncio.CancelledError() if task.cancelled() else task.exception() or True
    logger.error(
        "lifecycle callback %s failed for %s; the flow goes on",
        _name(subscription),
        event,
        exc_info=exc_info,
    )
