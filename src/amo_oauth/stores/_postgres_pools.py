"""``PostgresStore``'s connections: its two pools, the two drivers that run an operation on them,
and the mapping of every psycopg error to ``StoreError``.

- Blocking calls borrow from a ``psycopg_pool.ConnectionPool``; awaited calls from an
  ``AsyncConnectionPool`` opened on first use in the running event loop: no worker threads.
  Once that loop has closed (``asyncio.run`` returned), the next awaited call opens a new pool
  in its own loop; two loops alive at once get a ``StoreError`` saying so.
- A pool whose connect fails retries for at most half the store's ``timeout``, then gives up,
  so that the first call after an outage connects at once.
- Opening a pool makes one connection of its own first: a server that refuses, or rejects the
  login, fails the call at once with libpq's reason instead of a ``PoolTimeout`` at the end of
  ``timeout`` (the pool retries in the background and tells only its log why).
- Every connection carries TCP keepalives and a user timeout unless the conninfo sets its own.
- A forked child never uses its parent's pools: it opens its own on first use (``after_fork``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final, TypeAlias, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from .._driving import adrive, drive
from .._errors import StoreError
from ._common import closed_error
from ._driven import Work
from ._forks import reset_in_child
from ._postgres_ops import ROLLBACK, MismatchedAnswer, Query, Result
from ._turns import Turns

__all__ = ["Connections", "Place", "connect_kwargs"]

Conn: TypeAlias = "psycopg.Connection[tuple[Any, ...]]"
AsyncConn: TypeAlias = "psycopg.AsyncConnection[tuple[Any, ...]]"
T = TypeVar("T")

#: The pools a forked child inherited from its parent: held here, never used and never
#: collected. Their connections are the parent's server sessions: closing one (or collecting a
#: pool, which stops its workers) would send PostgreSQL a Terminate on the parent's socket, and
#: using one would interleave two processes' statements on it.
_INHERITED: Final[list[object]] = []

#: libpq's reason is kept to this many characters in a ``StoreError`` (several hosts make
#: several lines).
_REASON_CHARS: Final = 500

#: libpq's TCP settings unless the conninfo gives its own: a peer that stops answering is
#: found dead within about a minute (keepalives after 30 s idle, then 3 probes 10 s apart;
#: sent data unacknowledged for 60 s).
_TCP_DEFAULTS: Final = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}


def connect_kwargs(params: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The keyword arguments of every connection the store makes, beside its conninfo.

    A server that vanishes without a reset (a dead host, a dropped route) must still end in
    ``StoreError``: TCP keepalives find an idle connection dead (the listening one waits on it
    indefinitely), ``tcp_user_timeout`` a busy one. libpq's names; the conninfo may set them.
    """
    kwargs: dict[str, Any] = {"autocommit": True}
    if "connect_timeout" not in params:
        kwargs["connect_timeout"] = max(2, math.ceil(timeout))
    for name, value in _TCP_DEFAULTS.items():
        if name not in params:
            kwargs[name] = value
    return kwargs


class Place:
    """Where a store's data lives, as errors and reprs may name it: host, database and table,
    never the connection string (it may hold a password)."""

    def __init__(self, host: str, dbname: str, table: str) -> None:
        self.host = host
        self.dbname = dbname
        self.table = table
        self.where = f"PostgreSQL store ({host}/{dbname})"

    @contextlib.contextmanager
    def mapped(self, action: str) -> Iterator[None]:
        """Turn psycopg's and the pool's errors, and an answer that is not the statement's,
        into ``StoreError``, naming the host, the database and the error class, never the
        connection string or the data."""
        try:
            yield
        except MismatchedAnswer as exc:
            raise StoreError(
                f"{self.where} could not {action}: the server's answer does not fit the "
                f"statement ({exc}): was its connection used by two processes at once?"
            ) from None
        except psycopg.errors.UndefinedTable as exc:
            raise StoreError(
                f"{self.where} could not {action}: table {self.table!r} does not exist; "
                "run amo-oauth migrate (PostgresStore.migrate())"
            ) from exc
        except psycopg.Error as exc:
            code = f" [{exc.sqlstate}]" if exc.sqlstate else ""
            raise StoreError(
                f"{self.where} could not {action}: {type(exc).__name__}{code}"
            ) from exc


