"""A burst of duplicate callbacks: N callers deliver the same redirect at once.

Exactly one must reach amoCRM's token endpoint, and every caller must get the final answer
(CONNECTED for the winner, ALREADY_CONNECTED for the rest), none left IN_PROGRESS. Printed per
store and per driver (threads, asyncio tasks): wall time, token calls, settled callers, store
reads per waiting caller, and database connections opened (SQLite).

    python benchmarks/burst.py [--callers 1000] [--latency 0.02] [--stores memory,sqlite]
        [--postgres URL] [--redis URL]     (adds those stores; each run gets a fresh table/prefix)

A figure, not a test: the machines here are shared and noisy; compare rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx

from amo_oauth import AmoOAuth, AsyncAmoOAuth, Config, ConnectionRecord, MemoryStore, SQLiteStore
from amo_oauth import Outcome as O
from amo_oauth.stores import AsyncStore, Claim, ClaimResult, Loaded, Store, StoreCheck
from amo_oauth.stores._protocol import DueCursor
from amo_oauth.testing import FakeAmoCRM

USER = "burst-user"
SETTLED = (O.CONNECTED, O.ALREADY_CONNECTED)


class Counting:
    """Any store, both protocols, counting each operation; waits and claims stay native."""

    def __init__(self, store: Store, astore: AsyncStore) -> None:
        self.store, self.astore = store, astore
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            self.calls[name] += 1

    def load(self, key: str) -> Loaded:
        self._count("load")
        return self.store.load(key)

    def compare_and_set(self, record: ConnectionRecord, expected: int | None) -> bool:
        self._count("compare_and_set")
        return self.store.compare_and_set(record, expected)

    def delete(self, key: str, expected_version: int) -> bool:
        return self.store.delete(key, expected_version)

    def consume_state(self, nonce: str, expires_at: datetime, holder: str | None = None) -> bool:
        self._count("consume_state")
        return self.store.consume_state(nonce, expires_at, holder)

    def find_by_account(self, account_id: int) -> list[ConnectionRecord]:
        return self.store.find_by_account(account_id)

    def check(self) -> StoreCheck:
        return self.store.check()

    def due_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        return self.store.due_page(before, limit, after)

    def scan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        return self.store.scan(after, limit)

    def holder_of(self, key: str) -> str | None:
        self._count("holder_of")
        return self.store.holder_of(key)

    def claim(self, claim: Claim) -> ClaimResult:
        self._count("claim")
        return self.store.claim(claim)

    def wait_for_change(self, key: str, version: int, timeout: float) -> None:
        self._count("wait")
        self.store.wait_for_change(key, version, timeout)

    def close(self) -> None:
        self.store.close()

    async def aload(self, key: str) -> Loaded:
        self._count("load")
        return await self.astore.aload(key)

    async def acompare_and_set(self, record: ConnectionRecord, expected: int | None) -> bool:
        self._count("compare_and_set")
        return await self.astore.acompare_and_set(record, expected)

    async def adelete(self, key: str, expected_version: int) -> bool:
        return await self.astore.adelete(key, expected_version)

    async def aconsume_state(
        self, nonce: str, expires_at: datetime, holder: str | None = None
    ) -> bool:
        self._count("consume_state")
        return await self.astore.aconsume_state(nonce, expires_at, holder)

    async def afind_by_account(self, account_id: int) -> list[ConnectionRecord]:
        return await self.astore.afind_by_account(account_id)

    async def acheck(self) -> StoreCheck:
        return await self.astore.acheck()

    async def adue_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        return await self.astore.adue_page(before, limit, after)

    async def ascan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        return await self.astore.ascan(after, limit)

    async def aholder_of(self, key: str) -> str | None:
        self._count("holder_of")
        return await self.astore.aholder_of(key)

    async def aclaim(self, claim: Claim) -> ClaimResult:
        self._count("claim")
        return await self.astore.aclaim(claim)

    async def await_for_change(self, key: str, version: int, timeout: float) -> None:
        self._count("wait")
        await self.astore.await_for_change(key, version, timeout)

    async def aclose(self) -> None:
        await self.astore.aclose()


def config(fake: FakeAmoCRM) -> Config:
    # A burst on a loaded 2-core machine: give waiters room; the figure is about settling.
    return Config(
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        redirect_uri=fake.redirect_uri,
        state_secret="burst-state-secret-of-at-least-32-bytes",
        settle_timeout=120.0,
        http_timeout=30.0,
        lease_ttl=timedelta(seconds=300),
    )


def redirect(fake: FakeAmoCRM, state: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(fake.authorize(state)).query))


def run_threads(make: Callable[[], Store], callers: int, latency: float) -> str:
    fake = FakeAmoCRM(rate_limit=None, latency=latency)
    store = make()
    counting = Counting(store, store)  # type: ignore[arg-type]
    http = httpx.Client(transport=fake.transport())
    with AmoOAuth(config(fake), store=counting, http=http) as oauth:
        query = redirect(fake, oauth.begin(USER).state)
        barrier = threading.Barrier(callers)

        def deliver(_: int) -> O:
            barrier.wait()
            return oauth.handle_callback(query).outcome

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=callers) as pool:
            outcomes = list(pool.map(deliver, range(callers)))
        took = time.perf_counter() - started
        return report(fake, counting, store, outcomes, took)


def run_tasks(make: Callable[[], Store], callers: int, latency: float) -> str:
    async def burst() -> str:
        fake = FakeAmoCRM(rate_limit=None, latency=latency)
        store = make()
        counting = Counting(store, store)  # type: ignore[arg-type]
        http = httpx.AsyncClient(transport=fake.async_transport())
        async with AsyncAmoOAuth(config(fake), store=counting, http=http) as oauth:
            query = redirect(fake, (await oauth.begin(USER)).state)
            started = time.perf_counter()
            results = await asyncio.gather(*(oauth.handle_callback(query) for _ in range(callers)))
            took = time.perf_counter() - started
            outcomes = [result.outcome for result in results]
            return report(fake, counting, store, outcomes, took)

    return asyncio.run(burst())


def report(
    fake: FakeAmoCRM, counting: Counting, store: object, outcomes: list[O], took: float
) -> str:
    tally = Counter(outcomes)
    waiting = max(len(outcomes) - 1, 1)
    reads = counting.calls["load"] + counting.calls["holder_of"]
    opened = getattr(store, "connections_opened", None)
    return (
        f"{took * 1e3:7.0f} ms  token calls {fake.token_call_count('authorization_code')}  "
        f"settled {sum(tally[o] for o in SETTLED)}/{len(outcomes)} "
        f"(connected {tally[O.CONNECTED]}, in progress {tally[O.IN_PROGRESS]})  "
        f"reads/waiter {reads / waiting:.1f}  waits/waiter {counting.calls['wait'] / waiting:.1f}  "
        f"writes {counting.calls['claim'] + counting.calls['compare_and_set']}"
        + (f"  connections opened {opened}" if opened is not None else "")
    )


def _postgres(url: str) -> Store:
    from amo_oauth.stores.postgres import PostgresStore

    store = PostgresStore(url, table=f"burst_{time.monotonic_ns()}", max_size=16)
    store.migrate()
    return store


def _redis(url: str) -> Store:
    from amo_oauth.stores.redis import RedisStore

    store = RedisStore(url, prefix=f"burst{time.monotonic_ns()}:")
    store.migrate()
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.02, help="token latency, seconds")
    parser.add_argument("--stores", default="memory,sqlite")
    parser.add_argument("--postgres", help="a PostgreSQL URL: adds the postgres store")
    parser.add_argument("--redis", help="a Redis URL: adds the redis store")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        makers: dict[str, Callable[[], Store]] = {
            "memory": MemoryStore,
            "sqlite": lambda: SQLiteStore(Path(tmp) / f"burst-{time.monotonic_ns()}.db"),
        }
        stores = args.stores.split(",")
        if args.postgres:
            makers["postgres"] = lambda: _postgres(args.postgres)
            stores.append("postgres")
        if args.redis:
            makers["redis"] = lambda: _redis(args.redis)
            stores.append("redis")
        print(f"{args.callers} duplicate callbacks at once, token latency {args.latency}s")
        for name in stores:
            for driver, run in (("threads", run_threads), ("tasks", run_tasks)):
                print(f"  {name:7} {driver:8}", run(makers[name], args.callers, args.latency))


if __name__ == "__main__":
    main()
