"""Immutable records: what a connection is, as stored and as shown.

``ConnectionRecord`` is the one row a store keeps per connection: status, tokens, account host,
account, the digests of codes seen, the lease and the version are written together, never as
two writes. ``Connection`` is the public view of it, with no secret in it.
"""

from __future__ import annotations

import enum
import hashlib
from datetime import datetime, timedelta

import attrs

from ._connection_id import ConnectionId, Widget, check_connection_id
from ._reasons import CONNECTION_ERRORS, Reason

__all__ = [
    "CLIENT_MEMORY",
    "Account",
    "Backoff",
    "ClientCredentials",
    "Connection",
    "ConnectionRecord",
    "ConnectionStatus",
    "ErrorInfo",
    "Lease",
    "PendingCredentials",
    "SeenCode",
    "TokenSet",
    "check_connection_id",
    "client_key",
    "code_digest",
    "record_key",
]

#: How long the store's code ledger remembers which connection a code was claimed for.
#: amoCRM codes live 20 minutes; a day leaves room for slow replays and skewed clocks.
CODE_MEMORY = timedelta(days=1)
#: How many consents' credentials a record keeps while they wait for their code (the newest):
#: one per site-button install the user started and has not finished (protocol notes §7).
MAX_PENDING_CREDENTIALS = 4
#: How many codes a record remembers (the newest). Every code is one consent by a user in
#: amoCRM, so a connection sees a handful in its life; the bound only caps the row's size.
MAX_CODE_DIGESTS = 256


class ConnectionStatus(enum.StrEnum):
    """Where a connection is in its lifecycle (stored as its text value)."""

    DISCONNECTED = "disconnected"
    CODE_RECEIVED = "code_received"
    EXCHANGED = "exchanged"
    CONNECTED = "connected"
    ERROR = "error"


def record_key(integration: str, connection_id: str, *, widget: bool = False) -> str:
    """The key a store keeps a record under: ``u:<integration>:<connection id>`` for an app
    user, ``w:<integration>:<account host>`` for a widget install.

    The integration is the client id (``%`` and ``:`` percent-encoded, so the first ``:`` after
    it ends it); the kind letter keeps the two namespaces apart, so no app user id can name a
    widget install, and two integrations sharing a store never share a record.
    """
    kind = "w" if widget else "u"
    quoted = integration.replace("%", "%25").replace(":", "%3A")
    return f"{kind}:{quoted}:{connection_id}"


#: How long the ledger names the connection a site-button integration's client id belongs to
#: (``client:<client_id>``, metadata mode): as long as such a connection may live.
CLIENT_MEMORY = timedelta(days=3650)


def client_key(client_id: str) -> str:
    """The ledger entry naming the record whose own integration (a site-button install in
    metadata mode) has ``client_id``: entered once amoCRM accepted a code exchanged with it."""
    return f"client:{client_id}"


def code_digest(code: str) -> str:
    """The sha256 hex digest by which a record remembers a code without keeping it."""
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


def _aware(_: object, attribute: attrs.Attribute[datetime], value: datetime) -> None:
    if value.tzinfo is None:
        raise ValueError(f"{attribute.name} must be timezone-aware")


def _aware_or_none(instance: object, attribute: attrs.Attribute[datetime], value: object) -> None:
    if value is not None:
        _aware(instance, attribute, value)  # type: ignore[arg-type]


