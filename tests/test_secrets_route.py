"""``POST {prefix}/secrets`` and ``/connect`` in the site button's metadata mode (issue 22),
on the web layer and every adapter: FastAPI, Flask, Django (sync and async, CSRF enforced)
and the Starlette example.

amoCRM posts a new integration's ``client_id``, ``client_secret`` and the button's ``state`` to
``secrets_uri`` and wants exactly 200 (protocol notes §7). The service's ``receive_secrets``
and ``site_button`` are stand-ins that record what the route hands them (``_secrets_apps``):
these tests are about the route, not the flows.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import flask
import httpx
import pytest
from django.test import AsyncClient, Client, RequestFactory, override_settings
from django.urls import URLPattern
from django.views.debug import ExceptionReporter
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.testclient import TestClient as StarletteClient

import django_settings
from _secrets_apps import (
    BINDING,
    BUTTON,
    BUTTON_HTML,
    GOOD_STATE,
    AsyncRecordingService,
    Recorder,
    RecordingService,
    metadata_config,
)
from amo_oauth import AmoOAuth, AsyncAmoOAuth, CallbackRejected, Config, MemoryStore, web
from amo_oauth._errors import REJECTION_REASONS
from amo_oauth.django import urls
from amo_oauth.fastapi import router
from amo_oauth.flask import blueprint
from amo_oauth.web import AsyncHandlers, Handlers, Request
from test_access_log_redaction import SERVERS, _served, _wait_for
from test_django import client_sender, project
from test_fastapi_adapter import sender as fastapi_sender
from test_flask_adapter import sender as flask_sender
from test_route_answers import OUTAGES, answered
from test_web import AS_USER, PREFIX, Answer, Send, user_from_header

from helpers import STATE_SECRET

django_settings.setup()

SECRETS = f"{PREFIX}/secrets"
CLIENT_SECRET = "canary-client-secret-0123456789abcdef"
FORM = {"content-type": "application/x-www-form-urlencoded"}
JSON = {"content-type": "application/json"}
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "starlette_app.py"
#: The settings that turn a metadata-mode config back into fixed mode (one integration).
FIXED_MODE: dict[str, Any] = {"client_secret": CLIENT_SECRET, "secrets_uri": None}
ADAPTERS = ["sync", "async", "fastapi", "flask", "django-sync", "django-async", "starlette"]


def fields(state: str = GOOD_STATE, **more: str) -> dict[str, str]:
    return {
        "client_id": "new-client-of-acme",
        "client_secret": CLIENT_SECRET,
        "state": state,
        **more,
    }


def as_form(values: Mapping[str, str]) -> bytes:
    return urlencode(values).encode()


def button_handlers(config: Config) -> Handlers:
    """The blocking routes over a recording service on ``config``, with the site button."""
    return Handlers(
        RecordingService(config), connection_id=user_from_header, app_scheme="a", button=BUTTON
    )


# -- the adapters, each as test_web's Send over a recording service -----------------------------


def _handlers_sender(handlers: Handlers | AsyncHandlers) -> Send:
    def send(
        method: str,
        path: str,
        *,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> Answer:
        request = Request(method, path, query, dict(headers or {}), body)
        answer = handlers.handle(request)
        if not isinstance(answer, web.Response):
            answer = asyncio.run(answer)
        named = {name: value for name, value in answer.headers}
        return Answer(answer.status, named, answer.text)

    return send


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("starlette_app_secrets", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def serving(adapter: str, **config: Any) -> Iterator[tuple[Send, Recorder]]:
    """``adapter`` over a recording service in metadata mode (or in fixed mode with
    ``client_secret=..., secrets_uri=None``): a sender and what the service was handed."""
    blocking = adapter in ("sync", "flask", "django-sync")
    service: Any = (RecordingService if blocking else AsyncRecordingService)(
        metadata_config(**config)
    )
    options: dict[str, Any] = {"app_scheme": "foryoure", "button": BUTTON}
    identify = user_from_header
    if adapter in ("sync", "async"):
        kind = Handlers if adapter == "sync" else AsyncHandlers
        yield _handlers_sender(kind(service, connection_id=identify, **options)), service.recorder
    elif adapter == "fastapi":
        app = FastAPI()
        app.include_router(router(service, connection_id=identify, **options))
        with TestClient(app, base_url="https://testserver", follow_redirects=False) as client:
            yield fastapi_sender(client), service.recorder
    elif adapter == "flask":
        app = flask.Flask(__name__)
        app.register_blueprint(blueprint(service, connection_id=identify, **options))
        # No cookie jar: a Cookie header a test writes reaches the app as written.
        yield flask_sender(app.test_client(use_cookies=False)), service.recorder
    elif adapter.startswith("django"):
        patterns = urls(service, connection_id=identify, **options)
        with override_settings(ROOT_URLCONF=project(patterns)):
            client = (
                Client(enforce_csrf_checks=True)
                if blocking
                else AsyncClient(enforce_csrf_checks=True)
            )
            yield client_sender(client), service.recorder
    else:
        app = _example().create_app(service, {"token-of-user-42": "user-42"}, button=BUTTON)
        with StarletteClient(app, base_url="https://testserver", follow_redirects=False) as client:
            send = fastapi_sender(client)  # FastAPI's TestClient is Starlette's

            def as_bearer(method: str, path: str, **kwargs: Any) -> Answer:
                headers = dict(kwargs.pop("headers", None) or {})
                if headers.pop("x-user", None):  # the example's own sign-in
                    headers["authorization"] = "Bearer token-of-user-42"
                return send(method, path, headers=headers, **kwargs)

            yield as_bearer, service.recorder  # type: ignore[misc]


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def served(adapter: str) -> Iterator[tuple[Send, Recorder]]:
    with serving(adapter) as pair:
        yield pair


# -- POST /secrets ---------------------------------------------------------------------------------


def test_stored_and_unchanged_are_both_exactly_200(served: tuple[Send, Recorder]) -> None:
    send, recorder = served
    for _ in range(2):  # amoCRM's retry of the same post: unchanged, and still 200
        answer = send("POST", SECRETS, headers=FORM, body=as_form(fields()))
        assert (answer.status, answer.json()) == (200, {"ok": True})
    as_json = send("POST", SECRETS, headers=JSON, body=json.dumps(fields()).encode())
    assert (as_json.status, as_json.json()) == (200, {"ok": True})
    assert recorder.forms == [fields()] * 3


def test_only_the_three_fields_reach_the_service(served: tuple[Send, Recorder]) -> None:
    send, recorder = served
    extra = fields(account_id="31337", referer="acme.amocrm.ru", code="c0de")
    assert send("POST", SECRETS, headers=FORM, body=as_form(extra)).status == 200
    body = json.dumps({**extra, "nested": {"client_secret": "x"}}).encode()
    assert send("POST", SECRETS, headers=JSON, body=body).status == 200
    assert recorder.forms == [fields(), fields()]


@pytest.mark.parametrize(
    ("state", "reason"),
    [("forged-state", "bad_state"), ("expired-state", "expired_state"),
     ("skewed-state", "clock_skew")],
)  # fmt: skip
def test_every_refusal_of_the_service_is_403_with_its_reason(
    served: tuple[Send, Recorder], state: str, reason: str
) -> None:
    send, _ = served
    answer = send("POST", SECRETS, headers=FORM, body=as_form(fields(state)))
    assert (answer.status, answer.json()) == (403, {"error": reason})
    assert CLIENT_SECRET not in answer.text
    missing = send("POST", SECRETS, headers=FORM, body=as_form({"state": GOOD_STATE}))
    assert (missing.status, missing.json()) == (403, {"error": "malformed"})
    not_text = json.dumps({**fields(), "client_secret": 7}).encode()
    assert send("POST", SECRETS, headers=JSON, body=not_text).json() == {"error": "malformed"}


def test_a_body_that_does_not_parse_is_403_and_never_reaches_the_service(
    served: tuple[Send, Recorder],
) -> None:
    send, recorder = served
    bodies = [
        (JSON, b'{"client_secret": '),
        (JSON, b"[1, 2]"),
        (FORM, as_form(fields()) + b"&state=another"),  # which state is meant?
        (FORM, b"client_secret=%ff"),
        # JSON's repeated member, as the form's repeated name: json.loads kept the last one.
        (JSON, b'{"client_id": "a", "client_id": "b", "client_secret": "s", "state": "t"}'),
        # A one-element list is not text (the service would read it as its element).
        (JSON, json.dumps({name: [value] for name, value in fields().items()}).encode()),
        (JSON, json.dumps({**fields(), "state": [GOOD_STATE]}).encode()),
    ]
    for headers, body in bodies:
        answer = send("POST", SECRETS, headers=headers, body=body)
        assert (answer.status, answer.json()) == (403, {"error": "malformed"}), body
    assert recorder.forms == []


def test_other_media_types_are_415_and_a_large_body_413(served: tuple[Send, Recorder]) -> None:
    send, recorder = served
    plain = {"content-type": "text/plain"}
    assert send("POST", SECRETS, headers=plain, body=as_form(fields())).status == 415
    boundary = {"content-type": "multipart/form-data; boundary=x"}
    assert send("POST", SECRETS, headers=boundary, body=b"--x--").status == 415
    assert send("POST", SECRETS, body=as_form(fields())).status == 415  # no Content-Type
    huge = as_form(fields(padding="p" * 20_000))
    answer = send("POST", SECRETS, headers=FORM, body=huge)
    assert (answer.status, answer.json()) == (413, {"error": "body_too_large"})
    assert recorder.forms == []


def test_it_is_not_reachable_by_get(served: tuple[Send, Recorder]) -> None:
    send, recorder = served
    for method in ("GET", "PUT"):
        answer = send(method, SECRETS, query=urlencode(fields()))
        assert (answer.status, answer.headers.get("allow")) == (405, "POST")
    assert recorder.forms == []


def test_no_cross_site_check_refuses_amocrms_post(served: tuple[Send, Recorder]) -> None:
    """Server to server: whatever Origin, Sec-Fetch-Site or Referer it may carry, the state
    alone admits it (no cookie, no session; Django's CSRF check is off for it)."""
    send, _ = served
    foreign = {
        **FORM,
        "origin": "https://www.amocrm.ru",
        "sec-fetch-site": "cross-site",
        "referer": "https://www.amocrm.ru/oauth",
    }
    answer = send("POST", SECRETS, headers=foreign, body=as_form(fields()))
    assert (answer.status, answer.json()) == (200, {"ok": True})
    other_post = send("POST", f"{PREFIX}/disconnect", headers={**AS_USER, **foreign})
    assert other_post.json() == {"error": "cross_site_request"}  # the other POSTs keep it


def test_the_client_secret_is_in_no_log_line(
    served: tuple[Send, Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    send, _ = served
    caplog.set_level(logging.DEBUG)
    for headers, body in [(FORM, as_form(fields())), (JSON, json.dumps(fields()).encode())]:
        send("POST", SECRETS, headers=headers, body=body)
        send("POST", SECRETS, headers=headers, body=body + b"}")  # refused
        send("POST", SECRETS, headers=headers, body=as_form(fields("forged-state")))
    assert CLIENT_SECRET not in caplog.text
    assert not any(CLIENT_SECRET in repr(record.__dict__) for record in caplog.records)


def test_fixed_mode_has_no_secrets_route(adapter: str) -> None:
    """Without Config.secrets_uri the route does not exist: 404 under the prefix (the
    framework's own 404 at the root), and nothing is handed to the service."""
    with serving(adapter, **FIXED_MODE) as (send, recorder):
        answer = send("POST", SECRETS, headers=FORM, body=as_form(fields()))
        assert (answer.status, answer.json()) == (404, {"error": "not_found"})
        assert recorder.forms == []


def test_every_answer_of_the_route_is_one_it_declares() -> None:
    """What OpenAPI publishes: every refusal 403 whatever its reason, outages 502/503; and the
    site button's outages on /connect are among /connect's answers too."""
    handlers = button_handlers(metadata_config())
    declared = {route.name: {status for status, _ in route.responses} for route in handlers.routes}
    post = Request("POST", SECRETS, headers=FORM, body=as_form(fields()))
    for reason in sorted(REJECTION_REASONS):
        assert answered(handlers, post, CallbackRejected(reason), None) == 403, reason
    connect = Request("GET", f"{PREFIX}/connect")
    for outage in OUTAGES:
        assert answered(handlers, post, outage, None) in declared["secrets"], outage
        assert answered(handlers, connect, outage, "user-42") in declared["connect"], outage


# -- /connect in metadata mode ---------------------------------------------------------------------


def test_connect_shows_the_site_button_and_sets_the_binding_cookie(
    served: tuple[Send, Recorder],
) -> None:
    send, recorder = served
    cookie = "__Host-amo_oauth_binding"  # the redirect URI is https
    answer = send("GET", f"{PREFIX}/connect", headers={**AS_USER, "cookie": f"{cookie}=old"})
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert BUTTON_HTML in answer.text and "<h1>Connect amoCRM</h1>" in answer.text
    name_value, *attributes = answer.headers["set-cookie"].split("; ")
    assert name_value == f"{cookie}={BINDING}"  # as the redirect sets it: test_web's checks
    wanted = {"path=/", "max-age=1800", "httponly", "samesite=lax", "secure"}
    assert {attribute.lower() for attribute in attributes} == wanted
    policy = answer.headers["content-security-policy"]
    assert "script-src https://www.amocrm.ru;" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and answer.headers["cache-control"] == "no-store"
    assert recorder.buttons == [{"connection_id": "user-42", "binding": "old", "metadata": BUTTON}]
    russian = send("GET", f"{PREFIX}/connect", query="lang=ru", headers=AS_USER)
    assert "<h1>Подключите amoCRM</h1>" in russian.text and 'lang="ru"' in russian.text
    assert send("GET", f"{PREFIX}/connect").status == 401  # still the signed-in user's


def test_the_button_page_is_translated() -> None:
    for lang, text in web.PAGE_TEXTS.items():
        if lang != "en":
            assert text.site_button_title != web.PAGE_TEXTS["en"].site_button_title, lang
            assert text.site_button_body != web.PAGE_TEXTS["en"].site_button_body, lang


def test_a_kommo_button_script_is_what_the_page_allows() -> None:
    handlers = button_handlers(metadata_config(authorize_url="https://www.kommo.com/oauth"))
    answer = handlers.handle(Request("GET", f"{PREFIX}/connect", headers=AS_USER))
    assert "script-src https://www.kommo.com;" in answer.header("content-security-policy")


CONSTRUCTIONS: dict[str, Callable[[Any], object]] = {
    "sync": lambda service: Handlers(service, connection_id=user_from_header, app_scheme="a"),
    "async": lambda service: AsyncHandlers(service, connection_id=user_from_header, app_scheme="a"),
    "fastapi": lambda service: router(service, connection_id=user_from_header, app_scheme="a"),
    "flask": lambda service: blueprint(service, connection_id=user_from_header, app_scheme="a"),
    "django-sync": lambda service: urls(service, app_scheme="a"),
    "django-async": lambda service: urls(service, app_scheme="a"),
    "starlette": lambda service: _example().create_app(service, {}),
}


def test_metadata_mode_without_a_button_is_refused_at_construction(adapter: str) -> None:
    blocking = adapter in ("sync", "flask", "django-sync")
    kind = AmoOAuth if blocking else AsyncAmoOAuth
    service = kind(metadata_config(), store=MemoryStore())
    with pytest.raises(ValueError, match="button must be a ButtonMetadata") as refused:
        CONSTRUCTIONS[adapter](service)
    assert "not NoneType" in str(refused.value)


# -- the adapters' declarations --------------------------------------------------------------------


def test_openapi_lists_the_route_and_its_body() -> None:
    app = FastAPI()
    service = AsyncRecordingService(metadata_config())
    app.include_router(
        router(service, connection_id=user_from_header, app_scheme="a", button=BUTTON)
    )
    operation = app.openapi()["paths"][SECRETS]["post"]
    content = operation["requestBody"]["content"]
    assert set(content) == {"application/x-www-form-urlencoded", "application/json"}
    schema = content["application/json"]["schema"]
    assert schema["required"] == ["client_id", "client_secret", "state"]
    assert {"200", "403", "413", "415"} <= set(operation["responses"])
    assert set(app.openapi()["paths"][SECRETS]) == {"post"}
    fixed = FastAPI()
    fixed_service = AsyncRecordingService(metadata_config(**FIXED_MODE))
    fixed.include_router(router(fixed_service, connection_id=user_from_header, app_scheme="a"))
    assert SECRETS not in fixed.openapi()["paths"]


def test_django_names_the_pattern_and_exempts_it_from_csrf() -> None:
    for service in (RecordingService(metadata_config()), AsyncRecordingService(metadata_config())):
        patterns: list[URLPattern] = urls(service, app_scheme="a", button=BUTTON)
        secrets = next(p for p in patterns if p.name == "amo_oauth_secrets")
        assert getattr(secrets.callback, "csrf_exempt", False) is True


def test_djangos_error_report_shows_no_posted_secret() -> None:
    """A view that fails (here the app's connection_id) after a middleware read request.POST:
    Django's own report would list every posted value; the views mark them sensitive."""

    def failing(request: Request) -> str | None:
        raise RuntimeError("the app's sign-in is down")

    service = RecordingService(metadata_config(**FIXED_MODE))
    view = urls(service, connection_id=failing, app_scheme="a")[0].callback
    request = RequestFactory().post(f"{PREFIX}/exchange-code", {"code": CLIENT_SECRET})
    assert request.POST["code"] == CLIENT_SECRET  # what CSRF or a body-reading middleware does
    with pytest.raises(RuntimeError) as failed:
        view(request, rest="exchange-code")
    report = ExceptionReporter(request, failed.type, failed.value, failed.tb).get_traceback_text()
    assert CLIENT_SECRET not in report
    assert "code = '********************'" in report


# -- a real server's logs ----------------------------------------------------------------------


def test_uvicorn_at_trace_level_prints_no_client_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn --log-level trace logs every ASGI message of the request; the body is not
    among what it prints, and the route logs nothing of it. Fields sent in the query instead
    (amoCRM's encoding is undocumented) are not read, and the access line shows them
    redacted."""
    printed = tmp_path / "uvicorn.log"
    trace = SERVERS["uvicorn-trace"]
    app = trace.index("_access_log_apps:fastapi_app")
    monkeypatch.setitem(
        SERVERS, "uvicorn-secrets", [*trace[:app], "_secrets_apps:fastapi_app", *trace[app + 1 :]]
    )
    with _served("uvicorn-secrets", printed) as url:
        for body, status in ((as_form(fields()), 200), (as_form(fields("forged-state")), 403)):
            answer = httpx.post(url + SECRETS, content=body, headers=FORM)
            assert answer.status_code == status
        in_query = httpx.post(f"{url}{SECRETS}?{urlencode(fields())}")
        assert in_query.status_code == 415
        _wait_for(printed, 'HTTP/1.1" 415')
    text = printed.read_text()
    assert 'POST /api/amo-crm/secrets HTTP/1.1" 200' in text
    assert 'POST /api/amo-crm/secrets HTTP/1.1" 403' in text
    assert "client_secret=[redacted]" in text
    assert CLIENT_SECRET not in text and STATE_SECRET not in text
