"""The faults a test scripts with `FakeAmoCRM.fail_next`: queued, matched, and applied.

A fault either answers instead of the request (nothing processed: a 500 page, HTML, a 429, an
nginx 403, a request that never arrives) or changes the real answer after the work is done (a
lost answer, overridden fields, a trickled body). The caller holds the fake's lock.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Mapping
from typing import Any, Final, get_args

import attrs

from . import _pages
from . import _protocol as P
from ._accounts import FakeAccount
from ._types import Dropped, FakeResponse, FaultKind
from ._wire import Request, html_answer, problem

ENDPOINTS: Final = ("token", "api", "lookup")
_FAULT_KINDS: Final = frozenset(get_args(FaultKind))
# Faults answered instead of the request (nothing processed); the others change a real answer.
_SHORT_CIRCUIT: Final = frozenset({"500", "html", "timeout_before", "429", "403_html"})


@attrs.define
class Fault:
    """One scripted fault: its kind, how many more requests it applies to, and which ones."""

    kind: FaultKind
    remaining: int
    endpoint: str
    grant: str | None
    path: str | None = None
    account: FakeAccount | None = None
    trickle: tuple[int, float] | None = None
    fields: Mapping[str, Any] | None = None

    def matches(self, endpoint: str, grant: str | None, request: Request) -> bool:
        """Whether this fault applies to `request` at `endpoint` (of grant type `grant`)."""
        return (
            self.endpoint == endpoint
            and self.grant in (None, grant)
            and self.path in (None, request.path)
            and (self.account is None or self.account.host == request.host)
        )

    @property
    def answers_instead(self) -> bool:
        """Whether the fault is the answer, the request left unprocessed."""
        return self.kind in _SHORT_CIRCUIT

    @property
    def outcome(self) -> str:
        """The outcome counted for a request this fault answered instead."""
        return f"injected_{self.kind}"


def check_fault(
    kind: FaultKind,
    times: int,
    grant: str | None,
    endpoint: str,
    fields: Mapping[str, Any] | None,
    chunk_size: int,
    every: float,
) -> None:
    """Refuse `fail_next` arguments that do not make a fault (see its docstring).

    Raises:
        ValueError: an unknown kind, grant or endpoint, times < 1, or arguments that do not
            fit the kind.
    """
    if kind not in _FAULT_KINDS or endpoint not in ENDPOINTS or times < 1:
        raise ValueError(f"bad fault: kind={kind!r} endpoint={endpoint!r} times={times}")
    if grant is not None and (grant not in P.GRANTS or endpoint != "token"):
        raise ValueError(f"bad grant filter {grant!r} for endpoint {endpoint!r}")
    if kind == "override" and fields is None:
        raise ValueError("kind='override' needs the fields to merge into the answer")
    if fields is not None and kind not in ("override", "429"):
        # A 429's body takes fields too, e.g. {"retry_after": 1} for a short pause.
        raise ValueError("fields go with kind='override' or '429', and only with them")
    if kind == "slow_body" and (chunk_size < 1 or every < 0):
        raise ValueError("slow_body needs chunk_size >= 1 and every >= 0")


class Faults:
    """The queue of scripted faults; the first match applies, and a used-up one leaves."""

    def __init__(self) -> None:
        self._queue: list[Fault] = []
        self.injected: collections.Counter[str] = collections.Counter()
        """How many times each kind fired."""

    def add(self, fault: Fault) -> None:
        """Queue `fault` behind those already scripted."""
        self._queue.append(fault)

    def take(self, endpoint: str, grant: str | None, request: Request) -> Fault | None:
        """The first fault matching `request`, counted as fired; None when none matches."""
        for fault in self._queue:
            if fault.matches(endpoint, grant, request):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._queue.remove(fault)
                self.injected[fault.kind] += 1
                return fault
        return None


def instead(kind: FaultKind) -> FakeResponse:
    """The answer a fault that answers instead of the request gives."""
    if kind == "500":
        return html_answer(500, _pages.SERVER_ERROR_PAGE)
    if kind == "html":
        return html_answer(200, _pages.HTML_INSTEAD_OF_JSON)
    if kind == "429":
        return problem(429, P.API_TOO_MANY)
    if kind == "403_html":
        return FakeResponse(403, (("content-type", "text/html"),), _pages.NGINX_FORBIDDEN)
    return FakeResponse(0, dropped="timeout_before")


def finish(answer: FakeResponse, fault: Fault | None, latency: float) -> FakeResponse:
    """`answer` as delivered: changed by `fault` (when it changes answers) and delayed."""
    if answer.dropped == "timeout_before":
        return answer  # never arrived, so nothing to wait for
    kind = None if fault is None else fault.kind
    if fault is not None and fault.fields is not None:
        answer = _overridden(answer, fault.fields)
    if fault is not None and fault.trickle is not None:
        answer = _trickled(answer, fault.trickle)
    dropped: Dropped | None = "lost_answer" if kind == "lost_answer" else None
    return attrs.evolve(answer, delay=latency, dropped=dropped)


def _overridden(answer: FakeResponse, fields: Mapping[str, Any]) -> FakeResponse:
    """`answer` with `fields` merged into its JSON object body (other bodies are kept)."""
    try:
        payload = json.loads(answer.body)
    except ValueError:
        return answer
    if not isinstance(payload, dict):
        return answer
    return attrs.evolve(answer, body=P.dump_json(payload | dict(fields)))


def _trickled(answer: FakeResponse, trickle: tuple[int, float]) -> FakeResponse:
    # An explicit Content-Length: the loopback server then streams the chunks as they come.
    headers = (*answer.headers, ("content-length", str(len(answer.body))))
    return attrs.evolve(answer, headers=headers, trickle=trickle)
