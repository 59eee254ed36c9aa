"""FakeAmoCRM plays the site button's metadata-mode install (protocol notes §7; issue 22, item 5).

Against a tiny stand-in receiver, not the library's route: the credentials post (exactly
``client_id``, ``client_secret``, ``state``, form-encoded), the NEW integration whose
credentials redeem only its own codes, the redirect's parameters, the served script and
consent pages, and the retried, late, never-sent and forged posts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from wsgiref import simple_server
from wsgiref.types import StartResponse, WSGIEnvironment

import attrs
import httpx
import pytest

from amo_oauth.testing import FakeAmoCRM, FakeIntegration, SiteButtonInstall

REDIRECT = "https://backend.example/api/amo-crm/callback"
SECRETS = "https://backend.example/api/amo-crm/secrets"
STATE = "state-from-begin"
#: Every data-* attribute amoCRM's button script reads (§7).
BUTTON_ATTRIBUTES = (
    "data-client-id",
    "data-title",
    "data-compact",
    "data-class-name",
    "data-color",
    "data-theme",
    "data-locale",
    "data-state",
    "data-error-callback",
    "data-mode",
    "data-name",
    "data-description",
    "data-logo",
    "data-redirect_uri",
    "data-secrets_uri",
    "data-scopes",
)


@attrs.frozen
class Seen:
    """One request the receiver got."""

    method: str
    path: str
    content_type: str
    query: str
    body: bytes


class Receiver:
    """A stand-in backend (a WSGI app): records every request; its secrets path answers
    `status`, every other path 200 (`/` serves `page`)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.seen: list[Seen] = []
        self.page = b""
        self.on_secrets: Callable[[], object] = lambda: None

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        path = environ["PATH_INFO"]
        self.seen.append(
            Seen(
                environ["REQUEST_METHOD"],
                path,
                environ.get("CONTENT_TYPE", ""),
                environ.get("QUERY_STRING", ""),
                environ["wsgi.input"].read(length) if length else b"",
            )
        )
        if path.endswith("/secrets"):
            self.on_secrets()
        status = self.status if path.endswith("/secrets") else 200
        kind = "text/html" if path == "/" else "text/plain"
        start_response(f"{status} {HTTPStatus(status).phrase}", [("content-type", kind)])
        return [self.page if path == "/" else b"ok"]

    def posts(self) -> list[dict[str, str]]:
        """The bodies posted to the secrets path, as forms."""
        return [
            dict(parse_qsl(seen.body.decode()))
            for seen in self.seen
            if seen.method == "POST" and seen.path.endswith("/secrets")
        ]


def exchange(
    fake: FakeAmoCRM, code: str, integration: FakeIntegration, host: str | None = None
) -> httpx.Response:
    """Redeem `code` at the token endpoint with `integration`'s credentials."""
    with httpx.Client(transport=fake.transport()) as client:
        return client.post(
            f"https://{host or fake.account_host}/oauth2/access_token",
            json={
                "client_id": integration.client_id,
                "client_secret": integration.client_secret,
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": integration.redirect_uri,
            },
        )


def redirect_query(install: SiteButtonInstall) -> dict[str, str]:
    assert install.redirect_url is not None
    return dict(parse_qsl(urlsplit(install.redirect_url).query))


def install(fake: FakeAmoCRM, receiver: Receiver, **options: Any) -> SiteButtonInstall:
    arguments = {"redirect_uri": REDIRECT, "secrets_uri": SECRETS, "state": STATE} | options
    return fake.install_site_button(transport=httpx.WSGITransport(app=receiver), **arguments)


