"""FakeAmoCRM: a faithful in-process fake of amoCRM's OAuth server and a slice of its API.

One thread-safe request handler (`FakeAmoCRM.handle`) holds all the protocol logic; the httpx
transports, the WSGI app and the loopback server are thin wrappers around it.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, get_args
from urllib.parse import parse_qsl, urlencode, urlsplit
from wsgiref.types import StartResponse, WSGIEnvironment

import attrs
import httpx

from . import _pages
from . import _protocol as P
from ._clock import Clock, as_utc, system_clock
from ._jwt import make_jwt, opaque_secret
from ._server import ServedFake, serve, wsgi_call
from ._transport import AsyncFakeTransport, FakeTransport
from ._types import Dropped, FakeResponse, FaultKind, RequestRecord

LeadsSpec = int | Iterable[Mapping[str, Any]]
"""Leads to seed: a count of generated leads, or the leads' fields (missing ones filled in)."""

_FAULT_KINDS: Final = frozenset(get_args(FaultKind))
# The body parameter that carries each grant's single-use secret.
_GRANT_PARAMETER: Final = {"authorization_code": "code", "refresh_token": "refresh_token"}
_ENDPOINTS: Final = ("token", "api")
# Country and currency shown by /api/v4/account, by the account's domain.
_LOCALES: Final = {"kommo.com": ("US", "USD", "$")}
_DEFAULT_LOCALE: Final = ("RU", "RUB", "₽")

Route = Callable[["_Request"], FakeResponse]


@attrs.define
class _Secret:
    """A code or token the fake issued. `spent`: used (codes, refresh tokens) or revoked."""

    expires_at: datetime
    spent: bool = False


@attrs.define
class _Fault:
    kind: FaultKind
    remaining: int
    endpoint: str
    grant: str | None

    def matches(self, endpoint: str, grant: str | None) -> bool:
        return self.endpoint == endpoint and self.grant in (None, grant)


