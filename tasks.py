"""The project's everyday commands, needing nothing but Python 3.11+.

    python3 tasks.py demo             the seed's scenario, end to end, on embedded defaults
    python3 tasks.py test             lint, format-check, type-check (also at the dependency
                                      floors), check the venv against the lock, run the tests
    python3 tasks.py test --latest    the same on the newest releases, in .venv-latest
    python3 tasks.py lock [--upgrade] re-resolve requirements/ (--upgrade: newest releases)
    python3 tasks.py bench [--quick] [--scale-only | --per-call-only] [--profile] [--json PATH]
                                      issue 24's benchmark table: each figure beside its
                                      baseline and target (docs/performance.md); not a test
    python3 tasks.py full [ARGS]      issue 24's proof suites (fault, fuzz, leak, load) at their
                                      full size: 10,000 examples each, every store (not in CI);
                                      ARGS go to pytest (a file, -k ...)
    python3 tasks.py wheel-check      build the wheel, install it in a fresh venv as a user
                                      would, run the demo and the fake from outside the checkout

The toolchain installs from a committed lock, ``requirements/lock.txt``, made by uv
(``uv pip compile --universal``, for Python 3.11 and every later version): pip itself, the
build backend and every extra, each at one version, so a new release of anything cannot turn
a fresh clone red. The library's own dependencies stay ranges in pyproject.toml.

Each command creates ``.venv`` and installs into it first (again only when pyproject.toml, the
lock or this file changed), under an exclusive lock on ``.venv.lock``: a second command started
meanwhile waits, then finds the venv ready. Extra arguments after ``test`` go to pytest, which
runs on every core (pytest-xdist; ``-n 0`` for one process).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import venv
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REQUIREMENTS = ROOT / "requirements"
LOCK = REQUIREMENTS / "lock.txt"  # the whole toolchain, pinned (made by `tasks.py lock`)
FLOOR = REQUIREMENTS / "floor.txt"  # the runtime dependencies at their declared floors
TOOLS = REQUIREMENTS / "tools.in"  # what the toolchain adds to pyproject.toml's extras
PROJECT = "amo-oauth"
EXTRAS = "dev,fastapi,flask,django,docs,postgres,redis,crypto,cli,otel"
RUNTIME_EXTRAS = (
    "fastapi",
    "flask",
    "django",
    "postgres",
    "redis",
    "crypto",
    "cli",
    "otel",
    "testing",
)
CHECKED = ("src", "tests", "examples", "benchmarks", "tasks.py")
# Django ships no annotations: mypy reads these stubs instead, at the floors too (locked versions).
FLOOR_STUBS = ("django-stubs", "django-stubs-ext")
PYTHON_FLOOR = "3.11"  # pyproject's requires-python: the lock resolves for it and up


class Venv:
    """One virtual environment of the project's, with its own install stamp."""

    def __init__(self, name: str | Path) -> None:
        self.path = ROOT / name  # an absolute path stays as it is
        self.bin = self.path / ("Scripts" if os.name == "nt" else "bin")
        self.python = self.bin / "python"
        self.stamp = self.path / ".amo_oauth-installed"

    def tool(self, name: str) -> Path:
        return self.bin / name

    def installed(self, wanted: str) -> bool:
        return self.stamp.exists() and self.stamp.read_text() == wanted

    def create(self) -> None:
        if not self.python.exists():
            venv.EnvBuilder(with_pip=True).create(self.path)

    def mark(self, wanted: str) -> None:
        partial = self.stamp.with_name(f"{self.stamp.name}.{os.getpid()}")
        partial.write_text(wanted)
        partial.replace(self.stamp)  # atomic: a reader sees no stamp or the whole stamp


MAIN = Venv(".venv")
LATEST = Venv(".venv-latest")
FLOORS = Venv(".venv-floor")


def run(*argv: str | Path, env: Mapping[str, str] | None = None, cwd: Path = ROOT) -> None:
    print("+", " ".join(str(a) for a in argv), flush=True)
    completed = subprocess.run(  # noqa: S603 (our own tools)
        [str(a) for a in argv],
        cwd=cwd,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )
    if completed.returncode:
        sys.exit(completed.returncode)


def pinned(constraints: Path) -> dict[str, str]:
    """pip's environment for installing under ``constraints``: the top-level install and every
    isolated build (hatchling, editables) resolve inside it. pip reads ``PIP_CONSTRAINT`` for
    the first; since pip 26.2 build environments read only ``PIP_BUILD_CONSTRAINT``."""
    return {"PIP_CONSTRAINT": str(constraints), "PIP_BUILD_CONSTRAINT": str(constraints)}


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


