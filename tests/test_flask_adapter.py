"""amo_oauth.flask: the routes on a Blueprint, driven through Flask's test client."""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import urlencode

import flask
import pytest
from flask.testing import FlaskClient

from amo_oauth import AmoOAuth
from amo_oauth.flask import blueprint
from amo_oauth.testing import FakeAmoCRM
from amo_oauth.web import Request
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


def app_for(oauth: AmoOAuth, **options: object) -> flask.Flask:
    app = flask.Flask(__name__)
    app.register_blueprint(
        blueprint(oauth, connection_id=user_from_header, app_scheme="foryoure"), **options
    )
    return app


@pytest.fixture
def client(oauth: AmoOAuth) -> FlaskClient:
    return app_for(oauth).test_client()


def sender(client: FlaskClient) -> Send:
    def send(
        method: str,
        path: str,
        *,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> Answer:
        response = client.open(
            path, method=method, query_string=query, headers=dict(headers or {}), data=body
        )
        names = {name.lower(): value for name, value in response.headers.items()}
        return Answer(response.status_code, names, response.get_data(as_text=True))

    return send


@pytest.fixture
def send(client: FlaskClient) -> Send:
    return sender(client)


def test_seed_scenario(send: Send, fake: FakeAmoCRM) -> None:
    seed_scenario(send, fake)


def test_replay_deny_and_forged_state(send: Send, fake: FakeAmoCRM) -> None:
    replay_deny_and_forgery(send, fake)


def test_the_callback_page_sends_no_referrer(send: Send, fake: FakeAmoCRM) -> None:
    callback_page_sends_no_referrer(send, fake)  # RFC 9700 §4.2: its URL holds the code


def test_every_route_and_status(send: Send, fake: FakeAmoCRM) -> None:
    assert send("GET", f"{PREFIX}/connect", headers=AS_USER).status == 302
    asked = send("GET", f"{PREFIX}/connect", headers={**AS_USER, "accept": "application/json"})
    assert (asked.status, set(asked.json())) == (200, {"url", "expires_at"})
    assert send("GET", f"{PREFIX}/connect").json() == {"error": "unauthenticated"}
    assert send("GET", f"{PREFIX}/status", headers={"x-user": "x" * 300}).status == 400
    assert send("GET", f"{PREFIX}/status", headers=AS_USER).json()["connected"] is False
    assert send("POST", f"{PREFIX}/disconnect", headers=AS_USER).status == 200
    body = json.dumps({"code": connect_through_callback(send, fake)}).encode()
    json_headers = {**AS_USER, "content-type": "application/json"}
    ok = send("POST", f"{PREFIX}/exchange-code", headers=json_headers, body=body)
    assert (ok.status, ok.json()["outcome"]) == (200, "already_connected")
    bad = send("POST", f"{PREFIX}/exchange-code", headers=json_headers, body=b"\xff")
    assert (bad.status, bad.json()) == (400, {"error": "malformed"})
    plain = {**AS_USER, "content-type": "text/plain"}
    assert send("POST", f"{PREFIX}/exchange-code", headers=plain, body=b"x").status == 415
    huge = send("POST", f"{PREFIX}/exchange-code", headers=json_headers, body=b" " * 100_000)
    assert (huge.status, huge.json()) == (413, {"error": "body_too_large"})
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


@pytest.mark.parametrize(("method", "path", "status", "allow"), WRONG_ROUTES)
def test_wrong_methods_and_paths_get_the_handlers_json(
    send: Send, method: str, path: str, status: int, allow: str | None
) -> None:
    check_wrong_route(send, method, path, status, allow)


def test_publishes_the_same_routes_as_the_handlers(oauth: AmoOAuth) -> None:
    app = app_for(oauth)
    rules = {
        (rule.rule, method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("amo_oauth.")
        and rule.endpoint != "amo_oauth.other"
        and not rule.endpoint.endswith("_other_methods")  # they answer 405
        for method in rule.methods or ()
        if method != "HEAD"
    }
    assert rules == {
        (f"{PREFIX}/connect", "GET"),
        (f"{PREFIX}/callback", "GET"),
        (f"{PREFIX}/exchange-code", "POST"),
        (f"{PREFIX}/status", "GET"),
        (f"{PREFIX}/disconnect", "POST"),
        (f"{PREFIX}/disconnect-hook", "GET"),
    }


def test_works_under_a_url_prefix(oauth: AmoOAuth) -> None:
    client = app_for(oauth, url_prefix="/v1").test_client()
    assert client.get(f"/v1{PREFIX}/status", headers=AS_USER).status_code == 200
    assert client.get(f"{PREFIX}/status", headers=AS_USER).status_code == 404


def test_the_session_and_abort_work_in_connection_id(oauth: AmoOAuth) -> None:
    def from_session(request: Request) -> str | None:
        assert request.native is flask.request
        if "user" not in flask.session:
            flask.abort(401)
        return str(flask.session["user"])

    app = flask.Flask(__name__)
    app.secret_key = "test-only-secret-key"
    app.register_blueprint(blueprint(oauth, connection_id=from_session, app_scheme="app"))
    client = app.test_client()
    assert client.get(f"{PREFIX}/status").status_code == 401  # Flask's own abort page
    with client.session_transaction() as session:
        session["user"] = "user-9"
    assert client.get(f"{PREFIX}/status").status_code == 200


def test_a_bad_prefix_fails_at_construction(oauth: AmoOAuth) -> None:
    with pytest.raises(ValueError, match="prefix"):
        blueprint(oauth, connection_id=user_from_header, app_scheme="app", prefix="no-slash")


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_wrong_method_is_405_on_every_route(oauth: AmoOAuth, prefix: str) -> None:
    """At the root too, where there is no catch-all: Flask answered its own HTML 405 there."""
    app = flask.Flask(__name__)
    app.register_blueprint(
        blueprint(oauth, connection_id=user_from_header, app_scheme="app", prefix=prefix)
    )
    assert wrong_methods_answered_otherwise(sender(app.test_client()), prefix) == []


@pytest.mark.parametrize("kind", BODIES)
def test_exchange_code_answers_a_known_code_posted_as_json_or_a_form(
    send: Send, fake: FakeAmoCRM, kind: str
) -> None:
    check_known_code_is_answered(send, fake, kind)


def read_the_form() -> None:
    """What Flask-WTF's CSRFProtect does before every POST."""
    assert flask.request.form is not None


@pytest.mark.parametrize("kind", BODIES)
def test_a_hook_that_read_the_form_first_leaves_the_body_readable(
    oauth: AmoOAuth, fake: FakeAmoCRM, kind: str
) -> None:
    """Flask-WTF's CSRFProtect reads ``request.form`` in a ``before_request`` hook, which
    drains a form body from the stream: the seed's replay posted as a form then answered 400
    ``missing_code`` instead of 200."""
    app = app_for(oauth)
    app.before_request(read_the_form)
    check_known_code_is_answered(sender(app.test_client()), fake, kind)


def test_a_repeated_field_survives_a_hook_that_read_the_form(oauth: AmoOAuth) -> None:
    """Every value is handed on, so the web layer still refuses a name sent twice."""
    app = app_for(oauth)
    app.before_request(read_the_form)
    form = {"content-type": "application/x-www-form-urlencoded", **AS_USER}
    body = urlencode([("code", "a"), ("code", "b"), ("state", "s")]).encode()
    answer = sender(app.test_client())("POST", f"{PREFIX}/exchange-code", headers=form, body=body)
    assert answer.status == 400
    assert answer.json()["error"] != "missing_code"
