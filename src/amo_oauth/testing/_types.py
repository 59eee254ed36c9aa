"""Small public result types shared by the fake's core, transports and server."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, Protocol

import attrs

FaultKind = Literal[
    "500", "html", "timeout_before", "lost_answer", "429", "403_html", "slow_body", "override"
]
"""What `FakeAmoCRM.fail_next` can inject; see its docstring."""


@attrs.frozen
class RawJSON:
    """JSON text put verbatim into a fake answer (see `fail_next("override", fields=...)`).

    For values Python's json module cannot produce, e.g. `RawJSON("1e400")` (a number no
    double holds) or `RawJSON("1e13")` (a float-looking integer).

    Attributes:
        text: the JSON value's text, inserted as is (not validated).
    """

    text: str


Dropped = Literal["timeout_before", "lost_answer"]


@attrs.frozen
class FakeResponse:
    """The fake's answer to one request, before any transport turns it into HTTP.

    Attributes:
        status: the HTTP status; 0 when `dropped == "timeout_before"` (nothing was answered).
        headers: response headers as (name, value) pairs.
        body: the raw body (kept out of repr: it can hold tokens).
        delay: seconds the transport waits before delivering the answer (the `latency` knob).
            The work is already done by then, which is what makes lost answers realistic.
        dropped: None for a normal answer. "timeout_before": the request never reached the
            server (transports raise httpx.ConnectTimeout). "lost_answer": the server did the
            work but the answer is lost (transports raise httpx.ReadTimeout; the loopback
            server closes the connection without answering).
        trickle: None, or (bytes per chunk, seconds before each chunk): the loopback server
            sends the headers at once and the body in such chunks ("slow_body" fault). The
            in-process transports deliver the whole body at once.
    """

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = attrs.field(default=b"", repr=False)
    delay: float = 0.0
    dropped: Dropped | None = None
    trickle: tuple[int, float] | None = None

    def header(self, name: str) -> str | None:
        """Return the first header called `name` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    def json(self) -> Any:
        """Decode the body as JSON."""
        return json.loads(self.body)


@attrs.frozen
class RequestRecord:
    """One request the fake saw. No query, body or headers: those carry secrets.

    Attributes:
        method: the HTTP method.
        host: the host the request was addressed to (lower-case, no port).
        path: the path, without the query string.
        status: the status answered, or None when nothing was answered (timeout_before).
        dropped: the injected network fault, if any (see FakeResponse.dropped).
    """

    method: str
    host: str
    path: str
    status: int | None
    dropped: Dropped | None = None


class HostRoute(Protocol):
    """What a routing transport needs to know: which hosts the fake answers for."""

    def serves_host(self, host: str) -> bool: ...


class Handler(HostRoute, Protocol):
    """What the transports and the WSGI server need from a fake server."""

    def handle(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> FakeResponse: ...


class Issued(NamedTuple):
    """What a fake issued (`FakeReadings.issued`): each kind in the order it was issued."""

    codes: tuple[str, ...]
    access_tokens: tuple[str, ...]
    refresh_tokens: tuple[str, ...]
