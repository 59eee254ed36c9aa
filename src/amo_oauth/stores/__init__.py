"""Where connection records live: one ``Store`` protocol, and the stores that implement it.

``RedisStore`` is imported on first use, so that this package imports without the ``redis``
extra installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._protocol import Store
from .memory import MemoryStore
from .sqlite import SQLiteStore

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = ["MemoryStore", "RedisStore", "SQLiteStore", "Store"]


def __getattr__(name: str) -> object:
    """``RedisStore``, imported when first asked for.

    Raises:
        ImportError: ``RedisStore`` without the ``redis`` package (the ``redis`` extra).
        AttributeError: any other unknown name.
    """
    if name == "RedisStore":
        try:
            from .redis import RedisStore
        except ModuleNotFoundError as exc:
            if exc.name != "redis" and not (exc.name or "").startswith("redis."):
                raise
            raise ImportError(
                "RedisStore needs the redis package: pip install 'amo_oauth[redis]'"
            ) from exc
        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
