"""FastAPI adapter: amo_oauth's routes on an ``APIRouter``, over ``amo_oauth.web``.

``connection_id`` receives an ``amo_oauth.web.Request`` whose ``native`` is the Starlette
request: ``lambda r: r.native.session.get("user_id")`` (with ``SessionMiddleware``) or
``lambda r: r.header("x-user-id")``. It may be async; an ``HTTPException`` it raises reaches
FastAPI untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from ._async_service import AsyncAmoOAuth
from ._extras import needs_extra
from ._results import ButtonMetadata
from .web import (
    DEFAULT_PREFIX,
    AsyncConnectionIdFn,
    AsyncHandlers,
    Integrations,
    PageText,
    Request,
    Response,
    Route,
    read_body,
)
from .web._catalogue import HTTP_METHODS

with needs_extra("fastapi", "amo_oauth.fastapi"):  # FastAPI and its Starlette
    from fastapi import APIRouter
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.requests import Request as StarletteRequest
    from starlette.responses import Response as StarletteResponse

__all__ = ["router"]

Endpoint = Callable[[StarletteRequest], Coroutine[Any, Any, StarletteResponse]]


def router(
    oauth: AsyncAmoOAuth | Integrations[AsyncAmoOAuth],
    *,
    connection_id: AsyncConnectionIdFn,
    app_scheme: str,
    prefix: str = DEFAULT_PREFIX,
    texts: Mapping[str, PageText] | None = None,
    allowed_origins: Sequence[str] = (),
    redact_access_logs: bool = True,
    button: ButtonMetadata | None = None,
) -> APIRouter:
    """An ``APIRouter`` with one documented route per endpoint (``app.include_router(...)``).

    Args: as ``amo_oauth.web.AsyncHandlers`` (``oauth`` one service, or ``Integrations`` of
    several; ``redact_access_logs`` included: by default
    the callback's code and state stay out of uvicorn's, gunicorn's and hypercorn's logs).
    Tagged "amoCRM" in OpenAPI. In the site button's metadata mode (``Config.secrets_uri``)
    ``button`` is required and ``POST /secrets`` is among the routes (with its body).

    Returns:
        The router. A wrong method on any route gets the handlers' JSON 405 with ``Allow``,
        whatever the ``prefix``; unknown paths under a non-empty ``prefix`` get their JSON
        404, not FastAPI's.

    Raises:
        ValueError: a bad ``app_scheme`` or ``prefix``; no ``button`` in metadata mode.
    """
    handlers = AsyncHandlers(
        oauth,
        connection_id=connection_id,
        app_scheme=app_scheme,
        prefix=prefix,
        texts=texts,
        allowed_origins=allowed_origins,
        redact_access_logs=redact_access_logs,
        button=button,
    )
    api = APIRouter(tags=["amoCRM"])
    for route in handlers.routes:
        _add_route(api, handlers, route)
    if handlers.prefix:  # at the root, a catch-all would shadow the app's own routes
        other, rest = _endpoint(handlers, None), f"{handlers.prefix}/{{rest:path}}"
        api.add_api_route(rest, other, methods=list(HTTP_METHODS), include_in_schema=False)
    return api


def _add_route(api: APIRouter, handlers: AsyncHandlers, route: Route) -> None:
    """The route, documented, and beside it every other method, undocumented: Starlette
    tries a path's routes in order, so a wrong method reaches the handlers' 405 whatever the
    prefix (the catch-all exists only under a non-empty one)."""
    api.add_api_route(
        handlers.prefix + route.path,
        _endpoint(handlers, route.path),
        methods=[route.method],
        name=f"amo_oauth_{route.name}",
        summary=route.summary,
        description=route.description,
        responses={status: {"description": text} for status, text in route.responses},
        response_class=HTMLResponse if route.page else JSONResponse,
        openapi_extra=_openapi_extra(route),
    )
    api.add_api_route(
        handlers.prefix + route.path,
        _endpoint(handlers, route.path),
        methods=[method for method in HTTP_METHODS if method != route.method],
        name=f"amo_oauth_{route.name}_other_methods",
        include_in_schema=False,
    )


def _openapi_extra(route: Route) -> dict[str, Any] | None:
    extra: dict[str, Any] = {}
    if route.request_body:
        extra["requestBody"] = route.request_body
    if route.parameters:
        extra["parameters"] = [dict(parameter) for parameter in route.parameters]
    return extra or None


def to_starlette(answer: Response) -> StarletteResponse:
    """A ``web.Response`` as Starlette's, every header kept (several ``Set-Cookie`` too)."""
    response = StarletteResponse(answer.body, answer.status)
    for name, value in answer.headers:
        response.headers.append(name, value)
    return response


def _endpoint(handlers: AsyncHandlers, path: str | None) -> Endpoint:
    # The path as declared here, so include_router's prefix and root_path do not matter.
    async def endpoint(request: StarletteRequest) -> StarletteResponse:
        sub = path if path is not None else "/" + str(request.path_params.get("rest", ""))
        body = await read_body(request.stream(), handlers.max_body)
        # The raw header bytes, as ASGI hands them over: the web layer parses the cookies
        # itself (Starlette's parser strips U+00A0 around a name; issue 20 #1).
        query, headers = request.scope.get("query_string", b""), request.scope.get("headers", [])
        peer = request.client.host if request.client is not None else None
        web_request = Request(
            request.method, handlers.prefix + sub, query, headers, body, request, peer=peer
        )
        answer = await handlers.handle(web_request)
        return to_starlette(answer)

    return endpoint
