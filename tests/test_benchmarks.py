"""The benchmark script runs and its storm still makes exactly one token call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


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