@attrs.frozen
class TokenSet:
    """An access token and, usually, the refresh token that renews it. The tokens never
    appear in a repr.

    ``refresh_token`` is None for a token that cannot be renewed: amoCRM's answer carried
    none (RFC 6749 §5.1 makes it optional; a refresh answer without one keeps the refresh
    token sent, §6, so that case stores the old one) or, later, a long-lived token (protocol
    §8). Such a connection works until ``expires_at``; then it needs a new consent
    (``ReauthorizationRequired``), since there is nothing to send.
    """

    access_token: str = attrs.field(repr=False)
    refresh_token: str | None = attrs.field(repr=False)
    expires_at: datetime = attrs.field(validator=_aware)
    refresh_expires_at: datetime = attrs.field(validator=_aware)
    """amoCRM revokes a refresh token 3 months after it was issued (or last used)."""
    token_type: str = "Bearer"
    issued_at: datetime | None = attrs.field(default=None, validator=_aware_or_none)
    """When amoCRM issued the pair (None for pairs stored before this was kept): the access
    token's lifetime is ``expires_at - issued_at``."""
    refresh_sends: int = 0
    """How many refreshes were claimed with this pair's refresh token: each claim is written
    before the token is sent, so this bounds the sends of one refresh token (at most 2)."""
    after_rejection: bool = False
    """The pair came from a refresh made because amoCRM refused the previous access token
    (a 401): a 401 for this one too is not answered by refreshing again right away."""
    long_lived: bool = False
    """An admin's long-lived token (protocol notes §8): nothing ever refreshes it."""

    def is_fresh(self, now: datetime, margin: timedelta) -> bool:
        """True while the access token stays valid for at least ``margin``, capped at half the
        token's lifetime as issued: a token issued for 2 s is not refreshed on every call
        because the margin is 5 minutes."""
        if self.issued_at is not None:
            margin = min(margin, (self.expires_at - self.issued_at) / 2)
        return now + margin < self.expires_at


@attrs.frozen
class Account:
    """The amoCRM account a connection was verified against (``GET /api/v4/account``)."""

    id: int
    subdomain: str
    name: str


@attrs.frozen
class ErrorInfo:
    """Why a connection is in ``error``: a stable ``reason`` slug and amoCRM's hint, if any.

    ``reason`` is one of ``_reasons.CONNECTION_ERRORS`` (``ValueError`` otherwise).
    """

    reason: str = attrs.field(validator=attrs.validators.in_(CONNECTION_ERRORS))
    hint: str | None
    at: datetime = attrs.field(validator=_aware)


@attrs.frozen
class Lease:
    """A claim by one worker on a connection: the exchange of a code, or a refresh.

    A lease that outlives ``expires_at`` belongs to a worker presumed dead.
    """

    owner: str
    purpose: str = attrs.field(validator=attrs.validators.in_(("exchange", "refresh")))
    expires_at: datetime = attrs.field(validator=_aware)

    def is_live(self, now: datetime) -> bool:
        """True until ``expires_at``."""
        return now < self.expires_at


@attrs.frozen
class Backoff:
    """amoCRM pushed back on a refresh (a 429, a blocked account's 403, a 5xx...): no refresh
    token is sent for this connection before ``until`` (UTC, the store's clock), by any
    process sharing the store.

    Attributes:
        until: when the next refresh may be tried (aware, UTC).
        attempts: refreshes answered that way in a row (the interval grows with them), >= 1.
        cause: the answer's reason slug (``_answers``: ``unavailable``, ``account_blocked``...).
    """

    until: datetime = attrs.field(validator=_aware)
    attempts: int = attrs.field(validator=attrs.validators.ge(1))
    cause: str

    def is_live(self, now: datetime) -> bool:
        """True until ``until``."""
        return now < self.until


@attrs.frozen
class SeenCode:
    """A code a connection has seen: its sha256 digest (never the code) and when."""

    digest: str = attrs.field(validator=attrs.validators.matches_re(r"[0-9a-f]{64}"))
    at: datetime = attrs.field(validator=_aware)


@attrs.frozen
class ClientCredentials:
    """An integration's ``client_id`` and ``client_secret``: what every token call carries
    (protocol notes §3) and what keys the disconnect hook's signature (§6). The secret never
    appears in a repr.

    For a site-button install in metadata mode (§7) amoCRM makes a new integration per
    installing account and posts its credentials to ``secrets_uri``: the connection keeps them
    in its record (``ConnectionRecord.credentials``). Otherwise they are ``Config``'s.
    """

    client_id: str
    client_secret: str = attrs.field(repr=False)