def test_the_install_posts_exactly_three_fields_form_encoded_then_redirects() -> None:
    fake, receiver = FakeAmoCRM(), Receiver()
    done = install(fake, receiver)

    [seen] = receiver.seen
    assert (seen.method, seen.path, seen.query) == ("POST", "/api/amo-crm/secrets", "")
    assert seen.content_type == "application/x-www-form-urlencoded"
    new = done.integration
    assert dict(parse_qsl(seen.body.decode(), strict_parsing=True)) == {
        "client_id": new.client_id,
        "client_secret": new.client_secret,
        "state": STATE,
    }
    assert new.client_id != fake.client_id
    assert (new.redirect_uri, fake.site_button_integrations) == (REDIRECT, (new,))
    assert new in fake.integrations
    [post] = fake.secrets_posts
    assert done.posts == (post,)
    assert (post.url, post.client_id, post.state, post.status) == (
        SECRETS,
        new.client_id,
        STATE,
        200,
    )
    assert (post.body, post.accepted, post.error) == (b"ok", True, None)

    assert done.redirect_url is not None
    assert done.redirect_url.startswith(REDIRECT + "?")
    query = redirect_query(done)
    assert list(query) == ["code", "state", "referer", "client_id", "platform"]
    assert (query["state"], query["referer"]) == (STATE, fake.account_host)
    assert (query["client_id"], query["platform"]) == (new.client_id, "1")
    assert fake.codes_issued == 1


def test_a_kommo_account_redirects_with_platform_2() -> None:
    fake, receiver = FakeAmoCRM(subdomain="acme", domain="kommo.com"), Receiver()
    query = redirect_query(install(fake, receiver))
    assert (query["referer"], query["platform"]) == ("acme.kommo.com", "2")


def test_the_new_credentials_redeem_only_their_own_codes() -> None:
    fake, receiver = FakeAmoCRM(rate_limit=None), Receiver()
    done = install(fake, receiver)
    code = redirect_query(done)["code"]

    wrong = exchange(fake, code, fake.default_integration)
    assert (wrong.status_code, wrong.json()["hint"]) == (
        400,
        "Authorization code was not issued to this client",
    )
    right = exchange(fake, code, done.integration)
    assert right.status_code == 200, right.text
    assert fake.token_call_count(outcome="ok", integration=done.integration) == 1
    assert fake.token_call_count(outcome="code_wrong_client", integration=fake.client_id) == 1

    # The other way round: the default integration's code is not the new one's.
    other = exchange(fake, fake.issue_code(), done.integration)
    assert other.json()["hint"] == "Authorization code was not issued to this client"
    # Its refresh token too belongs to the new integration alone.
    with httpx.Client(transport=fake.transport()) as client:
        body = {
            "client_id": fake.client_id,
            "client_secret": fake.client_secret,
            "grant_type": "refresh_token",
            "refresh_token": right.json()["refresh_token"],
            "redirect_uri": fake.redirect_uri,
        }
        refused = client.post(f"https://{fake.account_host}/oauth2/access_token", json=body)
    assert (refused.status_code, refused.json()["hint"]) == (401, "Token is not linked to client")
    # The disconnect hook of that install is signed with the new integration's secret (§6).
    assert (
        fake.hook_query(integration=done.integration)["client_uuid"] == done.integration.client_id
    )


@pytest.mark.parametrize("status", [201, 204, 302, 403, 500])
def test_an_answer_other_than_200_stops_the_install_before_any_code(status: int) -> None:
    fake, receiver = FakeAmoCRM(), Receiver(status)
    done = install(fake, receiver)
    assert done.redirect_url is None
    assert (done.posts[-1].status, done.posts[-1].accepted) == (status, False)
    assert fake.codes_issued == 0


def test_an_unreachable_secrets_uri_is_recorded_and_stops_the_install() -> None:
    fake = FakeAmoCRM()

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    done = fake.install_site_button(
        redirect_uri=REDIRECT,
        secrets_uri=SECRETS,
        state=STATE,
        transport=httpx.MockTransport(unreachable),
    )
    [post] = done.posts
    assert (post.status, post.error, done.redirect_url) == (None, "ConnectError", None)
    assert fake.codes_issued == 0


