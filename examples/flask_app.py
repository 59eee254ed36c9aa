"""A complete Flask backend on amo_oauth: sign-in, amoCRM's routes and the account's leads.

The same backend as ``fastapi_app.py``, blocking::

    POST /login {"user": "ann"}          -> {"token": "..."}: send it as "Authorization: Bearer"
    GET  /login?next=/api/amo-crm/connect
                                         a browser's sign-in form, which signs nobody in; it
                                         posts user=ann&next=... to /login: a session cookie,
                                         then a 303 to ``next``
    GET  /api/amo-crm/connect, /callback, /status, POST /exchange-code, /disconnect ...
                                         amo_oauth's routes (``amo_oauth.flask.blueprint``)
    GET  /api/amo-crm/leads              -> {"leads": [...]}; 409 {"error": "not_connected"};
                                            503 {"error": "refresh_backoff"} + Retry-After
                                            while amoCRM pushes back on the refresh;
                                            503 {"error": "store_unavailable"} when the
                                            store fails

The sign-in is a toy (no password, sessions in memory): replace it with yours. What matters is
the ``connection_id`` callable: it maps a request to your user id, and amo_oauth keeps one amoCRM
connection per user id. Even a toy sign-in is a POST that another site's page cannot send: a
sign-in by link (``GET /login?user=...``) would let any page sign a visitor in as the page's
author, whose user the visitor's amoCRM account is then connected to (login CSRF). Its
session cookie, too, is one no other host can set (``__Host-session`` over https), read exactly
(``web.read_cookie``): a sibling subdomain could otherwise plant its own session over yours.

With several worker processes, use a shared session store and one
``SQLiteStore`` file (or Postgres/Redis) for all of them.

Run it (the redirect URI registered in amoCRM must end in ``/api/amo-crm/callback``)::

    AMO_CLIENT_ID=... AMO_CLIENT_SECRET=... \\
    AMO_REDIRECT_URI=https://example.com/api/amo-crm/callback \\
    AMO_STATE_SECRET=$(python -c "import secrets; print(secrets.token_hex(32))") \\
    flask --app "examples.flask_app:app_from_env()" run
"""

from __future__ import annotations

import html
import math
import os
import re
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import flask
import httpx
from werkzeug import Response

from amo_oauth import (
    AmoOAuth,
    Config,
    ProviderError,
    ReauthorizationRequired,
    SQLiteStore,
    StoreError,
    TryAgainLater,
    web,
)
from amo_oauth.flask import blueprint

PREFIX = web.DEFAULT_PREFIX  # "/api/amo-crm", the seed's paths
COOKIE = "session"  # "__Host-session" over https (Sessions)
USER = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
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

    def current_user(self, request: flask.Request) -> str | None:
        """The signed-in user: a bearer token (the app) or the session cookie (a browser).

        The cookie is read from the raw headers by amo_oauth's exact parser, never
        ``request.cookies``: Werkzeug's keeps the first of a repeated name, and a browser sends
        a cookie with a longer ``Path`` first, so a sibling subdomain could plant its own
        session over the user's. Sent twice or under a near name, it reads as signed out.
        """
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            token = web.read_cookie(request.headers.items(), self.cookie) or ""
        return self._users.get(token)

    def set_cookie(self, answer: Response, token: str) -> None:
        # Lax: sent on amoCRM's redirect back (a top-level GET), not on other sites' POSTs.
        answer.set_cookie(
            self.cookie, token, path="/", secure=self.secure, httponly=True, samesite="Lax"
        )


