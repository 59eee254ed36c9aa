"""What a rewrite of every record leaves behind, per store, and the opt-in clean-up
(``amo-oauth rotate-key [--vacuum]``).

Rewriting a record does not erase what it held before: a store's files keep old versions of
its rows (token pairs stored before encryption was turned on, or sealed with a key being
dropped) until something rewrites them, and logs, replicas and backups keep them longer.
``remnants`` says where, per store, and with ``vacuum`` removes what the store itself can:

- PostgreSQL: ``VACUUM FULL`` on the records table (``PostgresStore.vacuum_full``), which
  locks the table against every flow while it runs. The WAL keeps the old versions.
- Redis: ``BGREWRITEAOF`` when AOF is on (``RedisStore.rewrite_aof``). RDB snapshots keep old
  values until the next one.
- SQLite: ``VACUUM`` (free pages are not overwritten unless SQLite was built or set with
  ``secure_delete``), then ``PRAGMA wal_checkpoint(TRUNCATE)``: while any worker has the file
  open, its ``-wal`` file keeps the old pages.
- Memory: nothing is at rest.

Never by default: each clean-up holds the store's write lock (or the server's I/O) for its run.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys

import attrs

from .stores import MemoryStore, SQLiteStore
from .stores._protocol import Store

__all__ = ["Remnants", "remnants"]

#: Seconds the SQLite clean-up waits for the workers' writes to let it in.
_SQLITE_TIMEOUT = 30.0
#: What the operator runs to remove what the store can remove.
_VACUUM = "run amo-oauth rotate-key --vacuum"


@attrs.frozen
class Remnants:
    """Where old versions of rewritten records may remain.

    Attributes:
        cleaned: what the clean-up did, one sentence each (empty without ``vacuum``).
        remaining: where old versions may still be, and how to remove them, one sentence each.
    """

    cleaned: tuple[str, ...] = ()
    remaining: tuple[str, ...] = ()


def remnants(store: Store, *, vacuum: bool) -> Remnants:
    """Where ``store`` may keep old versions of the records just rewritten, after removing
    what it can when ``vacuum``.

    Raises:
        StoreError: the clean-up failed (the database, or its lock, refused it).
    """
    if isinstance(store, MemoryStore):
        return Remnants(cleaned=("a MemoryStore keeps nothing at rest",) if vacuum else ())
    if isinstance(store, SQLiteStore):
        return _sqlite(store, vacuum)
    if _is(store, "postgres", "PostgresStore"):
        return _postgres(store, vacuum)
    if _is(store, "redis", "RedisStore"):
        return _redis(store, vacuum)
    return Remnants(
        remaining=(
            f"{type(store).__name__} is a store of your own: its files, logs, replicas and"
            " backups may keep the old values until it rewrites them",
        )
    )


def _is(store: object, module: str, name: str) -> bool:
    """``isinstance(store, stores.<module>.<name>)``, importing nothing: a server store's
    module needs its extra, and is loaded already if ``store`` is one."""
    loaded = sys.modules.get(f"{__package__}.stores.{module}")
    return loaded is not None and isinstance(store, getattr(loaded, name))


def _postgres(store: object, vacuum: bool) -> Remnants:
    from .stores.postgres import PostgresStore

    assert isinstance(store, PostgresStore)
    wal = (
        "PostgreSQL's WAL (pg_wal, its archive), streaming replicas and backups keep the old"
        " row versions until they are recycled, rebuilt or expire"
    )
    if not vacuum:
        table = (
            f"table {store.table!r} keeps the old row versions in its files until VACUUM FULL"
            f" rewrites them (autovacuum only marks the space free): {_VACUUM} (it locks the"
            " table against every flow while it runs)"
        )
        return Remnants(remaining=(table, wal))
    store.vacuum_full()
    cleaned = f"VACUUM FULL {store.table}: its files were rewritten without the old versions"
    return Remnants(cleaned=(cleaned,), remaining=(wal,))


def _redis(store: object, vacuum: bool) -> Remnants:
    from .stores.redis import RedisStore

    assert isinstance(store, RedisStore)
    rdb = (
        "Redis RDB snapshots (dump.rdb), replicas' files and backups keep the old values until"
        " the next snapshot replaces them (BGSAVE) or they expire"
    )
    if not vacuum:
        aof = (
            "Redis's append-only file, when AOF is on, keeps every old value until it is"
            f" rewritten: {_VACUUM} (BGREWRITEAOF)"
        )
        return Remnants(remaining=(aof, rdb))
    started = store.rewrite_aof()
    if started is None:
        refused = (
            "the server refused INFO or BGREWRITEAOF (as managed services may): rewrite the"
            " append-only file by the provider's means"
        )
        return Remnants(remaining=(refused, rdb))
    if started:
        cleaned = "BGREWRITEAOF started: Redis rewrites the append-only file in the background"
    else:
        cleaned = "AOF is off: no append-only file to rewrite"
    return Remnants(cleaned=(cleaned,), remaining=(rdb,))


def _sqlite(store: SQLiteStore, vacuum: bool) -> Remnants:
    copies = "copies and backups of the database file keep the old values"
    if not vacuum:
        wal = (
            f"{store.path}-wal keeps the old pages while any process has the file open, and"
            f" free pages may keep them unless SQLite runs with secure_delete: {_VACUUM}"
            " (VACUUM, then a checkpoint that truncates the -wal file)"
        )
        return Remnants(remaining=(wal, copies))
    busy = _vacuum_sqlite(store)
    cleaned = f"VACUUM and PRAGMA wal_checkpoint(TRUNCATE) on {store.path}"
    if busy:
        left = (
            f"a reader kept {store.path}-wal from being truncated: run it again when the"
            " workers are idle"
        )
        return Remnants(cleaned=(cleaned,), remaining=(left, copies))
    return Remnants(cleaned=(cleaned,), remaining=(copies,))


def _vacuum_sqlite(store: SQLiteStore) -> bool:
    """Rebuild the file and truncate its WAL; True when a reader kept the WAL from it.

    Raises:
        StoreError: SQLite refused (busy past the store's timeout, or the file unwritable).
    """
    from ._errors import StoreError

    try:
        with contextlib.closing(sqlite3.connect(store.path, timeout=_SQLITE_TIMEOUT)) as conn:
            conn.isolation_level = None  # VACUUM runs outside a transaction
            conn.execute("VACUUM")
            ((busy, _, _),) = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.Error as error:
        code = getattr(error, "sqlite_errorname", type(error).__name__)
        raise StoreError(f"SQLite store {str(store.path)!r} could not vacuum: {code}") from None
    return bool(busy)
