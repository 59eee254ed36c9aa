"""The keep-alive sweep at scale: N connections over H account hosts, every refresh token due.

Each connection is made through the real callback flow (on its own account host, round-robin
over H hosts of the fake), then the clock moves 85 days and ``refresh_due`` runs with the
given concurrency and per-host rate against a token endpoint answering after ``--latency``
seconds. Checked, not just timed: the fake saw exactly N refresh grants, the report names N
distinct refreshed connections and no failure, and afterwards nothing is due any more (so
each connection was refreshed exactly once). Printed per store: the sweep's wall time, its
refreshes per second, and memory: the process's peak RSS during the sweep (Linux: the peak is
reset at the sweep's start) and how far it rose above the RSS at the start. With ``--trace``
(tracemalloc from before the setup, so that a record the sweep replaces is seen freed): the
traced peak above the start (the sweep's working memory) and the net growth kept after it,
split into what the in-process fake keeps (every token it issued, every request it counted:
the benchmark's, not the library's) and everything else.

    python benchmarks/sweep.py [--connections 10000] [--hosts 1000] [--latency 0.02]
        [--concurrency 16] [--per-host-rate 7] [--stores sqlite]
        [--postgres URL] [--redis URL]     (adds those stores; each gets a fresh table/prefix)
        [--async]                          (AsyncAmoOAuth: tasks instead of threads)
        [--trace]                          (tracemalloc: who keeps the growth; slower)

A figure, not a test: the machines here are shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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

import attrs
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
#: Frames kept per traced allocation: enough to see whether the fake's code made it.
TRACE_FRAMES = 12


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
    """The process's peak RSS, MiB: since the last ``reset_peak_rss`` where Linux has one."""
    status = _proc_status()
    if "VmHWM" in status:
        return status["VmHWM"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def rss_mib() -> float | None:
    """The process's RSS now, MiB (Linux; None elsewhere)."""
    return _proc_status().get("VmRSS")


def reset_peak_rss() -> bool:
    """Start the peak RSS again from the RSS now (Linux's ``clear_refs`` 5), so the peak read
    after the sweep is the sweep's, not the setup's. False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _proc_status() -> dict[str, float]:
    """``/proc/self/status``'s kB figures, in MiB; empty off Linux."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    return {
        name: float(value.split()[0]) / 1024
        for name, _, value in (line.partition(":") for line in lines)
        if value.strip().endswith("kB")
    }


#: Where the in-process fake's allocations come from: its records are the benchmark's, not
#: the sweep's, and are reported apart.
FAKE_FILES = str(Path(FakeAmoCRM.__module__.replace(".", "/")).parent)


def held_by(snapshot: tracemalloc.Snapshot) -> tuple[int, int]:
    """Bytes still allocated at ``snapshot``: (made with the fake's code on the stack, by
    everything else)."""
    fake = rest = 0
    for stat in snapshot.statistics("traceback"):
        if any(FAKE_FILES in frame.filename for frame in stat.traceback):
            fake += stat.size
        else:
            rest += stat.size
    return fake, rest


@attrs.frozen
class Swept:
    """What one sweep measured. Memory in MiB; the RSS figures are None off Linux, the traced
    ones None unless traced (``--trace``)."""

    connections: int
    hosts: int
    seconds: float
    grants: int
    peak_rss: float
    start_rss: float | None
    traced_peak: float | None = None  # above what was held at the sweep's start
    fake_growth: float | None = None  # net, kept after the sweep by the fake's records
    rest_growth: float | None = None  # net, kept by everything else (store, report, library)

    @property
    def rss_growth(self) -> float | None:
        """The peak RSS during the sweep above the RSS at its start, MiB."""
        return None if self.start_rss is None else self.peak_rss - self.start_rss

    def line(self) -> str:
        rss = f"peak RSS {self.peak_rss:6.1f} MiB"
        if self.rss_growth is not None:
            rss += f" (the sweep's growth {self.rss_growth:5.1f} over {self.start_rss:6.1f})"
        traced = "not traced"
        if self.traced_peak is not None:
            traced = (
                f"traced: peak {self.traced_peak:5.1f} MiB above the start, net kept by the "
                f"fake {self.fake_growth:5.1f} MiB, by the rest {self.rest_growth:5.1f} MiB"
            )
        return (
            f"{self.connections} connections on {self.hosts} hosts: {self.seconds:6.1f} s "
            f"({self.connections / self.seconds:5.0f}/s), refresh grants {self.grants}, "
            f"{rss}, {traced}"
        )


