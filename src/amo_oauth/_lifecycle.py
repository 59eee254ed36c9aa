"""THE lifecycle table. Nothing else decides what an event does to a connection's status.

Each ``Rule`` says: on ``event``, in one of ``sources``, when ``guard`` holds (or always), go to
``dest``; or, when ``dest`` is None, do nothing, for the documented reason ``noop``. Rules for
one (status, event) are tried in order and every such pair ends in an unguarded rule, so the
table is total: every pair has a transition or a documented no-op (a test checks it).

The rules drive one module-level ``transitions.Machine`` with no models of its own. A step fires
the rule's trigger on a short-lived model, never on a registered one: registering a model per
connection is O(N) in the machine and the machine would then hold every connection. Concurrency
is not the machine's business either: the stores' compare-and-set decides which write wins.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

import attrs
from transitions import EventData, Machine, MachineError, State
from transitions.core import Event as Trigger
from transitions.core import Transition

from ._errors import InvalidTransition
from ._events import (
    CONCLUDING,
    EVENT_TYPES,
    SHA256_HEX,
    CodeReceived,
    CredentialsReceived,
    Event,
    ExchangeSucceeded,
    LeaseExpired,
    LongLivedEnded,
    RefreshClaimed,
)
from ._reasons import Reason
from ._records import ConnectionRecord, ConnectionStatus, code_digest
from ._state_token import issued_ahead

__all__ = [
    "DENIED_HOLDER",
    "EXCHANGING",
    "MACHINE",
    "TABLE",
    "NoOp",
    "Rule",
    "Step",
    "fixed_noop",
    "may_change",
    "step",
]


class NoOp(enum.StrEnum):
    """Why an event changes nothing: the table's named no-ops, each a stable slug.

    A flow acts on the member it is answered (report, wait, refuse), never on a string, so
    mypy sees every comparison, and a ``match`` ending in ``assert_never`` is told of a new one.
    """

    # code_received (and denied)
    DUPLICATE_CODE = "duplicate_code"
    DUPLICATE_CONSENT = "duplicate_consent"
    EXPIRED_STATE = "expired_state"
    STATE_FROM_AHEAD = "state_from_ahead"
    REUSED_STATE = "reused_state"
    WRONG_BROWSER = "wrong_browser"
    NEW_CODE_REFUSED = "new_code_refused"
    NO_HOST = "no_host"
    KEEP_CONNECTION = "keep_connection"
    EXCHANGE_IN_PROGRESS = "exchange_in_progress"
    # an admin's code the ledger holds for another connection: never sent again
    CODE_USED_ELSEWHERE = "code_used_elsewhere"
    # metadata mode: a new code whose integration's credentials have not been posted (yet)
    CREDENTIALS_PENDING = "credentials_pending"
    # a result for a claim someone else has since replaced
    STALE = "stale"
    # lease_expired and verify_claimed
    LEASE_LIVE = "lease_live"
    VERIFICATION_PENDING = "verification_pending"
    NO_EXCHANGE = "no_exchange"
    VERIFICATION_DEFERRED = "verification_deferred"
    NOTHING_TO_VERIFY = "nothing_to_verify"
    # refresh_claimed, refreshed, refresh_failed
    TOKEN_FRESH = "token_fresh"
    REFRESH_IN_PROGRESS = "refresh_in_progress"
    NO_REFRESH_TOKEN = "no_refresh_token"
    REFUSED_AGAIN = "refused_again"
    REFRESH_EXHAUSTED = "refresh_exhausted"
    NOT_CONNECTED = "not_connected"
    ALREADY_ROTATED = "already_rotated"
    # amoCRM pushed back on the last refresh: none is sent before the back-off lapses
    REFRESH_BACKOFF = "refresh_backoff"
    # a pair another process may keep in memory (its store write failed) is awaited
    KEPT_PAIR_PENDING = "kept_pair_pending"
    # refresh_doubted on a refresh token sent once: amoCRM's "revoked" is the token's verdict
    FIRST_SEND = "first_send"
    # refresh_claimed on a long-lived token (protocol §8): never refreshed
    LONG_LIVED_EXPIRING = "long_lived_expiring"
    LONG_LIVED_REVOKED = "long_lived_revoked"
    LONG_LIVED_EXPIRED = "long_lived_expired"
    # disconnect and provider_disconnected
    ALREADY_DISCONNECTED = "already_disconnected"
    HOOK_REPLAYED = "hook_replayed"
    NOTHING_TO_FORGET = "nothing_to_forget"
    # credentials_received (site button, metadata mode): the consent's code was claimed (or
    # its state brought a denial), or these very credentials are pending already
    CREDENTIALS_SETTLED = "credentials_settled"
    CREDENTIALS_UNCHANGED = "credentials_unchanged"
    # ... or their client id is held with another secret, or the consent's entries fill the
    # record: refused
    CREDENTIALS_CONFLICT = "credentials_conflict"
    CREDENTIALS_CROWDED = "credentials_crowded"
    #: No rule fired (never, while the table is total: a test checks it).
    UNDEFINED = "undefined"


S = ConnectionStatus
ALL = tuple(ConnectionStatus)
# The statuses whose record is held by an exchange lease.
EXCHANGING = (S.CODE_RECEIVED, S.EXCHANGED)


# -- guards: cheap, pure, and deciding only on what the record holds and the event brings ------


def code_is_known(data: EventData) -> bool:
    """The code's digest is on the record: it was seen before."""
    step = _model(data)
    return isinstance(step.event, CodeReceived) and step.record.knows_code(step.event.code_digest)


