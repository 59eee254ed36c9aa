"""What ``POST /exchange-code`` answers behind several integrations when no ledger holds the
code (issue 22's review, noint.py): exactly what docs/several-integrations.md's routing table
says, never an unknown client id, with or without a default integration."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from amo_oauth import AmoOAuth, MemoryStore
from amo_oauth.testing import FakeAmoCRM
from amo_oauth.web import Handlers, Integrations, Request

from helpers import config_for

KOMMO_ID, KOMMO_SECRET = "kommo-client-id", "kommo-client-secret-for-tests"
GUIDE = Path(__file__).parents[1] / "docs" / "several-integrations.md"


def _table_row() -> str:
    """The routing table's row for the route."""
    rows = [line for line in GUIDE.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    (row,) = [line for line in rows if line.startswith("| `POST /exchange-code`")]
    return row


@pytest.fixture(params=["amocrm", None], ids=["with-default", "without-default"])
def handlers(request: pytest.FixtureRequest, fake: FakeAmoCRM) -> Iterator[Handlers]:
    fake.add_integration(KOMMO_ID, KOMMO_SECRET, fake.redirect_uri)
    store, http = MemoryStore(), httpx.Client(transport=fake.transport())
    services = {
        "amocrm": AmoOAuth(config_for(fake), store=store, http=http),
        "kommo": AmoOAuth(
            config_for(fake, client_id=KOMMO_ID, client_secret=KOMMO_SECRET),
            store=store,
            http=http,
        ),
    }
    yield Handlers(
        Integrations(services, default=request.param),
        connection_id=lambda request: request.header("x-user"),
        app_scheme="myapp",
    )
    for oauth in services.values():
        oauth.close()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"referer": "test.amocrm.ru"}, "missing_code"),
        ({"code": "never-issued"}, "missing_referer"),  # the reviewer's noint.py
        ({"code": "never-issued", "referer": "test.amocrm.ru"}, "new_code_refused"),
        ({"code": "never-issued", "state": "v2.forged"}, "bad_state"),
    ],
)
def test_a_code_no_ledger_holds_is_refused_as_the_table_says(
    handlers: Handlers, fake: FakeAmoCRM, body: dict[str, Any], reason: str
) -> None:
    posted = Request(
        "POST",
        "/api/amo-crm/exchange-code",
        headers={"content-type": "application/json", "x-user": "user-42"},
        body=json.dumps(body).encode(),
    )
    answer = handlers.handle(posted)
    assert (answer.status, json.loads(answer.text)) == (400, {"error": reason})
    assert fake.token_call_count() == 0
    assert f"400 `{reason}`" in _table_row()  # the guide says so
