"""``amo-oauth fake``: FakeAmoCRM on loopback for a person's own backend, configured by what it
prints; and the loopback transport that carries amoCRM's hosts there and nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from wsgiref import simple_server
from wsgiref.types import StartResponse, WSGIEnvironment

import httpx
import pytest

from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    ButtonMetadata,
    CallbackRejected,
    Config,
    MemoryStore,
    Outcome,
)
from amo_oauth._fake_command import MAX_ACCOUNTS, build_fake, run_fake
from amo_oauth.cli import main
from amo_oauth.testing import AsyncLoopbackTransport, FakeAmoCRM, LoopbackTransport
from e2e_support import MOBILE, consent_url_the_script_opens, query_of, script_attributes
from fake_process import free_port, running_fake

pytestmark = pytest.mark.timeout(120)

CALLBACK = "http://127.0.0.1:8000/api/amo-crm/callback"
# What must never be printed: the fake's codes and refresh tokens ("def50200" + hex) and its
# JWT-shaped access tokens. (The fake's client secret is printed on purpose: it is a fake's.)
TOKENS = re.compile(r"def50200[0-9a-f]{16}|eyJ[\w-]{10,}")


def _consent(browser: httpx.Client, url: str, button: str = "Allow") -> dict[str, str]:
    """A person on the consent page: press ``button``; the redirect's query."""
    return query_of(MOBILE.press(browser, url, button))


def test_a_client_configured_by_the_printed_snippet_connects_through_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the snippet's AmoOAuth keeps its SQLite file here
    with running_fake("--port", "0") as fake:
        namespace: dict[str, Any] = {}
        exec(compile(fake.snippet, "<amo-oauth fake's snippet>", "exec"), namespace)
        oauth: AmoOAuth = namespace["oauth"]
        config: Config = namespace["config"]
        assert config.redirect_uri == CALLBACK  # the default: uvicorn's address
        with oauth, httpx.Client(follow_redirects=False) as browser:
            started = oauth.begin("user-42")
            assert started.url.startswith(fake.env["AMO_AUTHORIZE_URL"] + "?")
            query = _consent(browser, started.url)
            assert query["referer"] == "test.amocrm.ru"
            result = oauth.handle_callback(query, binding=started.binding)
            assert result.outcome is Outcome.CONNECTED
            leads = namespace["http"].get(
                "https://test.amocrm.ru/api/v4/leads", auth=oauth.auth("user-42")
            )
            assert leads.status_code == 200 and len(leads.json()["_embedded"]["leads"]) == 3
        rest, err = fake.interrupt()
    assert fake.process.returncode == 130
    assert err == "amo-oauth: interrupted\n"  # no traceback
    # The request log: one line per request, never a query (the code, the state).
    assert "  GET 127.0.0.1/oauth: 200" in rest
    assert "  POST test.amocrm.ru/oauth2/access_token: 200" in rest
    assert "  GET test.amocrm.ru/api/v4/leads: 200" in rest
    assert "?" not in rest
    assert not TOKENS.search("".join(fake.banner) + rest + err)


def test_the_environment_lines_configure_an_async_backend(tmp_path: Path) -> None:
    callback = "http://127.0.0.1:5000/api/amo-crm/callback"
    with running_fake("--port", "0", "--redirect-uri", callback, cwd=tmp_path) as fake:
        env = fake.env
        assert set(env) == {
            "AMO_CLIENT_ID",
            "AMO_CLIENT_SECRET",
            "AMO_REDIRECT_URI",
            "AMO_AUTHORIZE_URL",
            "AMO_FAKE_URL",
            "AMO_STATE_SECRET",
        }
        assert env["AMO_REDIRECT_URI"] == callback
        assert env["AMO_AUTHORIZE_URL"] == env["AMO_FAKE_URL"] + "/oauth"
        # Your own secret: the line makes a new one in the shell, the fake never prints one.
        assert "secrets.token_hex(32)" in fake.env_lines[-1]
        asyncio.run(_connect_async(env))
        fake.interrupt()
    assert fake.process.returncode == 130


async def _connect_async(env: dict[str, str]) -> None:
    config = Config(
        client_id=env["AMO_CLIENT_ID"],
        client_secret=env["AMO_CLIENT_SECRET"],
        redirect_uri=env["AMO_REDIRECT_URI"],
        state_secret="at-least-32-bytes-of-random-secret",
        authorize_url=env["AMO_AUTHORIZE_URL"],
    )
    http = httpx.AsyncClient(transport=AsyncLoopbackTransport.to(env["AMO_FAKE_URL"]))
    async with AsyncAmoOAuth(config, store=MemoryStore(), http=http) as oauth:
        started = await oauth.begin("user-7")
        with httpx.Client() as browser:
            query = await asyncio.to_thread(_consent, browser, started.url)
        result = await oauth.handle_callback(query, binding=started.binding)
        assert result.outcome is Outcome.CONNECTED
        account = await http.get("https://test.amocrm.ru/api/v4/account", auth=oauth.auth("user-7"))
        assert account.json()["subdomain"] == "test"
    await http.aclose()


