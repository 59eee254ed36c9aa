"""The fake as a WSGI app, and a loopback HTTP server running it (stdlib wsgiref)."""

from __future__ import annotations

import contextlib
import socketserver
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from urllib.parse import quote, urlsplit, urlunsplit
from wsgiref import simple_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import attrs
import httpx

from ._loopback import AsyncLoopbackTransport, LoopbackTransport
from ._types import Handler


class DropConnection(Exception):
    """Raised by the WSGI app to make the loopback server close without answering."""


def _environ_headers(environ: WSGIEnvironment) -> dict[str, str]:
    headers = {
        key[5:].replace("_", "-").lower(): str(value)
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").lower()] = str(environ[key])
    return headers


def _environ_url(environ: WSGIEnvironment) -> str:
    host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "localhost")
    query = environ.get("QUERY_STRING", "")
    path = quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
    scheme = environ.get("wsgi.url_scheme", "http")
    return f"{scheme}://{host}{path}" + (f"?{query}" if query else "")


def _read_body(environ: WSGIEnvironment) -> bytes:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    return environ["wsgi.input"].read(length) if length > 0 else b""


def wsgi_call(
    app: Handler, environ: WSGIEnvironment, start_response: StartResponse
) -> Iterable[bytes]:
    """Answer one WSGI request from `app`.

    Injected network faults raise DropConnection: the loopback server (`serve`) turns that
    into a connection closed without an answer; other WSGI servers will answer 500.
    """
    url = _environ_url(environ)
    try:
        urlsplit(url).port  # noqa: B018 - raises for a Host that no URL can hold
    except ValueError:  # e.g. "[" without "]": the client's error, not the fake's (500)
        start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"bad Host header\n"]
    answer = app.handle(
        environ["REQUEST_METHOD"],
        url,
        _environ_headers(environ),
        _read_body(environ),
    )
    if answer.delay > 0:
        time.sleep(answer.delay)
    if answer.dropped is not None:
        raise DropConnection(answer.dropped)
    start_response(f"{answer.status} {HTTPStatus(answer.status).phrase}", list(answer.headers))
    return [answer.body]


class _ServerHandler(simple_server.ServerHandler):
    def handle_error(self) -> None:
        if isinstance(sys.exc_info()[1], DropConnection):
            return  # write nothing: the client sees the connection close without an answer
        super().handle_error()


class _RequestHandler(simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet: tests should not print an access log."""

    def handle(self) -> None:
        # wsgiref's handle(), with our ServerHandler so DropConnection can drop the connection.
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.send_error(414)
            return
        if not self.parse_request():
            return
        handler = _ServerHandler(
            self.rfile,
            self.wfile,  # type: ignore[arg-type]  # typeshed: BufferedIOBase vs IO[bytes]
            self.get_stderr(),
            self.get_environ(),
            multithread=False,
        )
        handler.request_handler = self  # type: ignore[attr-defined]  # wsgiref's log backpointer
        handler.run(self.server.get_app())  # type: ignore[attr-defined]


class _ThreadingServer(socketserver.ThreadingMixIn, simple_server.WSGIServer):
    daemon_threads = True
    # socketserver's backlog is 5: a backend opening many connections at once (a load run's
    # 100 clients) overflows it while this process is busy, and the connections the kernel
    # then drops or resets reach the code under test as ReadError / ConnectError, faults the
    # fake never meant to inject.
    request_queue_size = 256

    def server_bind(self) -> None:
        # HTTPServer.server_bind() does a reverse DNS lookup (getfqdn), slow on some hosts.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = self.socket.getsockname()[1]
        self.setup_environ()


@attrs.frozen
class ServedFake:
    """A running loopback server; see `FakeAmoCRM.serve()`.

    Attributes:
        url: the server's base URL, e.g. "http://127.0.0.1:54321".
        port: the ephemeral port it listens on.
    """

    url: str
    port: int
    _app: Handler = attrs.field(repr=False, alias="app")

    def transport(self) -> httpx.BaseTransport:
        """A sync httpx transport that sends requests for the fake's domain to this server.

        `https://test.amocrm.ru/oauth2/access_token` goes to `{url}/oauth2/access_token` over
        real HTTP, with `Host: test.amocrm.ru`. Other hosts raise httpx.ConnectError.
        """
        return LoopbackTransport(self._app, self.port)

    def async_transport(self) -> httpx.AsyncBaseTransport:
        """The async counterpart of `transport()`."""
        return AsyncLoopbackTransport(self._app, self.port)

    def local_url(self, url: str) -> str:
        """Rewrite a URL of the fake's domain to this server, e.g. for a real browser.

        The server then sees the loopback host, which it treats like www.{domain} (the
        consent page), so use it for /oauth URLs.
        """
        parts = urlsplit(url)
        return urlunsplit(("http", f"127.0.0.1:{self.port}", parts.path, parts.query, ""))


@contextlib.contextmanager
def serve(app: Handler, wsgi_app: WSGIApplication, *, port: int = 0) -> Iterator[ServedFake]:
    """Run `wsgi_app` on 127.0.0.1 in a daemon thread while the block runs.

    Args:
        port: the port to listen on; 0 (the default) picks a free one.

    Raises:
        OSError: the port is taken (or not one this process may bind).
    """
    server = simple_server.make_server(
        "127.0.0.1", port, wsgi_app, server_class=_ThreadingServer, handler_class=_RequestHandler
    )
    port = server.server_port
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name=f"FakeAmoCRM-127.0.0.1:{port}",
        daemon=True,
    )
    thread.start()
    try:
        yield ServedFake(url=f"http://127.0.0.1:{port}", port=port, app=app)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
