"""Resuming a generator-written flow: the one step both the sync and the async drivers take."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

__all__ = ["advance"]


def advance(
    flow: Generator[Any, Any, Any], reply: Any, error: BaseException | None
) -> tuple[bool, Any]:
    """Send ``reply`` into ``flow`` (or throw ``error``).

    Returns:
        ``(True, result)`` when the flow returned, else ``(False, the next operation)``.
    """
    try:
        return False, (flow.throw(error) if error is not None else flow.send(reply))
    except StopIteration as stop:
        return True, stop.value
