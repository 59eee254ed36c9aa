"""``RedisStore``'s clients: the blocking one, one asyncio client per event loop, the two drivers
that make an operation's script calls on them, and the mapping of every error to ``StoreError``.

Nothing is retried by redis-py: a write whose reply was lost may have been applied, and
retrying it would report a lost race for a write that won. The caller gets ``StoreError``
instead, and loads again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.retry import Retry

from .._driving import adrive, drive
from .._errors import StoreError
from ._common import closed_error
from ._driven import Work
from ._forks import reset_in_child
from ._redis_lua import SCHEMA_REPLY, SCHEMA_VERSION, SCRIPTS
from ._redis_ops import Command, Step
from ._turns import Turns
from ._url_faults import redis_fault

__all__ = ["Clients"]

#: Seconds a connection may sit idle before redis-py checks it with a PING first.
_HEALTH_CHECK: Final = 30
#: The URL's query parameter that is ``RedisStore``'s ``allow_eviction``, and its values.
_OPT_IN: Final = "allow_eviction"
_TRUTH: Final = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}

T = TypeVar("T")


class Clients:
    """A store's blocking client and its asyncio client (made on first use, per event loop).

    Raises:
        ValueError: ``url`` is not a Redis URL (the message quotes none of it).
    """

    def __init__(
        self, url: str, prefix: str, timeout: float, max_connections: int, allow_eviction: bool
    ) -> None:
        url, in_url = _opt_in(url)
        #: The keyword or the URL accepts a memory policy that may evict (``_redis_memory``).
        self.allow_eviction = allow_eviction or in_url
        self.prefix = prefix
        self.timeout = timeout
        self._max_connections = max_connections
        self.options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            # The change subscription only reads: a PING on a connection idle this long finds
            # a server that vanished without a reset, so waiters are not left unwoken.
            "health_check_interval": _HEALTH_CHECK,
            "decode_responses": True,
        }
        self.client = self._blocking_client(url)
        self._url = url  # for the asyncio client; holds the password, so never shown
        kwargs = self.client.connection_pool.connection_kwargs
        db = kwargs.get("db", 0)
        if "path" in kwargs:
            self.where = f"unix:{kwargs['path']} db {db}"
        else:
            self.where = f"{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)} db {db}"
        self.channel = f"{prefix}changed:{db}"
        self._scripts = {name: self.client.register_script(src) for name, src in SCRIPTS.items()}
        self._async: LoopClient | None = None
        # A burst queues for a connection instead of failing after one ``timeout``; the
        # blocking client's count only (each loop's asyncio client counts its own).
        self._turns = _client_turns(timeout)
        self.closed = False
        reset_in_child(self)

    def after_fork(self) -> None:
        """In a forked child: the asyncio client (per event loop) holds the parent's sockets,
        and redis-py's asyncio pool does not check the process id (its blocking one does): a
        child reusing the parent's loop read the parent's replies. Forgotten, never closed
        (closing would speak on the parent's connections); the child's next call opens its
        own."""
        _INHERITED.append(self._async)
        self._async = None

    def _blocking_client(self, url: str) -> redis.Redis:
        if not isinstance(url, str) or not _names_a_db(url):
            # redis-py ignores a database path that is not a number (``/l`` for ``/1``) and
            # opens db 0: maybe another deployment's store. Refused, without quoting the URL.
            raise ValueError(
                "not a Redis URL: the database after the host must be a number"
                " (redis://host:6379/0)"
            )
        pool = self._pool_of(url)
        if pool is None:  # raised here, unchained: the parser's message may quote the URL
            raise ValueError(redis_fault(url))
        client: redis.Redis = redis.Redis(connection_pool=pool)  # Any at redis-py's floor
        return client

    def _pool_of(self, url: str) -> redis.BlockingConnectionPool | None:
        """The blocking client's pool; None when redis-py cannot parse ``url``."""
        try:
            # A bounded pool that makes callers wait (up to ``timeout``) for a connection: a
            # burst of a thousand callers must not open a thousand connections (the server's
            # maxclients is bounded by its file descriptors).
            return redis.BlockingConnectionPool.from_url(
                url,
                max_connections=self._max_connections,
                timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),
                **self.options,
            )
        except (ValueError, TypeError):
            return None

    # -- the drivers ---------------------------------------------------------------------

    def run(self, work: Work[Step, Any, T]) -> T:
        """Make ``work``'s calls on the blocking client."""
        self.check_open()
        scripts, command = self._scripts, _untyped(self.client.execute_command)

        def call(step: Step) -> Any:
            if isinstance(step, Command):
                with _refused_as_none():
                    return command(*step.args)
                return None
            return scripts[step.name](keys=step.keys, args=step.args)

        def perform(step: Step) -> Any:
            answer = self._turns.take(lambda _wait: call(step))
            self._turns.served_one()
            return answer

        with self.mapped(work.action):
            return drive(work.steps, perform)

    async def arun(self, work: Work[Step, Any, T]) -> T:
        """``run`` on the running loop's asyncio client: the same calls, awaited."""
        self.check_open()
        side = self.side()
        scripts, command = side.scripts, _untyped(side.client.execute_command)

        async def call(step: Step) -> Any:
            if isinstance(step, Command):
                with _refused_as_none():
                    return await command(*step.args)
                return None
            return await scripts[step.name](keys=step.keys, args=step.args)

        async def perform(step: Step) -> Any:
            answer = await side.turns.atake(lambda _wait: call(step))
            side.turns.served_one()
            return answer

        with self.mapped(work.action):
            return await adrive(work.steps, perform)

    def check_open(self) -> None:
        if self.closed:
            raise closed_error()

    @contextlib.contextmanager
    def mapped(self, action: str) -> Iterator[None]:
        """Turn redis-py's errors into ``StoreError``: the host, db and error class only."""
        try:
            yield
        except redis.ResponseError as exc:
            message = str(exc)
            if not message.startswith(SCHEMA_REPLY):
                raise StoreError(
                    f"Redis store at {self.where} could not {action}: {type(exc).__name__}"
                ) from exc
            raise self._schema_error(message[len(SCHEMA_REPLY) :].strip()) from None
        except (redis.RedisError, OSError) as exc:
            raise StoreError(
                f"Redis store at {self.where} could not {action}: {type(exc).__name__}"
            ) from exc

    def _schema_error(self, found: str) -> StoreError:
        if found == "missing":
            return StoreError(
                f"Redis store at {self.where} has no amo_oauth schema under prefix"
                f" {self.prefix!r}: run amo-oauth migrate"
            )
        return StoreError(
            f"Redis store at {self.where} has schema {found!r} under prefix"
            f" {self.prefix!r}, not {SCHEMA_VERSION}: run amo-oauth migrate"
        )

    # -- the asyncio side ----------------------------------------------------------------

    def side(self) -> LoopClient:
        """The asyncio client of the running loop, made on first use."""
        loop = asyncio.get_running_loop()
        side = self._async
        if side is None or side.loop is not loop:
            if side is not None:
                side.stop_soon()
            apool = redis.asyncio.BlockingConnectionPool.from_url(
                self._url,
                max_connections=self._max_connections,
                timeout=self.timeout,
                retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
                **self.options,
            )
            client: redis.asyncio.Redis = redis.asyncio.Redis(connection_pool=apool)
            side = LoopClient(loop, client, _client_turns(self.timeout))
            self._async = side
        return side

    def close(self) -> None:
        """Close the blocking client; the asyncio one is closed on its loop if that still runs."""
        self.closed = True
        side, self._async = self._async, None
        if side is not None:
            side.stop_soon()
        self._close_blocking()

    async def aclose(self) -> None:
        """Close the asyncio client of this loop here, then ``close``."""
        self.closed = True
        side, self._async = self._async, None
        if side is not None:
            if side.loop is asyncio.get_running_loop():
                await side.close()
            else:
                side.stop_soon()
        self._close_blocking()

    def _close_blocking(self) -> None:
        # The pool was passed in, and redis-py then leaves it open on close(): its sockets
        # would linger until garbage collection (a ResourceWarning).
        self.client.close()
        self.client.connection_pool.disconnect()