def digest(*parts: bytes) -> str:
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


def ensure(env: Venv, wanted: str, install: Callable[[Venv], None]) -> None:
    if env.installed(wanted):
        return
    with exclusive(ROOT / ".venv.lock"):
        if env.installed(wanted):  # another command installed it while this one waited
            return
        env.stamp.unlink(missing_ok=True)
        env.create()
        install(env)
        env.mark(wanted)


def install_locked(env: Venv) -> None:
    """The toolchain exactly as the lock has it: pip first (the bundled one may predate the
    lock's syntax), then the tools and the project with every extra, then nothing else."""
    constrained = pinned(LOCK)
    pip = (env.python, "-m", "pip", "install", "--quiet")
    run(*pip, "pip", env=constrained)
    run(*pip, "-r", TOOLS, "-e", f".[{EXTRAS}]", env=constrained)
    drop_unlocked(env)


def drop_unlocked(env: Venv) -> None:
    """ensurepip puts setuptools into a Python 3.11 venv; nothing of ours needs it, and the
    venv should hold the lock and only the lock."""
    ensurepips = (*env.path.glob("lib/python*/site-packages"), env.path / "Lib" / "site-packages")
    found = any(any(site.glob("setuptools-*.dist-info")) for site in ensurepips)
    if found and "setuptools==" not in LOCK.read_text():
        run(env.python, "-m", "pip", "uninstall", "--quiet", "--yes", "setuptools")


def install_latest(env: Venv) -> None:
    pip = (
        env.python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--upgrade",
        "--upgrade-strategy",
        "eager",
    )
    run(*pip, "pip")
    run(*pip, "-r", TOOLS, "-e", f".[{EXTRAS}]")


def install_floor(env: Venv) -> None:
    """The runtime dependencies at the lowest versions pyproject.toml allows, and the locked
    mypy to check the library against them (with the locked stubs of ``FLOOR_STUBS``)."""
    pip = (env.python, "-m", "pip", "install", "--quiet")
    run(*pip, "pip", env=pinned(LOCK))
    run(*pip, "--no-deps", "-r", FLOOR, env={"PIP_BUILD_CONSTRAINT": str(LOCK)})
    run(*pip, "--no-deps", *FLOOR_STUBS, env=pinned(LOCK))
    drop_unlocked(env)


def ensure_venv() -> None:
    files = (ROOT / "pyproject.toml", LOCK, TOOLS, Path(__file__))
    ensure(MAIN, digest(*(f.read_bytes() for f in files), EXTRAS.encode()), install_locked)


def demo(args: list[str]) -> None:
    ensure_venv()
    run(MAIN.tool("amo-oauth"), "demo", *args)


def bench(args: list[str]) -> None:
    """The benchmark table (``benchmarks/targets.py``): the table to the terminal, the JSON
    summary to stdout or ``--json PATH``."""
    ensure_venv()
    run(MAIN.python, ROOT / "benchmarks" / "targets.py", *args)


def full(args: list[str]) -> None:
    """The proof suites (tests marked ``proof``) at full size: the ``full`` hypothesis profile
    (examples(500) runs 10,000) and ``AMO_OAUTH_PROOF=full`` for the sizes that are not
    examples (every store in the kill matrix, 5,000 load requests). Hours, not minutes."""
    ensure_venv()
    env = {**os.environ, "HYPOTHESIS_PROFILE": "full", "AMO_OAUTH_PROOF": "full"}
    run(MAIN.python, "-m", "pytest", "-m", "proof", *workers(args), *args, env=env)


def type_check_at_floors() -> None:
    """mypy --strict over the library with every runtime dependency at the lowest version
    pyproject.toml allows (``requirements/floor.txt``), so a floor the code does not work
    with is found here, not by a user. The floors' old wheels exist for the floor Python:
    on a later one this check is left to CI, which runs 3.11."""
    if sys.version_info[:2] != (3, 11):
        print(f"type check at the floors: runs on Python {PYTHON_FLOOR} only (CI runs it)")
        return
    files = (FLOOR, LOCK, Path(__file__))
    ensure(FLOORS, digest(*(f.read_bytes() for f in files)), install_floor)
    run(MAIN.tool("mypy"), "--strict", "--python-executable", FLOORS.python, "src", "examples")


