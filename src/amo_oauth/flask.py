"""Flask adapter: amo_oauth's routes on a ``Blueprint``, over ``amo_oauth.web``.

``connection_id`` receives an ``amo_oauth.web.Request`` and runs inside Flask's request
context, so ``lambda r: flask.session.get("user_id")`` works; ``request.native`` is
``flask.request``. An exception it raises (``flask.abort(401)``) reaches Flask untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlencode

from ._extras import needs_extra
from ._results import ButtonMetadata
from ._service import AmoOAuth
from .web import (
    DEFAULT_PREFIX,
    ConnectionIdFn,
    Handlers,
    Integrations,
    PageText,
    Request,
)
from .web._catalogue import HTTP_METHODS

with needs_extra("flask", "amo_oauth.flask"):
    import flask

__all__ = ["blueprint"]


def blueprint(
    oauth: AmoOAuth | Integrations[AmoOAuth],
    *,
    connection_id: ConnectionIdFn,
    app_scheme: str,
    prefix: str = DEFAULT_PREFIX,
    texts: Mapping[str, PageText] | None = None,
    allowed_origins: Sequence[str] = (),
    name: str = "amo_oauth",
    redact_access_logs: bool = True,
    button: ButtonMetadata | None = None,
) -> flask.Blueprint:
    """A ``Blueprint`` with one rule per endpoint of ``amo_oauth.web``.

    Args:
        oauth: the service, or ``Integrations`` of several behind the same routes.
        connection_id: ``(web.Request) -> str | None``: whose connection the request is
            about; None answers 401.
        app_scheme: the app's URL scheme for the callback page's deep link.
        prefix: where the routes live.
        texts: page strings by language, added to the built-in en/ru/uk (``{crm}``
            in them names the serving integration's CRM: ``PageText``).
        allowed_origins: origins (``https://app.example``) whose pages may POST to the routes
            besides the ``redirect_uri``'s own (e.g. a same-site SPA).
        name: the blueprint's name (endpoints are ``{name}.{route}``).
        redact_access_logs: when True (the default),
            ``amo_oauth.web.install_access_log_redaction()`` keeps the callback's code and
            state out of werkzeug's and gunicorn's logs.
        button: what amoCRM's site button shows; required in the site button's metadata mode
            (``Config.secrets_uri``), where ``/connect`` shows the button and ``POST /secrets``
            is a rule too.

    Returns:
        The blueprint, for ``app.register_blueprint(...)``. A wrong method on any route
        answers the handlers' JSON 405 with ``Allow``, whatever the ``prefix``; unknown paths
        under a non-empty ``prefix`` answer their JSON 404.

    Raises:
        ValueError: a bad ``app_scheme`` or ``prefix``; no ``button`` in metadata mode.
    """
    handlers = Handlers(
        oauth,
        connection_id=connection_id,
        app_scheme=app_scheme,
        prefix=prefix,
        texts=texts,
        allowed_origins=allowed_origins,
        redact_access_logs=redact_access_logs,
        button=button,
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
                # The environ's headers as the server wrote them (never Werkzeug's parsed
                # cookies): the web layer parses the Cookie header itself (issue 20 #1).
                headers=request.headers.items(),
                body=_body(request, handlers.max_body + 1),  # +1: enough to refuse
                native=request,
                peer=request.remote_addr,
            )
        )
        return flask.Response(answer.body, answer.status, headers=list(answer.headers))

    for route in handlers.routes:
        rule, defaults = handlers.prefix + route.path, {"rest": route.path.lstrip("/")}
        bp.add_url_rule(
            rule, route.name, view, methods=[route.method], defaults=defaults,
            provide_automatic_options=False,
        )  # fmt: skip
        # Every other method on the same path reaches the handlers' 405 (JSON, Allow) too,
        # whatever the prefix.
        others = _other_methods(route.method)
        bp.add_url_rule(
            rule, f"{route.name}_other_methods", view, methods=others, defaults=defaults
        )
    if handlers.prefix:  # at the root, a catch-all would shadow the app's own 404s
        rest = f"{handlers.prefix}/<path:rest>"
        bp.add_url_rule(rest, "other", view, methods=list(HTTP_METHODS))
    return bp


def _other_methods(method: str) -> list[str]:
    """The methods a rule for ``method`` leaves to its sibling rule; Flask itself sends HEAD
    on a GET rule to that rule's view (whose handlers answer it 405 as well)."""
    implied = {method, "HEAD"} if method == "GET" else {method}
    return [other for other in HTTP_METHODS if other not in implied]


def _body(request: flask.Request, limit: int) -> bytes:
    """Up to ``limit`` bytes of the body, as the client sent it.

    A ``before_request`` hook that read ``request.form`` (Flask-WTF's CSRFProtect does, on
    every POST) has consumed a form body from the stream: Werkzeug keeps only the parsed
    fields. They are encoded back then, every value of every name, so the web layer's
    reading (and its refusal of a repeated name) sees what was sent.
    """
    if "form" in request.__dict__ and request.mimetype == "application/x-www-form-urlencoded":
        return urlencode(list(request.form.items(multi=True))).encode()[:limit]
    return request.stream.read(limit)
