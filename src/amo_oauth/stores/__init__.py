"""Where connection records live: one ``Store`` protocol, and the stores that implement it."""

from ._protocol import Store
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = ["MemoryStore", "SQLiteStore", "Store"]
