"""amo_oauth.fastapi: the routes on an APIRouter, driven through FastAPI's TestClient."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient

from amo_oauth import AsyncAmoOAuth, MemoryStore
from amo_oauth.fastapi import router
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.web import Request
from test_web import (
    AS_USER,
    PREFIX,
    WRONG_ROUTES,
    Answer,
    Send,
    check_wrong_route,
    connect_through_callback,
    deep_link,
    replay_deny_and_forgery,
    seed_scenario,
    user_from_header,
)

from helpers import config_for


@pytest.fixture
def async_oauth(fake: FakeAmoCRM, clock: FakeClock) -> Iterator[AsyncAmoOAuth]:
    oauth = AsyncAmoOAuth(
        config_for(fake),
        store=MemoryStore(),
        http=httpx.AsyncClient(transport=fake.async_transport()),
        clock=clock,
    )
    yield oauth
    asyncio.run(oauth.aclose())


def client_for(app: FastAPI) -> TestClient:
    # https: the binding cookie is Secure (the redirect URI is https), as in production.
    return TestClient(app, base_url="https://testserver", follow_redirects=False)


@pytest.fixture
def app(async_oauth: AsyncAmoOAuth) -> FastAPI:
    app = FastAPI()
    app.include_router(router(async_oauth, connection_id=user_from_header, app_scheme="foryoure"))
    return app


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with client_for(app) as client:
        yield client


def sender(client: TestClient) -> Send:
    def send(
        method: str,
        path: str,
        *,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> Answer:
        url = f"{path}?{query}" if query else path
        response = client.request(method, url, headers=dict(headers or {}), content=body)
        return Answer(response.status_code, dict(response.headers), response.text)

    return send


@pytest.fixture
def send(client: TestClient) -> Send:
    return sender(client)


def test_seed_scenario(send: Send, fake: FakeAmoCRM) -> None:
    seed_scenario(send, fake)


def test_replay_deny_and_forged_state(send: Send, fake: FakeAmoCRM) -> None:
    replay_deny_and_forgery(send, fake)


def test_every_route_and_status(send: Send, fake: FakeAmoCRM) -> None:
    assert send("GET", f"{PREFIX}/connect", headers=AS_USER).status == 302
    assert send("GET", f"{PREFIX}/connect", query="format=json", headers=AS_USER).status == 200
    assert send("GET", f"{PREFIX}/connect").json() == {"error": "unauthenticated"}
    assert send("GET", f"{PREFIX}/connect", headers={"x-user": ""}).status == 400
    assert send("GET", f"{PREFIX}/status", headers=AS_USER).json()["status"] == "disconnected"
    assert send("GET", f"{PREFIX}/status").status == 401
    assert send("POST", f"{PREFIX}/disconnect", headers=AS_USER).status == 200
    body = json.dumps({"code": connect_through_callback(send, fake)}).encode()
    as_json = {**AS_USER, "content-type": "application/json"}
    ok = send("POST", f"{PREFIX}/exchange-code", headers=as_json, body=body)
    assert (ok.status, ok.json()["outcome"]) == (200, "already_connected")
    bad = send("POST", f"{PREFIX}/exchange-code", headers=as_json, body=b"{")
    assert (bad.status, bad.json()) == (400, {"error": "malformed"})
    plain = {**AS_USER, "content-type": "text/plain"}
    assert send("POST", f"{PREFIX}/exchange-code", headers=plain, body=b"x").status == 415
    huge = send("POST", f"{PREFIX}/exchange-code", headers=as_json, body=b" " * 100_000)
    assert (huge.status, huge.json()) == (413, {"error": "body_too_large"})
    hook = send("GET", f"{PREFIX}/disconnect-hook", query=urlencode(fake.uninstall()))
    assert (hook.status, hook.json()) == (200, {"disconnected": 1})
    forged = send(
        "GET", f"{PREFIX}/disconnect-hook", query="account_id=1&client_uuid=x&signature=y"
    )
    assert (forged.status, forged.json()) == (400, {"error": "bad_signature"})
    page = send("GET", f"{PREFIX}/callback", query="lang=uk")
    assert (page.status, deep_link(page)[1]) == (400, {"error": "bad_state"})
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "default-src 'none'" in page.headers["content-security-policy"]


@pytest.mark.parametrize(("method", "path", "status", "allow"), WRONG_ROUTES)
def test_wrong_methods_and_paths_get_the_handlers_json(
    send: Send, method: str, path: str, status: int, allow: str | None
) -> None:
    check_wrong_route(send, method, path, status, allow)


def test_openapi_describes_each_route(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert sorted(paths) == sorted(
        f"{PREFIX}/{name}"
        for name in (
            "connect",
            "callback",
            "exchange-code",
            "status",
            "disconnect",
            "disconnect-hook",
        )
    )
    assert set(paths[f"{PREFIX}/exchange-code"]) == {"post"}
    assert set(paths[f"{PREFIX}/status"]) == {"get"}
    exchange = paths[f"{PREFIX}/exchange-code"]["post"]
    assert exchange["summary"] == "Exchange a code (legacy apps)"
    json_schema = exchange["requestBody"]["content"]["application/json"]["schema"]
    assert json_schema["required"] == ["code"]
    assert set(json_schema["properties"]) == {"code", "state", "referer"}
    assert set(exchange["requestBody"]["content"]) == {"application/json"}  # JSON only
    assert "403" not in exchange["responses"]
    callback = paths[f"{PREFIX}/callback"]["get"]
    assert "text/html" in callback["responses"]["200"]["content"]
    assert all(op["tags"] == ["amoCRM"] for path in paths.values() for op in path.values())


def test_works_under_an_include_router_prefix(async_oauth: AsyncAmoOAuth) -> None:
    app = FastAPI()
    amo = router(async_oauth, connection_id=user_from_header, app_scheme="app", prefix="/amo")
    app.include_router(amo, prefix="/v1")
    with client_for(app) as client:
        assert client.get("/v1/amo/status", headers=AS_USER).status_code == 200
        assert client.post("/v1/amo/status").json() == {"error": "method_not_allowed"}
        assert client.get("/amo/status").status_code == 404


def test_an_async_connection_id_and_the_native_request(async_oauth: AsyncAmoOAuth) -> None:
    async def from_native(request: Request) -> str | None:
        token = request.native.headers.get("authorization", "")  # a Starlette request
        if token != "Bearer good":
            raise HTTPException(status_code=401, detail="sign in first")
        return "user-7"

    app = FastAPI()
    app.include_router(router(async_oauth, connection_id=from_native, app_scheme="app"))
    with client_for(app) as client:
        ok = client.get(f"{PREFIX}/status", headers={"authorization": "Bearer good"})
        assert ok.status_code == 200
        refused = client.get(f"{PREFIX}/status")
        assert (refused.status_code, refused.json()) == (401, {"detail": "sign in first"})


def test_a_bad_app_scheme_fails_at_construction(async_oauth: AsyncAmoOAuth) -> None:
    with pytest.raises(ValueError, match="app_scheme"):
        router(async_oauth, connection_id=user_from_header, app_scheme="javascript")
