"""``Config``: the integration's settings, checked once at construction."""

from __future__ import annotations

import hmac
import importlib.util
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any, Final
from urllib.parse import urlsplit

import attrs

from ._hosts import check_domain
from ._records import ClientCredentials
from ._setting_errors import (
    FORWARDED_HEADERS,
    MAX_PREVIOUS_STATE_SECRETS,
    MAX_REFRESH_BACKOFF,
    MAX_SECRETS_WAIT,
    MAX_TICKET_TTL,
    MIN_API_RATE,
    MODES,
    setting_error,
)
from ._site_button import AMOCRM_BUTTON_SCRIPT, KOMMO_BUTTON_SCRIPT, is_kommo, unsendable

__all__ = ["Config"]

_LOOPBACK: Final = ("localhost", "127.0.0.1", "::1")


def _non_empty(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(setting_error("empty_text", field=attribute.name))
    _check_utf8(attribute.name, value)


#: Secrets the application generates (amoCRM never gives them): their messages say so.
_OWN_SECRETS: Final = ("state_secret", "previous_state_secrets")


def _check_utf8(field: str, value: str) -> None:
    # os.environ hands undecodable bytes over as lone surrogates; UnicodeEncodeError would
    # carry the whole value (a secret) in its repr, so the error is ours, with none of it.
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            key = "secret_not_utf8" if field in _OWN_SECRETS else "not_utf8"
            raise ValueError(setting_error(key, field=field)) from None


def _url_problem(value: str) -> tuple[str | None, str | None]:
    """Which rule a URL breaks (the key of its message, or None) and its host.

    The library sends ``redirect_uri`` to amoCRM, which compares it exactly, and sends the
    browser to ``authorize_url``: neither may hide a credential, and a fragment is forbidden
    on both endpoints (RFC 6749 §3.1, §3.1.2).
    """
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (read for its check: a port that is no number raises)
    except ValueError:  # an unclosed "[", a port out of range
        return "url_invalid", None
    host = parts.hostname
    if parts.scheme not in ("http", "https"):
        return "url_scheme", host
    if parts.username is not None or parts.password is not None:
        return "url_userinfo", host
    if not host:
        return "url_no_host", host
    if "#" in value:
        return "url_fragment", host
    if parts.scheme == "http" and host not in _LOOPBACK:
        return "url_http", host
    return None, host


def _web_url(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(setting_error("url_type", field=attribute.name, type=_type(value)))
    problem, host = _url_problem(value)
    if problem is not None:
        # The message names the host at most: the rest of a URL may hold a password.
        raise ValueError(setting_error(problem, field=attribute.name, host=host))


def _type(value: object) -> str:
    return type(value).__name__


def _secret_bytes(value: str | bytes, field: str = "state_secret") -> bytes:
    if isinstance(value, str):
        _check_utf8(field, value)
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    # bytes(32) would be 32 zero bytes: "long enough", and no secret at all.
    key = "state_secret_type" if field == "state_secret" else "previous_state_secret_type"
    raise TypeError(setting_error(key, type=_type(value)))


def _previous_secrets(values: Sequence[str | bytes]) -> tuple[bytes, ...]:
    if isinstance(values, str | bytes | bytearray) or not isinstance(values, Iterable):
        # A lone secret would be read a character (or a byte) at a time.
        raise TypeError(setting_error("previous_state_secrets_type", type=_type(values)))
    return tuple(_secret_bytes(value, "previous_state_secrets") for value in values)


def _domain(domain: object) -> str:
    if not isinstance(domain, str):
        raise TypeError(setting_error("domain_type", type=_type(domain)))
    try:
        return check_domain(domain)
    except ValueError:
        pass
    dotted_digits = all(part.isdigit() for part in domain.split("."))
    key = "domain_ip" if dotted_digits else "domain_not_plain"
    raise ValueError(setting_error(key, domain=repr(domain))) from None


def _domains(domains: Iterable[str]) -> tuple[str, ...]:
    if isinstance(domains, str | bytes):  # a lone string would be read a letter at a time
        raise TypeError(setting_error("domains_type"))
    return tuple(_domain(domain) for domain in domains)


def _strong(_: object, attribute: attrs.Attribute[bytes], value: bytes) -> None:
    if len(value) < 32:
        raise ValueError(setting_error("state_secret_short"))


def _all_strong(_: object, attribute: attrs.Attribute[Any], values: tuple[bytes, ...]) -> None:
    if len(values) > MAX_PREVIOUS_STATE_SECRETS:
        raise ValueError(setting_error("previous_state_secrets_many"))
    if any(len(value) < 32 for value in values):
        raise ValueError(setting_error("previous_state_secret_short"))
    if len(set(values)) < len(values):  # compared as bytes: "x" and b"x" are one secret
        raise ValueError(setting_error("previous_state_secrets_repeated"))


#: The message for a value of the wrong type, by the kind of number a field holds.
_TYPE_MESSAGES: Final = {"timedelta": "duration_type", "float": "seconds_type", "int": "count_type"}


def _positive(_: object, attribute: attrs.Attribute[Any], value: timedelta | float) -> None:
    # The declared type as written (this module's annotations are strings).
    declared = str(getattr(attribute.type, "__name__", attribute.type))
    wants_duration = declared == "timedelta"
    kind = timedelta if wants_duration else (int, float)
    if not isinstance(value, kind) or isinstance(value, bool):
        key = _TYPE_MESSAGES[declared]
        raise TypeError(setting_error(key, field=attribute.name, type=_type(value)))
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if not seconds > 0 or seconds == float("inf"):  # NaN fails the comparison too
        raise ValueError(setting_error("not_positive", field=attribute.name))


def _fraction(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(setting_error("fraction_type", field=attribute.name, type=_type(value)))
    if not 0 <= value <= 1:  # NaN fails the comparison too
        raise ValueError(setting_error("fraction_range", field=attribute.name))


def _backoff(instance: object, attribute: attrs.Attribute[Any], value: timedelta) -> None:
    _positive(instance, attribute, value)
    if value > MAX_REFRESH_BACKOFF:
        raise ValueError(setting_error("backoff_long", field=attribute.name))


def _ticket_ttl(instance: object, attribute: attrs.Attribute[Any], value: timedelta) -> None:
    _positive(instance, attribute, value)
    if value > MAX_TICKET_TTL:
        raise ValueError(setting_error("ticket_ttl_long"))


def _secrets_wait(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    _positive(instance, attribute, value)
    if value > MAX_SECRETS_WAIT:
        raise ValueError(setting_error("secrets_wait_long"))


def _proxy_count(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(setting_error("trusted_proxies"))


def _forwarded_header(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in FORWARDED_HEADERS:
        raise ValueError(setting_error("forwarded_header"))


def _api_rate(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(setting_error("api_rate_type", type=_type(value)))
    # 0 turns the pace off, as None does; below one a day a slot would sleep for ever.
    if not (value == 0 or MIN_API_RATE <= value < float("inf")):  # NaN fails both
        raise ValueError(setting_error("api_rate_range"))


def _api_max_wait(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(setting_error("seconds_type", field=attribute.name, type=_type(value)))
    if not 0 <= value < float("inf"):  # NaN fails the comparison too
        raise ValueError(setting_error("api_max_wait"))


def _secret_or_none(instance: object, attribute: attrs.Attribute[str], value: str | None) -> None:
    if value is not None:
        _non_empty(instance, attribute, value)


def _web_url_or_none(instance: object, attribute: attrs.Attribute[str], value: str | None) -> None:
    if value is not None:
        _web_url(instance, attribute, value)


def _default_button_script(config: Config) -> str:
    # amoCRM's or Kommo's site-button script (protocol notes §7), by the consent page.
    return KOMMO_BUTTON_SCRIPT if is_kommo(config.authorize_url) else AMOCRM_BUTTON_SCRIPT


def _mode(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in MODES:
        raise ValueError(setting_error("mode"))


@attrs.frozen(kw_only=True)
class Config:
    """The integration's settings, checked at construction.

    Raises:
        ValueError: a setting is wrong, or two contradict each other (``lease_ttl`` against
            ``http_timeout``; ``state_secret`` or one of ``previous_state_secrets`` equal to
            ``client_secret``; a previous secret equal to ``state_secret``).
        TypeError: a setting of the wrong type (a number where a ``timedelta`` belongs...).
            Every message names the setting and what to do; docs/configuration.md lists them.

    Attributes:
        client_id: the integration's ID from amoCRM. In metadata mode (``secrets_uri`` set)
            the name this product's connections are kept under in the store, never sent.
        client_secret: the integration's secret key; sent only to allow-listed account hosts.
            Required, except in metadata mode, where it must be absent: each connection's
            secret comes from amoCRM's post to ``secrets_uri``.
        redirect_uri: the redirect URI registered with the integration (https; http on loopback).
        secrets_uri: set for the site button's metadata mode (protocol notes §7): where amoCRM
            posts each installing account's new ``client_id`` and ``client_secret`` with the
            ``state`` (the web layer's ``POST /secrets``); https (http on loopback).
        state_secret: at least 32 bytes of secret (``str`` in UTF-8, or ``bytes``) that signs
            every ``state`` and mobile ticket; not the client secret.
        previous_state_secrets: the secrets ``state_secret`` had before (at most three, each
            of 32 bytes or more, none repeated, none the client secret or ``state_secret``):
            what they signed is still accepted, nothing new is signed with them. Set during a
            rotation, so a consent begun on a machine with the old secret completes on one
            with the new;
            remove each ``state_ttl + ticket_ttl + MAX_CLOCK_SKEW`` after every machine signs
            with its successor (docs/operations.md, "Rotating the state secret").
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
            ``access_token()`` for another worker's refresh or a kept pair (then ``TryAgainLater``).
        refresh_margin: refresh an access token this long before it expires.
        http_timeout: seconds for each call to amoCRM, from connect to last byte.
        max_exchanges_per_connection, max_exchanges_per_host, max_exchanges_per_process: code
            exchanges (token-endpoint calls with a code) allowed in any ``exchange_window``,
            counted by each service object in its process; beyond them a callback is refused
            ``rate_limited`` (429 on the web) and writes nothing. Duplicates never count.
        max_exchanges_per_source: exchanges that did not succeed (junk codes amoCRM refused,
            or still in flight) allowed to one source in any ``exchange_window``: the
            consent's user (its signed-in user, or the browser its binding matches), else the
            client's network (an IPv6 /64, an IPv4 address). A failed exchange counts in the
            suspect half of the host's and the process's bounds, as does every try of a
            source with any; the other half holds only clean tries in flight, so a flood
            leaves honest first callbacks their room.
        max_widget_exchanges, max_widget_exchanges_per_host: widget installs (anonymous: no
            session, no state) allowed in any ``exchange_window``, in all and per account
            host and source (the client's network: junk naming a host from elsewhere leaves
            its genuine install, from amoCRM's servers, its tries); in all at most half of
            ``max_exchanges_per_process`` too.
        exchange_window: the window of those bounds.
        trusted_proxies: how many reverse proxies in front of the app append the client's
            address to ``forwarded_header``; the web layer then takes the address that many
            entries from the right as the client's. 0 (the default): forwarded headers are
            ignored and the peer address is the client's (a client can write any header).
        forwarded_header: ``x-forwarded-for`` or ``forwarded`` (RFC 7239 ``for=``): the one
            header the trusted proxies write.
        hook_check_interval: at most one check of amoCRM's disconnect hook per account in
            each such interval (windows aligned on the store's clock, so two checks are never
            closer than one window boundary apart: at most two in any span of this length),
            across processes (a key in the store's ledger): each check asks amoCRM's API once
            per connection of the account, with that connection's token (an accepted one
            speaks for its own connection only: a consent after an uninstall installs the
            integration again), and a hook URL replays for ever.
        kept_pair_grace: how long a pair that another process may keep in memory (its store
            write failed: a rotated pair, or the pair from a code) is awaited before the
            connection needs re-authorization: amoCRM's "revoked" for a refresh token sent
            again after a lapsed lease, and a lapsed exchange lease, are transient that long
            (``TryAgainLater``, reason ``kept_pair_pending``). Two ``lease_ttl`` by default.
        refresh_backoff_initial, refresh_backoff_max: when amoCRM pushes back on a refresh
            (429, a blocked account's 403, 5xx), the connection's refreshes are held back
            (kept in its record, for every process) for ``refresh_backoff_initial`` (60 s),
            doubling with each such answer in a row up to ``refresh_backoff_max`` (an hour);
            never less than a 429's ``retry_after`` (docs/operations.md). Each at most a week
            (``MAX_REFRESH_BACKOFF``).
        refresh_backoff_jitter: each back-off is lengthened by a random fraction of itself
            up to this (0 to 1; 0.1 by default), so that connections held back together are
            not all retried in the same second. 0 makes back-offs exact.
        api_rate: requests per second per account host that ``auth()``, the library's own
            account checks (verifications), the disconnect hook's checks and (by default) the
            keep-alive sweep send, in this process: amoCRM's 7 (protocol notes §9) by default;
            None or 0 turns the pace off (but for the sweep's). Processes sharing the
            integration each get their share (7 / N): the pace is process-local
            (docs/api-pace.md).
        api_max_wait: the most seconds ``auth()`` holds a request for its slot, or for the
            one resend after amoCRM's 429; past it the caller gets ``TryAgainLater``
            (``api_busy``, ``api_paused``) at once. 2 s by default; 0: never wait.
        button_script_url: the button script ``site_button()``'s element loads (protocol
            notes §7): amoCRM's ``https://www.amocrm.ru/auth/button.min.js`` by default,
            Kommo's ``https://www.kommo.com/auth/button.js`` for a Kommo ``authorize_url``;
            a test points it at a stand-in (docs/site-button.md).
    """

    client_id: str = attrs.field(validator=_non_empty)
    client_secret: str | None = attrs.field(default=None, validator=_secret_or_none, repr=False)
    redirect_uri: str = attrs.field(validator=_web_url)
    secrets_uri: str | None = attrs.field(default=None, validator=_web_url_or_none)
    state_secret: bytes = attrs.field(converter=_secret_bytes, validator=_strong, repr=False)
    previous_state_secrets: tuple[bytes, ...] = attrs.field(
        default=(), converter=_previous_secrets, validator=_all_strong, repr=False
    )
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
    max_exchanges_per_source: int = attrs.field(default=10, validator=_positive)
    max_widget_exchanges: int = attrs.field(default=30, validator=_positive)
    max_widget_exchanges_per_host: int = attrs.field(default=3, validator=_positive)
    exchange_window: timedelta = attrs.field(default=timedelta(minutes=10), validator=_positive)
    trusted_proxies: int = attrs.field(default=0, validator=_proxy_count)
    forwarded_header: str = attrs.field(default="x-forwarded-for", validator=_forwarded_header)
    hook_check_interval: timedelta = attrs.field(default=timedelta(seconds=60), validator=_positive)
    kept_pair_grace: timedelta = attrs.field(
        default=attrs.Factory(lambda config: 2 * config.lease_ttl, takes_self=True),
        validator=_positive,
    )
    refresh_backoff_initial: timedelta = attrs.field(
        default=timedelta(seconds=60), validator=_backoff
    )
    refresh_backoff_max: timedelta = attrs.field(default=timedelta(hours=1), validator=_backoff)
    refresh_backoff_jitter: float = attrs.field(default=0.1, validator=_fraction)
    api_rate: float | None = attrs.field(default=7.0, validator=_api_rate)
    api_max_wait: float = attrs.field(default=2.0, validator=_api_max_wait)
    secrets_wait: float = attrs.field(default=10.0, validator=_secrets_wait)
    button_script_url: str = attrs.field(
        default=attrs.Factory(_default_button_script, takes_self=True), validator=_web_url
    )

    def __attrs_post_init__(self) -> None:
        # A live worker must never lose its lease mid-exchange: the token call and the account
        # check each may take http_timeout, and an expired lease means the code is abandoned.
        if self.lease_ttl.total_seconds() <= 3 * self.http_timeout:
            raise ValueError(setting_error("lease_short", seconds=f"{3 * self.http_timeout:g}"))
        if self.refresh_backoff_max < self.refresh_backoff_initial:
            raise ValueError(setting_error("backoff_order"))
        if self.secrets_uri is None and self.client_secret is None:
            raise ValueError(setting_error("client_secret_missing"))
        if self.secrets_uri is not None and self.client_secret is not None:
            raise ValueError(setting_error("client_secret_with_secrets_uri"))
        if self.secrets_uri is not None:
            self._check_sendable_by_the_button()
        if self.secrets_uri is not None and importlib.util.find_spec("cryptography") is None:
            # Said here, once, rather than at the first begin() or post to secrets_uri.
            raise ValueError(setting_error("secrets_uri_needs_crypto"))
        self._check_state_secrets_apart()

    @property
    def metadata_mode(self) -> bool:
        """True with ``secrets_uri`` set: the site button's metadata mode (protocol notes §7),
        where amoCRM makes a new integration per installing account and posts its credentials
        to ``secrets_uri``; ``client_id`` then only names this product's connections in the
        store and is never sent to amoCRM."""
        return self.secrets_uri is not None

    @property
    def credentials(self) -> ClientCredentials | None:
        """The integration's ``client_id`` and ``client_secret`` that token calls carry; None
        in metadata mode, where each connection has its own (``ConnectionRecord.credentials``)."""
        if self.client_secret is None:
            return None
        return ClientCredentials(self.client_id, self.client_secret)

    def _check_sendable_by_the_button(self) -> None:
        """Metadata mode: the site button carries both URIs, and its script joins them into
        the consent URL unencoded (docs/site-button.md); refused here, not at each /connect."""
        for field in ("redirect_uri", "secrets_uri"):
            problem = unsendable(getattr(self, field))
            if problem is not None:
                raise ValueError(setting_error("url_unsendable", field=field, problem=problem))

    def _check_state_secrets_apart(self) -> None:
        # The docs forbid it (security.md): amoCRM holds the client secret too (it checks it on
        # every token call) and shows it in the integration's settings, so it must not also be
        # a key that signs states, now or as a previous secret still accepted.
        if self.client_secret is None:
            return
        client_secret = self.client_secret.encode("utf-8")
        if hmac.compare_digest(self.state_secret, client_secret):
            raise ValueError(setting_error("state_secret_is_client_secret"))
        for previous in self.previous_state_secrets:
            if hmac.compare_digest(previous, client_secret):
                raise ValueError(setting_error("previous_state_secret_is_client_secret"))
            if hmac.compare_digest(previous, self.state_secret):
                raise ValueError(setting_error("previous_state_secret_is_current"))

    @property
    def accepted_state_secrets(self) -> tuple[bytes, ...]:
        """Every secret a ``state`` or a mobile ticket is accepted under: ``state_secret``
        (which signs them), then ``previous_state_secrets``."""
        return (self.state_secret, *self.previous_state_secrets)
