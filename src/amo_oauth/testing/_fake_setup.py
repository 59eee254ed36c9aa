"""What a test does to a `FakeAmoCRM`: accounts and integrations, consent without a browser,
scripted faults, revocations and leads.

`FakeSetup` is the documented public face of these; the work is done by the parts in `Core`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from . import _protocol as P
from ._accounts import FakeAccount, FakeIntegration
from ._api import new_lead
from ._consent import authorization_url, denied_url, success_url
from ._core import Core
from ._directory import AccountRef, IntegrationRef, LeadsSpec
from ._faults import Fault, check_fault
from ._types import FaultKind


class FakeSetup:
    """The arranging half of `FakeAmoCRM`'s public methods (see `FakeAmoCRM`)."""

    _core: Core

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
        with self._core.lock:
            account = self._core.directory.add_account(
                subdomain,
                domain=domain,
                account_id=account_id,
                name=name,
                user_id=user_id,
                api_domain=api_domain,
            )
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
        with self._core.lock:
            return self._core.directory.add_integration(client_id, client_secret, redirect_uri)

    def account(self, account: AccountRef | None = None) -> FakeAccount:
        """The account handle for `account` (a handle or an id); None: the default account.

        Raises:
            KeyError: no such account in this fake.
        """
        with self._core.lock:
            return self._core.directory.account(account)

    def integration(self, integration: IntegrationRef | None = None) -> FakeIntegration:
        """The integration for `integration` (a handle or a client id); None: the default one.

        Raises:
            KeyError: no such integration in this fake.
        """
        with self._core.lock:
            return self._core.directory.integration(integration)

    def rename_account(self, account: AccountRef | None, new_subdomain: str) -> FakeAccount:
        """Give an account a new subdomain on the same domain; its tokens keep working there.

        Afterwards the old host answers the token endpoint `400 Invalid account` (§4) and the
        API `401`; the new host answers with the same tokens. Tokens' `api_domain` claims are
        unchanged, so the lookup (§5) still finds the account.

        Raises:
            KeyError: no such account. ValueError: a bad subdomain, or its host is taken.
        """
        with self._core.lock:
            handle = self._core.directory.account(account)
            self._core.directory.rename(handle, new_subdomain)
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
        with self._core.lock:
            handle = self._core.directory.account(account)
            self._core.directory.move(handle, domain, subdomain, api_domain)
            return handle

    def block_account(self, account: AccountRef | None = None) -> None:
        """Block an account: 403 on every API call, token call and lookup (protocol §9).

        The body is problem+json `{"title":"Forbidden","type":"https://httpstatus.es/403",
        "status":403,"detail":"Account is blocked"}` ([I]: §9 names only the status). For an
        nginx-style HTML 403 page use `fail_next("403_html", ...)`. Nothing is consumed.
        """
        with self._core.lock:
            self._core.directory.account(account)._set_blocked(True)

    def unblock_account(self, account: AccountRef | None = None) -> None:
        """Lift `block_account`: the account answers normally again, with the same tokens."""
        with self._core.lock:
            self._core.directory.account(account)._set_blocked(False)

    def set_paid(self, paid: bool, account: AccountRef | None = None) -> None:
        """Mark an account paid or unpaid. Unpaid: 402 on API calls (§9), problem+json
        `{"title":"Payment Required",...,"status":402}` ([I] body); OAuth keeps working."""
        with self._core.lock:
            self._core.directory.account(account)._set_paid(paid)

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
        with self._core.lock:
            handle = self._core.directory.account(account)
            added = []
            for fields in specs:
                added.append(new_lead(handle, fields, int(self._core.now().timestamp())))
                handle.leads.append(added[-1])  # now, so the next generated id follows it
            return [dict(lead) for lead in added]

    # -- programmatic consent -------------------------------------------------------------

    @property
    def consent_host(self) -> str:
        """The host of the consent page, e.g. "www.amocrm.ru" (protocol §1)."""
        return f"www.{self.account().domain}"

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
        client_id = self.integration(integration).client_id
        return authorization_url(self.consent_host, client_id, state, mode)

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
        with self._core.lock:
            handle, installed = self._pair(account, integration)
            return self._core.grants.new_code(handle, installed)

    def issue_keys_tab_code(
        self,
        *,
        account: AccountRef | None = None,
        integration: IntegrationRef | None = None,
    ) -> str:
        """The authorization code an admin copies from the integration's "Keys and scopes" tab
        (§8): valid 20 minutes, single use, exchanged at the account host's token endpoint
        with `grant_type=authorization_code` and the integration's `redirect_uri` (§3), like
        a redirect's code. What `connect_with_code` takes.

        Args:
            account: the account whose admin copies it (default: the default account).
            integration: the integration whose tab shows it (default: the default one).

        Raises:
            KeyError: no such account or integration.
        """
        return self.issue_code(account=account, integration=integration)

    def issue_long_lived_token(
        self,
        *,
        lifetime: timedelta = timedelta(days=365),
        account: AccountRef | None = None,
        integration: IntegrationRef | None = None,
    ) -> str:
        """Issue a long-lived token as an admin does in the integration's "Keys and scopes"
        tab (§8) and return it: a JWT (claims as an access token's, `exp` = now + `lifetime`
        on the fake's clock), used as a bearer token on the account host, no refresh token.
        The API answers 401 once it expires (`clock` past `exp`) or is revoked.

        Args:
            lifetime: 1 day to 5 years, as the tab offers (whole seconds are kept).
            account: the account it opens (default: the default account).
            integration: the private integration it is issued for (default: the default one).

        Raises:
            ValueError: `lifetime` outside 1 day .. 5 years.
            KeyError: no such account or integration.
        """
        if not P.LONG_LIVED_MIN <= lifetime <= P.LONG_LIVED_MAX:
            raise ValueError("a long-lived token lives 1 day to 5 years")
        with self._core.lock:
            handle, installed = self._pair(account, integration)
            return self._core.grants.new_long_lived(handle, installed, lifetime)

    def revoke_long_lived_token(self, token: str) -> None:
        """Revoke a long-lived token, as an admin does in the tab (§8): the API answers 401
        for it from now on.

        Raises:
            KeyError: the fake never issued this token (the message does not show it).
        """
        with self._core.lock:
            if not self._core.grants.revoke_access(token):
                raise KeyError("no such token")

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
        with self._core.lock:
            handle, installed = self._pair(account, integration)
            code = self._core.grants.new_code(handle, installed)
            return success_url(code, handle, installed, state, from_widget)

    def deny(self, state: str | None = None, *, integration: IntegrationRef | None = None) -> str:
        """Press "Deny" (§2): return `{redirect_uri}?error=access_denied&client_id=...`
        (plus `&state=...` when given)."""
        return denied_url(self.integration(integration), state)

    # -- faults and revocations -----------------------------------------------------------

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
            fields: the fields for "override" (required there), or merged into a "429"'s
                body (e.g. `{"retry_after": 1}`); refused elsewhere.
            chunk_size: "slow_body": bytes per chunk (at least 1).
            every: "slow_body": seconds before each chunk (not negative).

        Raises:
            ValueError: an unknown kind, grant or endpoint, times < 1, or arguments that do
                not fit the kind.
            KeyError: no such account.
        """
        check_fault(kind, times, grant, endpoint, fields, chunk_size, every)
        trickle = (chunk_size, every) if kind == "slow_body" else None
        with self._core.lock:
            handle = None if account is None else self._core.directory.account(account)
            frozen_fields = None if fields is None else dict(fields)
            self._core.faults.add(
                Fault(kind, times, endpoint, grant, path, handle, trickle, frozen_fields)
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
        with self._core.lock:
            return self._core.grants.expire_access(*self._filters(account, integration))

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
        with self._core.lock:
            return self._core.grants.revoke_refresh(*self._filters(account, integration))

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
        with self._core.lock:
            handle, installed = self._pair(account, integration)
            self._core.grants.revoke_all(handle, installed)
        return self.hook_query(account=handle, integration=installed)

    def hook_query(
        self,
        *,
        account: AccountRef | None = None,
        integration: IntegrationRef | None = None,
    ) -> dict[str, str]:
        """The signed disconnect-hook query for (integration, account), revoking nothing (§6)."""
        handle, installed = self._pair(account, integration)
        message = f"{installed.client_id}|{handle.id}".encode()
        key = installed.client_secret.encode()
        return {
            "client_uuid": installed.client_id,
            "account_id": str(handle.id),
            "signature": hmac.new(key, message, hashlib.sha256).hexdigest(),
        }

    def _pair(
        self, account: AccountRef | None, integration: IntegrationRef | None
    ) -> tuple[FakeAccount, FakeIntegration]:
        # None names the default one of each.
        return self.account(account), self.integration(integration)

    def _filters(
        self, account: AccountRef | None, integration: IntegrationRef | None
    ) -> tuple[FakeAccount | None, FakeIntegration | None]:
        # None filters nothing out.
        return (
            None if account is None else self.account(account),
            None if integration is None else self.integration(integration),
        )