def test_several_accounts_are_offered_on_the_consent_page() -> None:
    with running_fake("--port", "0", "--accounts", "3") as fake:
        assert "test3.amocrm.ru  'Test account 3'" in "".join(fake.banner)
        config = Config(
            client_id=fake.env["AMO_CLIENT_ID"],
            client_secret=fake.env["AMO_CLIENT_SECRET"],
            redirect_uri=fake.env["AMO_REDIRECT_URI"],
            state_secret="at-least-32-bytes-of-random-secret",
            authorize_url=fake.env["AMO_AUTHORIZE_URL"],
        )
        http = httpx.Client(transport=LoopbackTransport.to(fake.env["AMO_FAKE_URL"]))
        with AmoOAuth(config, store=MemoryStore(), http=http) as oauth, httpx.Client() as browser:
            started = oauth.begin("user-3")
            page = browser.get(started.url).text
            assert page.count("<option ") == 3
            chosen = re.search(r'<option value="(\d+)">Test account 3', page)
            assert chosen is not None
            allow = httpx.URL(fake.env["AMO_FAKE_URL"] + "/oauth/allow").copy_merge_params(
                {**dict(httpx.URL(started.url).params), "account": chosen[1]}
            )
            query = query_of(browser.get(allow).headers["location"])
            assert query["referer"] == "test3.amocrm.ru"
            result = oauth.handle_callback(query, binding=started.binding)
            assert result.connection.host == "test3.amocrm.ru"
        http.close()
        fake.interrupt()


def test_the_consent_page_offers_no_choice_with_one_account_and_refuses_an_unknown_one() -> None:
    fake = FakeAmoCRM()
    with httpx.Client(transport=fake.transport()) as browser:
        page = browser.get(fake.authorization_url("s")).text
        assert "<select" not in page and "Test account" in page
        unknown = browser.get(
            f"https://{fake.consent_host}/oauth/allow",
            params={"client_id": fake.client_id, "state": "s", "account": "12345"},
        )
        assert unknown.status_code == 400
    assert fake.codes_issued == 0


def test_help_names_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["fake", "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    for option in ("--port", "--redirect-uri", "--accounts", "authorize_url"):
        assert option in shown


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"accounts": MAX_ACCOUNTS + 1}, f"--accounts must be 1 to {MAX_ACCOUNTS}"),
        ({"redirect_uri": "http://backend.example/cb"}, "redirect_uri"),
    ],
)
def test_bad_options_exit_2_with_the_reason(
    options: dict[str, Any], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_fake(port=0, **options) == 2
    assert says in capsys.readouterr().err


def test_a_taken_port_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run_fake(port=port) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--port=-1", "--port=65536", "--accounts=0", "--port=x"])
def test_the_command_line_refuses_out_of_range_numbers(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["fake", flag])
    assert exited.value.code == 2
    assert flag.split("=")[0] in capsys.readouterr().err


def test_build_fake_gives_every_account_its_own_host() -> None:
    fake = build_fake(CALLBACK, 2)
    assert [a.host for a in fake.accounts] == ["test.amocrm.ru", "test2.amocrm.ru"]
    assert fake.redirect_uri == CALLBACK


# -- the loopback transport --------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://backend.example:8765",  # not this machine: the secret would leave it
        "http://10.0.0.1:8765",
        "https://127.0.0.1:8765",
        "http://127.0.0.1",  # no port
        "http://127.0.0.1:8765/oauth",
        "http://user:pw@127.0.0.1:8765",
    ],
)
def test_the_loopback_transport_goes_nowhere_but_a_loopback_server(url: str) -> None:
    with pytest.raises(ValueError, match="served fake"):
        LoopbackTransport.to(url)
    with pytest.raises(ValueError, match="served fake"):
        AsyncLoopbackTransport.to(url)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.0.0.2"])
def test_the_loopback_transport_takes_any_loopback_address(host: str) -> None:
    LoopbackTransport.to(f"http://{host}:8765").close()


