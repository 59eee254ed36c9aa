"""The example's amoCRM service: amoCRM itself when ``AMO_CLIENT_ID`` is set, else FakeAmoCRM.

amoCRM (or Kommo), from the environment: ``AMO_CLIENT_ID``, ``AMO_CLIENT_SECRET``,
``AMO_REDIRECT_URI`` (ending in ``/api/amo-crm/callback``), ``AMO_STATE_SECRET`` (32+ bytes, not
the client secret); optional ``AMO_DB`` (the SQLite file, ``amo_oauth.db``) and
``AMO_AUTHORIZE_URL`` (Kommo: ``https://www.kommo.com/oauth``).

Without ``AMO_CLIENT_ID``: FakeAmoCRM, served on 127.0.0.1 for as long as the process runs (its
consent page on a port of its own), with an account of three leads, and the redirect URI
``AMO_REDIRECT_URI`` or ``http://127.0.0.1:8000/api/amo-crm/callback`` (the port
``runserver`` and uvicorn use unless told otherwise). Click through it in a browser.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import secrets
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from amo_oauth import AmoOAuth, AsyncAmoOAuth, Config, SQLiteStore
from amo_oauth.testing import FakeAmoCRM, ServedFake

LOCAL_CALLBACK = "http://127.0.0.1:8000/api/amo-crm/callback"
DEMO_LEADS = (
    {"name": "Website redesign", "price": 120000},
    {"name": "CRM rollout for 40 seats", "price": 480000},
    {"name": "Support contract 2025", "price": 96000},
)
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]

_running = contextlib.ExitStack()  # what this process serves or holds open, closed at exit
atexit.register(_running.close)


@functools.cache
def blocking() -> tuple[AmoOAuth, httpx.Client]:
    """The service for sync views, and a client for amoCRM's API; closed at exit."""
    demo = _demo()
    transport = demo[1].transport() if demo else None
    api = _running.enter_context(httpx.Client(transport=transport, timeout=10.0))
    oauth = AmoOAuth(_config(demo), store=_store(demo), http=api if demo else None)
    _running.callback(oauth.close)
    return oauth, api


@functools.cache
def awaited() -> tuple[AsyncAmoOAuth, httpx.AsyncClient]:
    """The service for async views, and a client for amoCRM's API; ``aclose`` closes both."""
    demo = _demo()
    transport = demo[1].async_transport() if demo else None
    api = httpx.AsyncClient(transport=transport, timeout=10.0)
    oauth = AsyncAmoOAuth(_config(demo), store=_store(demo), http=api if demo else None)
    return oauth, api


async def aclose() -> None:
    """Close what ``awaited`` made, in the event loop that used it (httpx needs that)."""
    if awaited.cache_info().currsize:
        oauth, api = awaited()
        await oauth.aclose()
        await api.aclose()


def with_lifespan(app: ASGIApp, *, on_shutdown: Callable[[], Awaitable[None]]) -> ASGIApp:
    """``app`` answering the server's lifespan messages, which Django's ASGI handler refuses:
    at shutdown it awaits ``on_shutdown``, in the loop that served the requests."""

    async def application(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            return await app(scope, receive, send)
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await on_shutdown()
                return await send({"type": "lifespan.shutdown.complete"})

    return application


Demo = tuple[FakeAmoCRM, ServedFake]


@functools.cache
def _demo() -> Demo | None:
    """FakeAmoCRM on 127.0.0.1 until the process exits; None when amoCRM is configured."""
    if "AMO_CLIENT_ID" in os.environ:
        return None
    redirect_uri = os.environ.get("AMO_REDIRECT_URI", LOCAL_CALLBACK)
    # A fresh secret per run: nothing worth hiding, and nothing that could leak from a real setup.
    fake = FakeAmoCRM(
        redirect_uri=redirect_uri, client_secret=secrets.token_urlsafe(24), leads=DEMO_LEADS
    )
    served = _running.enter_context(fake.serve())
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(redirect_uri))
    start = urlencode({"next": "/api/amo-crm/connect"})
    print(f"FakeAmoCRM serves amoCRM at {served.url}. Sign in (as 'demo') and connect it:\n"
          f"    {origin}/login?{start}", file=sys.stderr)  # fmt: skip
    return fake, served


def _config(demo: Demo | None) -> Config:
    if demo is None:
        env = os.environ
        return Config(
            client_id=env["AMO_CLIENT_ID"],
            client_secret=env["AMO_CLIENT_SECRET"],
            redirect_uri=env["AMO_REDIRECT_URI"],
            state_secret=env["AMO_STATE_SECRET"],
            # Rotating: the secrets AMO_STATE_SECRET replaced, comma-separated (operations.md).
            previous_state_secrets=[
                old for old in env.get("AMO_PREVIOUS_STATE_SECRETS", "").split(",") if old
            ],
            authorize_url=env.get("AMO_AUTHORIZE_URL", "https://www.amocrm.ru/oauth"),
        )
    fake, served = demo
    return Config(
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        redirect_uri=fake.redirect_uri,
        state_secret=secrets.token_bytes(32),
        authorize_url=f"{served.url}/oauth",  # the fake's consent page, for a browser
    )


def _store(demo: Demo | None) -> SQLiteStore:
    # One file for every worker process: the store makes a code exchanged once across them.
    # The fake forgets its tokens when it stops, so its connections go in a file of this run's.
    if demo is None or "AMO_DB" in os.environ:
        return SQLiteStore(os.environ.get("AMO_DB", "amo_oauth.db"))
    return SQLiteStore(Path(_running.enter_context(tempfile.TemporaryDirectory())) / "demo.db")
