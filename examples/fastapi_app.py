"""A complete FastAPI backend on amo_oauth: sign-in, amoCRM's routes and the account's leads.

What the mobile app (or a browser) talks to::

    POST /login {"user": "ann"}          -> {"token": "..."}: send it as "Authorization: Bearer"
    GET  /login?next=/api/amo-crm/connect
                                         a browser's sign-in form, which signs nobody in; it
                                         posts user=ann&next=... to /login: a session cookie,
                                         then a 303 to ``next``
    GET  /api/amo-crm/connect, /callback, /status, POST /exchange-code, /disconnect ...
                                         amo_oauth's routes (``amo_oauth.fastapi.router``)
    GET  /api/amo-crm/leads              -> {"leads": [...]}; 409 {"error": "not_connected"};
                                            503 {"error": "refresh_backoff"} + Retry-After
                                            while amoCRM pushes back on the refresh;
                                            503 {"error": "store_unavailable"} when the
                                            store fails (a pool's wait ran out)
    GET  /admin                          a private integration's admin (a signed-in user in
                                         ``admins``) pastes a long-lived token or the
                                         keys-tab code from amoCRM's "Keys and scopes" tab;
    POST /admin/long-lived, /admin/keys-tab-code
                                         the forms' posts (this site's Origin only): the
                                         admin's own connection is made server-side with
                                         ``connect_long_lived`` / ``connect_with_code``

The sign-in is a toy (no password, sessions in memory): replace it with yours. What matters is
the ``connection_id`` callable: it maps a request to your user id, and amo_oauth keeps one amoCRM
connection per user id. Even a toy sign-in is a POST that another site's page cannot send: a
sign-in by link (``GET /login?user=...``) would let any page sign a visitor in as the page's
author, whose user the visitor's amoCRM account is then connected to (login CSRF). Its
session cookie, too, is one no other host can set (``__Host-session`` over https), read exactly
(``web.read_cookie``): a sibling subdomain could otherwise plant its own session over yours.

Run it (the redirect URI registered in amoCRM must end in ``/api/amo-crm/callback``)::

    AMO_CLIENT_ID=... AMO_CLIENT_SECRET=... \\
    AMO_REDIRECT_URI=https://example.com/api/amo-crm/callback \\
    AMO_STATE_SECRET=$(python -c "import secrets; print(secrets.token_hex(32))") \\
    uvicorn examples.fastapi_app:app_from_env --factory

(The access log prints the callback's code and state as ``[redacted]``: the router installs
the filter.)

``amo-oauth demo --serve`` runs this app against a fake amoCRM, to click through in a browser.
"""

from __future__ import annotations

import contextlib
import html
import math
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field, ValidationError

from amo_oauth import (
    AsyncAmoOAuth,
    ButtonMetadata,
    CallbackRejected,
    Config,
    ProviderError,
    ReauthorizationRequired,
    SQLiteStore,
    StoreError,
    TryAgainLater,
    web,
)
from amo_oauth.fastapi import router
from amo_oauth.web import Integrations

PREFIX = web.DEFAULT_PREFIX  # "/api/amo-crm", the seed's paths
COOKIE = "session"  # "__Host-session" over https (Sessions)
USER_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"
PAGE_SIZE = 250  # amoCRM's largest page: the fewest calls under its 7 requests per second
MAX_PAGES = 100  # a bound on following links we did not write
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
ADMIN_PAGE = """<!doctype html>
<html lang="en"><meta charset="utf-8"><title>Private integration</title>{error}
<h1>Connect with amoCRM's "Keys and scopes" tab</h1>
<p>{result}</p>
<form method="post" action="/admin/long-lived">
<label>Long-lived token <textarea name="token" required rows="4" cols="60"></textarea></label>
<label>Account host <input name="host" required placeholder="example.amocrm.ru"></label>
<button>Connect with the token</button>
</form>
<form method="post" action="/admin/keys-tab-code">
<label>Authorization code <textarea name="code" required rows="3" cols="60"></textarea></label>
<label>Account host <input name="host" required placeholder="example.amocrm.ru"></label>
<button>Connect with the code</button>
</form></html>
"""


