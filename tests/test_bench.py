"""``python3 tasks.py bench --quick`` (benchmarks/targets.py) runs and reports every row.

A smoke run, never a timing: each of the issue's rows prints a number or says why it has
none, and the JSON summary holds the same rows as the printed table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "targets.py"
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
)


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
        if measured and row["target"] is not None:
            assert isinstance(row["met"], bool) and isinstance(row["margin"], float), row
    printed = [line for line in table.splitlines() if any(f in line for f in figures)]
    assert len(printed) == len(rows)
    for line, row in zip(printed, rows, strict=True):
        assert str(row["figure"]) in line
        assert (str(row["reason"])[:20] if row["reason"] else f"{row['value']:,.2f}") in line
