"""``PostgresStore``: records in PostgreSQL, shared by every process and machine of a deployment.

How a call is made safe:

- A compare-and-set is one statement: ``UPDATE ... WHERE key = %s AND version = %s`` (or
  ``INSERT ... ON CONFLICT DO NOTHING`` for an insert). Under READ COMMITTED, PostgreSQL
  re-checks the ``WHERE`` clause against the latest committed row after waiting for a
  concurrent writer's lock, so two writers can never both match the same version.
- The ledger of single-use keys (state nonces, the code ledger) is a second table. Taking a key
  is ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expires_at < now()``: free and expired keys are
  taken atomically, a live one is locked and its holder read in the same transaction.
- ``claim`` runs the state, the code and the record write in ONE transaction and rolls it back
  unless all three succeed: nothing is written unless the result is ``CLAIMED``.
- Every record write sends ``pg_notify(channel, key)`` in its transaction. Waiters wait on the
  store's ``hub``; one listening connection per store and process (``_postgres_listener``)
  fires it for the changes of every process.
- The store's clock is the server's ``now()`` (plus ``clock_offset``), read in the same
  statement as the record by ``load``; ledger keys expire by it too.
- After ``fork()`` a child opens its own pools and listening connection and never touches the
  parent's (``_forks.reset_in_child``); every answer is checked against its statement and key,
  so a connection shared by two processes anyway fails with ``StoreError``, never another
  key's record.
- The store never creates tables by itself: ``migrate()`` does, once, and records the schema
  version in a table of its own. Calls before then raise ``StoreError`` saying so.

Where each job lives: the SQL in ``_postgres_sql``, each operation once (for blocking and
awaited calls alike) in ``_postgres_ops``, the pools and the two drivers in ``_postgres_pools``,
the LISTEN connection in ``_postgres_listener``; the public methods come from ``DrivenStore``.

Every psycopg and pool error reaches the caller as ``StoreError`` naming the host, the database
and the error class; never the password (nor any other part of the connection string).
"""

from __future__ import annotations

import math
from typing import TypeVar

from .._extras import needs_extra
from ._common import closed_error
from ._driven import DrivenStore, Offset, Work, offset_of
from ._hub import Hub
from ._rows import Encryption, RecordCodec

with needs_extra("postgres", "PostgresStore"):  # psycopg and psycopg-pool
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from ._postgres_listener import Listener
    from ._postgres_ops import PostgresOps, Query, Result
    from ._postgres_pools import Connections, Place, connect_kwargs
    from ._postgres_sql import SCHEMA_VERSION, Tables
    from ._url_faults import postgres_fault

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

T = TypeVar("T")


