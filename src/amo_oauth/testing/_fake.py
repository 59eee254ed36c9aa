"""FakeAmoCRM: a faithful in-process fake of amoCRM's OAuth server and a slice of its API.

One thread-safe request handler (`FakeAmoCRM.handle`) routes every request to the part whose
job it is; the httpx transports, the WSGI app and the loopback server are thin wrappers around
it.

The parts share one `_core.Core` (one lock over all state): the accounts and integrations
(`_directory`), the codes and tokens (`_grants`), the scripted faults (`_faults`) and the
counts (`_tally`), served by one object per endpoint: the consent pages, the button script and
the metadata-mode install (`_consent`), the token endpoint (`_token_endpoint`), the API and the
account lookup (`_api`). The public methods come in documented parts, `FakeSetup`
(`_fake_setup`: what a test does to the fake), `FakeReadings` (`_fake_readings`: what it reads
back) and `FakeSiteButton` (`_fake_button`: the site button's install, §7); this module adds
the identity of the default account and integration, the routing and the wrappers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final
from wsgiref.types import StartResponse, WSGIEnvironment

import httpx

from . import _protocol as P
from ._accounts import FakeAccount, FakeIntegration
from ._api import Api
from ._clock import Clock, system_clock
from ._consent import Consent
from ._core import Core
from ._directory import LeadsSpec
from ._fake_button import FakeSiteButton
from ._fake_readings import FakeReadings
from ._fake_setup import FakeSetup
from ._keys_tab import KeysTab
from ._server import ServedFake, serve, wsgi_call
from ._site_button import INSTALL_PATH, SCRIPT_PATHS
from ._token_endpoint import TokenEndpoint
from ._transport import AsyncFakeTransport, FakeTransport
from ._types import FakeResponse, Handler, RequestRecord
from ._wire import Request, not_found

Route = Callable[[Request], FakeResponse]
"""One path's handler (the caller holds the lock)."""


def _not_found(request: Request) -> FakeResponse:
    return not_found()


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


