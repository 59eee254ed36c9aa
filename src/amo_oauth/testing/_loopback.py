"""httpx transports that carry amoCRM's hosts to a fake served over loopback HTTP.

The code under test keeps talking to ``https://test.amocrm.ru/oauth2/access_token`` and
``https://test.amocrm.ru/api/v4/leads``: the account hosts the library allow-lists before it
sends the client secret. Only the connection changes: these transports open it to the served
fake on this machine (``FakeAmoCRM.serve()`` or ``amo-oauth fake``), keeping the account host
in the ``Host`` header, by which the fake knows which host was addressed. So nothing in
``Config`` has to point anywhere but amoCRM, and the transports themselves refuse any target
but a loopback address: a secret carried by them cannot leave the machine.
"""

from __future__ import annotations

import ipaddress

import httpx

from ._transport import check_host
from ._types import HostRoute

LOCALHOST = "localhost"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IP address, IPv6 without brackets) is this machine."""
    if host.lower() == LOCALHOST:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_only(host: str) -> str:
    if not is_loopback(host):
        raise ValueError(
            f"a served fake listens on loopback (127.0.0.1, ::1, localhost), not {host!r}"
        )
    return host


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


def loopback_target(url: str) -> tuple[str, int]:
    """The (host, port) of a served fake's base URL, e.g. "http://127.0.0.1:54321".

    Raises:
        ValueError: ``url`` is not ``http://host:port`` with a loopback host.
    """
    parts = httpx.URL(url)
    if parts.scheme != "http" or not parts.host or parts.port is None:
        raise ValueError(f"not a served fake's URL (http://host:port): {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.userinfo or parts.fragment:
        raise ValueError(f"not a served fake's URL (http://host:port): {url!r}")
    return _loopback_only(parts.host), parts.port


def _reroute(routes: HostRoute, request: httpx.Request, host: str, port: int) -> httpx.Request:
    check_host(routes, request)
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
    `LoopbackTransport.to(url, domain=...)` anywhere else: another process, or a backend
    configured from what ``amo-oauth fake`` prints, needs only the served URL and the domain.
    Requests to hosts outside the domain raise httpx.ConnectError, as the in-process
    transports do.

    Raises:
        ValueError: ``host`` is not a loopback address.
    """

    def __init__(self, routes: HostRoute, port: int, *, host: str = "127.0.0.1") -> None:
        self._routes = routes
        self._host = _loopback_only(host)
        self._port = port
        self._inner = httpx.HTTPTransport()

    @classmethod
    def to(cls, url: str, *, domain: str = "amocrm.ru") -> LoopbackTransport:
        """A transport to the fake served at ``url`` (`ServedFake.url`, or the URL
        ``amo-oauth fake`` prints) for ``domain``'s hosts.

        Raises:
            ValueError: ``url`` is not ``http://host:port`` on a loopback address, or
                ``domain`` is not a domain name.
        """
        host, port = loopback_target(url)
        return cls(_Domain(domain), port, host=host)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to the loopback server, keeping its original Host header."""
        rerouted = _reroute(self._routes, request, self._host, self._port)
        return self._inner.handle_request(rerouted)

    def close(self) -> None:
        """Close the pooled loopback connections."""
        self._inner.close()


class AsyncLoopbackTransport(httpx.AsyncBaseTransport):
    """Async transport sending requests for the fake's domain over real HTTP to its server.

    See `LoopbackTransport`; `AsyncLoopbackTransport.to(url, domain=...)` builds one from
    just the served URL.

    Raises:
        ValueError: ``host`` is not a loopback address.
    """

    def __init__(self, routes: HostRoute, port: int, *, host: str = "127.0.0.1") -> None:
        self._routes = routes
        self._host = _loopback_only(host)
        self._port = port
        self._inner = httpx.AsyncHTTPTransport()

    @classmethod
    def to(cls, url: str, *, domain: str = "amocrm.ru") -> AsyncLoopbackTransport:
        """The async counterpart of `LoopbackTransport.to`.

        Raises:
            ValueError: ``url`` is not ``http://host:port`` on a loopback address, or
                ``domain`` is not a domain name.
        """
        host, port = loopback_target(url)
        return cls(_Domain(domain), port, host=host)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to the loopback server, keeping its original Host header."""
        rerouted = _reroute(self._routes, request, self._host, self._port)
        return await self._inner.handle_async_request(rerouted)

    async def aclose(self) -> None:
        """Close the pooled loopback connections."""
        await self._inner.aclose()