def test_a_retried_install_makes_a_second_integration_posted_under_the_same_state() -> None:
    fake, receiver = FakeAmoCRM(), Receiver()
    done = install(fake, receiver, attempts=2)

    first, second = done.integrations
    assert first.client_id != second.client_id and first.client_secret != second.client_secret
    assert fake.site_button_integrations == (first, second)
    assert receiver.posts() == [
        {"client_id": first.client_id, "client_secret": first.client_secret, "state": STATE},
        {"client_id": second.client_id, "client_secret": second.client_secret, "state": STATE},
    ]
    assert redirect_query(done)["client_id"] == second.client_id == done.integration.client_id
    code = redirect_query(done)["code"]
    assert exchange(fake, code, first).json()["hint"].endswith("not issued to this client")
    assert exchange(fake, code, second).status_code == 200


def test_a_late_post_follows_the_redirect() -> None:
    fake, receiver = FakeAmoCRM(), Receiver()
    done = install(fake, receiver, post_credentials=False)
    assert (done.posts, receiver.seen, fake.secrets_posts) == ((), [], ())
    assert redirect_query(done)["client_id"] == done.integration.client_id

    late = fake.post_site_button_secrets(done, transport=httpx.WSGITransport(app=receiver))
    assert [post.status for post in late] == [200]
    assert fake.secrets_posts == late
    integration = done.integration
    assert receiver.posts() == [
        {
            "client_id": integration.client_id,
            "client_secret": integration.client_secret,
            "state": STATE,
        }
    ]


def test_a_post_never_sent_leaves_only_the_redirect() -> None:
    fake, receiver = FakeAmoCRM(rate_limit=None), Receiver()
    done = install(fake, receiver, post_credentials=False)
    assert (receiver.seen, fake.secrets_posts) == ([], ())
    assert exchange(fake, redirect_query(done)["code"], done.integration).status_code == 200


def test_a_forged_and_a_replayed_post() -> None:
    fake, receiver = FakeAmoCRM(), Receiver()
    done = install(fake, receiver)
    receiver.status = 403  # what a backend answers a state it never issued
    transport = httpx.WSGITransport(app=receiver)
    [forged] = fake.post_site_button_secrets(done, transport=transport, state="forged-state")
    [replayed] = fake.post_site_button_secrets(done, transport=transport)
    assert [p["state"] for p in receiver.posts()] == [STATE, "forged-state", STATE]
    assert (forged.state, forged.status, replayed.state) == ("forged-state", 403, STATE)
    assert fake.secrets_posts == (*done.posts, forged, replayed)
    assert fake.codes_issued == 1  # posts alone issue nothing


