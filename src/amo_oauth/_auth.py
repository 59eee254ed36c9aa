"""``httpx.Auth`` for one connection: a bearer token, and on 401 one refresh and one retry."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from typing import cast

import attrs
import httpx

from ._errors import TokenScopeError

__all__ = ["ConnectionAuth"]


@attrs.frozen
class _NeedToken:
    """Ask the driver for a token; ``stale`` is one amoCRM just refused."""

    stale: str | None


def _on_account_host(url: httpx.URL, host: str) -> bool:
    """``https`` to exactly the connection's account host, on the default port."""
    return url.scheme == "https" and url.host == host and url.port in (None, 443)


def _attach(request: httpx.Request, granted: object) -> str:
    host, token = cast(tuple[str, str], granted)
    if not host or not _on_account_host(request.url, host):
        # Never the token to another host, nor in clear: refuse before anything is sent.
        raise TokenScopeError(
            f"refused to send the connection's token to {request.url.scheme}://"
            f"{request.url.host}: only https://{host or '<no account host>'} gets it"
        )
    request.headers["Authorization"] = f"Bearer {token}"
    return str(token)


def _flow(request: httpx.Request) -> Generator[_NeedToken | httpx.Request, object, None]:
    token = _attach(request, (yield _NeedToken(None)))
    response = yield request
    if not isinstance(response, httpx.Response) or response.status_code != 401:
        return
    host = request.url.host
    if not _on_account_host(response.url, host):
        return  # a 401 from elsewhere (after a redirect) says nothing about this token
    # The token was revoked or expired early: refresh once (single-flight) and retry once.
    _attach(request, (yield _NeedToken(token)))
    yield request


class ConnectionAuth(httpx.Auth):
    """Authenticates requests to amoCRM's API as one connection.

    The bearer token goes only to ``https`` requests to the connection's own account host,
    re-read with every token (after an account move the old host is refused); anything else
    raises ``TokenScopeError`` before sending. A 401 refreshes (once, single-flight) only when it
    comes from that host.

    Made by ``AmoOAuth.auth()`` (for ``httpx.Client``) or ``AsyncAmoOAuth.auth()`` (for
    ``httpx.AsyncClient``); using it with the other kind of client raises ``RuntimeError``.
    """

    requires_request_body = True

    def __init__(
        self,
        token: Callable[[str | None], tuple[str, str]] | None = None,
        async_token: Callable[[str | None], Awaitable[tuple[str, str]]] | None = None,
    ) -> None:
        self._token = token
        self._async_token = async_token

    def __repr__(self) -> str:
        return "ConnectionAuth()"

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        if self._token is None:
            raise RuntimeError("this auth comes from AsyncAmoOAuth: use it with httpx.AsyncClient")
        flow = _flow(request)
        item = next(flow)
        try:
            while True:
                reply = self._token(item.stale) if isinstance(item, _NeedToken) else (yield item)
                item = flow.send(reply)
        except StopIteration:
            return
        finally:
            flow.close()

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self._async_token is None:
            raise RuntimeError("this auth comes from AmoOAuth: use it with httpx.Client")
        flow = _flow(request)
        item = next(flow)
        try:
            while True:
                if isinstance(item, _NeedToken):
                    reply: object = await self._async_token(item.stale)
                else:
                    reply = yield item
                item = flow.send(reply)
        except StopIteration:
            return
        finally:
            flow.close()
