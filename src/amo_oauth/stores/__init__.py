"""Where connection records live: one ``Store`` protocol, and the stores that implement it.

``PostgresStore`` is imported on first access (it needs the ``postgres`` extra: psycopg 3 and
psycopg-pool), so that importing this package works without them.
"""

from typing import TYPE_CHECKING

from ._protocol import Store
from .memory import MemoryStore
from .sqlite import SQLiteStore

if TYPE_CHECKING:
    from .postgres import PostgresStore

__all__ = ["MemoryStore", "PostgresStore", "SQLiteStore", "Store"]


def __getattr__(name: str) -> object:
    """Import ``PostgresStore`` when first asked for.

    Raises:
        ImportError: ``PostgresStore`` without psycopg installed (``amo_oauth[postgres]``).
        AttributeError: any other unknown name.
    """
    if name == "PostgresStore":
        from .postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
