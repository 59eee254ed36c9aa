"""``Config``: the integration's settings, checked once at construction."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Final
from urllib.parse import urlsplit

import attrs

from ._hosts import check_domain

__all__ = ["Config"]

_MODES = ("post_message", "popup")
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def _non_empty(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{attribute.name} must be a non-empty string")


def _web_url(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    parts = urlsplit(value)
    secure = parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK)
    if not secure or not parts.hostname or parts.username or parts.fragment:
        raise ValueError(f"{attribute.name} must be an https URL (http only on loopback)")


def _secret_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _domains(domains: Iterable[str]) -> tuple[str, ...]:
    if isinstance(domains, str | bytes):  # a lone string would be read a letter at a time
        raise TypeError("extra_domains must be a tuple of domain names, e.g. ('example.com',)")
    return tuple(check_domain(domain) for domain in domains)


def _strong(_: object, attribute: attrs.Attribute[bytes], value: bytes) -> None:
    if len(value) < 32:
        raise ValueError(f"{attribute.name} must be at least 32 bytes of secret")


def _positive(_: object, attribute: attrs.Attribute[Any], value: timedelta | float) -> None:
    wants_duration = attribute.type in ("timedelta", timedelta)
    kind = timedelta if wants_duration else (int, float)
    if not isinstance(value, kind) or isinstance(value, bool):
        shown = "a datetime.timedelta" if wants_duration else "a number of seconds"
        raise TypeError(f"{attribute.name} must be {shown}, not {type(value).__name__}")
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if not seconds > 0 or seconds == float("inf"):  # NaN fails the comparison too
        raise ValueError(f"{attribute.name} must be a positive, finite duration")


#: The longest a mobile ticket may live: it is a bearer link, good for whoever opens it first.
MAX_TICKET_TTL: Final = timedelta(minutes=10)


def _ticket_ttl(instance: object, attribute: attrs.Attribute[Any], value: timedelta) -> None:
    _positive(instance, attribute, value)
    if value > MAX_TICKET_TTL:
        raise ValueError(f"{attribute.name} must be at most {MAX_TICKET_TTL} (a bearer link)")


def _mode(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(_MODES)}")


@attrs.frozen(kw_only=True)
class Config:
    """The integration's settings, checked at construction (``ValueError`` when wrong).

    Attributes:
        client_id: the integration's ID from amoCRM.
        client_secret: the integration's secret key; sent only to allow-listed account hosts.
        redirect_uri: the redirect URI registered with the integration (https; http on loopback).
        state_secret: at least 32 bytes of secret used to sign ``state``; not the client secret.
        authorize_url: the consent page (``https://www.kommo.com/oauth`` for Kommo).
        mode: ``post_message`` (amoCRM's default) or ``popup``.
        extra_domains: account domains to allow besides amocrm.ru, amocrm.com and kommo.com,
            e.g. a self-hosted fake's; they add to the allowlist, never replace it.
        allow_widget_installs: accept ``from_widget=1`` redirects, which carry no ``state``.
        state_ttl: how long a ``state`` from ``begin()`` stays valid: 30 minutes by default, to
            cover the user's time on the consent page plus the 20 minutes an amoCRM code lives
            (protocol notes §3), so a slow consent still connects.
        ticket_ttl: how long a mobile ticket from ``issue_ticket()`` stays valid (single-use):
            long enough for the app to open its in-app browser, no longer (at most 10 minutes).
        lease_ttl: how long a worker may hold an exchange or a refresh before it is presumed
            dead; more than three ``http_timeout``s (an exchange makes two calls).
        settle_timeout: seconds a duplicate callback waits for another worker's exchange, and
            ``access_token()`` for another worker's refresh (then a transient ProviderError).
        refresh_margin: refresh an access token this long before it expires.
        http_timeout: seconds for each call to amoCRM, from connect to last byte.
        max_exchanges_per_connection, max_exchanges_per_host, max_exchanges_per_process: code
            exchanges (token-endpoint calls with a code) allowed in any ``exchange_window``,
            counted by each service object in its process; beyond them a callback is refused
            ``rate_limited`` (429 on the web) and writes nothing. Duplicates never count;
            widget installs get at most half of ``max_exchanges_per_process``.
        exchange_window: the window of those bounds.
    """

    client_id: str = attrs.field(validator=_non_empty)
    client_secret: str = attrs.field(validator=_non_empty, repr=False)
    redirect_uri: str = attrs.field(validator=_web_url)
    state_secret: bytes = attrs.field(converter=_secret_bytes, validator=_strong, repr=False)
    authorize_url: str = attrs.field(default="https://www.amocrm.ru/oauth", validator=_web_url)
    mode: str = attrs.field(default="post_message", validator=_mode)
    extra_domains: tuple[str, ...] = attrs.field(default=(), converter=_domains)
    allow_widget_installs: bool = False
    state_ttl: timedelta = attrs.field(default=timedelta(minutes=30), validator=_positive)
    ticket_ttl: timedelta = attrs.field(default=timedelta(seconds=60), validator=_ticket_ttl)
    lease_ttl: timedelta = attrs.field(default=timedelta(seconds=60), validator=_positive)
    settle_timeout: float = attrs.field(default=5.0, validator=_positive)
    refresh_margin: timedelta = attrs.field(default=timedelta(minutes=5), validator=_positive)
    http_timeout: float = attrs.field(default=10.0, validator=_positive)
    max_exchanges_per_connection: int = attrs.field(default=10, validator=_positive)
    max_exchanges_per_host: int = attrs.field(default=30, validator=_positive)
    max_exchanges_per_process: int = attrs.field(default=300, validator=_positive)
    exchange_window: timedelta = attrs.field(default=timedelta(minutes=10), validator=_positive)

    def __attrs_post_init__(self) -> None:
        # A live worker must never lose its lease mid-exchange: the token call and the account
        # check each may take http_timeout, and an expired lease means the code is abandoned.
        if self.lease_ttl.total_seconds() <= 3 * self.http_timeout:
            raise ValueError("lease_ttl must be more than three http_timeouts")
