"""Events: what can happen to a connection, each a frozen record validated on construction.

An event knows only the data it brings (``changes``); which status it leads to, or whether it
is a no-op, is decided by the table in ``_lifecycle.py`` and nowhere else.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any, ClassVar, Final

import attrs

from ._hosts import AccountHost
from ._reasons import Reason
from ._records import (
    MAX_PENDING_CREDENTIALS,
    Account,
    Backoff,
    ClientCredentials,
    ConnectionRecord,
    ConnectionStatus,
    ErrorInfo,
    Lease,
    PendingCredentials,
    TokenSet,
    _aware,
    _aware_or_none,
    code_digest,
)

__all__ = [
    "CONCLUDING",
    "EVENT_TYPES",
    "SHA256_HEX",
    "CodeReceived",
    "Concluding",
    "CredentialsReceived",
    "Denied",
    "Disconnect",
    "Event",
    "ExchangeFailed",
    "ExchangeSucceeded",
    "LeaseExpired",
    "LongLivedEnded",
    "LongLivedInstalled",
    "ProviderDisconnected",
    "RefreshClaimed",
    "RefreshDeferred",
    "RefreshDoubted",
    "RefreshFailed",
    "RefreshReleased",
    "Refreshed",
    "Verified",
    "VerifyClaimed",
    "VerifyDeferred",
    "VerifyFailed",
]

#: A sha256 hex digest, lower case: how a code is named on an event and in the ledger (never the
#: code itself), and what a ledger holder looks like when a code holds it.
SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")


def _digest(_: object, __: object, value: str) -> None:
    if not SHA256_HEX.fullmatch(value):
        raise ValueError("code_digest must be a sha256 hex digest (never a raw code)")


def _digest_or_none(instance: object, attribute: object, value: str | None) -> None:
    if value is not None:
        _digest(instance, attribute, value)


def _purpose(purpose: str) -> Any:
    def check(_: object, attribute: attrs.Attribute[Lease], value: Lease) -> None:
        if value.purpose != purpose:
            raise ValueError(f"{attribute.name} must be a {purpose} lease")

    return check


def _error_changes(error: ErrorInfo) -> dict[str, Any]:
    # A connection in error holds no tokens and no lease: nothing can use them by mistake.
    return {
        "error": error,
        "tokens": None,
        "lease": None,
        "kept_pair_until": None,
        "backoff": None,
    }


class Event:
    """Base of every event; ``name`` is the trigger in the transition table."""

    name: ClassVar[str]

    def changes(self, record: ConnectionRecord, now: datetime) -> dict[str, Any]:
        """The fields this event sets when its rule is a transition."""
        raise NotImplementedError


@attrs.frozen
class CodeReceived(Event):
    """A code was claimed for exchange by the worker named in ``lease``.

    ``host`` is where the code is to be sent (the redirect's ``referer``, else the host the
    connection already has), None when neither is known. ``state_issued_at`` and
    ``state_expires_at`` come from the (verified) OAuth state, None when the code came without
    one (a widget install or the legacy endpoint). ``code_holder`` is the record key the store's
    code ledger says the code was claimed for, and ``state_holder`` the digest of the code the
    state was first used with; None when unclaimed or unknown.
    """

    name: ClassVar[str] = "code_received"
    code_digest: str = attrs.field(validator=_digest)
    host: AccountHost | None
    lease: Lease = attrs.field(validator=_purpose("exchange"))
    state_issued_at: datetime | None = attrs.field(default=None, validator=_aware_or_none)
    code_holder: str | None = None
    #: The record version ``begin()`` read when it signed the state (None for a state signed
    #: before it was kept): the state is fresh for a connection made at that version or earlier.
    state_seen_version: int | None = None
    state_expires_at: datetime | None = attrs.field(default=None, validator=_aware_or_none)
    state_holder: str | None = None
    #: False for a code that came with no consent to tie it to a user (the legacy endpoint):
    #: it may be answered if known, never exchanged.
    may_claim: bool = True
    #: False for a new code from a browser (or caller) other than the one its state was bound
    #: to at ``begin()``: the flow compares the binding (or the app's session, for a state that
    #: opted out) with the state's keyed hashes, in constant time.
    browser_matches: bool = True
    #: True when the caller is the connection's own user: the app named the connection
    #: (``exchange_code``) or the browser's binding or session matched, and the state names
    #: it. Such a caller may hear that a consent older than the connection changed nothing,
    #: whichever route its code came by.
    caller_owns: bool = False
    #: True for a code an admin copied from the integration's "Keys and scopes" tab and the
    #: backend passed to ``connect_with_code``: server-side, no browser and no state; its
    #: caller's word is the consent, so a new one re-authorizes a connected connection.
    from_admin: bool = False
    #: True in metadata mode (protocol notes §7): a new code is exchanged only with the
    #: connection's own integration's ``credentials``; without them it is not claimed.
    needs_credentials: bool = False
    #: The integration the claim is to send the code with (metadata mode): the credentials
    #: amoCRM posted to ``secrets_uri`` for this code's state (whose client id is the
    #: redirect's), or, for a code without a state, the connection's own; None: none yet.
    credentials: ClientCredentials | None = attrs.field(default=None, repr=False)
    #: The sha256 hex digest of the state's nonce: the pending credentials the claim moves
    #: into the record's ``credentials`` are this state's. None without a state.
    state_digest: str | None = attrs.field(default=None, validator=_digest_or_none)

    def changes(self, record: ConnectionRecord, now: datetime) -> dict[str, Any]:
        assert self.host is not None  # the table's rules claim a code only with a host
        # A connected record keeps serving its tokens while an admin's code is exchanged: they
        # belong to its host, which the new pair's host replaces only when it lands.
        keeps_host = record.status is ConnectionStatus.CONNECTED
        return {
            "host": record.host if keeps_host else self.host.name,
            "seen_codes": record.with_code(self.code_digest, now),
            "lease": self.lease,
            "error": None,
            **self._credentials_changes(record),
        }

    def _credentials_changes(self, record: ConnectionRecord) -> dict[str, Any]:
        # The claim, in its one write, makes the state's posted credentials the connection's
        # own (the exchange sends them) and forgets them as pending.
        if self.credentials is None:
            return {}
        pending = tuple(
            entry for entry in record.pending_credentials if entry.state_digest != self.state_digest
        )
        return {"credentials": self.credentials, "pending_credentials": pending}


@attrs.frozen
class Denied(Event):
    """amoCRM redirected back with ``error`` instead of a code (the user pressed "Deny")."""

    name: ClassVar[str] = "denied"
    at: datetime = attrs.field(validator=_aware)
    #: amoCRM's ``error`` value; ``access_denied`` when the user pressed "Deny".
    reason: str = "access_denied"

    def changes(self, record: ConnectionRecord, now: datetime) -> dict[str, Any]:
        # "Deny" is the one value amoCRM documents; any other keeps amoCRM's word as the hint.
        if self.reason == Reason.ACCESS_DENIED:
            return _error_changes(ErrorInfo(Reason.ACCESS_DENIED, None, self.at))
        return _error_changes(ErrorInfo(Reason.CONSENT_FAILED, self.reason, self.at))


@attrs.frozen
class ExchangeSucceeded(Event):
    """amoCRM answered the code whose sha256 digest is ``code_digest`` with ``tokens``.

    ``code_digest`` names the claim the pair belongs to (None from callers that predate it):
    a pair kept in memory because its write failed may land after its exchange lease lapsed,
    and must land only on the claim of that very code (the table's guards).
    """

    name: ClassVar[str] = "exchange_succeeded"
    tokens: TokenSet
    code_digest: str | None = attrs.field(default=None, validator=_digest_or_none)
    #: True for a pair written by someone other than the exchanging worker (it was kept in
    #: memory: that worker's write failed and it gave up): the exchange lease is released, so
    #: the next caller verifies the pair at once.
    released: bool = False
    #: The account host the code was sent to (None from callers that predate it: the claim
    #: wrote it then). A connected record claiming an admin's code keeps its old host until
    #: this pair lands.
    host: str | None = None

    def changes(self, record: ConnectionRecord, now: datetime) -> dict[str, Any]:
        released = {"lease": None} if self.released else {}
        host = {"host": self.host} if self.host is not None else {}
        return {"tokens": self.tokens, "error": None, **released, **host}


def _code_failed_changes(record: ConnectionRecord, error: ErrorInfo) -> dict[str, Any]:
    """A code's exchange or its verification failed: on a connected connection (an admin's
    code refused; the table keeps it) only the claim's lease goes and the working tokens stay;
    otherwise the connection moves to ``error``."""
    if record.status is ConnectionStatus.CONNECTED:
        return {"lease": None}
    return _error_changes(error)


@attrs.frozen
class ExchangeFailed(Event):
    name: ClassVar[str] = "exchange_failed"
    error: ErrorInfo
    #: The lease of the claim this result concludes, set on a copy kept in memory when the
    #: store refused its write (``Records.concluding``): it lands only while that claim still
    #: holds the record (the table's ``claim_replaced``). None: written by the claim's worker.
    claim: Lease | None = None

    def changes(self, record: ConnectionRecord, now: datetime) -> dict[str, Any]:
        return _code_failed_changes(record, self.error)


@attrs.frozen
class LeaseExpired(Event):
    """The worker holding the exchange lease is presumed dead; the code is never resent.

    ``grace``: how long past the lease the exchange's pair is still awaited, since the worker
    may be alive and keep it in memory (its store write failed): ``Config.kept_pair_grace``.
    """

    name: ClassVar[str] = "lease_expired"
    at: datetime = attrs.field(validator=_aware)
    grace: timedelta = timedelta(0)

    def changes(self, record: ConnectionRecord, now: datetime) -> dict[str, Any]:
        return _error_changes(ErrorInfo(Reason.EXCHANGE_INTERRUPTED, None, self.at))


@attrs.frozen
class Verified(Event):
    name: ClassVar[str] = "verified"
    account: Account
    at: datetime = attrs.field(validator=_aware)
    #: The lease of the claim this result concludes, set on a copy kept in memory when the
    #: store refused its write (``Records.concluding``): it lands only while that claim still
    #: holds the record (the table's ``claim_replaced``). None: written by the claim's worker.
    claim: Lease | None = None

    def changes(self, record: ConnectionRecord, now: datetime) -> dict[str, Any]:
        return {
            "account": self.account,
            "lease": None,
            "error": None,
            "connected_at": self.at,
            # The version this write gives the record (``step`` adds one).
            "connected_version": record.version + 1,
            "refused_refresh": None,
            "verify_after": None,
            "verify_attempts": 0,
            "backoff": None,
        }


@attrs.frozen
class VerifyClaimed(Event):
    """A worker claims a pending verification (the exchange's own lease lapsed or a transient
    failure deferred it): it will ask ``GET /api/v4/account`` with the stored pair."""

    name: ClassVar[str] = "verify_claimed"
    lease: Lease = attrs.field(validator=_purpose("exchange"))

    def changes(self, record: ConnectionRecord, now: datetime) -> dict[str, Any]:
        return {"lease": self.lease}


@attrs.frozen
class VerifyDeferred(Event):
    """Verification failed for a moment (5xx, 429, a timeout): the pair from the spent code is
    kept and verification is tried again from ``retry_at`` on. ``sent``: the try reached
    amoCRM, so it counts in the back-off (one refused unsent, during the host's pause, does
    not)."""

    name: ClassVar[str] = "verify_deferred"
    retry_at: datetime = attrs.field(validator=_aware)
    sent: bool = True
    #: The lease of the claim this result concludes, set on a copy kept in memory when the
    #: store refused its write (``Records.concluding``): it lands only while that claim still
    #: holds the record (the table's ``claim_replaced``). None: written by the claim's worker.
    claim: Lease | None = None

    def changes(self, record: ConnectionRecord, now: datetime) -> dict[str, Any]:
        attempts = record.verify_attempts + (1 if self.sent else 0)
        return {"lease": None, "verify_after": self.retry_at, "verify_attempts": attempts}


@attrs.frozen
class VerifyFailed(Event):
    name: ClassVar[str] = "verify_failed"
    error: ErrorInfo
    #: The lease of the claim this result concludes, set on a copy kept in memory when the
    #: store refused its write (``Records.concluding``): it lands only while that claim still
    #: holds the record (the table's ``claim_replaced``). None: written by the claim's worker.
    claim: Lease | None = None

    def changes(self, record: ConnectionRecord, now: datetime) -> dict[str, Any]:
        return _code_failed_changes(record, self.error)


@attrs.frozen
class RefreshClaimed(Event):
    """A worker wants a usable access token at ``at``, and claims the refresh when it must
    make one.

    The stored access token is usable when it is not ``stale`` (one amoCRM just refused), stays
    valid past ``at + margin`` (the margin capped at half the token's lifetime), and, for the
    keep-alive sweep, its refresh token does not expire before ``refresh_before``. The table
    decides: serve it, wait for another worker's refresh, refuse, or claim this one (the claim
    counts a send of the refresh token before it is sent).
    """

    name: ClassVar[str] = "refresh_claimed"
    lease: Lease = attrs.field(validator=_purpose("refresh"))
    at: datetime = attrs.field(validator=_aware)
    margin: timedelta = timedelta(0)
    stale: str | None = attrs.field(default=None, repr=False)
    refresh_before: datetime | None = attrs.field(default=None, validator=_aware_or_none)

    def usable(self, tokens: TokenSet | None) -> bool:
        """True when ``tokens`` can be handed out as they are."""
        return (
            tokens is not None
            and tokens.access_token != self.stale
            and tokens.is_fresh(self.at, self.margin)
            and (self.refresh_before is None or tokens.refresh_expires_at >= self.refresh_before)
        )

    def still_valid(self, tokens: TokenSet | None) -> bool:
        """True when ``tokens`` hold an access token that has not expired at ``at`` and is not
        the one amoCRM refused (``stale``): usable, though inside the refresh margin."""
        return (
            tokens is not None and tokens.access_token != self.stale and self.at < tokens.expires_at
        )

    def changes(self, record: ConnectionRecord, now: datetime) -> dict[str, Any]:
        tokens = record.tokens
        counted = attrs.evolve(tokens, refresh_sends=tokens.refresh_sends + 1) if tokens else None
        return {"lease": self.lease, "tokens": counted}


@attrs.frozen
class Refreshed(Event):
    """amoCRM answered a refresh that spent ``spent_refresh_token`` with a new pair."""

    name: ClassVar[str] = "refreshed"
    tokens: TokenSet
    spent_refresh_token: str = attrs.field(repr=False)
    #: The account's new host, when the refresh followed an account move (protocol notes §5).
    host: AccountHost | None = None

    def changes(self, record: ConnectionRecord, now: datetime) -> dict[str, Any]:
        moved = {"host": self.host.name} if self.host is not None else {}
        return {
            "tokens": self.tokens,
            "lease": None,
            "error": None,
            "refused_refresh": None,
            "kept_pair_until": None,
            "backoff": None,
            **moved,
        }


@attrs.frozen
class RefreshDoubted(Event):
    """amoCRM refused ``spent_refresh_token`` as revoked (the refresh, or the account lookup
    of a moved account), but it was sent again after a lapsed lease: the first send (or the
    first moved retry) may have rotated it, and the process that sent it may keep the new
    pair in memory (its store write failed). The pair is awaited ``until`` (UTC): the refresh
    token is not sent again, and nobody is told to re-authorize before then."""

    name: ClassVar[str] = "refresh_doubted"
    spent_refresh_token: str = attrs.field(repr=False)
    until: datetime = attrs.field(validator=_aware)

    def changes(self, record: ConnectionRecord, now: datetime) -> dict[str, Any]:
        return {"lease": None, "kept_pair_until": self.until}


@attrs.frozen
class RefreshFailed(Event):
    """A refresh failed for good (the refresh token is revoked): re-authorization is needed."""

    name: ClassVar[str] = "refresh_failed"
    error: ErrorInfo
    spent_refresh_token: str = attrs.field(repr=False)

    def changes(self, record: ConnectionRecord, now: datetime) -> dict[str, Any]:
        refused = code_digest(self.spent_refresh_token)
        return {**_error_changes(self.error), "refused_refresh": refused}


@attrs.frozen
class RefreshReleased(Event):
    """A refresh failed without a verdict on the token: give up the lease so another try can
    start. ``sent`` is False when the try surely did not spend the refresh token (the request
    never left, or a 429/403/4xx answer proves it unused): it does not count as a send."""

    name: ClassVar[str] = "refresh_released"
    sent: bool = True

    def changes(self, record: ConnectionRecord, now: datetime) -> dict[str, Any]:
        tokens = record.tokens
        if self.sent or tokens is None:
            return {"lease": None}
        uncounted = attrs.evolve(tokens, refresh_sends=max(tokens.refresh_sends - 1, 0))
        return {"lease": None, "tokens": uncounted}


@attrs.frozen
class RefreshDeferred(Event):
    """amoCRM pushed back on a refresh (a 429, a blocked account's 403, a 5xx, any answer that
    kept the pair): the lease is given up and no refresh is tried before ``until`` (UTC, the
    store's clock), by any process. ``sent`` as for ``RefreshReleased``: an answer proves the
    refresh token unspent, so the claim's count of it is taken back. ``cause`` is the answer's
    reason slug (``_answers``). ``lease``: the claim's lease this answer concludes (None: any);
    written late (the store refused it at first), it concludes nothing another claim holds."""

    name: ClassVar[str] = "refresh_deferred"
    until: datetime = attrs.field(validator=_aware)
    cause: str
    sent: bool = False
    lease: Lease | None = None

    def changes(self, record: ConnectionRecord, now: datetime) -> dict[str, Any]:
        attempts = record.backoff.attempts + 1 if record.backoff is not None else 1
        released = RefreshReleased(sent=self.sent).changes(record, now)
        return {**released, "backoff": Backoff(self.until, attempts, self.cause)}


@attrs.frozen
class Disconnect(Event):
    """The application disconnects: tokens and account are forgotten, seen codes kept."""

    name: ClassVar[str] = "disconnect"

    def changes(self, record: ConnectionRecord, now: datetime) -> dict[str, Any]:
        # Seen codes stay: a replayed old code must remain a no-op, not a token call.
        return {
            "tokens": None,
            "account": None,
            "error": None,
            "lease": None,
            "host": None,
            "connected_at": None,
            "refused_refresh": None,
            "kept_pair_until": None,
            "backoff": None,
        }


@attrs.frozen
class ProviderDisconnected(Event):
    """amoCRM's disconnect hook: the integration was uninstalled from the account.

    ``token_still_accepted`` is True when amoCRM's API still accepted the stored access token
    just before: amoCRM answers 401 after an uninstall (protocol notes §6), so such a hook is a
    replay of an old one (its signature carries no time or nonce) and changes nothing.
    """

    name: ClassVar[str] = "provider_disconnected"
    at: datetime = attrs.field(validator=_aware)
    token_still_accepted: bool = False

    def changes(self, record: ConnectionRecord, now: datetime) -> dict[str, Any]:
        # The refused refresh is forgotten too: no late refresh answer may revive the account.
        error = ErrorInfo(Reason.DISCONNECTED_BY_PROVIDER, None, self.at)
        return {**_error_changes(error), "refused_refresh": None}


@attrs.frozen
class CredentialsReceived(Event):
    """amoCRM posted a new integration's ``credentials`` to ``secrets_uri`` for the consent
    whose state nonce has the sha256 digest ``state_digest`` (site button, metadata mode;
    protocol notes §7), at ``at`` (the store's clock).

    ``state_holder`` is what the code ledger says holds that state's nonce (a claimed code's
    digest, or a denial), None while it is unused: once held, the consent is settled and its
    credentials change no more. The status never changes: the credentials wait, beside
    whatever the connection is, for the code of their consent.
    """

    name: ClassVar[str] = "credentials_received"
    state_digest: str = attrs.field(validator=_digest)
    credentials: ClientCredentials
    at: datetime = attrs.field(validator=_aware)
    state_holder: str | None = attrs.field(default=None, repr=False)

    def pending(self) -> PendingCredentials:
        """The entry these credentials make on the record."""
        return PendingCredentials(self.state_digest, self.credentials, self.at)

    def is_pending(self, record: ConnectionRecord) -> bool:
        """The record holds exactly these credentials for this consent already."""
        return any(
            entry.state_digest == self.state_digest and entry.credentials == self.credentials
            for entry in record.pending_credentials
        )

    def conflicts(self, record: ConnectionRecord) -> bool:
        """The record holds this client id, pending (for any consent) or as its own, with
        another secret: amoCRM makes a new integration per install, so one of the two secrets
        is not amoCRM's."""
        held = [entry.credentials for entry in record.pending_credentials]
        if record.credentials is not None:
            held.append(record.credentials)
        return any(
            known.client_id == self.credentials.client_id and known != self.credentials
            for known in held
        )

    def crowds(self, record: ConnectionRecord) -> bool:
        """The record's pending entries are all this consent's, as many as it keeps: a new
        one would evict one of them (amoCRM's own post among them, maybe)."""
        pending = record.pending_credentials
        return len(pending) >= MAX_PENDING_CREDENTIALS and all(
            entry.state_digest == self.state_digest for entry in pending
        )

    def changes(self, record: ConnectionRecord, now: datetime) -> dict[str, Any]:
        # Kept per (consent, client id): a retried install (a new integration under the same
        # state) adds an entry beside the first, so a post under someone else's state never
        # evicts amoCRM's. At most MAX_PENDING_CREDENTIALS are kept: the oldest of another
        # consent makes room (the table refuses a post when every entry is this consent's).
        kept = list(record.pending_credentials)
        while len(kept) >= MAX_PENDING_CREDENTIALS:
            kept.remove(next(e for e in kept if e.state_digest != self.state_digest))
        return {"pending_credentials": (*kept, self.pending())}


#: What a connection whose long-lived token ended tells its user (``ErrorInfo.hint``).
LONG_LIVED_HINT: Final = "ask your amoCRM admin for a new token"


@attrs.frozen
class LongLivedInstalled(Event):
    """An admin's long-lived token (protocol notes §8), already verified with
    ``GET /api/v4/account`` on ``host``: the connection is made with it, replacing whatever it
    held (a pair, an older token, an error). Seen codes stay: a replayed code remains a no-op.
    """

    name: ClassVar[str] = "long_lived_installed"
    tokens: TokenSet = attrs.field(validator=lambda _, __, value: _long_lived(value))
    host: AccountHost
    account: Account
    at: datetime = attrs.field(validator=_aware)

    def changes(self, record: ConnectionRecord, now: datetime) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "host": self.host.name,
            "account": self.account,
            "error": None,
            "lease": None,
            "connected_at": self.at,
            # The version this write gives the record (``step`` adds one).
            "connected_version": record.version + 1,
            "refused_refresh": None,
            "verify_after": None,
            "verify_attempts": 0,
            "kept_pair_until": None,
            "backoff": None,
        }


