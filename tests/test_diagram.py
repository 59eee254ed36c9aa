"""The committed lifecycle page is generated from the table; a stale one fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from amo_oauth._diagram import lifecycle_markdown, mermaid
from amo_oauth._lifecycle import TABLE
from amo_oauth.cli import main

PAGE = Path(__file__).resolve().parents[1] / "docs" / "lifecycle.md"


def test_committed_lifecycle_page_is_current() -> None:
    assert PAGE.read_text(encoding="utf-8") == lifecycle_markdown(), (
        "docs/lifecycle.md is stale: run `amo-oauth diagram --markdown > docs/lifecycle.md`"
    )


def test_diagram_draws_every_transition_and_no_noop() -> None:
    drawn = mermaid()
    for rule in TABLE:
        if rule.dest is None:
            continue
        for source in rule.sources:
            arrow = f"{source.name} --> {rule.dest.name}: "
            line = next(line for line in drawn.splitlines() if line.strip().startswith(arrow))
            assert rule.event in line
    assert "[internal]" not in drawn
    assert drawn.startswith("---\ntitle: amo_oauth connection lifecycle\n---\nstateDiagram-v2\n")


def test_page_lists_every_rule() -> None:
    page = lifecycle_markdown()
    assert page.count("\n| `") == len(TABLE)


def test_cli_prints_the_diagram(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram"]) == 0
    assert capsys.readouterr().out == mermaid()
