"""The routes' catalogue: every endpoint, its method, path and answers, as adapters publish
it (FastAPI's OpenAPI schema, Flask's URL rules). What a route does is ``_routes.py``'s."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs

__all__ = [
    "BINDING_COOKIE",
    "DEFAULT_PREFIX",
    "HTTP_METHODS",
    "METADATA_ROUTES",
    "ROUTES",
    "Route",
]

#: Where the routes live unless told otherwise: the seed's backend paths.
DEFAULT_PREFIX: Final = "/api/amo-crm"
#: The browser binding's cookie; ``__Host-`` + this (and ``Secure``) when the redirect URI is
#: https. Decided from ``Config.redirect_uri``, never from the request (a TLS-terminating proxy
#: may hand it over as http).
BINDING_COOKIE: Final = "amo_oauth_binding"
#: The methods adapters hand to the handlers on every route path, the route's own and every
#: other, so a wrong one gets the handlers' 405 (JSON, ``Allow``) rather than the framework's
#: (RFC 9110 §9: the methods a client may send; CONNECT never reaches an application).
HTTP_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")

_CODE_FIELDS: Final = {
    "type": "object",
    "required": ["code"],
    "properties": {
        "code": {"type": "string", "description": "The authorization code the app received."},
        "state": {"type": "string", "description": "The state that came with the code."},
        "referer": {"type": "string", "description": "The account host, e.g. x.amocrm.ru."},
    },
}
#: JSON or a form: the seed's apps post both (``web/_reading.py`` reads each).
_CODE_BODY: Final = {
    "required": True,
    "content": {
        "application/json": {"schema": _CODE_FIELDS},
        "application/x-www-form-urlencoded": {"schema": _CODE_FIELDS},
    },
}


@attrs.frozen
class Route:
    """One endpoint, as adapters publish it (and document it in OpenAPI).

    Attributes:
        name: a stable identifier, e.g. ``"exchange_code"``.
        method: the one HTTP method it answers.
        path: the path under the prefix, e.g. ``"/exchange-code"``.
        summary: a one-line description.
        description: what it does and answers.
        responses: (status, meaning) pairs it can answer with.
        request_body: an OpenAPI ``requestBody`` object, when it reads a body.
        page: True when it answers an HTML page (for a browser), not JSON.
        legacy: True for the seed's mobile apps' route, which answers every refusal of the
            service 400 with its reason (never 403: those apps know 400 only).
        server_to_server: True for amoCRM's own POST (``secrets_uri``): no browser sends it,
            so it gets no cross-site check (it carries no ``Origin``, cookie or session; its
            signed ``state`` is what admits it), and every refusal of the service is 403.
    """

    name: str
    method: str
    path: str
    summary: str
    description: str
    responses: tuple[tuple[int, str], ...]
    request_body: Mapping[str, Any] | None = attrs.field(default=None, eq=False)
    page: bool = False
    legacy: bool = False
    server_to_server: bool = False
    #: OpenAPI ``parameters`` objects (query parameters it reads).
    parameters: tuple[Mapping[str, Any], ...] = attrs.field(default=(), eq=False)


def _query(name: str, description: str, **schema: object) -> Mapping[str, Any]:
    """An optional query parameter of type string, as OpenAPI declares one."""
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", **schema},
    }


#: What amoCRM's redirect back carries (protocol notes §2), and the page's language.
_CALLBACK_QUERY: Final = (
    _query("code", "The authorization code (single-use, about 20 minutes); never echoed."),
    _query("state", "The signed state begin() made; absent on a widget install."),
    _query("referer", "The account host, e.g. example.amocrm.ru (no scheme)."),
    _query("client_id", "The integration's id; another integration's is client_id_mismatch."),
    _query("from_widget", "1 on a widget or marketplace install (no state).", enum=["1"]),
    _query("platform", "1 for amocrm.ru, 2 for kommo.com; not read.", enum=["1", "2"]),
    _query("error", "Instead of a code: why consent failed, e.g. access_denied."),
    _query("lang", "The page's language: en, ru or uk (else Accept-Language)."),
)
#: What amoCRM's uninstall hook carries (protocol notes §6); all three are required.
_HOOK_QUERY: Final = tuple(
    {**_query(name, description), "required": True}
    for name, description in (
        ("client_uuid", "The integration's client id."),
        ("account_id", "The account the integration was uninstalled from (digits)."),
        ("signature", "Hex HMAC-SHA256 of '{client_id}|{account_id}' under the client secret."),
    )
)

#: With several integrations behind the routes (``web.Integrations``): which one the app means.
_INTEGRATION: Final = _query(
    "integration",
    "With several integrations behind these routes: the one meant (else the default); "
    "none of them is 400 unknown_integration.",
)

_AUTH = ((401, "No connection id for this request: {error: unauthenticated}"),)
_BAD_ID = (
    "the app's connection id is not valid (bad_connection_id); or no such integration "
    "(unknown_integration)"
)
#: What any route may answer: the dispatch checks sizes and maps outages the same on every one.
_EVERY_ROUTE = (
    (413, "{error: body_too_large}"),
    (414, "{error: query_too_large}"),
    (502, "{error: provider_unavailable}"),
    (
        503,
        "{error: store_unavailable | refresh_in_progress | kept_pair_pending | "
        "verification_deferred}: try again (Retry-After when known)",
    ),
)

#: The six endpoints, in the order adapters register them.
ROUTES: Final = (
    Route(
        "connect",
        "GET",
        "/connect",
        "Start connecting amoCRM",
        "302 to amoCRM's consent page with a fresh signed state bound to this browser (sets "
        "the HttpOnly binding cookie). With ?ticket=... (a mobile app's in-app browser, no "
        "session needed): redeems the single-use ticket, then the same 302. With Accept: "
        "application/json or ?format=json (authenticated): 200 {url, expires_at}, url being "
        "this route with a fresh ticket, to open in the browser that will consent. In the site "
        "button's metadata mode (Config.secrets_uri) a 200 page with amoCRM's site button "
        "replaces the 302 (the same cookie).",
        (
            (302, "Redirect to amoCRM, with Set-Cookie for the browser binding"),
            (
                200,
                "{url, expires_at}: the ticket URL to open in the in-app browser; in metadata "
                "mode, instead of the 302, the page with amoCRM's site button (Set-Cookie too)",
            ),
            (
                400,
                "A refused ticket (bad_ticket | expired_ticket | used_ticket | clock_skew | "
                "cross_site_request): the HTML error page, whose button opens "
                f"{{app_scheme}}://amo-crm/callback?error=<reason>; or {_BAD_ID}",
            ),
            (403, "A ticket of another user than the signed-in one: the page, wrong_browser"),
            *_AUTH,
            *_EVERY_ROUTE,
        ),
        parameters=(
            {
                "name": "ticket",
                "in": "query",
                "required": False,
                "description": "A single-use ticket from the JSON form (about a minute).",
                "schema": {"type": "string"},
            },
            {
                "name": "format",
                "in": "query",
                "required": False,
                "description": "json: answer {url, expires_at} instead of redirecting.",
                "schema": {"type": "string", "enum": ["json"]},
            },
            _INTEGRATION,
        ),
    ),
    Route(
        "callback",
        "GET",
        "/callback",
        "amoCRM's redirect back",
        "Exchanges the code at most once and answers an HTML page whose button opens "
        "{app_scheme}://amo-crm/callback?success=true&state=... (never the code); "
        "...?pending=true&state=... while another worker finishes; ...?error=<reason> on failure. "
        "A new code is exchanged only in the browser that started the consent (its binding "
        "cookie, cleared once connected); a code seen before is answered without it.",
        (
            (200, "The Return to App page"),
            (400, "A refused redirect: the error page"),
            (403, "Another browser's consent (wrong_browser): the error page"),
            (
                429,
                "Beyond the bounds on code exchanges (rate_limited): the error page, saying "
                "when to try again; Retry-After: the seconds until a try is admitted",
            ),
            *_EVERY_ROUTE,
        ),
        page=True,
        parameters=_CALLBACK_QUERY,
    ),
    Route(
        "exchange_code",
        "POST",
        "/exchange-code",
        "Exchange a code (legacy apps)",
        "Idempotent: a code already exchanged answers 200 with the status and duplicate=true, "
        "never 403; a new code is refused (new_code_refused), and so is every other refusal: "
        "400 with its reason, never 403. Body: JSON (application/json) or a form "
        "(application/x-www-form-urlencoded): {code, state?, referer?}.",
        (
            (200, "Connected, already connected or in progress: the status"),
            (400, f"{{error: reason}}: refused, malformed, failed or cross-site; or {_BAD_ID}"),
            *_AUTH,
            (415, "{error: unsupported_media_type}: a body neither JSON nor a form"),
            *_EVERY_ROUTE,
        ),
        _CODE_BODY,
        legacy=True,
    ),
    Route(
        "status",
        "GET",
        "/status",
        "The connection's status",
        "{connected, status, account, expires_at, error, version}; never a token.",
        (
            (200, "The status"),
            (400, f"{{error: bad_connection_id}}: {_BAD_ID}"),
            *_AUTH,
            *_EVERY_ROUTE,
        ),
        parameters=(_INTEGRATION,),
    ),
    Route(
        "disconnect",
        "POST",
        "/disconnect",
        "Disconnect amoCRM",
        "Forgets the connection's tokens and answers the status.",
        (
            (200, "The status, disconnected"),
            (
                400,
                f"{{error: cross_site_request}}: a cross-site form or bodiless POST; or {_BAD_ID}",
            ),
            *_AUTH,
            *_EVERY_ROUTE,
        ),
        parameters=(_INTEGRATION,),
    ),
    Route(
        "disconnect_hook",
        "GET",
        "/disconnect-hook",
        "amoCRM's uninstall hook",
        "Checks the hook's signature and disconnects every connection of the account "
        "whose tokens amoCRM refuses. amoCRM is asked at most once per account in each "
        "Config.hook_check_interval (60 s), across processes; a replay in between is "
        "answered without asking (reason hook_paced).",
        (
            (
                200,
                "{disconnected: n (connections this call disconnected), checked: bool (amoCRM "
                "was asked), reason: null | hook_paced | hook_replayed | nothing_to_forget | "
                "provider_unavailable (why nothing was disconnected)}",
            ),
            (
                400,
                "{error: bad_signature | malformed}; with several integrations, "
                "client_id_mismatch: none of them has this client_uuid",
            ),
            *_EVERY_ROUTE,
        ),
        parameters=_HOOK_QUERY,
    ),
)

_SECRETS_FIELDS: Final = {
    "type": "object",
    "required": ["client_id", "client_secret", "state"],
    "properties": {
        "client_id": {"type": "string", "description": "The new integration's client id."},
        "client_secret": {
            "type": "string",
            "description": "The new integration's secret; stored, never echoed or logged.",
        },
        "state": {"type": "string", "description": "The state the site button carried."},
    },
}
#: amoCRM does not document the post's encoding (protocol notes §7): a form or JSON is read.
_SECRETS_BODY: Final = {
    "required": True,
    "content": {
        "application/x-www-form-urlencoded": {"schema": _SECRETS_FIELDS},
        "application/json": {"schema": _SECRETS_FIELDS},
    },
}

#: The routes of the site button's metadata mode (``Config.secrets_uri`` set), served after
#: ``ROUTES`` only in that mode: elsewhere their paths are unknown (404 ``not_found``).
METADATA_ROUTES: Final = (
    Route(
        "secrets",
        "POST",
        "/secrets",
        "amoCRM's post of a new integration's credentials",
        "Metadata mode only (Config.secrets_uri, which must name this route). amoCRM posts the "
        "client_id and client_secret of the integration it made for the installing account, "
        "with the site button's state; they are stored with the state's connection for its "
        "code redirect. Idempotent: 200 {ok: true} whether stored or already there (never "
        "204: amoCRM wants exactly 200). Server to server: no cookie, session or Origin check; "
        "only a valid, unexpired state is accepted. Other fields are ignored.",
        (
            (200, "{ok: true}: stored, or nothing to change"),
            (
                403,
                "{error: bad_state | expired_state | clock_skew | malformed}: refused, "
                "nothing changed",
            ),
            (415, "{error: unsupported_media_type}: a body neither a form nor JSON"),
            *_EVERY_ROUTE,
        ),
        _SECRETS_BODY,
        server_to_server=True,
    ),
)
