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
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final, get_args
from urllib.parse import parse_qsl, urlencode, urlsplit
from wsgiref.types import StartResponse, WSGIEnvironment

import attrs
import httpx

from . import _pages
from . import _protocol as P
from ._accounts import (
    FakeAccount,
    FakeIntegration,
    FormerHost,
    check_domain,
    check_subdomain,
    is_api_host,
)
from ._clock import Clock, as_utc, system_clock
from ._jwt import make_jwt, opaque_secret
from ._server import ServedFake, serve, wsgi_call
from ._transport import AsyncFakeTransport, FakeTransport
from ._types import Dropped, FakeResponse, FaultKind, Handler, RequestRecord

LeadsSpec = int | Iterable[Mapping[str, Any]]
"""Leads to seed: a count of generated leads, or the leads' fields (missing ones filled in)."""

_FAULT_KINDS: Final = frozenset(get_args(FaultKind))
# The body parameter that carries each grant's single-use secret.
_GRANT_PARAMETER: Final = {"authorization_code": "code", "refresh_token": "refresh_token"}
_ENDPOINTS: Final = ("token", "api", "lookup")
# Faults answered instead of the request (nothing processed); the others change a real answer.
_SHORT_CIRCUIT: Final = frozenset({"500", "html", "timeout_before", "429", "403_html"})
# Country and currency shown by /api/v4/account, by the account's domain.
_LOCALES: Final = {"kommo.com": ("US", "USD", "$")}
_DEFAULT_LOCALE: Final = ("RU", "RUB", "₽")

Route = Callable[["_Request"], FakeResponse]


@attrs.define(eq=False)
class _Secret:
    """A code or token the fake issued, and whose it is.

    `spent`: used (codes, refresh tokens) or revoked. `parent`: with `refresh_grace`, the
    refresh token this one was issued from, still usable until this one is first used.
    `child`: for a refresh token in grace, the refresh token last issued from it.
    """

    expires_at: datetime
    account: FakeAccount
    integration: FakeIntegration
    spent: bool = False
    parent: _Secret | None = None
    child: _Secret | None = None

    def live(self, now: datetime) -> bool:
        return not self.spent and now < self.expires_at


@attrs.define
class _Fault:
    kind: FaultKind
    remaining: int
    endpoint: str
    grant: str | None
    path: str | None = None
    account: FakeAccount | None = None
    trickle: tuple[int, float] | None = None
    fields: Mapping[str, Any] | None = None

    def matches(self, endpoint: str, grant: str | None, request: _Request) -> bool:
        return (
            self.endpoint == endpoint
            and self.grant in (None, grant)
            and self.path in (None, request.path)
            and (self.account is None or self.account.host == request.host)
        )


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
    if kind == "429":
        return _json(429, P.API_TOO_MANY, P.PROBLEM_JSON)
    if kind == "403_html":
        return FakeResponse(403, (("content-type", "text/html"),), _pages.NGINX_FORBIDDEN)
    return FakeResponse(0, dropped="timeout_before")


def _overridden(answer: FakeResponse, fields: Mapping[str, Any]) -> FakeResponse:
    """`answer` with `fields` merged into its JSON object body (other bodies are kept)."""
    try:
        payload = json.loads(answer.body)
    except ValueError:
        return answer
    if not isinstance(payload, dict):
        return answer
    return attrs.evolve(answer, body=P.dump_json(payload | dict(fields)))


def _trickled(answer: FakeResponse, trickle: tuple[int, float]) -> FakeResponse:
    # An explicit Content-Length: the loopback server then streams the chunks as they come.
    headers = (*answer.headers, ("content-length", str(len(answer.body))))
    return attrs.evolve(answer, headers=headers, trickle=trickle)


def _drip(body: bytes, size: int, every: float) -> Iterator[bytes]:
    yield b""  # wsgiref sends the status and headers with the first write: now, not later
    for offset in range(0, len(body), size):
        time.sleep(every)
        yield body[offset : offset + size]