#: Asyncio clients a forked child inherited: kept referenced, so no finalizer of theirs ever
#: speaks on the parent's connections.
_INHERITED: list[LoopClient | None] = []


class LoopClient:
    """The asyncio client of one event loop, and its scripts."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, client: redis.asyncio.Redis, turns: Turns
    ) -> None:
        self.loop = loop
        self.client = client
        self.turns = turns  # this client's pool queue (``Turns``)
        self.scripts = {name: client.register_script(src) for name, src in SCRIPTS.items()}
        self._stopped = False
        self._closing: asyncio.Task[None] | None = None

    async def close(self) -> None:
        """Close the client (on this side's loop)."""
        self._stopped = True
        with contextlib.suppress(redis.RedisError, OSError):
            # The pool was passed in, and redis-py then leaves it open on aclose(): its sockets
            # would linger until garbage collection (a ResourceWarning).
            await self.client.aclose(close_connection_pool=True)

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


def _untyped(method: object) -> Callable[..., Any]:
    """redis-py's ``execute_command``, which it leaves unannotated at some versions."""
    return cast("Callable[..., Any]", method)


@contextlib.contextmanager
def _refused_as_none() -> Iterator[None]:
    """A plain command the server answers with an error (unknown: renamed away; denied by an
    ACL) is None to its operation; the connection failing is still an error."""
    with contextlib.suppress(redis.ResponseError):
        yield


def _opt_in(url: str) -> tuple[str, bool]:
    """``url`` without its ``allow_eviction`` query parameter (redis-py would hand it to every
    connection, which refuses it), and what that parameter says (False when absent).

    Raises:
        ValueError: its value is not true/false, 1/0 or yes/no (the message quotes no URL).
    """
    if not isinstance(url, str) or _OPT_IN not in url:
        return url, False
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, False  # malformed: redis-py refuses it with the usual message
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    values = [value.lower() for name, value in pairs if name == _OPT_IN]
    if not values:
        return url, False
    if any(value not in _TRUTH for value in values):
        raise ValueError("allow_eviction in a Redis URL is true or false")
    rest = urlencode([(name, value) for name, value in pairs if name != _OPT_IN])
    return urlunsplit(parts._replace(query=rest)), _TRUTH[values[-1]]


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


def _pool_wait_expired(exc: BaseException) -> bool:
    """redis-py's bounded pool found no free connection within its timeout: no command was
    sent, so the call may wait again. redis-py gives this no class of its own, only the
    message (both clients), pinned by tests/test_burst.py."""
    return isinstance(exc, redis.ConnectionError) and str(exc) == "No connection available."


def _client_turns(timeout: float) -> Turns:
    """The queue rule of one client's pool. redis-py's pool waits its own ``timeout`` and takes
    no shorter one per call, so no retry starts that would end after ``PATIENCE``."""
    return Turns(_pool_wait_expired, timeout, cuts=False)
