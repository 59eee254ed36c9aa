"""The per-call rows of ``targets.py`` in CPU time: what a call costs on a loaded machine.

    .venv/bin/python benchmarks/cpu_time.py [--calls N] [--rounds R]

``targets.py`` times wall clock, as the issue asks; on a shared 2-core machine with a load
average of 15 to 30, a thread waits for a core for much of a call, and the absolute figures
(duplicates per second) measure the scheduler as much as the library. Here each figure is the
CPU time of this thread (``time.thread_time``) per call, the lowest of ``R`` rounds, on the
same scenarios, baselines and helpers as ``targets.py`` (nothing cached across calls, every
first callback its own consent and code). Read it beside ``targets.py``'s table, not instead.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory

from targets import USER, FirstCallbacks, connect, load_and_check, plain_httpx, service_on

from amo_oauth import MemoryStore, SQLiteStore, Store


def per_call(calls: list[Callable[[], object]]) -> float:
    """CPU seconds of this thread per call over ``calls``."""
    started = time.thread_time()
    for call in calls:
        call()
    return (time.thread_time() - started) / len(calls)


def lowest(rounds: int, make: Callable[[], list[Callable[[], object]]]) -> float:
    """The lowest ``per_call`` over ``rounds`` batches, each made (untimed) by ``make``."""
    return min(per_call(make()) for _ in range(rounds))


def rows_for(name: str, store: Store, calls: int, rounds: int) -> list[str]:
    oauth, fake = service_on(store)
    duplicate = connect(oauth, fake)
    by_hand = load_and_check(oauth, store)

    token = lowest(rounds, lambda: [lambda: oauth.access_token(USER)] * calls)
    hand = lowest(rounds, lambda: [by_hand] * calls)
    dup = lowest(rounds, lambda: [duplicate] * calls)
    first = FirstCallbacks(store, calls)
    ours = lowest(rounds, lambda: [first.fresh() for _ in range(calls)])
    plain = lowest(rounds, lambda: [plain_httpx(first.fake, first.client) for _ in range(calls)])
    first.close()
    oauth.close()
    us = 1e6
    return [
        f"{name}: fresh access_token() {token * us:.1f} us vs load() + check {hand * us:.1f} us:"
        f" {token / hand:.2f}x",
        f"{name}: duplicate callback {dup * us:.1f} us: {1 / dup:,.0f}/s",
        f"{name}: first callback {ours * us:.1f} us vs two plain httpx calls {plain * us:.1f} us:"
        f" {ours / plain:.2f}x",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with TemporaryDirectory(prefix="amo_oauth-cpu-") as tmp:
        stores: list[tuple[str, Store]] = [
            ("Memory", MemoryStore()),
            ("SQLite", SQLiteStore(Path(tmp) / "cpu.db")),
        ]
        for name, store in stores:
            for line in rows_for(name, store, args.calls, args.rounds):
                print(line)


if __name__ == "__main__":
    main()
