"""The routes, written once as generators that yield what they need from the outside.

A route yields ``Identify`` (ask the app's ``connection_id`` callable) or a ``ServiceCall``
(``_calls.py``: one typed value per call of ``AmoOAuth``/``AsyncAmoOAuth``) and receives the
answer, or has the exception thrown in. ``Handlers`` drives them by calling,
``AsyncHandlers`` by awaiting, as the service's own flows are driven; so no route is written
twice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Generator, Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar, Final, Generic, TypeVar, cast
from urllib.parse import urlencode, urlsplit

import attrs

from .._async_service import AsyncAmoOAuth
from .._binding import parse_binding, ticket_expires_at
from .._config import Config
from .._errors import CallbackRejected, ProviderError, StoreError, TryAgainLater
from .._reasons import Reason
from .._records import Connection
from .._results import ButtonMetadata, CallbackResult, Outcome
from .._service import AmoOAuth
from .._setting_errors import setting_error
from ._calls import (
    Begin,
    Disconnect,
    ExchangeCode,
    HandleCallback,
    HandleDisconnectHook,
    IssueTicket,
    MakeSiteButton,
    ReceiveSecrets,
    RedeemTicket,
    ServiceCall,
    ServiceConfig,
    Status,
)
from ._catalogue import BINDING_COOKIE, DEFAULT_PREFIX, METADATA_ROUTES, ROUTES, Route
from ._http import Request, Response
from ._integrations import INTEGRATION_PARAM, Ask, Integrations, UseIntegration
from ._page import (
    PAGE_TEXTS,
    PageKind,
    PageText,
    check_app_scheme,
    choose_language,
    crm_name,
    deep_link,
    render_button_page,
    render_page,
)
from ._reading import (
    DEFAULT_PORTS,
    Refusal,
    address_network,
    as_connection_id,
    check_origin,
    check_size,
    client_address,
    code_fields,
    origin_of,
    secrets_fields,
    wants_json,
)
from ._redact import install_access_log_redaction

__all__ = [
    "BINDING_COOKIE",
    "NO_COOKIE_OVER_HTTP",
    "Identify",
    "RouteCore",
    "WebFlow",
    "status_payload",
]

logger = logging.getLogger("amo_oauth.web")

T = TypeVar("T")

DEFAULT_MAX_BODY: Final = 16 * 1024
DEFAULT_MAX_QUERY: Final = 8 * 1024
#: The 401's ``hint`` when no cookie came and the redirect URI is http (``_no_session_hint``).
NO_COOKIE_OVER_HTTP: Final = (
    "No cookie came with this request. If your sign-in keeps a session cookie: the redirect "
    "URI is http, and over http many clients (httpx, requests, test clients, some browsers) "
    "do not send a cookie marked Secure, e.g. SessionMiddleware(https_only=True) or "
    "SESSION_COOKIE_SECURE=True. Mark it Secure only when the redirect URI is https."
)
#: Refusals that are about who is asking, not what was asked.
_FORBIDDEN: Final = frozenset({Reason.WRONG_BROWSER})
#: Refusals whose page says more than "try again" (every other one shows the error page).
_REFUSAL_PAGES: Final[Mapping[str, PageKind]] = {
    Reason.WRONG_BROWSER: PageKind.WRONG_BROWSER,
    Reason.CLIENT_ID_MISMATCH: PageKind.CLIENT_ID_MISMATCH,
    Reason.RATE_LIMITED: PageKind.RATE_LIMITED,
    Reason.CREDENTIALS_MISSING: PageKind.INSTALLING,
}

# Every response: never cached (they describe a user's connection or carry a state/code), never
# sniffed, and never the source of a Referer (the callback URL carries the code).
_BASE_HEADERS: Final = (
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
)


@attrs.frozen
class Identify:
    """Ask the app which connection the request belongs to; the answer is ``str | None``."""


WebFlow = Generator[Identify | ServiceCall[Any] | Ask[Any] | UseIntegration, Any, T]


def status_payload(connection: Connection) -> dict[str, Any]:
    """The JSON the routes answer for a connection; it holds no token.

    Args:
        connection: e.g. ``oauth.status(user_id)``.

    Returns:
        ``{"connected", "status", "account", "expires_at", "error", "version", "host"}``.
    """
    account = connection.account
    return {
        "connected": connection.is_connected,
        "status": connection.status.value,
        "account": None
        if account is None
        else {"id": account.id, "subdomain": account.subdomain, "name": account.name},
        "expires_at": connection.expires_at.isoformat() if connection.expires_at else None,
        "error": connection.error.reason if connection.error else None,
        "version": connection.version,
        "host": connection.host,
    }


def _reason(connection: Connection, fallback: str | None = None) -> str:
    if connection.error is not None:
        return connection.error.reason
    # No error recorded: a denial that left a working connection alone (the fallback names the
    # denial), or a code seen before whose connection was disconnected since.
    return fallback or connection.status.value


def _page_link(
    result: CallbackResult, request: Request
) -> tuple[PageKind, list[tuple[str, str]], str | None]:
    """What the page says and its deep link's parameters, by outcome."""
    if result.outcome in (Outcome.CONNECTED, Outcome.ALREADY_CONNECTED):
        return PageKind.CONNECTED, [("success", "true")], None
    if result.outcome is Outcome.IN_PROGRESS:
        return PageKind.PENDING, [("pending", "true")], None
    # A denial's ``error`` was checked to be a slug before the service accepted it.
    denial = request.param("error") if result.outcome is Outcome.DENIED else None
    reason = _reason(result.connection, denial)
    kind = PageKind.MISCONFIGURED if reason == Reason.CLIENT_MISCONFIGURED else PageKind.ERROR
    return kind, [("error", reason)], reason


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or (prefix and not prefix.startswith("/")):
        raise ValueError(setting_error("prefix"))
    if "?" in prefix:
        raise ValueError(setting_error("prefix_query"))
    return prefix.rstrip("/")


