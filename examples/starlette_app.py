"""Plug amo_oauth into any framework: a plain Starlette app written against ``amo_oauth.web``.

No ``amo_oauth.fastapi`` here: the whole integration is the ``amo_crm`` view below, which turns
the framework's request into a ``web.Request``, lets ``web.AsyncHandlers`` answer it and turns
the ``web.Response`` back. Any framework with a request object and a response class works the
same way (with ``web.Handlers`` for a blocking one).

Run it (the redirect URI registered in amoCRM must end in ``/api/amo-crm/callback``)::

    AMO_CLIENT_ID=... AMO_CLIENT_SECRET=... \\
    AMO_REDIRECT_URI=https://example.com/api/amo-crm/callback \\
    AMO_STATE_SECRET=$(python -c "import secrets; print(secrets.token_hex(32))") \\
    AMO_API_TOKENS=token-of-user-42:user-42 AMO_DB=amo_oauth.db \\
    uvicorn --factory examples.starlette_app:app_from_env

then ``curl -H "Authorization: Bearer token-of-user-42" localhost:8000/api/amo-crm/status``.

For the site button's metadata mode (an integration per installing account) leave out
``AMO_CLIENT_SECRET`` and set ``AMO_SECRETS_URI=https://example.com/api/amo-crm/secrets``,
``AMO_BUTTON_NAME`` and ``AMO_BUTTON_DESCRIPTION``: ``/connect`` then shows amoCRM's button and
``POST /api/amo-crm/secrets`` receives each integration's credentials (the same one view).
"""

from __future__ import annotations

import contextlib
import hmac
import os
from collections.abc import AsyncIterator, Mapping

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from amo_oauth import AsyncAmoOAuth, ButtonMetadata, Config, SQLiteStore, web

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def bearer_user(tokens: Mapping[str, str]) -> web.ConnectionIdFn:
    """A stand-in for your own authentication: ``Authorization: Bearer <token>`` -> user id.

    Use your session or token check instead; whatever it returns is the connection id
    (None answers 401). ``request.native`` is the Starlette request, e.g. for
    ``request.native.session``.
    """

    def connection_id(request: web.Request) -> str | None:
        scheme, _, token = (request.header("authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        for known, user in tokens.items():
            if hmac.compare_digest(token.encode(), known.encode()):
                return user
        return None

    return connection_id


def create_app(
    oauth: AsyncAmoOAuth,
    tokens: Mapping[str, str],
    *,
    app_scheme: str = "foryoure",
    button: ButtonMetadata | None = None,
) -> Starlette:
    """The backend: amo_oauth's routes under ``/api/amo-crm`` (``POST /secrets`` too in
    metadata mode, where ``button`` is required); it closes ``oauth`` on shutdown."""
    handlers = web.AsyncHandlers(
        oauth, connection_id=bearer_user(tokens), app_scheme=app_scheme, button=button
    )

    async def amo_crm(request: Request) -> Response:
        answer = await handlers.handle(
            web.Request(
                request.method,
                request.url.path,
                query=request.scope["query_string"],  # raw bytes: amo_oauth decodes them
                headers=request.headers.items(),
                body=await web.read_body(request.stream(), handlers.max_body),
                native=request,
                peer=request.client.host if request.client else None,  # the per-source bound
            )
        )
        response = Response(answer.body, answer.status)
        for name, value in answer.headers:  # pairs, not a dict: several Set-Cookie may come
            response.headers.append(name, value)
        return response

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await oauth.aclose()  # the app owns the service: close its client and store

    routes = [Route(web.DEFAULT_PREFIX + "/{rest:path}", amo_crm, methods=METHODS)]
    return Starlette(routes=routes, lifespan=lifespan)


def app_from_env() -> Starlette:
    """The app configured from ``AMO_*`` environment variables (see the module docstring)."""
    env = os.environ
    secrets_uri = env.get("AMO_SECRETS_URI")  # set: the site button's metadata mode
    config = Config(
        client_id=env["AMO_CLIENT_ID"],
        client_secret=env.get("AMO_CLIENT_SECRET"),
        secrets_uri=secrets_uri,
        redirect_uri=env["AMO_REDIRECT_URI"],
        state_secret=env["AMO_STATE_SECRET"],
        # Rotating: the secrets AMO_STATE_SECRET replaced, comma-separated (operations.md).
        previous_state_secrets=[
            old for old in env.get("AMO_PREVIOUS_STATE_SECRETS", "").split(",") if old
        ],
    )
    pairs = (item.partition(":") for item in env.get("AMO_API_TOKENS", "").split(",") if item)
    tokens = {token: user for token, _, user in pairs}
    button = None
    if secrets_uri:  # what amoCRM shows for the integration it makes for each account
        button = ButtonMetadata(env["AMO_BUTTON_NAME"], env["AMO_BUTTON_DESCRIPTION"])
    oauth = AsyncAmoOAuth(config, store=SQLiteStore(env.get("AMO_DB", "amo_oauth.db")))
    scheme = env.get("AMO_APP_SCHEME", "foryoure")
    return create_app(oauth, tokens, app_scheme=scheme, button=button)
