"""Framework-agnostic HTTP handlers: plug amo_oauth into any web framework.

Build a ``Request`` from whatever your framework hands you, call ``handle`` and send the
``Response`` back. ``amo_oauth.fastapi`` and ``amo_oauth.flask`` are such thin adapters.

```python
from amo_oauth.web import AsyncHandlers, Request

handlers = AsyncHandlers(
    oauth,                                   # an AsyncAmoOAuth
    connection_id=lambda request: request.header("x-user-id"),   # your auth, not this
    app_scheme="foryoure",
)
response = await handlers.handle(
    Request(method, path, query=raw_query_bytes, headers=header_pairs, body=body, native=req,
            peer=client_address)   # the TCP peer's address: anonymous callers' budget key
)
```

Routes (under ``prefix``, default ``/api/amo-crm``): ``GET /connect``, ``GET /callback``,
``POST /exchange-code``, ``GET /status``, ``POST /disconnect``, ``GET /disconnect-hook``, and
in the site button's metadata mode ``POST /secrets`` (``METADATA_ROUTES``).
``GET /connect`` sets the ``HttpOnly`` browser-binding cookie and redirects to amoCRM (with
``?ticket=...`` it first redeems a mobile app's single-use ticket; as JSON it answers
``{url, expires_at}`` with such a ticket URL); ``GET /callback`` exchanges a new code only in the
browser holding that cookie (else 403 ``wrong_browser``) and clears it once connected.
Every refusal is a 4xx with ``{"error": reason}`` (the callback's is an HTML page whose deep
link carries ``error=<reason>``): the reasons of ``CallbackRejected``, and ``unauthenticated``
(401; with a ``hint`` when the redirect URI is http and no cookie came), ``bad_connection_id``,
``cross_site_request`` (400), ``not_found`` (404), ``method_not_allowed`` (405, with ``Allow``),
``body_too_large`` (413), ``query_too_large`` (414), ``unsupported_media_type`` (415: a
``/exchange-code`` or ``/secrets`` body neither JSON nor a form). Every refusal of amoCRM's
post to ``/secrets`` is 403 with its reason, whatever the reason. A store outage is 503
``store_unavailable`` (and an amoCRM failure would be 502 ``provider_unavailable``, though no
route lets one through: exchanges report failures as outcomes); no input produces a 500.

The request line of ``GET /callback`` carries the code and state: ``install_access_log_redaction``
adds a ``RedactingFilter`` to the servers' access loggers (the adapters do so by default), and
``redact`` is the same redaction for a line of your own. ``read_cookie`` reads your app's own
session cookie from the raw headers exactly (a name sent twice, or under a near name a sibling
subdomain can plant, reads None: signed out).

Several integrations (amoCRM and Kommo, one per product line) share one set of routes:
``Handlers(Integrations({"amocrm": oauth_a, "kommo": oauth_b}, default="amocrm"), ...)``; each
request is answered by the one it is for (``?integration=NAME`` on ``/connect``, ``/status``
and ``/disconnect``; the client id amoCRM sends on the callback and the hook; the code ledger
or the state on ``/exchange-code``). Unknown: 400 ``unknown_integration`` / ``client_id_mismatch``.
"""

from .._public import present_as
from ._catalogue import DEFAULT_PREFIX, METADATA_ROUTES, ROUTES, Route
from ._handlers import AsyncConnectionIdFn, AsyncHandlers, ConnectionIdFn, Handlers
from ._http import Request, Response, read_body, read_cookie
from ._integrations import INTEGRATION_PARAM, Integrations
from ._page import (
    CONTENT_SECURITY_POLICY,
    DEEP_LINK_PATH,
    PAGE_TEXTS,
    PageKind,
    PageText,
    check_app_scheme,
    deep_link,
)
from ._redact import (
    ACCESS_LOGGERS,
    REDACTED,
    REDACTED_NAMES,
    RedactingFilter,
    install_access_log_redaction,
    redact,
)
from ._routes import status_payload

__all__ = [
    "ACCESS_LOGGERS",
    "CONTENT_SECURITY_POLICY",
    "DEEP_LINK_PATH",
    "DEFAULT_PREFIX",
    "INTEGRATION_PARAM",
    "METADATA_ROUTES",
    "PAGE_TEXTS",
    "REDACTED",
    "REDACTED_NAMES",
    "ROUTES",
    "AsyncConnectionIdFn",
    "AsyncHandlers",
    "ConnectionIdFn",
    "Handlers",
    "Integrations",
    "PageKind",
    "PageText",
    "RedactingFilter",
    "Request",
    "Response",
    "Route",
    "check_app_scheme",
    "deep_link",
    "install_access_log_redaction",
    "read_body",
    "read_cookie",
    "redact",
    "status_payload",
]

# Reprs and tracebacks say amo_oauth.web.Request, not amo_oauth.web._http.Request.
present_as(__name__, globals(), __all__)
