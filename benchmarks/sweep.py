"""The keep-alive sweep at scale: N connections over H account hosts, every refresh token due.

Each connection is made through the real callback flow (on its own account host, round-robin
over H hosts of the fake), then the clock moves 85 days and ``refresh_due`` runs with the
given concurrency and per-host rate against a token endpoint answering after ``--latency``
seconds. Checked, not just timed: the fake saw exactly N refresh grants, the report names N
distinct refreshed connections and no failure, and afterwards nothing is due any more (so
each connection was refreshed exactly once). Printed per store: the sweep's wall time, its
refreshes per second, and its peak memory (tracemalloc: Python allocations made during the
sweep, above what was allocated before it; plus the process's peak RSS). The fake runs in this
process and keeps every token it issues and every request it saw, and the report keeps every
refreshed connection id: that grows with N and is still held after the sweep; the peak minus
what is still held is the sweep's own working memory (its page, its in-flight window).

    python benchmarks/sweep.py [--connections 10000] [--hosts 1000] [--latency 0.02]
        [--concurrency 16] [--per-host-rate 7] [--stores sqlite]
        [--postgres URL] [--redis URL]     (adds those stores; each gets a fresh table/prefix)
        [--async]                          (AsyncAmoOAuth: tasks instead of threads)
        [--no-trace]                       (no tracemalloc: the time without its overhead)

A figure, not a test: the machines here are shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx

from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    Config,
    ConnectionRecord,
    MemoryStore,
    RefreshReport,
    SQLiteStore,
)
from amo_oauth.stores import Store, as_async_store
from amo_oauth.testing import FakeAmoCRM, FakeClock

WINDOW = timedelta(days=7)


def config(fake: FakeAmoCRM) -> Config:
    return Config(
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        redirect_uri=fake.redirect_uri,
        state_secret="sweep-state-secret-of-at-least-32-bytes",
        # The setup connects N users from one process at once: lift the abuse bounds.
        max_exchanges_per_process=10**9,
        max_exchanges_per_host=10**9,
    )


def connect_all(oauth: AmoOAuth, fake: FakeAmoCRM, connections: int, hosts: int) -> None:
    """Connection i on host i % hosts, through the callback flow (no latency meanwhile)."""
    accounts = [fake.default_account]
    accounts += [fake.add_account(f"sweep{i:05d}", leads=0) for i in range(1, hosts)]

    def connect(i: int) -> None:
        cid = f"c{i:06d}"
        begun = oauth.begin(cid)  # the browser's binding comes back with the redirect
        url = fake.authorize(begun.state, account=accounts[i % hosts])
        query = dict(parse_qsl(urlsplit(url).query))
        result = oauth.handle_callback(query, binding=begun.binding)
        assert result.connection.is_connected, result

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(connect, range(connections)))


def peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run(make: Callable[[FakeClock], Store], args: argparse.Namespace) -> str:
    clock = FakeClock()
    fake = FakeAmoCRM(rate_limit=None, latency=0.0, clock=clock)
    store = make(clock)  # the store judges leases: it reads the same clock
    http = httpx.Client(transport=fake.transport(), limits=httpx.Limits(max_connections=64))
    with AmoOAuth(config(fake), store=store, http=http, clock=clock) as oauth:
        connect_all(oauth, fake, args.connections, args.hosts)
        clock.advance(timedelta(days=85))  # every refresh token expires within the window
        fake.latency = args.latency
        before_calls = fake.token_call_count("refresh_token")
        if args.trace:
            tracemalloc.start()
        started = time.perf_counter()
        if args.use_async:  # AsyncAmoOAuth closes the store it was given: checked inside
            report, still_due = asyncio.run(sweep_async(fake, store, clock, args))
        else:
            report = oauth.refresh_due(
                within=WINDOW,
                limit=None,
                concurrency=args.concurrency,
                per_host_rate=args.per_host_rate,
            )
            still_due = store.due_page(clock() + WINDOW, 10)
        elapsed = time.perf_counter() - started
        kept, peak = tracemalloc.get_traced_memory() if args.trace else (0, 0)
        tracemalloc.stop()
        grants = fake.token_call_count("refresh_token") - before_calls
        ok = fake.token_call_count("refresh_token", "ok")
        assert report.failed == (), report.failed_by_reason
        assert len(set(report.refreshed)) == len(report.refreshed) == args.connections
        assert grants == ok == args.connections, (grants, ok)
        # Nothing is due any more: every connection holds a pair refreshed by this sweep.
        assert still_due == []
    traced = (
        f"peak traced {peak / 2**20:5.1f} MiB (still held after: {kept / 2**20:5.1f} MiB)"
        if args.trace
        else "not traced"
    )
    return (
        f"{args.connections} connections on {args.hosts} hosts: {elapsed:6.1f} s "
        f"({args.connections / elapsed:5.0f}/s), refresh grants {grants}, "
        f"{traced}, peak RSS {peak_rss_mib():6.1f} MiB"
    )


async def sweep_async(
    fake: FakeAmoCRM, store: Store, clock: FakeClock, args: argparse.Namespace
) -> tuple[RefreshReport, list[ConnectionRecord]]:
    http = httpx.AsyncClient(transport=fake.async_transport())
    async with AsyncAmoOAuth(config(fake), store=store, http=http, clock=clock) as oauth:
        report = await oauth.refresh_due(
            within=WINDOW,
            limit=None,
            concurrency=args.concurrency,
            per_host_rate=args.per_host_rate,
        )
        still_due = await as_async_store(store).adue_page(clock() + WINDOW, 10)
    await http.aclose()
    return report, still_due


def _following(clock: FakeClock) -> Callable[[], timedelta]:
    """A server store's ``clock_offset`` that makes it read ``clock``."""
    return lambda: clock() - datetime.now(UTC)


