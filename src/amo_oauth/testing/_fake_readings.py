"""What a test reads back from a `FakeAmoCRM`: every call counted, every request seen, and
whether a code or token is still good.

`FakeReadings` is the documented public face of these; the counts are kept by `_tally.Tally`.
"""

from __future__ import annotations

import collections

from ._accounts import FakeIntegration
from ._core import Core
from ._directory import AccountRef, IntegrationRef
from ._site_button import SecretsPost
from ._types import Issued, RequestRecord
from ._wire import digest


class FakeReadings:
    """The observing half of `FakeAmoCRM`'s public methods (see `FakeAmoCRM`)."""

    _core: Core

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
        with self._core.lock:
            return self._core.tally.token_calls()

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
        with self._core.lock:
            directory = self._core.directory
            account_id = None if account is None else directory.account(account).id
            client = None if integration is None else directory.integration(integration)
            client_id = None if client is None else client.client_id
            return self._core.tally.token_call_count(grant, outcome, account_id, client_id)

    def token_calls_for(self, secret: str) -> int:
        """How many token-endpoint calls carried `secret` as their `code` or `refresh_token`.

        Every call counts, whatever was answered (injected faults included): the library sent
        the secret. A correct client sends each code and each refresh token at most once, so
        `token_calls_for(code) <= 1` is the exactly-once check for one particular code.
        """
        with self._core.lock:
            return self._core.tally.presented[digest(secret)]

    def refresh_sends(self, refresh_token: str, *, host: str | None = None) -> int:
        """How many times `refresh_token` was sent with grant_type=refresh_token, whatever the
        answer; with `host`, only sends to that host (e.g. the SDK's one retry on the new host
        after a lookup, protocol §5)."""
        with self._core.lock:
            return self._core.tally.refresh_sends_of(refresh_token, host)

    @property
    def lookup_calls(self) -> collections.Counter[tuple[str, str]]:
        """Account lookups (§5) by (API host, outcome): "ok", "unauthorized", "blocked",
        "method_not_allowed", "injected_*". A snapshot copy."""
        with self._core.lock:
            return collections.Counter(self._core.tally.lookup_log)

    def lookup_calls_for(self, refresh_token: str) -> int:
        """How many lookups carried `refresh_token` in `X-Refresh-Token`."""
        with self._core.lock:
            return self._core.tally.lookup_presented[digest(refresh_token)]

    @property
    def lookups_with_authorization(self) -> int:
        """Lookups that sent an `Authorization` header (§5: only `X-Refresh-Token` is sent)."""
        with self._core.lock:
            return self._core.tally.lookup_authorization

    @property
    def api_calls(self) -> collections.Counter[tuple[str, str]]:
        """API calls by (path, outcome); outcomes "ok", "no_content", "unauthorized",
        "rate_limited", "bad_request", "method_not_allowed", "blocked" (403),
        "payment_required" (402), "not_found" (a moved account's old host), "injected_*".
        Over all accounts; a snapshot copy (`api_call_count` filters by account)."""
        with self._core.lock:
            return self._core.tally.api_calls()

    def api_call_count(
        self,
        path: str | None = None,
        outcome: str | None = None,
        *,
        account: AccountRef | None = None,
    ) -> int:
        """How many API calls matched `path`, `outcome` and the addressed `account` (None: any)."""
        with self._core.lock:
            account_id = None if account is None else self._core.directory.account(account).id
            return self._core.tally.api_call_count(path, outcome, account_id)

    def api_calls_with(self, access_token: str) -> int:
        """How many API calls (`/api/v4/...`) carried `access_token` as their bearer token,
        whatever was answered (a 401 included): the client sent it."""
        with self._core.lock:
            return self._core.tally.bearer_presented[digest(access_token)]

    @property
    def issued(self) -> Issued:
        """Every code, access token and refresh token the fake has issued so far, in order,
        spent or not: the values a leak test looks for in logs and pages (they are secrets:
        never print them)."""
        with self._core.lock:
            grants = self._core.grants
            return Issued(tuple(grants.codes), tuple(grants.access), tuple(grants.refresh))

    @property
    def faults_injected(self) -> collections.Counter[str]:
        """How many times each `fail_next` kind fired; a snapshot copy."""
        with self._core.lock:
            return collections.Counter(self._core.faults.injected)

    @property
    def requests(self) -> tuple[RequestRecord, ...]:
        """Every request seen, in order: method, host, path and status, never secrets."""
        with self._core.lock:
            return tuple(self._core.tally.requests)

    @property
    def codes_issued(self) -> int:
        """Authorization codes issued so far (consent page and programmatic)."""
        with self._core.lock:
            return len(self._core.grants.codes)

    @property
    def codes_exchanged(self) -> int:
        """Authorization codes successfully exchanged for tokens."""
        return self.token_calls[("authorization_code", "ok")]

    def is_access_token_valid(self, token: str) -> bool:
        """Whether `token` is live (issued, unrevoked, unexpired), whatever the account's
        block or payment state."""
        with self._core.lock:
            return self._core.grants.live_access(token) is not None

    def is_refresh_token_valid(self, token: str) -> bool:
        """Whether a refresh with `token` would succeed now (on its account's current host)."""
        with self._core.lock:
            return self._core.grants.live_refresh(token) is not None

    @property
    def site_button_integrations(self) -> tuple[FakeIntegration, ...]:
        """The integrations site-button installs made (metadata mode, §7), in order."""
        with self._core.lock:
            return tuple(self._core.directory.made_by_button)

    @property
    def secrets_posts(self) -> tuple[SecretsPost, ...]:
        """Every credentials post sent to a `secrets_uri` (§7), in order, with its answer."""
        with self._core.lock:
            return tuple(self._core.tally.secrets_posts)
