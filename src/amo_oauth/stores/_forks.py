"""What a forked child resets: locks that a thread it does not have may hold, and threads it
does not have.

``fork()`` copies one thread, the caller. A lock held by any other thread at that moment is
held forever in the child, and a listener or poller thread is simply gone while the object
that started it still says it runs. Objects that hold either register here once
(``reset_in_child``); the one fork handler calls each one's ``after_fork`` in the child.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["ForkAware", "reset_in_child"]


class ForkAware(Protocol):
    def after_fork(self) -> None:
        """In a forked child: replace every lock, forget every thread."""


_LIVE: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def reset_in_child(obj: ForkAware) -> None:
    """Have ``obj.after_fork()`` run in every child this process forks from now on."""
    _LIVE.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_LIVE):
        obj.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
