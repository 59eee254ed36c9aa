"""The keep-alive sweep at scale: due records streamed page by page, refreshed concurrently,
each account host paced, the outcome tallied.

The per-connection work is the ordinary refresh flow (``TokenFlows.refresh_one``: the table
decides, the refresh lease makes it single-flight across machines); this module only decides
*which* records to hand it, how many at once, and how fast per host:

- ``SweepPlan`` checks the arguments and walks the store's ``due_page`` by keyset cursor, so a
  run holds one page of records at a time, whatever the number of connections, and meets each
  record due when it started at most once (the cursor only moves forward). Every due record is
  handled unless a ``limit`` is given; the due records past it are counted (``remaining``).
  A record whose refresh is held back (a back-off in it) is handed out outside the limit: it
  sends nothing and is reported ``refresh_backoff``, so it never takes a due record's place;
  so is another integration's record in a shared store (it is skipped, nothing sent).
- the pace: each token call takes a slot of the service's one schedule per account host
  (``_pace.Pacer``, shared with ``auth()`` and the disconnect hook), at ``per_host_rate``
  requests per second (amoCRM allows 7), waiting through a pause amoCRM asked for.
  Process-local: several machines sweeping at once each keep their own pace (the lease still
  makes each refresh happen once).
- ``sweep`` (threads) and ``asweep`` (tasks) keep at most ``concurrency`` refreshes in flight
  and a bounded window of submitted work, and tally a ``RefreshReport``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime, timedelta
from typing import Final, TypeVar

import attrs

from ._connection_id import ConnectionId
from ._provider import REFRESH_TOKEN_LIFETIME
from ._records import ConnectionRecord
from ._results import RefreshReport, SweepProgress
from .stores._common import due_position
from .stores._protocol import DueCursor

__all__ = ["Done", "SweepPlan", "asweep", "sweep"]

#: Records read from the store per page: one page is what a run holds at a time.
PAGE_SIZE: Final = 256
#: The slowest pace accepted: one request per host a day (a slower one would sleep past what
#: the platform's sleep accepts, or for ever).
MIN_PER_HOST_RATE: Final = 1 / 86400
#: The most refreshes in flight at once: each is a thread of the blocking sweep (or a task and
#: a store connection), and past a few hundred more only exhausts threads and pools.
MAX_CONCURRENCY: Final = 256

_T = TypeVar("_T")

ReadPage = Callable[[DueCursor | None, int], list[ConnectionRecord]]
AReadPage = Callable[[DueCursor | None, int], Awaitable[list[ConnectionRecord]]]


@attrs.frozen
class Done:
    """What the sweep did with one record."""

    #: The app user's id, or ``Widget(host)`` for a widget install: the two never collide.
    connection_id: ConnectionId
    #: None: the connection's refresh token now outlasts the window. Else why it failed.
    reason: str | None = None
    #: The failure leaves the connection needing a new consent (``ReauthorizationRequired``).
    reauthorize: bool = False
    #: Another integration's record: our client secret cannot refresh it.
    skipped: bool = False
    #: A long-lived token that expires inside the window: reported, never refreshed.
    expiring_long_lived: bool = False


@attrs.frozen
class SweepPlan:
    """One run's checked arguments, and its walk over the due records.

    Raises (``make``):
        TypeError: ``within`` is not a ``timedelta``.
        ValueError: ``limit`` < 0, ``concurrency`` < 1, ``per_host_rate`` not a finite number
            of at least ``MIN_PER_HOST_RATE`` (one a day), ``within`` negative or reaching past
            the last date ``datetime`` holds.
    """

    before: datetime
    limit: int | None
    concurrency: int
    per_host_rate: float
    #: The window outlasts a refresh token's lifetime, so a pair refreshed by this run may
    #: itself be due before ``before``: the run then remembers what it refreshed.
    remember: bool
    #: When the run started (UTC): a record held back past it does not count against ``limit``.
    started: datetime | None = None
    #: The client id of the integration sweeping: another's records (a shared store) do not
    #: count against ``limit`` either. None: every record counts.
    integration: str | None = None

    @classmethod
    def make(
        cls,
        now: datetime,
        within: timedelta,
        limit: int | None,
        concurrency: int,
        per_host_rate: float,
        integration: str | None = None,
    ) -> SweepPlan:
        if not isinstance(within, timedelta):
            raise TypeError("within must be a datetime.timedelta")
        if within < timedelta(0):
            raise ValueError("within must not be negative (a window ahead of now)")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise TypeError("limit must be an int or None")
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0 (None: every due connection)")
        if (
            isinstance(concurrency, bool)
            or not isinstance(concurrency, int)
            or not 1 <= concurrency <= MAX_CONCURRENCY
        ):
            raise ValueError(f"concurrency must be an int from 1 to {MAX_CONCURRENCY}")
        if (
            isinstance(per_host_rate, bool)
            or not isinstance(per_host_rate, int | float)
            or not math.isfinite(per_host_rate)
            or not per_host_rate >= MIN_PER_HOST_RATE
        ):
            raise ValueError(
                "per_host_rate must be a finite number of requests per second, at least one a"
                " day (1/86400)"
            )
        try:
            before = now + within
        except OverflowError:
            raise ValueError("within reaches past the last date a datetime holds") from None
        remember = within >= REFRESH_TOKEN_LIFETIME
        return cls(before, limit, concurrency, float(per_host_rate), remember, now, integration)

    def records(self, read: ReadPage) -> Iterator[ConnectionRecord]:
        """Every due record, page by page, soonest expiry first (``limit`` is the sweep's:
        the records past it are read to be counted, never handed out)."""
        after: DueCursor | None = None
        while True:
            page = read(after, PAGE_SIZE)
            yield from page
            if len(page) < PAGE_SIZE:
                return
            after = due_position(page[-1])

    async def arecords(self, read: AReadPage) -> AsyncIterator[ConnectionRecord]:
        """``records`` for asyncio."""
        after: DueCursor | None = None
        while True:
            page = await read(after, PAGE_SIZE)
            for record in page:
                yield record
            if len(page) < PAGE_SIZE:
                return
            after = due_position(page[-1])


class _Tally:
    """The report being made, and the progress callback fed as connections finish. Only the
    sweeping thread (or the event loop) touches it."""

    def __init__(
        self,
        progress: Callable[[SweepProgress], None] | None,
        remember: bool,
        limit: int | None = None,
        started: datetime | None = None,
        integration: str | None = None,
    ) -> None:
        self.progress = progress
        # Each entry carries the record's place in the due order, so the report lists the
        # connections soonest-first (as the first release did), not in whatever order
        # concurrent refreshes happened to finish.
        self.refreshed: list[tuple[int, ConnectionId]] = []
        self.failed: list[tuple[int, tuple[ConnectionId, str]]] = []
        self.reauthorize: list[tuple[int, ConnectionId]] = []
        self.skipped = 0
        self.expiring_long_lived: list[tuple[int, ConnectionId]] = []
        self.done = 0
        #: Due records read past ``limit``: left for a later run.
        self.remaining = 0
        self._started = 0
        self._limit = limit
        self._now = started
        self._integration = integration
        #: Keys refreshed by this run, kept only when a refreshed pair could be due again.
        self.remembered: set[str] | None = set() if remember else None

    def wanted(self, record: ConnectionRecord) -> bool:
        """Whether to hand ``record`` to a refresh: not one this run refreshed already, and
        within ``limit`` (a record past it is counted in ``remaining``). A record held back
        by a back-off, or another integration's, is always handed out and not counted: it
        sends nothing, and is reported ``refresh_backoff`` or skipped."""
        if self.remembered is not None and record.key in self.remembered:
            return False
        if self._held_back(record) or self._anothers(record):
            return True
        if self._limit is not None and self._started >= self._limit:
            self.remaining += 1
            return False
        self._started += 1
        return True

    def _anothers(self, record: ConnectionRecord) -> bool:
        # The rule TokenFlows.refresh_one skips by: a record of no namespace (stored before
        # keys had one) may be this integration's.
        return self._integration is not None and record.integration not in (
            None,
            self._integration,
        )

    def _held_back(self, record: ConnectionRecord) -> bool:
        backoff = record.backoff
        return self._now is not None and backoff is not None and backoff.until > self._now

    def add(self, place: int, record: ConnectionRecord, done: Done) -> None:
        self.done += 1
        if done.skipped:
            self.skipped += 1
        elif done.expiring_long_lived:
            self.expiring_long_lived.append((place, done.connection_id))
        elif done.reason is None:
            self.refreshed.append((place, done.connection_id))
            if self.remembered is not None:
                self.remembered.add(record.key)
        else:
            self.failed.append((place, (done.connection_id, done.reason)))
            if done.reauthorize:
                self.reauthorize.append((place, done.connection_id))
        if self.progress is not None:
            self.progress(
                SweepProgress(self.done, len(self.refreshed), len(self.failed), self.skipped)
            )

    def report(self) -> RefreshReport:
        return RefreshReport(
            _in_due_order(self.refreshed),
            _in_due_order(self.failed),
            needs_reauthorization=_in_due_order(self.reauthorize),
            skipped=self.skipped,
            remaining=self.remaining,
            expiring_long_lived=tuple(cid for _, cid in sorted(self.expiring_long_lived)),
        )


def _in_due_order(entries: list[tuple[int, _T]]) -> tuple[_T, ...]:
    """The entries' values by their place in the due order (places are unique)."""
    return tuple(value for _, value in sorted(entries, key=lambda entry: entry[0]))