# What the schema says of the example's own routes (amo_oauth's routes publish their own):
# the bodies they read and every answer they give, each refusal with its ``error`` slug.
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "A stable reason slug."}},
}


def _json(description: str, schema: dict[str, Any] = ERROR) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _html(description: str) -> dict[str, Any]:
    """A page; a refusal's page names its slug in ``<meta name="error">``."""
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


def _body(fields: dict[str, Any], *media: str) -> dict[str, Any]:
    schema = {"type": "object", "required": list(fields), "properties": fields}
    return {
        "requestBody": {"required": True, "content": {kind: {"schema": schema} for kind in media}}
    }


_FORM = "application/x-www-form-urlencoded"
_TEXT = {"type": "string"}
CROSS_SITE = _json("cross_site_request: posted from another site's page")
NOT_ADMIN = _json("not_an_admin: nobody, or no admin, is signed in")
LOGIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _json("Signed in (JSON)", {"type": "object", "properties": {"token": _TEXT}}),
    303: {"description": "Signed in (a form): to ``next``, a local path"},
    403: CROSS_SITE,
    415: _json("unsupported_media_type: neither JSON nor a form"),
    422: _json("bad_user: no user, or not a user name"),
}
LOGIN_BODY = _body({"user": {"type": "string", "pattern": USER_PATTERN}}, "application/json", _FORM)
ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _html("Connected (the page says how)"),
    400: _html("Refused: the page names the reason slug"),
    403: _json("cross_site_request or not_an_admin"),
    415: _json("unsupported_media_type: not a form"),
    502: _html("amoCRM did not accept it now: try again"),
}
LEADS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _json(
        "The account's leads", {"type": "object", "properties": {"leads": {"type": "array"}}}
    ),
    400: _json("unknown_integration"),
    401: _json("unauthenticated: nobody is signed in"),
    409: _json("not_connected: connect amoCRM first"),
    502: _json("amocrm_unavailable: amoCRM's API failed"),
    503: _json("refresh_backoff (and other try-again-later reasons), with Retry-After"),
}


class Login(BaseModel):
    user: str = Field(pattern=USER_PATTERN)


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

    def current_user(self, request: Request) -> str | None:
        """The signed-in user: a bearer token (the app) or the session cookie (a browser).

        The cookie is read from the raw headers by amo_oauth's exact parser, never
        ``request.cookies``: Starlette's strips U+00A0 around a name and keeps the last of a
        repeated one, so a sibling subdomain could plant its own session over the user's. Sent
        twice or under a near name, it reads as signed out.
        """
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            token = web.read_cookie(request.headers.raw, self.cookie) or ""
        return self._users.get(token)

    def set_cookie(self, answer: Response, token: str) -> None:
        # Lax: sent on amoCRM's redirect back (a top-level GET), not on other sites' POSTs.
        answer.set_cookie(
            self.cookie, token, path="/", secure=self.secure, httponly=True, samesite="lax"
        )


