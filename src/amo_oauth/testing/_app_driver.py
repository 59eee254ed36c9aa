"""Driving a user's ASGI or WSGI app from blocking test code, as a server would.

A WSGI app is called through ``httpx.WSGITransport``. An ASGI app runs in an event loop of
its own (an anyio blocking portal: a thread the test hands coroutines to) behind
``httpx.ASGITransport``, with the ASGI lifespan a server runs: startup before the first
request, shutdown at the end (where apps close their services). An app that refuses the
lifespan scope (Django's ``ASGIHandler``) is served without one, as uvicorn does.

Each ``Browser`` has a cookie jar of its own over the one app. Used by
``amo_oauth.testing.invariants``; needs nothing beyond httpx (anyio comes with it).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, MutableMapping
from typing import Any

import anyio
import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["AppDriver", "Browser"]

Message = MutableMapping[str, Any]
#: What a lifespan task sends when the app returned or raised (not an ASGI message).
_ENDED = "amo_oauth.lifespan.ended"


class Browser:
    """One browser (or app) talking to the app under test: a cookie jar of its own.

    ``request`` takes what ``httpx.Client.request`` takes (``json=``, ``content=``,
    ``headers=``, ``params=``, ...) and answers an ``httpx.Response`` read in full; redirects
    are not followed. URLs are paths on the site of ``Config.redirect_uri``.
    """

    def __init__(self, send: Callable[..., httpx.Response], cookies: httpx.Cookies) -> None:
        self._send = send
        #: The cookies the app set in this browser.
        self.cookies = cookies

    def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        """Send one request; raises what httpx raises (the app's own exceptions included)."""
        return self._send(method, url, **options)


def is_asgi(app: object) -> bool:
    """Whether ``app`` is an ASGI application (its call is a coroutine function)."""
    # A function, or an object whose class defines an async __call__ (Starlette, Django).
    return inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(type(app).__call__)


class AppDriver:
    """Runs one app for one test: ``browser()`` opens a browser on it, ``close()`` ends it
    (the ASGI lifespan's shutdown, then every client)."""

    def __init__(self, app: Any, base_url: str) -> None:
        self._base_url = base_url
        self._running = contextlib.ExitStack()
        self._portal: BlockingPortal | None = None
        self._lifespan: _Lifespan | None = None
        if is_asgi(app):
            self._portal = self._running.enter_context(start_blocking_portal())
            try:
                self._lifespan = _Lifespan(app, self._portal)
            except BaseException:
                self._running.close()  # the event loop's thread ends with the failed startup
                raise
            self._async_transport = httpx.ASGITransport(app=app)
        else:
            self._transport = httpx.WSGITransport(app=app)

    def browser(self) -> Browser:
        """A new browser with an empty cookie jar."""
        if self._portal is None:
            client = httpx.Client(transport=self._transport, base_url=self._base_url)
            self._running.callback(client.close)
            return Browser(client.request, client.cookies)
        portal = self._portal
        awaited = httpx.AsyncClient(transport=self._async_transport, base_url=self._base_url)
        self._running.callback(portal.call, awaited.aclose)

        def send(method: str, url: str, **options: Any) -> httpx.Response:
            return portal.call(functools.partial(awaited.request, method, url, **options))

        return Browser(send, awaited.cookies)

    def close(self) -> None:
        """Shut the app down (ASGI lifespan) and close every browser and the event loop."""
        try:
            if self._lifespan is not None:
                self._lifespan.shutdown()
        finally:
            self._running.close()


class _Lifespan:
    """The ASGI lifespan protocol, server side: startup now, shutdown on ``shutdown()``."""

    def __init__(self, app: Any, portal: BlockingPortal) -> None:
        self._portal = portal
        self._to_app, inbox = anyio.create_memory_object_stream[Message](4)
        outbox, self._from_app = anyio.create_memory_object_stream[Message](4)
        self._task = portal.start_task_soon(self._run, app, inbox, outbox)
        try:
            self.supported = self._exchange("startup")
        except BaseException:
            self._end()
            raise

    @staticmethod
    async def _run(
        app: Any,
        inbox: MemoryObjectReceiveStream[Message],
        outbox: MemoryObjectSendStream[Message],
    ) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        with inbox, outbox:
            try:
                await app(scope, inbox.receive, outbox.send)
            except Exception:  # noqa: S110 (an app without lifespan raises on the scope: none then)
                pass
            finally:
                # No await: this runs when the task is cancelled too. Nobody may listen any more.
                with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                    outbox.send_nowait({"type": _ENDED})

    def _exchange(self, phase: str) -> bool:
        """Send ``lifespan.<phase>``; True when the app completed it, False when it has no
        lifespan. Raises RuntimeError when the app reports the phase failed."""
        with contextlib.suppress(anyio.BrokenResourceError):  # it ended already: no lifespan
            self._portal.call(self._to_app.send, {"type": f"lifespan.{phase}"})
        answer = self._portal.call(self._from_app.receive)
        if answer["type"] == f"lifespan.{phase}.failed":
            raise RuntimeError(f"the app's lifespan {phase} failed: {answer.get('message', '')}")
        return bool(answer["type"] == f"lifespan.{phase}.complete")

    def shutdown(self) -> None:
        """Send ``lifespan.shutdown`` and wait for its answer; then the task is ended (an app
        has nothing left to do after answering, and one that waits on is not waited for)."""
        try:
            if self.supported:
                self._exchange("shutdown")
        finally:
            self._end()

    def _end(self) -> None:
        """Cancel the app's lifespan task (one that waits for more messages gets none) and
        close this side's streams, in the event loop that uses them."""
        self._task.cancel()
        self._portal.call(self._close_streams)

    async def _close_streams(self) -> None:
        self._to_app.close()
        self._from_app.close()
