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
  of caller (a listener thread for blocking waiters, a listener task for awaiting ones) and
  wakes the waiters of that key; a waiter never subscribes itself.
- Nothing is retried by redis-py: a write whose reply was lost may have been applied, and
  retrying it would report a lost race for a write that won. The caller gets ``StoreError``
  instead, and loads again.

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
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Generic, TypeVar, cast
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.retry import Retry

from .._errors import StoreError, UndecryptableRecord
from .._records import ConnectionRecord
from ._base import AsyncBaseStore, BaseStore
from ._common import (
    check_after,
    check_limit,
    check_write,
    closed_error,
    require_aware,
    wait_seconds,
)
from ._protocol import Claim, ClaimResult, DueCursor, LedgerEntry
from ._rows import Encryption, RecordCodec, Row

__all__ = ["SCHEMA_VERSION", "RedisStore"]

#: The value of ``{prefix}schema`` this library writes and reads.
SCHEMA_VERSION: Final = 2

#: Seconds a listener blocks for a message before looking whether it should stop.
_LISTEN_POLL: Final = 0.2
#: Seconds a connection may sit idle before redis-py checks it with a PING first.
_HEALTH_CHECK: Final = 30
#: ``ZRANGE ... LIMIT`` takes a signed 64-bit count; larger limits mean "all" anyway.
_MAX_LIMIT: Final = 2**62
#: Ledger values: a holder's entry is ``=`` + holder; an entry without a holder is ``-``.
_NO_HOLDER: Final = "-"
_HOLDER_MARK: Final = "="
#: The error a script raises when the schema marker is missing or of another version.
_SCHEMA_REPLY: Final = "AMO_OAUTH_SCHEMA"

# Every script gets KEYS[1] = the schema marker, KEYS[2] = the due sorted set, and
# ARGV[1] = the schema version, ARGV[2] = the key prefix, ARGV[3] = the change channel.
_PREAMBLE: Final = f"""
local SCHEMA, DUE = KEYS[1], KEYS[2]
local PREFIX, CHANNEL = ARGV[2], ARGV[3]
local ALL = PREFIX .. 'keys'
local found = redis.call('GET', SCHEMA)
if found ~= ARGV[1] then
  return redis.error_reply('{_SCHEMA_REPLY} ' .. (found or 'missing'))
end

local function unlink(rkey, key)
  local account = redis.call('HGET', rkey, 'a')
  if account then
    redis.call('SREM', PREFIX .. 'a:' .. account, key)
  end
  redis.call('ZREM', DUE, key)
  redis.call('ZREM', ALL, key)
  redis.call('DEL', rkey)
end

local function matches(rkey, expected)
  local current = redis.call('HGET', rkey, 'v')
  if expected == '' then
    return not current
  end
  return current == expected
end

-- ARGV[first .. first + 5]: key, version, state, account id, refresh due, data ('' = none)
local function put(rkey, first)
  local key, account, due = ARGV[first], ARGV[first + 3], ARGV[first + 4]
  unlink(rkey, key)
  redis.call('HSET', rkey, 'v', ARGV[first + 1], 's', ARGV[first + 2], 'd', ARGV[first + 5])
  if account ~= '' then
    redis.call('HSET', rkey, 'a', account)
    redis.call('SADD', PREFIX .. 'a:' .. account, key)
  end
  if due ~= '' then
    redis.call('ZADD', DUE, due, key)
  end
  redis.call('ZADD', ALL, 0, key)
  redis.call('PUBLISH', CHANNEL, key)
end

-- key, body, key, body, ...: what a paged read returns, so an unreadable body is named.
local function keyed(keys)
  local out = {{}}
  for _, key in ipairs(keys) do
    local data = redis.call('HGET', PREFIX .. 'c:' .. key, 'd')
    if data then
      table.insert(out, key)
      table.insert(out, data)
    end
  end
  return out
end

local function bodies(keys)
  local out = {{}}
  for _, key in ipairs(keys) do
    local data = redis.call('HGET', PREFIX .. 'c:' .. key, 'd')
    if data then
      table.insert(out, data)
    end
  end
  return out
end
"""

# KEYS[3] = record key.
_LOAD: Final = _PREAMBLE + "return redis.call('HGET', KEYS[3], 'd')\n"

