"""The benchmark scripts run at tiny sizes and still check what they measure: the storm makes
exactly one token call, the sweep refreshes each connection exactly once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
SWEEP = SCRIPT.with_name("sweep.py")


def test_quick_benchmark_prints_its_figures() -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "claim a code" in run.stdout
    assert "sqlite/memory" in run.stdout
    storms = [line for line in run.stdout.splitlines() if "token calls" in line]
    assert len(storms) == 2
    assert all("token calls 1, settled 10/10" in line for line in storms), storms


@pytest.mark.parametrize("driver", [[], ["--async"]], ids=["threads", "tasks"])
def test_tiny_sweep_refreshes_each_connection_once(driver: list[str]) -> None:
    tiny = ["--connections", "40", "--hosts", "8", "--latency", "0.001"]
    run = subprocess.run(
        [sys.executable, str(SWEEP), *tiny, "--stores", "memory,sqlite", *driver],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if "connections on" in line]
    assert [row.split()[0] for row in rows] == ["memory", "sqlite"]
    assert all("40 connections on 8 hosts" in row for row in rows), rows
    assert all("refresh grants 40," in row for row in rows), rows
    assert all("peak traced" in row and "peak RSS" in row for row in rows), rows
