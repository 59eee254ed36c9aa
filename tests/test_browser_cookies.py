"""A binding cookie planted from a sibling subdomain, in real Chromium (issue 20 #1).

The app lives on ``https://app.test``; Mallory's page on ``https://evil.app.test`` sends
``Set-Cookie: \\xa0__Host-amo_oauth_binding=<her binding>; Domain=app.test; Path=/; Secure``
(and the same with 0x85). Chromium stores each as an unprefixed cookie of ``app.test`` and
sends it back with the callback. The victim then presses "Allow" on Mallory's consent link: the
callback must refuse (``wrong_browser``), and the server must have received the planted
cookies, so the test cannot pass because a browser stopped sending them
(``test_cookie_names.py`` holds the parsing without a browser).

Both names resolve to 127.0.0.1 (``--host-resolver-rules``); one uvicorn (or werkzeug) server
serves both over TLS with a self-signed certificate made here (``cryptography``), which the
browser context is told to accept.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from amo_oauth import AmoOAuth, AsyncAmoOAuth, Config, MemoryStore
from amo_oauth._demo import listening_socket, wait_until
from amo_oauth.testing import FakeAmoCRM, ServedFake
from test_browser import ARGS, CHROMIUM, _missing

from helpers import STATE_SECRET

PREFIX = "/api/amo-crm"
BINDING = b"__Host-amo_oauth_binding"
#: The bytes ``str.strip()`` removed around a name, that Chromium keeps in one.
PLANTING_BYTES = (b"\xa0", b"\x85")


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for app.test and *.app.test, and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "app.test")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("app.test"), x509.DNSName("*.app.test")]
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def planted_cookie(byte: bytes, binding: bytes) -> bytes:
    return byte + BINDING + b"=" + binding + b"; Domain=app.test; Path=/; Secure"


def stripped_pairs(header: bytes) -> list[tuple[bytes, bytes]]:
    """The pairs as the old parser saw them (``str.strip()`` around each): what the server
    received that the old code would have read as the binding."""
    pairs = []
    for part in header.decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        pairs.append((name.encode("latin-1"), value.encode("latin-1")))
    return pairs


class Site:
    """The app on app.test, Mallory's page on evil.app.test, and what the callback received."""

    def __init__(self) -> None:
        self.planted: list[bytes] = []  # the Set-Cookie values evil.app.test sends
        self.callback_cookies: list[bytes] = []  # every Cookie header the callback got

    def evil(self, host: bytes) -> bool:
        return host.split(b":")[0] == b"evil.app.test"

    def asgi(self, app: Any) -> Any:
        async def site(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                headers = scope["headers"]
                if self.evil(dict(headers).get(b"host", b"")):
                    lines = [(b"content-type", b"text/html")]
                    lines += [(b"set-cookie", value) for value in self.planted]
                    await send({"type": "http.response.start", "status": 200, "headers": lines})
                    await send({"type": "http.response.body", "body": b"<h1>A prize</h1>"})
                    return
                if scope["path"].endswith("/callback"):
                    self.callback_cookies += [v for k, v in headers if k == b"cookie"]
            await app(scope, receive, send)

        return site

    def wsgi(self, app: Any) -> Any:
        def site(environ: dict[str, Any], start_response: Any) -> Any:
            if self.evil(environ.get("HTTP_HOST", "").encode("latin-1")):
                lines = [("Content-Type", "text/html")]
                lines += [("Set-Cookie", value.decode("latin-1")) for value in self.planted]
                start_response("200 OK", lines)
                return [b"<h1>A prize</h1>"]
            if environ["PATH_INFO"].endswith("/callback") and "HTTP_COOKIE" in environ:
                self.callback_cookies.append(environ["HTTP_COOKIE"].encode("latin-1"))
            return app(environ, start_response)

        return site


def _config(fake: FakeAmoCRM, served: ServedFake) -> Config:
    return Config(
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        redirect_uri=fake.redirect_uri,  # https://app.test:<port>/api/amo-crm/callback
        state_secret=STATE_SECRET,
        authorize_url=f"{served.url}/oauth",
    )


def _user(request: Any) -> str | None:
    return request.header("x-user")


@contextlib.contextmanager
def asgi_over_tls(site: Site, app: Any, tls: Any) -> Iterator[int]:
    """Serve ``app`` (recorded by ``site``) with uvicorn over ``tls``; its port."""
    import uvicorn

    cert, key = tls.files
    config = uvicorn.Config(
        site.asgi(app),
        lifespan="off",
        log_config=None,
        access_log=False,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [tls.sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, thread, "uvicorn")
        yield tls.port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        tls.sock.close()


@contextlib.contextmanager
def wsgi_over_tls(site: Site, app: Any, tls: Any) -> Iterator[int]:
    """Serve ``app`` (recorded by ``site``) with werkzeug over ``tls``; its port."""
    from werkzeug.serving import make_server

    from e2e_support import _QuietHandler

    cert, key = tls.files
    server = make_server(
        "127.0.0.1",
        tls.port,
        site.wsgi(app),
        threaded=True,
        request_handler=_QuietHandler,
        ssl_context=(str(cert), str(key)),
        fd=tls.sock.fileno(),
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield tls.port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        tls.sock.close()


@contextlib.contextmanager
def fastapi_site(site: Site, fake: FakeAmoCRM, served: ServedFake, tls: Any) -> Iterator[int]:
    from fastapi import FastAPI

    from amo_oauth.fastapi import router

    http = httpx.AsyncClient(transport=served.async_transport())
    oauth = AsyncAmoOAuth(_config(fake, served), store=MemoryStore(), http=http)
    app = FastAPI()
    app.include_router(router(oauth, connection_id=_user, app_scheme="foryoure"))
    try:
        with asgi_over_tls(site, app, tls) as port:
            yield port
    finally:
        asyncio.run(oauth.aclose())


@contextlib.contextmanager
def flask_site(site: Site, fake: FakeAmoCRM, served: ServedFake, tls: Any) -> Iterator[int]:
    import flask

    from amo_oauth.flask import blueprint

    with (
        httpx.Client(transport=served.transport()) as http,
        AmoOAuth(_config(fake, served), store=MemoryStore(), http=http) as oauth,
    ):
        app = flask.Flask(__name__)
        app.register_blueprint(blueprint(oauth, connection_id=_user, app_scheme="foryoure"))
        with wsgi_over_tls(site, app, tls) as port:
            yield port


class Tls:
    """The listening socket and the certificate files of the site."""

    def __init__(self, directory: Path) -> None:
        self.sock = listening_socket()
        self.port: int = self.sock.getsockname()[1]
        self.files = self_signed(directory)


SITES: dict[str, Callable[..., contextlib.AbstractContextManager[int]]] = {
    "fastapi": fastapi_site,
    "flask": flask_site,
}


def mallorys_consent(port: int) -> tuple[str, bytes]:
    """Mallory's own /connect (her client, her session): the consent link and her binding."""
    with httpx.Client(verify=False) as client:  # the self-signed certificate of this test
        answer = client.get(
            f"https://127.0.0.1:{port}{PREFIX}/connect",
            headers={"host": f"app.test:{port}", "x-user": "mallory"},
        )
    assert answer.status_code == 302
    (cookie,) = answer.headers.get_list("set-cookie")
    pair = cookie.split(";")[0].encode("latin-1")
    assert pair.startswith(BINDING + b"=")
    return answer.headers["location"], pair.partition(b"=")[2]


@pytest.mark.browser
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", sorted(SITES))
def test_a_binding_planted_from_a_sibling_subdomain_connects_nothing(
    tmp_path: Path, kind: str
) -> None:
    if not CHROMIUM.is_file():
        _missing(f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")

    site, tls = Site(), Tls(tmp_path)
    app = f"https://app.test:{tls.port}"
    fake = FakeAmoCRM(redirect_uri=f"{app}{PREFIX}/callback")
    rules = "MAP app.test 127.0.0.1, MAP evil.app.test 127.0.0.1"
    with (
        fake.serve() as served,
        SITES[kind](site, fake, served, tls) as port,
        sync_playwright() as playwright,
    ):
        consent, binding = mallorys_consent(port)
        site.planted = [planted_cookie(byte, binding) for byte in PLANTING_BYTES]
        args = [*ARGS, f"--host-resolver-rules={rules}"]
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            victim = browser.new_context(ignore_https_errors=True).new_page()
            victim.goto(f"https://evil.app.test:{port}/")  # plants both cookies
            victim.goto(consent)
            victim.click("#allow")
            victim.wait_for_url(f"{app}{PREFIX}/callback?*")
            title = victim.locator("h1").inner_text()
            refused_page = victim.content()
            redirect = victim.url

            # Control: the same redirect in a browser that holds Mallory's binding under its
            # exact name connects, so the refusal above was the planted name's doing.
            hers = browser.new_context(ignore_https_errors=True)
            exact = {"name": BINDING.decode(), "value": binding.decode(), "url": app}
            hers.add_cookies([{**exact, "secure": True, "httpOnly": True}])
            her_page = hers.new_page()
            her_page.goto(redirect)
            her_title = her_page.locator("h1").inner_text()
        finally:
            browser.close()

    # The server received both planted cookies, each one the old parser read as the binding.
    received = site.callback_cookies[0]
    for byte in PLANTING_BYTES:
        assert byte + BINDING + b"=" + binding in received
    assert (BINDING, binding) in stripped_pairs(received)
    assert title == "Connect from the app"
    assert "wrong_browser" in refused_page
    assert her_title == "amoCRM is connected"
    assert fake.token_call_count() == 1  # the control's exchange only