# KEYS[3] = record key; ARGV[4] = expected version ('' = insert); ARGV[5..10] = the row.
_CAS: Final = (
    _PREAMBLE
    + """
if not matches(KEYS[3], ARGV[4]) then
  return 0
end
put(KEYS[3], 5)
return 1
"""
)

# KEYS[3] = record key; ARGV[4] = key, ARGV[5] = expected version.
_DELETE: Final = (
    _PREAMBLE
    + """
if redis.call('HGET', KEYS[3], 'v') ~= ARGV[5] then
  return 0
end
unlink(KEYS[3], ARGV[4])
redis.call('PUBLISH', CHANNEL, ARGV[4])
return 1
"""
)

# KEYS[3] = ledger key; ARGV[4] = value, ARGV[5] = expiry (ms), ARGV[6] = '1' with a holder.
_CONSUME: Final = (
    _PREAMBLE
    + """
if redis.call('SET', KEYS[3], ARGV[4], 'NX', 'PXAT', ARGV[5]) then
  return 1
end
if ARGV[6] == '1' and redis.call('GET', KEYS[3]) == ARGV[4] then
  return 1
end
return 0
"""
)

# KEYS[3] = ledger key.
_HOLDER: Final = _PREAMBLE + "return redis.call('GET', KEYS[3])\n"

# KEYS[3] = record key, KEYS[4] = code ledger key, KEYS[5] = state ledger key (optional);
# ARGV[4] = expected version, ARGV[5..10] = the row, ARGV[11], ARGV[12] = code value, expiry;
# ARGV[13], ARGV[14] = state value, expiry. Everything is checked before anything is written.
_CLAIM: Final = (
    _PREAMBLE
    + """
local function free_or_ours(lkey, value)
  local current = redis.call('GET', lkey)
  return (not current) or current == value
end
local with_state = #KEYS >= 5
if with_state and not free_or_ours(KEYS[5], ARGV[13]) then
  return 'state_used'
end
if not free_or_ours(KEYS[4], ARGV[11]) then
  return 'code_taken'
end
if not matches(KEYS[3], ARGV[4]) then
  return 'record_changed'
end
if with_state then
  redis.call('SET', KEYS[5], ARGV[13], 'NX', 'PXAT', ARGV[14])
end
redis.call('SET', KEYS[4], ARGV[11], 'NX', 'PXAT', ARGV[12])
put(KEYS[3], 5)
return 'claimed'
"""
)

# ARGV[4] = account id.
_FIND: Final = _PREAMBLE + "return bodies(redis.call('SMEMBERS', PREFIX .. 'a:' .. ARGV[4]))\n"

# ARGV[4] = '(' + cutoff (exclusive), ARGV[5] = limit. Ties are ordered by member: the key.
_DUE: Final = (
    _PREAMBLE
    + "return bodies(redis.call('ZRANGE', DUE, '-inf', ARGV[4], 'BYSCORE', 'LIMIT', 0, ARGV[5]))\n"
)

# ARGV[4] = '(' + cutoff (exclusive), ARGV[5] = limit, ARGV[6] = the cursor's score ('' = from
# the start), ARGV[7] = the cursor's key. Records of one score are ordered by member (bytes);
# the first one past the cursor's key is found by bisecting that run by rank, comparing bytes
# (Lua's own string order follows the server's locale, so it is not used).
_DUE_PAGE: Final = (
    _PREAMBLE
    + """
local function key_before(a, b)
  if a == b then
    return false
  end
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end
local start = 0
if ARGV[6] ~= '' then
  local lo = redis.call('ZCOUNT', DUE, '-inf', '(' .. ARGV[6])
  local hi = lo + redis.call('ZCOUNT', DUE, ARGV[6], ARGV[6])
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if key_before(ARGV[7], redis.call('ZRANGE', DUE, mid, mid)[1]) then
      hi = mid
    else
      lo = mid + 1
    end
  end
  start = lo
end
local stop = math.min(start + tonumber(ARGV[5]), redis.call('ZCOUNT', DUE, '-inf', ARGV[4])) - 1
if stop < start then
  return {}
end
return keyed(redis.call('ZRANGE', DUE, start, stop))
"""
)

# ARGV[4] = '(' + the key to start after, or '-' (from the first); ARGV[5] = limit.
_SCAN: Final = (
    _PREAMBLE
    + "return keyed(redis.call('ZRANGE', ALL, ARGV[4], '+', 'BYLEX', 'LIMIT', 0, ARGV[5]))\n"
)

