"""The project's two everyday commands, needing nothing but Python 3.11+.

    python3 tasks.py demo    run the demo: the seed's scenario, end to end, on embedded defaults
    python3 tasks.py test    lint, format-check, type-check and run the whole test suite

Each creates ``.venv`` and installs the project into it first (again only when pyproject.toml
changed), under an exclusive lock on ``.venv.lock``: a second command started meanwhile waits,
then finds the venv ready. Extra arguments after ``test`` go to pytest.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".amo_oauth-installed"
LOCK = ROOT / ".venv.lock"
EXTRAS = "dev,fastapi,flask,docs,postgres,redis,crypto,cli"


def run(*argv: str | Path) -> None:
    print("+", " ".join(str(a) for a in argv), flush=True)
    completed = subprocess.run([str(a) for a in argv], cwd=ROOT, check=False)  # noqa: S603 (our own tools)
    if completed.returncode:
        sys.exit(completed.returncode)


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) until the block ends; the OS
    drops it if the process dies. Where there is no ``fcntl`` (Windows) this takes no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def installed(wanted: str) -> bool:
    return STAMP.exists() and STAMP.read_text() == wanted


def ensure_venv() -> None:
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + EXTRAS.encode()).hexdigest()
    if installed(wanted):
        return
    with exclusive(LOCK):
        if installed(wanted):  # another command installed it while this one waited
            return
        STAMP.unlink(missing_ok=True)
        if not (BIN / "python").exists():
            venv.EnvBuilder(with_pip=True).create(VENV)
        python = BIN / "python"
        run(python, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
        run(python, "-m", "pip", "install", "--quiet", "-e", f".[{EXTRAS}]")
        partial = STAMP.with_name(f"{STAMP.name}.{os.getpid()}")
        partial.write_text(wanted)
        partial.replace(STAMP)  # atomic: a reader sees no stamp or the whole stamp


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
