"""In-process httpx transports: they call the fake directly, with no socket.

The transports that route to a fake served over loopback HTTP are in `_loopback`.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from ._types import FakeResponse, Handler, HostRoute


def check_host(app: HostRoute, request: httpx.Request) -> None:
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
        check_host(self._app, request)
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
        check_host(self._app, request)
        answer = _call(self._app, request, await request.aread())
        if answer.delay > 0:
            await asyncio.sleep(answer.delay)
        return _deliver(answer, request)