def _long_lived(tokens: TokenSet) -> None:
    if not tokens.long_lived or tokens.refresh_token is not None:
        raise ValueError("tokens must be a long-lived token without a refresh token")


@attrs.frozen
class LongLivedEnded(Event):
    """The long-lived token ``access_token`` can serve no more: it reached its ``exp``, or
    amoCRM refused it (a 401). Only an admin's new token brings the connection back.

    ``access_token`` None (a status read): whichever long-lived token the record holds, once
    its ``exp`` has passed."""

    name: ClassVar[str] = "long_lived_ended"
    access_token: str | None = attrs.field(repr=False)
    reason: Reason = attrs.field(
        validator=attrs.validators.in_(
            (Reason.LONG_LIVED_TOKEN_EXPIRED, Reason.LONG_LIVED_TOKEN_REVOKED)
        )
    )
    at: datetime = attrs.field(validator=_aware)

    def changes(self, record: ConnectionRecord, now: datetime) -> dict[str, Any]:
        return _error_changes(ErrorInfo(self.reason, LONG_LIVED_HINT, self.at))


#: The results that conclude a code's claim (the exchange refused, the pair verified or not):
#: the claim's last write, kept in memory with the claim's lease when the store refuses it.
Concluding = ExchangeFailed | Verified | VerifyDeferred | VerifyFailed
CONCLUDING = (ExchangeFailed, Verified, VerifyDeferred, VerifyFailed)

#: Every event class, in the order the docs list them.
EVENT_TYPES: tuple[type[Event], ...] = (
    CodeReceived,
    Denied,
    ExchangeSucceeded,
    ExchangeFailed,
    LeaseExpired,
    Verified,
    VerifyClaimed,
    VerifyDeferred,
    VerifyFailed,
    RefreshClaimed,
    Refreshed,
    RefreshDoubted,
    RefreshFailed,
    RefreshReleased,
    RefreshDeferred,
    Disconnect,
    ProviderDisconnected,
    LongLivedInstalled,
    LongLivedEnded,
    CredentialsReceived,
)
