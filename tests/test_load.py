"""Issue 24 §5: the FastAPI example under uvicorn on loopback, under a bounded mixed load.

``benchmarks/load.py`` does the work: the example in a uvicorn subprocess, FakeAmoCRM served in
this process, 100 clients making first callbacks, duplicates (one at the same moment as the
first), the legacy exchange-code replay, status and leads. 1,000 mixed requests per store in
CI, 5,000 under ``python3 tasks.py full``. Asserted: no 5xx, exactly one token call per code,
every answer the documented one; the latency table is printed (``-s`` shows it), never
asserted. A short run with every default (the pacer's, the exchange bounds', the fake's 7
requests a second) must see no 429 at all.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from _pg_server import postgres_url  # noqa: F401

from helpers import PROOF_FULL

pytestmark = pytest.mark.proof

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
REQUESTS = 5000 if PROOF_FULL else 1000
CLIENTS = 100


def _load_module() -> ModuleType:
    """``benchmarks/load.py`` as a module (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location(
        "amo_oauth_benchmark_load", BENCHMARKS / "load.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # attrs looks the module up there
    spec.loader.exec_module(module)
    return module


LOAD = _load_module()


def _assert_clean(report: Any) -> None:
    print()  # the table, for whoever runs with -s; no figure is asserted
    print(LOAD.table([report]))
    assert report.wrong_answers == [], (report.wrong_answers[:10], report.server_log)
    assert report.server_errors == 0
    assert report.exactly_once, report.token_calls_by_code
    assert report.users == sum(report.token_calls_by_code.values())  # every user had its code
    assert report.mixed_requests == report.users * LOAD.PER_USER


def test_sqlite_under_load() -> None:
    report = LOAD.run_load(LOAD.Store("sqlite"), requests=REQUESTS, clients=CLIENTS)
    _assert_clean(report)
    assert report.answered_429 == 0


def test_postgres_under_load(postgres_url: str) -> None:  # noqa: F811
    report = LOAD.run_load(LOAD.Store("postgres", postgres_url), requests=REQUESTS, clients=CLIENTS)
    _assert_clean(report)
    assert report.answered_429 == 0


def test_the_defaults_answer_no_429() -> None:
    """Every default kept: the pacer's 7 a second must keep the fake's 7 a second happy, and
    the exchange bounds must admit 10 consents; /leads may answer 503 api_busy (documented).
    Short: its 40 API requests on one account host take at least 6 s at 7 a second."""
    report = LOAD.run_load(LOAD.Store("sqlite"), requests=100, clients=10, defaults=True)
    _assert_clean(report)
    assert report.answered_429 == 0