def test_the_loopback_transport_refuses_hosts_outside_the_domain() -> None:
    fake = FakeAmoCRM()
    with fake.serve() as served, httpx.Client(transport=LoopbackTransport.to(served.url)) as http:
        assert http.get("https://test.amocrm.ru/api/v4/account").status_code == 401
        with pytest.raises(httpx.ConnectError, match=r"no route to host 'backend\.example'"):
            http.get("https://backend.example/api/v4/account")
        with pytest.raises(httpx.ConnectError, match="no route"):
            http.get("https://test.kommo.com/api/v4/account")  # another domain: another route


def test_the_request_log_escapes_what_a_terminal_would_act_on() -> None:
    """The method and the Host header are the client's: an escape sequence in them reached the
    operator's terminal as it was sent."""
    with running_fake("--port", "0") as fake:
        port = int(fake.env["AMO_AUTHORIZE_URL"].split(":")[2].split("/")[0])
        answers = [_raw_get(port, host) for host in (b"\x1b[2Jevil", b"evil\x1bc\x07")]
        assert fake.process.stdout is not None
        logged = ""  # the log as it comes: the command prints each request a moment later
        while "/oauth: " not in logged:
            logged += fake.process.stdout.readline()
        rest, err = fake.interrupt()
    assert "\x1b" not in logged + rest + err and "\x07" not in logged + rest + err
    assert "  GET evil\\x1bc\\x07/oauth: " in logged
    assert answers[1].startswith(b"HTTP/1.0 400 ")  # a Host no URL holds: the client's error
    assert "Traceback" not in err


def _raw_get(port: int, host: bytes) -> bytes:
    """GET /oauth with ``host`` as the Host header, as no HTTP library would send it."""
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(b"GET /oauth HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    return answer


def test_site_button_prints_a_metadata_mode_configuration_that_installs_through_the_fake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review's case: the fake printed only a fixed client id and its secret, which metadata
    mode refuses. With --site-button: secrets_uri, the fake's button script, no secret; the
    printed snippet then installs through the served fake's button and consent page."""
    monkeypatch.chdir(tmp_path)  # the snippet's AmoOAuth keeps its SQLite file here
    port = free_port()
    callback = f"http://127.0.0.1:{port}/api/amo-crm/callback"
    with running_fake("--port", "0", "--site-button", "--redirect-uri", callback) as fake:
        env = fake.env
        assert set(env) == {
            "AMO_CLIENT_ID",
            "AMO_SECRETS_URI",
            "AMO_REDIRECT_URI",
            "AMO_BUTTON_SCRIPT_URL",
            "AMO_FAKE_URL",
            "AMO_STATE_SECRET",
        }
        assert env["AMO_SECRETS_URI"] == f"http://127.0.0.1:{port}/api/amo-crm/secrets"
        assert env["AMO_BUTTON_SCRIPT_URL"] == env["AMO_FAKE_URL"] + "/auth/button.min.js"
        assert "client_secret" not in fake.snippet and "AMO_CLIENT_SECRET" not in fake.env_lines
        namespace: dict[str, Any] = {}
        exec(compile(fake.snippet, "<amo-oauth fake's snippet>", "exec"), namespace)
        oauth: AmoOAuth = namespace["oauth"]
        assert oauth.config.metadata_mode
        with oauth, _secrets_route(oauth, port), httpx.Client(follow_redirects=False) as browser:
            button = oauth.site_button("user-9", metadata=ButtonMetadata("Mine", "Leads", ("crm",)))
            attributes = script_attributes(button.html)
            script = browser.get(attributes["src"])
            assert script.status_code == 200 and "javascript" in script.headers["content-type"]
            query = _consent(browser, consent_url_the_script_opens(attributes))
            assert query["client_id"] != fake.env["AMO_CLIENT_ID"]  # the install's own
            result = oauth.handle_callback(query, binding=button.binding)
            assert result.outcome is Outcome.CONNECTED
            leads = namespace["http"].get(
                "https://test.amocrm.ru/api/v4/leads", auth=oauth.auth("user-9")
            )
            assert leads.status_code == 200
        rest, _ = fake.interrupt()
    assert "  POST test.amocrm.ru/oauth2/access_token: 200" in rest
    assert not TOKENS.search("".join(fake.banner) + rest)


@contextlib.contextmanager
def _secrets_route(oauth: AmoOAuth, port: int) -> Iterator[None]:
    """A stand-in for the backend's POST /secrets on ``port``: ``receive_secrets``, 200."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        form = parse_qsl(environ["wsgi.input"].read(length).decode())
        try:
            oauth.receive_secrets(form)
        except CallbackRejected:
            start_response("403 Forbidden", [("content-type", "text/plain")])
        else:
            start_response("200 OK", [("content-type", "text/plain")])
        return [b""]

    server = simple_server.make_server("127.0.0.1", port, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log: the test's output stays the fake's."""
