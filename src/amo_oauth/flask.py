"""Flask adapter: amo_oauth's six routes on a ``Blueprint``, over ``amo_oauth.web``.

``connection_id`` receives an ``amo_oauth.web.Request`` and runs inside Flask's request
context, so ``lambda r: flask.session.get("user_id")`` works; ``request.native`` is
``flask.request``. An exception it raises (``flask.abort(401)``) reaches Flask untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flask

from ._service import AmoOAuth
from .web import DEFAULT_PREFIX, ConnectionIdFn, Handlers, PageText, Request

__all__ = ["blueprint"]

_ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def blueprint(
    oauth: AmoOAuth,
    *,
    connection_id: ConnectionIdFn,
    app_scheme: str,
    prefix: str = DEFAULT_PREFIX,
    texts: Mapping[str, PageText] | None = None,
    allowed_origins: Sequence[str] = (),
    name: str = "amo_oauth",
) -> flask.Blueprint:
    """A ``Blueprint`` with one rule per endpoint of ``amo_oauth.web``.

    Args:
        oauth: the service.
        connection_id: ``(web.Request) -> str | None``: whose connection the request is
            about; None answers 401.
        app_scheme: the app's URL scheme for the callback page's deep link.
        prefix: where the routes live.
        texts: page strings by language, added to the built-in en/ru/uk.
        allowed_origins: origins (``https://app.example``) whose pages may POST to the routes
            besides the ``redirect_uri``'s own (e.g. a same-site SPA).
        name: the blueprint's name (endpoints are ``{name}.{route}``).

    Returns:
        The blueprint, for ``app.register_blueprint(...)``. Unknown paths and wrong methods
        under a non-empty ``prefix`` answer the handlers' JSON 404/405.

    Raises:
        ValueError: a bad ``app_scheme`` or ``prefix``.
    """
    handlers = Handlers(
        oauth,
        connection_id=connection_id,
        app_scheme=app_scheme,
        prefix=prefix,
        texts=texts,
        allowed_origins=allowed_origins,
    )
    bp = flask.Blueprint(name, __name__)

    # ``rest`` is the path under the prefix, so a url_prefix given at registration is fine.
    def view(rest: str) -> flask.Response:
        request = flask.request
        answer = handlers.handle(
            Request(
                request.method,
                f"{handlers.prefix}/{rest}",
                query=request.query_string,
                headers=request.headers.items(),
                body=request.stream.read(handlers.max_body + 1),  # +1: enough to refuse
                native=request,
            )
        )
        return flask.Response(answer.body, answer.status, headers=list(answer.headers))

    for route in handlers.routes:
        rule, methods = handlers.prefix + route.path, [route.method]
        defaults = {"rest": route.path.lstrip("/")}
        bp.add_url_rule(
            rule, route.name, view, methods=methods, defaults=defaults,
            provide_automatic_options=False,
        )  # fmt: skip
    if handlers.prefix:  # at the root, a catch-all would shadow the app's own 404s
        bp.add_url_rule(f"{handlers.prefix}/<path:rest>", "other", view, methods=_ANY_METHOD)
    return bp