def code_was_claimed(data: EventData) -> bool:
    """The store's code ledger says the code was claimed already, for this record or another.

    A claim writes the ledger entry and the record in one atomic operation, so an entry means
    the code went (or is going) to amoCRM, even when the record no longer remembers it (its
    newest-256 list moved on, or an unreadable row was replaced)."""
    step = _model(data)
    return isinstance(step.event, CodeReceived) and step.event.code_holder is not None


def state_was_used_by_another_code(data: EventData) -> bool:
    """The state came back with a new code after another code of the same consent used it (a
    double tap on "Allow" makes two codes for one state): a duplicate of that consent."""
    step = _model(data)
    event = step.event
    return (
        isinstance(event, CodeReceived)
        and event.state_holder is not None
        and SHA256_HEX.fullmatch(event.state_holder) is not None
        and event.state_holder != event.code_digest
    )


def state_was_denied(data: EventData) -> bool:
    """The state came back with a code after it brought the user's "Deny"."""
    step = _model(data)
    event = step.event
    return isinstance(event, CodeReceived) and event.state_holder == DENIED_HOLDER


def code_has_no_consent(data: EventData) -> bool:
    """A new code (unknown to the ledger) that came with no consent this call may claim for:
    no state, or the legacy web route. Nothing ties it to the user (amoCRM has no PKCE), so it
    is never exchanged, whatever the connection's status."""
    step = _model(data)
    event = step.event
    return isinstance(event, CodeReceived) and not event.may_claim and event.code_holder is None


def browser_is_not_bound(data: EventData) -> bool:
    """A new code (unknown to the code ledger) arrived from a browser other than the one that
    started its consent: no binding, another browser's, or (for a state that opted out of the
    browser binding) no matching app session. It is never exchanged (RFC 9700 §4.7.1)."""
    step = _model(data)
    event = step.event
    return (
        isinstance(event, CodeReceived)
        and event.may_claim
        and not event.browser_matches
        and event.code_holder is None
    )


def owner_brings_an_older_consent(data: EventData) -> bool:
    """A new code of a consent begun before the connection was made, from the connection's own
    user (two tabs of one browser, the second "Allow" after the first connected; then the
    app's deep link of that second code to the legacy route). Nothing is to be exchanged, so
    neither the route nor the binding matters: the user hears the connection's status."""
    step = _model(data)
    event = step.event
    return (
        isinstance(event, CodeReceived)
        and event.caller_owns
        and event.code_holder is None
        and (event.state_seen_version is not None or event.state_issued_at is not None)
        and not _begun_after_connecting(step)
    )


def host_is_unknown(data: EventData) -> bool:
    """Neither the redirect nor the record names a host to send the code to."""
    step = _model(data)
    return isinstance(step.event, CodeReceived) and step.event.host is None


def state_has_expired(data: EventData) -> bool:
    """The code came with a state that has expired: no new claim under it. (The flow passes
    the state's expiry plus ``MAX_CLOCK_SKEW``: the machine that signed it may run behind.)"""
    step = _model(data)
    expires = getattr(step.event, "state_expires_at", None)
    return expires is not None and step.now >= expires


def state_from_ahead(data: EventData) -> bool:
    """The code came with a state signed more than ``MAX_CLOCK_SKEW`` ahead of the store's
    clock: the signing machine's clock is off too far to judge the state's age."""
    step = _model(data)
    issued = getattr(step.event, "state_issued_at", None)
    return issued is not None and issued_ahead(issued, step.now)


def state_is_fresh(data: EventData) -> bool:
    """The code came with an unused state issued after the connection was made, and a host:
    a deliberate re-authorization."""
    step = _model(data)
    return _begun_after_connecting(step) and not host_is_unknown(data)


def _begun_after_connecting(step: _Model) -> bool:
    """Did the state's ``begin()`` read the record after its connection was made? By version,
    which cannot tie (a re-authorization begun in the same millisecond as the connection is
    fresh); by time only for a state or record from before versions were kept."""
    seen = getattr(step.event, "state_seen_version", None)
    made = step.record.connected_version
    if seen is not None and made is not None:
        return bool(seen >= made)
    issued, connected = getattr(step.event, "state_issued_at", None), step.record.connected_at
    return issued is not None and connected is not None and issued > connected


def admin_code_is_new(data: EventData) -> bool:
    """A code an admin supplied server-side (``connect_with_code``), unknown to the code ledger,
    with a host: the backend's call is the consent, so it re-authorizes a connected
    connection as a fresh state would."""
    step = _model(data)
    event = step.event
    return (
        isinstance(event, CodeReceived)
        and event.from_admin
        and event.code_holder is None
        and event.host is not None
    )


def admin_code_held_elsewhere(data: EventData) -> bool:
    """An admin's code (``connect_with_code``) the code ledger holds for another connection
    (another record's key): it went to amoCRM for that one, so it is refused here, whichever
    of two racing calls lost (protocol §3: a code is single use)."""
    step = _model(data)
    event, record = step.event, step.record
    return (
        isinstance(event, CodeReceived)
        and event.from_admin
        and event.code_holder is not None
        and event.code_holder not in (record.key, record.connection_id)
    )


def admin_claim_is_live(data: EventData) -> bool:
    """A connected record holds a live exchange lease: an admin's code claimed on it is at
    amoCRM now (the connection keeps serving its tokens meanwhile)."""
    step = _model(data)
    lease = step.record.live_lease(step.now)
    return lease is not None and lease.purpose == "exchange"


def holds_an_admin_claim(data: EventData) -> bool:
    """A connected record holds the exchange lease of an admin's code (live or lapsed, not
    replaced since by a refresh): the answer for that code belongs to it."""
    lease = _model(data).record.lease
    return lease is not None and lease.purpose == "exchange"


def lands_the_admin_claim(data: EventData) -> bool:
    """The pair for the very admin code a connected record claimed: it replaces the old pair
    (then verified as any exchange's)."""
    event = _model(data).event
    return (
        holds_an_admin_claim(data)
        and isinstance(event, ExchangeSucceeded)
        and event.code_digest is not None
        and is_this_exchange(data)
    )


