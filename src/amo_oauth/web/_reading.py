"""What the routes read from a request, and the refusals that reading makes.

Each check raises ``Refusal`` (a status and a stable reason slug), which the dispatch in
``_routes.py`` turns into the response: JSON ``{"error": reason}``, or the page for a browser.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from typing import Final
from urllib.parse import parse_qsl, urlsplit

from .._records import check_connection_id
from ._http import Request, media_type, weighted

__all__ = [
    "Refusal",
    "address_network",
    "as_connection_id",
    "check_origin",
    "check_size",
    "client_address",
    "code_fields",
    "origin_of",
    "secrets_fields",
    "wants_json",
]

_MAX_QUERY_PARAMS: Final = 64
# A legacy body holds three fields; a few more are tolerated (an app's own), as in a redirect.
_MAX_FORM_FIELDS: Final = 32
_FORM: Final = "application/x-www-form-urlencoded"
#: What amoCRM's post to ``secrets_uri`` carries that the service reads (protocol notes §7).
_SECRETS_NAMES: Final = ("client_id", "client_secret", "state")


class Refusal(Exception):
    """A request refused with ``status`` and a stable ``reason`` slug, and optionally a
    ``hint`` for the developer (plain text, never a secret) that the JSON answer carries."""

    def __init__(self, status: int, reason: str, hint: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.hint = hint


def check_size(request: Request, max_query: int, max_body: int) -> None:
    """Refuse a query or a body larger than the routes read."""
    query_size = sum(len(key) + len(value) + 2 for key, value in request.query)
    if len(request.query) > _MAX_QUERY_PARAMS or query_size > max_query:
        raise Refusal(414, "query_too_large")
    if len(request.body) > max_body:
        raise Refusal(413, "body_too_large")


def wants_json(request: Request) -> bool:
    """The caller asked for JSON (``?format=json``, or ``Accept: application/json``)."""
    if request.param("format") == "json":
        return True
    accepted = weighted(request.header("accept") or "")
    return any(media == "application/json" and quality > 0 for media, quality in accepted)


def _unique_names(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object's members, refusing a name given twice (json keeps the last one
    silently): which of two values would be meant? The same rule as a form's repeated name."""
    members = dict(pairs)
    if len(members) != len(pairs):
        raise Refusal(400, "malformed")
    return members


def _json_fields(body: bytes) -> Mapping[str, object]:
    try:
        data = json.loads(body, object_pairs_hook=_unique_names)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, absurd nesting or numbers
        raise Refusal(400, "malformed") from None
    if not isinstance(data, dict):
        raise Refusal(400, "malformed")
    return data


def _is_json(media: str | None) -> bool:
    return media is not None and (media == "application/json" or media.endswith("+json"))


