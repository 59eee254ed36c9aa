"""``RedisStore``: one Redis database shared by every process and machine of a deployment.

Needs the ``redis`` extra (``pip install amo_oauth[redis]``) and Redis 6.2 or later.

How a call is made safe:

- Every operation is one Lua script, and Redis runs a script alone: nothing else reads or writes
  between its first and last command. A compare-and-set reads the stored version and writes the
  record in one script, so two writers can never both match the same version, in any process.
- Each script first checks the schema marker (``{prefix}schema``), so a database never migrated
  (or flushed since) is refused instead of silently written to.
- The indexes are kept by the same scripts that write records: the set of keys per account
  (``find_by_account``), one sorted set of refresh due times (``due_page``) and one of every
  record key (``scan``).
- Every write PUBLISHes the record key on one channel. Waiters wait on the store's ``hub``; ONE
  subscription per store and process (a thread) fires it; a waiter never subscribes itself.
- The store's clock is the server's ``TIME`` (plus ``clock_offset``), read in the same script
  as the record by ``load``; ledger keys expire by it too.
- Before its first call the store reads the server's memory policy (``INFO memory``): a
  ``maxmemory-policy`` that may evict its keys is refused with ``StoreError`` unless
  ``allow_eviction``; a server that does not tell is warned about (``_redis_memory``).
  ``check()`` reports the same.
- Nothing is retried by redis-py: a write whose reply was lost may have been applied, and
  retrying it would report a lost race for a write that won. The caller gets ``StoreError``
  instead, and loads again.

Where each job lives: the Lua in ``_redis_lua``, each operation once (for blocking and awaited
calls alike) in ``_redis_ops``, the clients and the two drivers in ``_redis_clients``, the
subscriptions in ``_redis_listener``; the public methods come from ``DrivenStore``.

Keys (``prefix`` defaults to ``amo_oauth:``; put a hash tag in it, e.g. ``{amo_oauth}:``, to
keep every key in one Redis Cluster slot):

- ``{prefix}schema``: the schema version, set by ``migrate()``.
- ``{prefix}c:{record key}``: a hash: ``v`` version, ``s`` status, ``a`` account id, ``r``
  refresh due (POSIX seconds), ``d`` the encoded record.
- ``{prefix}a:{account id}``: the set of record keys of that verified account.
- ``{prefix}due``: record keys of connected records, scored by refresh due time.
- ``{prefix}keys``: every record key, all scored 0, so that ``ZRANGE ... BYLEX`` reads them in
  byte order.
- ``{prefix}l:{ledger key}``: a ledger entry (state nonce or code), expiring at its
  ``expires_at``; its value is ``=`` and the holder, or ``-`` for an entry without a holder.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

from .._extras import needs_extra
from ._driven import DrivenStore, Offset, Work, offset_of
from ._hub import Hub
from ._protocol import StoreCheck
from ._redis_lua import SCHEMA_VERSION
from ._redis_memory import MemoryGate
from ._redis_ops import RedisOps, Step
from ._rows import Encryption, RecordCodec

with needs_extra("redis", "RedisStore"):  # redis-py
    from ._redis_clients import Clients
    from ._redis_listener import LISTEN_POLL, Listener

__all__ = ["SCHEMA_VERSION", "RedisStore"]

T = TypeVar("T")


class RedisStore(DrivenStore[Step, Any]):
    """A ``Store`` and an ``AsyncStore`` in one Redis database (6.2 or later).

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
        max_connections: connections the store opens at most (per client: the blocking one
            and each event loop's asyncio one). Callers beyond wait ``timeout`` for one, and
            wait again while that client served others meanwhile (a burst queueing), for up to
            ``PATIENCE`` (30 s, ``stores/_turns.py``) in all; a wait during which the client
            served nobody raises ``StoreError``.
        encryption: encrypts the token pair at rest (e.g. ``cryptography``'s ``Fernet`` or
            ``MultiFernet``); rows are then useless without the key.
        clock_offset: added to the server's clock wherever the store reads it (``Loaded.now``,
            ``check``, ledger expiry); none by default. Tests move the store's time with it.
        allow_eviction: use a server whose ``maxmemory-policy`` may evict the store's keys
            (any policy but ``noeviction`` under a ``maxmemory`` limit), with a warning on the
            ``amo_oauth.stores`` logger instead of ``StoreError``. ``?allow_eviction=true`` on
            the URL says the same (for ``store_from_url`` and the ``amo-oauth`` command).
            Evicted ledger keys make a reload of the callback page answer ``wrong_browser``;
            evicted records are lost connections.

    Before its first call the store reads ``INFO memory`` once (see docs/stores.md, "Redis
    memory policy"); every call then raises ``StoreError`` while the policy may evict and
    eviction is not allowed. A server that hides its policy (``INFO`` renamed or denied, the
    fields missing) is used, with a warning.

    Raises:
        ValueError: ``url`` is not a Redis URL (or its ``allow_eviction`` is not true or
            false), ``prefix`` is empty, or ``timeout`` is not positive.
    """

    _ops: RedisOps
    _kind = "redis"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "amo_oauth:",
        timeout: float = 5.0,
        encryption: Encryption | None = None,
        max_connections: int = 32,
        clock_offset: Offset | None = None,
        allow_eviction: bool = False,
    ) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ValueError("prefix must be a non-empty string")
        if not timeout > 0 or math.isinf(timeout):
            raise ValueError("timeout must be a positive number of seconds")
        if max_connections < 2:  # one for calls, one for the change subscription
            raise ValueError("max_connections must be at least 2")
        self._clients = Clients(url, prefix, float(timeout), max_connections, allow_eviction)
        where, channel = self._clients.where, self._clients.channel
        allowed = self._clients.allow_eviction
        codec = RecordCodec(encryption)
        offset = offset_of(clock_offset)
        self._ops = RedisOps(prefix, channel, codec, where, offset, allow_eviction=allowed)
        self._gate = MemoryGate(where, allowed)
        self.hub = Hub(name=f"redis {prefix}")
        self._listener = Listener(
            self._clients.client,
            channel,
            where,
            float(timeout),
            self.hub.notify,
            self.hub.notify_all,
        )

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
            StoreError: Redis failed or is unreachable, or the database has another schema (an
                older one is not converted).
        """
        return self._run(self._ops.migrate())

    async def amigrate(self) -> int:
        """``migrate`` for asyncio callers."""
        return await self._arun(self._ops.migrate())

    def rewrite_aof(self) -> bool | None:
        """Start rewriting the server's append-only file (``BGREWRITEAOF``) when AOF is on, so
        that old values of rewritten records (token pairs stored before encryption, or sealed
        with a key since rotated) leave it: ``amo-oauth rotate-key --vacuum``. Redis rewrites
        it in the background (``INFO persistence``: ``aof_rewrite_in_progress``); RDB snapshots
        keep old values until the next one replaces them (https://redis.io/docs/latest/operate/oss_and_stack/management/persistence/).

        Returns:
            True: the rewrite started (or was scheduled); False: AOF is off, nothing to
            rewrite; None: the server refused ``INFO`` or ``BGREWRITEAOF`` (managed services
            may): rewrite it by the provider's means.

        Raises:
            StoreError: Redis failed or is unreachable, or the store refuses the server
                (``allow_eviction``).
        """
        return self._run(self._ops.rewrite_aof())

    def _run(self, work: Work[Step, Any, T]) -> T:
        if not self._gate.passed:
            self._gate.admit(self._clients.run(self._ops.memory()))
        return self._clients.run(work)

    async def _arun(self, work: Work[Step, Any, T]) -> T:
        if not self._gate.passed:
            self._gate.admit(await self._clients.arun(self._ops.memory()))
        return await self._clients.arun(work)

    def _run_check(self, work: Work[Step, Any, StoreCheck]) -> StoreCheck:
        return self._clients.run(work)  # not gated: it reports what the gate would refuse

    async def _arun_check(self, work: Work[Step, Any, StoreCheck]) -> StoreCheck:
        return await self._clients.arun(work)

    def _check_open(self) -> None:
        self._clients.check_open()

    @property
    def _listen_timeout(self) -> float:
        return self._clients.timeout

    def close(self) -> None:
        """Stop the subscription, close the blocking client, and end this store's waits with
        ``StoreError``; closing again does nothing. Any later call raises ``StoreError``. An
        asyncio client is closed by ``aclose()``; here it is closed on its loop if that runs.
        """
        self._clients.closed = True
        self._listener.close(join=LISTEN_POLL * 5)
        self._clients.close()
        self.hub.notify_all()

    async def aclose(self) -> None:
        """See ``close``; closes this loop's asyncio client here."""
        self._clients.closed = True
        self._listener.close(join=None)  # it sees the flag within LISTEN_POLL seconds
        await self._clients.aclose()
        self.hub.notify_all()