class _Capture:
    """A Handler that remembers the fake's answer, so `wsgi_app` can trickle its body."""

    def __init__(self, app: Handler) -> None:
        self._app = app
        self.answer: FakeResponse | None = None

    def serves_host(self, host: str) -> bool:
        return self._app.serves_host(host)

    def handle(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> FakeResponse:
        self.answer = self._app.handle(method, url, headers, body)
        return self.answer


def _token_problem(slug: str) -> FakeResponse:
    problem = P.TOKEN_PROBLEMS[slug]
    return _json(problem.status, problem.body(), P.PROBLEM_JSON)


def _positive_int(text: str | None, default: int) -> int | None:
    if text is None:
        return default
    # isascii(): str.isdigit() also accepts digits like "²" that int() refuses.
    return int(text) if text.isascii() and text.isdigit() and int(text) > 0 else None


AccountRef = FakeAccount | int
"""An account: its handle, or its id."""
IntegrationRef = FakeIntegration | str
"""An integration: its handle, or its client id."""


class FakeAmoCRM:
    """A faithful fake amoCRM (or Kommo): accounts, integrations, OAuth and a slice of the API.

    It answers the OAuth consent page, the token endpoint, `GET /api/v4/account`,
    `GET /api/v4/leads` and the account lookup `GET /oauth2/account/current/subdomain` exactly
    as the protocol notes (/work/shared/design/amocrm-protocol.md) describe amoCRM: exact error
    bodies (§4), single-use codes that expire after 20 minutes and rotating single-use refresh
    tokens (§3), 7 requests per second (§9). It counts every call so tests can assert the
    library never sends a code twice. Use it in-process with `transport()` /
    `async_transport()`, as a WSGI app (`wsgi_app`), or over real loopback HTTP with `serve()`.

    Built with one account and one integration (the constructor's arguments, the "default"
    ones every method uses when given no `account=` / `integration=`). Add more with
    `add_account()` (on `*.amocrm.ru`, `*.amocrm.com`, `*.kommo.com`, ...) and
    `add_integration()`; codes and tokens belong to one (account, integration) pair and work
    only on that account's current host with that integration's credentials.

    Everything is thread-safe: one lock guards the whole state, and the latency knob sleeps
    outside it (in the transport), so concurrent clients really overlap.

    Deliberate choices where the facts are silent:
      * A refresh does not revoke the previous access token; it stays valid until its `exp`.
      * `redirect_uri` is required on both grants (the library always sends it).
      * Refresh tokens live 90 days ("3 months"); after that they answer `Token has been revoked`.
      * The consent page (a browser) grants access to the default account.
      * After `rename_account`, the old host answers the token endpoint `400 Invalid account`
        and the API `401`; after `move_account`, the old host answers `404` on both (§5 only
        says the SDK looks the account up after a 401/404 on refresh).

    Args:
        client_id: the default integration's id (not a secret; it appears in URLs).
        client_secret: the default integration's secret. Never shown in reprs or logs.
        redirect_uri: the default integration's registered redirect URI.
        subdomain: the default account's subdomain; its host is `{subdomain}.{domain}`.
        domain: "amocrm.ru", "kommo.com" or "amocrm.com". Every host under it is served.
        account_id: the default account's numeric id.
        account_name: the default account's display name.
        user_id: the id of the user who installs the integration (`current_user_id`, `sub`).
        clock: returns the current aware time; drives every lifetime. Default: real UTC time.
            Pass a `FakeClock` to move time in tests.
        rate_limit: API requests per second per account, or None for no limit.
        latency: seconds added before every token/API answer is delivered (settable).
        leads: leads in the default account: a count to generate, or the leads' fields.
        monotonic: the clock of the rate limiter's sliding window (real time by default,
            independent of `clock`, as amoCRM's limit is).
        api_domain: the default account's shared API host; default `api-b.{domain}`.
        refresh_grace: False (default, amoCRM's answer in §3): a used refresh token answers
            `401 Token has been revoked` at once. True (Kommo's page, §3): the previous refresh
            token keeps working until the new refresh or access token is first used (settable).
        api_domain_claim: True (default): access tokens carry the `api_domain` claim (§3, §5).
            False: tokens as issued before about 2024-08-21, without it (settable).

    Raises:
        ValueError: a knob is out of range, or the subdomain or domain is not a host name.
    """

    HOOK_USER_AGENT: Final = P.HOOK_USER_AGENT
    """The User-Agent amoCRM sends the disconnect hook with (protocol §6)."""

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
        api_domain: str | None = None,
        refresh_grace: bool = False,
        api_domain_claim: bool = True,
    ) -> None:
        if rate_limit is not None and rate_limit < 1:
            raise ValueError("rate_limit must be at least 1, or None for no limit")
        if latency < 0:
            raise ValueError("latency must not be negative")
        self.rate_limit = rate_limit
        self.latency = latency
        self.refresh_grace = refresh_grace
        self.api_domain_claim = api_domain_claim
        self._user_id = user_id
        self._clock: Clock = clock or system_clock
        as_utc(self._clock())  # fail fast on a clock returning naive datetimes
        self._monotonic = monotonic
        self._lock = threading.RLock()
        self._accounts: list[FakeAccount] = []
        self._former: dict[str, tuple[FakeAccount, FormerHost]] = {}
        self._domains: set[str] = set()
        self._integrations: dict[str, FakeIntegration] = {}
        self._codes: dict[str, _Secret] = {}
        self._access: dict[str, _Secret] = {}
        self._refresh: dict[str, _Secret] = {}
        self._faults: list[_Fault] = []
        # (grant, outcome, account id or None, client id or None) -> calls.
        self._token_log: collections.Counter[tuple[str, str, int | None, str | None]] = (
            collections.Counter()
        )
        # sha256 of each code / refresh token sent to the token endpoint -> how many times.
        self._presented: collections.Counter[str] = collections.Counter()
        # (sha256 of a refresh token sent with grant_type=refresh_token, host) -> how many times.
        self._refresh_sends: collections.Counter[tuple[str, str]] = collections.Counter()
        # (path, outcome, account id or None) -> calls.
        self._api_log: collections.Counter[tuple[str, str, int | None]] = collections.Counter()
        self._lookup_log: collections.Counter[tuple[str, str]] = collections.Counter()
        self._lookup_presented: collections.Counter[str] = collections.Counter()
        self._lookup_authorization = 0
        self._faults_injected: collections.Counter[str] = collections.Counter()
        self._log: list[RequestRecord] = []
        self._routes: dict[str, Route] = {
            "/oauth": self._consent_page,
            "/oauth/allow": self._allow,
            "/oauth/deny": self._deny,
            "/oauth2/access_token": self._token_endpoint,
            "/api/v4/account": self._account_endpoint,
            "/api/v4/leads": self._leads_endpoint,
            P.LOOKUP_PATH: self._lookup_endpoint,
        }
        self._default_integration = self.add_integration(client_id, client_secret, redirect_uri)
        self._default_account = self.add_account(
            subdomain,
            domain=domain,
            account_id=account_id,
            name=account_name,
            user_id=user_id,
            api_domain=api_domain,
            leads=leads,
        )

    def __repr__(self) -> str:
        # Deliberately no client_secret and no tokens.
        return (
            f"FakeAmoCRM(account_host={self.account_host!r}, account_id={self.account_id}, "
            f"client_id={self.client_id!r})"
        )

    # -- identity of the default account and integration ----------------------------------

    @property
    def default_account(self) -> FakeAccount:
        """The account built from the constructor's arguments."""
        return self._default_account

    @property
    def default_integration(self) -> FakeIntegration:
        """The integration built from the constructor's arguments."""
        return self._default_integration

    @property
    def accounts(self) -> tuple[FakeAccount, ...]:
        """Every account, the default one first."""
        with self._lock:
            return tuple(self._accounts)

    @property
    def integrations(self) -> tuple[FakeIntegration, ...]:
        """Every registered integration, the default one first."""
        with self._lock:
            return tuple(self._integrations.values())

    @property
    def client_id(self) -> str:
        """The default integration's client id."""
        return self._default_integration.client_id

    @property
    def client_secret(self) -> str:
        """The default integration's secret, for configuring the code under test."""
        return self._default_integration.client_secret

    @property
    def redirect_uri(self) -> str:
        """The default integration's redirect URI."""
        return self._default_integration.redirect_uri

    @property
    def subdomain(self) -> str:
        """The default account's current subdomain."""
        return self._default_account.subdomain

    @property
    def domain(self) -> str:
        """The default account's current base domain, e.g. "amocrm.ru"."""
        return self._default_account.domain

    @property
    def account_id(self) -> int:
        """The default account's id."""
        return self._default_account.id

    @property
    def account_name(self) -> str:
        """The default account's display name."""
        return self._default_account.name

    @property
    def user_id(self) -> int:
        """The installing user's id in the default account."""
        return self._user_id

    @property
    def account_host(self) -> str:
        """The default account's host, e.g. "test.amocrm.ru": where its token endpoint answers."""
        return self._default_account.host

    @property
    def consent_host(self) -> str:
        """The host of the consent page, e.g. "www.amocrm.ru" (protocol §1)."""
        return f"www.{self.domain}"

    @property
    def api_domain(self) -> str:
        """The default account's shared API host (tokens' `api_domain` claim), e.g.
        "api-b.amocrm.ru" (protocol §3, §5)."""
        return self._default_account.api_domain

    @property
    def domains(self) -> frozenset[str]:
        """Every base domain served: those of all accounts, past and present."""
        with self._lock:
            return frozenset(self._domains)

    def serves_host(self, host: str) -> bool:
        """Whether requests to `host` are answered by this fake (any host under `domains`)."""
        host = host.lower()
        with self._lock:
            return any(host == d or host.endswith("." + d) for d in self._domains)

    # -- accounts and integrations ----------------------------------------------------------

    def add_account(
        self,
        subdomain: str,
        *,
        domain: str = "amocrm.ru",
        account_id: int | None = None,
        name: str | None = None,
        user_id: int | None = None,
        api_domain: str | None = None,
        leads: LeadsSpec = 3,
    ) -> FakeAccount:
        """Add an account on `{subdomain}.{domain}` and return its live handle.

        Args:
            subdomain: one DNS label, e.g. "beta".
            domain: "amocrm.ru", "kommo.com", "amocrm.com" (protocol §5) or any other base
                domain; every host under it is then served.
            account_id: the account id; default: one more than the largest so far.
            name: the display name; default "Account {subdomain}".
            user_id: the installing user's id; default: the constructor's `user_id`.
            api_domain: the shared API host put in its tokens' `api_domain` claim; default
                `api-b.{domain}` (§5: api-a/b/c/g exist).
            leads: its leads: a count to generate, or the leads' fields.

        Raises:
            ValueError: a bad subdomain or domain, or the host or id is already taken.
        """
        subdomain, domain = check_subdomain(subdomain), check_domain(domain)
        api_host = check_domain(api_domain) if api_domain else f"api-b.{domain}"
        with self._lock:
            host = f"{subdomain}.{domain}"
            if any(a.host == host for a in self._accounts):
                raise ValueError(f"an account already lives on {host!r}")
            new_id = max((a.id for a in self._accounts), default=0) + 1
            new_id = new_id if account_id is None else account_id
            if any(a.id == new_id for a in self._accounts):
                raise ValueError(f"account id {new_id} is taken")
            account = FakeAccount(
                id=new_id,
                name=f"Account {subdomain}" if name is None else name,
                subdomain=subdomain,
                domain=domain,
                api_domain=api_host,
                user_id=self._user_id if user_id is None else user_id,
            )
            self._accounts.append(account)
            self._domains.add(domain)
            self._former.pop(host, None)
            self.add_leads(leads, account=account)
            return account

    def add_integration(
        self, client_id: str, client_secret: str, redirect_uri: str
    ) -> FakeIntegration:
        """Register another integration (client id, secret, redirect URI) and return it.

        Its codes and tokens are its own: redeemed with another integration's credentials
        they are refused (protocol §3, §4; hints in `token_calls`).

        Raises:
            ValueError: the client id is empty or already registered, or a field is empty.
        """
        if not (client_id and client_secret and redirect_uri):
            raise ValueError("client_id, client_secret and redirect_uri must not be empty")
        with self._lock:
            if client_id in self._integrations:
                raise ValueError(f"client id {client_id!r} is already registered")
            integration = FakeIntegration(client_id, client_secret, redirect_uri)
            self._integrations[client_id] = integration
            return integration

    def account(self, account: AccountRef | None = None) -> FakeAccount:
        """The account handle for `account` (a handle or an id); None: the default account.

        Raises:
            KeyError: no such account in this fake.
        """
        if account is None:
            return self._default_account
        with self._lock:
            for candidate in self._accounts:
                if candidate is account or candidate.id == account:
                    return candidate
        raise KeyError(f"no account {account!r} in this fake")

    def integration(self, integration: IntegrationRef | None = None) -> FakeIntegration:
        """The integration for `integration` (a handle or a client id); None: the default one.

        Raises:
            KeyError: no such integration in this fake.
        """
        if integration is None:
            return self._default_integration
        client_id = integration if isinstance(integration, str) else integration.client_id
        with self._lock:
            found = self._integrations.get(client_id)
        if found is None or (isinstance(integration, FakeIntegration) and found != integration):
            raise KeyError(f"no integration {client_id!r} in this fake")
        return found

    def rename_account(self, account: AccountRef | None, new_subdomain: str) -> FakeAccount:
        """Give an account a new subdomain on the same domain; its tokens keep working there.

        Afterwards the old host answers the token endpoint `400 Invalid account` (§4) and the
        API `401`; the new host answers with the same tokens. Tokens' `api_domain` claims are
        unchanged, so the lookup (§5) still finds the account.

        Raises:
            KeyError: no such account. ValueError: a bad subdomain, or its host is taken.
        """
        with self._lock:
            handle = self.account(account)
            self._rehost(handle, check_subdomain(new_subdomain), handle.domain, "renamed")
            return handle

    def move_account(
        self,
        account: AccountRef | None,
        *,
        domain: str,
        subdomain: str | None = None,
        api_domain: str | None = None,
    ) -> FakeAccount:
        """Move an account to another base domain (e.g. amocrm.ru -> kommo.com), §5.

        Afterwards the old host answers `404` on the token endpoint and the API; the new host
        `{subdomain}.{domain}` answers with the same tokens. New tokens carry the new
        `api_domain` (default: the same `api-x` prefix on the new domain); old tokens' claims
        still name the old shared API host, which keeps answering the lookup.

        Raises:
            KeyError: no such account. ValueError: a bad name, or the new host is taken.
        """
        with self._lock:
            handle = self.account(account)
            new_domain = check_domain(domain)
            prefix = handle.api_domain.partition(".")[0]
            api_host = check_domain(api_domain) if api_domain else f"{prefix}.{new_domain}"
            sub = handle.subdomain if subdomain is None else check_subdomain(subdomain)
            self._rehost(handle, sub, new_domain, "moved", api_host)
            return handle

    def _rehost(
        self,
        account: FakeAccount,
        subdomain: str,
        domain: str,
        reason: FormerHost,
        api_domain: str | None = None,
    ) -> None:
        old, new = account.host, f"{subdomain}.{domain}"
        if new == old or any(a.host == new for a in self._accounts):
            raise ValueError(f"an account already lives on {new!r}")
        account._set_host(subdomain, domain, api_domain or account.api_domain)
        self._former[old] = (account, reason)
        self._former.pop(new, None)
        self._domains.add(domain)

    def block_account(self, account: AccountRef | None = None) -> None:
        """Block an account: 403 on every API call, token call and lookup (protocol §9).

        The body is problem+json `{"title":"Forbidden","type":"https://httpstatus.es/403",
        "status":403,"detail":"Account is blocked"}` ([I]: §9 names only the status). For an
        nginx-style HTML 403 page use `fail_next("403_html", ...)`. Nothing is consumed.
        """
        with self._lock:
            self.account(account)._set_blocked(True)

    def unblock_account(self, account: AccountRef | None = None) -> None:
        """Lift `block_account`: the account answers normally again, with the same tokens."""
        with self._lock:
            self.account(account)._set_blocked(False)

    def set_paid(self, paid: bool, account: AccountRef | None = None) -> None:
        """Mark an account paid or unpaid. Unpaid: 402 on API calls (§9), problem+json
        `{"title":"Payment Required",...,"status":402}` ([I] body); OAuth keeps working."""
        with self._lock:
            self.account(account)._set_paid(paid)

    def _account_at(self, host: str) -> FakeAccount | None:
        return next((a for a in self._accounts if a.host == host), None)

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
            The answer. It is not delayed here: the caller applies `FakeResponse.delay`,
            `FakeResponse.dropped` and `FakeResponse.trickle`, as the bundled transports do.
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

    def _finish(self, answer: FakeResponse, fault: _Fault | None) -> FakeResponse:
        if answer.dropped == "timeout_before":
            return answer  # never arrived, so nothing to wait for
        kind = None if fault is None else fault.kind
        if fault is not None and fault.fields is not None:
            answer = _overridden(answer, fault.fields)
        if fault is not None and fault.trickle is not None:
            answer = _trickled(answer, fault.trickle)
        dropped: Dropped | None = "lost_answer" if kind == "lost_answer" else None
        return attrs.evolve(answer, delay=self.latency, dropped=dropped)

    def _take_fault(self, endpoint: str, grant: str | None, request: _Request) -> _Fault | None:
        for fault in self._faults:
            if fault.matches(endpoint, grant, request):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                self._faults_injected[fault.kind] += 1
                return fault
        return None

    # -- consent page ---------------------------------------------------------------------

    def _is_consent_host(self, host: str) -> bool:
        # www.{domain}, or the loopback server addressed directly (a browser in an e2e test).
        return host in {f"www.{d}" for d in self._domains} or not self.serves_host(host)

    def _consent_check(
        self, request: _Request
    ) -> tuple[FakeResponse | None, dict[str, str], FakeIntegration | None]:
        if not self._is_consent_host(request.host):
            return self._not_found(request), {}, None
        params = request.query | (request.form() if request.method == "POST" else {})
        if request.method not in ("GET", "POST"):
            return _html(405, _pages.message_page("405", "Method not allowed.")), params, None
        integration = self._integrations.get(params.get("client_id", ""))
        if integration is None:
            page = _pages.message_page("400 Bad Request", "Unknown integration: check client_id.")
            return _html(400, page), params, None
        return None, params, integration

    def _consent_page(self, request: _Request) -> FakeResponse:
        error, params, _ = self._consent_check(request)
        if error is not None:
            return error
        fields: dict[str, str] = {
            key: params[key] for key in ("client_id", "state", "mode") if key in params
        }
        account = self._default_account
        return _html(200, _pages.consent_page(account.name, account.host, fields))

    def _allow(self, request: _Request) -> FakeResponse:
        error, params, integration = self._consent_check(request)
        if error is not None or integration is None:
            return error or self._not_found(request)
        account = self._default_account
        code = self._new_code(account, integration)
        return _redirect(self._success_url(code, account, integration, params.get("state")))

    def _deny(self, request: _Request) -> FakeResponse:
        error, params, integration = self._consent_check(request)
        if error is not None or integration is None:
            return error or self._not_found(request)
        return _redirect(self._denied_url(integration, params.get("state")))

    def _new_code(self, account: FakeAccount, integration: FakeIntegration) -> str:
        code = opaque_secret()
        self._codes[code] = _Secret(self._now() + P.CODE_LIFETIME, account, integration)
        return code

    def _redirect_url(self, integration: FakeIntegration, params: list[tuple[str, str]]) -> str:
        separator = "&" if "?" in integration.redirect_uri else "?"
        return integration.redirect_uri + separator + urlencode(params)

    def _success_url(
        self,
        code: str,
        account: FakeAccount,
        integration: FakeIntegration,
        state: str | None,
        from_widget: bool = False,
    ) -> str:
        params = [("code", code)]
        params += [] if state is None else [("state", state)]
        params += [("referer", account.host), ("client_id", integration.client_id)]
        params += [("from_widget", "1")] if from_widget else []
        return self._redirect_url(integration, params)

    def _denied_url(self, integration: FakeIntegration, state: str | None) -> str:
        params = [("error", "access_denied"), ("client_id", integration.client_id)]
        return self._redirect_url(
            integration, params + ([] if state is None else [("state", state)])
        )

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
            if grant == "refresh_token":
                self._refresh_sends[(_digest(presented), request.host)] += 1
        account = self._account_at(request.host)
        integration = self._integrations.get(params.get("client_id", ""))
        key = (
            None if account is None else account.id,
            None if integration is None else integration.client_id,
        )
        fault = self._take_fault("token", grant, request)
        if fault is not None and fault.kind in _SHORT_CIRCUIT:
            self._token_log[(grant, f"injected_{fault.kind}", *key)] += 1
            return self._finish(_injected(fault.kind), None)
        outcome, tokens = self._token_outcome(request.host, account, grant, params)
        self._token_log[(grant, outcome, *key)] += 1
        if tokens is not None:
            answer = _json(200, tokens)
        elif outcome == "account_moved":
            answer = _json(404, P.API_NOT_FOUND, P.PROBLEM_JSON)
        elif outcome == "blocked":
            answer = _json(403, P.API_FORBIDDEN, P.PROBLEM_JSON)
        else:
            answer = _token_problem(outcome)
        return self._finish(answer, fault)

    def _token_outcome(
        self, host: str, account: FakeAccount | None, grant: str, params: dict[str, str]
    ) -> tuple[str, dict[str, Any] | None]:
        if account is None:
            former = self._former.get(host)
            moved = former is not None and former[1] == "moved"
            return ("account_moved" if moved else "invalid_account"), None
        if account.blocked:
            return "blocked", None
        if grant == "unknown":
            return "bad_grant_type", None
        outcome, integration = self._check_client(params)
        if integration is None:
            return outcome, None
        if grant == "authorization_code":
            return self._redeem_code(params.get("code", ""), account, integration)
        return self._redeem_refresh(params.get("refresh_token", ""), account, integration)

    def _check_client(self, params: dict[str, str]) -> tuple[str, FakeIntegration | None]:
        # The order league/oauth2-server validates in: client id, secret, redirect URI.
        client_id = params.get("client_id", "")
        secret = params.get("client_secret", "")
        redirect_uri = params.get("redirect_uri", "")
        integration = self._integrations.get(client_id)
        if integration is None:
            return ("bad_client_id" if client_id else "missing_client_id"), None
        if not secret:
            return "missing_client_secret", None
        if not hmac.compare_digest(secret.encode(), integration.client_secret.encode()):
            return "bad_secret", None
        if redirect_uri != integration.redirect_uri:
            return ("bad_redirect_uri" if redirect_uri else "missing_redirect_uri"), None
        return "ok", integration

    def _redeem_code(
        self, code: str, account: FakeAccount, integration: FakeIntegration
    ) -> tuple[str, dict[str, Any] | None]:
        record = self._codes.get(code)
        if not code:
            return "missing_code", None
        if record is None:
            return "code_garbage", None
        if record.account is not account:
            return "invalid_account", None  # §4: a code sent to another account's host
        # Expiry, revocation, then the client: the order league/oauth2-server checks in.
        if self._now() >= record.expires_at:
            return "code_expired", None
        if record.spent:
            return "code_revoked", None
        if record.integration is not integration:
            return "code_wrong_client", None
        record.spent = True
        return "ok", self._issue_tokens(account, integration, None)

    def _redeem_refresh(
        self, token: str, account: FakeAccount, integration: FakeIntegration
    ) -> tuple[str, dict[str, Any] | None]:
        record = self._refresh.get(token)
        if not token:
            return "missing_refresh_token", None
        if record is None:
            return "refresh_garbage", None
        if record.account is not account:
            return "invalid_account", None
        if record.integration is not integration:
            return "refresh_wrong_client", None
        if not record.live(self._now()):
            return "token_revoked", None
        self._first_use(record)
        if not self.refresh_grace:
            record.spent = True  # amoCRM (§3): a used refresh token is revoked at once
        elif record.child is not None:
            # Kommo's grace (§3), used again (e.g. its answer was lost): the pair it issued
            # before is replaced, so only the newest child can end the grace. [I]
            record.child.spent = True
        return "ok", self._issue_tokens(account, integration, record)

    def _first_use(self, record: _Secret) -> None:
        """A token issued in a refresh under grace was used: the refresh token it came from
        stops working now (Kommo, protocol §3)."""
        if record.parent is not None:
            record.parent.spent = True
            record.parent = None

    def _issue_tokens(
        self, account: FakeAccount, integration: FakeIntegration, parent: _Secret | None
    ) -> dict[str, Any]:
        issued_at = int(self._now().timestamp())
        expires_in = int(P.ACCESS_LIFETIME.total_seconds())
        claims = self._claims(account, integration, issued_at, issued_at + expires_in)
        access = make_jwt(claims)
        refresh = opaque_secret()
        grace_parent = parent if self.refresh_grace else None
        self._access[access] = _Secret(
            datetime.fromtimestamp(issued_at + expires_in, UTC),
            account,
            integration,
            parent=grace_parent,
        )
        self._refresh[refresh] = _Secret(
            self._now() + P.REFRESH_LIFETIME, account, integration, parent=grace_parent
        )
        if grace_parent is not None:
            grace_parent.child = self._refresh[refresh]
        return {
            "token_type": "Bearer",
            "expires_in": expires_in,
            "server_time": issued_at,
            "access_token": access,
            "refresh_token": refresh,
        }

    def _claims(
        self, account: FakeAccount, integration: FakeIntegration, issued_at: int, expires_at: int
    ) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "aud": integration.client_id,
            "jti": secrets.token_hex(40),
            "iat": issued_at,
            "nbf": issued_at,
            "exp": expires_at,
            "sub": str(account.user_id),
            "account_id": account.id,
            "base_domain": account.domain,
            "api_domain": account.api_domain,
            "version": P.JWT_VERSION,
            "scopes": list(P.SCOPES),
        }
        if not self.api_domain_claim:
            del claims["api_domain"]  # §5: tokens issued before about 2024-08-21
        return claims

    # -- REST API -------------------------------------------------------------------------

    def _api(
        self, request: _Request, produce: Callable[[_Request, FakeAccount], FakeResponse]
    ) -> FakeResponse:
        account = self._account_at(request.host)
        account_id = None if account is None else account.id
        fault = self._take_fault("api", None, request)
        if fault is not None and fault.kind in _SHORT_CIRCUIT:
            self._api_log[(request.path, f"injected_{fault.kind}", account_id)] += 1
            return self._finish(_injected(fault.kind), None)
        outcome, answer = self._api_gate(request, account)
        if answer is None and account is not None:
            answer = produce(request, account)
            outcome = {200: "ok", 204: "no_content"}.get(answer.status, "bad_request")
        answer = answer or self._not_found(request)
        self._api_log[(request.path, outcome, account_id)] += 1
        return self._finish(answer, fault)

    def _api_gate(
        self, request: _Request, account: FakeAccount | None
    ) -> tuple[str, FakeResponse | None]:
        if request.method != "GET":
            return "method_not_allowed", _json(405, P.API_METHOD_NOT_ALLOWED, P.PROBLEM_JSON)
        if account is None:
            former = self._former.get(request.host)
            if former is not None and former[1] == "moved":
                return "not_found", _json(404, P.API_NOT_FOUND, P.PROBLEM_JSON)
            return "unauthorized", _json(401, P.API_UNAUTHORIZED, P.PROBLEM_JSON)
        if account.blocked:
            return "blocked", _json(403, P.API_FORBIDDEN, P.PROBLEM_JSON)
        if not self._within_rate_limit(account):
            return "rate_limited", _json(429, P.API_TOO_MANY, P.PROBLEM_JSON)
        record = self._bearer(request)
        if record is None or record.account is not account or not record.live(self._now()):
            return "unauthorized", _json(401, P.API_UNAUTHORIZED, P.PROBLEM_JSON)
        self._first_use(record)
        if not account.paid:
            return "payment_required", _json(402, P.API_PAYMENT_REQUIRED, P.PROBLEM_JSON)
        return "ok", None

    def _within_rate_limit(self, account: FakeAccount) -> bool:
        if self.rate_limit is None:
            return True
        now = self._monotonic()
        window = account.window
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= self.rate_limit:
            return False  # refused requests do not count, so a client that backs off recovers
        window.append(now)
        return True

    def _bearer(self, request: _Request) -> _Secret | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return self._access.get(token.strip()) if scheme.lower() == "bearer" else None

    def _account_endpoint(self, request: _Request) -> FakeResponse:
        return self._api(request, self._account_payload)

    def _account_payload(self, request: _Request, account: FakeAccount) -> FakeResponse:
        country, currency, symbol = _LOCALES.get(account.domain, _DEFAULT_LOCALE)
        payload = {
            "id": account.id,
            "name": account.name,
            "subdomain": account.subdomain,
            "current_user_id": account.user_id,
            "country": country,
            "currency": currency,
            "currency_symbol": symbol,
            "customers_mode": "disabled",
            "is_unsorted_on": True,
            "is_loss_reason_enabled": True,
            "is_helpbot_enabled": False,
            "is_technical_account": False,
            "contact_name_display_order": 1,
            "_links": {"self": {"href": f"https://{account.host}/api/v4/account"}},
        }
        return _json(200, payload, P.HAL_JSON)

    def _leads_endpoint(self, request: _Request) -> FakeResponse:
        return self._api(request, self._leads_page)

    def _leads_page(self, request: _Request, account: FakeAccount) -> FakeResponse:
        page = _positive_int(request.query.get("page"), 1)
        limit = _positive_int(request.query.get("limit"), P.LEADS_DEFAULT_LIMIT)
        if page is None or limit is None or limit > P.LEADS_MAX_LIMIT:
            return _json(400, P.API_BAD_REQUEST, P.PROBLEM_JSON)
        chunk = account.leads[(page - 1) * limit : page * limit]
        if not chunk:
            return FakeResponse(204)  # amoCRM's "nothing here": no body at all
        base = f"https://{account.host}/api/v4/leads"
        links = {"self": {"href": f"{base}?page={page}&limit={limit}"}}
        if page * limit < len(account.leads):
            links["next"] = {"href": f"{base}?page={page + 1}&limit={limit}"}
        leads = [lead | {"_links": {"self": {"href": f"{base}/{lead['id']}"}}} for lead in chunk]
        payload = {"_page": page, "_links": links, "_embedded": {"leads": leads}}
        return _json(200, payload, P.HAL_JSON)

    # -- account lookup (protocol §5) -----------------------------------------------------

    def _lookup_endpoint(self, request: _Request) -> FakeResponse:
        if not any(is_api_host(request.host, domain) for domain in self._domains):
            return self._not_found(request)
        fault = self._take_fault("lookup", None, request)
        if fault is not None and fault.kind in _SHORT_CIRCUIT:
            self._lookup_log[(request.host, f"injected_{fault.kind}")] += 1
            return self._finish(_injected(fault.kind), None)
        outcome, answer = self._lookup(request)
        self._lookup_log[(request.host, outcome)] += 1
        return self._finish(answer, fault)

    def _lookup(self, request: _Request) -> tuple[str, FakeResponse]:
        if request.method != "GET":
            return "method_not_allowed", _json(405, P.API_METHOD_NOT_ALLOWED, P.PROBLEM_JSON)
        if "authorization" in request.headers:
            self._lookup_authorization += 1
        token = request.headers.get("x-refresh-token", "").strip()
        if token:
            self._lookup_presented[_digest(token)] += 1
        record = self._refresh.get(token) if token else None
        if record is None or not record.live(self._now()):
            return "unauthorized", _json(401, P.API_UNAUTHORIZED, P.PROBLEM_JSON)
        account = record.account
        if account.blocked:
            return "blocked", _json(403, P.API_FORBIDDEN, P.PROBLEM_JSON)
        payload = {
            "id": account.id,
            "subdomain": account.subdomain,
            "domain": account.host,  # [I] §5: the SDK treats it like `referer`, a full host
            "top_level_domain": account.domain.rpartition(".")[2],
        }
        return "ok", _json(200, payload)

    # -- programmatic consent -------------------------------------------------------------

    def authorization_url(
        self,
        state: str | None = None,
        *,
        mode: str = "post_message",
        integration: IntegrationRef | None = None,
    ) -> str:
        """The consent page URL a library would send the user to (on www.{domain}, §1).

        Args:
            state: the OAuth state to carry, if any.
            mode: "post_message" (the SDK's default) or "popup".
            integration: whose client id to put in it; default: the default integration.

        Raises:
            KeyError: no such integration.
        """
        params = [("client_id", self.integration(integration).client_id)]
        params += [] if state is None else [("state", state)]
        return f"https://{self.consent_host}/oauth?" + urlencode([*params, ("mode", mode)])

    def issue_code(
        self,
        *,
        account: AccountRef | None = None,
        integration: IntegrationRef | None = None,
    ) -> str:
        """Issue a fresh authorization code (valid 20 minutes, single use, §3) and return it.

        Args:
            account: the account it grants (default: the default account); it is redeemable
                only on that account's host (§4 `Invalid account` elsewhere).
            integration: the integration it is issued to (default: the default integration).

        Raises:
            KeyError: no such account or integration.
        """
        with self._lock:
            return self._new_code(self.account(account), self.integration(integration))

    def authorize(
        self,
        state: str | None = None,
        *,
        from_widget: bool = False,
        account: AccountRef | None = None,
        integration: IntegrationRef | None = None,
    ) -> str:
        """Press "Allow" without a browser: return the full redirect URL with a fresh code (§2).

        Args:
            state: the state the authorization URL carried (echoed back when given).
            from_widget: simulate a widget/marketplace install: adds `from_widget=1` and,
                as amoCRM does, never carries a state.
            account: the account granting access (default: the default account); its host
                is the redirect's `referer`.
            integration: the integration being installed (default: the default one); its
                redirect URI and client id are used.

        Returns:
            `{redirect_uri}?code=...&state=...&referer={account host}&client_id=...`

        Raises:
            ValueError: a state was given together with from_widget=True.
            KeyError: no such account or integration.
        """
        if from_widget and state is not None:
            raise ValueError("widget installs carry no state")
        with self._lock:
            handle, installed = self.account(account), self.integration(integration)
            code = self._new_code(handle, installed)
            return self._success_url(code, handle, installed, state, from_widget)

    def deny(self, state: str | None = None, *, integration: IntegrationRef | None = None) -> str:
        """Press "Deny" (§2): return `{redirect_uri}?error=access_denied&client_id=...`
        (plus `&state=...` when given)."""
        return self._denied_url(self.integration(integration), state)

    # -- knobs ----------------------------------------------------------------------------

    def fail_next(
        self,
        kind: FaultKind,
        times: int = 1,
        grant: str | None = None,
        *,
        endpoint: str = "token",
        path: str | None = None,
        account: AccountRef | None = None,
        fields: Mapping[str, Any] | None = None,
        chunk_size: int = 16,
        every: float = 1.0,
    ) -> None:
        """Script the next matching request(s). Faults queue up; the first match applies.

        Args:
            kind: Answered instead of the request, nothing processed:
                "500": a 500 HTML page. "html": 200 with an HTML body. "429": amoCRM's 429
                problem+json with `retry_after: 300` (§9). "403_html": an nginx-style 403 HTML
                page, as a blocked client gets (§9). "timeout_before": the request never
                arrives (transports raise httpx.ConnectTimeout; the loopback server closes
                the connection).
                Processed normally, then the answer is changed:
                "lost_answer": the work is done (a code consumed, a refresh token rotated)
                but the answer is lost (httpx.ReadTimeout in-process; the loopback server
                closes the connection without answering). "override": `fields` are merged
                into the JSON object answered (e.g. `{"expires_in": RawJSON("1e400")}`,
                `{"access_token": "токен"}`, `{"id": 2**70}`); other bodies are kept.
                "slow_body": the loopback server sends the headers at once, then the body
                `chunk_size` bytes at a time, waiting `every` seconds before each chunk (a
                total-time bound test); in-process transports deliver it whole.
            times: how many matching requests it applies to.
            grant: only requests of this grant_type ("authorization_code" or
                "refresh_token"); None for any. Token endpoint only.
            endpoint: "token" (POST /oauth2/access_token), "api" (/api/v4/*) or "lookup"
                (GET /oauth2/account/current/subdomain, §5).
            path: only requests to this path, e.g. "/api/v4/account"; None for any.
            account: only requests addressed to this account's current host; None for any.
            fields: the fields for "override" (required there, refused elsewhere).
            chunk_size: "slow_body": bytes per chunk (at least 1).
            every: "slow_body": seconds before each chunk (not negative).

        Raises:
            ValueError: an unknown kind, grant or endpoint, times < 1, or arguments that do
                not fit the kind.
            KeyError: no such account.
        """
        if kind not in _FAULT_KINDS or endpoint not in _ENDPOINTS or times < 1:
            raise ValueError(f"bad fault: kind={kind!r} endpoint={endpoint!r} times={times}")
        if grant is not None and (grant not in P.GRANTS or endpoint != "token"):
            raise ValueError(f"bad grant filter {grant!r} for endpoint {endpoint!r}")
        if (kind == "override") != (fields is not None):
            raise ValueError("fields go with kind='override', and only with it")
        if kind == "slow_body" and (chunk_size < 1 or every < 0):
            raise ValueError("slow_body needs chunk_size >= 1 and every >= 0")
        trickle = (chunk_size, every) if kind == "slow_body" else None
        with self._lock:
            handle = None if account is None else self.account(account)
            frozen_fields = None if fields is None else dict(fields)
            self._faults.append(
                _Fault(kind, times, endpoint, grant, path, handle, trickle, frozen_fields)
            )

    def expire_access_tokens(
        self,
        *,
        account: AccountRef | None = None,
        integration: IntegrationRef | None = None,
    ) -> int:
        """Make every access token issued so far expired (server-side); return how many.

        The tokens' `exp` claims are left as they were: this is what a client sees when
        amoCRM stops honouring a token early, and only a 401 tells it (§8, §9).

        Args:
            account: only this account's tokens; None for every account.
            integration: only this integration's tokens; None for every integration.
        """
        with self._lock:
            now = self._now()
            live = [r for r in self._select(self._access, account, integration) if r.live(now)]
            for record in live:
                record.expires_at = now
            return len(live)

    def revoke_refresh_tokens(
        self,
        *,
        account: AccountRef | None = None,
        integration: IntegrationRef | None = None,
    ) -> int:
        """Revoke every unspent refresh token; return how many were revoked.

        Args:
            account: only this account's tokens; None for every account.
            integration: only this integration's tokens; None for every integration.
        """
        with self._lock:
            live = [r for r in self._select(self._refresh, account, integration) if not r.spent]
            for record in live:
                record.spent = True
            return len(live)

    def _select(
        self,
        table: Mapping[str, _Secret],
        account: AccountRef | None,
        integration: IntegrationRef | None,
    ) -> list[_Secret]:
        handle = None if account is None else self.account(account)
        installed = None if integration is None else self.integration(integration)
        return [
            record
            for record in table.values()
            if handle in (None, record.account) and installed in (None, record.integration)
        ]

    def uninstall(
        self,
        *,
        account: AccountRef | None = None,
        integration: IntegrationRef | None = None,
    ) -> dict[str, str]:
        """Uninstall an integration from an account: revoke every code and token of the pair.

        Args:
            account: default: the default account.
            integration: default: the default integration.

        Returns:
            The query amoCRM sends to the integration's disconnect URL (protocol §6):
            `client_uuid`, `account_id` and `signature` =
            hex(HMAC-SHA256(key=client_secret, msg=f"{client_id}|{account_id}")), with that
            integration's secret. amoCRM sends it with the User-Agent `HOOK_USER_AGENT`.

        Raises:
            KeyError: no such account or integration.
        """
        with self._lock:
            handle, installed = self.account(account), self.integration(integration)
            for table in (self._codes, self._access, self._refresh):
                for record in self._select(table, handle, installed):
                    record.spent = True
        return self.hook_query(account=handle, integration=installed)

    def hook_query(
        self,
        *,
        account: AccountRef | None = None,
        integration: IntegrationRef | None = None,
    ) -> dict[str, str]:
        """The signed disconnect-hook query for (integration, account), revoking nothing (§6)."""
        handle, installed = self.account(account), self.integration(integration)
        message = f"{installed.client_id}|{handle.id}".encode()
        key = installed.client_secret.encode()
        return {
            "client_uuid": installed.client_id,
            "account_id": str(handle.id),
            "signature": hmac.new(key, message, hashlib.sha256).hexdigest(),
        }

    def add_leads(
        self, leads: LeadsSpec = 1, *, account: AccountRef | None = None
    ) -> list[dict[str, Any]]:
        """Add leads to an account and return them (copies).

        Args:
            leads: how many to generate (id, name "Lead #<id>", price id*1000, ...), or the
                leads' fields; missing fields, including `id`, are filled in.
            account: default: the default account.

        Raises:
            KeyError: no such account.
        """
        specs: Iterable[Mapping[str, Any]] = (
            ({} for _ in range(leads)) if isinstance(leads, int) else leads
        )
        with self._lock:
            handle = self.account(account)
            added = []
            for fields in specs:
                added.append(self._new_lead(handle, fields))
                handle.leads.append(added[-1])  # now, so the next generated id follows it
            return [dict(lead) for lead in added]

    def _new_lead(self, account: FakeAccount, fields: Mapping[str, Any]) -> dict[str, Any]:
        lead_id = fields.get("id", max((lead["id"] for lead in account.leads), default=0) + 1)
        now = int(self._now().timestamp())
        defaults = {
            "id": lead_id,
            "name": f"Lead #{lead_id}",
            "price": lead_id * 1000,
            "responsible_user_id": account.user_id,
            "status_id": 142,
            "pipeline_id": 1,
            "account_id": account.id,
            "created_at": now,
            "updated_at": now,
        }
        return defaults | dict(fields)

    # -- observation ----------------------------------------------------------------------

    @property
    def token_calls(self) -> collections.Counter[tuple[str, str]]:
        """Token-endpoint calls by (grant_type, outcome), over all accounts and integrations;
        a snapshot copy (`token_call_count` filters by account and integration).

        grant_type is "authorization_code", "refresh_token" or "unknown". outcome is "ok",
        a key of the error table (e.g. "code_revoked", "bad_secret", "invalid_account",
        "token_revoked", "code_wrong_client", "refresh_wrong_client"), "blocked" (403),
        "account_moved" (404 on a moved account's old host) or "injected_500" /
        "injected_html" / "injected_429" / "injected_403_html" / "injected_timeout_before".
        "lost_answer", "override" and "slow_body" faults record the real outcome.
        """
        with self._lock:
            calls: collections.Counter[tuple[str, str]] = collections.Counter()
            for (grant, outcome, _, _), count in self._token_log.items():
                calls[(grant, outcome)] += count
            return calls

    def token_call_count(
        self,
        grant: str | None = None,
        outcome: str | None = None,
        *,
        account: AccountRef | None = None,
        integration: IntegrationRef | None = None,
    ) -> int:
        """How many token calls matched `grant` and `outcome` (None matches any).

        Args:
            account: only calls addressed to this account's host (as it was then); None: any.
            integration: only calls whose `client_id` was this integration's; None: any.
        """
        with self._lock:
            account_id = None if account is None else self.account(account).id
            client_id = None if integration is None else self.integration(integration).client_id
            return sum(
                count
                for (call_grant, call_outcome, call_account, call_client), count in (
                    self._token_log.items()
                )
                if grant in (None, call_grant)
                and outcome in (None, call_outcome)
                and account_id in (None, call_account)
                and client_id in (None, call_client)
            )

    def token_calls_for(self, secret: str) -> int:
        """How many token-endpoint calls carried `secret` as their `code` or `refresh_token`.

        Every call counts, whatever was answered (injected faults included): the library sent
        the secret. A correct client sends each code and each refresh token at most once, so
        `token_calls_for(code) <= 1` is the exactly-once check for one particular code.
        """
        with self._lock:
            return self._presented[_digest(secret)]

    def refresh_sends(self, refresh_token: str, *, host: str | None = None) -> int:
        """How many times `refresh_token` was sent with grant_type=refresh_token, whatever the
        answer; with `host`, only sends to that host (e.g. the SDK's one retry on the new host
        after a lookup, protocol §5)."""
        digest = _digest(refresh_token)
        with self._lock:
            return sum(
                count
                for (sent, sent_host), count in self._refresh_sends.items()
                if sent == digest and host in (None, sent_host.lower())
            )

    @property
    def lookup_calls(self) -> collections.Counter[tuple[str, str]]:
        """Account lookups (§5) by (API host, outcome): "ok", "unauthorized", "blocked",
        "method_not_allowed", "injected_*". A snapshot copy."""
        with self._lock:
            return collections.Counter(self._lookup_log)

    def lookup_calls_for(self, refresh_token: str) -> int:
        """How many lookups carried `refresh_token` in `X-Refresh-Token`."""
        with self._lock:
            return self._lookup_presented[_digest(refresh_token)]

    @property
    def lookups_with_authorization(self) -> int:
        """Lookups that sent an `Authorization` header (§5: only `X-Refresh-Token` is sent)."""
        with self._lock:
            return self._lookup_authorization

    @property
    def api_calls(self) -> collections.Counter[tuple[str, str]]:
        """API calls by (path, outcome); outcomes "ok", "no_content", "unauthorized",
        "rate_limited", "bad_request", "method_not_allowed", "blocked" (403),
        "payment_required" (402), "not_found" (a moved account's old host), "injected_*".
        Over all accounts; a snapshot copy (`api_call_count` filters by account)."""
        with self._lock:
            calls: collections.Counter[tuple[str, str]] = collections.Counter()
            for (path, outcome, _), count in self._api_log.items():
                calls[(path, outcome)] += count
            return calls

    def api_call_count(
        self,
        path: str | None = None,
        outcome: str | None = None,
        *,
        account: AccountRef | None = None,
    ) -> int:
        """How many API calls matched `path`, `outcome` and the addressed `account` (None: any)."""
        with self._lock:
            account_id = None if account is None else self.account(account).id
            return sum(
                count
                for (call_path, call_outcome, call_account), count in self._api_log.items()
                if path in (None, call_path)
                and outcome in (None, call_outcome)
                and account_id in (None, call_account)
            )

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
        """Whether `token` is live (issued, unrevoked, unexpired), whatever the account's
        block or payment state."""
        with self._lock:
            record = self._access.get(token)
            return record is not None and record.live(self._now())

    def is_refresh_token_valid(self, token: str) -> bool:
        """Whether a refresh with `token` would succeed now (on its account's current host)."""
        with self._lock:
            record = self._refresh.get(token)
            return record is not None and record.live(self._now())

    # -- wrappers -------------------------------------------------------------------------

    def transport(self) -> httpx.BaseTransport:
        """An in-process sync httpx transport: `httpx.Client(transport=fake.transport())`.

        Hosts outside `domains` raise httpx.ConnectError; latency uses time.sleep.
        """
        return FakeTransport(self)

    def async_transport(self) -> httpx.AsyncBaseTransport:
        """An in-process async httpx transport; latency uses asyncio.sleep."""
        return AsyncFakeTransport(self)

    def wsgi_app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """The fake as a WSGI application; the `Host` header says which host was addressed.

        Latency sleeps in the server's worker thread. The "timeout_before" and "lost_answer"
        faults close the connection without an answer under `serve()`; other WSGI servers
        answer them with their own 500 page. A "slow_body" answer is yielded chunk by chunk.
        """
        capture = _Capture(self)
        body = wsgi_call(capture, environ, start_response)
        answer = capture.answer
        if answer is not None and answer.trickle is not None:
            return _drip(answer.body, *answer.trickle)
        return body

    def serve(self) -> contextlib.AbstractContextManager[ServedFake]:
        """Run the fake on 127.0.0.1 (ephemeral port) in a daemon thread.

        Usage: `with fake.serve() as served: httpx.Client(transport=served.transport())`.
        Requests to the loopback URL itself (e.g. from a real browser) are treated as
        addressed to www.{domain}: use `served.local_url(...)` for the consent page.
        """
        return serve(self, self.wsgi_app)
