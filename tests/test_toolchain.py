"""The locked toolchain (tasks.py): the lock check refuses a venv that differs from the lock,
and the lock holds everything the project's own commands install."""

from __future__ import annotations

import importlib.util
from importlib.metadata import distributions
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def _tasks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tasks", ROOT / "tasks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _installed() -> dict[str, str]:
    found = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
    found.pop("amo-oauth", None)
    return found


def _lock_of(tmp_path: Path, pins: dict[str, str], extra_lines: str = "") -> ModuleType:
    tasks = _tasks()
    lock = tmp_path / "lock.txt"
    body = "".join(f"{name}=={version}\n    # via something\n" for name, version in pins.items())
    lock.write_text("# a header comment\n" + body + extra_lines)
    tasks.LOCK = lock
    tasks.ROOT = tmp_path
    return tasks


def test_the_lock_check_passes_on_the_venv_as_locked(tmp_path: Path) -> None:
    tasks = _lock_of(tmp_path, _installed(), "never-installed==1.0 ; python_version < '3'\n")
    tasks.check_lock([])


def test_the_lock_check_names_a_wrong_version_and_an_unlocked_distribution(
    tmp_path: Path,
) -> None:
    pins = _installed()
    pins["pytest"] = "0.0.1"
    del pins["attrs"]
    tasks = _lock_of(tmp_path, pins)
    with pytest.raises(SystemExit) as refused:
        tasks.check_lock([])
    message = str(refused.value.code)
    assert "pytest" in message and "the lock has 0.0.1" in message
    assert "attrs" in message and "the lock has nothing" in message


def test_the_lock_check_names_a_locked_distribution_not_installed(tmp_path: Path) -> None:
    tasks = _lock_of(tmp_path, {**_installed(), "not-installed-here": "1.0"})
    with pytest.raises(SystemExit) as refused:
        tasks.check_lock([])
    assert "not-installed-here: locked at 1.0, not installed" in str(refused.value.code)


def _locked_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(canonicalize_name(Requirement(line).name))
    return names


def test_the_lock_holds_the_tools_and_every_extra() -> None:
    locked = _locked_names(ROOT / "requirements" / "lock.txt")
    for name in ("pip", "build", "hatchling", "editables", "uv", "packaging"):
        assert name in locked
    pyproject = (ROOT / "pyproject.toml").read_text()
    for name in ("attrs", "httpx", "transitions", "fastapi", "flask", "psycopg", "redis"):
        assert name in locked and f'"{name}' in pyproject


def test_the_install_stamp_covers_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = _tasks()
    stamps: list[str] = []
    monkeypatch.setattr(tasks, "ensure", lambda env, wanted, install: stamps.append(wanted))
    tasks.ensure_venv()
    lock = tmp_path / "lock.txt"
    lock.write_text((ROOT / "requirements" / "lock.txt").read_text() + "\n# changed\n")
    monkeypatch.setattr(tasks, "LOCK", lock)
    tasks.ensure_venv()
    assert stamps[0] != stamps[1]


def test_the_floor_check_runs_on_the_floor_python_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks = _tasks()
    monkeypatch.setattr(tasks.sys, "version_info", (3, 13, 0))
    monkeypatch.setattr(tasks, "ensure", lambda *args: pytest.fail("installed the floors"))
    tasks.type_check_at_floors()
    assert "runs on Python 3.11 only" in capsys.readouterr().out
