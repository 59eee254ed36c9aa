"""The one driver pair for every generator-written flow: the service's, the web routes'.

A flow yields what it needs from the outside and is sent the answer, or has the failure thrown
in. ``drive`` answers by calling ``perform``, ``adrive`` by awaiting it; the flow itself is the
same for both, so nothing is written twice for sync and async. Both close the flow when they
stop, however they stop (as httpx does with its auth flows), so a flow's ``finally`` runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

__all__ = ["adrive", "drive"]

T = TypeVar("T")
Y = TypeVar("Y")


def drive(flow: Generator[Y, Any, T], perform: Callable[[Y], Any]) -> T:
    """Run ``flow`` to its end, answering each item it yields with ``perform(item)``.

    An ``Exception`` that ``perform`` raises is thrown into the flow, which knows what it means.

    Returns:
        What the flow returns.
    """
    try:
        reply: Any = None
        error: Exception | None = None
        while True:
            try:
                item = flow.throw(error) if error is not None else flow.send(reply)
            except StopIteration as stop:
                result: T = stop.value
                return result
            reply, error = None, None
            try:
                reply = perform(item)
            except Exception as exc:
                error = exc
    finally:
        flow.close()


async def adrive(flow: Generator[Y, Any, T], perform: Callable[[Y], Awaitable[Any]]) -> T:
    """``drive`` for asyncio: each item is answered by awaiting ``perform(item)``."""
    try:
        reply: Any = None
        error: Exception | None = None
        while True:
            try:
                item = flow.throw(error) if error is not None else flow.send(reply)
            except StopIteration as stop:
                result: T = stop.value
                return result
            reply, error = None, None
            try:
                reply = await perform(item)
            except Exception as exc:
                error = exc
    finally:
        flow.close()