def checks(env: Venv, pytest_args: list[str], *, locked: bool) -> None:
    run(env.tool("ruff"), "check", *CHECKED)
    run(env.tool("ruff"), "format", "--check", *CHECKED)
    run(env.tool("mypy"), "--strict", "src", "examples", "benchmarks", "tasks.py")
    if locked:
        type_check_at_floors()
        run(env.python, __file__, "check-lock")
    run(env.python, "-m", "pytest", *workers(pytest_args), *pytest_args)


def workers(pytest_args: list[str]) -> list[str]:
    """pytest-xdist's options: two workers per core (at most 4), unless the arguments choose
    (``-n 0`` runs it in one process, ``-p no:xdist`` without the plugin). Many tests wait on
    servers, subprocesses, sleeps and wake-ups rather than compute: with one worker per core
    the cores were busy half the time."""
    if any(
        arg == "-n" or arg.startswith(("-n", "--numprocesses", "-pno:xdist")) for arg in pytest_args
    ):
        return []
    if "no:xdist" in pytest_args:
        return []
    return ["-n", str(max(1, min(4, 2 * (os.cpu_count() or 1))))]


def test(args: list[str]) -> None:
    if "--latest" in args:
        args = [a for a in args if a != "--latest"]
        ensure(LATEST, "", install_latest)  # an empty stamp never matches: upgrade every run
        checks(LATEST, args, locked=False)
        return
    ensure_venv()
    checks(MAIN, args, locked=True)


def lock(args: list[str]) -> None:
    """Re-resolve both files with the locked uv, for Python 3.11 and every later version: the
    toolchain (kept pins stay where pyproject.toml still allows them; ``--upgrade`` or
    ``--upgrade-package NAME`` moves to newer releases) and the runtime floors."""
    ensure_venv()
    compile_: tuple[str | Path, ...] = (
        MAIN.tool("uv"), "pip", "compile", "--quiet", "--universal",
        "--python-version", PYTHON_FLOOR, "--custom-compile-command", "python3 tasks.py lock",
    )  # fmt: skip
    run(*compile_, "--all-extras", "pyproject.toml", TOOLS, "-o", LOCK, *args)
    extras = [arg for extra in RUNTIME_EXTRAS for arg in ("--extra", extra)]
    floors: tuple[str | Path, ...] = ("--resolution", "lowest-direct", *extras, "pyproject.toml")
    floors += ("-o", FLOOR)
    run(*compile_, *floors, *args)


def check_lock(args: list[str]) -> None:
    """Run by the venv's Python: every installed distribution but the project is in the lock at
    its locked version, and everything the lock holds for this Python is installed."""
    from importlib.metadata import distributions

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    locked: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate():
            (specifier,) = requirement.specifier
            locked[canonicalize_name(requirement.name)] = specifier.version
    installed: dict[str, str] = {
        canonicalize_name(d.metadata["Name"]): d.version for d in distributions()
    }
    installed.pop(PROJECT, None)
    wrong = [
        f"  {name} {version}: the lock has {locked.get(name, 'nothing')}"
        for name, version in sorted(installed.items())
        if locked.get(name) != version
    ]
    wrong += [
        f"  {name}: locked at {locked[name]}, not installed"
        for name in sorted(locked.keys() - installed.keys())
    ]
    if wrong:
        sys.exit(
            f"the venv differs from {LOCK.relative_to(ROOT)}:\n"
            + "\n".join(wrong)
            + "\nrebuild it: rm -rf .venv && python3 tasks.py test"
        )
    print(f"lock check: {len(installed)} distributions, each at its locked version")


# -- the wheel, as a user installs it ----------------------------------------------------------

#: What the wheel must carry from elsewhere in the repository (pyproject.toml's force-include):
#: the demo's backend and mobile app, byte for byte as examples/ has them.
SHIPPED_EXAMPLES = {
    f"amo_oauth/_examples/{name}": ROOT / "examples" / name
    for name in ("fastapi_app.py", "mobile_client.py")
}


