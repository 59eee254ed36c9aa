"""``amo-oauth connections`` on a large store: its time and peak memory as the store grows.

For each size N (10,000 and 100,000 by default) the store is filled with N records of one
integration (most connected, a tenth with a refresh token ending within the window, a tenth in
``error``, the rest exchanged or disconnected; app users spread over 3,000 account hosts), then
the command runs in a fresh process (``python -m amo_oauth connections --json``, output to
/dev/null) which reports its wall time, its peak RSS (``resource.getrusage``) and its peak of
Python allocations (``tracemalloc``). Memory that stays flat from 10,000 to 100,000 shows the
walk holds a page, not the store.

    python benchmarks/connections_report.py [--sizes 10000,100000] [--stores sqlite]
        [--postgres URL]     (adds PostgreSQL; each size gets a fresh table)

A figure, not a test: the machines here are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs

from amo_oauth import ConnectionRecord, SQLiteStore
from amo_oauth._records import ConnectionStatus, ErrorInfo, TokenSet
from amo_oauth.stores import Store

CLIENT_ID = "bench-client"
HOSTS = 3000


def record(number: int, now: datetime) -> ConnectionRecord:
    """Connection ``number``: its status and expiry cycle through the mix above."""
    host = f"acc{number % HOSTS}.amocrm.ru"
    kind = number % 10
    base = ConnectionRecord(
        f"user-{number}", version=1, host=host, integration=CLIENT_ID, updated_at=now
    )
    if kind == 0:
        error = ErrorInfo("reauthorization_required", None, now)
        return attrs.evolve(base, status=ConnectionStatus.ERROR, error=error)
    if kind == 1:
        return attrs.evolve(base, status=ConnectionStatus.EXCHANGED)
    if kind == 2:
        return base  # disconnected
    ends = now + timedelta(days=3 if kind == 3 else 60)
    tokens = TokenSet(f"access-{number}", f"refresh-{number}", now + timedelta(hours=1), ends)
    return attrs.evolve(base, status=ConnectionStatus.CONNECTED, tokens=tokens)


def fill(store: Store, count: int) -> None:
    now = datetime.now(UTC)
    for number in range(count):
        store.compare_and_set(record(number, now), None)


def measure(url: str) -> dict[str, float]:
    """Run the command in a fresh process; its time, peak RSS and peak Python allocations."""
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603 (this very script, by its own path)
        [sys.executable, __file__, "--child", url],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "AMO_CLIENT_ID": CLIENT_ID},
    )
    figures: dict[str, float] = json.loads(done.stderr.strip().splitlines()[-1])
    return {"seconds": round(time.perf_counter() - started, 2), **figures}


def child(url: str) -> None:
    """The command itself, output to /dev/null; its figures on stderr's last line."""
    from amo_oauth.cli import main

    tracemalloc.start()
    with open(os.devnull, "w") as sink:
        real, sys.stdout = sys.stdout, sink
        try:
            main(["connections", "--json", "--store", url])
        finally:
            sys.stdout = real
    _, peak = tracemalloc.get_traced_memory()
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    figures = {"peak_rss_mib": round(rss_kib / 1024, 1), "traced_peak_mib": peak / 2**20}
    print(json.dumps({key: round(value, 2) for key, value in figures.items()}), file=sys.stderr)


def sqlite_store(directory: Path) -> tuple[Store, str]:
    path = directory / f"{uuid.uuid4().hex[:8]}.db"
    return SQLiteStore(path), f"sqlite:///{path}"


def postgres_store(url: str) -> Callable[[Path], tuple[Store, str]]:
    """The store ``store_from_url`` opens at ``url`` (its default table), emptied first."""
    import psycopg

    from amo_oauth.stores import PostgresStore

    def made(_: Path) -> tuple[Store, str]:
        store = PostgresStore(url)
        store.migrate()
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("TRUNCATE amo_oauth_connections")
        return store, url

    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--stores", default="sqlite")
    parser.add_argument("--postgres")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    makers: dict[str, Callable[[Path], tuple[Store, str]]] = {}
    if "sqlite" in args.stores.split(","):
        makers["sqlite"] = sqlite_store
    if args.postgres:
        makers["postgres"] = postgres_store(args.postgres)
    with tempfile.TemporaryDirectory() as directory:
        for name, make in makers.items():
            for size in (int(text) for text in args.sizes.split(",")):
                store, url = make(Path(directory))
                started = time.perf_counter()
                fill(store, size)
                store.close()
                filled = round(time.perf_counter() - started, 1)
                print(
                    json.dumps(
                        {"store": name, "connections": size, "fill_seconds": filled, **measure(url)}
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
