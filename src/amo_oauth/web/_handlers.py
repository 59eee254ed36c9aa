"""``Handlers`` and ``AsyncHandlers``: the two drivers of the routes in ``_routes.py``."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from .._async_service import AsyncAmoOAuth
from .._driving import adrive, drive
from .._service import AmoOAuth
from ._calls import ServiceCall
from ._http import Request, Response
from ._integrations import Ask, UseIntegration
from ._routes import Identify, RouteCore

__all__ = ["AsyncConnectionIdFn", "AsyncHandlers", "ConnectionIdFn", "Handlers"]

#: The app's answer to "whose connection is this request about?": an id, or None when the
#: request is not authenticated (-> 401). It receives the ``Request``; ``request.native`` is the
#: framework's request object. Exceptions it raises propagate to the framework untouched.
ConnectionIdFn = Callable[[Request], str | None]
#: As ``ConnectionIdFn``, and it may also be a coroutine function.
AsyncConnectionIdFn = Callable[[Request], str | Awaitable[str | None] | None]


class Handlers(RouteCore[AmoOAuth, ConnectionIdFn]):
    """The routes over a blocking ``AmoOAuth`` (Flask, Django, any WSGI framework).

    Routes, under ``prefix``: ``GET /connect``, ``GET /callback``, ``POST /exchange-code``,
    ``GET /status``, ``POST /disconnect``, ``GET /disconnect-hook``; in the site button's
    metadata mode (``Config.secrets_uri`` set) also ``POST /secrets``, amoCRM's post of a new
    integration's credentials (``oauth.receive_secrets``), and ``/connect`` answers a page
    with the site button (``oauth.site_button``) instead of redirecting.

    Args:
        oauth: the service, or ``Integrations`` of several behind the same routes (each
            request is answered by the one it is for: docs/several-integrations.md).
        connection_id: ``(request) -> str | None``: the id of the connection the request
            belongs to (e.g. the user id from the session; an int is turned into text), None
            when not signed in (401). Not asked by the hook or by ``/connect?ticket=...``. The
            callback asks it too, but needs no session (an in-app browser has none): None, or
            an exception it raises, counts as nobody signed in there; a signed-in user other
            than the one the state was issued to is refused (``bad_state``).
        app_scheme: the app's URL scheme for the deep link, e.g. ``"foryoure"``.
        prefix: where the routes live.
        texts: page strings by language, added to (or replacing) ``PAGE_TEXTS``; ``{crm}``
            in them becomes "Kommo" or "amoCRM" for the integration serving the request
            (``PageText``).
        default_language: the page's language when the request names none we have.
        max_body: the largest body read, in bytes (larger: 413).
        max_query: the largest query, in characters (larger: 414).
        allowed_origins: origins (``https://app.example``) whose pages may POST to the routes,
            besides the origin of ``Config.redirect_uri``. Other cross-site browser POSTs are
            refused (``cross_site_request``): by ``Origin``, else by ``Sec-Fetch-Site``.
        redact_access_logs: True (the default): ``install_access_log_redaction()`` keeps the
            callback's code and state, a ticket and the hook's signature out of the servers'
            access logs (uvicorn, gunicorn, hypercorn, werkzeug, runserver); False leaves
            logging alone.
        button: what the site button shows for the integration amoCRM makes for each
            account (``ButtonMetadata``, whose values were checked when it was made, as
            metadata mode's URIs were by ``Config``: ``/connect`` cannot fail on them);
            required in metadata mode, unused otherwise.

    Raises:
        ValueError: a bad ``app_scheme``, ``prefix``, ``default_language`` or limit; no
            ``button`` in metadata mode.
        TypeError: ``oauth`` is (or holds) an ``AsyncAmoOAuth`` (use ``AsyncHandlers``).
    """

    blocking = True

    def handle(self, request: Request) -> Response:
        """Answer one request.

        Args:
            request: the request; its ``path`` includes the prefix.

        Returns:
            The response: never a 500 for any input (refusals are 4xx with
            ``{"error": reason}``; a store outage is 503 ``store_unavailable``).

        Raises:
            Exception: only what the app's ``connection_id`` callable raised.
        """

        service = self.oauth  # until the request's integration is chosen (serve does first)

        def perform(item: Identify | ServiceCall[Any] | Ask[Any] | UseIntegration) -> Any:
            nonlocal service
            if isinstance(item, Identify):
                return self._identify(request)
            if isinstance(item, UseIntegration):
                service = self.integrations[item.name]
                return None
            if isinstance(item, Ask):
                return item.call.run(self.integrations[item.name])
            return item.run(service)

        return drive(self.serve(request), perform)

    def _identify(self, request: Request) -> str | None:
        value = self.connection_id(request)
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()  # it will never run: no "never awaited" warning on top
            raise TypeError("connection_id returned an awaitable: use AsyncHandlers")
        return value


class AsyncHandlers(RouteCore[AsyncAmoOAuth, AsyncConnectionIdFn]):
    """The routes over an ``AsyncAmoOAuth`` (FastAPI, Starlette, any ASGI framework).

    Args:
        oauth: the service, or ``Integrations`` of several (as for ``Handlers``).
        connection_id: as for ``Handlers``; it may also be a coroutine function.
        app_scheme: the app's URL scheme for the deep link.
        prefix: where the routes live.
        texts: page strings by language.
        default_language: the page's fallback language.
        max_body: the largest body read, in bytes.
        max_query: the largest query, in characters.
        allowed_origins: as for ``Handlers``.
        redact_access_logs: as for ``Handlers``.
        button: as for ``Handlers``.

    Raises:
        ValueError: a bad ``app_scheme``, ``prefix``, ``default_language`` or limit; no
            ``button`` in metadata mode.
        TypeError: ``oauth`` is (or holds) a blocking ``AmoOAuth`` (use ``Handlers``).
    """

    blocking = False

    async def handle(self, request: Request) -> Response:
        """Answer one request; see ``Handlers.handle``.

        Raises:
            Exception: only what the app's ``connection_id`` callable raised.
        """

        service = self.oauth  # until the request's integration is chosen (serve does first)

        async def perform(item: Identify | ServiceCall[Any] | Ask[Any] | UseIntegration) -> Any:
            nonlocal service
            if isinstance(item, Identify):
                return await self._identify(request)
            if isinstance(item, UseIntegration):
                service = self.integrations[item.name]
                return None
            if isinstance(item, Ask):
                return await item.call.arun(self.integrations[item.name])
            return await item.arun(service)

        return await adrive(self.serve(request), perform)

    async def _identify(self, request: Request) -> str | None:
        value = self.connection_id(request)
        if inspect.isawaitable(value):
            value = await value
        return value
