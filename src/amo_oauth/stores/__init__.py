"""Where connection records live: the store protocols, and the stores that implement them.

``PostgresStore`` and ``RedisStore`` are imported on first access (they need the ``postgres``
and ``redis`` extras), so that importing this package works without them.
"""

import importlib
from typing import TYPE_CHECKING

from ._base import AsyncSide, BaseStore, as_async_store
from ._common import due_position
from ._hub import Hub
from ._protocol import (
    AsyncStore,
    Claim,
    ClaimResult,
    DueCursor,
    LedgerEntry,
    Loaded,
    Store,
    StoreCheck,
)
from ._rows import RecordCodec, Row
from ._skew import aclock_skew, clock_skew
from ._urls import store_from_url
from .memory import MemoryStore
from .sqlite import SQLiteStore

if TYPE_CHECKING:
    from .postgres import PostgresStore
    from .redis import RedisStore

__all__ = [
    "AsyncSide",
    "AsyncStore",
    "BaseStore",
    "Claim",
    "ClaimResult",
    "DueCursor",
    "Hub",
    "LedgerEntry",
    "Loaded",
    "MemoryStore",
    "PostgresStore",
    "RecordCodec",
    "RedisStore",
    "Row",
    "SQLiteStore",
    "Store",
    "StoreCheck",
    "aclock_skew",
    "as_async_store",
    "as_full_store",
    "clock_skew",
    "due_position",
    "store_from_url",
]


def __getattr__(name: str) -> object:
    """Import ``PostgresStore`` or ``RedisStore`` when first asked for.

    Raises:
        ImportError: the store's extra is not installed (``amo_oauth[postgres]``,
            ``amo_oauth[redis]``).
        AttributeError: any other unknown name.
    """
    modules = {"PostgresStore": "postgres", "RedisStore": "redis"}
    if name not in modules:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # The module itself names its extra when that is missing (``_extras.needs_extra``).
    return getattr(importlib.import_module(f"{__name__}.{modules[name]}"), name)
