"""Bursts of callers on one connection: N at once, threads or asyncio tasks, on each store.

Two scenarios (``--scenarios``):

- ``callbacks``: N callers deliver the same redirect. Exactly one reaches amoCRM's token
  endpoint; every caller gets the final answer (CONNECTED for the winner, ALREADY_CONNECTED for
  the rest), none IN_PROGRESS.
- ``access_token``: N callers ask for the access token of a connection whose token expired
  (issue 15's scenario). Exactly one refreshes; every caller gets the new token, none an error.

Printed per store, scenario and driver: wall time, token calls, settled callers (and errors),
the lag of the slowest caller beyond the winner's last write (how long the last waiter took to
hear of it), store reads and waits per waiting caller, and connections opened (SQLite).

    python benchmarks/burst.py [--callers 1000] [--latency 0.02] [--stores memory,sqlite]
        [--scenarios callbacks,access_token] [--settle 5]  (settle_timeout: the default)
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import attrs
import httpx

from amo_oauth import AmoOAuth, AsyncAmoOAuth, Config, ConnectionRecord, MemoryStore, SQLiteStore
from amo_oauth import Outcome as O
from amo_oauth.stores import AsyncStore, Claim, ClaimResult, Loaded, Store, StoreCheck
from amo_oauth.stores._protocol import DueCursor
from amo_oauth.testing import FakeAmoCRM, FakeClock

USER = "burst-user"
SETTLED = (O.CONNECTED, O.ALREADY_CONNECTED)


class Counting:
    """Any store, both protocols, counting each operation; waits and claims stay native."""

    def __init__(self, store: Store, astore: AsyncStore) -> None:
        self.store, self.astore = store, astore
        self.calls: Counter[str] = Counter()
        self.last_write = 0.0  # perf_counter() of the last write that took
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            self.calls[name] += 1

    def load(self, key: str) -> Loaded:
        self._count("load")
        return self.store.load(key)

    def _wrote(self, took: bool) -> bool:
        if took:
            self.last_write = time.perf_counter()
        return took

    def compare_and_set(self, record: ConnectionRecord, expected: int | None) -> bool:
        self._count("compare_and_set")
        return self._wrote(self.store.compare_and_set(record, expected))

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
        result = self.store.claim(claim)
        self._wrote(result is ClaimResult.CLAIMED)
        return result

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
        return self._wrote(await self.astore.acompare_and_set(record, expected))

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
        result = await self.astore.aclaim(claim)
        self._wrote(result is ClaimResult.CLAIMED)
        return result

    async def await_for_change(self, key: str, version: int, timeout: float) -> None:
        self._count("wait")
        await self.astore.await_for_change(key, version, timeout)

    async def aclose(self) -> None:
        await self.astore.aclose()


def config(fake: FakeAmoCRM, settle: float) -> Config:
    return Config(
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        redirect_uri=fake.redirect_uri,
        state_secret="burst-state-secret-of-at-least-32-bytes",
        settle_timeout=settle,
        http_timeout=30.0,
        lease_ttl=timedelta(seconds=300),
    )


def redirect(fake: FakeAmoCRM, state: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(fake.authorize(state)).query))


@attrs.define
class Burst:
    """What one burst left: each caller's answer (an outcome, a token, or the error) and the
    ``perf_counter()`` it came back at."""

    answers: list[object]
    finished: list[float]
    took: float


def timed(call: Callable[[], object]) -> tuple[object, float]:
    try:
        answer: object = call()
    except Exception as exc:  # counted: an error is a caller not settled
        answer = exc
    return answer, time.perf_counter()


def run_threads(
    make: Callable[[FakeClock], Store], scenario: str, callers: int, latency: float, settle: float
) -> Measured:
    clock = FakeClock()
    fake = FakeAmoCRM(clock=clock, rate_limit=None, latency=latency)
    store = make(clock)  # the store judges leases: it reads the same clock
    counting = Counting(store, store)  # type: ignore[arg-type]
    http = httpx.Client(transport=fake.transport())
    with AmoOAuth(config(fake, settle), store=counting, http=http, clock=clock) as oauth:
        begun = oauth.begin(USER)
        query = redirect(fake, begun.state)
        if scenario != "callbacks":
            oauth.handle_callback(query, binding=begun.binding)
            clock.advance(timedelta(hours=24))

        def one() -> object:
            if scenario == "callbacks":
                return oauth.handle_callback(query, binding=begun.binding).outcome
            return oauth.access_token(USER)

        barrier = threading.Barrier(callers)

        def deliver(_: int) -> tuple[object, float]:
            barrier.wait()
            return timed(one)

        counting.calls.clear()
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=callers) as pool:
            done = list(pool.map(deliver, range(callers)))
        burst = Burst([a for a, _ in done], [f for _, f in done], time.perf_counter() - started)
        return measured(fake, counting, store, scenario, burst)


def run_tasks(
    make: Callable[[FakeClock], Store], scenario: str, callers: int, latency: float, settle: float
) -> Measured:
    async def burst() -> Measured:
        clock = FakeClock()
        fake = FakeAmoCRM(clock=clock, rate_limit=None, latency=latency)
        store = make(clock)  # the store judges leases: it reads the same clock
        counting = Counting(store, store)  # type: ignore[arg-type]
        http = httpx.AsyncClient(transport=fake.async_transport())
        cfg = config(fake, settle)
        async with AsyncAmoOAuth(cfg, store=counting, http=http, clock=clock) as oauth:
            begun = await oauth.begin(USER)
            query = redirect(fake, begun.state)
            if scenario != "callbacks":
                await oauth.handle_callback(query, binding=begun.binding)
                clock.advance(timedelta(hours=24))

            async def one() -> tuple[object, float]:
                try:
                    if scenario == "callbacks":
                        answered = await oauth.handle_callback(query, binding=begun.binding)
                        answer: object = answered.outcome
                    else:
                        answer = await oauth.access_token(USER)
                except Exception as exc:  # counted: an error is a caller not settled
                    answer = exc
                return answer, time.perf_counter()

            counting.calls.clear()
            started = time.perf_counter()
            done = await asyncio.gather(*(one() for _ in range(callers)))
            took = time.perf_counter() - started
            answers = Burst([a for a, _ in done], [f for _, f in done], took)
            return measured(fake, counting, store, scenario, answers)

    return asyncio.run(burst())


def settled(scenario: str, answers: list[object]) -> tuple[int, int, str]:
    """(callers settled, errors, a note on what the others got)."""
    errors = [a for a in answers if isinstance(a, Exception)]
    # The library's errors name a reason, never a secret: their first words say which.
    kinds = Counter(f"{type(e).__name__}: {str(e)[:50]}" for e in errors)
    seen = "".join(f", {n} x {kind}" for kind, n in kinds.most_common(2))
    if scenario == "callbacks":
        tally = Counter(a for a in answers if isinstance(a, O))
        note = f"connected {tally[O.CONNECTED]}, in progress {tally[O.IN_PROGRESS]}{seen}"
        return sum(tally[o] for o in SETTLED), len(errors), note
    tokens = Counter(a for a in answers if isinstance(a, str))
    return sum(tokens.values()), len(errors), f"distinct tokens {len(tokens)}{seen}"


@attrs.frozen
class Measured:
    """One burst's figures: wall time and the slowest caller's lag beyond the winner's last
    write (seconds), token calls of the scenario's grant, callers settled and errors (with a
    note on what the others got), and the store traffic per waiting caller."""

    took: float
    token_calls: int
    callers: int
    settled: int
    errors: int
    note: str
    lag: float
    reads_per_waiter: float
    waits_per_waiter: float
    writes: int
    opened: int | None

    @property
    def failure(self) -> str | None:
        """What broke the burst's promise (one token call, every caller settled, no error);
        None when it held."""
        if self.token_calls == 1 and self.errors == 0 and self.settled == self.callers:
            return None
        return (
            f"token calls {self.token_calls}, settled {self.settled}/{self.callers}, "
            f"errors {self.errors} ({self.note})"
        )

    def line(self) -> str:
        return (
            f"{self.took * 1e3:7.0f} ms  token calls {self.token_calls}  "
            f"settled {self.settled}/{self.callers} errors {self.errors} ({self.note})  "
            f"slowest lag {self.lag * 1e3:.0f} ms  "
            f"reads/waiter {self.reads_per_waiter:.1f}  "
            f"waits/waiter {self.waits_per_waiter:.1f}  writes {self.writes}"
            + (f"  connections opened {self.opened}" if self.opened is not None else "")
        )


def measured(
    fake: FakeAmoCRM, counting: Counting, store: object, scenario: str, burst: Burst
) -> Measured:
    grant = "authorization_code" if scenario == "callbacks" else "refresh_token"
    ok, errors, note = settled(scenario, burst.answers)
    waiting = max(len(burst.answers) - 1, 1)
    reads = counting.calls["load"] + counting.calls["holder_of"]
    return Measured(
        took=burst.took,
        token_calls=fake.token_call_count(grant),
        callers=len(burst.answers),
        settled=ok,
        errors=errors,
        note=note,
        lag=max(burst.finished) - counting.last_write,
        reads_per_waiter=reads / waiting,
        waits_per_waiter=counting.calls["wait"] / waiting,
        writes=counting.calls["claim"] + counting.calls["compare_and_set"],
        opened=getattr(store, "connections_opened", None),
    )


def _following(clock: FakeClock) -> Callable[[], timedelta]:
    """A server store's ``clock_offset`` that makes it read ``clock``."""
    return lambda: clock() - datetime.now(UTC)