def credentials_not_received(data: EventData) -> bool:
    """Metadata mode (protocol notes §7): the code would be claimed, but the credentials of
    the integration amoCRM made for this consent have not reached ``secrets_uri`` (or came for
    another client id than the redirect's): the code is not claimed without them."""
    event = _model(data).event
    return isinstance(event, CodeReceived) and event.needs_credentials and event.credentials is None


def reauthorizes_without_credentials(data: EventData) -> bool:
    """A connected connection would claim a new code (a fresh state's, an admin's) whose
    integration's credentials have not been received (metadata mode)."""
    return credentials_not_received(data) and (state_is_fresh(data) or admin_code_is_new(data))


def reclaims_a_claimed_code(data: EventData) -> bool:
    """A re-authorization (fresh state) would claim a code the ledger says was claimed."""
    return state_is_fresh(data) and code_was_claimed(data)


def lease_is_live(data: EventData) -> bool:
    """A worker holds the record (an exchange or a refresh) and has not outlived its lease."""
    step = _model(data)
    return step.record.live_lease(step.now) is not None


def awaits_a_kept_exchange(data: EventData) -> bool:
    """The exchange lease lapsed less than the event's grace ago: its worker may be alive and
    keep the pair from the code in memory (its store write failed), so the exchange is not
    given up yet."""
    step = _model(data)
    event, lease = step.event, step.record.lease
    if not isinstance(event, LeaseExpired) or lease is None:
        return False
    return step.now < lease.expires_at + event.grace


def is_this_exchange(data: EventData) -> bool:
    """The pair is from the code this record's claim is for (the newest code it saw); a pair
    that names no code is taken as the claim's (it comes from the claim's own worker)."""
    step = _model(data)
    event, seen = step.event, step.record.seen_codes
    if not isinstance(event, ExchangeSucceeded) or event.code_digest is None:
        return True
    return bool(seen) and seen[-1].digest == event.code_digest


def claim_replaced(data: EventData) -> bool:
    """A claim's result kept in memory (its write failed) names the claim's lease; another
    claim has since replaced it (a lapsed lease taken over, a new code): it must not land."""
    step = _model(data)
    event = step.event
    claim = event.claim if isinstance(event, CONCLUDING) else None
    return claim is not None and step.record.lease != claim


def interrupted_this_exchange(data: EventData) -> bool:
    """In ``error(exchange_interrupted)`` for the very code whose pair arrives (kept in memory
    by a worker whose store write failed, landing after the grace): it brings the pair in."""
    step = _model(data)
    event, error = step.event, step.record.error
    return (
        isinstance(event, ExchangeSucceeded)
        and event.code_digest is not None
        and error is not None
        and error.reason == Reason.EXCHANGE_INTERRUPTED
        and is_this_exchange(data)
    )


def awaits_a_kept_pair(data: EventData) -> bool:
    """amoCRM refused a refresh token sent again after a lapsed lease, less than the grace ago:
    a rotated pair kept in memory by the first sender may still land."""
    step = _model(data)
    until = step.record.kept_pair_until
    return until is not None and step.now < until


def refresh_held_back(data: EventData) -> bool:
    """amoCRM pushed back on the connection's last refresh (a 429, a 403, a 5xx) and the
    back-off it earned has not lapsed: no refresh token is sent before then."""
    step = _model(data)
    backoff = step.record.backoff
    return backoff is not None and backoff.is_live(step.now)


def concludes_another_claim(data: EventData) -> bool:
    """A push-back names the claim it answered (its lease), and the record no longer holds
    that claim: another worker claimed since (or someone concluded it). Written late (the store
    refused it at first), it must not release their lease or take back their count."""
    step = _model(data)
    answered = getattr(step.event, "lease", None)
    held = step.record.lease
    return answered is not None and (held is None or held.owner != answered.owner)


def held_back_with_a_valid_token(data: EventData) -> bool:
    """The refresh is held back, and a caller asking for a token (not the sweep, which wants
    the refresh token renewed) holds one that still works: not expired, not the one amoCRM
    refused. It is served (only the refresh waits), inside the refresh margin too."""
    step = _model(data)
    event = step.event
    return (
        refresh_held_back(data)
        and isinstance(event, RefreshClaimed)
        and event.refresh_before is None
        and event.still_valid(step.record.tokens)
    )


def sent_again_after_a_lapse(data: EventData) -> bool:
    """The refresh token was claimed more than once (a lease lapsed, or a send went without a
    stored answer): an earlier send may have rotated it, so a "revoked" is not its verdict."""
    tokens = _model(data).record.tokens
    return tokens is not None and tokens.refresh_sends > 1


def verification_not_due(data: EventData) -> bool:
    """A transient failure deferred verification, and its next try is not due yet."""
    step = _model(data)
    after = step.record.verify_after
    return after is not None and step.now < after


def token_is_usable(data: EventData) -> bool:
    """The stored access token is what the caller needs: no refresh."""
    step = _model(data)
    return isinstance(step.event, RefreshClaimed) and step.event.usable(step.record.tokens)


#: The ledger holder of a state that brought a denial (codes hold theirs by their digest).
DENIED_HOLDER = "denied"

#: Sends of one refresh token that may go out without a stored answer (the first, and one
#: more when its answer was lost: Kommo honours the old token until the new one is used).
MAX_REFRESH_SENDS = 2
#: How long a pair refreshed because of a 401 is not refreshed again for another 401.
REJECTION_WINDOW = timedelta(minutes=10)


