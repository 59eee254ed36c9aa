"""The lifecycle diagram and rule table, generated from ``TABLE`` (docs/lifecycle.md)."""

from __future__ import annotations

from transitions.extensions.diagrams import GraphMachine

from ._lifecycle import TABLE, rule_transition
from ._records import ConnectionStatus

__all__ = ["lifecycle_markdown", "mermaid"]

_INTRO = """\
# The connection lifecycle

<!-- Generated from amo_oauth._lifecycle.TABLE by `amo-oauth diagram --markdown`; do not edit.
     tests/test_diagram.py fails when this page is stale. -->

Every connection has one of five statuses. Events move it along the arrows; an event with no
arrow from the connection's status is a documented no-op (the table below), never an exception.
A guard in brackets must hold for the arrow to apply.
"""


class _Drawing:
    status: ConnectionStatus


def mermaid() -> str:
    """The state diagram (transitions only) as Mermaid text."""
    # A diagram is drawn for a model; a throwaway one stands in (the table itself has none).
    model = _Drawing()
    GraphMachine(
        model=model,
        states=ConnectionStatus,
        transitions=[rule_transition(rule) for rule in TABLE if rule.dest is not None],
        initial=ConnectionStatus.DISCONNECTED,
        auto_transitions=False,
        model_attribute="status",
        graph_engine="mermaid",
        show_conditions=True,
        title="amo_oauth connection lifecycle",
    )
    drawn = str(model.get_graph().draw(None))  # type: ignore[attr-defined]
    return _plain(drawn)


def _plain(drawn: str) -> str:
    """Keep the structure; drop the highlight styling (it marks one model's current status) and
    give the front matter the ``title:`` key Mermaid expects."""
    lines = [line.rstrip() for line in drawn.splitlines()]
    kept = [line for line in lines if not line.lstrip().startswith(("classDef ", "Class "))]
    title = kept.index("---") + 1
    kept[title] = f"title: {kept[title]}"
    return "\n".join(line for i, line in enumerate(kept) if line or kept[i - 1]) + "\n"


def _statuses(rule_sources: tuple[ConnectionStatus, ...]) -> str:
    if set(rule_sources) == set(ConnectionStatus):
        return "any"
    return ", ".join(status.value for status in rule_sources)


def lifecycle_markdown() -> str:
    """The docs page: the diagram, then every rule in the order they are tried."""
    rows = [
        "| event | in | guard | result |",
        "| --- | --- | --- | --- |",
    ]
    for rule in TABLE:
        guard = rule.guard.__name__ if rule.guard else ""
        result = f"-> `{rule.dest.value}`" if rule.dest else f"no-op: `{rule.noop}`"
        rows.append(f"| `{rule.event}` | {_statuses(rule.sources)} | {guard} | {result} |")
    return "\n".join(
        [
            _INTRO,
            "```mermaid",
            mermaid().rstrip(),
            "```",
            "",
            "## Every rule, in the order they are tried",
            "",
            *rows,
            "",
        ]
    )