@attrs.frozen
class PendingCredentials:
    """Credentials amoCRM posted to ``secrets_uri`` for one consent, waiting for its code.

    Attributes:
        state_digest: the sha256 hex digest of the consent's state nonce (never the nonce).
        credentials: the new integration's client id and secret.
        at: when they arrived (aware, UTC; the store's clock).
    """

    state_digest: str = attrs.field(validator=attrs.validators.matches_re(r"[0-9a-f]{64}"))
    credentials: ClientCredentials
    at: datetime = attrs.field(validator=_aware)


@attrs.frozen
class Connection:
    """The public view of a connection: what ``status()`` returns. Holds no secret.

    Attributes:
        connection_id: the application's own key (a user id, a tenant id, ...).
        status: where the connection is in its lifecycle.
        account: the verified amoCRM account, when connected.
        expires_at: when the current access token expires, when there is one.
        error: why the connection is in ``error``.
        version: increases with every write to the record.
        host: the account host API calls go to (``x.amocrm.ru``, ``x.kommo.com``), when known.
        widget: for a widget install, the ``Widget`` that names it in every call (keep it to
            call ``status(widget)``, ``access_token(widget)``, ...); None for an app user's
            connection. ``connection_id`` is then the install's account host, which may differ
            from ``host`` after the account moved.
    """

    connection_id: str
    status: ConnectionStatus
    account: Account | None = None
    expires_at: datetime | None = None
    error: ErrorInfo | None = None
    version: int = 0
    host: str | None = None
    widget: Widget | None = None

    @property
    def api_url(self) -> str | None:
        """``https://{host}``, the base URL of the account's API, when the host is known."""
        return f"https://{self.host}" if self.host else None

    @property
    def is_connected(self) -> bool:
        """True in ``connected``: verified tokens and an account."""
        return self.status is ConnectionStatus.CONNECTED