def _first_values(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    # PHP keeps the last duplicate, but a duplicated parameter is a client bug either way;
    # the first one is simply the predictable choice.
    values: dict[str, str] = {}
    for key, value in pairs:
        values.setdefault(key, value)
    return values


@attrs.frozen
class _Request:
    method: str
    host: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = attrs.field(repr=False)

    @classmethod
    def parse(cls, method: str, url: str, headers: Mapping[str, str], body: bytes) -> _Request:
        parts = urlsplit(url)
        return cls(
            method=method.upper(),
            host=(parts.hostname or "").lower(),
            path=parts.path or "/",
            query=_first_values(parse_qsl(parts.query, keep_blank_values=True)),
            headers={key.lower(): value for key, value in headers.items()},
            body=body,
        )

    def form(self) -> dict[str, str]:
        """The body's parameters: JSON object, or form-encoded when the request says so."""
        content_type = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/x-www-form-urlencoded":
            text = self.body.decode("utf-8", "replace")
            return _first_values(parse_qsl(text, keep_blank_values=True))
        try:
            data = json.loads(self.body)
        except ValueError:
            return {}
        if not isinstance(data, dict):
            return {}
        # Non-string values count as missing: amoCRM's parameters are all strings.
        return {key: value for key, value in data.items() if isinstance(value, str)}


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _json(status: int, payload: object, content_type: str = P.JSON) -> FakeResponse:
    return FakeResponse(status, (("content-type", content_type),), P.dump_json(payload))


def _html(status: int, body: bytes) -> FakeResponse:
    return FakeResponse(status, (("content-type", P.HTML),), body)


def _redirect(location: str) -> FakeResponse:
    return FakeResponse(302, (("location", location), ("content-type", P.HTML)), b"")


def _injected(kind: FaultKind) -> FakeResponse:
    if kind == "500":
        return _html(500, _pages.SERVER_ERROR_PAGE)
    if kind == "html":
        return _html(200, _pages.HTML_INSTEAD_OF_JSON)
    return FakeResponse(0, dropped="timeout_before")


def _token_problem(slug: str) -> FakeResponse:
    problem = P.TOKEN_PROBLEMS[slug]
    return _json(problem.status, problem.body(), P.PROBLEM_JSON)


def _positive_int(text: str | None, default: int) -> int | None:
    if text is None:
        return default
    # isascii(): str.isdigit() also accepts digits like "²" that int() refuses.
    return int(text) if text.isascii() and text.isdigit() and int(text) > 0 else None


class FakeAmoCRM:
    """A faithful fake amoCRM (or Kommo) account with one installed integration.

    It answers the OAuth consent page, the token endpoint, `GET /api/v4/account` and
    `GET /api/v4/leads` exactly as the protocol facts describe amoCRM (exact error bodies,
    single-use codes that expire after 20 minutes, rotating single-use refresh tokens,
    7 requests per second), and counts every token call so tests can assert the library
    never sends a code twice. Use it in-process with `transport()` / `async_transport()`,
    as a WSGI app (`wsgi_app`), or over real loopback HTTP with `serve()`.

    Everything is thread-safe: one lock guards the whole state, and the latency knob sleeps
    outside it (in the transport), so concurrent clients really overlap.

    Deliberate choices where the facts are silent:
      * A refresh does not revoke the previous access token; it stays valid until its `exp`.
      * `redirect_uri` is required on both grants (the library always sends it).
      * Refresh tokens live 90 days ("3 months"); after that they answer `Token has been revoked`.

    Args:
        client_id: the integration's id (not a secret; it appears in URLs).
        client_secret: the integration's secret. Never shown in reprs or logs.
        redirect_uri: the integration's registered redirect URI.
        subdomain: the account's subdomain; the account host is `{subdomain}.{domain}`.
        domain: "amocrm.ru", "kommo.com" or "amocrm.com". Every host under it is served.
        account_id: the account's numeric id.
        account_name: the account's display name.
        user_id: the id of the user who installs the integration (`current_user_id`, `sub`).
        clock: returns the current aware time; drives every lifetime. Default: real UTC time.
            Pass a `FakeClock` to move time in tests.
        rate_limit: API requests per second per account, or None for no limit.
        latency: seconds added before every token/API answer is delivered (settable).
        leads: leads in the account: a count to generate, or the leads' fields.
        monotonic: the clock of the rate limiter's sliding window (real time by default,
            independent of `clock`, as amoCRM's limit is).

    Raises:
        ValueError: a knob is out of range.
    """

    HOOK_USER_AGENT: Final = P.HOOK_USER_AGENT
    """The User-Agent amoCRM sends the disconnect hook with."""

    def __init__(
        self,
        *,
        client_id: str = "fake-client-id",
        client_secret: str = "fake-client-secret",  # noqa: S107 (a fake's well-known default)
        redirect_uri: str = "https://backend.example/api/amo-crm/callback",
        subdomain: str = "test",
        domain: str = "amocrm.ru",
        account_id: int = 31415926,
        account_name: str = "Test account",
        user_id: int = 2718281,
        clock: Clock | None = None,
        rate_limit: int | None = 7,
        latency: float = 0.0,
        leads: LeadsSpec = 3,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_limit is not None and rate_limit < 1:
            raise ValueError("rate_limit must be at least 1, or None for no limit")
        if latency < 0:
            raise ValueError("latency must not be negative")
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.subdomain = subdomain.lower()
        self.domain = domain.lower()
        self.account_id = account_id
        self.account_name = account_name
        self.user_id = user_id
        self.rate_limit = rate_limit
        self.latency = latency
        self._clock: Clock = clock or system_clock
        as_utc(self._clock())  # fail fast on a clock returning naive datetimes
        self._monotonic = monotonic
        self._lock = threading.RLock()
        self._codes: dict[str, _Secret] = {}
        self._access: dict[str, _Secret] = {}
        self._refresh: dict[str, _Secret] = {}
        self._faults: list[_Fault] = []
        self._api_window: collections.deque[float] = collections.deque()
        self._token_calls: collections.Counter[tuple[str, str]] = collections.Counter()
        # sha256 of each code / refresh token sent to the token endpoint -> how many times.
        self._presented: collections.Counter[str] = collections.Counter()
        self._api_calls: collections.Counter[tuple[str, str]] = collections.Counter()
        self._faults_injected: collections.Counter[str] = collections.Counter()
        self._log: list[RequestRecord] = []
        self._leads: list[dict[str, Any]] = []
        self._routes: dict[str, Route] = {
            "/oauth": self._consent_page,
            "/oauth/allow": self._allow,
            "/oauth/deny": self._deny,
            "/oauth2/access_token": self._token_endpoint,
            "/api/v4/account": self._account_endpoint,
            "/api/v4/leads": self._leads_endpoint,
        }
        self.add_leads(leads)

    def __repr__(self) -> str:
        # Deliberately no client_secret and no tokens.
        return (
            f"FakeAmoCRM(account_host={self.account_host!r}, account_id={self.account_id}, "
            f"client_id={self.client_id!r})"
        )

    # -- identity -------------------------------------------------------------------------

    @property
    def client_secret(self) -> str:
        """The integration's secret, for configuring the code under test."""
        return self._client_secret

    @property
    def account_host(self) -> str:
        """The account's host, e.g. "test.amocrm.ru": the only host the token endpoint accepts."""
        return f"{self.subdomain}.{self.domain}"

    @property
    def consent_host(self) -> str:
        """The host of the consent page, e.g. "www.amocrm.ru"."""
        return f"www.{self.domain}"

    @property
    def api_domain(self) -> str:
        """The shared API host put in tokens' `api_domain` claim, e.g. "api-b.amocrm.ru"."""
        return f"api-b.{self.domain}"

    def serves_host(self, host: str) -> bool:
        """Whether requests to `host` are answered by this fake (any host under `domain`)."""
        host = host.lower()
        return host == self.domain or host.endswith("." + self.domain)

    # -- the request handler --------------------------------------------------------------

    def handle(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> FakeResponse:
        """Answer one request. Thread-safe; the core every wrapper goes through.

        Args:
            method: the HTTP method.
            url: the full URL as addressed, e.g. "https://test.amocrm.ru/oauth2/access_token";
                its host decides which host was addressed.
            headers: request headers (any case).
            body: the raw request body.

        Returns:
            The answer. It is not delayed here: the caller applies `FakeResponse.delay`
            and `FakeResponse.dropped`, as the bundled transports do.
        """
        request = _Request.parse(method, url, headers or {}, body)
        with self._lock:
            route = self._routes.get(request.path, self._not_found)
            answer = route(request)
            self._log.append(
                RequestRecord(
                    request.method,
                    request.host,
                    request.path,
                    answer.status or None,
                    answer.dropped,
                )
            )
        return answer

    def _now(self) -> datetime:
        return as_utc(self._clock())

    def _not_found(self, request: _Request) -> FakeResponse:
        return _json(404, P.API_NOT_FOUND, P.PROBLEM_JSON)

    def _finish(self, answer: FakeResponse, fault: FaultKind | None) -> FakeResponse:
        if answer.dropped == "timeout_before":
            return answer  # never arrived, so nothing to wait for
        dropped: Dropped | None = "lost_answer" if fault == "lost_answer" else None
        return attrs.evolve(answer, delay=self.latency, dropped=dropped)

    def _take_fault(self, endpoint: str, grant: str | None) -> FaultKind | None:
        for fault in self._faults:
            if fault.matches(endpoint, grant):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                self._faults_injected[fault.kind] += 1
                return fault.kind
        return None

    # -- consent page ---------------------------------------------------------------------

    def _is_consent_host(self, host: str) -> bool:
        # www.{domain}, or the loopback server addressed directly (a browser in an e2e test).
        return host == self.consent_host or not self.serves_host(host)

    def _consent_check(self, request: _Request) -> tuple[FakeResponse | None, dict[str, str]]:
        if not self._is_consent_host(request.host):
            return self._not_found(request), {}
        params = request.query | (request.form() if request.method == "POST" else {})
        if request.method not in ("GET", "POST"):
            return _html(405, _pages.message_page("405", "Method not allowed.")), params
        if params.get("client_id") != self.client_id:
            page = _pages.message_page("400 Bad Request", "Unknown integration: check client_id.")
            return _html(400, page), params
        return None, params

    def _consent_page(self, request: _Request) -> FakeResponse:
        error, params = self._consent_check(request)
        if error is not None:
            return error
        fields: dict[str, str] = {
            key: params[key] for key in ("client_id", "state", "mode") if key in params
        }
        return _html(200, _pages.consent_page(self.account_name, self.account_host, fields))

    def _allow(self, request: _Request) -> FakeResponse:
        error, params = self._consent_check(request)
        return error or _redirect(self._success_url(self._new_code(), params.get("state")))

    def _deny(self, request: _Request) -> FakeResponse:
        error, params = self._consent_check(request)
        return error or _redirect(self._denied_url(params.get("state")))

    def _new_code(self) -> str:
        code = opaque_secret()
        self._codes[code] = _Secret(self._now() + P.CODE_LIFETIME)
        return code

    def _redirect_url(self, params: list[tuple[str, str]]) -> str:
        separator = "&" if "?" in self.redirect_uri else "?"
        return self.redirect_uri + separator + urlencode(params)

    def _success_url(self, code: str, state: str | None, from_widget: bool = False) -> str:
        params = [("code", code)]
        params += [] if state is None else [("state", state)]
        params += [("referer", self.account_host), ("client_id", self.client_id)]
        params += [("from_widget", "1")] if from_widget else []
        return self._redirect_url(params)

    def _denied_url(self, state: str | None) -> str:
        params = [("error", "access_denied"), ("client_id", self.client_id)]
        return self._redirect_url(params + ([] if state is None else [("state", state)]))

    # -- token endpoint -------------------------------------------------------------------

    def _token_endpoint(self, request: _Request) -> FakeResponse:
        if request.method != "POST":
            answer = _json(405, P.API_METHOD_NOT_ALLOWED, P.PROBLEM_JSON)
            return attrs.evolve(answer, headers=(*answer.headers, ("allow", "POST")))
        params = request.form()
        grant = params.get("grant_type", "")
        grant = grant if grant in P.GRANTS else "unknown"
        presented = params.get(_GRANT_PARAMETER.get(grant, ""), "")
        if presented:
            self._presented[_digest(presented)] += 1
        fault = self._take_fault("token", grant)
        if fault is not None and fault != "lost_answer":
            self._token_calls[(grant, f"injected_{fault}")] += 1
            return self._finish(_injected(fault), None)
        outcome = self._token_precheck(request.host, grant, params) or self._redeem(grant, params)
        self._token_calls[(grant, outcome)] += 1
        answer = _json(200, self._issue_tokens()) if outcome == "ok" else _token_problem(outcome)
        return self._finish(answer, fault)

    def _token_precheck(self, host: str, grant: str, params: dict[str, str]) -> str | None:
        if host != self.account_host:
            return "invalid_account"
        if grant == "unknown":
            return "bad_grant_type"
        return self._check_client(params)

    def _check_client(self, params: dict[str, str]) -> str | None:
        # The order league/oauth2-server validates in: client id, secret, redirect URI.
        client_id = params.get("client_id", "")
        secret = params.get("client_secret", "")
        redirect_uri = params.get("redirect_uri", "")
        if client_id != self.client_id:
            return "bad_client_id" if client_id else "missing_client_id"
        if not secret:
            return "missing_client_secret"
        if not hmac.compare_digest(secret.encode(), self._client_secret.encode()):
            return "bad_secret"
        if redirect_uri != self.redirect_uri:
            return "bad_redirect_uri" if redirect_uri else "missing_redirect_uri"
        return None

    def _redeem(self, grant: str, params: dict[str, str]) -> str:
        if grant == "authorization_code":
            return self._redeem_code(params.get("code", ""))
        return self._redeem_refresh(params.get("refresh_token", ""))

    def _redeem_code(self, code: str) -> str:
        record = self._codes.get(code)
        if not code:
            return "missing_code"
        if record is None:
            return "code_garbage"
        # Expiry first, then revocation: the order league/oauth2-server checks in.
        if self._now() >= record.expires_at:
            return "code_expired"
        if record.spent:
            return "code_revoked"
        record.spent = True
        return "ok"

    def _redeem_refresh(self, token: str) -> str:
        record = self._refresh.get(token)
        if not token:
            return "missing_refresh_token"
        if record is None:
            return "refresh_garbage"
        if record.spent or self._now() >= record.expires_at:
            return "token_revoked"
        record.spent = True
        return "ok"

    def _issue_tokens(self) -> dict[str, Any]:
        issued_at = int(self._now().timestamp())
        expires_in = int(P.ACCESS_LIFETIME.total_seconds())
        access = make_jwt(self._claims(issued_at, issued_at + expires_in))
        refresh = opaque_secret()
        self._access[access] = _Secret(datetime.fromtimestamp(issued_at + expires_in, UTC))
        self._refresh[refresh] = _Secret(self._now() + P.REFRESH_LIFETIME)
        return {
            "token_type": "Bearer",
            "expires_in": expires_in,
            "server_time": issued_at,
            "access_token": access,
            "refresh_token": refresh,
        }

    def _claims(self, issued_at: int, expires_at: int) -> dict[str, Any]:
        return {
            "aud": self.client_id,
            "jti": secrets.token_hex(40),
            "iat": issued_at,
            "nbf": issued_at,
            "exp": expires_at,
            "sub": str(self.user_id),
            "account_id": self.account_id,
            "base_domain": self.domain,
            "api_domain": self.api_domain,
            "version": P.JWT_VERSION,
            "scopes": list(P.SCOPES),
        }

    # -- REST API -------------------------------------------------------------------------

    def _api(self, request: _Request, produce: Route) -> FakeResponse:
        fault = self._take_fault("api", None)
        if fault is not None and fault != "lost_answer":
            self._api_calls[(request.path, f"injected_{fault}")] += 1
            return self._finish(_injected(fault), None)
        outcome, answer = self._api_gate(request)
        if answer is None:
            answer = produce(request)
            outcome = {200: "ok", 204: "no_content"}.get(answer.status, "bad_request")
        self._api_calls[(request.path, outcome)] += 1
        return self._finish(answer, fault)

    def _api_gate(self, request: _Request) -> tuple[str, FakeResponse | None]:
        if request.method != "GET":
            return "method_not_allowed", _json(405, P.API_METHOD_NOT_ALLOWED, P.PROBLEM_JSON)
        if request.host == self.account_host and not self._within_rate_limit():
            return "rate_limited", _json(429, P.API_TOO_MANY, P.PROBLEM_JSON)
        if not self._authorized(request):
            return "unauthorized", _json(401, P.API_UNAUTHORIZED, P.PROBLEM_JSON)
        return "ok", None

    def _within_rate_limit(self) -> bool:
        if self.rate_limit is None:
            return True
        now = self._monotonic()
        while self._api_window and self._api_window[0] <= now - 1.0:
            self._api_window.popleft()
        if len(self._api_window) >= self.rate_limit:
            return False  # refused requests do not count, so a client that backs off recovers
        self._api_window.append(now)
        return True

    def _authorized(self, request: _Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        record = self._access.get(token.strip())
        return (
            request.host == self.account_host  # a token only opens its own account
            and scheme.lower() == "bearer"
            and record is not None
            and not record.spent
            and self._now() < record.expires_at
        )

    def _account_endpoint(self, request: _Request) -> FakeResponse:
        return self._api(request, self._account_payload)

    def _account_payload(self, request: _Request) -> FakeResponse:
        country, currency, symbol = _LOCALES.get(self.domain, _DEFAULT_LOCALE)
        payload = {
            "id": self.account_id,
            "name": self.account_name,
            "subdomain": self.subdomain,
            "current_user_id": self.user_id,
            "country": country,
            "currency": currency,
            "currency_symbol": symbol,
            "customers_mode": "disabled",
            "is_unsorted_on": True,
            "is_loss_reason_enabled": True,
            "is_helpbot_enabled": False,
            "is_technical_account": False,
            "contact_name_display_order": 1,
            "_links": {"self": {"href": f"https://{self.account_host}/api/v4/account"}},
        }
        return _json(200, payload, P.HAL_JSON)

    def _leads_endpoint(self, request: _Request) -> FakeResponse:
        return self._api(request, self._leads_page)

    def _leads_page(self, request: _Request) -> FakeResponse:
        page = _positive_int(request.query.get("page"), 1)
        limit = _positive_int(request.query.get("limit"), P.LEADS_DEFAULT_LIMIT)
        if page is None or limit is None or limit > P.LEADS_MAX_LIMIT:
            return _json(400, P.API_BAD_REQUEST, P.PROBLEM_JSON)
        chunk = self._leads[(page - 1) * limit : page * limit]
        if not chunk:
            return FakeResponse(204)  # amoCRM's "nothing here": no body at all
        links = {"self": {"href": self._leads_href(page, limit)}}
        if page * limit < len(self._leads):
            links["next"] = {"href": self._leads_href(page + 1, limit)}
        leads = [lead | {"_links": {"self": {"href": self._lead_href(lead)}}} for lead in chunk]
        payload = {"_page": page, "_links": links, "_embedded": {"leads": leads}}
        return _json(200, payload, P.HAL_JSON)

    def _leads_href(self, page: int, limit: int) -> str:
        return f"https://{self.account_host}/api/v4/leads?page={page}&limit={limit}"

    def _lead_href(self, lead: Mapping[str, Any]) -> str:
        return f"https://{self.account_host}/api/v4/leads/{lead['id']}"

    # -- programmatic consent -------------------------------------------------------------

    def authorization_url(self, state: str | None = None, *, mode: str = "post_message") -> str:
        """The consent page URL a library would send the user to (on www.{domain}).

        Args:
            state: the OAuth state to carry, if any.
            mode: "post_message" (the SDK's default) or "popup".
        """
        params = [("client_id", self.client_id)]
        params += [] if state is None else [("state", state)]
        return f"https://{self.consent_host}/oauth?" + urlencode([*params, ("mode", mode)])

    def issue_code(self) -> str:
        """Issue a fresh authorization code (valid 20 minutes, single use) and return it."""
        with self._lock:
            return self._new_code()

    def authorize(self, state: str | None = None, *, from_widget: bool = False) -> str:
        """Press "Allow" without a browser: return the full redirect URL with a fresh code.

        Args:
            state: the state the authorization URL carried (echoed back when given).
            from_widget: simulate a widget/marketplace install: adds `from_widget=1` and,
                as amoCRM does, never carries a state.

        Returns:
            `{redirect_uri}?code=...&state=...&referer={account host}&client_id=...`

        Raises:
            ValueError: a state was given together with from_widget=True.
        """
        if from_widget and state is not None:
            raise ValueError("widget installs carry no state")
        with self._lock:
            return self._success_url(self._new_code(), state, from_widget)

    def deny(self, state: str | None = None) -> str:
        """Press "Deny": return `{redirect_uri}?error=access_denied&client_id=...&state=...`."""
        return self._denied_url(state)

    # -- knobs ----------------------------------------------------------------------------

    def fail_next(
        self,
        kind: FaultKind,
        times: int = 1,
        grant: str | None = None,
        *,
        endpoint: str = "token",
    ) -> None:
        """Make the next matching request(s) fail. Faults queue up and apply in order.

        Args:
            kind: "500": a 500 HTML page, nothing processed. "html": 200 with an HTML body,
                nothing processed. "timeout_before": the request never arrives (transports
                raise httpx.ConnectTimeout; the loopback server closes the connection).
                "lost_answer": the request is fully processed (a code is consumed, a refresh
                token rotated) but the answer is lost (httpx.ReadTimeout in-process; the
                loopback server closes the connection without answering).
            times: how many matching requests fail.
            grant: only requests of this grant_type ("authorization_code" or
                "refresh_token"); None for any. Token endpoint only.
            endpoint: "token" (POST /oauth2/access_token) or "api" (/api/v4/*).

        Raises:
            ValueError: an unknown kind, grant or endpoint, or times < 1.
        """
        if kind not in _FAULT_KINDS or endpoint not in _ENDPOINTS or times < 1:
            raise ValueError(f"bad fault: kind={kind!r} endpoint={endpoint!r} times={times}")
        if grant is not None and (grant not in P.GRANTS or endpoint != "token"):
            raise ValueError(f"bad grant filter {grant!r} for endpoint {endpoint!r}")
        with self._lock:
            self._faults.append(_Fault(kind, times, endpoint, grant))

    def expire_access_tokens(self) -> int:
        """Make every access token issued so far expired (server-side); return how many.

        The tokens' `exp` claims are left as they were: this is what a client sees when
        amoCRM stops honouring a token early, and only a 401 tells it.
        """
        with self._lock:
            now = self._now()
            live = [r for r in self._access.values() if r.expires_at > now and not r.spent]
            for record in live:
                record.expires_at = now
            return len(live)

    def revoke_refresh_tokens(self) -> int:
        """Revoke every unspent refresh token; return how many were revoked."""
        with self._lock:
            live = [record for record in self._refresh.values() if not record.spent]
            for record in live:
                record.spent = True
            return len(live)

    def uninstall(self) -> dict[str, str]:
        """Uninstall the integration: revoke every code and token of the account.

        Returns:
            The query amoCRM sends to the integration's disconnect URL:
            `client_uuid`, `account_id` and `signature` =
            hex(HMAC-SHA256(key=client_secret, msg=f"{client_id}|{account_id}")).
            amoCRM sends it with the User-Agent `FakeAmoCRM.HOOK_USER_AGENT`.
        """
        with self._lock:
            for table in (self._codes, self._access, self._refresh):
                for record in table.values():
                    record.spent = True
        message = f"{self.client_id}|{self.account_id}".encode()
        signature = hmac.new(self._client_secret.encode(), message, hashlib.sha256).hexdigest()
        return {
            "client_uuid": self.client_id,
            "account_id": str(self.account_id),
            "signature": signature,
        }

    def add_leads(self, leads: LeadsSpec = 1) -> list[dict[str, Any]]:
        """Add leads to the account and return them (copies).

        Args:
            leads: how many to generate (id, name "Lead #<id>", price id*1000, ...), or the
                leads' fields; missing fields, including `id`, are filled in.
        """
        specs: Iterable[Mapping[str, Any]] = (
            ({} for _ in range(leads)) if isinstance(leads, int) else leads
        )
        with self._lock:
            added = []
            for fields in specs:
                added.append(self._new_lead(fields))
                self._leads.append(added[-1])  # now, so the next generated id follows it
            return [dict(lead) for lead in added]

    def _new_lead(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        lead_id = fields.get("id", max((lead["id"] for lead in self._leads), default=0) + 1)
        now = int(self._now().timestamp())
        defaults = {
            "id": lead_id,
            "name": f"Lead #{lead_id}",
            "price": lead_id * 1000,
            "responsible_user_id": self.user_id,
            "status_id": 142,
            "pipeline_id": 1,
            "account_id": self.account_id,
            "created_at": now,
            "updated_at": now,
        }
        return defaults | dict(fields)

    # -- observation ----------------------------------------------------------------------

    @property
    def token_calls(self) -> collections.Counter[tuple[str, str]]:
        """Token-endpoint calls by (grant_type, outcome); a snapshot copy.

        grant_type is "authorization_code", "refresh_token" or "unknown". outcome is "ok",
        a key of the error table (e.g. "code_revoked", "bad_secret", "invalid_account",
        "token_revoked") or "injected_500" / "injected_html" / "injected_timeout_before".
        A "lost_answer" fault records the real outcome (the work was done).
        """
        with self._lock:
            return collections.Counter(self._token_calls)

    def token_call_count(self, grant: str | None = None, outcome: str | None = None) -> int:
        """How many token calls matched `grant` and `outcome` (None matches any)."""
        return sum(
            count
            for (call_grant, call_outcome), count in self.token_calls.items()
            if grant in (None, call_grant) and outcome in (None, call_outcome)
        )

    def token_calls_for(self, secret: str) -> int:
        """How many token-endpoint calls carried `secret` as their `code` or `refresh_token`.

        Every call counts, whatever was answered (injected faults included): the library sent
        the secret. A correct client sends each code and each refresh token at most once, so
        `token_calls_for(code) <= 1` is the exactly-once check for one particular code.
        """
        with self._lock:
            return self._presented[_digest(secret)]

    @property
    def api_calls(self) -> collections.Counter[tuple[str, str]]:
        """API calls by (path, outcome); outcomes "ok", "no_content", "unauthorized",
        "rate_limited", "bad_request", "method_not_allowed", "injected_*". A snapshot copy."""
        with self._lock:
            return collections.Counter(self._api_calls)

    @property
    def faults_injected(self) -> collections.Counter[str]:
        """How many times each `fail_next` kind fired; a snapshot copy."""
        with self._lock:
            return collections.Counter(self._faults_injected)

    @property
    def requests(self) -> tuple[RequestRecord, ...]:
        """Every request seen, in order: method, host, path and status, never secrets."""
        with self._lock:
            return tuple(self._log)

    @property
    def codes_issued(self) -> int:
        """Authorization codes issued so far (consent page and programmatic)."""
        with self._lock:
            return len(self._codes)

    @property
    def codes_exchanged(self) -> int:
        """Authorization codes successfully exchanged for tokens."""
        return self.token_calls[("authorization_code", "ok")]

    def is_access_token_valid(self, token: str) -> bool:
        """Whether the API would accept `token` right now."""
        with self._lock:
            record = self._access.get(token)
            return record is not None and not record.spent and self._now() < record.expires_at

    # -- wrappers -------------------------------------------------------------------------

    def transport(self) -> httpx.BaseTransport:
        """An in-process sync httpx transport: `httpx.Client(transport=fake.transport())`.

        Hosts outside `domain` raise httpx.ConnectError; latency uses time.sleep.
        """
        return FakeTransport(self)

    def async_transport(self) -> httpx.AsyncBaseTransport:
        """An in-process async httpx transport; latency uses asyncio.sleep."""
        return AsyncFakeTransport(self)

    def wsgi_app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """The fake as a WSGI application; the `Host` header says which host was addressed.

        Latency sleeps in the server's worker thread. The "timeout_before" and "lost_answer"
        faults close the connection without an answer under `serve()`; other WSGI servers
        answer them with their own 500 page.
        """
        return wsgi_call(self, environ, start_response)

    def serve(self) -> contextlib.AbstractContextManager[ServedFake]:
        """Run the fake on 127.0.0.1 (ephemeral port) in a daemon thread.

        Usage: `with fake.serve() as served: httpx.Client(transport=served.transport())`.
        Requests to the loopback URL itself (e.g. from a real browser) are treated as
        addressed to www.{domain}: use `served.local_url(...)` for the consent page.
        """
        return serve(self, self.wsgi_app)
