"""The account-host allowlist: where the client secret, codes and tokens may be sent.

amoCRM's redirect names the account host in ``referer``, and anyone can forge a redirect. An
``AccountHost`` can only be made from a plain lower-case host name of exactly one label under an
allowed domain, and the token-endpoint URL can only be built from an ``AccountHost``, so a
secret never leaves for a host the allowlist did not accept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

import attrs

__all__ = ["DEFAULT_DOMAINS", "AccountHost", "check_domain"]

#: The domains amoCRM and Kommo accounts live under.
DEFAULT_DOMAINS: Final = ("amocrm.ru", "amocrm.com", "kommo.com")

# One DNS label in its plain ASCII form: no dots, ports, userinfo, paths or upper case get by.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# Names amoCRM uses for its own sites, never for an account's token endpoint.
_NOT_ACCOUNTS: Final = frozenset({"www"})
# What a person may type before a host name: dropped by ``AccountHost.typed`` (one, at most).
_SCHEMES: Final = ("https://", "http://")


def check_domain(domain: str) -> str:
    """Validate an extra allowed domain (e.g. a self-hosted fake's) and return it."""
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"not a plain domain name: {domain!r}")
    if labels[-1].isdigit():
        raise ValueError(f"an IP address is not a domain: {domain!r}")
    return domain


def _accepted(name: str, domains: Iterable[str]) -> bool:
    if len(name) > 253:
        return False
    label, _, domain = name.partition(".")
    return (
        domain in domains
        and _LABEL.fullmatch(label) is not None
        and label not in _NOT_ACCOUNTS
        # A punycode label is an IDN, the look-alike's disguise; an invalid one even crashes
        # httpx (it decodes ``xn--`` hosts) after the code was claimed.
        and not label.startswith("xn--")
    )


@attrs.frozen
class AccountHost:
    """An account host the allowlist accepted, e.g. ``example.amocrm.ru``.

    Args:
        name: the host name exactly as amoCRM sends it in ``referer``.
        extra_domains: domains added to ``DEFAULT_DOMAINS`` (never replacing them).

    Raises:
        ValueError: the name is not a plain host of one label under an allowed domain.
    """

    name: str
    extra_domains: tuple[str, ...] = attrs.field(default=(), repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        domains = (*DEFAULT_DOMAINS, *map(check_domain, self.extra_domains))
        if not isinstance(self.name, str) or not _accepted(self.name, domains):
            # The name is attacker-controlled: say no more than that it was refused.
            raise ValueError("host is not an allowed amoCRM account host")

    @classmethod
    def accept(cls, name: str, extra_domains: Iterable[str] = ()) -> AccountHost | None:
        """The host if the allowlist accepts it, else None."""
        try:
            return cls(name, tuple(extra_domains))
        except ValueError:
            return None

    @classmethod
    def typed(cls, text: str, extra_domains: Iterable[str] = ()) -> AccountHost | None:
        """A host a person typed or pasted (``connect_long_lived``, ``connect_with_code``),
        if the allowlist accepts it once written as amoCRM writes it: surrounding blanks,
        an ``https://`` (or ``http://``) prefix, one trailing ``/`` and ASCII upper case are
        dropped. Anything else (a path, a port, userinfo, a query, a foreign domain) is kept
        and refused, as is any non-ASCII text (never folded into an ASCII look-alike).
        None when refused."""
        if not isinstance(text, str) or not text.isascii():
            return None
        name = text.strip().lower()
        scheme = next((prefix for prefix in _SCHEMES if name.startswith(prefix)), "")
        return cls.accept(name[len(scheme) :].removesuffix("/"), extra_domains)

    def url(self, path: str) -> str:
        """An https URL on this host; ``path`` must be an absolute path."""
        if not path.startswith("/") or path.startswith("//"):
            raise ValueError("path must be absolute and on this host")
        return f"https://{self.name}{path}"

    @property
    def token_url(self) -> str:
        """The token endpoint: ``https://{account host}/oauth2/access_token``."""
        return self.url("/oauth2/access_token")
