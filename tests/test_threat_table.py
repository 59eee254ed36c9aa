"""docs/security.md's RFC 9700 threat table names, row by row, the tests that prove it: each
name must be a test function of ``tests/`` (defined in the file it names, or imported into it),
so that a renamed or deleted test fails here instead of leaving the table claiming a proof that
is gone. The format is written at the top of the table."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SECURITY = TESTS.parent / "docs" / "security.md"
TABLE_HEADING = "## RFC 9700 threat table"
HEADER = ["RFC 9700", "attack", "what stops it", "proven by"]
#: A name in the last cell: `test_x.py::test_y`, or `::test_y` for the file named before it.
_NAME = re.compile(r"`(?P<file>test_\w+\.py)?::(?P<function>test_\w+)`")


def table_rows(text: str) -> list[list[str]]:
    """The table's rows (header and separator left out), each as its stripped cells."""
    section = text.split(TABLE_HEADING, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip().strip("|").split(" | ")] for line in lines]
    assert rows[0] == HEADER, rows[0]
    assert set("".join(rows[1])) <= set("- ")
    return rows[2:]


def named_tests(cell: str) -> list[tuple[str, str]]:
    """The (file, function) pairs a row's last cell names, ``::name`` resolved."""
    named, file = [], None
    for match in _NAME.finditer(cell):
        file = match["file"] or file
        assert file is not None, f"{match[0]} names no file before it"
        named.append((file, match["function"]))
    return named


@functools.cache
def collected_names(file: str) -> frozenset[str]:
    """Test functions a test file defines or imports (pytest collects both)."""
    tree = ast.parse((TESTS / file).read_text(encoding="utf-8"))
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    imported = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    return frozenset(name for name in defined | imported if name.startswith("test_"))


ROWS = table_rows(SECURITY.read_text(encoding="utf-8"))


@pytest.mark.parametrize("row", ROWS, ids=[f"{row[0]} {row[1][:40]}" for row in ROWS])
def test_each_row_names_tests_that_exist(row: list[str]) -> None:
    assert len(row) == len(HEADER), row
    named = named_tests(row[-1])
    if "not applicable" in row[2]:
        assert row[-1] == "—" and not named, row
        return
    assert named, f"the row names no test: {row[1]}"
    # Every backticked item of the cell is a test name: none is missed by a typo in the form.
    assert len(named) == row[-1].count("`") // 2, row[-1]
    for file, function in named:
        assert (TESTS / file).is_file(), f"{file}: no such test file"
        assert function in collected_names(file), f"{file}::{function}: no such test"


def test_the_checker_catches_a_missing_test() -> None:
    row = "| §0 | an attack | a fix | `test_web.py::test_callback_page_headers`, `::test_gone` |"
    text = f"{TABLE_HEADING}\n\n| {' | '.join(HEADER)} |\n| --- | --- | --- | --- |\n{row}\n"
    (parsed,) = table_rows(text)
    named = named_tests(parsed[-1])
    assert named == [("test_web.py", "test_callback_page_headers"), ("test_web.py", "test_gone")]
    assert [function in collected_names(file) for file, function in named] == [True, False]