ServiceT = TypeVar("ServiceT")
IdentifyT = TypeVar("IdentifyT")


class RouteCore(Generic[ServiceT, IdentifyT]):
    """The routes and their settings; ``Handlers`` and ``AsyncHandlers`` drive them."""

    #: True where the routes call a blocking ``AmoOAuth``, False where they await an
    #: ``AsyncAmoOAuth``: set by ``Handlers`` and ``AsyncHandlers``.
    blocking: ClassVar[bool]

    def __init__(
        self,
        oauth: ServiceT | Integrations[ServiceT],
        *,
        connection_id: IdentifyT,
        app_scheme: str,
        prefix: str = DEFAULT_PREFIX,
        texts: Mapping[str, PageText] | None = None,
        default_language: str = "en",
        max_body: int = DEFAULT_MAX_BODY,
        max_query: int = DEFAULT_MAX_QUERY,
        allowed_origins: Sequence[str] = (),
        redact_access_logs: bool = True,
        button: ButtonMetadata | None = None,
    ) -> None:
        self.integrations: Integrations[ServiceT] = Integrations.of(oauth)
        for service in self.integrations.values():
            self._check_kind(service)
        #: The service (with several integrations: the default's, else the first's).
        self.oauth: ServiceT = self.integrations.primary
        self.connection_id = connection_id
        self.app_scheme = check_app_scheme(app_scheme)
        self.prefix = _check_prefix(prefix)
        self.texts: Mapping[str, PageText] = {**PAGE_TEXTS, **(texts or {})}
        if default_language not in self.texts:
            languages = ", ".join(sorted(self.texts))
            raise ValueError(
                setting_error(
                    "default_language", language=repr(default_language), languages=languages
                )
            )
        if max_body < 1 or max_query < 1:
            raise ValueError(setting_error("limits"))
        self.default_language = default_language
        self.max_body = max_body
        self.max_query = max_query
        # Integrations share these (redirect URI, proxies): the primary's stand for all.
        config = getattr(self.oauth, "config", None)
        redirect_uri = getattr(config, "redirect_uri", "")
        # The cookie's attributes come from the configured redirect URI, never the request.
        self.secure_cookie = urlsplit(redirect_uri).scheme == "https"
        self.cookie_name = ("__Host-" if self.secure_cookie else "") + BINDING_COOKIE
        state_ttl = max(
            getattr(getattr(service, "config", None), "state_ttl", timedelta(minutes=30))
            for service in self.integrations.values()
        )
        self.cookie_max_age = max(1, int(state_ttl.total_seconds()))
        self.connect_url = _connect_url(redirect_uri, self.prefix)
        # Forwarded headers count only where the app said how many proxies write them.
        self.trusted_proxies: int = getattr(config, "trusted_proxies", 0)
        self.forwarded_header: str = getattr(config, "forwarded_header", "x-forwarded-for")
        if redact_access_logs:  # the callback's request line carries the code and state
            install_access_log_redaction()
        self.allowed_origins = frozenset(
            origin_of(url) for url in (redirect_uri, *_origins(allowed_origins)) if url
        )
        # Metadata mode (Config.secrets_uri; of any integration): amoCRM's post to secrets_uri
        # has a route, and /connect shows such an integration's site button, which needs the
        # integration's name and description.
        metadata_mode = self.integrations.metadata_mode
        if metadata_mode and not isinstance(button, ButtonMetadata):
            raise ValueError(setting_error("button_missing", type=type(button).__name__))
        #: What the site button shows (metadata mode); None: /connect redirects.
        self.button = button if metadata_mode else None
        self.routes = ROUTES + METADATA_ROUTES if metadata_mode else ROUTES
        self._by_path = {self.prefix + route.path: route for route in self.routes}
        self._flows: dict[str, Callable[[Request], WebFlow[Response]]] = {
            "connect": self._connect,
            "callback": self._callback,
            "exchange_code": self._exchange_code,
            "status": self._status,
            "disconnect": self._disconnect,
            "disconnect_hook": self._disconnect_hook,
            "secrets": self._secrets,
        }

    def _check_kind(self, service: object) -> None:
        """The other kind of service would fail only at a user's first request: refuse it now."""
        if self.blocking and isinstance(service, AsyncAmoOAuth):
            raise TypeError(setting_error("sync_service", type=type(service).__name__))
        if not self.blocking and isinstance(service, AmoOAuth):
            raise TypeError(setting_error("async_service", type=type(service).__name__))

    # -- dispatch ------------------------------------------------------------------------

    def serve(self, request: Request) -> WebFlow[Response]:
        """The flow answering ``request``: route, check limits, run, map refusals."""
        path = request.path.rstrip("/") if request.path != "/" else request.path
        route = self._by_path.get(path)
        if route is None:
            return _finish(Response.json(404, {"error": "not_found"}))
        if request.method != route.method:
            refused = Response.json(405, {"error": "method_not_allowed"}, {"allow": route.method})
            return _finish(refused)
        # A page names the serving integration's CRM; before one is chosen, the primary's.
        crm = self._crm_of(self.oauth)
        try:
            check_size(request, self.max_query, self.max_body)
            if route.method == "POST" and not route.server_to_server:
                check_origin(request, self.allowed_origins)
            # The integration first (one service: itself), then the route on its service.
            chosen = yield from self.integrations.choose(route.name, request)
            crm = self._crm_of(self.integrations[chosen])
            yield UseIntegration(chosen)
            response = yield from self._flows[route.name](request)
        except Refusal as refusal:
            response = self._refuse(
                route, request, refusal.status, refusal.reason, refusal.hint, crm=crm
            )
        except CallbackRejected as rejected:
            status = _rejection_status(route, rejected.reason)
            wait = _retry_after(status, rejected)
            response = self._refuse(
                route, request, status, rejected.reason, retry_after=wait, crm=crm
            )
            if wait is not None:
                response = response.with_headers((("retry-after", _seconds(wait)),))
        except StoreError as error:
            # The client is told only "store_unavailable"; the operator needs the cause (a
            # StoreError's text names the store and the fault, never a secret).
            logger.warning("%s %s: 503 store_unavailable: %s", request.method, route.path, error)
            response = self._refuse(route, request, 503, "store_unavailable", crm=crm)
        except TryAgainLater as later:  # nothing wrong for good: say when to come back
            response = self._refuse(route, request, 503, later.reason, crm=crm)
            if later.retry_after is not None:
                response = response.with_headers((("retry-after", _seconds(later.retry_after)),))
        except ProviderError:  # the routes' calls report provider failures; belt and braces
            response = self._refuse(route, request, 502, "provider_unavailable", crm=crm)
        return _finish(response)

    @staticmethod
    def _crm_of(service: object) -> str:
        """What ``{crm}`` in the pages' texts becomes for ``service``: "Kommo" or "amoCRM"."""
        return crm_name(getattr(getattr(service, "config", None), "authorize_url", ""))

    def _refuse(
        self,
        route: Route,
        request: Request,
        status: int,
        reason: str,
        hint: str | None = None,
        *,
        retry_after: float | None = None,
        crm: str,
    ) -> Response:
        # A browser is looking (the callback; a ticket link in an app's in-app browser, which
        # has no other way back to the app): the page, with no state echoed.
        if route.page or (route.name == "connect" and request.param("ticket") is not None):
            link = deep_link(self.app_scheme, [("error", reason)])
            kind = _REFUSAL_PAGES.get(reason, PageKind.ERROR)
            if kind is PageKind.RATE_LIMITED and retry_after is None:
                kind = PageKind.ERROR  # no time to name: the generic "try again"
            return self._page(request, status, kind, link, reason, retry_after, crm=crm)
        payload = {"error": reason} if hint is None else {"error": reason, "hint": hint}
        return Response.json(status, payload)

    def _page(
        self,
        request: Request,
        status: int,
        kind: PageKind,
        link: str,
        reason: str | None,
        retry_after: float | None = None,
        *,
        crm: str,
    ) -> Response:
        lang = choose_language(request, self.texts, self.default_language)
        text = self.texts[lang]
        return render_page(status, text, lang, kind, link, reason, retry_after=retry_after, crm=crm)

    # -- steps shared by the routes ----------------------------------------------------------

    def _identity(self, request: Request) -> WebFlow[str]:
        connection_id: object = yield Identify()
        if connection_id is None:
            raise Refusal(401, "unauthenticated", self._no_session_hint(request))
        try:
            return as_connection_id(connection_id)
        except ValueError:  # empty, too long, unprintable, not text
            raise Refusal(400, "bad_connection_id") from None

    def _no_session_hint(self, request: Request) -> str | None:
        """Why the app may have found no session: said only when no cookie came at all and
        the configured redirect URI is http (development on loopback), where a session
        cookie copied with ``Secure`` from a production setup is not sent back."""
        if self.secure_cookie or request.header("cookie") is not None:
            return None
        return NO_COOKIE_OVER_HTTP

    def _call(self, call: ServiceCall[T]) -> WebFlow[T]:
        """Ask the service, typed: ``result = yield from self._call(Status(connection_id))``."""
        return cast(T, (yield call))

    # -- the routes ----------------------------------------------------------------------------

    def _set_cookie(self, value: str, max_age: int) -> tuple[str, str]:
        parts = [f"{self.cookie_name}={value}", "Path=/", f"Max-Age={max_age}", "HttpOnly"]
        parts.append("SameSite=Lax")  # amoCRM's redirect back is a cross-site top-level GET
        if self.secure_cookie:
            parts.append("Secure")
        return ("set-cookie", "; ".join(parts))

    def _signed_in(self) -> WebFlow[str | None]:
        """Who is signed in on this browser, if anyone: the callback needs no session (the
        in-app browser of a mobile app has none), so a refusal of the app's callable counts
        as nobody."""
        try:
            connection_id: object = yield Identify()
            return as_connection_id(connection_id)
        except Exception:  # the app's abort(401), None, a bad id: not signed in
            return None

    def _connect(self, request: Request) -> WebFlow[Response]:
        ticket = request.param("ticket")
        if ticket is not None:
            # A mobile app's in-app browser: no session, a single-use ticket instead.
            connection_id: str = yield from self._redeem(request, ticket)
        else:
            connection_id = yield from self._identity(request)
            if wants_json(request):
                return (yield from self._ticket_url(connection_id, request))
        cookie = request.cookie(self.cookie_name)
        if self.button is not None:
            # Of several integrations only those in metadata mode show the button.
            config = yield from self._call(ServiceConfig())
            if config.metadata_mode:
                page = self._site_button(request, connection_id, cookie, self.button, config)
                return (yield from page)
        begun = yield from self._call(Begin(connection_id, binding=cookie))
        headers = [self._set_cookie(begun.binding, self.cookie_max_age)] if begun.binding else []
        return Response.redirect(begun.url, headers)

    def _site_button(
        self,
        request: Request,
        connection_id: str,
        cookie: str | None,
        button: ButtonMetadata,
        config: Config,
    ) -> WebFlow[Response]:
        """Metadata mode's ``/connect``: a page with amoCRM's site button (its state from
        ``begin()``; its script from ``config.button_script_url``, the page naming
        ``config``'s CRM), the binding cookie set exactly as for the redirect."""
        made = yield from self._call(MakeSiteButton(connection_id, binding=cookie, metadata=button))
        headers = [self._set_cookie(made.binding, self.cookie_max_age)] if made.binding else []
        lang = choose_language(request, self.texts, self.default_language)
        script = origin_of(config.button_script_url)
        crm = crm_name(config.authorize_url)
        page = render_button_page(self.texts[lang], lang, made.html, script, headers, crm=crm)
        return page

    def _redeem(self, request: Request, ticket: str) -> WebFlow[str]:
        """The connection a ticket names, redeemed only by a browser that opened it itself.

        A ticket URL is a bearer link: forwarded, or minted on demand behind a redirect on the
        sender's site, it would bind the recipient's browser to the sender's consent, and the
        recipient's "Allow" would connect the recipient's account to the sender. So a
        navigation from another site (``Sec-Fetch-Site`` other than ``none`` or
        ``same-origin``: an in-app browser opening the URL says ``none``, a link or a redirect
        on another site's page says ``cross-site`` or ``same-site``) is refused before the
        ticket is used; a browser where another user is signed in is refused by
        ``redeem_ticket`` (its callback would be refused anyway).
        """
        fetch_site = request.header("sec-fetch-site")
        if fetch_site is not None and fetch_site not in ("none", "same-origin"):
            raise Refusal(400, Reason.CROSS_SITE_REQUEST)
        signed_in = yield from self._signed_in()
        return (yield from self._call(RedeemTicket(ticket, connection_id=signed_in)))

    def _ticket_url(self, connection_id: str, request: Request) -> WebFlow[Response]:
        """``{url, expires_at}``: this route with a fresh ticket, for the browser that will
        consent (the app's in-app browser keeps the binding cookie /connect sets there), and
        the integration the app named, which signed the ticket."""
        ticket = yield from self._call(IssueTicket(connection_id))
        query = {"ticket": ticket}
        integration = request.param(INTEGRATION_PARAM)
        if integration is not None and len(self.integrations) > 1:
            query[INTEGRATION_PARAM] = integration
        url = f"{self.connect_url}?{urlencode(query)}"
        return Response.json(200, {"url": url, "expires_at": ticket_expires_at(ticket).isoformat()})

    def _callback(self, request: Request) -> WebFlow[Response]:
        signed_in = yield from self._signed_in()
        cookie = request.cookie(self.cookie_name)
        source = self._source(request)
        result = yield from self._call(
            HandleCallback(request.query, connection_id=signed_in, binding=cookie, source=source)
        )
        kind, params, reason = _page_link(result, request)
        # The state is echoed so the app can match the answer to its request; the code never is.
        state = request.param("state")
        if state:
            params.append(("state", state))
        config = yield from self._call(ServiceConfig())
        link = deep_link(self.app_scheme, params)
        page = self._page(request, 200, kind, link, reason, crm=crm_name(config.authorize_url))
        bound = parse_binding(cookie)
        connected = result.outcome in (Outcome.CONNECTED, Outcome.ALREADY_CONNECTED)
        if (
            connected
            and bound is not None
            and result.connection.widget is None  # an install is no app user's, whatever its id
            and bound.connection_id == result.connection.connection_id
        ):
            # Done with: the binding is cleared once the connection is made.
            page = attrs.evolve(page, headers=(*page.headers, self._set_cookie("", 0)))
        return page

    def _source(self, request: Request) -> str | None:
        """Whom a callback's code exchange counts against (``max_exchanges_per_source``) when
        nobody the state names is asking: the client's network (an IPv6 /64, an IPv4
        address). The flow puts the consent's own user in its place when the browser's
        binding or the signed-in user matches the state."""
        address = client_address(request, self.trusted_proxies, self.forwarded_header)
        return None if address is None else f"addr:{address_network(address)}"

    def _exchange_code(self, request: Request) -> WebFlow[Response]:
        connection_id = yield from self._identity(request)
        code, state, referer = code_fields(request)
        # Known codes only: no browser is bound to this route, so a new code is refused.
        result = yield from self._call(
            ExchangeCode(connection_id, code, referer=referer, state=state, exchange_new=False)
        )
        payload = {
            **status_payload(result.connection),
            "outcome": result.outcome.value,
            "duplicate": result.duplicate,
        }
        if result.outcome in (Outcome.FAILED, Outcome.DENIED):
            return Response.json(400, {**payload, "error": _reason(result.connection)})
        return Response.json(200, payload)

    def _status(self, request: Request) -> WebFlow[Response]:
        connection_id = yield from self._identity(request)
        connection = yield from self._call(Status(connection_id))
        return Response.json(200, status_payload(connection))

    def _disconnect(self, request: Request) -> WebFlow[Response]:
        connection_id = yield from self._identity(request)
        connection = yield from self._call(Disconnect(connection_id))
        return Response.json(200, status_payload(connection))

    def _secrets(self, request: Request) -> WebFlow[Response]:
        """amoCRM's post to ``secrets_uri``: only its three fields reach the service. Answered
        200 whether stored or unchanged (a retried post); a body that does not parse is
        refused 403 like every refusal of the service, and changes nothing."""
        try:
            form = secrets_fields(request)
        except Refusal as refusal:
            if refusal.status != 400:
                raise
            raise Refusal(403, refusal.reason) from None
        yield from self._call(ReceiveSecrets(form))
        return Response.json(200, {"ok": True})

    def _disconnect_hook(self, request: Request) -> WebFlow[Response]:
        done = yield from self._call(HandleDisconnectHook(request.query))
        answer = {"disconnected": len(done.disconnected), "checked": done.checked}
        return Response.json(200, {**answer, "reason": done.reason})


