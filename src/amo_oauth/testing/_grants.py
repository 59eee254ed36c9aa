"""What the fake issued: codes, access tokens and refresh tokens, and how each is redeemed.

Every code and token belongs to one (account, integration) pair (protocol §3). The caller holds
the fake's lock: the grants are one part of the fake's state, guarded with the rest.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from . import _protocol as P
from ._accounts import FakeAccount, FakeIntegration
from ._jwt import make_jwt, opaque_secret
from ._knobs import Knobs

Redeemed = tuple[str, dict[str, Any] | None]
"""A redemption's outcome slug, and the token answer's fields when it is "ok"."""


@attrs.define(eq=False)
class Secret:
    """A code or token the fake issued, and whose it is.

    `spent`: used (codes, refresh tokens) or revoked. `parent`: with `refresh_grace`, the
    refresh token this one was issued from, still usable until this one is first used.
    `child`: for a refresh token in grace, the refresh token last issued from it.
    """

    expires_at: datetime
    account: FakeAccount
    integration: FakeIntegration
    spent: bool = False
    parent: Secret | None = None
    child: Secret | None = None

    def live(self, now: datetime) -> bool:
        """Neither spent nor expired at `now`."""
        return not self.spent and now < self.expires_at


class Grants:
    """The codes and tokens of one fake, by the secret itself, each with its `Secret` record."""

    def __init__(self, now: Callable[[], datetime], knobs: Knobs) -> None:
        self._now = now
        self._knobs = knobs
        self.codes: dict[str, Secret] = {}
        self.access: dict[str, Secret] = {}
        self.refresh: dict[str, Secret] = {}

    def new_code(self, account: FakeAccount, integration: FakeIntegration) -> str:
        """A fresh authorization code: single use, valid 20 minutes (§3)."""
        code = opaque_secret()
        self.codes[code] = Secret(self._now() + P.CODE_LIFETIME, account, integration)
        return code

    def new_long_lived(
        self, account: FakeAccount, integration: FakeIntegration, lifetime: timedelta
    ) -> str:
        """A long-lived token (§8): a JWT used as an access token, no refresh token, expiring
        `lifetime` from now (whole seconds, its `exp` claim)."""
        issued_at = int(self._now().timestamp())
        expires_at = issued_at + int(lifetime.total_seconds())
        token = make_jwt(self._claims(account, integration, issued_at, expires_at))
        self.access[token] = Secret(datetime.fromtimestamp(expires_at, UTC), account, integration)
        return token

    def revoke_access(self, token: str) -> bool:
        """Revoke one access (or long-lived) token; False when the fake never issued it."""
        record = self.access.get(token)
        if record is None:
            return False
        record.spent = True
        return True

    def expire_token(self, token: str) -> bool:
        """End one access (or long-lived) token now, as if its lifetime had run out; False
        when the fake never issued it. (A JWT's own ``exp`` claim cannot change: a client
        that reads it learns of the end from the API's 401.)"""
        record = self.access.get(token)
        if record is None:
            return False
        record.expires_at = min(record.expires_at, self._now())
        return True

    def live_access(self, token: str) -> Secret | None:
        """The record of `token` when it is a live access token."""
        return _live(self.access.get(token), self._now())

    def live_refresh(self, token: str) -> Secret | None:
        """The record of `token` when it is a live refresh token."""
        return _live(self.refresh.get(token), self._now())

    def redeem_code(
        self, code: str, account: FakeAccount, integration: FakeIntegration
    ) -> Redeemed:
        """Spend `code` for a new pair, or say why it cannot be."""
        outcome, record = self._sent(self.codes, code, account, ("missing_code", "code_garbage"))
        if record is None:
            return outcome, None
        # Expiry, revocation, then the client: the order league/oauth2-server checks in.
        if self._now() >= record.expires_at:
            return "code_expired", None
        if record.spent:
            return "code_revoked", None
        if record.integration is not integration:
            return "code_wrong_client", None
        record.spent = True
        return "ok", self._issue(account, integration, None)

    def redeem_refresh(
        self, token: str, account: FakeAccount, integration: FakeIntegration
    ) -> Redeemed:
        """Rotate `token` into a new pair, or say why it cannot be."""
        slugs = ("missing_refresh_token", "refresh_garbage")
        outcome, record = self._sent(self.refresh, token, account, slugs)
        if record is None:
            return outcome, None
        if record.integration is not integration:
            return "refresh_wrong_client", None
        if not record.live(self._now()):
            return "token_revoked", None
        self.first_use(record)
        if not self._knobs.rotate_refresh_tokens:
            # RFC 6749 §6: the server may keep the refresh token; the client keeps using it.
            return "ok", self._issue(account, integration, None, refresh=False)
        if not self._knobs.refresh_grace:
            record.spent = True  # amoCRM (§3): a used refresh token is revoked at once
        elif record.child is not None:
            # Kommo's grace (§3), used again (e.g. its answer was lost): the pair it issued
            # before is replaced, so only the newest child can end the grace. [I]
            record.child.spent = True
        return "ok", self._issue(account, integration, record)

    def _sent(
        self, table: Mapping[str, Secret], secret: str, account: FakeAccount, slugs: tuple[str, str]
    ) -> tuple[str, Secret | None]:
        """The record of `secret`, sent to `account`'s host; else why not, `slugs` naming a
        missing and an unknown secret."""
        missing, unknown = slugs
        record = table.get(secret)
        if not secret:
            return missing, None
        if record is None:
            return unknown, None
        if record.account is not account:
            return "invalid_account", None  # §4: a secret sent to another account's host
        return "ok", record

    def first_use(self, record: Secret) -> None:
        """A token issued in a refresh under grace was used: the refresh token it came from
        stops working now (Kommo, protocol §3)."""
        if record.parent is not None:
            record.parent.spent = True
            record.parent = None

    def select(
        self,
        table: Mapping[str, Secret],
        account: FakeAccount | None,
        integration: FakeIntegration | None,
    ) -> list[Secret]:
        """The records of `table` (`codes`, `access` or `refresh`) issued to `account` and
        `integration` (None: any)."""
        return [
            record
            for record in table.values()
            if account in (None, record.account) and integration in (None, record.integration)
        ]

    def expire_access(
        self, account: FakeAccount | None, integration: FakeIntegration | None
    ) -> int:
        """Expire the live access tokens of `account` and `integration` (None: any) now;
        how many. Their `exp` claims stay: only a 401 tells a client (§8, §9)."""
        now = self._now()
        live = [r for r in self.select(self.access, account, integration) if r.live(now)]
        for record in live:
            record.expires_at = now
        return len(live)

    def revoke_refresh(
        self, account: FakeAccount | None, integration: FakeIntegration | None
    ) -> int:
        """Revoke the unspent refresh tokens of `account` and `integration` (None: any); how
        many."""
        unspent = [r for r in self.select(self.refresh, account, integration) if not r.spent]
        for record in unspent:
            record.spent = True
        return len(unspent)

    def revoke_all(self, account: FakeAccount, integration: FakeIntegration) -> None:
        """Revoke every code and token of the pair: the integration was uninstalled."""
        for table in (self.codes, self.access, self.refresh):
            for record in self.select(table, account, integration):
                record.spent = True

    def _issue(
        self,
        account: FakeAccount,
        integration: FakeIntegration,
        parent: Secret | None,
        *,
        refresh: bool = True,
    ) -> dict[str, Any]:
        """A new access token (and, unless `refresh` is False, a refresh token): the answer,
        shaped by the knobs."""
        answer = self._issued(account, integration, parent)
        if not refresh:
            self.refresh.pop(answer.pop("refresh_token"))
        if not self._knobs.send_expires_in:
            del answer["expires_in"]
        return answer

    def _issued(
        self, account: FakeAccount, integration: FakeIntegration, parent: Secret | None
    ) -> dict[str, Any]:
        issued_at = int(self._now().timestamp())
        expires_in = int(P.ACCESS_LIFETIME.total_seconds())
        claims = self._claims(account, integration, issued_at, issued_at + expires_in)
        access = make_jwt(claims)
        refresh = opaque_secret()
        grace_parent = parent if self._knobs.refresh_grace else None
        self.access[access] = Secret(
            datetime.fromtimestamp(issued_at + expires_in, UTC),
            account,
            integration,
            parent=grace_parent,
        )
        self.refresh[refresh] = Secret(
            self._now() + P.REFRESH_LIFETIME, account, integration, parent=grace_parent
        )
        if grace_parent is not None:
            grace_parent.child = self.refresh[refresh]
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
        if not self._knobs.api_domain_claim:
            del claims["api_domain"]  # §5: tokens issued before about 2024-08-21
        return claims


def _live(record: Secret | None, now: datetime) -> Secret | None:
    return record if record is not None and record.live(now) else None
