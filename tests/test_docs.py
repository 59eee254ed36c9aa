"""The docs site builds cleanly, and its code samples run against the real API.

Convention for code samples in ``docs/``:

- A fenced ```` ```python ```` block directly preceded by the line ``<!-- runnable -->`` is run.
  The runnable blocks of one page run in order, in one shared namespace (like a console
  session), inside a temporary working directory; each page starts from a fresh namespace and
  builds its own ``FakeAmoCRM``. They reach no host but 127.0.0.1.
- Every other ``python`` block must at least parse.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARK = "<!-- runnable -->"
# Pages whose runnable blocks are executed. A runnable mark on any other page is an error.
RUNNABLE_PAGES = (
    "index.md",
    "quickstart.md",
    "seed.md",
    "concepts.md",
    "testing.md",
    "any-framework.md",
    "fastapi.md",
    "flask.md",
    "long-lived-tokens.md",
    "keys-tab-code.md",
    "api-pace.md",
    "site-button.md",
    "metrics.md",
    "several-integrations.md",
    "events.md",
)

_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


def python_blocks(page: Path) -> list[tuple[int, bool, str]]:
    """Every ``python`` block of a page: (line number, runnable?, code)."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        if match.group("lang") != "python":
            continue
        before = text[: match.start()].rstrip().splitlines()
        runnable = bool(before) and before[-1].strip() == MARK
        line = text.count("\n", 0, match.start()) + 2
        code = "\n".join(
            row[len(match.group("indent")) :] for row in match.group("body").splitlines()
        )
        blocks.append((line, runnable, code))
    return blocks


def all_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def test_mkdocs_build_is_strict_and_clean(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "WARNING" not in output, output
    for page in ("index", "quickstart", "lifecycle", "reference", "seed"):
        built = tmp_path / "site" / ("index.html" if page == "index" else f"{page}/index.html")
        assert built.is_file(), f"{page} was not built"


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_runnable_blocks_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = [(line, code) for line, runnable, code in python_blocks(DOCS / page) if runnable]
    assert blocks, f"docs/{page} has no {MARK} block"
    monkeypatch.chdir(tmp_path)  # a sample that makes an SQLite file makes it here
    namespace: dict[str, object] = {"__name__": f"docs_{page.removesuffix('.md')}"}
    for line, code in blocks:
        compiled = compile(code, f"docs/{page}:{line}", "exec")
        exec(compiled, namespace)  # our own docs, run on purpose


@pytest.mark.parametrize("page", [page.name for page in all_pages()])
def test_every_python_block_parses(page: str) -> None:
    for line, runnable, code in python_blocks(DOCS / page):
        if runnable:
            assert page in RUNNABLE_PAGES, f"docs/{page}:{line} is marked runnable but never run"
        ast.parse(code, f"docs/{page}:{line}")


@pytest.mark.parametrize("module", ["amo_oauth", "amo_oauth.testing", "amo_oauth.web"])
def test_reference_covers_every_public_name(module: str) -> None:
    reference = (DOCS / "reference.md").read_text(encoding="utf-8")
    public = {name for name in importlib.import_module(module).__all__ if not name.startswith("_")}
    missing = {
        name
        for name in public
        if f"::: {module}.{name}\n" not in reference and f"`{name}`" not in reference
    }
    assert not missing, f"missing from docs/reference.md: {sorted(missing)}"


def test_nav_lists_every_page() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in all_pages():
        assert f" {page.name}" in config, f"docs/{page.name} is not in mkdocs.yml's nav"
