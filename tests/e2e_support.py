"""Shared by the end-to-end tests: the example backends on real loopback servers, with FakeAmoCRM.

Each stack is FakeAmoCRM served on 127.0.0.1 and one example backend (FastAPI under uvicorn, or
Flask under werkzeug) on another ephemeral port, both in threads of this process, with an SQLite
store in a temporary directory. The backend reaches ``https://test.amocrm.ru`` through the fake's
loopback transport; a browser (or httpx playing one) reaches both servers by their URLs.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import attrs
import httpx
from werkzeug.serving import WSGIRequestHandler, make_server

from amo_oauth import AmoOAuth, AsyncAmoOAuth, Config, SQLiteStore
from amo_oauth._demo import listening_socket, load_example, serve_asgi
from amo_oauth.testing import FakeAmoCRM, ServedFake

from helpers import STATE_SECRET

PREFIX = "/api/amo-crm"
FASTAPI: ModuleType = load_example("fastapi_app")
FLASK: ModuleType = load_example("flask_app")
MOBILE: ModuleType = load_example("mobile_client")


@attrs.frozen
class Stack:
    """A running fake amoCRM and backend."""

    kind: str  # "fastapi" or "flask"
    fake: FakeAmoCRM
    fake_url: str  # e.g. http://127.0.0.1:40001
    backend: str  # e.g. http://127.0.0.1:40002

    @property
    def callback(self) -> str:
        return f"{self.backend}{PREFIX}/callback"


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def _config(fake: FakeAmoCRM, served: ServedFake) -> Config:
    return Config(
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        redirect_uri=fake.redirect_uri,  # the backend's own callback URL, http on loopback
        state_secret=STATE_SECRET,
        authorize_url=f"{served.url}/oauth",  # the fake's consent page, reachable by a browser
    )


def _url(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def fastapi_stack(db: Path, **fake_options: Any) -> Iterator[Stack]:
    """The FastAPI example under uvicorn."""
    sock = listening_socket()
    fake = FakeAmoCRM(redirect_uri=f"{_url(sock)}{PREFIX}/callback", **fake_options)
    with fake.serve() as served:
        # One client for the token endpoint and the API; the app closes it on shutdown, in the
        # event loop that used it.
        http = httpx.AsyncClient(transport=served.async_transport())
        oauth = AsyncAmoOAuth(_config(fake, served), store=SQLiteStore(db), http=http)
        with serve_asgi(FASTAPI.create_app(oauth, api=http), sock) as backend:
            yield Stack("fastapi", fake, served.url, backend)


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access log in test output."""


@contextlib.contextmanager
def serve_wsgi(
    app: Any, sock: socket.socket, handler: type[WSGIRequestHandler] = _QuietHandler
) -> Iterator[str]:
    """Run ``app`` on a threaded werkzeug server on ``sock``; yield its base URL.

    ``handler``: werkzeug's own ``WSGIRequestHandler`` logs each request line (logger
    ``werkzeug``); the default logs none."""
    port = sock.getsockname()[1]
    server = make_server(
        "127.0.0.1", port, app, threaded=True, request_handler=handler, fd=sock.fileno()
    )
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="werkzeug", daemon=True
    )
    thread.start()
    try:
        yield _url(sock)  # the socket already listens: no need to wait for the thread
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        sock.close()


@contextlib.contextmanager
def flask_stack(db: Path, **fake_options: Any) -> Iterator[Stack]:
    """The Flask example under werkzeug."""
    sock = listening_socket()
    fake = FakeAmoCRM(redirect_uri=f"{_url(sock)}{PREFIX}/callback", **fake_options)
    with (
        fake.serve() as served,
        httpx.Client(transport=served.transport()) as http,
        AmoOAuth(_config(fake, served), store=SQLiteStore(db), http=http) as oauth,
        serve_wsgi(FLASK.create_app(oauth, api=http), sock) as backend,
    ):
        yield Stack("flask", fake, served.url, backend)


STACKS: dict[str, Callable[..., contextlib.AbstractContextManager[Stack]]] = {
    "fastapi": fastapi_stack,
    "flask": flask_stack,
}


@attrs.define
class Seen:
    """Every response the app and the browser got: (who, method, path, status)."""

    calls: list[tuple[str, str, str, int]] = attrs.Factory(list)

    def hook(self, who: str) -> Callable[[httpx.Response], None]:
        def record(response: httpx.Response) -> None:
            request = response.request
            self.calls.append((who, request.method, request.url.path, response.status_code))

        return record

    def statuses(self) -> list[int]:
        return [status for *_, status in self.calls]


def script_attributes(html: str) -> dict[str, str]:
    """The (last) ``<script>`` element's attributes, unescaped, as the browser reads them."""
    found: dict[str, str] = {}

    class Reader(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "script":
                found.update((name, value or "") for name, value in attrs)

    Reader().feed(html)
    return found


def consent_url_the_script_opens(attributes: dict[str, str]) -> str:
    """The URL the fake's button script opens from its element's attributes (§7)."""
    params = [
        (key, attributes[f"data-{key}"])
        for key in ("name", "description", "redirect_uri", "secrets_uri")
    ]
    params += [("scopes[]", scope) for scope in attributes["data-scopes"].split(",")]
    params += [("state", attributes["data-state"]), ("mode", attributes["data-mode"])]
    return urljoin(attributes["src"], "/oauth?" + urlencode(params))
