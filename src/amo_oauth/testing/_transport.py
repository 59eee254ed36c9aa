"""httpx transports: in-process ones that call the fake directly, and loopback routing ones."""

from __future__ import annotations

import asyncio
import time

import httpx

from ._types import FakeResponse, Handler, HostRoute


def _check_host(app: HostRoute, request: httpx.Request) -> None:
    # A request to a host the fake does not own must fail loudly, like a network that has no
    # route there: a library that sends a secret to the wrong host must not "just work" in tests.
    if not app.serves_host(request.url.host):
        raise httpx.ConnectError(
            f"FakeAmoCRM has no route to host {request.url.host!r}", request=request
        )


def _call(app: Handler, request: httpx.Request, body: bytes) -> FakeResponse:
    headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in request.headers.raw}
    answer = app.handle(request.method, str(request.url), headers, body)
    if answer.dropped == "timeout_before":
        raise httpx.ConnectTimeout("FakeAmoCRM: injected connect timeout", request=request)
    return answer


def _deliver(answer: FakeResponse, request: httpx.Request) -> httpx.Response:
    if answer.dropped == "lost_answer":
        raise httpx.ReadTimeout("FakeAmoCRM: injected lost answer", request=request)
    return httpx.Response(answer.status, headers=list(answer.headers), content=answer.body)


class FakeTransport(httpx.BaseTransport):
    """Sync transport answering requests in-process, without sockets."""

    def __init__(self, app: Handler) -> None:
        self._app = app

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Answer `request` from the fake (sleeping `latency` with time.sleep)."""
        _check_host(self._app, request)
        answer = _call(self._app, request, request.read())
        if answer.delay > 0:
            time.sleep(answer.delay)
        return _deliver(answer, request)


class AsyncFakeTransport(httpx.AsyncBaseTransport):
    """Async transport answering requests in-process; latency never blocks the event loop."""

    def __init__(self, app: Handler) -> None:
        self._app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Answer `request` from the fake (sleeping `latency` with asyncio.sleep)."""
        _check_host(self._app, request)
        answer = _call(self._app, request, await request.aread())
        if answer.delay > 0:
            await asyncio.sleep(answer.delay)
        return _deliver(answer, request)


class _Domain:
    """Routes the hosts of one domain (the domain itself and every host under it)."""

    def __init__(self, domain: str) -> None:
        domain = domain.strip().lower()
        if not domain or domain.startswith(".") or "/" in domain or ":" in domain:
            raise ValueError(f"not a domain name: {domain!r}")
        self._domain = domain

    def serves_host(self, host: str) -> bool:
        host = host.lower()
        return host == self._domain or host.endswith("." + self._domain)


def _loopback_target(url: str) -> tuple[str, int]:
    """The (host, port) of a served fake's base URL, e.g. "http://127.0.0.1:54321"."""
    parts = httpx.URL(url)
    if parts.scheme != "http" or not parts.host or parts.port is None:
        raise ValueError(f"not a served fake's URL (http://host:port): {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.userinfo:
        raise ValueError(f"not a served fake's URL (http://host:port): {url!r}")
    return parts.host, parts.port


def _reroute(routes: HostRoute, request: httpx.Request, host: str, port: int) -> httpx.Request:
    _check_host(routes, request)
    # Only the connection target changes; the Host header httpx already set still names the
    # account host, which is how the server knows which host was addressed.
    url = request.url.copy_with(scheme="http", host=host, port=port)
    return httpx.Request(
        request.method,
        url,
        headers=request.headers,
        stream=request.stream,
        extensions=request.extensions,
    )


class LoopbackTransport(httpx.BaseTransport):
    """Sync transport sending requests for the fake's domain over real HTTP to its server.

    Build it with `served.transport()` in the process that runs the fake, or with
    `LoopbackTransport.to(served.url, domain=fake.domain)` anywhere else (another process
    only needs the URL and the domain). Requests to hosts outside the domain raise
    httpx.ConnectError, as the in-process transports do.
    """

    def __init__(self, routes: HostRoute, port: int, *, host: str = "127.0.0.1") -> None:
        self._routes = routes
        self._host = host
        self._port = port
        self._inner = httpx.HTTPTransport()

    @classmethod
    def to(cls, url: str, *, domain: str = "amocrm.ru") -> LoopbackTransport:
        """A transport to the fake served at `url` (`ServedFake.url`) for `domain`'s hosts.

        Raises:
            ValueError: `url` is not `http://host:port`, or `domain` is not a domain name.
        """
        host, port = _loopback_target(url)
        return cls(_Domain(domain), port, host=host)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` to the loopback server, keeping its original Host header."""
        rerouted = _reroute(self._routes, request, self._host, self._port)
        return self._inner.handle_request(rerouted)

    def close(self) -> None:
        """Close the pooled loopback connections."""
        self._inner.close()


class AsyncLoopbackTransport(httpx.AsyncBaseTransport):
    """Async transport sending requests for the fake's domain over real HTTP to its server.

    See `LoopbackTransport`; `AsyncLoopbackTransport.to(url, domain=...)` builds one from
    just the served URL.
    """

    def __init__(self, routes: HostRoute, port: int, *, host: str = "127.0.0.1") -> None:
        self._routes = routes
        self._host = host
        self._port = port
        self._inner = httpx.AsyncHTTPTransport()

    @classmethod
    def to(cls, url: str, *, domain: str = "amocrm.ru") -> AsyncLoopbackTransport:
        """The async counterpart of `LoopbackTransport.to`.

        Raises:
            ValueError: `url` is not `http://host:port`, or `domain` is not a domain name.
        """
        host, port = _loopback_target(url)
        return cls(_Domain(domain), port, host=host)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` to the loopback server, keeping its original Host header."""
        rerouted = _reroute(self._routes, request, self._host, self._port)
        return await self._inner.handle_async_request(rerouted)

    async def aclose(self) -> None:
        """Close the pooled loopback connections."""
        await self._inner.aclose()
