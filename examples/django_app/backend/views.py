"""The example backend's views: a toy sign-in, the account's leads, and amo_oauth's routes.

What the mobile app (or a browser) talks to::

    POST /login {"user": "ann"}          -> {"token": "..."}: send it as "Authorization: Bearer"
    GET  /login?user=ann&next=/api/amo-crm/connect
                                         the same for a browser: a session cookie, then a 303
    GET  /api/amo-crm/connect, /callback, /status, POST /exchange-code, /disconnect ...
                                         amo_oauth's routes (``amo_oauth.django.urls``)
    GET  /api/amo-crm/leads              -> {"leads": [...]}; 409 {"error": "not_connected"}

The sign-in is a toy (no password, sessions in memory): replace it with yours. What matters is
the ``connection_id`` callable: it maps a request to your user id, and amo_oauth keeps one amoCRM
connection per user id. With Django's own auth (``AuthenticationMiddleware``, ``login()``), leave
``connection_id`` out: the default is the signed-in user's ``str(pk)``.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Coroutine
from typing import Any, overload

import httpx
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import URLPattern, URLResolver, include, path
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from amo_oauth import AmoOAuth, AsyncAmoOAuth, ProviderError, ReauthorizationRequired, web
from amo_oauth.django import urls

from .leads import afetch_leads, fetch_leads

PREFIX = web.DEFAULT_PREFIX  # "/api/amo-crm", the seed's paths
COOKIE = "session"
USER = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
Patterns = list[URLPattern | URLResolver]
View = Callable[[HttpRequest], HttpResponse]
AsyncView = Callable[[HttpRequest], Coroutine[Any, Any, HttpResponse]]


class Sessions:
    """Toy sign-in: random session tokens mapped to user ids, in memory. Use your own."""

    def __init__(self) -> None:
        self._users: dict[str, str] = {}

    def open(self, user: str) -> str:
        token = secrets.token_urlsafe(32)
        self._users[token] = user
        return token

    def current_user(self, request: HttpRequest) -> str | None:
        """The signed-in user: a bearer token (the app) or the session cookie (a browser)."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            token = request.COOKIES.get(COOKIE, "")
        return self._users.get(token)


@overload
def routes(oauth: AmoOAuth, api: httpx.Client, *, app_scheme: str = ...) -> Patterns: ...
@overload
def routes(oauth: AsyncAmoOAuth, api: httpx.AsyncClient, *, app_scheme: str = ...) -> Patterns: ...
def routes(
    oauth: AmoOAuth | AsyncAmoOAuth,
    api: httpx.Client | httpx.AsyncClient,
    *,
    app_scheme: str = "foryoure",
) -> Patterns:
    """The backend's URL patterns: sync views over ``AmoOAuth``, async over ``AsyncAmoOAuth``.

    Args:
        oauth: the service.
        api: the client for amoCRM's API (tests route it to a fake).
        app_scheme: the mobile app's URL scheme, for the "Return to App" deep link.

    Raises:
        TypeError: an ``AmoOAuth`` with an ``httpx.AsyncClient``, or the other way round.
    """
    sessions = Sessions()

    def connection_id(request: web.Request) -> str | None:
        return sessions.current_user(request.native)

    leads: View | AsyncView
    if isinstance(oauth, AsyncAmoOAuth) and isinstance(api, httpx.AsyncClient):
        leads = _async_leads(oauth, api, sessions)
        amo = urls(oauth, connection_id=connection_id, app_scheme=app_scheme)
    elif isinstance(oauth, AmoOAuth) and isinstance(api, httpx.Client):
        leads = _leads(oauth, api, sessions)
        amo = urls(oauth, connection_id=connection_id, app_scheme=app_scheme)
    else:
        raise TypeError("AmoOAuth goes with an httpx.Client, AsyncAmoOAuth with an AsyncClient")
    return [
        path("login", _login(sessions)),
        # Before amo_oauth's patterns: the last of them answers every other path under PREFIX.
        path(PREFIX.lstrip("/") + "/leads", leads),
        path("", include(amo)),
    ]


def _login(sessions: Sessions) -> View:
    # Exempt from Django's CSRF check: the app's sign-in posts JSON, which a page on another
    # site cannot send without a CORS preflight (a text/plain or form post is refused, 415).
    # A sign-in form of your own keeps Django's token.
    @csrf_exempt
    @require_http_methods(["GET", "POST"])
    def login(request: HttpRequest) -> HttpResponse:
        if request.method == "GET":
            return _login_in_browser(request, sessions)
        if request.content_type != "application/json":
            return JsonResponse({"error": "unsupported_media_type"}, status=415)
        try:
            body = json.loads(request.body)
        except ValueError:
            body = None
        user = body.get("user") if isinstance(body, dict) else None
        if not isinstance(user, str) or not USER.fullmatch(user):
            return JsonResponse({"error": "bad_user"}, status=422)
        token = sessions.open(user)
        answer = JsonResponse({"token": token})
        _set_session_cookie(answer, token)
        return answer

    return login


def _login_in_browser(request: HttpRequest, sessions: Sessions) -> HttpResponse:
    user, then = request.GET.get("user", ""), request.GET.get("next", "/")
    if not USER.fullmatch(user):
        return JsonResponse({"error": "bad_user"}, status=422)
    # Toy: no password. Only this site's own paths for `next`, or this is an open redirect.
    if not url_has_allowed_host_and_scheme(then, allowed_hosts=None):
        then = "/"
    answer = HttpResponse(status=303, headers={"Location": then})
    _set_session_cookie(answer, sessions.open(user))
    return answer


def _set_session_cookie(answer: HttpResponse, token: str) -> None:
    # Lax: sent on amoCRM's redirect back (a top-level GET), not on other sites' POSTs.
    answer.set_cookie(COOKIE, token, httponly=True, samesite="Lax")


def _leads(oauth: AmoOAuth, api: httpx.Client, sessions: Sessions) -> View:
    @require_GET
    def leads(request: HttpRequest) -> HttpResponse:
        user = sessions.current_user(request)
        if user is None:
            return JsonResponse({"error": "unauthenticated"}, status=401)
        connection = oauth.status(user)
        if not connection.is_connected or connection.host is None:
            return _not_connected()
        try:
            found = fetch_leads(api, connection.host, oauth.auth(user))
        except ReauthorizationRequired:  # amoCRM revoked the tokens: connect again
            return _not_connected()
        except (httpx.HTTPError, ProviderError, ValueError):
            return JsonResponse({"error": "amocrm_unavailable"}, status=502)
        return JsonResponse({"leads": found})

    return leads


def _async_leads(oauth: AsyncAmoOAuth, api: httpx.AsyncClient, sessions: Sessions) -> AsyncView:
    @require_GET
    async def leads(request: HttpRequest) -> HttpResponse:
        user = sessions.current_user(request)
        if user is None:
            return JsonResponse({"error": "unauthenticated"}, status=401)
        connection = await oauth.status(user)
        if not connection.is_connected or connection.host is None:
            return _not_connected()
        try:
            found = await afetch_leads(api, connection.host, oauth.auth(user))
        except ReauthorizationRequired:  # amoCRM revoked the tokens: connect again
            return _not_connected()
        except (httpx.HTTPError, ProviderError, ValueError):
            return JsonResponse({"error": "amocrm_unavailable"}, status=502)
        return JsonResponse({"leads": found})

    return leads


def _not_connected() -> JsonResponse:
    # 409, never 403: "connect amoCRM first" is something the app can act on.
    return JsonResponse({"error": "not_connected"}, status=409)
