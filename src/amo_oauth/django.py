"""Django adapter: amo_oauth's routes as URL patterns, over ``amo_oauth.web``.

``path("", include(amo_oauth.django.urls(oauth, app_scheme="myapp")))`` in the root URLconf.
Sync views over ``AmoOAuth`` (WSGI), async views over ``AsyncAmoOAuth`` (ASGI). By default the
connection is the signed-in user's (``str(request.user.pk)``, ``await request.auser()`` in the
async views; ``AuthenticationMiddleware`` sets both). ``connection_id`` replaces that: it
receives an ``amo_oauth.web.Request`` whose ``native`` is Django's ``HttpRequest``; an exception
it raises (``PermissionDenied``) reaches Django untouched.

The views are exempt from Django's CSRF middleware. Its token is for the app's own forms; the
old app posts the code with no token, and the middleware's 403 was the seed's bug. The routes
defend themselves: a browser POST from another site is refused by its ``Origin`` or
``Sec-Fetch-Site`` (``cross_site_request``) before its body is read, and ``/exchange-code``
never exchanges a code it has not seen, so a post that gets through has nothing to gain.
amoCRM's post to ``/secrets`` (metadata mode) is server to server: no token, no cookie; only
its signed state admits it. Every POST parameter is ``sensitive_post_parameters``: the bodies
carry codes, states and a client secret, which Django's error reports must not show.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine, Mapping, Sequence
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING, Any, cast, overload

from ._async_service import AsyncAmoOAuth
from ._extras import needs_extra
from ._results import ButtonMetadata
from ._service import AmoOAuth
from .web import (
    DEFAULT_PREFIX,
    AsyncConnectionIdFn,
    AsyncHandlers,
    ConnectionIdFn,
    Handlers,
    Integrations,
    PageText,
    Request,
    Response,
    Route,
)
from .web._http import HeadersInput

with needs_extra("django", "amo_oauth.django"):
    from django.contrib.auth.decorators import login_not_required
    from django.core.exceptions import ImproperlyConfigured
    from django.core.handlers.asgi import ASGIRequest
    from django.core.handlers.wsgi import get_bytes_from_wsgi
    from django.http import HttpRequest, HttpResponse
    from django.urls import URLPattern, re_path
    from django.views.decorators.csrf import csrf_exempt
    from django.views.decorators.debug import sensitive_post_parameters

if TYPE_CHECKING:  # importing them needs django.contrib.auth installed, and the app registry
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

__all__ = ["urls"]

_request_log = logging.getLogger("django.request")
_NO_USER = "request has no user: add AuthenticationMiddleware, or pass urls(connection_id=...)"
View = Callable[..., HttpResponse] | Callable[..., Coroutine[Any, Any, HttpResponse]]


@overload
def urls(
    oauth: AmoOAuth | Integrations[AmoOAuth],
    *,
    connection_id: ConnectionIdFn | None = None,
    app_scheme: str,
    prefix: str = DEFAULT_PREFIX,
    texts: Mapping[str, PageText] | None = None,
    allowed_origins: Sequence[str] = (),
    redact_access_logs: bool = True,
    button: ButtonMetadata | None = None,
) -> list[URLPattern]: ...
@overload
def urls(
    oauth: AsyncAmoOAuth | Integrations[AsyncAmoOAuth],
    *,
    connection_id: AsyncConnectionIdFn | None = None,
    app_scheme: str,
    prefix: str = DEFAULT_PREFIX,
    texts: Mapping[str, PageText] | None = None,
    allowed_origins: Sequence[str] = (),
    redact_access_logs: bool = True,
    button: ButtonMetadata | None = None,
) -> list[URLPattern]: ...
def urls(
    oauth: AmoOAuth | AsyncAmoOAuth | Integrations[AmoOAuth] | Integrations[AsyncAmoOAuth],
    *,
    connection_id: Any = None,
    app_scheme: str,
    prefix: str = DEFAULT_PREFIX,
    texts: Mapping[str, PageText] | None = None,
    allowed_origins: Sequence[str] = (),
    redact_access_logs: bool = True,
    button: ButtonMetadata | None = None,
) -> list[URLPattern]:
    """URL patterns for ``include()``: one per route, named ``amo_oauth_{route}``.

    Args:
        oauth: an ``AmoOAuth`` (sync views) or an ``AsyncAmoOAuth`` (async views), or
            ``amo_oauth.web.Integrations`` of several of one kind behind the same routes.
        connection_id: ``(web.Request) -> str | None`` (it may be async for an
            ``AsyncAmoOAuth``): whose connection the request is about; None answers 401.
            Default: the signed-in user's ``str(pk)``, None when anonymous.
        app_scheme: the app's URL scheme for the callback page's deep link.
        prefix: where the routes live, as in the FastAPI and Flask adapters (no trailing
            slash, so ``APPEND_SLASH`` never redirects a POST).
        texts: page strings by language, added to the built-in en/ru/uk (``{crm}``
            in them names the serving integration's CRM: ``PageText``).
        allowed_origins: origins (``https://app.example``) whose pages may POST to the routes
            besides the ``redirect_uri``'s own.
        redact_access_logs: when True (the default),
            ``amo_oauth.web.install_access_log_redaction()`` keeps the callback's code and
            state out of runserver's (``django.server``), uvicorn's and gunicorn's logs.
        button: what amoCRM's site button shows; required in the site button's metadata mode
            (``Config.secrets_uri``), where ``/connect`` shows the button and ``POST /secrets``
            has a pattern too (``amo_oauth_secrets``).

    Returns:
        The patterns. Under a non-empty ``prefix`` the last one answers every other path there
        with the handlers' JSON 404, so a view of your own under it goes before the include.

    Raises:
        ValueError: a bad ``app_scheme`` or ``prefix``; no ``button`` in metadata mode.
    """
    options: dict[str, Any] = {
        "app_scheme": app_scheme,
        "prefix": prefix,
        "texts": texts,
        "allowed_origins": allowed_origins,
        "redact_access_logs": redact_access_logs,
        "button": button,
    }
    primary = oauth.primary if isinstance(oauth, Integrations) else oauth
    if isinstance(primary, AsyncAmoOAuth):  # the handlers check every service's kind
        awaited = cast("AsyncAmoOAuth | Integrations[AsyncAmoOAuth]", oauth)
        handlers = AsyncHandlers(awaited, connection_id=connection_id or _asigned_in, **options)
        return _patterns(handlers.prefix, handlers.routes, _async_view(handlers))
    blocking = cast("AmoOAuth | Integrations[AmoOAuth]", oauth)
    sync = Handlers(blocking, connection_id=connection_id or _signed_in, **options)
    return _patterns(sync.prefix, sync.routes, _sync_view(sync))


def _patterns(prefix: str, routes: Sequence[Route], view: View) -> list[URLPattern]:
    # Each pattern hands the view the path under the prefix (``rest``), so where the patterns
    # are included does not matter; every method reaches the view, which answers a wrong one 405.
    under = re.escape(prefix.lstrip("/") + "/") if prefix else ""
    patterns = []
    for route in routes:
        rest = route.path.lstrip("/")
        regex, name = rf"^{under}{re.escape(rest)}\Z", f"amo_oauth_{route.name}"
        patterns.append(re_path(regex, view, {"rest": rest}, name=name))
    if prefix:  # at the root, a catch-all would shadow the app's own 404s
        patterns.append(re_path(rf"^{under}(?P<rest>.*)\Z", view))
    return patterns


def _sync_view(handlers: Handlers) -> View:
    # LoginRequiredMiddleware (Django 5.1+) would redirect amoCRM's hook, the callback and a
    # ticket link to the sign-in page with the code in its query: connection_id decides who asks.
    @login_not_required
    @csrf_exempt  # the routes' own defences stand in for the token: see the module docstring
    @sensitive_post_parameters()  # codes, states, a client secret: never in an error report
    def view(request: HttpRequest, rest: str) -> HttpResponse:
        web_request = _to_web(request, f"{handlers.prefix}/{rest}", handlers.max_body)
        return _logged(request, _to_django(handlers.handle(web_request)))

    return view


def _async_view(handlers: AsyncHandlers) -> View:
    # LoginRequiredMiddleware (Django 5.1+) would redirect amoCRM's hook, the callback and a
    # ticket link to the sign-in page with the code in its query: connection_id decides who asks.
    @login_not_required
    @csrf_exempt  # the routes' own defences stand in for the token: see the module docstring
    @sensitive_post_parameters()  # codes, states, a client secret: never in an error report
    async def view(request: HttpRequest, rest: str) -> HttpResponse:
        web_request = _to_web(request, f"{handlers.prefix}/{rest}", handlers.max_body)
        return _logged(request, _to_django(await handlers.handle(web_request)))

    return view


def _logged(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """Log an answer >= 400 to ``django.request`` as Django would, minus the request.

    Django's handler logs such an answer with ``extra={"request": request}``, and the request's
    repr carries the query: the callback's unused code and state, a ticket. The same line
    (WARNING for 4xx, ERROR for 5xx, "Reason: /path", ``status_code``) goes out here without
    the request, and ``_has_been_logged`` makes Django's ``log_response`` skip the response.
    Handlers that read ``record.request`` (``AdminEmailHandler``) fall back to no request.
    """
    status = response.status_code
    if status >= 400:
        level = logging.ERROR if status >= 500 else logging.WARNING
        extra = {"status_code": status}
        _request_log.log(
            level, "%s: %s", response.reason_phrase, _escaped(request.path), extra=extra
        )
        response._has_been_logged = True  # type: ignore[attr-defined]  # read by log_response
    return response


def _escaped(text: str) -> str:
    # As Django's log_response: a path's control characters cannot forge log lines.
    return text.encode("unicode_escape").decode("ascii")


def _to_web(request: HttpRequest, path: str, max_body: int) -> Request:
    # The raw query and headers, decoded once by the web layer: bytes under ASGI (text from
    # Django's test client), latin-1 text standing for the bytes under WSGI (PEP 3333). Never
    # Django's parsed cookies, nor its ASGI META, which joins repeated headers with ",": the
    # web layer parses the Cookie header(s) itself (issue 20 #1).
    headers: HeadersInput
    if isinstance(request, ASGIRequest):
        query: str | bytes = request.scope.get("query_string", b"")
        headers = request.scope.get("headers", [])
    else:
        query = get_bytes_from_wsgi(request.META, "QUERY_STRING", "")
        headers = request.headers.items()
    body = request.read(max_body + 1)  # +1: enough to refuse
    peer = request.META.get("REMOTE_ADDR") or None
    return Request(request.method or "GET", path, query, headers, body, request, peer=peer)


def _to_django(answer: Response) -> HttpResponse:
    """A ``web.Response`` as Django's. Django keeps headers in a dict, where a second
    ``Set-Cookie`` would replace the first, so cookies go into ``response.cookies``.

    Raises:
        ValueError: a ``Set-Cookie`` that Python's cookie parser cannot read (it would drop it).
    """
    response = HttpResponse(answer.body, status=answer.status)
    for name, value in answer.headers:
        if name != "set-cookie":
            response[name] = value
            continue
        cookie = SimpleCookie(value)
        if not cookie:
            raise ValueError("a Set-Cookie header that Django's cookie jar cannot hold")
        response.cookies.update(cookie)
    return response


def _pk(user: AbstractBaseUser | AnonymousUser) -> str | None:
    return str(user.pk) if user.is_authenticated else None


def _signed_in(request: Request) -> str | None:
    if not hasattr(request.native, "user"):
        raise ImproperlyConfigured(_NO_USER)
    return _pk(request.native.user)


async def _asigned_in(request: Request) -> str | None:
    if not hasattr(request.native, "auser"):
        raise ImproperlyConfigured(_NO_USER)
    return _pk(await request.native.auser())
