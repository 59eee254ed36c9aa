"""The FastAPI and Flask examples' ``/leads`` when the store fails: 503 ``store_unavailable``,
as amo_oauth's own routes answer, never a 500 (found by the load run, tests/test_load.py: a
``StoreError`` from PostgreSQL under 100 concurrent clients, and ``/leads`` answered 500)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import partial

import httpx
import pytest
from fastapi.testclient import TestClient

from amo_oauth import AmoOAuth, AsyncAmoOAuth, MemoryStore, Outcome
from amo_oauth.testing import FakeAmoCRM
from amo_oauth.testing.faults import FaultyStore
from e2e_support import FASTAPI, FLASK, PREFIX

from helpers import config_for, query_of


@pytest.fixture
def store() -> FaultyStore:
    return FaultyStore(MemoryStore())


@pytest.fixture
def oauth(fake: FakeAmoCRM, store: FaultyStore) -> AsyncAmoOAuth:
    http = httpx.AsyncClient(transport=fake.async_transport())
    return AsyncAmoOAuth(config_for(fake), store=store, http=http)


@pytest.fixture
def client(oauth: AsyncAmoOAuth) -> Iterator[TestClient]:
    # The app closes the service and its client on shutdown.
    with TestClient(FASTAPI.create_app(oauth, api=oauth.http)) as c:
        yield c


def _sign_in(client: TestClient, user: str) -> None:
    token = client.post("/login", json={"user": user}).json()["token"]
    client.headers["authorization"] = f"Bearer {token}"


def _connect(client: TestClient, oauth: AsyncAmoOAuth, fake: FakeAmoCRM, user: str) -> None:
    """The whole consent, on the service in the app's event loop (the routes are not what
    these tests are about)."""
    assert client.portal is not None
    begun = client.portal.call(oauth.begin, user)
    query = query_of(fake.authorize(begun.state))
    result = client.portal.call(partial(oauth.handle_callback, query, binding=begun.binding))
    assert result.outcome is Outcome.CONNECTED


def test_leads_answer_503_when_the_status_read_fails(
    client: TestClient, store: FaultyStore
) -> None:
    _sign_in(client, "ann")
    store.fail("load", times=None)
    answer = client.get(f"{PREFIX}/leads")
    assert (answer.status_code, answer.json()) == (503, {"error": "store_unavailable"})


def test_leads_answer_503_when_the_token_read_fails(
    client: TestClient, oauth: AsyncAmoOAuth, store: FaultyStore, fake: FakeAmoCRM
) -> None:
    _sign_in(client, "ann")
    _connect(client, oauth, fake, "ann")
    assert client.get(f"{PREFIX}/leads").status_code == 200
    # The status read (the first load) passes; the access token's read, inside auth(), fails.
    loads = itertools.count()
    fault = store.fail("load", times=None, when=lambda _: next(loads) >= 1)
    answer = client.get(f"{PREFIX}/leads")
    assert (answer.status_code, answer.json()) == (503, {"error": "store_unavailable"})
    assert fault.fired >= 1 and next(loads) >= 2  # a read passed, and a later one failed


def test_the_flask_example_answers_503_too(fake: FakeAmoCRM, store: FaultyStore) -> None:
    http = httpx.Client(transport=fake.transport())
    with AmoOAuth(config_for(fake), store=store, http=http) as oauth:
        app = FLASK.create_app(oauth, api=http).test_client()
        token = app.post("/login", json={"user": "ann"}).get_json()["token"]
        store.fail("load", times=None)
        answer = app.get(f"{PREFIX}/leads", headers={"authorization": f"Bearer {token}"})
    assert (answer.status_code, answer.get_json()) == (503, {"error": "store_unavailable"})
