"""The example backend's views: a toy sign-in, the account's leads, and amo_oauth's routes.

What the mobile app (or a browser) talks to::

    POST /login {"user": "ann"}          -> {"token": "..."}: send it as "Authorization: Bearer"
    GET  /login?next=/api/amo-crm/connect
                                         a browser's sign-in form, which signs nobody in; it
                                         posts user=ann&next=... to /login: a session cookie,
                                         then a 303 to ``next``
    GET  /api/amo-crm/connect, /callback, /status, POST /exchange-code, /disconnect ...
                                         amo_oauth's routes (``amo_oauth.django.urls``)
    GET  /api/amo-crm/leads              -> {"leads": [...]}; 409 {"error": "not_connected"};
                                            503 {"error": "refresh_backoff"} + Retry-After
                                            while amoCRM pushes back on the refresh

The sign-in is a toy (no password, sessions in memory): replace it with yours. What matters is
the ``connection_id`` callable: it maps a request to your user id, and amo_oauth keeps one amoCRM
connection per user id. With Django's own auth (``AuthenticationMiddleware``, ``login()``), leave
``connection_id`` out: the default is the signed-in user's ``str(pk)``. Even a toy sign-in is a
POST that another site's page cannot send: a sign-in by link (``GET /login?user=...``) would let
any page sign a visitor in as the page's author, whose user the visitor's amoCRM account is then
connected to (login CSRF). Its session cookie, too, is one no other host can set
(``__Host-session`` over https), read exactly (``web.read_cookie``): a sibling subdomain could
otherwise plant its own session over yours.
"""

from __future__ import annotations

import html
import json
import math
import re
import secrets
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, overload
from urllib.parse import urlsplit

import httpx
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import URLPattern, URLResolver, include, path
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    ProviderError,
    ReauthorizationRequired,
    TryAgainLater,
    web,
)
from amo_oauth.django import urls

from .leads import afetch_leads, fetch_leads

PREFIX = web.DEFAULT_PREFIX  # "/api/amo-crm", the seed's paths
COOKIE = "session"  # "__Host-session" over https (Sessions)
USER = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
Patterns = list[URLPattern | URLResolver]
View = Callable[[HttpRequest], HttpResponse]
AsyncView = Callable[[HttpRequest], Coroutine[Any, Any, HttpResponse]]
SIGN_IN_PAGE = """<!doctype html>
<html lang="en"><meta charset="utf-8"><title>Sign in</title>
<form method="post" action="/login">
<label>User <input name="user" required autofocus autocomplete="username"></label>
<input type="hidden" name="next" value="{then}">
<button>Sign in</button>
</form></html>
"""
# The form loads nothing, and no other site may frame it (a framed form is clicked blindly).
SIGN_IN_HEADERS = {"content-security-policy": "default-src 'none'; frame-ancestors 'none'"}


class Sessions:
    """Toy sign-in: random session tokens mapped to user ids, in memory. Use your own.

    Its cookie is ``__Host-session`` over https (``Secure``, ``Path=/``, no ``Domain``: a
    browser refuses that name from a sibling subdomain), plain ``session`` on http (the demo on
    127.0.0.1, where browsers refuse the prefix); ``HttpOnly`` and ``SameSite=Lax`` always.
    """

    def __init__(self, own_site: str) -> None:
        self._users: dict[str, str] = {}
        self.secure = own_site.startswith("https://")
        self.cookie = ("__Host-" if self.secure else "") + COOKIE

    def open(self, user: str) -> str:
        token = secrets.token_urlsafe(32)
        self._users[token] = user
        return token

    def current_user(self, request: HttpRequest) -> str | None:
        """The signed-in user: a bearer token (the app) or the session cookie (a browser).

        The cookie is read from the raw headers by amo_oauth's exact parser, never
        ``request.COOKIES``: Django's ``parse_cookie`` strips U+00A0 around a name and keeps the
        last of a repeated one, so a sibling subdomain could plant its own session over the
        user's. Sent twice or under a near name, it reads as signed out.
        """
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            token = web.read_cookie(_raw_headers(request), self.cookie) or ""
        return self._users.get(token)

    def set_cookie(self, answer: HttpResponse, token: str) -> None:
        # Lax: sent on amoCRM's redirect back (a top-level GET), not on other sites' POSTs.
        answer.set_cookie(
            self.cookie, token, path="/", secure=self.secure, httponly=True, samesite="Lax"
        )