class FakeAmoCRM(FakeSetup, FakeReadings, FakeSiteButton):
    """A faithful fake amoCRM (or Kommo): accounts, integrations, OAuth and a slice of the API.

    It answers the OAuth consent page, the token endpoint, `GET /api/v4/account`,
    `GET /api/v4/leads`, the account lookup `GET /oauth2/account/current/subdomain`, and the
    site button's script and metadata-mode install (§7; `install_site_button`) exactly
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
      * The consent page (a browser) grants access to the default account, or with several
        accounts to the one picked in its list (the first, the default one, unless changed).
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
        rotate_refresh_tokens: True (default, §3): every refresh answers a new refresh token.
            False: a refresh answers no `refresh_token` and the one sent keeps working, as
            RFC 6749 §6 allows (settable).
        send_expires_in: True (default, §3): token answers carry `expires_in`. False: they
            omit it, as RFC 6749 §5.1 allows; the access token's JWT `exp` still says when it
            expires (settable).
        secrets_transport: what the served install page (`/oauth/install`, "Allow" on a
            metadata-mode site button, §7) posts the new credentials through, e.g.
            `httpx.WSGITransport(app=...)`; None (default): real HTTP, to a loopback
            `secrets_uri` only (settable).

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
        rotate_refresh_tokens: bool = True,
        send_expires_in: bool = True,
        secrets_transport: httpx.BaseTransport | None = None,
    ) -> None:
        if rate_limit is not None and rate_limit < 1:
            raise ValueError("rate_limit must be at least 1, or None for no limit")
        if latency < 0:
            raise ValueError("latency must not be negative")
        self.rate_limit = rate_limit
        self.latency = latency
        self.refresh_grace = refresh_grace
        self.api_domain_claim = api_domain_claim
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.send_expires_in = send_expires_in
        self.secrets_transport = secrets_transport
        self._core = Core(self, clock or system_clock, monotonic, user_id)
        self._routes, self._open_routes = self._route_tables()
        self.add_integration(client_id, client_secret, redirect_uri)
        self.add_account(
            subdomain,
            domain=domain,
            account_id=account_id,
            name=account_name,
            user_id=user_id,
            api_domain=api_domain,
            leads=leads,
        )

    def _route_tables(self) -> tuple[dict[str, Route], dict[str, Route]]:
        """The routes answered under the fake's lock, and those that take it themselves
        (the metadata-mode install, whose post to `secrets_uri` must not hold it)."""
        consent, api = Consent(self._core, self._served_install), Api(self._core)
        scripts = dict.fromkeys(SCRIPT_PATHS, consent.script)
        return {
            **scripts,
            "/oauth": consent.page,
            "/oauth/allow": consent.allow,
            "/oauth/deny": consent.deny,
            "/keys": KeysTab(self._core).page,
            "/oauth2/access_token": TokenEndpoint(self._core),
            "/api/v4/account": api.account,
            "/api/v4/leads": api.leads,
            P.LOOKUP_PATH: api.lookup,
        }, {INSTALL_PATH: consent.install}

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
        return self.account()

    @property
    def default_integration(self) -> FakeIntegration:
        """The integration built from the constructor's arguments."""
        return self.integration()

    @property
    def accounts(self) -> tuple[FakeAccount, ...]:
        """Every account, the default one first."""
        with self._core.lock:
            return tuple(self._core.directory.accounts)

    @property
    def integrations(self) -> tuple[FakeIntegration, ...]:
        """Every registered integration, the default one first."""
        with self._core.lock:
            return tuple(self._core.directory.integrations.values())

    @property
    def client_id(self) -> str:
        """The default integration's client id."""
        return self.default_integration.client_id

    @property
    def client_secret(self) -> str:
        """The default integration's secret, for configuring the code under test."""
        return self.default_integration.client_secret

    @property
    def redirect_uri(self) -> str:
        """The default integration's redirect URI."""
        return self.default_integration.redirect_uri

    @property
    def subdomain(self) -> str:
        """The default account's current subdomain."""
        return self.default_account.subdomain

    @property
    def domain(self) -> str:
        """The default account's current base domain, e.g. "amocrm.ru"."""
        return self.default_account.domain

    @property
    def account_id(self) -> int:
        """The default account's id."""
        return self.default_account.id

    @property
    def account_name(self) -> str:
        """The default account's display name."""
        return self.default_account.name

    @property
    def user_id(self) -> int:
        """The installing user's id in the default account."""
        return self._core.directory.user_id

    @property
    def account_host(self) -> str:
        """The default account's host, e.g. "test.amocrm.ru": where its token endpoint answers."""
        return self.default_account.host

    @property
    def api_domain(self) -> str:
        """The default account's shared API host (tokens' `api_domain` claim), e.g.
        "api-b.amocrm.ru" (protocol §3, §5)."""
        return self.default_account.api_domain

    @property
    def domains(self) -> frozenset[str]:
        """Every base domain served: those of all accounts, past and present."""
        with self._core.lock:
            return frozenset(self._core.directory.domains)

    def serves_host(self, host: str) -> bool:
        """Whether requests to `host` are answered by this fake (any host under `domains`)."""
        with self._core.lock:
            return self._core.directory.serves_host(host)

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
        request = Request.parse(method, url, headers or {}, body)
        open_route = self._open_routes.get(request.path)
        answer = None if open_route is None else open_route(request)
        with self._core.lock:
            if answer is None:
                answer = self._routes.get(request.path, _not_found)(request)
            self._core.tally.requests.append(
                RequestRecord(
                    request.method,
                    request.host,
                    request.path,
                    answer.status or None,
                    answer.dropped,
                )
            )
        return answer

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

    def serve(self, *, port: int = 0) -> contextlib.AbstractContextManager[ServedFake]:
        """Run the fake on 127.0.0.1 in a daemon thread, on `port` (0, the default: a free one).

        Usage: `with fake.serve() as served: httpx.Client(transport=served.transport())`.
        Requests to the loopback URL itself (e.g. from a real browser) are treated as
        addressed to www.{domain}: use `served.local_url(...)` for the consent page.
        Entering the block raises OSError when `port` is taken.
        """
        return serve(self, self.wsgi_app, port=port)
