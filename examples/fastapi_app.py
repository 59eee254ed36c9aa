"""A complete FastAPI backend on amo_oauth: sign-in, amoCRM's routes and the account's leads.

What the mobile app (or a browser) talks to::

    POST /login {"user": "ann"}          -> {"token": "..."}: send it as "Authorization: Bearer"
    GET  /login?user=ann&next=/api/amo-crm/connect
                                         the same for a browser: a session cookie, then a 302
    GET  /api/amo-crm/connect, /callback, /status, POST /exchange-code, /disconnect ...
                                         amo_oauth's routes (``amo_oauth.fastapi.router``)
    GET  /api/amo-crm/leads              -> {"leads": [...]}; 409 {"error": "not_connected"}

The sign-in is a toy (no password, sessions in memory): replace it with yours. What matters is
the ``connection_id`` callable: it maps a request to your user id, and amo_oauth keeps one amoCRM
connection per user id.

Run it (the redirect URI registered in amoCRM must end in ``/api/amo-crm/callback``)::

    AMO_CLIENT_ID=... AMO_CLIENT_SECRET=... \\
    AMO_REDIRECT_URI=https://example.com/api/amo-crm/callback \\
    AMO_STATE_SECRET=$(python -c "import secrets; print(secrets.token_hex(32))") \\
    uvicorn examples.fastapi_app:app_from_env --factory --no-access-log

(No access log: the callback's request line carries the code until it is exchanged.)

``amo-oauth demo --serve`` runs this app against a fake amoCRM, to click through in a browser.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, Field

from amo_oauth import (
    AsyncAmoOAuth,
    Config,
    ProviderError,
    ReauthorizationRequired,
    SQLiteStore,
    web,
)
from amo_oauth.fastapi import router

PREFIX = web.DEFAULT_PREFIX  # "/api/amo-crm", the seed's paths
COOKIE = "session"
USER_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"
PAGE_SIZE = 250  # amoCRM's largest page: the fewest calls under its 7 requests per second
MAX_PAGES = 100  # a bound on following links we did not write


class Login(BaseModel):
    user: str = Field(pattern=USER_PATTERN)


class Sessions:
    """Toy sign-in: random session tokens mapped to user ids, in memory. Use your own."""

    def __init__(self) -> None:
        self._users: dict[str, str] = {}

    def open(self, user: str) -> str:
        token = secrets.token_urlsafe(32)
        self._users[token] = user
        return token

    def current_user(self, request: Request) -> str | None:
        """The signed-in user: a bearer token (the app) or the session cookie (a browser)."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            token = request.cookies.get(COOKIE, "")
        return self._users.get(token)


def create_app(
    oauth: AsyncAmoOAuth, *, app_scheme: str = "foryoure", api: httpx.AsyncClient | None = None
) -> FastAPI:
    """The backend.

    Args:
        oauth: the service; the app closes it on shutdown.
        app_scheme: the mobile app's URL scheme, for the "Return to App" deep link.
        api: the client for amoCRM's API (tests route it to a fake); the app closes it on
            shutdown. Default: a new ``httpx.AsyncClient``.
    """
    sessions = Sessions()
    client = api if api is not None else httpx.AsyncClient(timeout=10.0)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await oauth.aclose()
        await client.aclose()

    app = FastAPI(title="amo_oauth example", lifespan=lifespan)

    @app.post("/login")
    async def login(body: Login) -> JSONResponse:
        token = sessions.open(body.user)
        answer = JSONResponse({"token": token})
        _set_session_cookie(answer, token)
        return answer

    @app.get("/login")
    async def login_in_browser(
        user: str = Query(pattern=USER_PATTERN), then: str = Query("/", alias="next")
    ) -> RedirectResponse:
        # Toy: no password. Only local paths for `next`, or this is an open redirect.
        answer = RedirectResponse(then if _is_local_path(then) else "/", status_code=303)
        _set_session_cookie(answer, sessions.open(user))
        return answer

    # Registered before the router: its catch-all under PREFIX answers 404 for unknown paths.
    @app.get(PREFIX + "/leads")
    async def leads(request: Request) -> JSONResponse:
        user = sessions.current_user(request)
        if user is None:
            return JSONResponse({"error": "unauthenticated"}, 401)
        return await _leads_of(oauth, client, user)

    app.include_router(
        router(
            oauth,
            connection_id=lambda request: sessions.current_user(request.native),
            app_scheme=app_scheme,
        )
    )
    return app


def _set_session_cookie(answer: JSONResponse | RedirectResponse, token: str) -> None:
    # Lax: sent on amoCRM's redirect back (a top-level GET), not on other sites' POSTs.
    answer.set_cookie(COOKIE, token, httponly=True, samesite="lax")


def _is_local_path(path: str) -> bool:
    # A browser takes "//evil.example" and "/\\evil.example" for another host, and drops tabs
    # and newlines first ("/\t/evil.example" is "//evil.example"): a plain path only.
    return path.startswith("/") and path.isprintable() and not path.startswith(("//", "/\\"))


async def _leads_of(oauth: AsyncAmoOAuth, client: httpx.AsyncClient, user: str) -> JSONResponse:
    host = await _account_host(oauth, user)
    if host is None:
        # 409, never 403: "connect amoCRM first" is something the app can act on.
        return JSONResponse({"error": "not_connected"}, 409)
    try:
        found = await fetch_leads(client, host, oauth.auth(user))
    except ReauthorizationRequired:  # amoCRM revoked the tokens: the user must connect again
        return JSONResponse({"error": "not_connected"}, 409)
    except (httpx.HTTPError, ProviderError, ValueError):
        return JSONResponse({"error": "amocrm_unavailable"}, 502)
    return JSONResponse({"leads": found})


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
