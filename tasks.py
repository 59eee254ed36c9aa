"""The project's two everyday commands, needing nothing but Python 3.11+.

    python3 tasks.py demo    run the demo: the seed's scenario, end to end, on embedded defaults
    python3 tasks.py test    lint, format-check, type-check and run the whole test suite

Each creates ``.venv`` and installs the project into it first (again only when pyproject.toml
changed). Extra arguments after ``test`` go to pytest.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".amo_oauth-installed"
EXTRAS = "dev,fastapi,flask,docs,postgres,redis"


def run(*argv: str | Path) -> None:
    print("+", " ".join(str(a) for a in argv), flush=True)
    completed = subprocess.run([str(a) for a in argv], cwd=ROOT, check=False)  # noqa: S603 (our own tools)
    if completed.returncode:
        sys.exit(completed.returncode)


def ensure_venv() -> None:
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + EXTRAS.encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    python = BIN / "python"
    run(python, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(python, "-m", "pip", "install", "--quiet", "-e", f".[{EXTRAS}]")
    STAMP.write_text(wanted)


def demo(args: list[str]) -> None:
    run(BIN / "amo-oauth", "demo", *args)


def test(args: list[str]) -> None:
    run(BIN / "ruff", "check", "src", "tests", "examples", "benchmarks", "tasks.py")
    run(BIN / "ruff", "format", "--check", "src", "tests", "examples", "benchmarks", "tasks.py")
    run(BIN / "mypy", "--strict", "src", "examples", "benchmarks")
    run(BIN / "python", "-m", "pytest", *args)


COMMANDS = {"demo": demo, "test": test}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    ensure_venv()
    COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
