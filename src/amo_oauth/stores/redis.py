"""``RedisStore``: one Redis database shared by every process and machine of a deployment.

Needs the ``redis`` extra (``pip install amo_oauth[redis]``) and Redis 6.2 or later.

How a call is made safe:

- Every operation is one Lua script, and Redis runs a script alone: nothing else reads or writes
  between its first and last command. A compare-and-set reads the stored version and writes the
  record in one script, so two writers can never both match the same version, in any process.
- Each script first checks the schema marker (``{prefix}schema``), so a database never migrated
  (or flushed since) is refused instead of silently written to.
- The indexes are kept by the same scripts that write records: the set of keys per account
  (``find_by_account``), one sorted set of refresh due times (``due_for_refresh``, ``due_page``)
  and one of every record key (``scan``).
- Every write PUBLISHes the record key on one channel. A store holds ONE subscription per kind
  of caller and wakes the waiters of that key; a waiter never subscribes itself.
- Nothing is retried by redis-py: a write whose reply was lost may have been applied, and
  retrying it would report a lost race for a write that won. The caller gets ``StoreError``
  instead, and loads again.

Where each job lives: the Lua in ``_redis_lua``, each operation once (for blocking and awaited
calls alike) in ``_redis_ops``, the clients and the two drivers in ``_redis_clients``, the
subscriptions in ``_redis_listener``; the public methods come from ``DrivenStore``.

Keys (``prefix`` defaults to ``amo_oauth:``; put a hash tag in it, e.g. ``{amo_oauth}:``, to
keep every key in one Redis Cluster slot):

- ``{prefix}schema``: the schema version, set by ``migrate()``.
- ``{prefix}c:{record key}``: a hash: ``v`` version, ``s`` state, ``a`` account id, ``r``
  refresh due (POSIX seconds), ``d`` the encoded record.
- ``{prefix}a:{account id}``: the set of record keys of that verified account.
- ``{prefix}due``: record keys of connected records, scored by refresh due time.
- ``{prefix}keys``: every record key, all scored 0, so that ``ZRANGE ... BYLEX`` reads them in
  byte order (schema 2; ``migrate()`` builds it for a database of schema 1).
- ``{prefix}l:{ledger key}``: a ledger entry (state nonce or code), expiring at its
  ``expires_at``; its value is ``=`` and the holder, or ``-`` for an entry without a holder.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any, TypeVar

from .._records import ConnectionRecord
from ._base import AsyncBaseStore, BaseStore
from ._common import wait_seconds
from ._driven import DrivenStore, Work
from ._redis_clients import Clients
from ._redis_listener import Listener, wait_event
from ._redis_lua import SCHEMA_VERSION
from ._redis_ops import RedisOps, Script
from ._rows import Encryption, RecordCodec

__all__ = ["SCHEMA_VERSION", "RedisStore"]

T = TypeVar("T")


class RedisStore(DrivenStore[Script, Any], BaseStore, AsyncBaseStore):
    """A ``FullStore`` and an ``AsyncStore`` in one Redis database (6.2 or later).

    Safe across threads, processes and machines: every operation is one atomic Lua script.
    Blocking calls use a ``redis.Redis`` client made here (no connection yet); awaited calls
    use a ``redis.asyncio`` client made on first use, on the running event loop (use one loop
    at a time, and ``aclose()`` it before that loop ends). Waits are woken by pub/sub.

    The database must be prepared once with ``migrate()`` (or ``amo-oauth migrate``); every
    operation on a database without the schema marker raises ``StoreError``.

    Args:
        url: a ``redis://``, ``rediss://`` or ``unix://`` URL, with the password if any. Only
            the host, port and db ever appear in a repr or an error; never the password.
        prefix: prepended to every key (and to the change channel), so that several stores or
            applications can share one database.
        timeout: seconds to connect, and to wait for any one reply, before ``StoreError``.
        max_connections: connections the store opens at most (per client: blocking and async);
            callers beyond wait up to ``timeout`` for one.
        encryption: encrypts the token pair at rest (e.g. ``cryptography``'s ``Fernet`` or
            ``MultiFernet``); rows are then useless without the key.

    Raises:
        ValueError: ``url`` is not a Redis URL, ``prefix`` is empty, or ``timeout`` is not
            positive.
    """

    _ops: RedisOps

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "amo_oauth:",
        timeout: float = 5.0,
        encryption: Encryption | None = None,
        max_connections: int = 32,
    ) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ValueError("prefix must be a non-empty string")
        if not timeout > 0 or math.isinf(timeout):
            raise ValueError("timeout must be a positive number of seconds")
        if max_connections < 2:  # one for calls, one for the change subscription
            raise ValueError("max_connections must be at least 2")
        self._clients = Clients(url, prefix, float(timeout), max_connections)
        where, channel = self._clients.where, self._clients.channel
        self._ops = RedisOps(prefix, channel, RecordCodec(encryption), where)
        self._listener = Listener(self._clients.client, channel)

    def __repr__(self) -> str:
        return f"RedisStore({self._clients.where!r}, prefix={self.prefix!r})"

    @property
    def prefix(self) -> str:
        """The prefix of every key this store reads and writes."""
        return self._clients.prefix

    def migrate(self) -> int:
        """Prepare the database: set the schema marker. Running it again changes nothing.

        Returns:
            The schema version the database has (``SCHEMA_VERSION``).

        Raises:
            StoreError: Redis failed or is unreachable, or the database has a newer schema.
        """
        return self._run(self._ops.migrate())

    async def amigrate(self) -> int:
        """``migrate`` for asyncio callers."""
        return await self._arun(self._ops.migrate())

    def _run(self, work: Work[Script, Any, T]) -> T:
        return self._clients.run(work)

    async def _arun(self, work: Work[Script, Any, T]) -> T:
        return await self._clients.arun(work)

    # -- waiting -------------------------------------------------------------------------

    def wait_for_change(self, key: str, version: int, timeout: float) -> None:
        """Return once the record's version may differ from ``version`` (0: no record), or
        after ``timeout`` seconds; it may return early. Woken by the store's one pub/sub
        listener thread; while that cannot subscribe, it polls instead.

        Raises:
            StoreError: Redis failed, the database is not migrated, or the store is closed.
        """
        timeout = wait_seconds(timeout)  # NaN, negative or huge: bounded
        self._clients.check_open()
        deadline = time.monotonic() + max(0.0, timeout)
        event = threading.Event()
        listening = self._listener.add(key, event)
        try:
            if not listening.ready.wait(max(0.0, deadline - time.monotonic())):
                return  # the time ran out before the subscription was up
            if not listening.alive:
                BaseStore.wait_for_change(self, key, version, deadline - time.monotonic())
                return
            if _version(self.load(key)) != version:
                return
            event.wait(max(0.0, deadline - time.monotonic()))
        finally:
            self._listener.remove(key, event)

    async def await_for_change(self, key: str, version: int, timeout: float) -> None:
        """See ``wait_for_change``; woken by the store's one listener task on this loop.

        Raises:
            StoreError: Redis failed, the database is not migrated, or the store is closed.
        """
        timeout = wait_seconds(timeout)  # NaN, negative or huge: bounded
        self._clients.check_open()
        side = self._clients.side()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        event = asyncio.Event()
        listening = side.add(key, event)
        try:
            if not await wait_event(listening.ready, deadline - loop.time()):
                return
            if not listening.alive:
                await AsyncBaseStore.await_for_change(self, key, version, deadline - loop.time())
                return
            if _version(await self.aload(key)) != version:
                return
            await wait_event(event, deadline - loop.time())
        finally:
            side.remove(key, event)

    # -- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the listener thread and close the blocking client; closing again does nothing.

        Any later call raises ``StoreError``. An asyncio client is closed by ``aclose()``; here
        only its listener is stopped, when its loop still runs.
        """
        self._clients.closed = True
        self._listener.stop(join=True)
        self._clients.close()

    async def aclose(self) -> None:
        """Stop both listeners and close both clients; closing again does nothing.

        Any later call raises ``StoreError``.
        """
        self._clients.closed = True
        self._listener.stop(join=False)  # it sees the flag within LISTEN_POLL seconds
        await self._clients.aclose()


def _version(record: ConnectionRecord | None) -> int:
    return record.version if record is not None else 0