def test_the_async_twins_post_through_an_asgi_app() -> None:
    seen: list[tuple[str, bytes]] = []

    async def app(
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        message = await receive()
        headers = dict(scope["headers"])
        seen.append((headers[b"content-type"].decode(), message.get("body", b"")))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    fake = FakeAmoCRM()

    async def run() -> tuple[SiteButtonInstall, tuple[Any, ...]]:
        transport = httpx.ASGITransport(app=app)
        done = await fake.ainstall_site_button(
            redirect_uri=REDIRECT, secrets_uri=SECRETS, state=STATE, transport=transport
        )
        again = await fake.apost_site_button_secrets(done, transport=transport, state="x")
        return done, again

    done, again = asyncio.run(run())
    assert [post.status for post in (*done.posts, *again)] == [200, 200]
    assert seen[0][0] == "application/x-www-form-urlencoded"
    assert dict(parse_qsl(seen[0][1].decode()))["client_id"] == done.integration.client_id
    assert dict(parse_qsl(seen[1][1].decode()))["state"] == "x"
    assert redirect_query(done)["client_id"] == done.integration.client_id


@pytest.mark.parametrize(
    ("redirect_uri", "secrets_uri"),
    [
        ("http://backend.example/cb", SECRETS),  # §7: both URLs must be https
        (REDIRECT, "http://backend.example/secrets"),
        (REDIRECT, "ftp://backend.example/secrets"),
    ],
)
def test_urls_that_are_not_https_are_refused(redirect_uri: str, secrets_uri: str) -> None:
    fake = FakeAmoCRM()
    with pytest.raises(ValueError, match="https"):
        fake.install_site_button(
            redirect_uri=redirect_uri,
            secrets_uri=secrets_uri,
            state=STATE,
            transport=httpx.WSGITransport(app=Receiver()),
        )
    assert fake.site_button_integrations == ()


def test_without_a_transport_only_a_loopback_secrets_uri_is_posted_to() -> None:
    fake = FakeAmoCRM()
    with pytest.raises(ValueError, match="loopback"):
        fake.install_site_button(redirect_uri=REDIRECT, secrets_uri=SECRETS, state=STATE)
    with pytest.raises(ValueError, match="state"):
        install(fake, Receiver(), state="")
    with pytest.raises(ValueError, match="attempts"):
        install(fake, Receiver(), attempts=0)
    assert fake.site_button_integrations == ()


def test_no_secret_in_the_reprs() -> None:
    fake, receiver = FakeAmoCRM(), Receiver()
    done = install(fake, receiver)
    shown = repr(done) + repr(fake.secrets_posts) + repr(fake.site_button_integrations)
    assert done.redirect_url is not None
    for secret in (done.integration.client_secret, STATE, redirect_query(done)["code"]):
        assert secret not in shown
    assert done.integration.client_id in shown


# -- the served pages --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "path"),
    [("www.amocrm.ru", "/auth/button.min.js"), ("www.kommo.com", "/auth/button.js")],
)
def test_the_button_script_is_served_as_javascript(host: str, path: str) -> None:
    fake = FakeAmoCRM(domain=host.removeprefix("www."))
    with httpx.Client(transport=fake.transport()) as client:
        answer = client.get(f"https://{host}{path}")
        elsewhere = client.get(f"https://{fake.account_host}{path}")
        posted = client.post(f"https://{host}{path}")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/javascript; charset=utf-8"
    for name in BUTTON_ATTRIBUTES:
        assert f'"{name.removeprefix("data-")}"' in answer.text, name
    assert '"scopes[]"' in answer.text  # data-scopes goes out as repeated scopes[] (§7)
    assert (elsewhere.status_code, posted.status_code) == (404, 405)


def button_query(secrets_uri: str = SECRETS, redirect_uri: str = REDIRECT) -> str:
    return urlencode(
        [
            ("name", "Product <b>"),
            ("description", "Does things"),
            ("redirect_uri", redirect_uri),
            ("secrets_uri", secrets_uri),
            ("scopes[]", "crm"),
            ("scopes[]", "notifications"),
            ("state", STATE),
            ("mode", "popup"),
        ]
    )


def test_the_served_consent_page_installs_through_the_secrets_transport() -> None:
    receiver = Receiver()
    fake = FakeAmoCRM(secrets_transport=httpx.WSGITransport(app=receiver))
    with httpx.Client(transport=fake.transport()) as client:
        page = client.get(f"https://www.amocrm.ru/oauth?{button_query()}")
        assert page.status_code == 200
        assert "Product &lt;b&gt;" in page.text and "crm, notifications" in page.text
        assert 'action="/oauth/install"' in page.text
        assert page.text.count('name="scopes[]"') == 2
        allowed = client.get(f"https://www.amocrm.ru/oauth/install?{button_query()}")
    assert allowed.status_code == 302
    [new] = fake.site_button_integrations
    query = dict(parse_qsl(urlsplit(allowed.headers["location"]).query))
    assert (query["client_id"], query["state"], query["platform"]) == (new.client_id, STATE, "1")
    assert receiver.posts() == [
        {"client_id": new.client_id, "client_secret": new.client_secret, "state": STATE}
    ]


