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

__all__ = ["DEFAULT_CALLBACK_TIMEOUT", "Subscribers", "is_async_callable"]

#: Seconds an async callback is awaited by default before it is cancelled (and logged).
DEFAULT_CALLBACK_TIMEOUT = 10.0

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
            except Exception:
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
                if inspect.isawaitable(result):
                    await asyncio.wait_for(_awaited(result), subscription.timeout)
            except TimeoutError:
                logger.error(
                    "lifecycle callback %s did not finish within %s s for %s; it was cancelled",
                    _name(subscription),
                    subscription.timeout,
                    event,
                )
            except Exception:
                _failed(subscription, event)


async def _awaited(awaitable: Awaitable[object]) -> object:
    return await awaitable


def _close(awaitable: object) -> None:
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()  # a coroutine never awaited would warn


def _name(subscription: _Subscription) -> str:
    callback = subscription.callback
    return getattr(callback, "__qualname__", None) or type(callback).__qualname__


def _failed(subscription: _Subscription, event: LifecycleEvent) -> None:
    # The event holds no secret; the traceback is the application's own code.
    logger.error(
        "lifecycle callback %s failed for %s; the flow goes on",
        _name(subscription),
        event,
        exc_info=True,
    )