#: The port an origin leaves out (WHATWG URL §4.1 "default port"): browsers send
#: ``https://app.example``, never ``https://app.example:443``.
DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of an ``http(s)`` URL, lower-case, an internationalized host in
    its ASCII form, without its scheme's default port: what browsers send as ``Origin``
    (WHATWG HTML §7.5, URL §4.1 and §3.5).

    Raises:
        ValueError: the port is not a number (``urllib.parse``'s own message).
    """
    parts = urlsplit(url)
    scheme, host, port = parts.scheme.lower(), _ascii_host(parts.hostname or ""), parts.port
    host = f"[{host}]" if ":" in host else host
    shown_port = "" if port is None or port == DEFAULT_PORTS.get(scheme) else f":{port}"
    return f"{scheme}://{host}{shown_port}"


def _ascii_host(host: str) -> str:
    """A host as browsers put it in ``Origin``: an internationalized name in its ASCII form
    (``пример.рф`` is ``xn--e1afmkfd.xn--p1ai``), without a trailing dot."""
    host = host.rstrip(".")
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:  # no valid name: kept as given, so it matches no Origin
        return host


def check_origin(request: Request, allowed: frozenset[str]) -> None:
    """Refuse a state-changing request that another site's page could make a browser send.

    An ``Origin`` among the app's allowed origins passes. Otherwise, when ``Sec-Fetch-Site``
    is present, only ``same-origin`` and ``none`` (typed, bookmarked) pass; when it is absent
    (older browsers), any ``Origin`` present (``null`` included) refuses, and so does a
    ``Referer`` from an origin not allowed (a browser that sends neither header still sends
    the page it came from, unless told not to). A request with none of the three is not a
    browser page's (the mobile app, a server) and passes.
    """
    origin = request.header("origin")
    if origin is not None and origin.lower() in allowed:
        return
    fetch_site = request.header("sec-fetch-site")
    if fetch_site is not None:
        if fetch_site not in ("same-origin", "none"):
            raise Refusal(400, "cross_site_request")
    elif origin is not None or _foreign(request.header("referer"), allowed):
        raise Refusal(400, "cross_site_request")


def _foreign(referer: str | None, allowed: frozenset[str]) -> bool:
    """A ``Referer`` naming a page outside the allowed origins (one that is no URL too)."""
    if referer is None:
        return False
    try:
        return origin_of(referer) not in allowed
    except ValueError:  # a port that is no number: no page of ours
        return True


def _form_fields(body: bytes) -> Mapping[str, object]:
    """An ``application/x-www-form-urlencoded`` body (WHATWG URL §5) as one value per name.

    Refused as ``malformed``: bytes that are not ASCII (a form body is percent-encoded),
    percent-escapes that are not UTF-8, more than ``_MAX_FORM_FIELDS`` fields, a repeated name.
    """
    try:
        text = body.decode("ascii")
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=_MAX_FORM_FIELDS,
        )
    except ValueError:  # UnicodeDecodeError is one too
        raise Refusal(400, "malformed") from None
    fields = dict(pairs)
    if len(fields) != len(pairs):  # which of two codes would be meant?
        raise Refusal(400, "malformed")
    return fields


def _body_fields(request: Request) -> Mapping[str, object]:
    """The legacy body as fields: JSON, or a form, by its ``Content-Type``.

    A form is what any page can make a browser post without a CORS preflight. It is read all
    the same: the POST checks (``check_origin``) ran before, whatever the body, and the route
    only answers codes already exchanged (a new code is ``new_code_refused``, nothing
    written), so a form posted from another site can change nothing.
    """
    media = media_type(request) or ""
    if _is_json(media):
        return _json_fields(request.body)
    if media == _FORM:
        return _form_fields(request.body)
    raise Refusal(415, "unsupported_media_type")


def code_fields(request: Request) -> tuple[str, str | None, str | None]:
    """The legacy body's (code, state, referer), from JSON or a form.

    Raises:
        Refusal: 415 ``unsupported_media_type`` for any other body; 400 ``malformed`` for one
            that does not parse or holds a non-text value, ``missing_code`` without a code.
    """
    fields = _body_fields(request)
    code = _optional_text(fields.get("code"))
    if code is None:
        raise Refusal(400, "missing_code")
    return code, _optional_text(fields.get("state")), _optional_text(fields.get("referer"))


def secrets_fields(request: Request) -> dict[str, object]:
    """The three fields of amoCRM's post to ``secrets_uri`` that are passed on, from a form or
    JSON (its encoding is undocumented: protocol notes §7); every other field is dropped here.
    Each value must be text: a JSON list (even of one string) or number is refused here, as
    the service reads a one-element list as its element (a multi-dict's way); the service
    judges the text (missing, too long: ``malformed``).

    Raises:
        Refusal: 415 ``unsupported_media_type`` for any other body; 400 ``malformed`` for one
            that does not parse, repeats a name (a form's field or a JSON object's member) or
            gives one of the three fields as anything but text.
    """
    fields = _body_fields(request)
    passed = {name: fields[name] for name in _SECRETS_NAMES if name in fields}
    if not all(isinstance(value, str) for value in passed.values()):
        raise Refusal(400, "malformed")
    return passed


def _optional_text(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Refusal(400, "malformed")
    return value


def client_address(request: Request, trusted_proxies: int, header: str) -> str | None:
    """The client's address: the peer's, or with ``trusted_proxies`` (``Config``) the entry
    that many from the right of the forwarded ``header`` (each trusted proxy appends the
    address it was reached from; entries further left are whatever the client wrote). None
    when unknown, and the peer's when the header holds fewer entries than proxies trusted."""
    if trusted_proxies == 0:
        return request.peer
    lines = [value for name, value in request.headers if name == header]
    entries = [entry.strip() for line in lines for entry in line.split(",")]
    if header == "forwarded":  # RFC 7239: for=... in each element
        entries = [_forwarded_for(entry) for entry in entries]
    if len(entries) < trusted_proxies or not entries[-trusted_proxies]:
        return request.peer
    return entries[-trusted_proxies].lower()


def address_network(address: str) -> str:
    """The network one client holds around ``address``: an IPv6 address's /64 (one customer
    is handed a whole /64, so each /128 in it would be a fresh source), an IPv4 address
    itself, an IPv4-mapped IPv6 address as IPv4. Anything else (an RFC 7239 obfuscated node,
    a unix socket's name) is returned as it is."""
    try:
        parsed = ipaddress.ip_address(address.partition("%")[0])  # a zone id names no host
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


def _forwarded_for(element: str) -> str:
    """The node of an RFC 7239 element's ``for=`` (quotes, brackets and the port dropped)."""
    for pair in element.split(";"):
        name, _, value = pair.strip().partition("=")
        if name.strip().lower() == "for":
            node = value.strip().strip('"')
            if node.startswith("["):  # [2001:db8::1]:4711
                return node[1:].partition("]")[0]
            return node.partition(":")[0] if node.count(":") == 1 else node
    return ""


def as_connection_id(value: object) -> str:
    """The app's answer as a connection id; ``ValueError`` when it is not one."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # numeric user ids are common; ids are text
    return check_connection_id(value)
