"""The sans-I/O core imports no HTTP client, no framework and no database driver."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

PURE = (
    "_lifecycle",
    "_records",
    "_connection_id",
    "_record_view",
    "_events",
    "_lifecycle_events",
    "_callback",
    "_hosts",
    "_state_token",
    "_secrets_post",
    "_binding",
    "_errors",
    "_config",
    "_setting_errors",
    "_integrations_file",
    "_codec",
    "_reasons",
    "_answers",
    "_provider_calls",
    "_provider_reads",
    "_results",
    "_site_button",
)
FORBIDDEN = frozenset(
    {
        "httpx",
        "fastapi",
        "flask",
        "starlette",
        "psycopg",
        "redis",
        "sqlite3",
        "requests",
        "aiohttp",
        "werkzeug",
        "uvicorn",
    }
)
PACKAGE = Path(importlib.util.find_spec("amo_oauth").submodule_search_locations[0])

# Import one module of the package without running the package's __init__ (which wires the
# whole library, I/O included), then list every module that got imported.
PROBE = """
import importlib, importlib.util, json, sys, types
package = types.ModuleType("amo_oauth")
package.__path__ = list(importlib.util.find_spec("amo_oauth").submodule_search_locations)
sys.modules["amo_oauth"] = package
importlib.import_module("amo_oauth." + sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""


def imported_by(module: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, module], capture_output=True, text=True, check=True
    )
    return set(json.loads(done.stdout))


def top_level(names: set[str]) -> set[str]:
    return {name.partition(".")[0] for name in names}


@pytest.mark.parametrize("module", PURE)
def test_importing_a_pure_module_loads_no_io_library(module):
    loaded = imported_by(module)
    assert f"amo_oauth.{module}" in loaded
    assert "amo_oauth._service" not in loaded
    assert top_level(loaded) & FORBIDDEN == set()


def test_the_probe_sees_io_when_there_is_some():
    assert "httpx" in top_level(imported_by("_provider"))


def imports_of(module: str) -> set[str]:
    """Every module ``module`` names in an import statement, relative ones made absolute."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(f"amo_oauth.{node.module}" if node.level else str(node.module))
    return names


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_names_no_io_library_and_only_pure_siblings(module):
    names = imports_of(module)
    assert top_level(names) & FORBIDDEN == set()
    siblings = {name.removeprefix("amo_oauth.") for name in names if name.startswith("amo_oauth.")}
    assert siblings <= set(PURE)


def test_the_static_check_sees_relative_imports():
    assert "amo_oauth._hosts" in imports_of("_config")
    assert "httpx" in imports_of("_provider")