def create_app(
    oauth: AsyncAmoOAuth,
    *,
    app_scheme: str = "foryoure",
    api: httpx.AsyncClient | None = None,
    admins: frozenset[str] = frozenset({"admin"}),
    site_button: AsyncAmoOAuth | None = None,
    button: ButtonMetadata | None = None,
) -> FastAPI:
    """The backend.

    Args:
        oauth: the service; the app closes it on shutdown.
        site_button: a second integration in the site button's metadata mode
            (``Config.secrets_uri``), served by the same routes as ``oauth`` under the name
            ``site`` (``/connect?integration=site`` shows amoCRM's button; ``/leads?integration=
            site`` reads through it); the app closes it on shutdown.
        button: what that button shows of the integration amoCRM makes per account.
        app_scheme: the mobile app's URL scheme, for the "Return to App" deep link.
        api: the client for amoCRM's API (tests route it to a fake); the app closes it on
            shutdown. Default: a new ``httpx.AsyncClient``.
        admins: the users who may paste a long-lived token or a keys-tab code on ``/admin``
            (a toy, like the sign-in: use your own roles).
    """
    own_site = _origin_of(oauth.config.redirect_uri)  # the site the browser binding is on
    sessions = Sessions(own_site)
    client = api if api is not None else httpx.AsyncClient(timeout=10.0)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await oauth.aclose()
        if site_button is not None:
            await site_button.aclose()
        await client.aclose()

    app = FastAPI(title="amo_oauth example", lifespan=lifespan)

    @app.post("/login", responses=LOGIN_RESPONSES, openapi_extra=LOGIN_BODY)
    async def login(request: Request) -> Response:
        """The app posts JSON and gets a token; a browser posts the form and is redirected."""
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        is_json = media == "application/json"
        if not _may_sign_in(request.headers.get, own_site, is_json=is_json):
            return JSONResponse({"error": "cross_site_request"}, 403)
        fields = await _sign_in_fields(request, media)
        if fields is None:
            return JSONResponse({"error": "unsupported_media_type"}, 415)
        try:
            user = Login.model_validate({"user": fields.get("user")}).user
        except ValidationError:
            return JSONResponse({"error": "bad_user"}, 422)
        token = sessions.open(user)
        then = fields.get("next", "/")
        answer: JSONResponse | RedirectResponse
        if is_json:
            answer = JSONResponse({"token": token})
        else:  # only local paths for `next`, or this is an open redirect
            answer = RedirectResponse(then if _is_local_path(then) else "/", status_code=303)
        sessions.set_cookie(answer, token)
        return answer

    @app.get("/login", response_class=HTMLResponse)
    async def sign_in_form(then: str = Query("/", alias="next")) -> HTMLResponse:
        # A GET signs nobody in: a link or an image on any site can make a browser send one.
        page = SIGN_IN_PAGE.format(then=html.escape(then, quote=True))
        return HTMLResponse(page, headers=SIGN_IN_HEADERS)

    @app.get("/admin", responses={200: _html("The admin's forms"), 403: NOT_ADMIN})
    async def admin_page(request: Request) -> Response:
        if sessions.current_user(request) not in admins:
            return JSONResponse({"error": "not_an_admin"}, 403)
        return _admin_answer(200, "Paste what the tab shows, and the account's host.")

    @app.post(
        "/admin/long-lived",
        responses=ADMIN_RESPONSES,
        openapi_extra=_body({"token": _TEXT, "host": _TEXT}, _FORM),
    )
    async def admin_long_lived(request: Request) -> Response:
        async def connect(user: str, fields: dict[str, str]) -> str:
            connection = await oauth.connect_long_lived(
                user, fields.get("token", "").strip(), fields.get("host", "").strip()
            )
            return f"Connected until {connection.expires_at:%Y-%m-%d %H:%M} UTC"

        return await _as_admin(request, connect)

    @app.post(
        "/admin/keys-tab-code",
        responses=ADMIN_RESPONSES,
        openapi_extra=_body({"code": _TEXT, "host": _TEXT}, _FORM),
    )
    async def admin_keys_tab_code(request: Request) -> Response:
        async def connect(user: str, fields: dict[str, str]) -> str:
            result = await oauth.connect_with_code(
                user, fields.get("code", "").strip(), fields.get("host", "").strip()
            )
            if result.refused is not None:  # a connected connection keeps its tokens
                return f"Not exchanged: {_with_hint(result.refused)}"
            return f"{result.outcome.value}" + (" (seen before)" if result.duplicate else "")

        return await _as_admin(request, connect)

    async def _as_admin(
        request: Request, connect: Callable[[str, dict[str, str]], Awaitable[str]]
    ) -> Response:
        """Run an admin's form post: from this site only (like the sign-in), by an admin,
        on the admin's own connection. Never echoes what was pasted."""
        if not _may_sign_in(request.headers.get, own_site, is_json=False):
            return JSONResponse({"error": "cross_site_request"}, 403)
        user = sessions.current_user(request)
        if user is None or user not in admins:
            return JSONResponse({"error": "not_an_admin"}, 403)
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        fields = await _sign_in_fields(request, media)
        if fields is None or media != "application/x-www-form-urlencoded":
            return JSONResponse({"error": "unsupported_media_type"}, 415)
        try:
            said = await connect(user, fields)
        except CallbackRejected as refused:
            return _admin_answer(400, f"Refused: {_with_hint(refused.reason)}", refused.reason)
        except ProviderError as failed:  # TryAgainLater too: nothing was changed
            said = f"amoCRM did not accept it now ({failed.status}): try again"
            return _admin_answer(502, said, "amocrm_unavailable")
        connection = await oauth.status(user)
        account = connection.account.name if connection.account else "no account"
        return _admin_answer(200, f"{said}: {connection.status.value}, {account}")

    # Registered before the router: its catch-all under PREFIX answers 404 for unknown paths.
    services = {"amocrm": oauth} if site_button is None else {"amocrm": oauth, "site": site_button}

    @app.get(PREFIX + "/leads", responses=LEADS_RESPONSES)
    async def leads(request: Request, integration: str = "amocrm") -> JSONResponse:
        user = sessions.current_user(request)
        if user is None:
            return JSONResponse({"error": "unauthenticated"}, 401)
        if integration not in services:
            return JSONResponse({"error": "unknown_integration"}, 400)
        return await _leads_of(services[integration], client, user)

    app.include_router(
        router(
            oauth if site_button is None else Integrations(services, default="amocrm"),
            connection_id=lambda request: sessions.current_user(request.native),
            app_scheme=app_scheme,
            button=button,
        )
    )
    return app


