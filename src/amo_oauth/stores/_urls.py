"""``store_from_url``: one string names any store, as operators write it in settings and CLIs."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from ._protocol import Store
from ._rows import Encryption
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = ["SCHEMES", "store_from_url"]

#: The URL schemes ``store_from_url`` knows.
SCHEMES = ("memory", "sqlite", "postgresql", "postgres", "redis", "rediss")


def store_from_url(url: str, *, encryption: Encryption | None = None) -> Store:
    """The store a URL names.

    - ``memory://``: a new ``MemoryStore``;
    - ``sqlite:///relative.db`` and ``sqlite:////abs/path.db`` (three slashes then a relative
      path, four for an absolute one: SQLAlchemy's convention): an ``SQLiteStore``;
    - ``postgresql://user:pw@host:5432/db`` or ``postgres://...``: a ``PostgresStore`` (the
      ``postgres`` extra);
    - ``redis://host:6379/0`` or ``rediss://...``: a ``RedisStore`` (the ``redis`` extra);
      ``?allow_eviction=true`` is its ``allow_eviction`` (a server whose memory policy may
      evict the store's keys is used, with a warning, instead of refused).

    Nothing is opened or created here: stores connect on first use. ``encryption`` (e.g.
    ``cryptography``'s ``MultiFernet``) encrypts the token pair at rest, for every store.

    Raises:
        ValueError: an unknown scheme or a malformed URL; the message never repeats the URL,
            which may hold a password.
        ImportError: the store's extra is not installed.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ValueError("a store URL looks like sqlite:///amo_oauth.db (scheme://...)")
    scheme = url.split("://", 1)[0].lower()
    if scheme == "memory":
        return MemoryStore(encryption=encryption)
    if scheme == "sqlite":
        return SQLiteStore(_sqlite_path(url), encryption=encryption)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return PostgresStore(url, encryption=encryption)
    if scheme in ("redis", "rediss"):
        from .redis import RedisStore

        return RedisStore(url, encryption=encryption)
    raise ValueError(f"unknown store scheme {scheme!r}; known: {', '.join(SCHEMES)}")


def _sqlite_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc or parts.query or parts.fragment or not parts.path.startswith("/"):
        raise ValueError("a SQLite URL is sqlite:///relative.db or sqlite:////absolute/path.db")
    path = unquote(parts.path[1:])  # one slash ends the empty authority; the rest is the path
    if not path or path.endswith("/"):
        raise ValueError("a SQLite URL names a file: sqlite:///amo_oauth.db")
    return Path(path)