def refused_after_refresh(data: EventData) -> bool:
    """amoCRM refused (401) an access token that was itself just refreshed because of a 401:
    refreshing again would not help (the API keeps refusing), so the pair is kept."""
    step = _model(data)
    event, tokens = step.event, step.record.tokens
    if not isinstance(event, RefreshClaimed) or tokens is None or event.stale is None:
        return False
    recent = tokens.issued_at is None or event.at - tokens.issued_at < REJECTION_WINDOW
    return tokens.access_token == event.stale and tokens.after_rejection and recent


def _long_lived_tokens(data: EventData) -> bool:
    tokens = _model(data).record.tokens
    return tokens is not None and tokens.long_lived


def long_lived_still_valid(data: EventData) -> bool:
    """A long-lived token that has not reached its ``exp`` and that amoCRM did not just refuse,
    asked for by a caller (not the sweep): served to its last second, whatever the refresh
    margin (nothing could renew it earlier)."""
    step = _model(data)
    event = step.event
    return (
        _long_lived_tokens(data)
        and isinstance(event, RefreshClaimed)
        and event.refresh_before is None
        and event.still_valid(step.record.tokens)
    )


def long_lived_expiring(data: EventData) -> bool:
    """The sweep met a long-lived token, still valid, that expires inside its window: it is
    reported, never refreshed (there is no refresh token; an admin issues a new one)."""
    step = _model(data)
    event = step.event
    return (
        _long_lived_tokens(data)
        and isinstance(event, RefreshClaimed)
        and event.refresh_before is not None
        and event.still_valid(step.record.tokens)
    )


def long_lived_refused(data: EventData) -> bool:
    """amoCRM refused (a 401) the long-lived token before its ``exp``: an admin revoked it."""
    step = _model(data)
    tokens, stale = step.record.tokens, getattr(step.event, "stale", None)
    return _long_lived_tokens(data) and tokens is not None and tokens.access_token == stale


def ends_the_stored_token(data: EventData) -> bool:
    """The long-lived token that ended is the one the record holds (not one replaced since;
    any held, for an event that names none), and one that expired has reached its ``exp`` on
    the store's clock."""
    step = _model(data)
    event, tokens = step.event, step.record.tokens
    return (
        isinstance(event, LongLivedEnded)
        and tokens is not None
        and tokens.long_lived
        and event.access_token in (None, tokens.access_token)
        and (event.reason != Reason.LONG_LIVED_TOKEN_EXPIRED or step.now >= tokens.expires_at)
    )


def cannot_renew(data: EventData) -> bool:
    """The stored token has no refresh token (amoCRM gave none): nothing to send."""
    tokens = _model(data).record.tokens
    return tokens is not None and tokens.refresh_token is None


def refresh_token_spent(data: EventData) -> bool:
    """The stored refresh token was sent MAX_REFRESH_SENDS times without a stored answer."""
    tokens = _model(data).record.tokens
    return tokens is not None and tokens.refresh_sends >= MAX_REFRESH_SENDS


def awaits_a_late_refresh(data: EventData) -> bool:
    """In error because a refresh was refused, with a verified account: a late answer to an
    overtaken refresh of that token could still bring the connection back."""
    return _model(data).record.refused_refresh is not None


def hook_is_a_replay(data: EventData) -> bool:
    """amoCRM still accepted the connection's token: the uninstall hook is an old one replayed."""
    return bool(getattr(_model(data).event, "token_still_accepted", False))


def pair_was_rotated(data: EventData) -> bool:
    """The stored refresh token is not the one this refresh spent: another worker rotated the
    pair (or a new consent replaced it) since."""
    step = _model(data)
    spent = getattr(step.event, "spent_refresh_token", None)
    tokens = step.record.tokens
    return tokens is not None and tokens.refresh_token != spent


def renews_the_stored_pair(data: EventData) -> bool:
    """The refresh spent the refresh token the record holds (not an older pair's)."""
    step = _model(data)
    spent = getattr(step.event, "spent_refresh_token", None)
    tokens = step.record.tokens
    return tokens is not None and spent is not None and tokens.refresh_token == spent


def refused_this_refresh(data: EventData) -> bool:
    """The connection is in ``error`` because amoCRM refused the very refresh token this answer
    spent, and it was verified before: the answer to an earlier, overtaken refresh of that
    token brings it back. Decided on the refused token's digest and the account, never on text."""
    step = _model(data)
    spent = getattr(step.event, "spent_refresh_token", None)
    record = step.record
    return (
        spent is not None
        and record.account is not None
        and record.refused_refresh is not None
        and record.refused_refresh == code_digest(spent)
    )


def consent_is_settled(data: EventData) -> bool:
    """The code ledger holds the state the credentials came with: its code was claimed (and
    took the credentials pending then) or it brought a denial. Nothing changes after that."""
    event = _model(data).event
    return isinstance(event, CredentialsReceived) and event.state_holder is not None


def credentials_are_pending(data: EventData) -> bool:
    """The very credentials posted are pending for that consent already (amoCRM's retry of
    the same post): idempotent."""
    step = _model(data)
    return isinstance(step.event, CredentialsReceived) and step.event.is_pending(step.record)


def credentials_conflict(data: EventData) -> bool:
    """The posted client id is pending (for any consent) or the connection's own with another
    secret: amoCRM makes a new integration per install, so one secret is not amoCRM's."""
    step = _model(data)
    return isinstance(step.event, CredentialsReceived) and step.event.conflicts(step.record)


def consent_is_crowded(data: EventData) -> bool:
    """Every pending entry is this consent's, as many as a record keeps: another would evict
    one of them (amoCRM's own, maybe)."""
    step = _model(data)
    return isinstance(step.event, CredentialsReceived) and step.event.crowds(step.record)


