"""The fake's accounts and integrations: who exists, on which host, and the hosts accounts left.

The caller holds the fake's lock: the directory is one part of the fake's state, guarded with
the rest.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from ._accounts import (
    FakeAccount,
    FakeIntegration,
    FormerHost,
    check_domain,
    check_subdomain,
)

LeadsSpec = int | Iterable[Mapping[str, Any]]
"""Leads to seed: a count of generated leads, or the leads' fields (missing ones filled in)."""
AccountRef = FakeAccount | int
"""An account: its handle, or its id."""
IntegrationRef = FakeIntegration | str
"""An integration: its handle, or its client id."""


class Directory:
    """Every account and integration of one fake; the first of each added is the default one."""

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        """The installing user's id, for accounts added without one."""
        self.accounts: list[FakeAccount] = []
        self.integrations: dict[str, FakeIntegration] = {}
        self.made_by_button: list[FakeIntegration] = []
        """The integrations site-button installs made (metadata mode, §7), in order."""
        self.domains: set[str] = set()
        """Every base domain served: those of all accounts, past and present."""
        # An account's old host -> the account, and why it left (renamed or moved).
        self._former: dict[str, tuple[FakeAccount, FormerHost]] = {}

    def serves_host(self, host: str) -> bool:
        """Whether `host` is under one of `domains`."""
        host = host.lower()
        return any(host == d or host.endswith("." + d) for d in self.domains)

    def account_at(self, host: str) -> FakeAccount | None:
        """The account living on `host` now, if any."""
        return next((a for a in self.accounts if a.host == host), None)

    def moved_from(self, host: str) -> bool:
        """Whether an account left `host` for another base domain (not a mere rename)."""
        former = self._former.get(host)
        return former is not None and former[1] == "moved"

    def add_account(
        self,
        subdomain: str,
        *,
        domain: str,
        account_id: int | None,
        name: str | None,
        user_id: int | None,
        api_domain: str | None,
    ) -> FakeAccount:
        """A new account on `{subdomain}.{domain}` (see `FakeAmoCRM.add_account`).

        Raises:
            ValueError: a bad subdomain or domain, or the host or id is already taken.
        """
        subdomain, domain = check_subdomain(subdomain), check_domain(domain)
        api_host = check_domain(api_domain) if api_domain else f"api-b.{domain}"
        host = f"{subdomain}.{domain}"
        if self.account_at(host) is not None:
            raise ValueError(f"an account already lives on {host!r}")
        new_id = max((a.id for a in self.accounts), default=0) + 1
        new_id = new_id if account_id is None else account_id
        if any(a.id == new_id for a in self.accounts):
            raise ValueError(f"account id {new_id} is taken")
        account = FakeAccount(
            id=new_id,
            name=f"Account {subdomain}" if name is None else name,
            subdomain=subdomain,
            domain=domain,
            api_domain=api_host,
            user_id=self.user_id if user_id is None else user_id,
        )
        self.accounts.append(account)
        self.domains.add(domain)
        self._former.pop(host, None)
        return account

    def add_integration(
        self, client_id: str, client_secret: str, redirect_uri: str
    ) -> FakeIntegration:
        """A new integration (see `FakeAmoCRM.add_integration`).

        Raises:
            ValueError: the client id is empty or already registered, or a field is empty.
        """
        if not (client_id and client_secret and redirect_uri):
            raise ValueError("client_id, client_secret and redirect_uri must not be empty")
        if client_id in self.integrations:
            raise ValueError(f"client id {client_id!r} is already registered")
        integration = FakeIntegration(client_id, client_secret, redirect_uri)
        self.integrations[client_id] = integration
        return integration

    def add_button_integration(self, redirect_uri: str) -> FakeIntegration:
        """A NEW integration for one metadata-mode install (§7): a fresh client id (a UUID, as
        amoCRM's are) and secret, registered with the button's `redirect_uri`."""
        integration = self.add_integration(
            str(uuid.uuid4()), secrets.token_urlsafe(48), redirect_uri
        )
        self.made_by_button.append(integration)
        return integration

    def account(self, account: AccountRef | None) -> FakeAccount:
        """The account for a handle or an id; None: the default account.

        Raises:
            KeyError: no such account.
        """
        if account is None:
            return self.accounts[0]
        for candidate in self.accounts:
            if candidate is account or candidate.id == account:
                return candidate
        raise KeyError(f"no account {account!r} in this fake")

    def integration(self, integration: IntegrationRef | None) -> FakeIntegration:
        """The integration for a handle or a client id; None: the default integration.

        Raises:
            KeyError: no such integration.
        """
        if integration is None:
            return next(iter(self.integrations.values()))
        client_id = integration if isinstance(integration, str) else integration.client_id
        found = self.integrations.get(client_id)
        # A handle of another fake with the same client id is not this fake's integration.
        if found is None or (isinstance(integration, FakeIntegration) and found != integration):
            raise KeyError(f"no integration {client_id!r} in this fake")
        return found

    def rename(self, account: FakeAccount, new_subdomain: str) -> None:
        """Give `account` a new subdomain on its domain (see `FakeAmoCRM.rename_account`)."""
        self._rehost(account, check_subdomain(new_subdomain), account.domain, "renamed")

    def move(
        self, account: FakeAccount, domain: str, subdomain: str | None, api_domain: str | None
    ) -> None:
        """Move `account` to another base domain (see `FakeAmoCRM.move_account`)."""
        new_domain = check_domain(domain)
        prefix = account.api_domain.partition(".")[0]
        api_host = check_domain(api_domain) if api_domain else f"{prefix}.{new_domain}"
        sub = account.subdomain if subdomain is None else check_subdomain(subdomain)
        self._rehost(account, sub, new_domain, "moved", api_host)

    def _rehost(
        self,
        account: FakeAccount,
        subdomain: str,
        domain: str,
        reason: FormerHost,
        api_domain: str | None = None,
    ) -> None:
        old, new = account.host, f"{subdomain}.{domain}"
        if new == old or self.account_at(new) is not None:
            raise ValueError(f"an account already lives on {new!r}")
        account._set_host(subdomain, domain, api_domain or account.api_domain)
        self._former[old] = (account, reason)
        self._former.pop(new, None)
        self.domains.add(domain)
