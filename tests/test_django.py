"""amo_oauth.django: the routes as URL patterns, driven through Django's test clients.

Every client here enforces CSRF (``enforce_csrf_checks=True``: Django's test clients skip the
check otherwise, which is how a backend's tests passed while production answered the seed's
403), under ``CommonMiddleware`` with ``APPEND_SLASH=True`` (``django_settings.py``). The sync
views run over ``AmoOAuth`` with ``Client``, the async ones over ``AsyncAmoOAuth`` with
``AsyncClient``; the shared adapter checks come from ``test_web.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import Any
from urllib.parse import urlencode
from wsgiref.util import setup_testing_defaults

import flask
import httpx
import pytest
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, SESSION_KEY
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.test import AsyncClient, Client, override_settings
from django.urls import include, path, reverse

import django_settings
from amo_oauth import AmoOAuth, AsyncAmoOAuth, MemoryStore, web
from amo_oauth.django import _to_django, urls
from amo_oauth.fastapi import router
from amo_oauth.flask import blueprint
from amo_oauth.testing import FakeAmoCRM, FakeClock
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

django_settings.setup()

KINDS = ["sync", "async"]
JSON = {"content-type": "application/json"}


# -- the project: amo_oauth's patterns beside two plain views of the app's own -------------------


def plain(request: HttpRequest) -> HttpResponse:
    """A view of the app's own, under Django's CSRF protection like any other."""
    return HttpResponse("ok")


def sign_in(request: HttpRequest) -> HttpResponse:
    """What ``django.contrib.auth.login`` leaves in the session, without a user table."""
    request.session[SESSION_KEY] = request.GET["pk"]
    request.session[BACKEND_SESSION_KEY] = "django_settings.KnownUsers"
    return HttpResponse("signed in")


def project(patterns: list[Any]) -> ModuleType:
    return django_settings.urlconf(
        path("plain", plain), path("sign-in", sign_in), path("", include(patterns))
    )


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


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def service(kind: str, oauth: AmoOAuth, async_oauth: AsyncAmoOAuth) -> Any:
    """``AmoOAuth`` for the sync views, ``AsyncAmoOAuth`` for the async ones."""
    return oauth if kind == "sync" else async_oauth


@pytest.fixture
def serving(service: Any) -> Iterator[None]:
    """The project with amo_oauth's routes for ``service``, the test user read from a header."""
    patterns = urls(service, connection_id=user_from_header, app_scheme="foryoure")
    with override_settings(ROOT_URLCONF=project(patterns)):
        yield


# -- the clients, as test_web's Send ---------------------------------------------------------------


def answer_of(response: HttpResponseBase) -> Answer:
    headers = {name.lower(): value for name, value in response.headers.items()}
    cookies = [morsel.OutputString() for morsel in response.cookies.values()]
    if cookies:  # what Django's handlers send as one Set-Cookie header each
        headers["set-cookie"] = "\n".join(cookies)
    return Answer(response.status_code, headers, response.content.decode())


def arguments(
    method: str, path: str, query: str, headers: Mapping[str, str] | None, body: bytes
) -> dict[str, Any]:
    headers = dict(headers or {})
    content_type = headers.pop("content-type", "application/octet-stream")
    url = f"{path}?{query}" if query else path
    return {"method": method, "path": url, "data": body, "content_type": content_type,
            "headers": headers}  # fmt: skip


