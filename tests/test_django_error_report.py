"""docs/django.md's error report without the callback's code (issue 20.2's review: Django's
``AdminEmailHandler`` mails the request's query on a 500, and no logging filter can reach it)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from django.test import RequestFactory
from django.views.debug import ExceptionReporter

import django_settings

PAGE = Path(__file__).resolve().parents[1] / "docs" / "django.md"
CANARY = "canary0secret"

django_settings.setup()


def documented_reporter() -> type[ExceptionReporter]:
    """The page's ``RedactingReporter``, run as the page gives it."""
    text = PAGE.read_text(encoding="utf-8")
    block = re.search(r"```python\n(# myproject/reporting\.py\n.*?)^```", text, re.M | re.S)
    assert block is not None, "docs/django.md lost its RedactingReporter"
    namespace: dict[str, object] = {}
    exec(compile(block.group(1), "docs/django.md", "exec"), namespace)  # our own docs
    reporter = namespace["RedactingReporter"]
    assert isinstance(reporter, type) and issubclass(reporter, ExceptionReporter)
    return reporter


def report(reporter: type[ExceptionReporter]) -> str:
    query = f"code={CANARY}1&state={CANARY}2&referer=shop.amocrm.ru"
    request = RequestFactory().get(f"/api/amo-crm/callback?{query}")
    try:
        raise RuntimeError("the store is down")
    except RuntimeError:
        return reporter(request, *sys.exc_info(), is_email=True).get_traceback_text()


def test_djangos_own_report_mails_the_code() -> None:
    assert f"code={CANARY}1" in report(ExceptionReporter)  # why the page says what to do


def test_the_documented_report_shows_the_request_without_its_secrets() -> None:
    text = report(documented_reporter())
    assert CANARY not in text
    assert "code = '[redacted]'" in text and "referer = 'shop.amocrm.ru'" in text
    assert "Request URL: http://testserver/api/amo-crm/callback?code=[redacted]" in text