@attrs.frozen
class Rule:
    event: str
    sources: tuple[ConnectionStatus, ...]
    dest: ConnectionStatus | None
    guard: Callable[[EventData], bool] | None = None
    #: For a no-op: why nothing happens.
    noop: NoOp | None = None


def _stale(event: str, *live: ConnectionStatus) -> Rule:
    # A result that arrives for a claim someone else has since replaced (disconnect, a hook):
    # it must not resurrect or overwrite anything.
    return Rule(event, tuple(s for s in ALL if s not in live), None, noop=NoOp.STALE)


TABLE: tuple[Rule, ...] = (
    # A known code is a no-op in every status: the fix for the seed's double exchange.
    Rule("code_received", ALL, None, code_is_known, noop=NoOp.DUPLICATE_CODE),
    Rule("code_received", ALL, None, admin_code_held_elsewhere, noop=NoOp.CODE_USED_ELSEWHERE),
    Rule("code_received", ALL, None, state_has_expired, noop=NoOp.EXPIRED_STATE),
    Rule("code_received", ALL, None, state_from_ahead, noop=NoOp.STATE_FROM_AHEAD),
    # A second code of one consent is reported, never exchanged: while the first is in flight
    # or connected it is that connection, and after a failure or a disconnect a new consent
    # (a new begin()) is the way back. A state that brought a denial stays refused.
    Rule("code_received", ALL, None, state_was_used_by_another_code, noop=NoOp.DUPLICATE_CONSENT),
    Rule("code_received", ALL, None, state_was_denied, noop=NoOp.REUSED_STATE),
    # Known codes and duplicates are answered above from reads alone (a reload of the callback
    # page, the seed's replay); a new code only in the browser that started the consent.
    Rule(
        "code_received",
        (S.CONNECTED,),
        None,
        owner_brings_an_older_consent,
        noop=NoOp.KEEP_CONNECTION,
    ),
    Rule("code_received", ALL, None, browser_is_not_bound, noop=NoOp.WRONG_BROWSER),
    Rule("code_received", EXCHANGING, None, noop=NoOp.EXCHANGE_IN_PROGRESS),
    Rule(
        "code_received", (S.CONNECTED,), None, admin_claim_is_live, noop=NoOp.EXCHANGE_IN_PROGRESS
    ),
    # A code the store-wide ledger holds is a duplicate too (each code goes out at most once),
    # found where this record would otherwise claim it.
    Rule("code_received", (S.CONNECTED,), None, reclaims_a_claimed_code, noop=NoOp.DUPLICATE_CODE),
    Rule("code_received", (S.CONNECTED,), None, code_has_no_consent, noop=NoOp.NEW_CODE_REFUSED),
    # Metadata mode: a code that would be claimed waits (the flow, a bounded time) for its
    # integration's credentials; only duplicates and refusals are answered before this.
    Rule(
        "code_received",
        (S.CONNECTED,),
        None,
        reauthorizes_without_credentials,
        noop=NoOp.CREDENTIALS_PENDING,
    ),
    Rule("code_received", (S.CONNECTED,), S.CODE_RECEIVED, state_is_fresh),
    # An admin's new code on a connected connection is claimed without ending it: the old
    # tokens are served until the new pair is in hand, and kept if amoCRM refuses the code.
    Rule("code_received", (S.CONNECTED,), S.CONNECTED, admin_code_is_new),
    Rule("code_received", (S.CONNECTED,), None, noop=NoOp.KEEP_CONNECTION),
    Rule("code_received", (S.DISCONNECTED, S.ERROR), None, host_is_unknown, noop=NoOp.NO_HOST),
    Rule(
        "code_received",
        (S.DISCONNECTED, S.ERROR),
        None,
        code_was_claimed,
        noop=NoOp.DUPLICATE_CODE,
    ),
    Rule(
        "code_received",
        (S.DISCONNECTED, S.ERROR),
        None,
        code_has_no_consent,
        noop=NoOp.NEW_CODE_REFUSED,
    ),
    Rule(
        "code_received",
        (S.DISCONNECTED, S.ERROR),
        None,
        credentials_not_received,
        noop=NoOp.CREDENTIALS_PENDING,
    ),
    Rule("code_received", (S.DISCONNECTED, S.ERROR), S.CODE_RECEIVED),
    Rule("denied", (S.DISCONNECTED, S.ERROR), S.ERROR),
    Rule("denied", (S.CONNECTED,), None, noop=NoOp.KEEP_CONNECTION),
    Rule("denied", EXCHANGING, None, noop=NoOp.EXCHANGE_IN_PROGRESS),
    Rule("exchange_succeeded", (S.CODE_RECEIVED,), S.EXCHANGED, is_this_exchange),
    Rule("exchange_succeeded", (S.CODE_RECEIVED,), None, noop=NoOp.STALE),
    Rule("exchange_succeeded", (S.CONNECTED,), S.EXCHANGED, lands_the_admin_claim),
    # A pair from a code kept in memory (its write failed) lands after the grace too, on the
    # claim of that very code: the connection needs no new consent.
    Rule("exchange_succeeded", (S.ERROR,), S.EXCHANGED, interrupted_this_exchange),
    _stale("exchange_succeeded", S.CODE_RECEIVED),
    # A claim's result that this process kept when the store refused it (a refused code, a
    # verification) lands at its next store operation, while that claim still holds the record.
    Rule(
        "exchange_failed",
        (S.CODE_RECEIVED, S.CONNECTED),
        None,
        claim_replaced,
        noop=NoOp.STALE,
    ),
    Rule("exchange_failed", (S.CODE_RECEIVED,), S.ERROR),
    # An admin's code refused (or of unknown fate) on a connected connection: it stays as it
    # was; only the claim's lease is released (the flow reports the refusal).
    Rule("exchange_failed", (S.CONNECTED,), S.CONNECTED, holds_an_admin_claim),
    _stale("exchange_failed", S.CODE_RECEIVED),
    # A worker that outlives its exchange lease is presumed dead; the code is never resent.
    # Before the pair is stored that is the end of this code; after, the pair from the spent
    # code is kept and its verification stays pending (tried again by the next caller).
    Rule("lease_expired", EXCHANGING, None, lease_is_live, noop=NoOp.LEASE_LIVE),
    # Its worker may be alive and keep the pair (its store write failed): awaited a grace.
    Rule(
        "lease_expired",
        (S.CODE_RECEIVED,),
        None,
        awaits_a_kept_exchange,
        noop=NoOp.KEPT_PAIR_PENDING,
    ),
    Rule("lease_expired", (S.CODE_RECEIVED,), S.ERROR),
    Rule("lease_expired", (S.EXCHANGED,), None, noop=NoOp.VERIFICATION_PENDING),
    # An admin's code claimed on a connected connection: awaited like any exchange; a lapsed
    # claim leaves the connection as it is (the code is never resent).
    Rule("lease_expired", (S.CONNECTED,), None, admin_claim_is_live, noop=NoOp.LEASE_LIVE),
    Rule("lease_expired", (S.DISCONNECTED, S.CONNECTED, S.ERROR), None, noop=NoOp.NO_EXCHANGE),
    Rule("verified", (S.EXCHANGED,), None, claim_replaced, noop=NoOp.STALE),
    Rule("verified", (S.EXCHANGED,), S.CONNECTED),
    _stale("verified", S.EXCHANGED),
    Rule("verify_claimed", (S.EXCHANGED,), None, lease_is_live, noop=NoOp.LEASE_LIVE),
    Rule(
        "verify_claimed",
        (S.EXCHANGED,),
        None,
        verification_not_due,
        noop=NoOp.VERIFICATION_DEFERRED,
    ),
    Rule("verify_claimed", (S.EXCHANGED,), S.EXCHANGED),
    Rule(
        "verify_claimed",
        (S.DISCONNECTED, S.CODE_RECEIVED, S.CONNECTED, S.ERROR),
        None,
        noop=NoOp.NOTHING_TO_VERIFY,
    ),
    Rule("verify_deferred", (S.EXCHANGED,), None, claim_replaced, noop=NoOp.STALE),
    Rule("verify_deferred", (S.EXCHANGED,), S.EXCHANGED),
    _stale("verify_deferred", S.EXCHANGED),
    Rule("verify_failed", (S.EXCHANGED,), None, claim_replaced, noop=NoOp.STALE),
    Rule("verify_failed", (S.EXCHANGED,), S.ERROR),
    _stale("verify_failed", S.EXCHANGED),
    # Tokens are served only when connected; a refresh is claimed only when the token is not
    # usable and no other worker holds a live lease (at most one refresh in flight).
    Rule("refresh_claimed", (S.CONNECTED,), None, token_is_usable, noop=NoOp.TOKEN_FRESH),
    # A long-lived token (protocol §8) is served until its exp and never refreshed: the sweep
    # reports one about to expire; a 401 or its exp ends the connection (an admin's new token
    # is the way back).
    Rule("refresh_claimed", (S.CONNECTED,), None, long_lived_still_valid, noop=NoOp.TOKEN_FRESH),
    Rule(
        "refresh_claimed",
        (S.CONNECTED,),
        None,
        long_lived_expiring,
        noop=NoOp.LONG_LIVED_EXPIRING,
    ),
    Rule("refresh_claimed", (S.CONNECTED,), None, long_lived_refused, noop=NoOp.LONG_LIVED_REVOKED),
    Rule("refresh_claimed", (S.CONNECTED,), None, _long_lived_tokens, noop=NoOp.LONG_LIVED_EXPIRED),
    Rule("refresh_claimed", (S.CONNECTED,), None, cannot_renew, noop=NoOp.NO_REFRESH_TOKEN),
    Rule("refresh_claimed", (S.CONNECTED,), None, lease_is_live, noop=NoOp.REFRESH_IN_PROGRESS),
    # A rotated pair kept by the refresh token's first sender may land: nobody sends it again.
    Rule("refresh_claimed", (S.CONNECTED,), None, awaits_a_kept_pair, noop=NoOp.KEPT_PAIR_PENDING),
    # amoCRM pushed back (429, 403, 5xx): held back for every process until the back-off lapses.
    # A still-valid token is served above; only the refresh waits.
    Rule(
        "refresh_claimed",
        (S.CONNECTED,),
        None,
        held_back_with_a_valid_token,
        noop=NoOp.TOKEN_FRESH,
    ),
    Rule("refresh_claimed", (S.CONNECTED,), None, refresh_held_back, noop=NoOp.REFRESH_BACKOFF),
    Rule("refresh_claimed", (S.CONNECTED,), None, refused_after_refresh, noop=NoOp.REFUSED_AGAIN),
    Rule("refresh_claimed", (S.CONNECTED,), None, refresh_token_spent, noop=NoOp.REFRESH_EXHAUSTED),
    Rule("refresh_claimed", (S.CONNECTED,), S.CONNECTED),
    Rule("refresh_claimed", (S.DISCONNECTED, S.ERROR), None, noop=NoOp.NOT_CONNECTED),
    Rule("refresh_claimed", EXCHANGING, None, noop=NoOp.EXCHANGE_IN_PROGRESS),
    Rule("refreshed", (S.CONNECTED,), None, pair_was_rotated, noop=NoOp.ALREADY_ROTATED),
    Rule("refreshed", (S.CONNECTED,), S.CONNECTED),
    Rule("refreshed", (S.ERROR,), S.CONNECTED, refused_this_refresh),
    # A pair from a spent code, renewed before its late verification: only that very pair.
    Rule("refreshed", (S.EXCHANGED,), S.EXCHANGED, renews_the_stored_pair),
    _stale("refreshed", S.CONNECTED),
    # "Revoked" for a refresh token sent again after a lapse (by the refresh, or by the account
    # lookup of a moved account): its first send may have rotated it, and that pair may be kept
    # in memory; it is awaited (kept_pair_until), not given up.
    Rule("refresh_doubted", (S.CONNECTED,), None, pair_was_rotated, noop=NoOp.ALREADY_ROTATED),
    Rule("refresh_doubted", (S.CONNECTED,), S.CONNECTED, sent_again_after_a_lapse),
    Rule("refresh_doubted", (S.CONNECTED,), None, noop=NoOp.FIRST_SEND),
    _stale("refresh_doubted", S.CONNECTED),
    Rule("refresh_failed", (S.CONNECTED,), None, pair_was_rotated, noop=NoOp.ALREADY_ROTATED),
    Rule("refresh_failed", (S.CONNECTED,), S.ERROR),
    _stale("refresh_failed", S.CONNECTED),
    Rule("refresh_released", (S.CONNECTED,), S.CONNECTED),
    _stale("refresh_released", S.CONNECTED),
    Rule("refresh_deferred", (S.CONNECTED,), None, concludes_another_claim, noop=NoOp.STALE),
    Rule("refresh_deferred", (S.CONNECTED,), S.CONNECTED),
    _stale("refresh_deferred", S.CONNECTED),
    Rule("disconnect", (S.DISCONNECTED,), None, noop=NoOp.ALREADY_DISCONNECTED),
    Rule("disconnect", (S.CODE_RECEIVED, S.EXCHANGED, S.CONNECTED, S.ERROR), S.DISCONNECTED),
    Rule("provider_disconnected", ALL, None, hook_is_a_replay, noop=NoOp.HOOK_REPLAYED),
    Rule("provider_disconnected", (*EXCHANGING, S.CONNECTED), S.ERROR),
    # In error after a refused refresh, the hook still lands: a late answer to an overtaken
    # refresh must not bring an uninstalled integration back.
    Rule("provider_disconnected", (S.ERROR,), S.ERROR, awaits_a_late_refresh),
    Rule("provider_disconnected", (S.DISCONNECTED, S.ERROR), None, noop=NoOp.NOTHING_TO_FORGET),
    # An admin's long-lived token, verified before: it connects from any status, replacing what
    # was there, except under a live exchange (that code's pair is about to land).
    Rule("long_lived_installed", EXCHANGING, None, lease_is_live, noop=NoOp.EXCHANGE_IN_PROGRESS),
    Rule("long_lived_installed", ALL, S.CONNECTED),
    Rule("long_lived_ended", (S.CONNECTED,), S.ERROR, ends_the_stored_token),
    # A newer token (or a consent) replaced the one that ended: it stands.
    Rule("long_lived_ended", (S.CONNECTED,), None, noop=NoOp.ALREADY_ROTATED),
    _stale("long_lived_ended", S.CONNECTED),
    # Credentials posted to secrets_uri wait for their consent's code beside whatever the
    # connection is (a connected one may be re-authorized through the site button): the status
    # stays; a retried install's new integration is kept beside them until the code is claimed.
    Rule("credentials_received", ALL, None, consent_is_settled, noop=NoOp.CREDENTIALS_SETTLED),
    Rule(
        "credentials_received", ALL, None, credentials_are_pending, noop=NoOp.CREDENTIALS_UNCHANGED
    ),
    # Refused: a client id held with another secret, or a consent that fills the record.
    Rule("credentials_received", ALL, None, credentials_conflict, noop=NoOp.CREDENTIALS_CONFLICT),
    Rule("credentials_received", ALL, None, consent_is_crowded, noop=NoOp.CREDENTIALS_CROWDED),
    *(Rule("credentials_received", (status,), status) for status in ALL),
)


