"""Benchmarks that print figures: where the time of the library's hot paths goes.

    .venv/bin/python benchmarks/bench.py [--quick]

Everything runs in-process against FakeAmoCRM, so the figures measure the library (the table,
the flows, the stores), not a network. Machines here are shared and noisy: compare the ratios
printed side by side in one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx

from amo_oauth import AmoOAuth, Config, MemoryStore, Outcome, SQLiteStore, Store
from amo_oauth._events import CodeReceived, Disconnect
from amo_oauth._hosts import AccountHost
from amo_oauth._lifecycle import step
from amo_oauth._records import ConnectionRecord, Lease, code_digest
from amo_oauth.testing import FakeAmoCRM

USER = "bench-user"


def per_call(function: Callable[[], object], calls: int) -> float:
    """Seconds per call, the best of three rounds (the least disturbed by the machine)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(calls):
            function()
        best = min(best, (time.perf_counter() - started) / calls)
    return best


def oauth_on(store: Store, fake: FakeAmoCRM) -> AmoOAuth:
    config = Config(
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        redirect_uri=fake.redirect_uri,
        state_secret="benchmark-state-secret-0123456789",
    )
    return AmoOAuth(config, store=store, http=httpx.Client(transport=fake.transport()))


def connected(store: Store) -> tuple[AmoOAuth, dict[str, str]]:
    fake = FakeAmoCRM(rate_limit=None)
    oauth = oauth_on(store, fake)
    begun = oauth.begin(USER)
    query = dict(parse_qsl(urlsplit(fake.authorize(begun.state)).query))
    oauth.handle_callback(query, binding=begun.binding)
    return oauth, query


def bench_table(calls: int) -> None:
    now = datetime.now(UTC)
    lease = Lease("bench", "exchange", now + timedelta(minutes=1))
    claim = CodeReceived(code_digest("c"), AccountHost("test.amocrm.ru"), lease)
    record = ConnectionRecord(USER)
    claimed = step(record, claim, now).record
    transition = per_call(lambda: step(record, claim, now), calls)
    duplicate = per_call(lambda: step(claimed, claim, now), calls)
    disconnect = per_call(lambda: step(claimed, Disconnect(), now), calls)
    print("the table (step: one event on one record, through transitions.Machine)")
    print(f"  claim a code         {transition * 1e6:8.1f} us")
    print(f"  duplicate (no-op)    {duplicate * 1e6:8.1f} us")
    print(f"  disconnect           {disconnect * 1e6:8.1f} us")


def bench_stores(calls: int, folder: Path) -> None:
    stores: dict[str, Store] = {
        "MemoryStore": MemoryStore(),
        "SQLiteStore": SQLiteStore(folder / "bench.db"),
    }
    rows = {}
    for name, store in stores.items():
        oauth, query = connected(store)
        rows[name] = (
            per_call(partial(oauth.handle_callback, query), calls),
            per_call(partial(oauth.access_token, USER), calls),
            per_call(partial(oauth.status, USER), calls),
        )
        oauth.close()
    memory, sqlite = rows["MemoryStore"], rows["SQLiteStore"]
    print("a service call, per call (in-process fake amoCRM; no token call in any of these)")
    print(f"  {'':22}{'memory':>10}{'sqlite':>10}{'sqlite/memory':>15}")
    labels = ("duplicate callback", "access_token (fresh)", "status")
    for label, mem, lite in zip(labels, memory, sqlite, strict=True):
        print(f"  {label:22}{mem * 1e6:8.0f}us{lite * 1e6:8.0f}us{lite / mem:14.1f}x")


def bench_storm(racers: int, folder: Path) -> None:
    print(f"a storm: {racers} threads deliver the same redirect at once (fake latency 20 ms)")
    for name, store in (
        ("MemoryStore", MemoryStore()),
        ("SQLiteStore", SQLiteStore(folder / "storm.db")),
    ):
        fake = FakeAmoCRM(rate_limit=None, latency=0.02)
        oauth = oauth_on(store, fake)
        begun = oauth.begin(USER)
        query = dict(parse_qsl(urlsplit(fake.authorize(begun.state)).query))
        started = time.perf_counter()
        callback = functools.partial(oauth.handle_callback, binding=begun.binding)
        with ThreadPoolExecutor(max_workers=racers) as pool:  # one browser's redirect, n times
            results = list(pool.map(callback, [query] * racers))
        took = time.perf_counter() - started
        calls = fake.token_call_count("authorization_code")
        settled = (Outcome.CONNECTED, Outcome.ALREADY_CONNECTED)
        done = sum(result.outcome in settled for result in results)
        print(f"  {name:12} {took * 1e3:7.0f} ms, token calls {calls}, settled {done}/{racers}")
        oauth.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few calls: a smoke run")
    quick = parser.parse_args().quick
    with tempfile.TemporaryDirectory() as tmp:
        bench_table(200 if quick else 20_000)
        bench_stores(20 if quick else 2_000, Path(tmp))
        bench_storm(10 if quick else 100, Path(tmp))


if __name__ == "__main__":
    main()
