"""Every ``amo-oauth`` command's synopsis, in docs/operations.md and in cli.py's docstring,
names exactly the options its parser takes (``amo-oauth COMMAND --help``).

A reviewer found ``refresh-due``'s ``[--limit N]`` missing from operations.md and ``status``'s
``--widget`` missing from the module docstring: the two synopses are checked against the parser,
so neither can drift again. ``--db`` (the older spelling of ``--store sqlite:///``) is
documented in prose beside them and is not required in each synopsis.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from amo_oauth import cli

ROOT = Path(__file__).resolve().parent.parent
#: Options each synopsis may leave to the prose around it.
IN_PROSE = {"--db", "--help"}


def _commands() -> dict[str, set[str]]:
    """Each command's long options, from the parser itself."""
    parser = cli._parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: {
            option
            for action in command._actions
            for option in action.option_strings
            if option.startswith("--")
        }
        for name, command in commands.choices.items()
    }


def _synopses(text: str) -> dict[str, set[str]]:
    """The options each ``amo-oauth COMMAND ...`` entry of a synopsis block mentions (its
    continuation lines included)."""
    found: dict[str, set[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        start = re.match(r"amo-oauth ([a-z-]+)", line)
        if start:
            current = start[1]
            found.setdefault(current, set())
        elif not line.startswith(" "):
            current = None
        if current is not None:
            found[current] |= set(re.findall(r"--[a-z][a-z-]*", line))
    return found


def _operations_synopsis() -> str:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    block = re.search(r"## The `amo-oauth` command\n.*?```text\n(.*?)```", text, re.S)
    assert block is not None
    return block[1]


def _docstring_synopsis() -> str:
    assert cli.__doc__ is not None
    return cli.__doc__.split("\n\n")[1]


@pytest.mark.parametrize("where", ["operations.md", "cli.py"])
def test_each_synopsis_names_exactly_the_options_of_its_command(where: str) -> None:
    text = _operations_synopsis() if where == "operations.md" else _docstring_synopsis()
    documented, parsed = _synopses(text), _commands()
    assert set(documented) == set(parsed), where
    for name, options in parsed.items():
        assert documented[name] - options == set(), (where, name, "no such option")
        assert options - IN_PROSE - documented[name] == set(), (where, name, "undocumented")
