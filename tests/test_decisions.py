"""Every lifecycle decision lives in the table: the flows ask ``_state.step`` and act on its
answer, and every reason slug the library writes is one of the closed set in ``_reasons``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from amo_oauth._reasons import CONNECTION_ERRORS, NOT_CONNECTED, REJECTIONS, WEB_REFUSALS, Reason

SRC = Path(__file__).resolve().parents[1] / "src" / "amo_oauth"
FLOW_MODULES = (
    "_flows.py",
    "_flow_records.py",
    "_flow_codes.py",
    "_flow_tokens.py",
    "_flow_verify.py",
)
#: What a record holds that only the table may decide on.
DECIDED_BY_THE_TABLE = frozenset({"state", "lease", "tokens", "error"})


def _tests_of(tree: ast.AST) -> list[ast.expr]:
    """Every expression a branch is taken on: if/while/ternary/assert tests, comprehension
    filters, and both sides of ``and``/``or``."""
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If | ast.While | ast.IfExp | ast.Assert):
            found.append(node.test)
        elif isinstance(node, ast.comprehension):
            found.extend(node.ifs)
        elif isinstance(node, ast.BoolOp):
            found.extend(node.values)
    return found


def _decided_attributes(expression: ast.expr) -> set[str]:
    return {
        node.attr
        for node in ast.walk(expression)
        if isinstance(node, ast.Attribute) and node.attr in DECIDED_BY_THE_TABLE
    }


@pytest.mark.parametrize("module", FLOW_MODULES)
def test_the_flows_never_branch_on_what_the_table_decides(module: str) -> None:
    tree = ast.parse((SRC / module).read_text())
    offending = [
        (test.lineno, sorted(_decided_attributes(test)))
        for test in _tests_of(tree)
        if _decided_attributes(test)
    ]
    assert offending == []


def test_the_check_can_fail() -> None:
    branchy = ast.parse("if record.state is S.CONNECTED and record.lease:\n    pass\n")
    assert {a for test in _tests_of(branchy) for a in _decided_attributes(test)} == {
        "state",
        "lease",
    }


# -- reasons ---------------------------------------------------------------------------------

#: Callables taking a reason slug: the slug's position, and the set it must be in.
_SLUG_CALLS = {
    "CallbackRejected": (0, REJECTIONS),
    "ErrorInfo": (0, CONNECTION_ERRORS),
    "ReauthorizationRequired": (1, NOT_CONNECTED),
    "Refusal": (1, WEB_REFUSALS),
    "_refuse": (3, WEB_REFUSALS),
}


def _slugs_written() -> list[tuple[str, int, str, str]]:
    """(module, line, callable, slug) for every string literal handed to a slug-taking call,
    and every literal stored under an ``"error"`` key of a dict."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in _SLUG_CALLS:
                    position = _SLUG_CALLS[name][0]
                    arg = node.args[position] if len(node.args) > position else None
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        found.append((path.name, node.lineno, name, arg.value))
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "error"
                        and isinstance(value, ast.Constant)
                        and isinstance(value.value, str)
                    ):
                        found.append((path.name, node.lineno, "error", value.value))
    return found


def test_every_slug_written_in_the_source_is_in_the_closed_set() -> None:
    written = _slugs_written()
    assert len(written) > 10  # the scan finds the library's slugs at all
    allowed = {name: slugs for name, (_, slugs) in _SLUG_CALLS.items()} | {"error": WEB_REFUSALS}
    strays = [entry for entry in written if entry[3] not in allowed[entry[2]]]
    assert strays == []


def test_every_reason_is_documented() -> None:
    docs = "\n".join(p.read_text() for p in (SRC.parents[1] / "docs").glob("*.md"))
    missing = [reason.value for reason in Reason if f"`{reason.value}`" not in docs]
    assert missing == []


def test_errors_refuse_a_slug_outside_the_set() -> None:
    from amo_oauth import CallbackRejected, ReauthorizationRequired

    with pytest.raises(ValueError, match="rejection reason"):
        CallbackRejected("nope")
    with pytest.raises(ValueError, match="reauthorization reason"):
        ReauthorizationRequired("u", "nope")