def _connect_url(redirect_uri: str, prefix: str) -> str:
    """The public URL of ``/connect``, for the ticket links the JSON form hands out.

    amoCRM redirects to ``redirect_uri``, which is this ``/callback`` as the world reaches it:
    its path already holds whatever the app mounts the routes under (``include_router``'s or a
    blueprint's ``url_prefix``, a proxy's path), so ``/connect`` is its sibling. A redirect URI
    that does not end in ``/callback`` falls back to its origin and ``prefix``.
    """
    if not redirect_uri:
        return prefix + "/connect"
    parts = urlsplit(redirect_uri)
    if parts.path.endswith("/callback"):
        path = parts.path.removesuffix("/callback") + "/connect"
    else:
        path = prefix + "/connect"
    return f"{parts.scheme}://{parts.netloc}{path}"


def _rejection_status(route: Route, reason: str) -> int:
    """The status of a call the service refused: on the legacy route 400, whatever the reason
    (the seed's mobile apps read a 400 and its reason; issue 20 #8); on amoCRM's post to
    ``secrets_uri`` 403, whatever the reason; elsewhere 429 for a bound
    on token calls, 403 for a refusal about who is asking, else 400."""
    if route.legacy:
        return 400
    if route.server_to_server:  # amoCRM's post to secrets_uri: nothing it sends may pass
        return 403
    if reason == Reason.RATE_LIMITED:
        return 429
    if reason == Reason.CREDENTIALS_MISSING:  # the same redirect succeeds once they land
        return 503
    return 403 if reason in _FORBIDDEN else 400


