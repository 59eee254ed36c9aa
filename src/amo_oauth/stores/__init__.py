"""Where connection records live: the store protocols, and the stores that implement them."""

from ._base import AsyncBaseStore, BaseStore, as_async_store, as_full_store
from ._protocol import AsyncStore, Claim, ClaimResult, FullStore, LedgerEntry, Store
from ._rows import RecordCodec, Row
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = [
    "AsyncBaseStore",
    "AsyncStore",
    "BaseStore",
    "Claim",
    "ClaimResult",
    "FullStore",
    "LedgerEntry",
    "MemoryStore",
    "RecordCodec",
    "Row",
    "SQLiteStore",
    "Store",
    "as_async_store",
    "as_full_store",
]
