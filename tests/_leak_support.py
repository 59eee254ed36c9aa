"""The leak canaries' evidence: what a run saw (log records, answers, reprs, exceptions, printed
output) as texts, and the finder that looks for every canary in every form in them.

A *canary* is a secret of the run, distinctive and unguessable: the client secret and the state
secret the test chooses, the codes and tokens FakeAmoCRM issued (``FakeAmoCRM.issued``), the
tickets and browser bindings the backend handed out, the disconnect hook's signature. A
*finding* names the sink and the canary's kind, never its value: a failing test must not print
the secret it caught.
"""

from __future__ import annotations

import base64
import json
import logging
import traceback
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import quote, quote_plus

import attrs
import httpx

#: A ``LogRecord``'s own attributes: everything else on it came from ``extra=`` or a filter.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_FORMATTER = logging.Formatter("%(name)s %(levelname)s %(message)s")


@attrs.frozen
class Canary:
    """One secret of the run: its kind (``code``, ``access_token``, ...) and value."""

    kind: str
    value: str = attrs.field(repr=False)


@attrs.frozen
class Text:
    """One text a sink produced; ``allowed``: the canary kinds whose place it is (the ticket
    in the ``/connect`` answer that hands it out, the binding in its own ``Set-Cookie``)."""

    sink: str
    text: str = attrs.field(repr=False)
    allowed: frozenset[str] = frozenset()


def forms(value: str | bytes) -> frozenset[str]:
    """``value`` as a log, a page, a URL or a header might carry it: as is, percent-encoded
    (``quote`` and ``quote_plus``), JSON-escaped, ``repr``'d, and base64 (standard and URL-safe)
    at each of the three alignments inside a longer encoded string (the first and the last
    four characters, which depend on the neighbours, dropped). Bytes: also hex."""
    raw = value if isinstance(value, bytes) else value.encode()
    found = {repr(value)[1:-1] if isinstance(value, str) else repr(value)}
    if isinstance(value, str):
        found |= {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]}
    else:
        found |= {raw.hex(), raw.decode("latin-1")}
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * pad + raw).decode("ascii")
            found.add(encoded[4 if pad else 0 : -4])
    return frozenset(form for form in found if len(form) >= 16)


def findings(canaries: Iterable[Canary], texts: Iterable[Text]) -> list[str]:
    """Where any canary shows, in any of its forms: one line per (sink, kind), no value."""
    searched = [(canary, forms(canary.value)) for canary in canaries]
    found: dict[tuple[str, str], None] = {}
    for text in texts:
        for canary, spellings in searched:
            if canary.kind in text.allowed:
                continue
            if any(spelling in text.text for spelling in spellings):
                found[(text.sink, canary.kind)] = None
    return [f"{kind} in {sink}" for sink, kind in found]


class Records(logging.Handler):
    """Every log record that reaches the root logger, kept for the finder; but those of
    ``ignored_thread`` (the test's, whose clients log the URLs they open: a ticket, a code)."""

    def __init__(self, ignored_thread: int | None = None) -> None:
        super().__init__(level=1)
        self.ignored_thread = ignored_thread
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.ignored_thread:
            self.records.append(record)

    def texts(self) -> Iterator[Text]:
        for record in list(self.records):
            yield from record_texts(record)


def record_texts(record: logging.LogRecord) -> Iterator[Text]:
    """A record as every handler could render it: its message, its arguments one by one (what
    uvicorn's access formatter reads), the formatted line with its traceback, and any extra
    attribute (``extra=``) a structured handler would serialise."""
    sink = f"log {record.name}:{record.levelname}"
    yield Text(sink, repr(record.msg))
    yield Text(sink, repr(record.args))
    try:
        yield Text(sink, record.getMessage())
        yield Text(sink, _FORMATTER.format(record))
    except Exception as exc:  # a record that cannot be formatted is still searched, raw
        yield Text(f"{sink} (unformattable: {type(exc).__name__})", str(record.msg))
    for name, value in vars(record).items():
        if name not in _RECORD_FIELDS:
            yield Text(f"{sink} extra {name}", repr(value))


def exception_texts(sink: str, error: BaseException) -> Iterator[Text]:
    """An exception as it is shown: ``str``, ``repr``, every link of its chain (``__cause__``,
    ``__context__``), and the formatted traceback, chain included."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield Text(f"{sink} ({type(link).__name__})", f"{link!s} {link!r} {link.args!r}")
        link = link.__cause__ or link.__context__
    yield Text(f"{sink} traceback", "".join(traceback.format_exception(error)))


@attrs.define
class Answers:
    """Every answer the app and the browser got from the backend (at ``backend``), as texts."""

    backend: str
    texts: list[Text] = attrs.Factory(list)

    def hook(self, who: str) -> Callable[[httpx.Response], None]:
        def record(response: httpx.Response) -> None:
            if not str(response.url).startswith(self.backend):
                return  # the fake's own pages (its redirect carries the code: its place)
            response.read()
            self.texts.extend(answer_texts(who, response))

        return record


def answer_texts(who: str, response: httpx.Response) -> Iterator[Text]:
    """An answer's status line, each header and the body (a page, a deep link, JSON)."""
    request = response.request
    sink = f"{who} {request.method} {request.url.path} -> {response.status_code}"
    hands_out_ticket = request.url.path.endswith("/connect") and "ticket" not in str(request.url)
    for name, value in response.headers.multi_items():
        sets_binding = name.lower() == "set-cookie" and value.startswith(_BINDING_NAMES)
        allowed = frozenset({"binding"}) if sets_binding else frozenset()
        yield Text(f"{sink} header {name}", f"{name}: {value}", allowed)
    body_allowed = frozenset({"ticket"}) if hands_out_ticket else frozenset()
    yield Text(f"{sink} body", response.text, body_allowed)


_BINDING_NAMES = ("amo_oauth_binding=", "__Host-amo_oauth_binding=")


def reprs(sink: str, *objects: object) -> Iterator[Text]:
    """``repr`` and ``str`` of each object the app holds."""
    for index, thing in enumerate(objects):
        yield Text(f"{sink} #{index} {type(thing).__name__}", f"{thing!r} {thing!s}")