def wheel_check(args: list[str]) -> None:
    """Build the sdist and, from it, the wheel (``python -m build``, its build backend from
    the lock), then install the wheel in a fresh venv as a user would, the lock constraining
    every dependency: without extras (the demo exits 2 naming the one it needs), then with
    ``[fastapi]``; from a directory outside the checkout, check that ``amo_oauth`` comes from
    that venv, and run ``amo-oauth demo``, ``amo-oauth fake --help`` and ``amo-oauth fake``
    until a Ctrl-C. Needs the package index (the build backend, the dependencies)."""
    ensure_venv()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="amo_oauth-wheel-check-") as tmp:
        work = Path(tmp)
        wheel = build_wheel(work / "dist")
        user = Venv(work / "venv")
        elsewhere = work / "elsewhere"  # the commands run here: no checkout in sight
        elsewhere.mkdir()
        user.create()
        pip = (user.python, "-m", "pip", "install", "--quiet")
        run(*pip, "pip", env=pinned(LOCK))
        run(*pip, wheel, env=pinned(LOCK))
        said = outside(elsewhere, 2, user.tool("amo-oauth"), "demo")
        require("fastapi extra" in said, "the demo without fastapi does not name its extra")
        run(*pip, f"{wheel}[fastapi]", env=pinned(LOCK))
        imported_from_venv(user, elsewhere)
        said = outside(elsewhere, 0, user.tool("amo-oauth"), "demo")
        require("Result: as expected." in said, "the demo's result is not the seed's")
        outside(elsewhere, 0, user.tool("amo-oauth"), "fake", "--help")
        fake_until_ctrl_c(user, elsewhere)
    print(f"wheel check: passed in {time.monotonic() - started:.0f} s", flush=True)


def require(condition: bool, failure: str) -> None:
    if not condition:
        sys.exit(f"wheel check: {failure}")


def build_wheel(dist: Path) -> Path:
    """``python -m build`` into ``dist``; the wheel, its shipped examples checked."""
    run(MAIN.python, "-m", "build", "--outdir", dist, ROOT, env=pinned(LOCK))
    (wheel,) = dist.glob("amo_oauth-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        for inside, source in SHIPPED_EXAMPLES.items():
            require(
                archive.read(inside) == source.read_bytes(),
                f"{inside} in the wheel differs from {source.relative_to(ROOT)}",
            )
    print(f"wheel check: {wheel.name} ships {', '.join(SHIPPED_EXAMPLES)}", flush=True)
    return wheel


def outside(cwd: Path, expected: int, *argv: str | Path) -> str:
    """Run a command in ``cwd``, where nothing of the checkout is importable; show and return
    its output; exit unless its status is ``expected``."""
    print("+ (in", cwd, ")", " ".join(str(a) for a in argv), flush=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    completed = subprocess.run(  # noqa: S603 (the wheel's own command)
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    said = completed.stdout + completed.stderr
    print(said, end="", flush=True)
    require(completed.returncode == expected, f"exit status {completed.returncode}")
    return said


def imported_from_venv(user: Venv, cwd: Path) -> None:
    where = outside(cwd, 0, user.python, "-c", "import amo_oauth; print(amo_oauth.__file__)")
    site = {str(p.resolve()) for p in user.path.glob("lib/python*/site-packages")}
    site.add(str((user.path / "Lib" / "site-packages").resolve()))
    found = Path(where.strip()).resolve()
    require(
        any(found.is_relative_to(path) for path in site),
        f"amo_oauth came from {found}, not from the venv's site-packages",
    )


def fake_until_ctrl_c(user: Venv, cwd: Path) -> None:
    """``amo-oauth fake`` serves and prints its configuration; Ctrl-C ends it with 130."""
    print(f"+ (in {cwd} ) amo-oauth fake --port 0, then Ctrl-C", flush=True)
    fake = subprocess.Popen(  # noqa: S603 (the wheel's own command)
        [str(user.tool("amo-oauth")), "fake", "--port", "0"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A Ctrl-C must reach it even when this script runs with SIGINT ignored (a CI shell's
        # background job): give it a terminal's default disposition.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert fake.stdout is not None
    try:
        require(
            any(line.startswith("Requests answered") for line in fake.stdout),
            "amo-oauth fake printed no configuration",
        )
        fake.send_signal(signal.SIGINT)
        fake.wait(timeout=20)
    finally:
        fake.kill()
        fake.communicate()
    require(fake.returncode == 130, f"amo-oauth fake ended with {fake.returncode}, not 130")
    print("amo-oauth fake: served, then Ctrl-C: exit status 130", flush=True)


COMMANDS = {
    "demo": demo,
    "test": test,
    "lock": lock,
    "check-lock": check_lock,
    "wheel-check": wheel_check,
    "bench": bench,
    "full": full,
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
