"""Every lifecycle decision lives in the table: the flows ask ``_lifecycle.step`` and act on its
answer, and every reason slug the library writes is one of the closed set in ``_reasons``.

Two guards keep the flows off what the table decides on (a record's ``status``, ``lease``,
``tokens`` and ``error``). Types: the code, token and verification flows hold a ``RecordView``,
which has none of the four, so mypy rejects reading one; only ``_flow_records`` opens a view.
Source: where a whole record is held (``_flow_records``) or a view hands out a ``Connection``,
no branch of any flow may read those fields, by whatever name the record goes, through a record
method that reads them, or through a local name assigned from such a read.
"""

from __future__ import annotations

import ast
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

from amo_oauth._reasons import CONNECTION_ERRORS, NOT_CONNECTED, REJECTIONS, WEB_REFUSALS, Reason
from amo_oauth._record_view import RecordView
from amo_oauth._records import ConnectionRecord, ConnectionStatus, ErrorInfo, Lease, TokenSet

SRC = Path(__file__).resolve().parents[1] / "src" / "amo_oauth"
FLOW_MODULES = (
    "_flows.py",
    "_flow_records.py",
    "_flow_codes.py",
    "_flow_connections.py",
    "_flow_tokens.py",
    "_flow_verify.py",
)
#: The flows that see records only as views: everything but the record primitives.
VIEW_ONLY = ("_flow_codes.py", "_flow_connections.py", "_flow_tokens.py", "_flow_verify.py")
#: What a record holds that only the table may decide on.
DECIDED_BY_THE_TABLE = frozenset({"status", "lease", "tokens", "error"})
#: Builtins whose result is their argument's value, transformed: a read passes through them.
_PASS_THROUGH = frozenset(
    {"abs", "all", "any", "bool", "float", "int", "len", "list", "max", "min", "sorted", "str"}
)


def _derived_members() -> frozenset[str]:
    """The members of ``ConnectionRecord`` and ``Connection`` that read a decided field, directly
    or through each other (``live_lease``, ``api_credentials``, ``is_connected``, ...): calling
    one reads those fields. Found in ``_records.py``, so a new one is covered at once."""
    tree = ast.parse((SRC / "_records.py").read_text())
    members = {
        node.name: node
        for cls in tree.body
        if isinstance(cls, ast.ClassDef) and cls.name in ("ConnectionRecord", "Connection")
        for node in cls.body
        if isinstance(node, ast.FunctionDef)
    }
    derived: set[str] = set()
    while True:
        more = {
            name
            for name, function in members.items()
            if name not in derived and _self_reads(function) & (DECIDED_BY_THE_TABLE | derived)
        }
        if not more:
            return frozenset(derived)
        derived |= more


def _self_reads(function: ast.FunctionDef) -> set[str]:
    return {
        node.attr
        for node in ast.walk(function)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }


DERIVED = _derived_members()


class _Reads:
    """Whether an expression reads a decided field, given the local names that hold one."""

    def __init__(self, tainted: set[str]) -> None:
        self.tainted = tainted

    def __call__(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in self.tainted
        if isinstance(node, ast.Attribute):
            decided = node.attr in DECIDED_BY_THE_TABLE or node.attr in DERIVED
            return decided or self(node.value)
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Lambda | ast.FunctionDef | ast.AsyncFunctionDef):
            return False  # a scope of its own, checked on its own
        return any(self(child) for child in ast.iter_child_nodes(node))

    def _call(self, call: ast.Call) -> bool:
        arguments = [*call.args, *(keyword.value for keyword in call.keywords)]
        if isinstance(call.func, ast.Name) and call.func.id == "getattr":
            name = arguments[1] if len(arguments) > 1 else None
            literal = isinstance(name, ast.Constant) and name.value in DECIDED_BY_THE_TABLE
            return literal or any(self(argument) for argument in arguments)
        if isinstance(call.func, ast.Name) and call.func.id in _PASS_THROUGH:
            return any(self(argument) for argument in arguments)
        # A method of what holds a decided field (or one that reads it), or a call whose value
        # is its own: the arguments a function takes are its business, checked where it lives.
        return self(call.func)


def _scopes(tree: ast.AST) -> Iterator[ast.AST]:
    """The module and every function in it: aliases are followed within one scope."""
    yield tree
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield node


def _own_nodes(scope: ast.AST) -> Iterator[ast.AST]:
    """The nodes of ``scope``, not those of the functions nested in it."""
    for child in ast.iter_child_nodes(scope):
        if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield child
            yield from _own_nodes(child)


def _assignments(scope: ast.AST) -> Iterator[tuple[ast.expr, ast.AST]]:
    """(target, value) for every binding of a local name in ``scope``."""
    for node in _own_nodes(scope):
        if isinstance(node, ast.Assign):
            yield from ((target, node.value) for target in node.targets)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.NamedExpr) and node.value:
            yield node.target, node.value
        elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
            yield node.target, node.iter
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            yield node.optional_vars, node.context_expr


def _tainted(scope: ast.AST) -> set[str]:
    """The local names assigned (to a fixpoint) from an expression reading a decided field."""
    tainted: set[str] = set()
    reads = _Reads(tainted)
    while True:
        more = {
            name.id
            for target, value in _assignments(scope)
            if reads(value)
            for name in ast.walk(target)
            if isinstance(name, ast.Name) and name.id not in tainted
        }
        if not more:
            return tainted
        tainted |= more


