"""amo_oauth.fastapi: the routes on an APIRouter, driven through FastAPI's TestClient."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request as StarletteRequest

from amo_oauth import AsyncAmoOAuth, MemoryStore
from amo_oauth.fastapi import router
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.web import Request
from amo_oauth.web._routes import NO_COOKIE_OVER_HTTP
from test_code_injection import callback_page_sends_no_referrer
from test_web import (
    AS_USER,
    BODIES,
    PREFIX,
    PREFIXES,
    WRONG_ROUTES,
    Answer,
    Send,
    check_known_code_is_answered,
    check_wrong_route,
    connect_through_callback,
    deep_link,
    replay_deny_and_forgery,
    seed_scenario,
    user_from_header,
    wrong_methods_answered_otherwise,
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


def test_the_callback_page_sends_no_referrer(send: Send, fake: FakeAmoCRM) -> None:
    callback_page_sends_no_referrer(send, fake)  # RFC 9700 §4.2: its URL holds the code


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
    assert (hook.status, hook.json()) == (200, {"disconnected": 1, "checked": True, "reason": None})
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
    content = exchange["requestBody"]["content"]
    assert set(content) == {"application/json", "application/x-www-form-urlencoded"}
    assert content["application/x-www-form-urlencoded"]["schema"] == json_schema
    assert "form" in exchange["description"]
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


@pytest.mark.parametrize("https_only", [True, False])
def test_a_session_cookie_over_http_follows_the_redirect_uri(
    fake: FakeAmoCRM, clock: FakeClock, https_only: bool
) -> None:
    """Issue 16: ``SessionMiddleware(https_only=True)`` copied onto an http loopback backend
    loses the session, and the 401 said nothing. The docs now take ``https_only`` from the
    redirect URI (False here, which works); the copied True gets a 401 with a ``hint``."""
    local = config_for(fake, redirect_uri="http://127.0.0.1:8000/api/amo-crm/callback")
    http = httpx.AsyncClient(transport=fake.async_transport())
    oauth = AsyncAmoOAuth(local, store=MemoryStore(), http=http, clock=clock)
    app = FastAPI()
    app.add_middleware(SessionMiddleware, secret_key="test-only", https_only=https_only)

    def session_user(request: Request) -> str | None:
        return request.native.session.get("user_id")  # type: ignore[no-any-return]

    app.include_router(router(oauth, connection_id=session_user, app_scheme="myapp"))

    @app.post("/login")
    def login(request: StarletteRequest) -> dict[str, bool]:
        request.session["user_id"] = "user-1"
        return {"ok": True}

    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        client.post("/login")
        answer = client.get(f"{PREFIX}/status")
    asyncio.run(oauth.aclose())
    if https_only:  # the copied production setting
        assert answer.status_code == 401
        assert answer.json() == {"error": "unauthenticated", "hint": NO_COOKIE_OVER_HTTP}
    else:  # https_only=local.redirect_uri.startswith("https://"), as the docs do
        assert (answer.status_code, answer.json()["status"]) == (200, "disconnected")


def test_openapi_declares_the_query_parameters(client: TestClient) -> None:
    """Issue 16: /callback and /disconnect-hook read query parameters the schema did not
    declare."""
    paths = client.get("/openapi.json").json()["paths"]

    def declared(path: str) -> dict[str, dict[str, Any]]:
        parameters = paths[f"{PREFIX}{path}"]["get"]["parameters"]
        assert all(parameter["in"] == "query" for parameter in parameters)
        return {parameter["name"]: parameter for parameter in parameters}

    callback = declared("/callback")
    assert set(callback) == {
        "code",
        "state",
        "referer",
        "client_id",
        "from_widget",
        "platform",
        "error",
        "lang",
    }
    assert not any(parameter["required"] for parameter in callback.values())  # error or code
    assert all(parameter["schema"]["type"] == "string" for parameter in callback.values())
    hook = declared("/disconnect-hook")
    assert set(hook) == {"client_uuid", "account_id", "signature"}
    assert all(parameter["required"] for parameter in hook.values())
    assert set(declared("/connect")) == {"ticket", "format", "integration"}
    for path, operations in paths.items():  # and no parameter is declared twice
        for operation in operations.values():
            names = [parameter["name"] for parameter in operation.get("parameters", [])]
            assert len(names) == len(set(names)), path


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_wrong_method_is_405_on_every_route(async_oauth: AsyncAmoOAuth, prefix: str) -> None:
    """At the root too, where there is no catch-all: FastAPI answered its own 405 there."""
    app = FastAPI()
    app.include_router(
        router(async_oauth, connection_id=user_from_header, app_scheme="app", prefix=prefix)
    )
    with client_for(app) as client:
        assert wrong_methods_answered_otherwise(sender(client), prefix) == []
        assert set(client.get("/openapi.json").json()["paths"][f"{prefix}/status"]) == {"get"}


@pytest.mark.parametrize("kind", BODIES)
def test_exchange_code_answers_a_known_code_posted_as_json_or_a_form(
    send: Send, fake: FakeAmoCRM, kind: str
) -> None:
    check_known_code_is_answered(send, fake, kind)
