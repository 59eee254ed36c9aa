"""How the fake reads a request and writes an answer: the request parsed once, and the answer
shapes amoCRM uses (JSON, problem+json, HTML pages, redirects)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, urlsplit

import attrs

from . import _protocol as P
from ._types import FakeResponse


def first_values(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The first value of each key in `pairs`."""
    # PHP keeps the last duplicate, but a duplicated parameter is a client bug either way;
    # the first one is simply the predictable choice.
    values: dict[str, str] = {}
    for key, value in pairs:
        values.setdefault(key, value)
    return values


@attrs.frozen
class Request:
    """One request as the fake's endpoints see it: host lower-cased, query and headers read."""

    method: str
    host: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = attrs.field(repr=False)
    query_pairs: tuple[tuple[str, str], ...] = ()
    """Every query parameter in order, repeated ones too (a button's ``scopes[]``, §7)."""

    @classmethod
    def parse(cls, method: str, url: str, headers: Mapping[str, str], body: bytes) -> Request:
        """The request addressed to `url` (its host says which host was addressed)."""
        parts = urlsplit(url)
        pairs = tuple(parse_qsl(parts.query, keep_blank_values=True))
        return cls(
            method=method.upper(),
            host=(parts.hostname or "").lower(),
            path=parts.path or "/",
            query=first_values(pairs),
            headers={key.lower(): value for key, value in headers.items()},
            body=body,
            query_pairs=pairs,
        )

    def form(self) -> dict[str, str]:
        """The body's parameters: JSON object, or form-encoded when the request says so."""
        content_type = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/x-www-form-urlencoded":
            text = self.body.decode("utf-8", "replace")
            return first_values(parse_qsl(text, keep_blank_values=True))
        try:
            data = json.loads(self.body)
        except ValueError:
            return {}
        if not isinstance(data, dict):
            return {}
        # Non-string values count as missing: amoCRM's parameters are all strings.
        return {key: value for key, value in data.items() if isinstance(value, str)}


def digest(secret: str) -> str:
    """The sha256 of a code or token: what the fake counts sends by, never the secret itself."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def json_answer(status: int, payload: object, content_type: str = P.JSON) -> FakeResponse:
    """`payload` as JSON, serialized as amoCRM's PHP does."""
    return FakeResponse(status, (("content-type", content_type),), P.dump_json(payload))


def problem(status: int, payload: object) -> FakeResponse:
    """`payload` as `application/problem+json`, the type of every amoCRM error body."""
    return json_answer(status, payload, P.PROBLEM_JSON)


def not_found() -> FakeResponse:
    """The REST API's 404 problem: an unknown path, or a host that is not (or no longer) one."""
    return problem(404, P.API_NOT_FOUND)


def token_problem(slug: str) -> FakeResponse:
    """The token endpoint's error answer for an outcome slug of `TOKEN_PROBLEMS`."""
    found = P.TOKEN_PROBLEMS[slug]
    return problem(found.status, found.body())


def html_answer(status: int, body: bytes) -> FakeResponse:
    """An HTML page."""
    return FakeResponse(status, (("content-type", P.HTML),), body)


def redirect(location: str) -> FakeResponse:
    """A 302 to `location`, as the consent page answers a pressed button."""
    return FakeResponse(302, (("location", location), ("content-type", P.HTML)), b"")