# KEYS[1] = the schema marker; ARGV[1] = this library's version, ARGV[2] = the key prefix,
# ARGV[3] = the SCAN pattern of its records. Returns the stored version. Schema 1 had no index
# of every record key: it is built once, here, from the records themselves.
_MIGRATE: Final = """
local found = redis.call('GET', KEYS[1])
if found == '1' then
  local cursor = '0'
  repeat
    local reply = redis.call('SCAN', cursor, 'MATCH', ARGV[3], 'COUNT', 1000)
    cursor = reply[1]
    for _, rkey in ipairs(reply[2]) do
      redis.call('ZADD', ARGV[2] .. 'keys', 0, string.sub(rkey, #ARGV[2] + 3))
    end
  until cursor == '0'
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
if found then
  return found
end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""

_SCRIPTS: Final = {
    "load": _LOAD,
    "cas": _CAS,
    "delete": _DELETE,
    "consume": _CONSUME,
    "holder": _HOLDER,
    "claim": _CLAIM,
    "find": _FIND,
    "due": _DUE,
    "due_page": _DUE_PAGE,
    "scan": _SCAN,
    "migrate": _MIGRATE,
}

#: One script call: the script's name, what it does (for errors), its keys and arguments.
_Call = tuple[str, str, list[str], list[str]]


class RedisStore(BaseStore, AsyncBaseStore):
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
        self._prefix = prefix
        self._timeout = float(timeout)
        self._max_connections = max_connections
        self._options: dict[str, Any] = {
            "socket_timeout": self._timeout,
            "socket_connect_timeout": self._timeout,
            # The change subscription only reads: a PING on a connection idle this long finds
            # a server that vanished without a reset, so waiters are not left unwoken.
            "health_check_interval": _HEALTH_CHECK,
            "decode_responses": True,
        }
        if not isinstance(url, str) or not _names_a_db(url):
            # redis-py ignores a database path that is not a number (``/l`` for ``/1``) and
            # opens db 0: maybe another deployment's store. Refused, without quoting the URL.
            raise ValueError(
                "not a Redis URL: the database after the host must be a number"
                " (redis://host:6379/0)"
            )
        try:
            # A bounded pool that makes callers wait (up to ``timeout``) for a connection: a
            # burst of a thousand callers must not open a thousand connections (the server's
            # maxclients is bounded by its file descriptors).
            pool = redis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=self._timeout,
                retry=Retry(NoBackoff(), 0),
                **self._options,
            )
            self._client: redis.Redis = redis.Redis(connection_pool=pool)
        except (ValueError, TypeError):
            # The parser's message may quote the URL: say what is wrong, not what was given.
            raise ValueError(
                "not a Redis URL: expected redis://[[user]:password@]host[:port][/db],"
                " rediss://... or unix://path[?db=N]"
            ) from None
        self._url = url  # for the asyncio client; holds the password, so never shown
        kwargs = self._client.connection_pool.connection_kwargs
        db = kwargs.get("db", 0)
        if "path" in kwargs:
            self._where = f"unix:{kwargs['path']} db {db}"
        else:
            self._where = f"{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)} db {db}"
        self._channel = f"{prefix}changed:{db}"
        self._codec = RecordCodec(encryption)
        self._scripts = {name: self._client.register_script(src) for name, src in _SCRIPTS.items()}
        self._listener = _Listener(self._client, self._channel)
        self._async: _AsyncSide | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisStore({self._where!r}, prefix={self._prefix!r})"

    @property
    def prefix(self) -> str:
        """The prefix of every key this store reads and writes."""
        return self._prefix

    # -- schema --------------------------------------------------------------------------

    def migrate(self) -> int:
        """Prepare the database: set the schema marker. Running it again changes nothing.

        Returns:
            The schema version the database has (``SCHEMA_VERSION``).

        Raises:
            StoreError: Redis failed or is unreachable, or the database has a newer schema.
        """
        return self._checked_schema(self._run(self._migrate_call()))

    async def amigrate(self) -> int:
        """``migrate`` for asyncio callers."""
        return self._checked_schema(await self._arun(self._migrate_call()))

    # -- FullStore -----------------------------------------------------------------------

    def load(self, key: str) -> ConnectionRecord | None:
        """The record stored under ``key`` (``ConnectionRecord.key``), or None.

        Raises:
            StoreError: Redis failed, the database is not migrated, or the record is
                unreadable.
        """
        return self._one(self._run(self._load_call(key)))

    def compare_and_set(self, record: ConnectionRecord, expected_version: int | None) -> bool:
        """Write ``record`` if the stored version is still ``expected_version`` (None: insert).

        Returns:
            True when written; False, writing nothing, when another writer got there first.

        Raises:
            ValueError: ``record.version`` does not move past ``expected_version``.
            StoreError: Redis failed (the write may or may not have been applied), or the
                database is not migrated.
        """
        return bool(self._run(self._cas_call(record, expected_version)))

    def delete(self, key: str, expected_version: int) -> bool:
        """Delete the record if its version is still ``expected_version``.

        Raises:
            StoreError: Redis failed, or the database is not migrated.
        """
        return bool(self._run(self._delete_call(key, expected_version)))

    def consume_state(self, nonce: str, expires_at: datetime, holder: str | None = None) -> bool:
        """Take a single-use key until ``expires_at`` (aware): True the first time, and again
        only for the same ``holder``. Redis forgets the key when it expires.

        Raises:
            ValueError: ``expires_at`` is naive.
            StoreError: Redis failed, or the database is not migrated.
        """
        return bool(self._run(self._consume_call(nonce, expires_at, holder)))

    def holder_of(self, key: str) -> str | None:
        """Who holds the ledger key; None when it is free, expired, or held without a holder.

        Raises:
            StoreError: Redis failed, or the database is not migrated.
        """
        return _holder(self._run(self._holder_call(key)))

    def claim(self, claim: Claim) -> ClaimResult:
        """Take ``claim.state`` and ``claim.code`` and write ``claim.record`` in one script:
        all three are written, or (any result but ``CLAIMED``) none is.

        Raises:
            ValueError: the record's version does not move past ``claim.expected_version``,
                or an ``expires_at`` is naive.
            StoreError: Redis failed (the claim may or may not have been applied), or the
                database is not migrated.
        """
        return ClaimResult(self._run(self._claim_call(claim)))

    def find_by_account(self, account_id: int) -> list[ConnectionRecord]:
        """Every record whose verified account is ``account_id``, by key.

        Raises:
            StoreError: Redis failed, the database is not migrated, or a record is unreadable.
        """
        return self._many(self._run(self._find_call(account_id)), by_key=True)

    def due_for_refresh(self, before: datetime, limit: int) -> list[ConnectionRecord]:
        """Up to ``limit`` connected records whose refresh token expires strictly before
        ``before`` (aware), soonest first, ties by key.

        Raises:
            ValueError: ``before`` is naive or ``limit`` negative.
            StoreError: Redis failed, the database is not migrated, or a record is unreadable.
        """
        return self._many(self._run(self._due_call(before, limit)), by_key=False)

    def due_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        """Up to ``limit`` connected records whose refresh token expires strictly before
        ``before`` (aware), soonest first, ties by key, strictly after the position ``after``
        (the last record's refresh-token expiry and key; None: from the start). One script:
        a seek in the due sorted set (O(log n)), then the page.

        Raises:
            ValueError: ``before`` or ``after``'s time is naive, or ``limit`` is negative.
            StoreError: Redis failed, the database is not migrated, or a record is unreadable.
        """
        return self._keyed(self._run(self._due_page_call(before, limit, after)))

    def scan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        """Up to ``limit`` records of any state, by key (byte order), with keys strictly after
        ``after`` (None: from the first).

        Raises:
            ValueError: ``limit`` is negative.
            StoreError: Redis failed, the database is not migrated, or a record is unreadable
                (``UndecryptableRecord`` naming the row's key).
        """
        return self._keyed(self._run(self._scan_call(after, limit)))

    def wait_for_change(self, key: str, version: int, timeout: float) -> None:
        """Return once the record's version may differ from ``version`` (0: no record), or
        after ``timeout`` seconds; it may return early. Woken by the store's one pub/sub
        listener thread; while that cannot subscribe, it polls instead.

        Raises:
            StoreError: Redis failed, the database is not migrated, or the store is closed.
        """
        timeout = wait_seconds(timeout)  # NaN, negative or huge: bounded
        self._check_open()
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

    def close(self) -> None:
        """Stop the listener thread and close the blocking client; closing again does nothing.

        Any later call raises ``StoreError``. An asyncio client is closed by ``aclose()``; here
        only its listener is stopped, when its loop still runs.
        """
        self._closed = True
        self._listener.stop(join=True)
        side, self._async = self._async, None
        if side is not None:
            side.stop_soon()
        self._client.close()

    # -- AsyncStore ----------------------------------------------------------------------

    async def aload(self, key: str) -> ConnectionRecord | None:
        """See ``load``."""
        return self._one(await self._arun(self._load_call(key)))

    async def acompare_and_set(
        self, record: ConnectionRecord, expected_version: int | None
    ) -> bool:
        """See ``compare_and_set``."""
        return bool(await self._arun(self._cas_call(record, expected_version)))

    async def adelete(self, key: str, expected_version: int) -> bool:
        """See ``delete``."""
        return bool(await self._arun(self._delete_call(key, expected_version)))

    async def aconsume_state(
        self, nonce: str, expires_at: datetime, holder: str | None = None
    ) -> bool:
        """See ``consume_state``."""
        return bool(await self._arun(self._consume_call(nonce, expires_at, holder)))

    async def aholder_of(self, key: str) -> str | None:
        """See ``holder_of``."""
        return _holder(await self._arun(self._holder_call(key)))

    async def aclaim(self, claim: Claim) -> ClaimResult:
        """See ``claim``."""
        return ClaimResult(await self._arun(self._claim_call(claim)))

    async def afind_by_account(self, account_id: int) -> list[ConnectionRecord]:
        """See ``find_by_account``."""
        return self._many(await self._arun(self._find_call(account_id)), by_key=True)

    async def adue_for_refresh(self, before: datetime, limit: int) -> list[ConnectionRecord]:
        """See ``due_for_refresh``."""
        return self._many(await self._arun(self._due_call(before, limit)), by_key=False)

    async def adue_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        """See ``due_page``."""
        return self._keyed(await self._arun(self._due_page_call(before, limit, after)))

    async def ascan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        """See ``scan``."""
        return self._keyed(await self._arun(self._scan_call(after, limit)))

    async def await_for_change(self, key: str, version: int, timeout: float) -> None:
        """See ``wait_for_change``; woken by the store's one listener task on this loop.

        Raises:
            StoreError: Redis failed, the database is not migrated, or the store is closed.
        """
        timeout = wait_seconds(timeout)  # NaN, negative or huge: bounded
        self._check_open()
        side = self._side()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        event = asyncio.Event()
        listening = side.add(key, event)
        try:
            if not await _wait(listening.ready, deadline - loop.time()):
                return
            if not listening.alive:
                await AsyncBaseStore.await_for_change(self, key, version, deadline - loop.time())
                return
            if _version(await self.aload(key)) != version:
                return
            await _wait(event, deadline - loop.time())
        finally:
            side.remove(key, event)

    async def aclose(self) -> None:
        """Stop both listeners and close both clients; closing again does nothing.

        Any later call raises ``StoreError``.
        """
        self._closed = True
        self._listener.stop(join=False)  # it sees the flag within _LISTEN_POLL seconds
        side, self._async = self._async, None
        if side is not None:
            if side.loop is asyncio.get_running_loop():
                await side.close()
            else:
                side.stop_soon()
        self._client.close()

    # -- the calls, made the same way for both clients -------------------------------------

    def _base(self, *keys: str) -> list[str]:
        return [self._prefix + "schema", self._prefix + "due", *keys]

    def _args(self, *args: str) -> list[str]:
        return [str(SCHEMA_VERSION), self._prefix, self._channel, *args]

    def _record_key(self, key: str) -> str:
        return f"{self._prefix}c:{key}"

    def _ledger_key(self, key: str) -> str:
        return f"{self._prefix}l:{key}"

    def _row_args(self, record: ConnectionRecord, expected_version: int | None) -> list[str]:
        check_write(record, expected_version)
        row: Row = self._codec.row(record)
        return [
            "" if expected_version is None else str(expected_version),
            row.key,
            str(row.version),
            row.state,
            "" if row.account_id is None else str(row.account_id),
            "" if row.refresh_due is None else repr(row.refresh_due),
            row.data,
        ]

    def _migrate_call(self) -> _Call:
        records = _glob_escaped(self._prefix) + "c:*"
        args = [str(SCHEMA_VERSION), self._prefix, records]
        return ("migrate", "migrate", [self._prefix + "schema"], args)

    def _load_call(self, key: str) -> _Call:
        return ("load", "load a record", self._base(self._record_key(key)), self._args())

    def _cas_call(self, record: ConnectionRecord, expected_version: int | None) -> _Call:
        row = self._row_args(record, expected_version)
        return ("cas", "write a record", self._base(self._record_key(record.key)), self._args(*row))

    def _delete_call(self, key: str, expected_version: int) -> _Call:
        args = self._args(key, str(expected_version))
        return ("delete", "delete a record", self._base(self._record_key(key)), args)

    def _consume_call(self, nonce: str, expires_at: datetime, holder: str | None) -> _Call:
        value, expiry = _ledger_value(holder), _expiry_ms(expires_at)
        args = self._args(value, expiry, "0" if holder is None else "1")
        return ("consume", "consume a state", self._base(self._ledger_key(nonce)), args)

    def _holder_call(self, key: str) -> _Call:
        return ("holder", "read the ledger", self._base(self._ledger_key(key)), self._args())

    def _claim_call(self, claim: Claim) -> _Call:
        row = self._row_args(claim.record, claim.expected_version)
        code = _entry_args(claim.code)
        keys = [self._record_key(claim.record.key), self._ledger_key(claim.code.key)]
        state = ["", ""]
        if claim.state is not None:
            state = _entry_args(claim.state)
            keys.append(self._ledger_key(claim.state.key))
        return ("claim", "claim a code", self._base(*keys), self._args(*row, *code, *state))

    def _find_call(self, account_id: int) -> _Call:
        args = self._args(str(int(account_id)))
        return ("find", "find records by account", self._base(), args)

    def _due_call(self, before: datetime, limit: int) -> _Call:
        cutoff = "(" + repr(require_aware(before, "before").timestamp())
        count = str(min(check_limit(limit), _MAX_LIMIT))
        return ("due", "list records due for refresh", self._base(), self._args(cutoff, count))

    def _due_page_call(self, before: datetime, limit: int, after: DueCursor | None) -> _Call:
        cutoff = "(" + repr(require_aware(before, "before").timestamp())
        count = str(min(check_limit(limit), _MAX_LIMIT))
        cursor = check_after(after)
        score, key = ("", "") if cursor is None else (repr(cursor[0]), cursor[1])
        args = self._args(cutoff, count, score, key)
        return ("due_page", "list records due for refresh", self._base(), args)

    def _scan_call(self, after: str | None, limit: int) -> _Call:
        count = str(min(check_limit(limit), _MAX_LIMIT))
        start = "-" if after is None else "(" + after
        return ("scan", "scan records", self._base(), self._args(start, count))

    def _run(self, call: _Call) -> Any:
        self._check_open()
        name, action, keys, args = call
        with self._mapped(action):
            return self._scripts[name](keys=keys, args=args)

    async def _arun(self, call: _Call) -> Any:
        self._check_open()
        name, action, keys, args = call
        side = self._side()
        with self._mapped(action):
            return await side.scripts[name](keys=keys, args=args)

    # -- results ---------------------------------------------------------------------------

    def _one(self, data: str | None) -> ConnectionRecord | None:
        return None if data is None else self._codec.decode(data)

    def _keyed(self, reply: Sequence[str]) -> list[ConnectionRecord]:
        """The records of a paged read's ``key, body, ...`` reply, in its order."""
        records = []
        for key, data in zip(reply[::2], reply[1::2], strict=True):
            try:
                records.append(self._codec.decode(data))
            except UndecryptableRecord as error:
                raise UndecryptableRecord(str(error), key) from None
        return records

    def _many(self, bodies: Sequence[str], *, by_key: bool) -> list[ConnectionRecord]:
        records = [self._codec.decode(data) for data in bodies]
        return sorted(records, key=lambda record: record.key) if by_key else records

    def _checked_schema(self, found: str) -> int:
        try:
            version = int(found)
        except ValueError:
            version = -1
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"Redis store at {self._where} has schema {found!r} under prefix"
                f" {self._prefix!r}; this library knows {SCHEMA_VERSION}"
            )
        return version

    # -- plumbing --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise closed_error()

    @contextlib.contextmanager
    def _mapped(self, action: str) -> Iterator[None]:
        """Turn redis-py's errors into ``StoreError``: the host, db and error class only."""
        try:
            yield
        except redis.ResponseError as exc:
            message = str(exc)
            if not message.startswith(_SCHEMA_REPLY):
                raise StoreError(
                    f"Redis store at {self._where} could not {action}: {type(exc).__name__}"
                ) from exc
            found = message[len(_SCHEMA_REPLY) :].strip()
            if found == "missing":
                raise StoreError(
                    f"Redis store at {self._where} has no amo_oauth schema under prefix"
                    f" {self._prefix!r}: run amo-oauth migrate"
                ) from None
            raise StoreError(
                f"Redis store at {self._where} has schema {found!r} under prefix"
                f" {self._prefix!r}, not {SCHEMA_VERSION}: run amo-oauth migrate"
            ) from None
        except (redis.RedisError, OSError) as exc:
            raise StoreError(
                f"Redis store at {self._where} could not {action}: {type(exc).__name__}"
            ) from exc

    def _side(self) -> _AsyncSide:
        """The asyncio client of the running loop, made on first use."""
        loop = asyncio.get_running_loop()
        side = self._async
        if side is None or side.loop is not loop:
            if side is not None:
                side.stop_soon()
            apool = redis.asyncio.BlockingConnectionPool.from_url(
                self._url,
                max_connections=self._max_connections,
                timeout=self._timeout,
                retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
                **self._options,
            )
            client: redis.asyncio.Redis = redis.asyncio.Redis(connection_pool=apool)
            side = _AsyncSide(loop, client, self._channel)
            self._async = side
        return side


# -- listeners ---------------------------------------------------------------------------------


_E = TypeVar("_E", threading.Event, asyncio.Event)


class _Listening(Generic[_E]):
    """One subscription's life: ``ready`` is set once it is up, or once it died (``alive``
    then False), so that a waiter never waits for a subscription that will not come."""

    def __init__(self, ready: _E) -> None:
        self.ready: _E = ready
        self.alive = True


def _dispatch(
    message: Mapping[str, Any] | None,
    listening: _Listening[threading.Event] | _Listening[asyncio.Event],
    wake: Callable[[str | None], None],
) -> None:
    """Act on one pub/sub message, for the blocking and the awaited listener alike: the
    subscription's confirmation makes it ready; a change wakes the waiters of its key."""
    if message is None:
        return
    if message["type"] == "subscribe":
        listening.ready.set()
    elif message["type"] == "message":
        wake(message["data"])


class _Listener:
    """The blocking side's one subscription: a daemon thread that wakes the waiters of a key.

    It runs while the store is open; when its connection fails it wakes every waiter and ends,
    and the next waiter starts another.
    """

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._thread: threading.Thread | None = None
        self._listening = _Listening(threading.Event())
        self._stopping = threading.Event()

    def add(self, key: str, event: threading.Event) -> _Listening[threading.Event]:
        """Register ``event`` to be set on a change of ``key``; start the thread if needed."""
        with self._lock:
            self._waiters.setdefault(key, set()).add(event)
            if self._stopping.is_set():
                event.set()
                return self._listening
            if self._thread is None or not self._listening.alive:
                self._listening = _Listening(threading.Event())
                self._thread = threading.Thread(
                    target=self._run,
                    args=(self._listening,),
                    name="amo_oauth-redis-listener",
                    daemon=True,
                )
                self._thread.start()
            return self._listening

    def remove(self, key: str, event: threading.Event) -> None:
        with self._lock:
            events = self._waiters.get(key)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[key]

    def stop(self, *, join: bool) -> None:
        with self._lock:
            self._stopping.set()
            thread = self._thread
        self._wake(None)
        if join and thread is not None and thread is not threading.current_thread():
            thread.join(timeout=_LISTEN_POLL * 5)

    def _run(self, listening: _Listening[threading.Event]) -> None:
        # redis-py annotates PubSub from 8.2 on only: held as Any, it type-checks alike at the
        # floor and at the lock (tasks.py checks both).
        pubsub: Any = cast("Callable[[], Any]", self._client.pubsub)()
        try:
            pubsub.subscribe(self._channel)
            while not self._stopping.is_set():
                message = pubsub.get_message(timeout=_LISTEN_POLL)
                _dispatch(message, listening, self._wake)
        except (redis.RedisError, OSError, ValueError):
            pass  # the waiters are woken below; the next one starts another listener
        finally:
            listening.alive = False
            listening.ready.set()
            self._wake(None)
            with contextlib.suppress(redis.RedisError, OSError):
                pubsub.close()

    def _wake(self, key: str | None) -> None:
        """Set the events of ``key``'s waiters, or of every waiter (None)."""
        with self._lock:
            if key is None:
                events = [event for waiting in self._waiters.values() for event in waiting]
            else:
                events = list(self._waiters.get(key, ()))
        for event in events:
            event.set()


class _AsyncSide:
    """The asyncio client of one event loop, its scripts, and its one listener task."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: redis.asyncio.Redis, channel: str):
        self.loop = loop
        self.client = client
        self.scripts = {name: client.register_script(src) for name, src in _SCRIPTS.items()}
        self._channel = channel
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._listening = _Listening(asyncio.Event())
        self._stopped = False
        self._closing: asyncio.Task[None] | None = None

    def add(self, key: str, event: asyncio.Event) -> _Listening[asyncio.Event]:
        """Register ``event`` for ``key``; start the listener task if needed (on this loop)."""
        self._waiters.setdefault(key, set()).add(event)
        if self._stopped:
            event.set()
            return self._listening
        if self._task is None or not self._listening.alive:
            self._listening = _Listening(asyncio.Event())
            self._task = self.loop.create_task(
                self._run(self._listening), name="amo_oauth-redis-listener"
            )
        return self._listening

    def remove(self, key: str, event: asyncio.Event) -> None:
        events = self._waiters.get(key)
        if events is not None:
            events.discard(event)
            if not events:
                del self._waiters[key]

    async def close(self) -> None:
        """Cancel the listener task and close the client (on this side's loop)."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._wake(None)
        with contextlib.suppress(redis.RedisError, OSError):
            await self.client.aclose()

    def stop_soon(self) -> None:
        """Close from outside this side's loop: scheduled on it when it still runs."""
        if self._stopped:
            return
        self._stopped = True
        if self.loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self.loop.call_soon_threadsafe(self._close_soon)

    def _close_soon(self) -> None:
        self._closing = self.loop.create_task(self.close())

    async def _run(self, listening: _Listening[asyncio.Event]) -> None:
        pubsub: Any = self.client.pubsub()  # Any: see _Listener._run
        try:
            await pubsub.subscribe(self._channel)
            while True:
                message = await pubsub.get_message(timeout=_LISTEN_POLL * 5)
                _dispatch(message, listening, self._wake)
        except (redis.RedisError, OSError, ValueError):
            pass  # the waiters are woken below; the next one starts another listener
        finally:
            listening.alive = False
            listening.ready.set()
            self._wake(None)
            with contextlib.suppress(redis.RedisError, OSError):
                await pubsub.aclose()

    def _wake(self, key: str | None) -> None:
        if key is None:
            events = [event for waiting in self._waiters.values() for event in waiting]
        else:
            events = list(self._waiters.get(key, ()))
        for event in events:
            event.set()


# -- helpers -------------------------------------------------------------------------------------


def _version(record: ConnectionRecord | None) -> int:
    return record.version if record is not None else 0


def _ledger_value(holder: str | None) -> str:
    return _NO_HOLDER if holder is None else _HOLDER_MARK + holder


def _holder(value: str | None) -> str | None:
    if value is None or not value.startswith(_HOLDER_MARK):
        return None
    return value[len(_HOLDER_MARK) :]


def _expiry_ms(expires_at: datetime) -> str:
    """``expires_at`` as ``PXAT``'s POSIX milliseconds: rounded up, and at least 1 (``PXAT``
    refuses 0 and below; any moment in the past expires the key at once)."""
    moment = require_aware(expires_at, "expires_at").timestamp()
    return str(max(1, math.ceil(moment * 1000)))


def _entry_args(entry: LedgerEntry) -> list[str]:
    return [_ledger_value(entry.holder), _expiry_ms(entry.expires_at)]


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    """True once ``event`` is set; False after ``timeout`` seconds."""
    if event.is_set():
        return True
    if timeout <= 0:
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
    return event.is_set()


def _glob_escaped(text: str) -> str:
    """``text`` matched literally by a Redis glob (``SCAN ... MATCH``)."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _names_a_db(url: str) -> bool:
    """False for a ``redis://`` or ``rediss://`` URL whose path is not ``/`` + a number (or
    empty): redis-py would ignore it and use db 0. Other schemes are for redis-py to judge."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return True  # malformed: redis-py refuses it with the usual message
    if parts.scheme.lower() not in ("redis", "rediss"):
        return True
    path = unquote(parts.path)
    return path in ("", "/") or (path[:1] == "/" and path[1:].isascii() and path[1:].isdigit())
