"""What the routes read from a request, and the refusals that reading makes.

Each check raises ``Refusal`` (a status and a stable reason slug), which the dispatch in
``_routes.py`` turns into the response: JSON ``{"error": reason}``, or the page for a browser.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

from .._records import check_connection_id
from ._http import Request, media_type, weighted

__all__ = [
    "Refusal",
    "as_connection_id",
    "check_origin",
    "check_size",
    "code_fields",
    "origin_of",
    "wants_json",
]

_MAX_QUERY_PARAMS: Final = 64


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


def _json_fields(body: bytes) -> Mapping[str, object]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, absurd nesting or numbers
        raise Refusal(400, "malformed") from None
    if not isinstance(data, dict):
        raise Refusal(400, "malformed")
    return data


def _is_json(media: str | None) -> bool:
    return media is not None and (media == "application/json" or media.endswith("+json"))


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL, lower-case: what browsers send as ``Origin``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def check_origin(request: Request, allowed: frozenset[str]) -> None:
    """Refuse a state-changing request that another site's page could make a browser send.

    An ``Origin`` among the app's allowed origins passes. Otherwise, when ``Sec-Fetch-Site``
    is present, only ``same-origin`` and ``none`` (typed, bookmarked) pass; when it is absent
    (older browsers), any ``Origin`` present (``null`` included) refuses. A request with
    neither header is not a browser's (the mobile app, a server) and passes.
    """
    origin = request.header("origin")
    if origin is not None and origin.lower() in allowed:
        return
    fetch_site = request.header("sec-fetch-site")
    if fetch_site is not None:
        if fetch_site not in ("same-origin", "none"):
            raise Refusal(400, "cross_site_request")
    elif origin is not None:
        raise Refusal(400, "cross_site_request")


def code_fields(request: Request) -> tuple[str, str | None, str | None]:
    """The legacy body's (code, state, referer); JSON unless it says it is a form."""
    # JSON only: a form or a text body is what a page on another site can post without a
    # preflight, so it is never read.
    if not _is_json(media_type(request) or ""):
        raise Refusal(415, "unsupported_media_type")
    fields = _json_fields(request.body)
    code = _optional_text(fields.get("code"))
    if code is None:
        raise Refusal(400, "missing_code")
    return code, _optional_text(fields.get("state")), _optional_text(fields.get("referer"))


def _optional_text(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Refusal(400, "malformed")
    return value


def as_connection_id(value: object) -> str:
    """The app's answer as a connection id; ``ValueError`` when it is not one."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # numeric user ids are common; ids are text
    return check_connection_id(value)