#: When to reload after ``credentials_missing`` (metadata mode): amoCRM posts the keys to
#: secrets_uri about when it redirects, so a late post is seconds away, not minutes.
_INSTALLING_RETRY: Final = 5.0


def _retry_after(status: int, rejected: CallbackRejected) -> float | None:
    """The ``Retry-After`` of a refusal: when a try is admitted again (429), or when the keys
    of a site-button install are likely in (503); none for the others."""
    if status == 429:
        return rejected.retry_after
    return _INSTALLING_RETRY if status == 503 else None


def _seconds(retry_after: float) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up (HTTP takes no fractions)."""
    return str(max(math.ceil(retry_after), 0))


def _finish(response: Response) -> Response:
    return response.with_headers(_BASE_HEADERS)


def _origins(allowed_origins: Sequence[str]) -> list[str]:
    """``allowed_origins`` checked: each ``http(s)://host[:port]`` with nothing after but
    ``/``. A scheme-less ``app.example`` would otherwise be kept as ``://`` and match nothing,
    and one string passed for the list as one origin per character."""
    if isinstance(allowed_origins, str):
        raise TypeError(setting_error("allowed_origins_type"))
    return [_checked_origin(origin) for origin in allowed_origins]


def _checked_origin(origin: object) -> str:
    refused = ValueError(setting_error("allowed_origin", origin=repr(origin)))
    if not isinstance(origin, str):
        raise refused
    parts = urlsplit(origin)
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        raise refused from None
    extra = parts.username or parts.password or parts.query or parts.fragment
    if parts.scheme.lower() not in DEFAULT_PORTS or not parts.hostname or extra:
        raise refused
    if parts.path not in ("", "/"):
        raise refused
    return origin
