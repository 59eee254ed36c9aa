"""Issue 24 §3: schemathesis against the FastAPI example's OpenAPI schema.

The example (examples/fastapi_app.py) runs in-process on a FakeAmoCRM (schemathesis's ASGI
transport, one lifespan for the module). For each operation the schema publishes, inputs that
fit the schema and inputs that break it, signed out and signed in: no 5xx, no unhandled
exception, every status one the schema declares, every 4xx a stable reason (the library's,
docs/reasons.md, or the example's own ``EXAMPLE_REASONS``), no secret in any answer.

Budget: ``examples(22)`` per operation and mode, 23 of them: 506 cases under the ``ci``
profile, 10,120 under ``full`` (``python3 tasks.py full``).
"""

from __future__ import annotations

import json
from typing import Any, Final

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from _fuzz_kit import DOCUMENTED, link_reason
from amo_oauth import AsyncAmoOAuth, MemoryStore
from amo_oauth._demo import load_example
from amo_oauth.testing import FakeAmoCRM
from test_web import parse_page

from helpers import STATE_SECRET, config_for, examples

pytestmark = pytest.mark.proof

#: The example's own refusals, beside the library's (its module docstring lists them).
EXAMPLE_REASONS: Final = frozenset(
    {"not_connected", "bad_user", "not_an_admin", "amocrm_unavailable", "malformed"}
)
#: Every operation the example's schema publishes (checked against the schema below): the
#: test ids, stable across runs and xdist workers.
OPERATIONS: Final = (
    "POST /login",
    "GET /login",
    "GET /admin",
    "POST /admin/long-lived",
    "POST /admin/keys-tab-code",
    "GET /api/amo-crm/leads",
    "GET /api/amo-crm/connect",
    "GET /api/amo-crm/callback",
    "POST /api/amo-crm/exchange-code",
    "GET /api/amo-crm/status",
    "POST /api/amo-crm/disconnect",
    "GET /api/amo-crm/disconnect-hook",
)
MODES: Final = {"positive": GenerationMode.POSITIVE, "negative": GenerationMode.NEGATIVE}


def _app(fake: FakeAmoCRM) -> Any:
    """The example on the fake, in-process; its lifespan closes the service and the client."""
    http = httpx.AsyncClient(transport=fake.async_transport())
    config = config_for(fake, api_rate=None)
    oauth = AsyncAmoOAuth(config, store=MemoryStore(), http=http)
    return load_example("fastapi_app").create_app(oauth, api=http)


@pytest.fixture
def schema(fake: FakeAmoCRM) -> Any:
    """The schema of a new app per test: schemathesis's pytest plugin ends each ASGI app's
    lifespan (which closes the service) when the test that started it ends."""
    return schemathesis.openapi.from_asgi("/openapi.json", _app(fake))


def test_the_operations_listed_are_the_schemas(schema: Any) -> None:
    published = {f"{method.upper()} {path}" for path, ops in schema.raw_schema["paths"].items()
                 for method in ops}  # fmt: skip
    assert published == set(OPERATIONS)


#: Operations that read nothing (no parameter, no body): nothing to make invalid.
NO_INPUT: Final = frozenset({"GET /admin"})
CASES: Final = [
    (operation, mode)
    for operation in OPERATIONS
    for mode in MODES
    if not (mode == "negative" and operation in NO_INPUT)
]


@pytest.mark.parametrize(("operation", "mode"), CASES)
def test_the_schema(schema: Any, fake: FakeAmoCRM, operation: str, mode: str) -> None:
    method, path = operation.split(" ", 1)
    strategy = schema[path][method].as_strategy(generation_mode=MODES[mode])
    secrets = [fake.client_secret, STATE_SECRET]
    token = _sign_in(schema)

    @settings(
        max_examples=examples(22),
        # Negative cases are drawn by rejecting those that happen to fit the schema, and a
        # schema's bodies can be large: neither is a defect of the routes.
        suppress_health_check=[
            HealthCheck.filter_too_much,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(case=strategy, as_admin=st.booleans())
    def check(case: Any, as_admin: bool) -> None:
        if as_admin:
            case.headers = {**(case.headers or {}), "authorization": f"Bearer {token}"}
        response = case.call()
        _check(case, response, secrets)

    check()


def _sign_in(schema: Any) -> str:
    case = schema["/login"]["POST"].Case(body={"user": "admin"}, media_type="application/json")
    response = case.call()
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def _check(case: Any, response: Any, secrets: list[str]) -> None:
    status = response.status_code
    assert status < 500, (case.method, case.path, status, response.text[:200])
    declared = case.operation.definition.raw["responses"]
    assert str(status) in declared, (case.method, case.path, status)
    shown = response.text + json.dumps(dict(response.headers))
    # A value the request itself carried may come back (a `next` the login page keeps): that
    # is an echo, not a leak. Hypothesis draws the code's own string constants, the fake's
    # client secret among them.
    sent = repr((case.path_parameters, case.query, case.headers, case.cookies, case.body))
    assert not [secret for secret in secrets if secret in shown and secret not in sent]
    if 400 <= status < 500:
        assert _reason(response) in DOCUMENTED | EXAMPLE_REASONS, (case.path, status)


def _reason(response: Any) -> str | None:
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    if content_type.startswith("application/json"):
        body = response.json()
        return body.get("error") if isinstance(body, dict) else None
    # A page: amo_oauth's name the reason in their deep link, the example's in a <meta>.
    return link_reason(response.text) or parse_page(response.text).metas.get("error")


def test_a_sign_in_form_from_nowhere_is_a_declared_403(schema: Any, fake: FakeAmoCRM) -> None:
    """The first find of this fuzz (kept as a regression): the example's ``POST /login``
    answered 403 ``cross_site_request`` (a form naming no origin) and its schema declared 200
    only; the example's own routes now declare every answer they give."""
    case = schema["/login"]["POST"].Case(
        body={"user": "ann"}, media_type="application/x-www-form-urlencoded"
    )
    response = case.call()
    assert response.status_code == 403
    _check(case, response, [fake.client_secret, STATE_SECRET])