def sweep(
    plan: SweepPlan,
    read: ReadPage,
    refresh: Callable[[ConnectionRecord], Done],
    progress: Callable[[SweepProgress], None] | None = None,
) -> RefreshReport:
    """Refresh every record ``plan`` walks, ``plan.concurrency`` at a time in worker threads.

    At most twice ``concurrency`` records are submitted and not yet tallied, so memory stays
    one page plus that window. ``progress`` is called in the calling thread. A page that cannot
    be read (``StoreError``) or an interrupt ends the run: records not yet started are
    dropped, the refreshes in flight finish first, then the error is raised.
    """
    tally = _Tally(progress, plan.remember, plan.limit, plan.started, plan.integration)
    window = 2 * plan.concurrency
    pool = ThreadPoolExecutor(plan.concurrency, thread_name_prefix="amo-oauth-sweep")
    running: dict[Future[Done], tuple[int, ConnectionRecord]] = {}

    def collect(block_until_below: int) -> None:
        while len(running) > block_until_below:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                tally.add(*running.pop(future), future.result())

    try:
        for place, record in enumerate(plan.records(read)):
            if not tally.wanted(record):
                continue
            collect(window - 1)
            running[pool.submit(refresh, record)] = (place, record)
        collect(0)
    except BaseException:
        # Stopped (a page unreadable, Ctrl-C): what was not started is dropped; the refreshes
        # in flight run to their end, so whatever amoCRM answered them is stored.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return tally.report()


async def asweep(
    plan: SweepPlan,
    read: AReadPage,
    refresh: Callable[[ConnectionRecord], Awaitable[Done]],
    progress: Callable[[SweepProgress], None] | None = None,
) -> RefreshReport:
    """``sweep`` for asyncio: one task per record, at most ``plan.concurrency`` at once (the
    next page is read only when a slot frees up). ``progress`` is called on the event loop."""
    tally = _Tally(progress, plan.remember, plan.limit, plan.started, plan.integration)
    slots = asyncio.Semaphore(plan.concurrency)
    running: set[asyncio.Task[None]] = set()
    errors: list[Exception] = []

    async def one(place: int, record: ConnectionRecord) -> None:
        try:
            tally.add(place, record, await refresh(record))
        except Exception as error:  # not a refresh failure (those are Done): a fault to raise
            errors.append(error)
        finally:
            slots.release()

    place = 0
    try:
        async for record in plan.arecords(read):
            place += 1
            if not tally.wanted(record):
                continue
            await slots.acquire()
            if errors:
                break
            task = asyncio.ensure_future(one(place, record))
            running.add(task)
            task.add_done_callback(running.discard)
    finally:
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    if errors:
        raise errors[0]
    return tally.report()
