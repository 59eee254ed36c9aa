"""``Authorization: Bearer <token>`` written as text is redacted like ``name=value`` secrets.

A reviewer found ``RedactingFilter`` leaving ``Authorization: Bearer ...`` as it was while the
docs say tokens are redacted: a server that logs request headers (uvicorn's trace level, a
custom access format) printed the access token.
"""

from __future__ import annotations

import logging

import pytest

from amo_oauth.web import RedactingFilter, redact

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjYW5hcnkifQ.c2lnbmF0dXJl-_"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Authorization: Bearer {TOKEN}", "Authorization: Bearer [redacted]"),
        (f"authorization: bearer {TOKEN}==", "authorization: bearer [redacted]"),
        (f"[('authorization', 'BEARER  {TOKEN}')]", "[('authorization', 'BEARER  [redacted]')]"),
        (f"GET /x?h=Bearer%20{TOKEN} HTTP/1.1", "GET /x?h=Bearer%20[redacted] HTTP/1.1"),
        (f"Bearer {TOKEN}&code=abc", "Bearer [redacted]&code=[redacted]"),
    ],
)
def test_a_bearer_token_in_text_is_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(expected) == expected  # idempotent


@pytest.mark.parametrize("text", ["a ticket is a bearer link", "Bearer tokens expire", "bearer"])
def test_prose_about_bearers_is_left_alone(text: str) -> None:
    assert redact(text) is text


def test_the_filter_redacts_a_logged_authorization_header() -> None:
    record = logging.LogRecord(
        "uvicorn.error",
        logging.DEBUG,
        __file__,
        1,
        "headers: %s",
        ({"authorization": f"Bearer {TOKEN}"},),
        None,
    )
    assert RedactingFilter().filter(record)
    assert TOKEN not in record.getMessage()
    assert "Bearer [redacted]" in record.getMessage()
