"""``Request`` and ``Response``: the framework-neutral shapes the handlers speak."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Iterable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import parse_qsl

import attrs

__all__ = [
    "Headers",
    "HeadersInput",
    "Pairs",
    "QueryInput",
    "Request",
    "Response",
    "cookie_pairs",
    "media_type",
    "read_body",
    "read_cookie",
    "weighted",
]

#: Name/value pairs in arrival order; repeated names are kept (``single_values`` rejects them).
Pairs = tuple[tuple[str, str], ...]
Headers = Pairs

#: What ``Request(query=...)`` accepts: the raw query string (``str`` or ``bytes``, as WSGI and
#: ASGI hand it over), a mapping (of text, or of lists of text), or name/value pairs.
QueryInput = str | bytes | Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]
#: What ``Request(headers=...)`` and ``Response(headers=...)`` accept.
HeadersInput = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]


def _text(value: str | bytes) -> str:
    # Header bytes are latin-1 on the wire (RFC 9110); decoding latin-1 never fails.
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _utf8(latin: str) -> str:
    return latin.encode("latin-1").decode("utf-8", "replace")


def _query(value: QueryInput) -> Pairs:
    """Parse a query into pairs. Never raises: undecodable bytes become U+FFFD, which no valid
    code or state contains, so such a value is refused further on as a 4xx."""
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes):
        # latin-1 maps bytes to code points one to one, raw or %-escaped, so the UTF-8 decoding
        # below sees exactly the bytes that were sent.
        pairs = parse_qsl(value.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
        return tuple((_utf8(key), _utf8(item)) for key, item in pairs)
    if isinstance(value, Mapping):
        items: list[tuple[str, str]] = []
        for key, raw in value.items():
            values = [raw] if isinstance(raw, str) else list(raw)
            items.extend((str(key), str(item)) for item in values)
        return tuple(items)
    return tuple((str(key), str(item)) for key, item in value)


def _headers(value: HeadersInput) -> Headers:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple((_text(name).lower(), _text(item)) for name, item in items)


def _upper(value: str) -> str:
    return value.upper()


def _size(body: bytes) -> str:
    return f"<{len(body)} bytes>"


def weighted(header: str, limit: int = 32) -> list[tuple[str, float]]:
    """An ``Accept``-style header as (lower-cased token, weight) pairs, best first.

    Unparsable weights count as 0; ties keep the header's order; only the first ``limit``
    items are read, so a huge header costs nothing.
    """
    items: list[tuple[float, int, str]] = []
    for index, item in enumerate(header.split(",")[:limit]):
        token, *params = item.split(";")
        quality = 1.0
        for param in params:
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if token.strip():
            items.append((-quality, index, token.strip().lower()))
    return [(token, -negative) for negative, _, token in sorted(items)]


def media_type(request: Request) -> str | None:
    """The request's ``Content-Type`` without parameters, lower-cased; None when absent."""
    value = request.header("content-type")
    return value.split(";")[0].strip().lower() if value is not None else None


#: What RFC 6265 §5.2 trims around a cookie's name and value: SP and HTAB, nothing else.
_COOKIE_BLANKS: Final = " \t"


def cookie_pairs(headers: Headers) -> Pairs:
    """Every (name, value) pair of the request's ``Cookie`` headers, in arrival order.

    One parser for every adapter: each hands over the raw header(s), never its framework's
    parsed cookies, whose trimming and unquoting differ. Pairs are split on ``;`` only (never
    on ``,``: a value may hold one, and a WSGI server joins several ``Cookie`` headers with
    ``,``, so a pair after it stays inside the value before it). Name and value lose SP and
    HTAB around them; a value in double quotes loses that one pair (RFC 6265 §4.1.1). A pair
    without ``=`` or with an empty name is skipped.
    """
    pairs: list[tuple[str, str]] = []
    for header_value in (value for key, value in headers if key == "cookie"):
        for part in header_value.split(";"):
            name, sep, value = part.partition("=")
            name, value = name.strip(_COOKIE_BLANKS), value.strip(_COOKIE_BLANKS)
            if sep and name:
                pairs.append((name, _unquoted(value)))
    return tuple(pairs)


def read_cookie(headers: HeadersInput, name: str) -> str | None:
    """The value of your app's own cookie ``name`` (a session), read exactly; None when unsure.

    For a cookie the app itself sets, e.g. its session (RFC 6265 §5.2 parsing, as
    ``Request.cookie``). Give it the raw request headers, never the framework's parsed cookies:
    Starlette's and Django's parsers strip U+00A0 around a name and keep the last of a repeated
    one, Werkzeug's keeps the first, so a page on a sibling subdomain that plants
    ``session=<its own>; Domain=<your domain>`` (or ``\xa0session=``) replaces yours there.

    Args:
        headers: the request's headers as name/value pairs (``str`` or latin-1 ``bytes``, as
            ASGI and WSGI hand them over) or a mapping; only ``Cookie`` is read.
        name: the cookie's exact name, e.g. ``__Host-session``.

    Returns:
        The value, raw as sent; None when no cookie is named ``name``, when ``name`` comes more
        than once, or when another cookie's name is ``name`` with bytes around it that
        ``str.strip`` removes (U+00A0, U+0085, LF, ...): which one its owner set cannot be told,
        so treat None as "signed out". Never raises.
    """
    near = [(key, value) for key, value in cookie_pairs(_headers(headers)) if key.strip() == name]
    return near[0][1] if len(near) == 1 and near[0][0] == name else None