#: What an admin can do about a refusal on the admin page (the slug stays first: docs/reasons.md).
ADMIN_HINTS = {
    "foreign_host": "type the account's host, e.g. example.amocrm.ru or example.kommo.com",
    "missing_referer": "type the account's host too",
    "code_rejected": "amoCRM did not accept the code: copy it again (it lives 20 minutes)",
    "exchange_interrupted": "amoCRM did not answer; the code may be spent: take a new one",
    "code_used_elsewhere": "this code already connected another connection: take a new one",
    "token_refused": "amoCRM did not accept the token: issue a new one in the tab",
}


def _with_hint(reason: str) -> str:
    hint = ADMIN_HINTS.get(reason)
    return f"{reason} ({hint})" if hint else reason


def _admin_answer(status: int, result: str, error: str | None = None) -> HTMLResponse:
    """The admin page saying ``result``; a refusal's slug ``error`` also in a ``<meta>``,
    where a client (or a test) reads it without parsing the sentence."""
    meta = f'<meta name="error" content="{html.escape(error)}">' if error else ""
    page = ADMIN_PAGE.format(result=html.escape(result), error=meta)
    return HTMLResponse(page, status, headers={**SIGN_IN_HEADERS, "cache-control": "no-store"})


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


async def _sign_in_fields(request: Request, media: str) -> dict[str, str] | None:
    """The sign-in's fields (``user``, ``next``) from JSON or a form; None for another body."""
    if media == "application/json":
        with contextlib.suppress(ValueError):
            body = await request.json()
            if isinstance(body, dict):
                return {key: value for key, value in body.items() if isinstance(value, str)}
        return {}
    if media == "application/x-www-form-urlencoded":
        with contextlib.suppress(ValueError):
            return dict(parse_qsl((await request.body()).decode()))
        return {}
    return None