def _postgres(url: str, clock: FakeClock) -> Store:
    from amo_oauth.stores.postgres import PostgresStore

    table = f"burst_{time.monotonic_ns()}"
    store = PostgresStore(url, table=table, max_size=16, clock_offset=_following(clock))
    store.migrate()
    return store


def _redis(url: str, clock: FakeClock) -> Store:
    from amo_oauth.stores.redis import RedisStore

    prefix = f"burst{time.monotonic_ns()}:"
    store = RedisStore(url, prefix=prefix, clock_offset=_following(clock))
    store.migrate()
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.02, help="token latency, seconds")
    parser.add_argument("--stores", default="memory,sqlite")
    parser.add_argument("--scenarios", default="callbacks,access_token")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="settle_timeout, seconds (the library's default)"
    )
    parser.add_argument("--postgres", help="a PostgreSQL URL: adds the postgres store")
    parser.add_argument("--redis", help="a Redis URL: adds the redis store")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        makers: dict[str, Callable[[FakeClock], Store]] = {
            "memory": lambda clock: MemoryStore(clock=clock),
            "sqlite": lambda clock: SQLiteStore(
                Path(tmp) / f"burst-{time.monotonic_ns()}.db", clock=clock
            ),
        }
        stores = args.stores.split(",")
        if args.postgres:
            makers["postgres"] = lambda clock: _postgres(args.postgres, clock)
            stores.append("postgres")
        if args.redis:
            makers["redis"] = lambda clock: _redis(args.redis, clock)
            stores.append("redis")
        print(f"{args.callers} callers at once, token latency {args.latency}s")
        for scenario in args.scenarios.split(","):
            for name in stores:
                for driver, run in (("threads", run_threads), ("tasks", run_tasks)):
                    row = run(makers[name], scenario, args.callers, args.latency, args.settle)
                    print(f"  {scenario:12} {name:8} {driver:8}", row.line(), flush=True)


if __name__ == "__main__":
    main()