@attrs.frozen
class ConnectionRecord:
    """Everything a store keeps for one connection, written atomically.

    ``version`` 0 means "never stored"; every write increases it by one.
    """

    connection_id: str = attrs.field(validator=attrs.validators.min_len(1))
    status: ConnectionStatus = ConnectionStatus.DISCONNECTED
    version: int = 0
    host: str | None = None
    tokens: TokenSet | None = None
    account: Account | None = None
    error: ErrorInfo | None = None
    seen_codes: tuple[SeenCode, ...] = ()
    lease: Lease | None = None
    connected_at: datetime | None = attrs.field(default=None, validator=_aware_or_none)
    """When the current connection was made (shown to users; decisions use
    ``connected_version``)."""
    updated_at: datetime | None = attrs.field(default=None, validator=_aware_or_none)
    integration: str | None = None
    """The client id of the integration the connection belongs to; None for a record stored
    before keys had a namespace (its key is then its bare ``connection_id``)."""
    widget: bool = False
    """True for a widget install (named after its account host), not an app user."""
    connected_version: int | None = None
    """The version written when the current connection was made: a re-authorization needs a
    state whose ``begin()`` read this version or a later one. Versions cannot tie, as two
    timestamps in one millisecond do. None for records connected before it was kept (their
    ``connected_at`` decides)."""
    verify_after: datetime | None = attrs.field(default=None, validator=_aware_or_none)
    """In ``exchanged``: when the next verification may be tried, after a transient failure
    (one backoff for every process sharing the store)."""
    verify_attempts: int = 0
    """In ``exchanged``: verifications that failed for a moment so far (the backoff grows)."""
    kept_pair_until: datetime | None = attrs.field(default=None, validator=_aware_or_none)
    """In ``connected``: amoCRM refused a refresh token that was sent again after a lapsed
    lease, so the process that sent it first may keep the rotated pair in memory (its store
    write failed). Until this time (UTC) nobody sends that token again and nobody is told to
    re-authorize: callers hear ``TryAgainLater`` while the pair may land."""
    backoff: Backoff | None = None
    """In ``connected``: amoCRM pushed back on the last refresh; none is sent again before
    ``backoff.until`` (the table's ``refresh_backoff``). Cleared by a successful refresh."""
    credentials: ClientCredentials | None = None
    """The connection's own integration (a site-button install in metadata mode, protocol
    notes §7): its token calls, refreshes and the disconnect hook's signature use these, never
    ``Config``'s. None: the connection uses ``Config.client_id`` / ``client_secret``."""
    pending_credentials: tuple[PendingCredentials, ...] = ()
    """Credentials posted to ``secrets_uri`` for consents whose code has not been claimed yet
    (the newest ``MAX_PENDING_CREDENTIALS``); a claimed code moves its consent's into
    ``credentials``."""
    refused_refresh: str | None = None
    """The sha256 digest of the refresh token amoCRM refused when the connection entered
    ``error`` that way: only the answer to an overtaken refresh of that same token may bring the
    connection back (the table's ``refreshed`` guard)."""

    @property
    def key(self) -> str:
        """The key the record is stored under (``record_key``)."""
        if self.integration is None:
            return self.connection_id
        return record_key(self.integration, self.connection_id, widget=self.widget)

    @property
    def name(self) -> ConnectionId:
        """What names the connection in calls and reports: the app user's id, or
        ``Widget(host)`` for a widget install (never equal to any app user's id)."""
        return Widget(self.connection_id) if self.widget else self.connection_id

    def knows_code(self, digest: str) -> bool:
        """True when a code with this sha256 digest was seen on this connection."""
        return any(seen.digest == digest for seen in self.seen_codes)

    def with_code(self, digest: str, now: datetime) -> tuple[SeenCode, ...]:
        """The codes to store once ``digest`` was seen at ``now`` (the newest kept)."""
        if self.knows_code(digest):
            return self.seen_codes
        return (*self.seen_codes, SeenCode(digest, now))[-MAX_CODE_DIGESTS:]

    def live_lease(self, now: datetime) -> Lease | None:
        """The lease, unless there is none or it has expired."""
        return self.lease if self.lease is not None and self.lease.is_live(now) else None

    def lease_seconds_left(self, now: datetime) -> float | None:
        """Seconds until the live lease lapses; None when no lease is live."""
        lease = self.live_lease(now)
        return (lease.expires_at - now).total_seconds() if lease is not None else None

    def tokens_or_raise(self) -> TokenSet:
        """The tokens; for a record the table says holds them (``ValueError`` otherwise)."""
        if self.tokens is None:
            raise ValueError("the record holds no tokens")
        return self.tokens

    def api_credentials(self) -> tuple[str, str, str | None] | None:
        """``(account host, access token, refresh token)`` when the record holds a token, else
        None; the refresh token is None when the token cannot be renewed."""
        if self.host is None or self.tokens is None:
            return None
        return self.host, self.tokens.access_token, self.tokens.refresh_token

    def not_connected_reason(self) -> str:
        """Why this record gives no token: its error reason, else ``disconnected`` or
        ``exchange_pending``."""
        if self.error is not None:
            return self.error.reason
        if self.status is ConnectionStatus.DISCONNECTED:
            return Reason.DISCONNECTED
        return Reason.EXCHANGE_PENDING

    def public(self) -> Connection:
        """The public view: no token, no code digest, no lease."""
        return Connection(
            connection_id=self.connection_id,
            status=self.status,
            account=self.account,
            expires_at=self.tokens.expires_at if self.tokens else None,
            error=self.error,
            version=self.version,
            host=self.host,
            widget=Widget(self.connection_id) if self.widget else None,
        )