class PostgresStore(DrivenStore[Query, Result]):
    """A ``Store`` and an ``AsyncStore`` in PostgreSQL, safe across processes and machines.

    Nothing connects until the first call. Run ``migrate()`` once (or ``amo-oauth migrate``)
    to create the tables; the store never creates them by itself.

    Args:
        conninfo: a psycopg 3 connection string (``"host=... dbname=..."``) or URL
            (``postgresql://user:password@host:5432/db``, ``postgres://...``).
        table: the records table, ``name`` or ``schema.name`` (lower-case letters, digits and
            ``_``; the name at most 40 characters). The ledger and the schema version live in
            ``<table>_ledger`` and ``<table>_schema`` beside it.
        min_size: connections each pool keeps open (blocking calls and awaited calls each have
            a pool, plus one listening connection once someone waits for a change).
        max_size: connections each pool opens at most.
        timeout: seconds of one wait for a pooled connection (and to connect:
            ``connect_timeout``, unless ``conninfo`` sets it). A wait that expires while the
            same pool served others meanwhile (a burst queueing) is waited again, for up to
            ``PATIENCE`` (30 s, ``stores/_turns.py``) in all; one during which that pool served
            nobody (server down, every connection stuck) raises ``StoreError`` after one
            ``timeout``. After an outage, the first call once the server is back gets a
            connection within it.
        encryption: encrypts the token pair at rest (e.g. ``cryptography``'s ``Fernet`` or
            ``MultiFernet``); rows are then useless without the key.
        clock_offset: added to the server's clock wherever the store reads it (``Loaded.now``,
            ``check``, ledger expiry); none by default. Tests move the store's time with it.

    Raises:
        ValueError: a malformed ``conninfo`` (the message quotes none of it), a bad table
            name, sizes out of order, or a timeout that is not positive.
    """

    _ops: PostgresOps
    _kind = "postgres"

    def __init__(
        self,
        conninfo: str,
        *,
        table: str = "amo_oauth_connections",
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 10.0,
        encryption: Encryption | None = None,
        clock_offset: Offset | None = None,
    ) -> None:
        params = _parsed(conninfo)
        if "@" in str(params.get("host") or "") or "@" in str(params.get("dbname") or ""):
            # A URL whose password holds a raw '@' or '/' parses with part of the password as
            # the host or the database, which reprs, errors and pool logs would then show.
            raise ValueError(
                "conninfo is not a valid PostgreSQL URL: percent-encode '@', '/' and ':' in its "
                "user name and password (e.g. '@' as %40)"
            )
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError("need 0 <= min_size <= max_size and max_size >= 1")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError("timeout must be a positive number of seconds")
        self._tables = Tables(table)
        host = str(params.get("host") or params.get("hostaddr") or "localhost")
        self._place = Place(host, str(params.get("dbname") or params.get("user") or ""), table)
        kwargs = connect_kwargs(params, timeout)
        self._conns = Connections(conninfo, kwargs, self._place, (min_size, max_size), timeout)
        codec = RecordCodec(encryption)
        self._ops = PostgresOps(self._tables, codec, self._place.where, offset_of(clock_offset))
        self.hub = Hub(name=f"postgres {self.table}")
        self._listener = Listener(
            self._conns, self._tables.listen, self.hub.notify, self.hub.notify_all
        )

    def __repr__(self) -> str:
        place = self._place
        return f"PostgresStore(host={place.host!r}, dbname={place.dbname!r}, table={self.table!r})"

    @property
    def table(self) -> str:
        """The records table, as given."""
        return self._tables.qualified

    def migrate(self) -> None:
        """Create the tables and indexes (``SCHEMA_VERSION``) unless they exist. Idempotent, and
        safe to run from several processes at once (they queue on an advisory lock).

        Raises:
            StoreError: the database could not be reached or written, or it holds another
                schema than this library knows (an older one is not converted).
        """
        self._run(self._ops.migrate())

    def vacuum_full(self) -> None:
        """Rewrite the records table into new files (``VACUUM FULL``), so that the old
        versions of its rows are gone from them: token pairs stored before encryption was
        turned on, or sealed with a key since rotated (``amo-oauth rotate-key --vacuum``).

        It holds an ACCESS EXCLUSIVE lock on the table while it runs: every flow on the store
        waits. The WAL, its archive, replicas and backups keep the old versions still
        (https://www.postgresql.org/docs/current/sql-vacuum.html).

        Raises:
            StoreError: the database failed, or the store's role does not own the table.
        """
        self._run(self._ops.vacuum_full())

    def _run(self, work: Work[Query, Result, T]) -> T:
        return self._conns.run(work)

    async def _arun(self, work: Work[Query, Result, T]) -> T:
        return await self._conns.arun(work)

    def _check_open(self) -> None:
        if self._conns.closed:
            raise closed_error()

    @property
    def _listen_timeout(self) -> float:
        return self._conns.timeout

    def close(self) -> None:
        """Close the pools and the listening connection, and end this store's waits with
        ``StoreError``. Any later call raises ``StoreError``; closing again does nothing. An
        async pool whose event loop is still running should be closed with ``aclose()`` from
        that loop instead."""
        self._conns.close()
        self._listener.close()
        self.hub.notify_all()

    async def aclose(self) -> None:
        """See ``close``; closes the async pool in its own event loop."""
        await self._conns.aclose()
        self._listener.close()
        self.hub.notify_all()


def _parsed(conninfo: str) -> dict[str, object]:
    """``conninfo``'s parameters.

    Raises:
        ValueError: libpq cannot parse it; raised outside the ``except`` block, since libpq's
            message (kept as ``__context__`` even under ``from None``) quotes the password.
    """
    try:
        return dict(conninfo_to_dict(conninfo))
    except psycopg.Error as exc:
        fault = postgres_fault(conninfo, str(exc))
    raise ValueError(fault)