class _Model:
    """The short-lived model a trigger runs on: one record, one event, the rule that fired."""

    __slots__ = ("event", "now", "record", "rule", "status")

    def __init__(self, record: ConnectionRecord, event: Event, now: datetime) -> None:
        self.record = record
        self.event = event
        self.now = now
        self.status: ConnectionStatus = record.status
        self.rule: Rule | None = None


def _model(data: EventData) -> _Model:
    model = data.model
    assert isinstance(model, _Model)
    return model


def rule_transition(rule: Rule, *extra: Callable[[EventData], bool]) -> dict[str, object]:
    """``rule`` as a ``transitions`` transition: its event the trigger, its sources and
    destination, its guard (then ``extra``) the conditions. The one spelling of the table for
    every machine built from it: this module's, the diagram's, the benchmark's bare baseline
    and the tests' stock machine."""
    return {
        "trigger": rule.event,
        "source": list(rule.sources),
        "dest": rule.dest,
        "conditions": [*([rule.guard] if rule.guard else []), *extra],
    }


def _machine_transitions() -> list[dict[str, object]]:
    return [{**rule_transition(rule), "rule": rule} for rule in TABLE]


class _QuietState(State):
    """A status: the table gives none enter or exit callbacks, so entering or leaving one has
    nothing to run, and nothing to log (``State`` logs each at INFO)."""

    def enter(self, event_data: EventData) -> None:
        pass

    def exit(self, event_data: EventData) -> None:
        pass


