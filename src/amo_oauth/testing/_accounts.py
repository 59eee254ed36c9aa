"""The fake's accounts and integrations: live handles tests hold on to.

A `FakeAccount` is a live view: after `FakeAmoCRM.rename_account` or `move_account` the same
handle reports the new host. Only the fake changes it (under its lock); tests read it.
"""

from __future__ import annotations

import collections
import re
from typing import Any, Final, Literal

import attrs

_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_API_HOST: Final = re.compile(r"api-[a-z0-9]+")

FormerHost = Literal["renamed", "moved"]
"""Why an account host stopped answering: the subdomain changed, or the base domain did."""


def check_subdomain(subdomain: str) -> str:
    """Return `subdomain` lower-cased, or raise ValueError if it is not one DNS label."""
    label = subdomain.strip().lower()
    if not _LABEL.fullmatch(label):
        raise ValueError(f"not a subdomain (one DNS label): {subdomain!r}")
    return label


def check_domain(domain: str) -> str:
    """Return `domain` lower-cased, or raise ValueError if it is not a dotted DNS name."""
    name = domain.strip().lower()
    labels = name.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"not a domain name: {domain!r}")
    return name


def is_api_host(host: str, domain: str) -> bool:
    """Whether `host` is a shared API host of `domain`, e.g. "api-b.amocrm.ru" (protocol §5).

    The shared hosts are api-a/b/c/g today and "may change", so any `api-<label>` counts.
    """
    head, dot, tail = host.partition(".")
    return bool(dot) and tail == domain and bool(_API_HOST.fullmatch(head))


@attrs.define(eq=False, repr=False)
class FakeAccount:
    """One amoCRM/Kommo account inside a `FakeAmoCRM`: a live, read-only handle.

    Returned by `FakeAmoCRM.add_account` and `FakeAmoCRM.default_account`; pass it (or its
    `id`) as `account=` to the fake's methods. Its properties follow renames and moves.
    """

    _id: int
    _name: str
    _subdomain: str
    _domain: str
    _api_domain: str
    _user_id: int
    _blocked: bool = False
    _paid: bool = True
    # Owned by the fake: the account's leads and its rate-limit window (monotonic seconds).
    leads: list[dict[str, Any]] = attrs.field(factory=list)
    window: collections.deque[float] = attrs.field(factory=collections.deque)

    def __repr__(self) -> str:
        return f"FakeAccount(id={self._id}, host={self.host!r})"

    @property
    def id(self) -> int:
        """The account id: `id` of /api/v4/account, `account_id` of tokens (protocol §3, §5)."""
        return self._id

    @property
    def name(self) -> str:
        """The display name (`name` of /api/v4/account)."""
        return self._name

    @property
    def subdomain(self) -> str:
        """The current subdomain, e.g. "test"."""
        return self._subdomain

    @property
    def domain(self) -> str:
        """The current base domain: "amocrm.ru", "kommo.com" or "amocrm.com" (protocol §5)."""
        return self._domain

    @property
    def host(self) -> str:
        """The current account host `{subdomain}.{domain}`: the redirect's `referer` (§2), where
        the token endpoint (§3) and the API (§5) answer."""
        return f"{self._subdomain}.{self._domain}"

    @property
    def api_domain(self) -> str:
        """The shared API host in new tokens' `api_domain` claim (§3, §5), e.g.
        "api-b.amocrm.ru"."""
        return self._api_domain

    @property
    def user_id(self) -> int:
        """The installing user's id (`current_user_id`, the tokens' `sub`)."""
        return self._user_id

    @property
    def blocked(self) -> bool:
        """Whether the account is blocked: 403 on every API and token call (protocol §9)."""
        return self._blocked

    @property
    def paid(self) -> bool:
        """Whether the account is paid; unpaid accounts answer 402 on API calls (protocol §9)."""
        return self._paid

    # -- changed only by FakeAmoCRM, under its lock ----------------------------------------

    def _set_host(self, subdomain: str, domain: str, api_domain: str) -> None:
        self._subdomain, self._domain, self._api_domain = subdomain, domain, api_domain

    def _set_blocked(self, blocked: bool) -> None:
        self._blocked = blocked

    def _set_paid(self, paid: bool) -> None:
        self._paid = paid


@attrs.frozen
class FakeIntegration:
    """One integration registered in a `FakeAmoCRM`: its client id, secret and redirect URI.

    Codes and tokens belong to one integration (protocol §3); the disconnect hook is signed with
    its secret (§6). Pass it (or its `client_id`) as `integration=` to the fake's methods.

    Attributes:
        client_id: the integration id (not a secret; it appears in URLs).
        client_secret: the secret. Kept out of repr.
        redirect_uri: the registered redirect URI.
    """

    client_id: str
    client_secret: str = attrs.field(repr=False)
    redirect_uri: str