def _unquoted(value: str) -> str:
    quoted = len(value) >= 2 and value[0] == value[-1] == '"'
    return value[1:-1] if quoted else value


def _find(headers: Headers, name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in headers if key.lower() == wanted), None)


@attrs.frozen
class Request:
    """An HTTP request as the handlers see it.

    The query, headers and body carry codes, states and session cookies, so they are left out
    of the repr.

    Args:
        method: the HTTP method (upper-cased).
        path: the request path, e.g. ``/api/amo-crm/callback``.
        query: the raw query string (``str``/``bytes``), a mapping or name/value pairs; kept
            as pairs so a repeated name can be refused.
        headers: a mapping or pairs; names are lower-cased.
        body: the raw body, at most ``max_body + 1`` bytes of it (adapters stop reading there).
        native: the framework's own request object, for the app's ``connection_id`` callable
            (``starlette.requests.Request`` under ``amo_oauth.fastapi``, ``flask.request``
            under ``amo_oauth.flask``); ignored by the handlers.
        peer: the address of the client at the other end of the connection, as the server
            saw it (a proxy's, behind one), or None when unknown; the adapters fill it. The
            per-source bound on code exchanges keys anonymous callers by it.
    """

    method: str = attrs.field(converter=_upper)
    path: str
    query: Pairs = attrs.field(default=(), converter=_query, repr=False)
    headers: Headers = attrs.field(default=(), converter=_headers, repr=False)
    body: bytes = attrs.field(default=b"", repr=_size)
    native: Any = attrs.field(default=None, eq=False, repr=False)
    peer: str | None = attrs.field(default=None, kw_only=True, repr=False)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        return _find(self.headers, name)

    def param(self, name: str) -> str | None:
        """The first value of query parameter ``name``, or None."""
        return next((value for key, value in self.query if key == name), None)

    def cookie(self, name: str) -> str | None:
        """The value of cookie ``name`` from the ``Cookie`` header(s), or None.

        Names are compared exactly, as RFC 6265 §5.2 parses a pair (only SP and HTAB trimmed):
        a name with any other byte around it (U+00A0 or U+0085, which a sibling subdomain can
        plant and ``str.strip`` would remove) never matches. A name sent more than once answers
        None: which of the two its owner set cannot be told. Raw, as sent: a signed session
        cookie still has to be verified by the app.
        """
        values = [value for key, value in cookie_pairs(self.headers) if key == name]
        return values[0] if len(values) == 1 else None


@attrs.frozen
class Response:
    """An HTTP response for the adapter to send as is.

    Args:
        status: the status code.
        headers: name/value pairs (``Content-Type`` included); a name may repeat
            (``Set-Cookie``), so adapters must send pairs, never a dict of them.
        body: the encoded body.
    """

    status: int
    headers: Headers = attrs.field(default=(), converter=_headers)
    body: bytes = attrs.field(default=b"", repr=_size)

    @classmethod
    def json(
        cls, status: int, payload: Mapping[str, object], headers: HeadersInput = ()
    ) -> Response:
        """A JSON response (UTF-8, ASCII-escaped, so no byte of it can confuse a sniffer).

        Args:
            status: the status code.
            payload: a JSON-serializable object.
            headers: extra headers.

        Returns:
            The response with ``Content-Type: application/json``.
        """
        body = json.dumps(payload, separators=(",", ":")).encode("ascii")
        return cls(status, [("content-type", "application/json"), *_headers(headers)], body)

    @classmethod
    def html(cls, status: int, text: str, headers: HeadersInput = ()) -> Response:
        """An HTML response encoded as UTF-8.

        Args:
            status: the status code.
            text: the page; the caller escapes what it interpolates.
            headers: extra headers.

        Returns:
            The response with ``Content-Type: text/html; charset=utf-8``.
        """
        body = text.encode("utf-8", "replace")
        return cls(status, [("content-type", "text/html; charset=utf-8"), *_headers(headers)], body)

    @classmethod
    def redirect(cls, location: str, headers: HeadersInput = ()) -> Response:
        """A ``302 Found`` to ``location`` with an empty body."""
        return cls(302, [("location", location), *_headers(headers)])

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive), or None."""
        return _find(self.headers, name)

    def with_headers(self, headers: HeadersInput) -> Response:
        """This response with ``headers`` added where the name is not already set."""
        have = {name for name, _ in self.headers}
        extra = [(name, value) for name, value in _headers(headers) if name not in have]
        return attrs.evolve(self, headers=(*self.headers, *extra))

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (for tests and logs of non-secret responses)."""
        return self.body.decode("utf-8", "replace")


async def read_body(chunks: AsyncIterable[bytes], limit: int) -> bytes:
    """Read a streamed body, stopping after ``limit + 1`` bytes.

    That is enough for the handlers to answer 413 without holding an oversized body.

    Args:
        chunks: e.g. Starlette's ``request.stream()``.
        limit: the handlers' ``max_body``.

    Returns:
        The body, or its first ``limit + 1`` bytes.
    """
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            break
    return bytes(body[: limit + 1])