class _RuleTransition(Transition):
    """One rule's transition: its guard is its one condition, checked by ``transitions``'
    ``Condition``; when it holds, the rule is noted on the model and the status set.

    The table uses none of ``Transition``'s callbacks (``prepare``, ``before``, ``after``, the
    machine's ``before_state_change`` / ``after_state_change``) and its states have no enter or
    exit work, so ``execute`` skips walking those empty lists and the five ``logger.debug``
    calls around them: about half of a step's cost (docs/performance.md). ``_LeanMachine``
    refuses a callback, so nothing given to it is ever skipped.
    """

    def __init__(self, *args: Any, rule: Rule, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.prepare or self.before or self.after:
            raise ValueError("the lifecycle's transitions take no callbacks")
        if any(not callable(c.func) or c.target is not True for c in self.conditions):
            raise ValueError("the lifecycle's conditions are functions that must hold")
        self.rule = rule
        # ``Condition.check`` resolves a condition named by a string on every call and compares
        # with its target (``unless``): the table's are functions that must hold, so they are
        # taken once, here, from the conditions ``transitions`` made.
        self.guards = tuple(cast(Callable[[EventData], bool], c.func) for c in self.conditions)

    def execute(self, event_data: EventData) -> bool:
        for guard in self.guards:
            if not guard(event_data):
                return False
        model = _model(event_data)
        model.rule = self.rule
        if self.rule.dest is not None:
            model.status = self.rule.dest
        return True


class _LeanEvent(Trigger):
    """A trigger without the machinery the lifecycle does not use: no event queue
    (``queued=False``), no machine-wide ``prepare_event`` / ``finalize_event`` /
    ``on_exception`` callbacks, and the model's state found by the status itself rather than
    through ``Enum.name`` (a slow property on Python 3.11). The rules are tried in the table's
    order, the first whose conditions hold fires, and an event undefined in the status raises
    ``MachineError``, as ``Event.trigger`` does."""

    machine: _LeanMachine

    def trigger(self, model: Any, *args: Any, **kwargs: Any) -> bool:
        data = EventData(None, self, self.machine, model, args, kwargs)
        data.state = state = self.machine.by_status[model.status]
        rules = self.transitions.get(state.name)
        if rules is None:
            raise MachineError(f"Can't trigger event {self.name} from state {state.name}!")
        for transition in rules:
            data.transition = transition
            if transition.execute(data):
                data.result = True
                break
        return bool(data.result)


class _LeanMachine(Machine):
    """``transitions.Machine`` over quiet states, lean rules and lean triggers: a step is a
    table lookup, and the one INFO line a written step deserves is the flows' own
    (``connection X: a -> b (event)``)."""

    state_cls = _QuietState
    transition_cls = _RuleTransition
    event_cls = _LeanEvent

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.has_queue or self.prepare_event or self.finalize_event or self.on_exception:
            raise ValueError("the lifecycle's machine takes no queue and no machine callbacks")
        if self.before_state_change or self.after_state_change:
            raise ValueError("the lifecycle's machine takes no machine callbacks")
        self.by_status = {status: self.get_state(status) for status in ConnectionStatus}


MACHINE = _LeanMachine(
    model=None,
    states=ConnectionStatus,
    transitions=_machine_transitions(),
    initial=ConnectionStatus.DISCONNECTED,
    auto_transitions=False,
    model_attribute="status",
    send_event=True,
)


#: The (event, status) pairs in which some rule of the table has a destination: anywhere
#: else the event is a no-op whatever its guards say, so ``may_change`` answers without a step.
_CHANGING = frozenset(
    (rule.event, status) for rule in TABLE if rule.dest is not None for status in rule.sources
)


def _fixed_noops() -> dict[tuple[str, ConnectionStatus], NoOp]:
    pairs: dict[tuple[str, ConnectionStatus], list[Rule]] = {}
    for rule in TABLE:
        for status in rule.sources:
            pairs.setdefault((rule.event, status), []).append(rule)
    return {
        pair: rules[0].noop
        for pair, rules in pairs.items()
        if len(rules) == 1 and rules[0].guard is None and rules[0].noop is not None
    }


#: The (event, status) pairs whose one rule is an unguarded no-op, and its reason.
_FIXED_NOOPS = _fixed_noops()


def fixed_noop(event_name: str, status: ConnectionStatus) -> NoOp | None:
    """The no-op ``step`` answers ``event_name`` in ``status`` whatever the record and the
    event hold, read off the table (the pair's one rule is an unguarded no-op); None when the
    answer depends on them. A flow that would step only to hear it may skip the step."""
    return _FIXED_NOOPS.get((event_name, status))


def may_change(event_name: str, status: ConnectionStatus) -> bool:
    """Whether ``event_name`` can change a record in ``status``: read off the table (some rule
    for the pair has a destination). False means ``step`` answers a no-op whatever the record
    holds, so a flow that only wants a change (a lapsed lease taken over on load) need not
    step."""
    return (event_name, status) in _CHANGING


@attrs.frozen
class Step:
    """What an event did: the record to write (``changed``) or the no-op reason."""

    record: ConnectionRecord
    changed: bool
    noop: NoOp | None = None


def step(record: ConnectionRecord, event: Event, now: datetime) -> Step:
    """Apply ``event`` to ``record`` by the table.

    Returns:
        A ``Step`` whose ``record`` has the new status, the event's changes and ``version + 1``
        when a transition fired, or the unchanged record and the no-op slug.

    Raises:
        InvalidTransition: the event is not one the table knows.
    """
    if type(event) not in EVENT_TYPES:
        raise InvalidTransition(f"unknown event {type(event).__name__}")
    model = _Model(record, event, now)
    try:
        MACHINE.events[event.name].trigger(model)
    except (MachineError, KeyError):
        raise InvalidTransition(f"{event.name} is undefined in {record.status.value}") from None
    rule = model.rule
    if rule is None or rule.dest is None:
        return Step(record, changed=False, noop=rule.noop if rule else NoOp.UNDEFINED)
    new = attrs.evolve(
        record,
        status=rule.dest,
        version=record.version + 1,
        updated_at=now,
        **event.changes(record, now),
    )
    return Step(new, changed=True)
