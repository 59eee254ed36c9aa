"""``benchmarks/cpu_time.py`` runs and prints each of its rows: a smoke run, never a timing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_time.py"
ROWS = (
    "fresh access_token()",
    "duplicate callback",
    "first callback",
)


def test_a_smoke_run_prints_every_row_for_both_stores():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--calls", "2", "--rounds", "1"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = done.stdout.splitlines()
    expected = [(store, row) for store in ("Memory", "SQLite") for row in ROWS]
    assert [(line.split(": ")[0], line.split(": ")[1].split(" ")[0]) for line in lines] == [
        (store, row.split(" ")[0]) for store, row in expected
    ]
    for line, (_, row) in zip(lines, expected, strict=True):
        assert row in line
        assert re.search(r"\d+\.\d us", line), line