def create_app(
    oauth: AmoOAuth, *, app_scheme: str = "foryoure", api: httpx.Client | None = None
) -> flask.Flask:
    """The backend.

    Args:
        oauth: the service (the caller closes it: Flask has no shutdown hook).
        app_scheme: the mobile app's URL scheme, for the "Return to App" deep link.
        api: the client for amoCRM's API (tests route it to a fake). Default: a new
            ``httpx.Client``.
    """
    own_site = _origin_of(oauth.config.redirect_uri)  # the site the browser binding is on
    sessions = Sessions(own_site)
    client = api if api is not None else httpx.Client(timeout=10.0)
    app = flask.Flask(__name__)

    @app.post("/login")
    def login() -> Response:
        """The app posts JSON and gets a token; a browser posts the form and is redirected."""
        request = flask.request
        if not _may_sign_in(request.headers.get, own_site, is_json=request.is_json):
            return _json({"error": "cross_site_request"}, 403)
        if request.is_json:
            body = request.get_json(silent=True)
            fields = body if isinstance(body, dict) else {}
        elif request.mimetype == "application/x-www-form-urlencoded":
            fields = request.form.to_dict()
        else:
            return _json({"error": "unsupported_media_type"}, 415)
        user, then = fields.get("user"), fields.get("next", "/")
        if not isinstance(user, str) or not USER.fullmatch(user):
            return _json({"error": "bad_user"}, 422)
        token = sessions.open(user)
        if request.is_json:
            answer: Response = _json({"token": token})
        else:  # only local paths for `next`, or this is an open redirect
            local = isinstance(then, str) and _is_local_path(then)
            answer = flask.redirect(then if local else "/", 303)
        sessions.set_cookie(answer, token)
        return answer

    @app.get("/login")
    def sign_in_form() -> flask.Response:
        # A GET signs nobody in: a link or an image on any site can make a browser send one.
        then = flask.request.args.get("next", "/")
        page = SIGN_IN_PAGE.format(then=html.escape(then, quote=True))
        return flask.Response(page, 200, SIGN_IN_HEADERS, mimetype="text/html")

    @app.get(PREFIX + "/leads")
    def leads() -> flask.Response:
        user = sessions.current_user(flask.request)
        if user is None:
            return _json({"error": "unauthenticated"}, 401)
        return _leads_of(oauth, client, user)

    app.register_blueprint(
        blueprint(
            oauth,
            connection_id=lambda request: sessions.current_user(flask.request),
            app_scheme=app_scheme,
        )
    )
    return app


def _json(payload: dict[str, Any], status: int = 200) -> flask.Response:
    return flask.Response(flask.json.dumps(payload), status, mimetype="application/json")


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


def _is_local_path(path: str) -> bool:
    # A browser takes "//evil.example" and "/\\evil.example" for another host, and drops tabs
    # and newlines first ("/\t/evil.example" is "//evil.example"): a plain path only.
    return path.startswith("/") and path.isprintable() and not path.startswith(("//", "/\\"))


def _leads_of(oauth: AmoOAuth, client: httpx.Client, user: str) -> flask.Response:
    try:
        return _read_leads(oauth, client, user)
    except StoreError:  # as amo_oauth's own routes answer it: the app tries again later
        return _json({"error": "store_unavailable"}, 503)


def _read_leads(oauth: AmoOAuth, client: httpx.Client, user: str) -> flask.Response:
    host = _account_host(oauth, user)
    if host is None:
        # 409, never 403: "connect amoCRM first" is something the app can act on.
        return _json({"error": "not_connected"}, 409)
    try:
        found = fetch_leads(client, host, oauth.auth(user))
    except ReauthorizationRequired:  # amoCRM revoked the tokens: the user must connect again
        return _json({"error": "not_connected"}, 409)
    except TryAgainLater as later:  # amoCRM pushed back (a refresh back-off): come back later
        answer = _json({"error": later.reason}, 503)
        answer.headers.update(_retry_after(later))
        return answer
    except (httpx.HTTPError, ProviderError, ValueError):
        return _json({"error": "amocrm_unavailable"}, 502)
    return _json({"leads": found})


def _retry_after(later: TryAgainLater) -> dict[str, str]:
    """``Retry-After`` for a 503: whole seconds, rounded up (HTTP takes no fractions)."""
    if later.retry_after is None:
        return {}
    return {"Retry-After": str(math.ceil(later.retry_after))}


def _account_host(oauth: AmoOAuth, user: str) -> str | None:
    """The connected account's host (``x.amocrm.ru``, ``x.kommo.com``), or None."""
    connection = oauth.status(user)
    return connection.host if connection.is_connected else None


def fetch_leads(client: httpx.Client, host: str, auth: httpx.Auth) -> list[dict[str, Any]]:
    """Every lead of the account, following amoCRM's ``_links.next`` page by page."""
    url: str | None = f"https://{host}/api/v4/leads?limit={PAGE_SIZE}"
    found: list[dict[str, Any]] = []
    for _ in range(MAX_PAGES):
        if url is None:
            break
        response = client.get(url, auth=auth)
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


def app_from_env() -> flask.Flask:
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
    oauth = AmoOAuth(config, store=SQLiteStore(env.get("AMO_DB", "amo_oauth.db")))
    return create_app(oauth, app_scheme=env.get("AMO_APP_SCHEME", "foryoure"))