def _postgres(url: str, clock: FakeClock) -> Store:
    from amo_oauth.stores.postgres import PostgresStore

    table = f"sweep_{time.monotonic_ns()}"
    store = PostgresStore(url, table=table, max_size=32, clock_offset=_following(clock))
    store.migrate()
    return store


def _redis(url: str, clock: FakeClock) -> Store:
    from amo_oauth.stores.redis import RedisStore

    prefix = f"sweep{time.monotonic_ns()}:"
    store = RedisStore(url, prefix=prefix, max_connections=64, clock_offset=_following(clock))
    store.migrate()
    return store


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--hosts", type=int, default=1_000)
    parser.add_argument("--latency", type=float, default=0.02, help="token latency, seconds")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--per-host-rate", type=float, default=7.0)
    parser.add_argument("--stores", default="sqlite", help="of memory,sqlite")
    parser.add_argument("--postgres", help="a PostgreSQL URL: adds the postgres store")
    parser.add_argument("--redis", help="a Redis URL: adds the redis store")
    parser.add_argument("--async", dest="use_async", action="store_true")
    parser.add_argument(
        "--no-trace",
        dest="trace",
        action="store_false",
        help="time the sweep without tracemalloc (which slows Python down several times)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        makers: dict[str, Callable[[FakeClock], Store]] = {
            "memory": lambda clock: MemoryStore(clock=clock),
            "sqlite": lambda clock: SQLiteStore(
                Path(tmp) / f"sweep-{time.monotonic_ns()}.db", clock=clock
            ),
        }
        stores = [name for name in args.stores.split(",") if name]
        if args.postgres:
            makers["postgres"] = lambda clock: _postgres(args.postgres, clock)
            stores.append("postgres")
        if args.redis:
            makers["redis"] = lambda clock: _redis(args.redis, clock)
            stores.append("redis")
        driver = "tasks" if args.use_async else "threads"
        print(
            f"sweep: token latency {args.latency}s, concurrency {args.concurrency} ({driver}), "
            f"{args.per_host_rate}/s per host"
        )
        for name in stores:
            print(f"  {name:8}", run(makers[name], args), flush=True)


if __name__ == "__main__":
    main()