def _tests_of(scope: ast.AST) -> list[ast.AST]:
    """Every expression a branch is taken on in ``scope``: if/while/ternary/assert tests,
    comprehension filters, match subjects and guards, the operands of ``and``/``or``/``not``,
    and every comparison."""
    found: list[ast.AST] = []
    for node in _own_nodes(scope):
        if isinstance(node, ast.If | ast.While | ast.IfExp | ast.Assert):
            found.append(node.test)
        elif isinstance(node, ast.comprehension):
            found.extend(node.ifs)
        elif isinstance(node, ast.BoolOp):
            found.extend(node.values)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            found.append(node.operand)
        elif isinstance(node, ast.Compare):
            found.append(node)
        elif isinstance(node, ast.Match):
            found.append(node.subject)
        elif isinstance(node, ast.match_case) and node.guard is not None:
            found.append(node.guard)
    return found


def branches_on_decided_fields(source: str) -> list[str]:
    """The branches (as source text) of ``source`` that read what the table decides."""
    offending: dict[tuple[int, str], None] = {}  # a comparison in an if is found twice
    for scope in _scopes(ast.parse(source)):
        reads = _Reads(_tainted(scope))
        for test in _tests_of(scope):
            if reads(test):
                offending[getattr(test, "lineno", 0), ast.unparse(test)] = None
    return [text for _, text in offending]


@pytest.mark.parametrize("module", FLOW_MODULES)
def test_the_flows_never_branch_on_what_the_table_decides(module: str) -> None:
    assert branches_on_decided_fields((SRC / module).read_text()) == []


@pytest.mark.parametrize(
    ("source", "branch"),
    [
        (
            "if record.status is S.CONNECTED and record.lease:\n    pass",
            "record.status is S.CONNECTED",
        ),
        ("while current.tokens is None:\n    pass", "current.tokens is None"),
        ("ok = x.error is None\n", "x.error is None"),
        ("x = 1 if getattr(r, 'lease') else 2\n", "getattr(r, 'lease')"),
        ("assert not claimed.public().is_connected\n", "claimed.public().is_connected"),
        # Through a record method that reads a decided field, and through aliases.
        (
            "def f(r):\n    left = r.lease_seconds_left(now)\n    if left is not None:\n"
            "        pass\n",
            "left is not None",
        ),
        ("def f(r):\n    h, a, _ = r.api_credentials() or ('', '', '')\n", "r.api_credentials()"),
        (
            "def f(r):\n    t = r.tokens\n    fresh = t.is_fresh(now)\n    while fresh:\n"
            "        pass\n",
            "fresh",
        ),
        (
            "def f(r):\n    s = len(r.seen_codes) + bool(r.lease)\n    return [c for c in r if s]",
            "s",
        ),
        ("match r.status:\n    case _:\n        pass\n", "r.status"),
    ],
)
def test_the_check_can_fail(source: str, branch: str) -> None:
    assert branch in branches_on_decided_fields(source)


@pytest.mark.parametrize(
    "source",
    [
        "if record.version and record.key:\n    pass\n",  # what a flow may read
        "def f(r):\n    h, a, _ = r.api_credentials()\n    host = accept(h)\n"
        "    if host is None:\n        pass\n",  # a value of its own, made from a read
        "claims = parsed.state\nif claims is None:\n    pass\n",  # the OAuth state: no status
    ],
)
def test_the_check_lets_what_flows_may_read_pass(source: str) -> None:
    assert branches_on_decided_fields(source) == []


def test_the_record_methods_that_read_decided_fields_are_found() -> None:
    assert {"live_lease", "lease_seconds_left", "tokens_or_raise", "api_credentials"} <= DERIVED
    assert {"public", "not_connected_reason", "is_connected"} <= DERIVED
    assert not {"key", "knows_code", "with_code", "api_url"} & DERIVED


# -- the record view: what types enforce --------------------------------------------------------


def test_a_view_has_none_of_what_the_table_decides() -> None:
    view = RecordView(ConnectionRecord("u1"))
    assert [name for name in DECIDED_BY_THE_TABLE if hasattr(view, name)] == []
    assert not hasattr(view, "tokens_or_raise") and not hasattr(view, "live_lease")


def test_nothing_a_view_hands_out_is_a_decided_field() -> None:
    """No member's type is a status, a lease, a pair, an error or the record itself (the
    public ``Connection`` it reports with is covered by the source check above)."""
    decided = (ConnectionStatus, Lease, TokenSet, ErrorInfo, ConnectionRecord)
    public = [name for name in vars(RecordView) if not name.startswith("_")]
    assert public  # the view is read through these
    for name in public:
        member = vars(RecordView)[name]
        function = member.fget if isinstance(member, property) else member
        returned = typing.get_type_hints(function)["return"]
        parts = typing.get_args(returned) or (returned,)
        assert not any(isinstance(part, type) and issubclass(part, decided) for part in parts)


@pytest.mark.parametrize("module", VIEW_ONLY)
def test_only_the_record_primitives_open_a_view(module: str) -> None:
    """The flows other than ``_flow_records`` never name a whole record, the table's step, or
    what a view or a decision holds: they act on ``Records.decide`` and hold views."""
    tree = ast.parse((SRC / module).read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert imported & {"ConnectionRecord", "step", "Step", "record_of"} == set()
    opened = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in ("_record", "_step")
    }
    assert opened == set()


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