def test_the_served_install_stops_when_secrets_uri_does_not_answer_200() -> None:
    receiver = Receiver(204)
    fake = FakeAmoCRM(secrets_transport=httpx.WSGITransport(app=receiver))
    with httpx.Client(transport=fake.transport()) as client:
        answer = client.get(f"https://www.amocrm.ru/oauth/install?{button_query()}")
    assert answer.status_code == 502 and "answered 204, not 200" in answer.text
    assert fake.codes_issued == 0


@pytest.mark.parametrize(
    ("query", "said"),
    [
        (button_query().replace("name=", "nom="), "missing name"),
        (button_query().replace("scopes%5B%5D=", "scope="), "missing scopes[]"),
        (button_query().replace("state=", "s="), "missing state"),
        (button_query(secrets_uri="http://backend.example/s"), "secrets_uri must be an https"),
    ],
)
def test_a_metadata_button_missing_what_section_7_requires_is_refused(
    query: str, said: str
) -> None:
    fake = FakeAmoCRM(secrets_transport=httpx.WSGITransport(app=Receiver()))
    with httpx.Client(transport=fake.transport()) as client:
        for path in ("/oauth", "/oauth/install"):
            answer = client.get(f"https://www.amocrm.ru{path}?{query}")
            assert answer.status_code == 400 and said in answer.text, path
        put = client.put(f"https://www.amocrm.ru/oauth/install?{button_query()}")
        assert put.status_code == 405
    assert fake.site_button_integrations == ()


@contextlib.contextmanager
def served(app: Callable[..., Any]) -> Iterator[str]:
    """`app` on 127.0.0.1 (a free port) while the block runs; yields its base URL."""
    server = simple_server.make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietHandler(simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """No access log in the test output (it would show the callback's code)."""


def test_the_served_install_posts_over_loopback_http_without_holding_the_fakes_lock() -> None:
    receiver, fake = Receiver(), FakeAmoCRM()
    # The backend reads the fake (on its own thread) while it answers the post: a fake that
    # held its lock over the post would wait on itself until the post timed out.
    receiver.on_secrets = lambda: fake.requests
    with served(receiver) as backend, fake.serve() as running:
        query = button_query(f"{backend}/secrets", f"{backend}/callback")
        answer = httpx.get(f"{running.url}/oauth/install?{query}", follow_redirects=False)
    assert answer.status_code == 302
    assert answer.headers["location"].startswith(f"{backend}/callback?code=")
    [new] = fake.site_button_integrations
    assert receiver.posts()[0]["client_id"] == new.client_id


CHROMIUM = Path("/usr/bin/chromium")


def _missing(what: str) -> None:
    if os.environ.get("AMO_OAUTH_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{what}, and AMO_OAUTH_REQUIRE_BROWSER=1")
    pytest.skip(what)


@pytest.mark.browser
def test_a_person_clicks_the_served_button_in_a_browser() -> None:
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} not found")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    receiver, fake = Receiver(), FakeAmoCRM()
    with served(receiver) as backend, fake.serve() as running, sync_playwright() as playwright:
        receiver.page = (
            f'<!doctype html><title>shop</title><body><script src="{running.url}'
            f'/auth/button.min.js"'
            f' data-name="Shop" data-description="A shop" data-scopes="crm,notifications"'
            f' data-redirect_uri="{backend}/callback" data-secrets_uri="{backend}/secrets"'
            f' data-state="{STATE}" data-title="Install"></script>'
        ).encode()
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            page.goto(f"{backend}/")
            with page.expect_popup() as opened:
                page.click("button.amocrm_oauth")
            popup = opened.value
            popup.click("#allow")
            popup.wait_for_url(f"{backend}/callback?*")
        finally:
            browser.close()
    [new] = fake.site_button_integrations
    assert receiver.posts() == [
        {"client_id": new.client_id, "client_secret": new.client_secret, "state": STATE}
    ]
    [arrived] = [seen.query for seen in receiver.seen if seen.path == "/callback"]
    callback = dict(parse_qsl(arrived))
    assert (callback["client_id"], callback["state"], callback["platform"]) == (
        new.client_id,
        STATE,
        "1",
    )