def _is_local_path(path: str) -> bool:
    # A browser takes "//evil.example" and "/\\evil.example" for another host, and drops tabs
    # and newlines first ("/\t/evil.example" is "//evil.example"): a plain path only.
    if path is None:
        return False
    return path.startswith("/") and path.isprintable() and not path.startswith(("//", "/\\"))


async def _leads_of(oauth: AsyncAmoOAuth, client: httpx.AsyncClient, user: str) -> JSONResponse:
    try:
        return await _read_leads(oauth, client, user)
    except StoreError:  # as amo_oauth's own routes answer it: the app tries again later
        return JSONResponse({"error": "store_unavailable"}, 503)


async def _read_leads(oauth: AsyncAmoOAuth, client: httpx.AsyncClient, user: str) -> JSONResponse:
    host = await _account_host(oauth, user)
    if host is None:
        # 409, never 403: "connect amoCRM first" is something the app can act on.
        return JSONResponse({"error": "not_connected"}, 409)
    try:
        found = await fetch_leads(client, host, oauth.auth(user))
    except ReauthorizationRequired:  # amoCRM revoked the tokens: the user must connect again
        return JSONResponse({"error": "not_connected"}, 409)
    except TryAgainLater as later:  # amoCRM pushed back (a refresh back-off): come back later
        return JSONResponse({"error": later.reason}, 503, headers=_retry_after(later))
    except (httpx.HTTPError, ProviderError, ValueError):
        return JSONResponse({"error": "amocrm_unavailable"}, 502)
    return JSONResponse({"leads": found})


def _retry_after(later: TryAgainLater) -> dict[str, str]:
    """``Retry-After`` for a 503: whole seconds, rounded up (HTTP takes no fractions)."""
    if later.retry_after is None:
        return {}
    return {"Retry-After": str(math.ceil(later.retry_after))}


async def _account_host(oauth: AsyncAmoOAuth, user: str) -> str | None:
    """The connected account's host (``x.amocrm.ru``, ``x.kommo.com``), or None."""
    connection = await oauth.status(user)
    return connection.host if connection.is_connected else None


async def fetch_leads(
    client: httpx.AsyncClient, host: str, auth: httpx.Auth
) -> list[dict[str, Any]]:
    """Every lead of the account, following amoCRM's ``_links.next`` page by page."""
    url: str | None = f"https://{host}/api/v4/leads?limit={PAGE_SIZE}"
    found: list[dict[str, Any]] = []
    for _ in range(MAX_PAGES):
        if url is None:
            break
        response = await client.get(url, auth=auth)
        if response.status_code == 204:  # amoCRM's "no leads": an empty body
            break
        response.raise_for_status()
        page = response.json()
        found += [_summary(lead) for lead in page["_embedded"]["leads"]]
        url = _next_page(page, host)
    return found


def _summary(lead: dict[str, Any]) -> dict[str, Any]:
    return {"id": lead["id"], "name": lead["name"], "price": lead.get("price")}


def _next_page(page: dict[str, Any], host: str) -> str | None:
    href = page.get("_links", {}).get("next", {}).get("href")
    if not isinstance(href, str):
        return None
    parts = urlsplit(href)
    # The bearer token goes to the account's own host only, whatever a link says.
    return href if (parts.scheme, parts.hostname) == ("https", host) else None


def app_from_env() -> FastAPI:
    """The app configured from ``AMO_*`` environment variables (see the module docstring).

    Optional: ``AMO_DB`` (the SQLite file), ``AMO_AUTHORIZE_URL`` (Kommo:
    ``https://www.kommo.com/oauth``), ``AMO_APP_SCHEME``.
    """
    env = os.environ
    config = Config(
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
    oauth = AsyncAmoOAuth(config, store=SQLiteStore(env.get("AMO_DB", "amo_oauth.db")))
    return create_app(oauth, app_scheme=env.get("AMO_APP_SCHEME", "foryoure"))
