"""``httpx.Auth`` for one connection: a bearer token, and on 401 one refresh and one retry."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Generator

import attrs
import httpx

__all__ = ["ConnectionAuth"]


@attrs.frozen
class _NeedToken:
    """Ask the driver for a token; ``stale`` is one amoCRM just refused."""

    stale: str | None


def _flow(request: httpx.Request) -> Generator[_NeedToken | httpx.Request, object, None]:
    token = yield _NeedToken(None)
    request.headers["Authorization"] = f"Bearer {token}"
    response = yield request
    if isinstance(response, httpx.Response) and response.status_code == 401:
        # The token was revoked or expired early: refresh once (single-flight) and retry once.
        token = yield _NeedToken(str(token))
        request.headers["Authorization"] = f"Bearer {token}"
        yield request


class ConnectionAuth(httpx.Auth):
    """Authenticates requests to amoCRM's API as one connection.

    Made by ``AmoOAuth.auth()`` (for ``httpx.Client``) or ``AsyncAmoOAuth.auth()`` (for
    ``httpx.AsyncClient``); using it with the other kind of client raises ``RuntimeError``.
    """

    requires_request_body = True

    def __init__(
        self,
        token: Callable[[str | None], str] | None = None,
        async_token: Callable[[str | None], Awaitable[str]] | None = None,
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
