"""What the fuzz suites (test_fuzz_inputs.py, test_schema_fuzz.py) share: the documented
reasons, a transport that counts the codes sent, and the checks every answer must pass."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, urlsplit

import httpx

from amo_oauth._reasons import Reason
from test_web import parse_page

#: The slugs docs/reasons.md documents: every refusal must be one of them (and a ``Reason``).
DOCUMENTED: Final = frozenset(
    re.findall(r"`([a-z_]+)`", (Path(__file__).parents[1] / "docs/reasons.md").read_text())
) & frozenset(Reason)


def _fields(body: bytes) -> dict[str, str]:
    """A token request's fields, JSON or a form (as amo_oauth sends either)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return dict(parse_qsl(body.decode("latin-1")))
    return {str(k): str(v) for k, v in payload.items()} if isinstance(payload, dict) else {}


class CountingTransport(httpx.BaseTransport):
    """Passes every request on, counting each code sent to the token endpoint: the fuzzers'
    "never two exchanges of one code" reads ``sent``."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.sent: Counter[str] = Counter()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        fields = _fields(request.content)
        if fields.get("grant_type") == "authorization_code":
            self.sent[fields.get("code", "")] += 1
        return self.inner.handle_request(request)

    def exchanges(self) -> int:
        return sum(self.sent.values())

    def assert_once_each(self) -> None:
        twice = [count for count in self.sent.values() if count > 1]
        assert not twice, f"a code was sent {max(twice)} times"


def link_reason(html: str) -> str | None:
    """The ``error`` of a page's deep link (None: no link, or no error in it)."""
    links = parse_page(html).links
    if not links:
        return None
    return dict(parse_qsl(urlsplit(links[0]).query)).get("error")


def reason_of(status: int, content_type: str, body: bytes) -> str | None:
    """The reason an answer gives: JSON's ``error``, or the page's deep link's ``error``."""
    text = body.decode("utf-8", "replace")
    if content_type.startswith("application/json"):
        payload = json.loads(text)
        error = payload.get("error") if isinstance(payload, dict) else None
        return error if isinstance(error, str) else None
    if content_type.startswith("text/html"):
        return link_reason(text)
    return None


def check_answer(
    status: int, headers: list[tuple[str, str]], body: bytes, secrets: list[str]
) -> str | None:
    """The invariants of every answer: no 5xx, every refusal (and every error a page links)
    a documented reason, no secret anywhere in it. Returns the reason, if any."""
    assert status < 500, status
    shown = body.decode("utf-8", "replace") + "".join(value for _, value in headers)
    leaked = [secret for secret in secrets if secret and secret in shown]
    assert not leaked, "an answer shows a secret"
    content_type = next((value for name, value in headers if name.lower() == "content-type"), "")
    reason = reason_of(status, content_type, body)
    if status >= 400 or reason is not None:
        assert reason in DOCUMENTED, (status, reason)
    return reason
