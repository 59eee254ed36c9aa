"""The wheel carries what the demo needs, and the demo runs from it, outside the checkout.

Offline: the wheel is built with the venv's own (locked) hatchling, and run from its unpacked
files with the venv's dependencies. ``python3 tasks.py wheel-check`` (run by ``.ci/run``) does
the rest as a user would: ``pip install`` into a fresh venv, which needs the package index.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from test_toolchain import _tasks

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, ROOT],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (built,) = dist.glob("amo_oauth-*.whl")
    return built


def test_the_wheel_ships_the_demos_examples_from_their_one_place(wheel: Path) -> None:
    shipped = _tasks().SHIPPED_EXAMPLES
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for inside, source in shipped.items():
            assert archive.read(inside) == source.read_bytes()
    assert {n for n in names if "/_examples/" in n} == set(shipped)  # the demo's, no others
    assert {"amo_oauth/__main__.py", "amo_oauth/py.typed"} <= names


def _unpacked(wheel: Path, into: Path) -> dict[str, str]:
    """The wheel's files in ``into``, first on the path: an environment for running them."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(into)
    return {**os.environ, "PYTHONPATH": str(into)}


def test_the_demo_runs_from_the_wheel_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    env = _unpacked(wheel, tmp_path / "site")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def python(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    found = python("-c", "import amo_oauth; print(amo_oauth.__file__)").stdout.strip()
    assert Path(found) == tmp_path / "site" / "amo_oauth" / "__init__.py"
    demo = python("-m", "amo_oauth", "demo")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "Result: as expected." in demo.stdout
    assert python("-m", "amo_oauth", "fake", "--help").returncode == 0