def client_sender(client: Client | AsyncClient) -> Send:
    def send(
        method: str,
        path: str,
        *,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> Answer:
        request = client.generic(**arguments(method, path, query, headers, body))
        return answer_of(asyncio.run(request) if isinstance(client, AsyncClient) else request)

    return send


def new_client(kind: str) -> Client | AsyncClient:
    """A browser's cookie jar, CSRF enforced as in production."""
    return (
        Client(enforce_csrf_checks=True)
        if kind == "sync"
        else AsyncClient(enforce_csrf_checks=True)
    )


@pytest.fixture
def send(kind: str, serving: None) -> Send:
    return client_sender(new_client(kind))


# -- the seed, with Django's CSRF middleware on ----------------------------------------------------


def test_seed_scenario(send: Send, fake: FakeAmoCRM) -> None:
    seed_scenario(send, fake)


def test_replay_deny_and_forged_state(send: Send, fake: FakeAmoCRM) -> None:
    replay_deny_and_forgery(send, fake)


def test_the_callback_page_sends_no_referrer(send: Send, fake: FakeAmoCRM) -> None:
    callback_page_sends_no_referrer(send, fake)  # RFC 9700 §4.2: its URL holds the code


def test_the_replayed_code_is_200_while_a_plain_view_is_403(send: Send, fake: FakeAmoCRM) -> None:
    """The seed's call, ``POST /exchange-code`` with a code already exchanged and no CSRF token,
    answers the status; a plain view of the same project refuses a POST without a token."""
    assert settings.APPEND_SLASH
    assert "django.middleware.common.CommonMiddleware" in settings.MIDDLEWARE
    code = connect_through_callback(send, fake)
    replay = send(
        "POST",
        f"{PREFIX}/exchange-code",
        headers={**AS_USER, **JSON},
        body=json.dumps({"code": code}).encode(),
    )
    assert replay.status == 200
    assert (replay.json()["outcome"], replay.json()["duplicate"]) == ("already_connected", True)
    assert send("POST", "/plain", body=b"x").status == 403  # Django's CSRF middleware is on
    assert send("GET", "/plain").status == 200
    assert fake.token_call_count("authorization_code") == 1


def test_append_slash_never_redirects_a_route(send: Send, fake: FakeAmoCRM) -> None:
    """No route ends in a slash, and every path under the prefix is answered by the routes:
    CommonMiddleware finds each one and never redirects (a redirected POST arrives as a GET)."""
    for route in web.ROUTES:
        for suffix in ("", "/"):
            answer = send(
                route.method, f"{PREFIX}{route.path}{suffix}", headers={**AS_USER, **JSON}
            )
            assert answer.status not in (301, 308)
            assert route.name == "connect" or "location" not in answer.headers
    assert send("POST", f"{PREFIX}/disconnect/", headers=AS_USER).json()["connected"] is False


def test_every_route_and_status(send: Send, fake: FakeAmoCRM) -> None:
    assert send("GET", f"{PREFIX}/connect", headers=AS_USER).status == 302
    asked = send("GET", f"{PREFIX}/connect", query="format=json", headers=AS_USER)
    assert (asked.status, set(asked.json())) == (200, {"url", "expires_at"})
    assert send("GET", f"{PREFIX}/connect").json() == {"error": "unauthenticated"}
    assert send("GET", f"{PREFIX}/status", headers={"x-user": "x" * 300}).status == 400
    assert send("GET", f"{PREFIX}/status", headers=AS_USER).json()["connected"] is False
    assert send("POST", f"{PREFIX}/disconnect", headers=AS_USER).status == 200
    body = json.dumps({"code": connect_through_callback(send, fake)}).encode()
    ok = send("POST", f"{PREFIX}/exchange-code", headers={**AS_USER, **JSON}, body=body)
    assert (ok.status, ok.json()["outcome"]) == (200, "already_connected")
    bad = send("POST", f"{PREFIX}/exchange-code", headers={**AS_USER, **JSON}, body=b"\xff")
    assert (bad.status, bad.json()) == (400, {"error": "malformed"})
    plain_text = {**AS_USER, "content-type": "text/plain"}
    assert send("POST", f"{PREFIX}/exchange-code", headers=plain_text, body=b"x").status == 415
    huge = send("POST", f"{PREFIX}/exchange-code", headers={**AS_USER, **JSON}, body=b" " * 100_000)
    assert (huge.status, huge.json()) == (413, {"error": "body_too_large"})
    cross = send(
        "POST", f"{PREFIX}/disconnect", headers={**AS_USER, "origin": "https://evil.example"}
    )
    assert (cross.status, cross.json()) == (400, {"error": "cross_site_request"})
    hook = send("GET", f"{PREFIX}/disconnect-hook", query=urlencode(fake.uninstall()))
    assert (hook.status, hook.json()) == (200, {"disconnected": 1, "checked": True, "reason": None})
    forged = send(
        "GET", f"{PREFIX}/disconnect-hook", query="account_id=1&client_uuid=x&signature=y"
    )
    assert (forged.status, forged.json()) == (400, {"error": "bad_signature"})
    page = send("GET", f"{PREFIX}/callback", query="lang=ru")
    assert (page.status, deep_link(page)[1]) == (400, {"error": "bad_state"})
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"  # not SecurityMiddleware's
    assert "default-src 'none'" in page.headers["content-security-policy"]


@pytest.mark.parametrize(("method", "path", "status", "allow"), WRONG_ROUTES)
def test_wrong_methods_and_paths_get_the_handlers_json(
    send: Send, method: str, path: str, status: int, allow: str | None
) -> None:
    check_wrong_route(send, method, path, status, allow)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_wrong_method_is_405_on_every_route(kind: str, service: Any, prefix: str) -> None:
    """Every method reaches the views, at the root too: the handlers answer each wrong one."""
    patterns = urls(service, connection_id=user_from_header, app_scheme="app", prefix=prefix)
    with override_settings(ROOT_URLCONF=project(patterns)):
        assert wrong_methods_answered_otherwise(client_sender(new_client(kind)), prefix) == []


@pytest.mark.parametrize("body", BODIES)
def test_exchange_code_answers_a_known_code_posted_as_json_or_a_form(
    send: Send, fake: FakeAmoCRM, body: str
) -> None:
    """A form body too, with no CSRF token: Django's middleware never reads it for these views."""
    check_known_code_is_answered(send, fake, body)


# -- the patterns ----------------------------------------------------------------------------------


def test_the_same_paths_as_the_fastapi_and_flask_adapters(
    oauth: AmoOAuth, async_oauth: AsyncAmoOAuth
) -> None:
    api = router(async_oauth, connection_id=user_from_header, app_scheme="a")
    fastapi = {route.path for route in api.routes if getattr(route, "include_in_schema", False)}
    app = flask.Flask(__name__)
    app.register_blueprint(blueprint(oauth, connection_id=user_from_header, app_scheme="a"))
    names = {f"amo_oauth.{route.name}" for route in web.ROUTES}
    flask_paths = {rule.rule for rule in app.url_map.iter_rules() if rule.endpoint in names}
    assert fastapi == flask_paths == {PREFIX + route.path for route in web.ROUTES}
    for service in (oauth, async_oauth):
        patterns = urls(service, app_scheme="a")
        with override_settings(ROOT_URLCONF=django_settings.urlconf(*patterns)):
            assert {reverse(f"amo_oauth_{route.name}") for route in web.ROUTES} == fastapi


def test_works_included_under_a_path_and_a_prefix(kind: str, service: Any) -> None:
    patterns = urls(service, connection_id=user_from_header, app_scheme="app", prefix="/amo")
    with override_settings(ROOT_URLCONF=django_settings.urlconf(path("v1/", include(patterns)))):
        send = client_sender(new_client(kind))
        assert send("GET", "/v1/amo/status", headers=AS_USER).status == 200
        assert send("POST", "/v1/amo/status").json() == {"error": "method_not_allowed"}
        assert send("GET", "/v1/amo/nope").json() == {"error": "not_found"}
        assert send("GET", "/amo/status", headers=AS_USER).status == 404  # Django's own
        assert reverse("amo_oauth_callback") == "/v1/amo/callback"


def test_at_the_root_the_app_keeps_its_own_404s(oauth: AmoOAuth) -> None:
    patterns = urls(oauth, connection_id=user_from_header, app_scheme="app", prefix="")
    with override_settings(ROOT_URLCONF=project(patterns)):
        send = client_sender(Client(enforce_csrf_checks=True))
        assert send("GET", "/status", headers=AS_USER).status == 200
        missing = send("GET", "/nope")
        assert missing.status == 404 and "not_found" not in missing.text  # Django's page


def test_bad_arguments_fail_at_construction(oauth: AmoOAuth) -> None:
    with pytest.raises(ValueError, match="prefix"):
        urls(oauth, app_scheme="app", prefix="no-slash")
    with pytest.raises(ValueError, match="app_scheme"):
        urls(oauth, app_scheme="javascript")


# -- whose connection ------------------------------------------------------------------------------


def test_the_default_connection_is_the_signed_in_users_pk(
    kind: str, service: Any, fake: FakeAmoCRM
) -> None:
    """No ``connection_id``: ``str(request.user.pk)`` in the sync views, ``await
    request.auser()`` in the async ones; an anonymous visitor gets 401."""
    with override_settings(ROOT_URLCONF=project(urls(service, app_scheme="foryoure"))):
        anonymous = client_sender(new_client(kind))
        assert anonymous("GET", f"{PREFIX}/status").json() == {"error": "unauthenticated"}
        send = client_sender(new_client(kind))
        assert send("GET", "/sign-in", query="pk=7").status == 200
        seed_scenario(send, fake)  # its x-user header is ignored: the session says who
    status = service.status("7")
    assert (asyncio.run(status) if kind == "async" else status).is_connected


def test_without_authentication_middleware_the_default_says_what_is_missing(
    kind: str, service: Any
) -> None:
    middleware = [name for name in settings.MIDDLEWARE if ".auth." not in name]
    with (
        override_settings(MIDDLEWARE=middleware),
        override_settings(ROOT_URLCONF=project(urls(service, app_scheme="app"))),
        pytest.raises(ImproperlyConfigured, match="AuthenticationMiddleware"),
    ):
        client_sender(new_client(kind))("GET", f"{PREFIX}/status")


def test_the_apps_exceptions_and_request_reach_django(kind: str, service: Any) -> None:
    seen: list[object] = []

    def only_staff(request: web.Request) -> str | None:
        seen.append(request.native)
        raise PermissionDenied

    patterns = urls(service, connection_id=only_staff, app_scheme="app")
    with override_settings(ROOT_URLCONF=project(patterns)):
        refused = client_sender(new_client(kind))("GET", f"{PREFIX}/status")
    assert refused.status == 403 and "error" not in refused.text  # Django's answer, not ours
    assert [type(native).__name__ for native in seen] == [
        "WSGIRequest" if kind == "sync" else "ASGIRequest"
    ]


# -- Set-Cookie, on the wire -----------------------------------------------------------------------


def wsgi_headers(path: str, headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """The header lines Django's WSGI handler sends for a GET of ``path``."""
    environ: dict[str, Any] = {"PATH_INFO": path}
    environ.update({"HTTP_" + name.upper().replace("-", "_"): v for name, v in headers.items()})
    setup_testing_defaults(environ)
    sent: list[tuple[str, str]] = []
    body = WSGIHandler()(environ, lambda status, lines, *exc: sent.extend(lines))
    b"".join(body)
    return [(name.lower(), value.strip()) for name, value in sent]


def asgi_headers(path: str, headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """The header lines Django's ASGI handler sends for a GET of ``path``."""
    messages: list[dict[str, Any]] = []

    async def run() -> None:
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if requested:  # no disconnect: wait to be cancelled once the response is sent
                await asyncio.Event().wait()
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)

        lines = [(b"host", b"127.0.0.1")] + [(k.encode(), v.encode()) for k, v in headers.items()]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
                 "root_path": "", "query_string": b"", "headers": lines,
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}  # fmt: skip
        await ASGIHandler()(scope, receive, send)

    asyncio.run(run())
    (start,) = [message for message in messages if message["type"] == "http.response.start"]
    return [(name.decode().lower(), value.decode()) for name, value in start["headers"]]


ON_THE_WIRE: dict[str, Callable[[str, Mapping[str, str]], list[tuple[str, str]]]] = {
    "sync": wsgi_headers,
    "async": asgi_headers,
}


def test_the_binding_cookie_and_the_apps_session_cookie_both_reach_the_wire(
    kind: str, service: Any
) -> None:
    def user_noted_in_session(request: web.Request) -> str | None:
        request.native.session["seen"] = True  # the app's own cookie, in the same response
        return user_from_header(request)

    patterns = urls(service, connection_id=user_noted_in_session, app_scheme="app")
    with override_settings(ROOT_URLCONF=project(patterns)):
        lines = ON_THE_WIRE[kind](f"{PREFIX}/connect", AS_USER)
    cookies = sorted(value for name, value in lines if name == "set-cookie")
    assert len(cookies) == 2
    binding, session = cookies
    assert binding.startswith("__Host-amo_oauth_binding=")
    for attribute in ("HttpOnly", "Max-Age=1800", "Path=/", "SameSite=Lax", "Secure"):
        assert attribute in binding.split("; ")
    assert session.startswith(f"{settings.SESSION_COOKIE_NAME}=")
    assert [name for name, _ in lines].count("location") == 1  # the 302 to amoCRM


def two_cookies(request: HttpRequest) -> HttpResponse:
    return _to_django(web.Response(200, [("set-cookie", "a=1; Path=/"), ("set-cookie", "b=2")]))


@pytest.mark.parametrize("wire", sorted(ON_THE_WIRE))
def test_repeated_set_cookie_headers_stay_repeated(wire: str) -> None:
    """Django keeps headers in a dict; every web.Response cookie goes through its cookie jar."""
    with override_settings(ROOT_URLCONF=django_settings.urlconf(path("two", two_cookies))):
        lines = ON_THE_WIRE[wire]("/two", {})
    assert sorted(value for name, value in lines if name == "set-cookie") == ["a=1; Path=/", "b=2"]


def test_a_set_cookie_the_cookie_jar_cannot_hold_is_an_error() -> None:
    with pytest.raises(ValueError, match="cookie jar"):
        _to_django(web.Response(200, [("set-cookie", "a=1; Path=/; Unheard-Of")]))


def test_login_required_middleware_never_redirects_the_routes(send: Send) -> None:
    """Django 5.1+'s LoginRequiredMiddleware would send amoCRM's hook, the callback (with its
    code) and a ticket link to the sign-in page: the routes decide who asks themselves."""
    middleware = [*settings.MIDDLEWARE, "django.contrib.auth.middleware.LoginRequiredMiddleware"]
    with override_settings(MIDDLEWARE=middleware):
        for path, query in (
            ("/callback", "code=abc&state=v2.x.y"),
            ("/disconnect-hook", "client_uuid=x&account_id=1&signature=y"),
            ("/connect", "ticket=t1"),
            ("/status", ""),
        ):
            answer = send("GET", f"{PREFIX}{path}", query=query)
            assert answer.status != 302 and "location" not in answer.headers, (path, answer)
