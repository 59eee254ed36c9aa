"""examples/starlette_app.py: amo_oauth.web plugged into a plain Starlette app."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from starlette.testclient import TestClient

from amo_oauth import AsyncAmoOAuth, MemoryStore
from amo_oauth.testing import FakeAmoCRM, FakeClock
from test_code_injection import callback_page_sends_no_referrer
from test_web import PREFIX, Answer, Send, replay_deny_and_forgery, seed_scenario

from helpers import config_for

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "starlette_app.py"
TOKENS = {"token-of-user-42": "user-42"}


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("starlette_app_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def client(fake: FakeAmoCRM, clock: FakeClock) -> Iterator[TestClient]:
    oauth = AsyncAmoOAuth(
        config_for(fake),
        store=MemoryStore(),
        http=httpx.AsyncClient(transport=fake.async_transport()),
        clock=clock,
    )
    app = load_example().create_app(oauth, TOKENS, app_scheme="foryoure")
    # https: the binding cookie is Secure (the redirect URI is https); shutdown closes oauth.
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as client:
        yield client


@pytest.fixture
def send(client: TestClient) -> Send:
    """Signs the tests' ``x-user`` in the example's way: a bearer token."""
    token_of = {user: token for token, user in TOKENS.items()}

    def send(
        method: str,
        path: str,
        *,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> Answer:
        headers = dict(headers or {})
        user = headers.pop("x-user", None)
        if user is not None:
            headers["authorization"] = f"Bearer {token_of.get(user, 'unknown')}"
        url = f"{path}?{query}" if query else path
        response = client.request(method, url, headers=headers, content=body)
        return Answer(response.status_code, dict(response.headers), response.text)

    return send


def test_seed_scenario(send: Send, fake: FakeAmoCRM) -> None:
    seed_scenario(send, fake)


def test_replay_deny_and_forged_state(send: Send, fake: FakeAmoCRM) -> None:
    replay_deny_and_forgery(send, fake)


def test_the_callback_page_sends_no_referrer(send: Send, fake: FakeAmoCRM) -> None:
    callback_page_sends_no_referrer(send, fake)  # RFC 9700 §4.2: its URL holds the code


def test_only_known_bearer_tokens_get_a_connection(client: TestClient) -> None:
    assert client.get(f"{PREFIX}/status").status_code == 401
    wrong = {"authorization": "Bearer nope"}
    assert client.get(f"{PREFIX}/status", headers=wrong).json() == {"error": "unauthenticated"}
    basic = {"authorization": "Basic token-of-user-42"}
    assert client.get(f"{PREFIX}/status", headers=basic).status_code == 401
    good = {"authorization": "Bearer token-of-user-42"}
    assert client.get(f"{PREFIX}/status", headers=good).json()["status"] == "disconnected"


def test_unknown_paths_and_methods(client: TestClient) -> None:
    assert client.get(f"{PREFIX}/nope").json() == {"error": "not_found"}
    refused = client.put(f"{PREFIX}/status")
    assert (refused.status_code, refused.headers["allow"]) == (405, "GET")
    assert client.get("/elsewhere").status_code == 404  # Starlette's own, outside the prefix


def test_app_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake: FakeAmoCRM) -> None:
    monkeypatch.setenv("AMO_DB", str(tmp_path / "amo.db"))
    monkeypatch.setenv("AMO_CLIENT_ID", fake.client_id)
    monkeypatch.setenv("AMO_CLIENT_SECRET", fake.client_secret)
    monkeypatch.setenv("AMO_REDIRECT_URI", fake.redirect_uri)
    monkeypatch.setenv("AMO_STATE_SECRET", "s" * 32)
    monkeypatch.setenv("AMO_API_TOKENS", "t1:user-1,t2:user-2")
    app = load_example().app_from_env()
    with TestClient(app) as client:
        status = client.get(f"{PREFIX}/status", headers={"authorization": "Bearer t2"})
        assert status.json()["connected"] is False
    assert (tmp_path / "amo.db").exists()