def _raw_headers(request: HttpRequest) -> Iterable[tuple[str | bytes, str | bytes]]:
    # As amo_oauth.django reads them: the ASGI scope's (Django's META joins a repeated header
    # with ","), else the WSGI environ's.
    if isinstance(request, ASGIRequest):
        headers: list[tuple[bytes, bytes]] = request.scope.get("headers", [])
        return headers
    return request.headers.items()


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
    own_site = _origin_of(oauth.config.redirect_uri)
    sessions = Sessions(own_site)

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
        path("login", _login(sessions, own_site)),
        # Before amo_oauth's patterns: the last of them answers every other path under PREFIX.
        path(PREFIX.lstrip("/") + "/leads", leads),
        path("", include(amo)),
    ]


def _login(sessions: Sessions, own_site: str) -> View:
    # Exempt from Django's CSRF token: the app's sign-in posts JSON without one, and a page on
    # another site cannot send JSON without a CORS preflight. The Origin check below refuses
    # another site's form. A sign-in form of your own keeps Django's token (which checks the
    # Origin too).
    @csrf_exempt
    @require_http_methods(["GET", "POST"])
    def login(request: HttpRequest) -> HttpResponse:
        if request.method == "GET":  # signs nobody in: any site can make a browser send one
            return _sign_in_form(request)
        is_json = request.content_type == "application/json"
        if not _may_sign_in(request.headers.get, own_site, is_json=is_json):
            return JsonResponse({"error": "cross_site_request"}, status=403)
        if is_json:
            return _sign_in_app(request, sessions)
        if request.content_type == "application/x-www-form-urlencoded":
            return _sign_in_browser(request, sessions)
        return JsonResponse({"error": "unsupported_media_type"}, status=415)

    return login


def _sign_in_form(request: HttpRequest) -> HttpResponse:
    then = html.escape(request.GET.get("next", "/"), quote=True)
    return HttpResponse(SIGN_IN_PAGE.format(then=then), headers=SIGN_IN_HEADERS)


def _sign_in_app(request: HttpRequest, sessions: Sessions) -> HttpResponse:
    try:
        body = json.loads(request.body)
    except ValueError:
        body = None
    user = body.get("user") if isinstance(body, dict) else None
    if not isinstance(user, str) or not USER.fullmatch(user):
        return JsonResponse({"error": "bad_user"}, status=422)
    token = sessions.open(user)
    answer = JsonResponse({"token": token})
    sessions.set_cookie(answer, token)
    return answer


def _sign_in_browser(request: HttpRequest, sessions: Sessions) -> HttpResponse:
    user, then = request.POST.get("user", ""), request.POST.get("next", "/")
    if not USER.fullmatch(user):
        return JsonResponse({"error": "bad_user"}, status=422)
    # Toy: no password. Only this site's own paths for `next`, or this is an open redirect.
    if not url_has_allowed_host_and_scheme(then, allowed_hosts=None):
        then = "/"
    answer = HttpResponse(status=303, headers={"Location": then})
    sessions.set_cookie(answer, sessions.open(user))
    return answer


def _origin_of(url: str) -> str:
    """``scheme://host[:port]``, lower-case: what a browser sends as ``Origin``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _may_sign_in(header: Callable[[str], str | None], own_site: str, *, is_json: bool) -> bool:
    """Whether a sign-in POST may come from where its headers (``header(name)``) say it does.

    A browser names where a POST comes from: ``Origin`` (every current browser), else
    ``Sec-Fetch-Site``, else ``Referer``; it must be this site. A request naming nothing is
    not a browser's (the mobile app, curl): it may post JSON, which another site's page cannot
    make a browser send without a CORS preflight this app never answers, but not the form.
    """
    origin = header("origin")
    if origin is not None:
        return origin.lower() == own_site
    fetch_site = header("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site == "same-origin"
    referer = header("referer")
    if referer is not None:
        return _origin_of(referer) == own_site
    return is_json


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
        except TryAgainLater as later:  # amoCRM pushed back (a refresh back-off)
            return _try_again_later(later)
        except (httpx.HTTPError, ProviderError, ValueError):
            return JsonResponse({"error": "amocrm_unavailable"}, status=502)
        return JsonResponse({"leads": found})

    return leads


def _try_again_later(later: TryAgainLater) -> HttpResponse:
    """503 with ``Retry-After`` (whole seconds, rounded up) when amoCRM said when."""
    answer = JsonResponse({"error": later.reason}, status=503)
    if later.retry_after is not None:
        answer["Retry-After"] = str(math.ceil(later.retry_after))
    return answer


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
        except TryAgainLater as later:  # amoCRM pushed back (a refresh back-off)
            return _try_again_later(later)
        except (httpx.HTTPError, ProviderError, ValueError):
            return JsonResponse({"error": "amocrm_unavailable"}, status=502)
        return JsonResponse({"leads": found})

    return leads


def _not_connected() -> JsonResponse:
    # 409, never 403: "connect amoCRM first" is something the app can act on.
    return JsonResponse({"error": "not_connected"}, status=409)
