"""``python3 tasks.py bench --quick`` (benchmarks/targets.py) runs and reports every row.

A smoke run, never a timing: each of the issue's rows prints a number or says why it has
none, and the JSON summary holds the same rows as the printed table. What the scale rows
promise beside their figures is checked, not timed: a burst makes one token call and every
caller settles without an error; ours makes one token call in the naive scenarios; the sweep
refreshes each connection exactly once (``benchmarks/sweep.py`` itself, threads and tasks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "targets.py"
SWEEP = SCRIPT.with_name("sweep.py")
#: Words that begin a figure of each kind issue 24 §1 asks for.
KINDS = (
    "pure step vs bare trigger: claim",
    "pure step vs bare trigger: duplicate",
    "pure step vs bare trigger: disconnect",
    "pure step vs bare trigger: worst",
    "first callback, Memory, vs two plain httpx calls",
    "first callback, SQLite, vs two plain httpx calls",
    "first callback, SQLite: commits per callback",
    "duplicate callback no-ops per second per core, Memory",
    "duplicate callback no-ops per second per core, SQLite",
    "fresh access_token() vs load() + expiry check, SQLite",
    "fresh access_token() vs load() + expiry check, Memory",
    "fresh access_token() vs load() + expiry check, Postgres",
    "fresh access_token() vs load() + expiry check, Redis",
    "cost growth 10 -> 1,000: duplicate, Memory",
    "cost growth 10 -> 1,000: status(), Memory",
    "cost growth 10 -> 1,000: duplicate, SQLite",
    "cost growth 10 -> 1,000: status(), SQLite",
    *(
        f"burst of 20 {label}, {store}, {driver}: slowest lag"
        for label in ("duplicate callbacks", "access_token() on an expired token")
        for store in ("Memory", "SQLite", "Postgres", "Redis")
        for driver in ("threads", "tasks")
    ),
    *(
        f"keep-alive sweep, 10 connections over 5 hosts, {store}: {what}"
        for store in ("Memory", "SQLite", "Postgres", "Redis")
        for what in ("time", "peak RSS")
    ),
    *(
        f"naive baseline, {scenario}, {handler}: token calls"
        for scenario in (
            "duplicate code (callback, replay, 10 at once)",
            "refresh storm (10 reads of an expired token)",
        )
        for handler in ("naive", "naive, checked", "ours")
    ),
)
#: Rows whose promise beside the figure must hold in the smoke run too (``failure`` empty).
KEPT_PROMISES = ("burst of ", "naive baseline, ")


#: Runs the script as ``__main__`` with rich unimportable: the plain table's path.
WITHOUT_RICH = (
    "import runpy, sys; sys.modules['rich'] = None; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def quick_run(tmp_path: Path, *, rich: bool) -> tuple[str, list[dict[str, object]]]:
    summary = tmp_path / "bench.json"
    launcher = [] if rich else ["-c", WITHOUT_RICH]
    run = subprocess.run(
        [sys.executable, *launcher, str(SCRIPT), "--quick", "--json", str(summary)],
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard only: the quick run takes seconds
    )
    assert run.returncode == 0, run.stderr
    parsed = json.loads(summary.read_text())
    assert parsed["quick"] is True
    return run.stdout, parsed["rows"]


@pytest.mark.parametrize("rich", [True, False], ids=["rich", "plain"])
def test_quick_bench_reports_every_row_as_a_number_or_a_reason(tmp_path: Path, rich: bool) -> None:
    table, rows = quick_run(tmp_path, rich=rich)
    assert ("┃" in table) is rich  # rich's table, or the plain one when rich is missing
    figures = [str(row["figure"]) for row in rows]
    for kind in KINDS:
        assert any(figure.startswith(kind) for figure in figures), kind
    for row in rows:
        measured = isinstance(row["value"], int | float) and row["value"] > 0
        assert measured != bool(row["reason"]), row
        if str(row["figure"]).startswith(KEPT_PROMISES):
            assert row["failure"] is None, row
        if measured and row["target"] is not None:
            assert isinstance(row["met"], bool) and isinstance(row["margin"], float), row
    printed = [line for line in table.splitlines() if any(f in line for f in figures)]
    assert len(printed) == len(rows)
    for line, row in zip(printed, rows, strict=True):
        assert str(row["figure"]) in line
        assert (str(row["reason"])[:20] if row["reason"] else f"{row['value']:,.2f}") in line


@pytest.mark.parametrize("driver", [[], ["--async"]], ids=["threads", "tasks"])
def test_tiny_sweep_refreshes_each_connection_once(driver: list[str]) -> None:
    tiny = ["--connections", "40", "--hosts", "8", "--latency", "0.001"]
    run = subprocess.run(
        [sys.executable, str(SWEEP), *tiny, "--stores", "memory,sqlite", *driver],
        capture_output=True,
        text=True,
        timeout=300,  # a hang guard only: the run takes seconds
    )
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if "connections on" in line]
    assert [row.split()[0] for row in rows] == ["memory", "sqlite"]
    assert all("40 connections on 8 hosts" in row for row in rows), rows
    assert all("refresh grants 40," in row for row in rows), rows
    assert all("peak RSS" in row for row in rows), rows