def run(make: Callable[[FakeClock], Store], args: argparse.Namespace) -> Swept:
    """Connect ``args.connections`` users, expire them all, sweep once; checked exactly-once.

    Raises:
        AssertionError: a connection failed, was refreshed twice or not at all, or is still due.
    """
    clock = FakeClock()
    fake = FakeAmoCRM(rate_limit=None, latency=0.0, clock=clock)
    store = make(clock)  # the store judges leases: it reads the same clock
    http = httpx.Client(transport=fake.transport(), limits=httpx.Limits(max_connections=64))
    if args.trace:  # from before the setup: a record the sweep replaces is then seen freed
        tracemalloc.start(TRACE_FRAMES)
    with AmoOAuth(config(fake), store=store, http=http, clock=clock) as oauth:
        connect_all(oauth, fake, args.connections, args.hosts)
        clock.advance(timedelta(days=85))  # every refresh token expires within the window
        fake.latency = args.latency
        before_calls = fake.token_call_count("refresh_token")
        gc.collect()  # the setup's garbage is not the sweep's
        start_rss = rss_mib() if reset_peak_rss() else None
        held_before = held_by(tracemalloc.take_snapshot()) if args.trace else (0, 0)
        tracemalloc.reset_peak()
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
        traced = _traced(held_before) if args.trace else {}
        grants = fake.token_call_count("refresh_token") - before_calls
        ok = fake.token_call_count("refresh_token", "ok")
        assert report.failed == (), report.failed_by_reason
        assert len(set(report.refreshed)) == len(report.refreshed) == args.connections
        assert grants == ok == args.connections, (grants, ok)
        # Nothing is due any more: every connection holds a pair refreshed by this sweep.
        assert still_due == []
    return Swept(args.connections, args.hosts, elapsed, grants, peak_rss_mib(), start_rss, **traced)


def _traced(held_before: tuple[int, int]) -> dict[str, float]:
    """The traced figures (MiB) of a sweep that just ended; stops tracing."""
    _, peak = tracemalloc.get_traced_memory()
    held_after = held_by(tracemalloc.take_snapshot())
    tracemalloc.stop()
    fake, rest = (after - before for after, before in zip(held_after, held_before, strict=True))
    return {
        "traced_peak": (peak - sum(held_before)) / 2**20,
        "fake_growth": fake / 2**20,
        "rest_growth": rest / 2**20,
    }


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


def measure(store: str, url: str | None, connections: int, hosts: int, latency: float) -> Swept:
    """One threaded sweep of ``connections`` over ``hosts`` account hosts on ``store``
    (``memory``, ``sqlite``, or ``postgres`` / ``redis`` at ``url``), with the command's
    defaults otherwise: what ``python3 tasks.py bench`` runs in a process of its own.

    Raises:
        AssertionError: as ``run``.
    """
    args = argparse.Namespace(
        connections=connections,
        hosts=hosts,
        latency=latency,
        concurrency=16,
        per_host_rate=7.0,
        use_async=False,
        trace=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        makers: dict[str, Callable[[FakeClock], Store]] = {
            "memory": lambda clock: MemoryStore(clock=clock),
            "sqlite": lambda clock: SQLiteStore(Path(tmp) / "sweep.db", clock=clock),
            "postgres": lambda clock: _postgres(str(url), clock),
            "redis": lambda clock: _redis(str(url), clock),
        }
        return run(makers[store], args)


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
        "--trace",
        action="store_true",
        help="tracemalloc from before the setup: who keeps what the sweep adds (several "
        "times slower; the time and RSS are then not the untraced ones)",
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
            print(f"  {name:8}", run(makers[name], args).line(), flush=True)


if __name__ == "__main__":
    main()