class Connections:
    """A store's blocking pool and its awaited pool (one event loop at a time), and the two
    drivers that run an operation's statements on them."""

    def __init__(
        self,
        conninfo: str,
        kwargs: dict[str, Any],
        place: Place,
        sizes: tuple[int, int],
        timeout: float,
    ) -> None:
        self.conninfo = conninfo  # holds the password: never shown
        self.kwargs = kwargs
        self.place = place
        self._min_size, self._max_size = sizes
        self.timeout = timeout
        self._guard = threading.Lock()  # guards the pools and _closed
        self._closed = False
        self._pool: ConnectionPool[Conn] | None = None
        self._apool: AsyncConnectionPool[AsyncConn] | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._aopening: asyncio.Task[None] | None = None  # the awaited pool's opening
        # A burst queues for a connection instead of failing after one ``timeout``. One count
        # per pool: the blocking pool serving threads says nothing of the awaited one's queue.
        self._turns = _pool_turns(timeout)
        self._aturns = _pool_turns(timeout)
        reset_in_child(self)

    def after_fork(self) -> None:
        """In a forked child: forget the parent's pools, so the first call opens the child's own.

        The parent's connections share their sockets with the parent: answers to two
        processes' statements would interleave on them (one process reading another's rows).
        They are kept, not closed, so the parent's server sessions live on; a vanished thread
        may hold the guard, so it is replaced.
        """
        self._guard = threading.Lock()
        _INHERITED.extend(pool for pool in (self._pool, self._apool) if pool is not None)
        self._pool = self._apool = None
        self._aloop = self._aopening = None
        self._turns, self._aturns = _pool_turns(self.timeout), _pool_turns(self.timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the drivers ---------------------------------------------------------------------

    def run(self, work: Work[Query, Result, T]) -> T:
        """Run ``work`` on a pooled connection (in one transaction if it is atomic)."""
        with (
            self.place.mapped(work.action),
            self._borrowed() as conn,
            _transaction(conn, work.atomic) as undo,
            conn.cursor() as cur,
        ):
            result = drive(work.steps, _Perform(cur, undo))
        self._turns.served_one()
        return result

    async def arun(self, work: Work[Query, Result, T]) -> T:
        """``run`` on the awaited pool: the same statements, awaited."""
        with self.place.mapped(work.action):
            async with (
                self._aborrowed() as conn,
                _atransaction(conn, work.atomic) as undo,
                conn.cursor() as cur,
            ):
                result = await adrive(work.steps, _APerform(cur, undo))
        self._aturns.served_one()
        return result

    @contextlib.contextmanager
    def _borrowed(self) -> Iterator[Conn]:
        """A connection of the blocking pool, waited for in turn (``Turns``), given back."""
        pool = self.pool()
        conn = self._turns.take(pool.getconn)
        try:
            with conn:  # as the pool's own ``connection()``: ends a transaction left open
                yield conn
        finally:
            pool.putconn(conn)

    @contextlib.asynccontextmanager
    async def _aborrowed(self) -> AsyncIterator[AsyncConn]:
        """``_borrowed`` from the awaited pool."""
        apool = await self.apool()
        conn = await self._aturns.atake(apool.getconn)
        try:
            async with conn:
                yield conn
        finally:
            await apool.putconn(conn)

    # -- the pools -----------------------------------------------------------------------

    def pool(self) -> ConnectionPool[Conn]:
        """The blocking pool, opened on first use."""
        with self._guard:
            if self._closed:
                raise closed_error()
            if self._pool is not None:
                return self._pool
            deadline = time.monotonic() + self.timeout
            pool: ConnectionPool[Conn] = ConnectionPool(
                check=ConnectionPool.check_connection, **self._options("")
            )
            try:
                pool.open()
                self._reach()
                if self._min_size > 0:
                    pool.wait(timeout=_left(deadline))
            except BaseException:
                pool.close(timeout=0)
                raise
            self._pool = pool
            return pool

    async def apool(self) -> AsyncConnectionPool[AsyncConn]:
        """The awaited pool of the running event loop, opened on first use.

        Every caller waits for the one opening (a task of its own): a caller cancelled
        meanwhile (a wait's timeout, a client gone) leaves it running, and no caller borrows
        from the pool before it is open. A failed opening fails every caller waiting for it.
        """
        apool, opening = self._claim_apool(asyncio.get_running_loop())
        await asyncio.shield(opening)
        return apool

    async def _open(self, apool: AsyncConnectionPool[AsyncConn]) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            await apool.open()
            await self._areach()
        except BaseException:
            with self._guard:
                if self._apool is apool:
                    self._apool = self._aopening = None
            await apool.close(timeout=0)
            raise
        if self._min_size > 0:
            # The server answered and took the login: a pool slow to fill (a loaded machine)
            # is slow, not broken; each borrow waits within its own timeout.
            with contextlib.suppress(PoolTimeout):
                await apool.wait(timeout=_left(deadline))

    def _claim_apool(
        self, loop: asyncio.AbstractEventLoop
    ) -> tuple[AsyncConnectionPool[AsyncConn], asyncio.Task[None]]:
        """``loop``'s pool and its opening, both made on the first call (closing a pool under
        concurrent first calls, or letting them borrow before it was open, failed them all
        with PoolClosed: the load run, 100 clients at once)."""
        with self._guard:
            if self._closed:
                raise closed_error()
            if self._apool is not None and self._aloop is not loop:
                old_loop = self._aloop
                if old_loop is not None and not old_loop.is_closed():
                    raise StoreError(
                        f"{self.place.where}: awaited from another event loop while the loop of "
                        "its first awaited call still exists; use one store per event loop"
                    )
                # That loop has ended (``asyncio.run`` again, as scripts and tests do): its
                # pool's tasks ended with it, so its connections are closed here and a new
                # pool is made on this loop.
                _abandon(self._apool)
                self._apool = self._aloop = self._aopening = None
            if self._apool is not None and self._aopening is not None:
                return self._apool, self._aopening
            apool: AsyncConnectionPool[AsyncConn] = AsyncConnectionPool(
                check=AsyncConnectionPool.check_connection, **self._options("-async")
            )
            opening = loop.create_task(self._open(apool))
            # Its failure is each waiting caller's; read here too, so that an opening whose
            # callers were all cancelled is not reported as a failure nobody retrieved.
            opening.add_done_callback(_retrieved)
            self._apool, self._aloop, self._aopening = apool, loop, opening
            return apool, opening

    def _reach(self) -> None:
        """Connect once, outside the pool, and close: the pool's own attempts fail only into
        its log, so this one is what tells the caller why the server cannot be used. A refused
        connection or a rejected login fails at once; a silent host within ``connect_timeout``.
        """
        try:
            conn = psycopg.Connection.connect(self.conninfo, **self.kwargs)
        except psycopg.Error as exc:
            failure = self._unreachable(exc)
        else:
            conn.close()
            return
        raise failure  # outside the except block: libpq's error is not chained

    async def _areach(self) -> None:
        """``_reach`` for the awaited pool, without blocking its event loop."""
        try:
            conn = await psycopg.AsyncConnection.connect(self.conninfo, **self.kwargs)
        except psycopg.Error as exc:
            failure = self._unreachable(exc)
        else:
            await conn.close()
            return
        raise failure  # outside the except block: libpq's error is not chained

    def _unreachable(self, exc: psycopg.Error) -> StoreError:
        """``StoreError`` with libpq's reason on one line; the password, should libpq ever
        quote it, is masked. The caller raises it unchained: libpq's error, unmasked, stays
        out of ``__cause__`` and ``__context__``."""
        reason = " ".join(str(exc).split())
        password = conninfo_to_dict(self.conninfo).get("password")
        if password:
            reason = reason.replace(str(password), "***")
        code = f" [{exc.sqlstate}]" if exc.sqlstate else ""
        return StoreError(
            f"{self.place.where} could not connect: {type(exc).__name__}{code}: "
            f"{reason[:_REASON_CHARS]}"
        )

    def _options(self, suffix: str) -> dict[str, Any]:
        """What the blocking and the awaited pool share; opened by the caller.

        ``reconnect_timeout``: psycopg_pool retries a failed connect with a backoff that
        doubles for 5 minutes by default, and meanwhile starts no other attempt; after an
        outage of a minute the server would be back long before the pool looked again, and
        every call would still time out. Bounded by half a call's timeout, the attempt gives
        up and the next call starts a fresh one at once.
        """
        place = self.place
        return {
            "conninfo": self.conninfo,
            "kwargs": self.kwargs,
            "min_size": self._min_size,
            "max_size": self._max_size,
            "open": False,
            "name": f"amo_oauth:{place.host}/{place.dbname}/{place.table}{suffix}",
            "timeout": self.timeout,
            "reconnect_timeout": self.timeout / 2,
        }

    # -- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Close both pools; any later call raises ``StoreError``. An awaited pool whose loop
        still runs is closed in that loop; one whose loop has ended is let go of."""
        with self._guard:
            self._closed = True
            pool, self._pool = self._pool, None
            apool, self._apool = self._apool, None
            self._aopening = None
        if pool is not None:
            pool.close(timeout=self.timeout)
        loop = self._aloop
        if apool is not None and loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(apool.close(timeout=self.timeout), loop)
        elif apool is not None and (loop is None or loop.is_closed()):
            _abandon(apool)  # its loop has ended: nothing can be awaited there any more

    async def aclose(self) -> None:
        """Close the awaited pool in its own loop (when it is this one), then ``close``."""
        with self._guard:
            apool = self._apool
            if apool is not None and self._aloop is asyncio.get_running_loop():
                self._apool = self._aopening = None
            else:
                apool = None  # made on another loop: close() lets go of it there
        if apool is not None:
            await apool.close(timeout=self.timeout)
        self.close()


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


def _left(deadline: float) -> float:
    """Seconds until ``deadline``; a little more than none, so that a pool that is ready is
    still seen as ready."""
    return max(deadline - time.monotonic(), 0.01)


class _Undo:
    """Set when an operation yields ``ROLLBACK``: its transaction is rolled back at the end."""

    asked = False


@contextlib.contextmanager
def _transaction(conn: Conn, atomic: bool) -> Iterator[_Undo]:
    undo = _Undo()
    if not atomic:
        yield undo
        return
    with conn.transaction():
        yield undo
        if undo.asked:
            raise psycopg.Rollback()  # the transaction ends quietly, undone


@contextlib.asynccontextmanager
async def _atransaction(conn: AsyncConn, atomic: bool) -> AsyncIterator[_Undo]:
    undo = _Undo()
    if not atomic:
        yield undo
        return
    async with conn.transaction():
        yield undo
        if undo.asked:
            raise psycopg.Rollback()


class _Perform:
    """The blocking driver's ``perform``: one statement on the operation's cursor."""

    def __init__(self, cur: psycopg.Cursor[tuple[Any, ...]], undo: _Undo) -> None:
        self._cur = cur
        self._undo = undo

    def __call__(self, query: Query) -> Result:
        if query is ROLLBACK:
            self._undo.asked = True
            return Result(0, [])
        self._cur.execute(query.query, query.params)
        rows = self._cur.fetchall() if self._cur.description is not None else []
        return Result(self._cur.rowcount, rows)


class _APerform:
    """The awaited driver's ``perform``."""

    def __init__(self, cur: psycopg.AsyncCursor[tuple[Any, ...]], undo: _Undo) -> None:
        self._cur = cur
        self._undo = undo

    async def __call__(self, query: Query) -> Result:
        if query is ROLLBACK:
            self._undo.asked = True
            return Result(0, [])
        await self._cur.execute(query.query, query.params)
        rows = await self._cur.fetchall() if self._cur.description is not None else []
        return Result(self._cur.rowcount, rows)


def _abandon(apool: AsyncConnectionPool[AsyncConn]) -> None:
    """Let go of an async pool whose event loop has ended: nothing can be awaited on that loop
    any more, so its idle connections are closed without it (libpq's ``finish``), rather than
    left open until the collector finds them. Connections borrowed when the loop ended went
    with their callers' tasks."""
    idle = getattr(apool, "_pool", ())  # psycopg_pool keeps no public list of idle connections
    for conn in list(idle):
        with contextlib.suppress(Exception):
            conn.pgconn.finish()


def _pool_turns(timeout: float) -> Turns:
    """The queue rule of one pool: psycopg_pool's ``getconn(timeout)`` takes a shorter wait."""
    return Turns(lambda exc: isinstance(exc, PoolTimeout), timeout)
