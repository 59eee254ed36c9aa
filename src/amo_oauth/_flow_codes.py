"""The code flows: begin, mobile tickets, amoCRM's redirect back, the legacy exchange.

A code is exchanged at most once: duplicates are answered from reads (the record, the code
ledger) before anything is written, and a new code is claimed in one atomic store operation
(state nonce + code ledger + record) that exactly one worker wins.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Final, NamedTuple
from urllib.parse import urlencode

import attrs

from ._answers import EXCHANGE_FAILURES
from ._binding import binding_for, issue_ticket, parse_binding, read_ticket, ticket_nonce_key
from ._callback import Denial, Grant, QueryLike, parse_callback
from ._connection_id import ConnectionId, Widget, check_app_user_id
from ._errors import CallbackRejected, ProviderError
from ._events import (
    SHA256_HEX,
    CodeReceived,
    CredentialsReceived,
    Denied,
    ExchangeFailed,
    ExchangeSucceeded,
)
from ._flow_records import Decision
from ._flow_verify import Verification
from ._hosts import AccountHost
from ._lifecycle import DENIED_HOLDER, NoOp
from ._limits import Attempt, Bounds, ExchangeLimiter, Slot, WaitingCallbacks
from ._ops import ConsumeState, Flow, HolderOf, Send, perform
from ._provider import (
    code_request,
    meaning_of,
    read_tokens,
)
from ._reasons import Reason
from ._record_view import RecordView
from ._records import CODE_MEMORY, client_key, code_digest, record_key
from ._results import (
    AuthorizationRequest,
    ButtonMetadata,
    CallbackResult,
    Outcome,
    SecretsResult,
    SiteButton,
)
from ._secrets_post import read_secrets_post
from ._site_button import ButtonOptions, button_attributes, button_html
from ._state_token import (
    MAX_CLOCK_SKEW,
    StateClaims,
    UnsignedState,
    issue_state,
    issued_ahead,
    read_state,
)
from .stores._protocol import ClaimResult, LedgerEntry

__all__ = ["CodeFlows"]

_MAX_CODE = 2048
#: What a code-received no-op means to the caller: a refusal, or a report (duplicate or not).
_REFUSED: Final[Mapping[NoOp, Reason]] = {
    NoOp.NEW_CODE_REFUSED: Reason.NEW_CODE_REFUSED,
    NoOp.EXPIRED_STATE: Reason.EXPIRED_STATE,
    NoOp.STATE_FROM_AHEAD: Reason.CLOCK_SKEW,
    NoOp.REUSED_STATE: Reason.REUSED_STATE,
    NoOp.NO_HOST: Reason.MISSING_REFERER,
    NoOp.WRONG_BROWSER: Reason.WRONG_BROWSER,
    NoOp.CODE_USED_ELSEWHERE: Reason.CODE_USED_ELSEWHERE,
    # Metadata mode: the wait for the integration's credentials is over (or there is none to
    # wait for: a code without a state); nothing was claimed, so the same redirect may succeed.
    NoOp.CREDENTIALS_PENDING: Reason.CREDENTIALS_MISSING,
}
#: What a credentials-received no-op refuses the post with (the others answer "unchanged").
_SECRETS_REFUSED: Final[Mapping[NoOp, Reason]] = {
    # The client id is pending or the connection's own with another secret: not amoCRM's.
    NoOp.CREDENTIALS_CONFLICT: Reason.CLIENT_ID_MISMATCH,
    # The consent's posts fill the record: beyond what one consent may keep.
    NoOp.CREDENTIALS_CROWDED: Reason.RATE_LIMITED,
}
_DUPLICATES: Final = frozenset({NoOp.DUPLICATE_CODE, NoOp.DUPLICATE_CONSENT})
#: What the table refuses a new code with when no state may claim it (none, or unsigned).
_NEW_CODE_REFUSALS: Final = frozenset({Reason.NEW_CODE_REFUSED, Reason.MISSING_REFERER})
#: The ledger holder of a redeemed mobile ticket.
_TICKET_HOLDER = "ticket"
#: How much longer than its token lives a used state or ticket is remembered: the store forgets
#: by its own clock (a database on another host), which may run ahead of this process's, and a
#: key it forgot early would let the same token through twice.
LEDGER_SKEW = 2 * MAX_CLOCK_SKEW
_BEGIN_IN_METADATA_MODE: Final = (
    "begin() has no consent URL in the site button's metadata mode (Config.secrets_uri set): "
    "amoCRM makes each account's integration from the button's metadata, so render "
    "site_button(connection_id, metadata=ButtonMetadata(...)) instead"
)


class _Flags(NamedTuple):
    """What a caller of ``_exchange`` says about its code, copied onto each ``CodeReceived``."""

    may_claim: bool
    browser_matches: bool
    caller_owns: bool
    from_admin: bool


@attrs.frozen
class _Wait:
    """A callback waiting for its credentials: its consent's place (record key, state nonce
    digest) and the try counted against its source (None: no source named)."""

    consent: tuple[str, str]
    slot: Slot | None


@attrs.frozen
class _Consent:
    """A consent's fresh state, its expiry, and the binding of the browser it is bound to."""

    state: str = attrs.field(repr=False)
    expires_at: datetime
    binding: str | None = attrs.field(repr=False)


class CodeFlows:
    """The logic behind ``begin``, ``site_button``, ``issue_ticket``, ``redeem_ticket``,
    ``handle_callback`` and ``exchange_code``."""

    def __init__(self, verification: Verification) -> None:
        self.verification = verification
        self.records = verification.records
        self.config = verification.config
        self._exchange_limiter: ExchangeLimiter | None = None
        # Metadata mode: the callbacks of this process waiting for their credentials.
        self._waiting = WaitingCallbacks()

    # -- begin ---------------------------------------------------------------------------

    def begin(
        self, connection_id: str, binding: str | None = None, browser_binding: bool = True
    ) -> Flow[AuthorizationRequest]:
        config = self.config
        if config.metadata_mode:
            raise ValueError(_BEGIN_IN_METADATA_MODE)
        consent = yield from self._consent(connection_id, binding, browser_binding)
        query = urlencode(
            {"client_id": config.client_id, "state": consent.state, "mode": config.mode}
        )
        joiner = "&" if "?" in config.authorize_url else "?"
        return AuthorizationRequest(
            f"{config.authorize_url}{joiner}{query}",
            consent.state,
            consent.expires_at,
            binding=consent.binding,
        )

    def site_button(
        self,
        connection_id: str,
        *,
        binding: str | None,
        browser_binding: bool,
        metadata: ButtonMetadata | None,
        title: str | None,
        compact: bool,
        class_name: str | None,
        color: str | None,
        theme: str | None,
        locale: str | None,
        error_callback: str | None,
    ) -> Flow[SiteButton]:
        """``site_button()`` of either service: its keywords as they were passed (the
        defaults are the services' signatures')."""
        options = ButtonOptions(
            metadata=metadata,
            title=title,
            compact=compact,
            class_name=class_name,
            color=color,
            theme=theme,
            locale=locale,
            error_callback=error_callback,
        )
        # Checked before the read: a wrong option costs no store round trip.
        attributes = button_attributes(self.config, options)
        consent = yield from self._consent(connection_id, binding, browser_binding)
        return SiteButton(
            button_html(attributes, consent.state),
            consent.state,
            consent.expires_at,
            binding=consent.binding,
        )

    def _consent(
        self, connection_id: str, binding: str | None, browser_binding: bool
    ) -> Flow[_Consent]:
        """A fresh state for a consent to ``connection_id`` and the browser binding it is
        bound to: what both ``begin`` and ``site_button`` hand out."""
        check_app_user_id(connection_id)
        config = self.config
        # One read: the record's version orders this consent after (or before) the connection
        # it may replace, and the store's clock dates the state.
        seen = yield from self.records.version_of(connection_id)
        # Bound by default: the given binding when it was made for this connection (a second
        # /connect in the same browser), else a fresh one. Unbound only when asked, and then
        # signed into the state ("b": ""), so no later caller can switch the check off.
        bound = binding_for(connection_id, binding) if browser_binding else None
        token, claims = issue_state(
            config.state_secret,
            connection_id,
            self.records.now(),
            config.state_ttl,
            bound.secret if bound is not None else None,
            seen,
            # Metadata mode: amoCRM's post to secrets_uri has only the state to name the
            # connection by (protocol notes §7), so the state carries it, encrypted.
            carry_connection=config.metadata_mode,
            namespace=config.client_id,
        )
        return _Consent(token, claims.expires_at, bound.token if bound is not None else None)

    # -- the secrets_uri post (metadata mode) -------------------------------------------------

    def receive_secrets(self, form: QueryLike) -> Flow[SecretsResult]:
        """Keep the credentials amoCRM posted to ``secrets_uri`` with the connection the
        post's state names, until that consent's code claims them (protocol notes §7). The
        signed state is the only authority: amoCRM signs nothing else of this post."""
        post = read_secrets_post(form)
        if not self.config.metadata_mode:
            # Fixed mode has no secrets_uri: its connections use Config's integration, and no
            # post may give one another (even under a state a shared secret signed).
            raise CallbackRejected(Reason.BAD_STATE)
        claims = self._read_state(post.state)  # another integration's state: bad_state
        connection = claims.connection()  # bad_state for a state without one (fixed mode)
        digest = code_digest(claims.nonce)
        while True:
            # The record before the state's holder: a claim writes both at once, so a claim
            # after this read changes the record's version and the write below loses; one
            # before it shows as the holder, and the table settles the consent.
            record = yield from self.records.load(connection)
            self._check_state_time(claims)  # by the store's clock, which the load just read
            holder = yield from perform(HolderOf(claims.nonce))
            event = CredentialsReceived(digest, post.credentials, self.records.now(), holder)
            yield from self._check_client_free(post.credentials.client_id, record.key)
            decision = self.records.decide(record, event)
            if decision.noop is not None:
                refusal = _SECRETS_REFUSED.get(decision.noop)
                if refusal is not None:
                    raise CallbackRejected(refusal)
                return SecretsResult(record.public(), stored=False)
            written = yield from self.records.commit(record, decision, event.name)
            if written is not None:
                return SecretsResult(written.public(), stored=True)
            # Another writer changed the record since it was read: decide again on it.

    def _check_state_time(self, claims: StateClaims) -> None:
        """Refuse a state past its expiry (``expired_state``) or signed too far ahead of the
        store's clock (``clock_skew``)."""
        now = self.records.now()
        if claims.is_expired(now):
            raise CallbackRejected(Reason.EXPIRED_STATE)
        if issued_ahead(claims.issued_at, now):
            raise CallbackRejected(Reason.CLOCK_SKEW)

    def _check_client_free(self, client_id: str, key: str) -> Flow[None]:
        """Refuse a client id the ledger names another connection for (``client:<id>``: a
        code exchanged with it was accepted by amoCRM for that connection). The post only
        reads the entry: it is written once amoCRM accepted a code (``Records.register_client``), so
        nobody enters a client id whose secret they do not hold.

        Raises:
            CallbackRejected: ``client_id_mismatch``: amoCRM makes a new integration per
                install, so another connection's client id is being posted under this state.
        """
        holder = yield from perform(HolderOf(client_key(client_id)))
        if holder is not None and holder != key:
            raise CallbackRejected(Reason.CLIENT_ID_MISMATCH)

    # -- mobile tickets --------------------------------------------------------------------

    def issue_ticket(self, connection_id: str) -> str:
        check_app_user_id(connection_id)
        config = self.config
        return issue_ticket(
            config.state_secret,
            connection_id,
            self.records.now(),
            config.ticket_ttl,
            namespace=config.client_id,
        )

    def redeem_ticket(self, ticket: str, signed_in: str | None = None) -> Flow[str]:
        config = self.config
        # Another integration's ticket (a shared state secret) is bad_ticket: else it would
        # be redeemed once in each integration's store.
        claims = read_ticket(config.accepted_state_secrets, ticket, config.client_id)
        now = self.records.now()
        if claims.is_expired(now):
            raise CallbackRejected(Reason.EXPIRED_TICKET)
        if claims.expires_at - now > self.config.ticket_ttl + MAX_CLOCK_SKEW:
            # Issued on a clock too far ahead of this one to judge its age.
            raise CallbackRejected(Reason.CLOCK_SKEW)
        if signed_in is not None and signed_in != claims.connection_id:
            # Another user's ticket in a signed-in browser (forwarded to its victim): it must
            # not win over the session, and is left unused.
            raise CallbackRejected(Reason.WRONG_BROWSER)
        expires_at = self._remembered_until(claims.expires_at)
        # A holder of its own: a store answers True again to the same holder (a retried claim),
        # and a ticket's second redemption must fail.
        holder = f"{_TICKET_HOLDER}:{secrets.token_urlsafe(12)}"
        consumed = ConsumeState(ticket_nonce_key(claims), expires_at, holder)
        if not (yield from perform(consumed)):
            raise CallbackRejected(Reason.USED_TICKET)
        return claims.connection_id

    # -- codes ---------------------------------------------------------------------------

    def handle_callback(
        self,
        query: QueryLike,
        signed_in: str | None = None,
        binding: str | None = None,
        source: str | None = None,
    ) -> Flow[CallbackResult]:
        parsed = parse_callback(query, self.config)
        claims = parsed.state
        if isinstance(parsed, Grant) and parsed.state_unsigned:
            return (yield from self._unsigned_callback(parsed, signed_in, binding))
        if claims is None:  # a widget install: named after its account host, no browser
            assert isinstance(parsed, Grant)
            target = self.records.fresh(Widget(parsed.host.name))
            return (yield from self._exchange(target, parsed.code, parsed.host, None, source))
        connection_id, matches = self._browser(claims, signed_in, binding)
        if isinstance(parsed, Denial):
            if connection_id is None or not matches:
                raise CallbackRejected(Reason.WRONG_BROWSER)
            return (yield from self._deny(parsed, connection_id))
        if connection_id is None:
            # Neither a binding nor a session names the connection: only a code seen before
            # may be answered (a reload of the callback page, the seed's replay). Its holder in
            # the code ledger names the connection, which must be the state's.
            holder = yield from self._holder_of(parsed.code_digest, claims)
            if holder is None:
                raise CallbackRejected(Reason.WRONG_BROWSER)
            resolved = self._connection_of(holder)
            if resolved is None or not claims.names(resolved):
                raise CallbackRejected(Reason.BAD_STATE)
            connection_id = resolved
        target = self.records.fresh(connection_id)
        return (
            yield from self._exchange(
                target,
                parsed.code,
                parsed.host,
                claims,
                source,
                browser_matches=matches,
                # The bound browser, or the signed-in user the state names (_browser checked).
                caller_owns=matches or signed_in is not None,
                client_id=parsed.client_id,
            )
        )

    def _unsigned_callback(
        self, grant: Grant, signed_in: str | None, binding: str | None
    ) -> Flow[CallbackResult]:
        """A redirect whose state none of the accepted secrets signed (one removed since a
        rotation, or forged): its code is answered only when the code ledger holds it (a
        reload of the callback page, the seed's replay), for the connection that exchanged it,
        and only where the browser names no other; anything else is ``bad_state``."""
        holder = yield from perform(HolderOf(f"code:{grant.code_digest}"))
        resolved = self._connection_of(holder) if holder is not None else None
        bound = parse_binding(binding)
        named = {signed_in, bound.connection_id if bound is not None else None} - {None}
        if resolved is None or named - {resolved}:
            raise CallbackRejected(Reason.BAD_STATE)
        target = self.records.fresh(resolved)
        return (yield from self._known_code_only(target, grant.code, grant.host))

    def _known_code_only(
        self, target: RecordView, code: str, host: AccountHost | None
    ) -> Flow[CallbackResult]:
        """Answer a code that came with an unsigned state from reads, as a duplicate; a new
        code is refused ``bad_state`` (its state is what is wrong), nothing written."""
        try:
            # No source: a code that may not be claimed never reaches a budget.
            return (yield from self._exchange(target, code, host, None, None, may_claim=False))
        except CallbackRejected as refused:
            if refused.reason in _NEW_CODE_REFUSALS:
                raise CallbackRejected(Reason.BAD_STATE) from None
            raise

    def _read_state(self, state: str) -> StateClaims:
        """A state this integration signed: another namespace's is ``UnsignedState``."""
        config = self.config
        return read_state(config.accepted_state_secrets, state, config.client_id)

    def _holder_of(self, digest: str, claims: StateClaims) -> Flow[str | None]:
        """The record key the code ledger names for this code or, for a second code of a used
        consent (a double tap on "Allow"), for the code that used its state first."""
        holder = yield from perform(HolderOf(f"code:{digest}"))
        if holder is None:
            first = yield from perform(HolderOf(claims.nonce))
            if first is not None and SHA256_HEX.fullmatch(first):
                holder = yield from perform(HolderOf(f"code:{first}"))
        return holder

    def _browser(
        self, claims: StateClaims, signed_in: str | None, binding: str | None
    ) -> tuple[str | None, bool]:
        """Who the callback is for, if the browser says, and whether it is the browser (or the
        session, for a state that opted out) the state was bound to."""
        if signed_in is not None and not claims.names(signed_in):
            # The redirect was started by someone else's begin(): refuse to attach this
            # browser's amoCRM account to their connection.
            raise CallbackRejected(Reason.BAD_STATE)
        bound = parse_binding(binding)
        if bound is not None and signed_in is not None and bound.connection_id != signed_in:
            raise CallbackRejected(Reason.BAD_STATE)
        named = bound is not None and claims.names(bound.connection_id)
        connection_id = bound.connection_id if bound is not None and named else signed_in
        if claims.bound:
            matches = named and claims.binds(bound.secret if bound else None)
        else:
            matches = signed_in is not None
        return connection_id, matches

    def _connection_of(self, holder: str) -> str | None:
        """The connection id of an app user's record key (None for a widget install's)."""
        prefix = record_key(self.config.client_id, "")
        if holder.startswith(prefix):
            return holder[len(prefix) :]
        return None if holder.startswith(("u:", "w:")) else holder  # a key from before keys

    def exchange_code(
        self,
        connection_id: str,
        code: str,
        referer: str | None = None,
        state: str | None = None,
        exchange_new: bool = True,
        binding: str | None = None,
        source: str | None = None,
    ) -> Flow[CallbackResult]:
        check_app_user_id(connection_id)
        self._check_code(code)
        target = self.records.fresh(connection_id)
        try:
            claims = self._read_state(state) if state else None
        except UnsignedState:  # signed under a secret removed since (a rotation), or forged
            host = self._referer_host(referer)
            return (yield from self._known_code_only(target, code, host))
        if claims is not None and not claims.names(connection_id):
            raise CallbackRejected(Reason.BAD_STATE)
        # A bound state wants its browser's binding for a new code; an unbound one was bound to
        # the app's session, which connection_id is. Without a state no new code is exchanged.
        matches = True
        if claims is not None and claims.bound:
            bound = parse_binding(binding)
            matches = (
                bound is not None
                and bound.connection_id == connection_id
                and claims.binds(bound.secret)
            )
        host = self._referer_host(referer)
        # Without a state nothing ties a new code to this user (amoCRM has no PKCE): whoever
        # holds a code of someone else's consent could bind that account here. Known codes are
        # still answered (the seed's old app); a new one is refused.
        may_claim = exchange_new and claims is not None
        return (
            yield from self._exchange(
                target,
                code,
                host,
                claims,
                source,
                may_claim=may_claim,
                browser_matches=matches,
                # The app named the connection, and the state names it too (checked above).
                caller_owns=claims is not None,
            )
        )

    def connect_with_code(
        self, connection_id: ConnectionId, code: str, host: str
    ) -> Flow[CallbackResult]:
        """Exchange an authorization code an admin copied from the integration's "Keys and
        scopes" tab (20 minutes, single use; protocol notes §3, §8): server-side, no state and
        no browser. The callback's machinery: the code ledger, one claim, one token call, the
        verification; the same code again is answered from reads."""
        target = self.records.fresh(connection_id)  # checks the id before anything is read
        self._check_code(code)
        if not host:
            raise CallbackRejected(Reason.MISSING_REFERER)
        # Typed by a person: any case, a scheme or a trailing slash is how they write it.
        account_host = AccountHost.typed(host, self.config.extra_domains)
        if account_host is None:
            raise CallbackRejected(Reason.FOREIGN_HOST)
        # A code the ledger holds for another connection is refused by the table
        # (``code_used_elsewhere``), also to the loser of a race for it.
        return (yield from self._exchange(target, code, account_host, None, None, from_admin=True))

    @staticmethod
    def _check_code(code: str) -> None:
        """Refuse a code amoCRM could not have issued, before anything is read or sent."""
        if not isinstance(code, str) or not code:
            raise CallbackRejected(Reason.MISSING_CODE)
        if len(code) > _MAX_CODE or not code.isprintable():
            raise CallbackRejected(Reason.MALFORMED)

    def _referer_host(self, referer: str | None) -> AccountHost | None:
        """The account host a caller named (None: none named), if it is allowed."""
        if not referer:
            return None
        host = AccountHost.accept(referer, self.config.extra_domains)
        if host is None:
            raise CallbackRejected(Reason.FOREIGN_HOST)
        return host

    def _exchange(
        self,
        target: RecordView,
        code: str,
        host: AccountHost | None,
        claims: StateClaims | None,
        source: str | None,
        *,
        may_claim: bool = True,
        browser_matches: bool = True,
        caller_owns: bool = False,
        from_admin: bool = False,
        client_id: str | None = None,
    ) -> Flow[CallbackResult]:
        digest = code_digest(code)
        # How long this call waits for other claims of its connection in flight, counted from
        # its first try to claim: its own reads before it may have queued behind a burst's
        # (a thousand callers on a pool of store connections) for longer than settle_timeout,
        # and a duplicate refused a slot then must still wait for the claim, not be refused.
        claim_deadline: float | None = None
        # What the caller brings, the same on every read of the loop: put on each event as it
        # is made (one record built per read, not a second by ``attrs.evolve``).
        flags = _Flags(may_claim, browser_matches, caller_owns, from_admin)
        # Metadata mode: how long a new code waits for its integration's credentials.
        credentials_until = self.records.soon(self.config.secrets_wait)
        state_raced = False
        wait: _Wait | None = None
        # The first look reads the record alone: a code it knows is a duplicate whatever the
        # ledger holds (the table's first rule), the common repeat (a reload of the callback
        # page) answered with one store read. Anything else reads the ledger, then the record.
        ledger = False
        try:
            while True:
                record, event = yield from self._read_code(
                    target, digest, host, claims, client_id, flags, ledger=ledger
                )
                decision = self.records.decide(record, event)
                if not ledger and decision.noop is not NoOp.DUPLICATE_CODE:
                    ledger = True
                    continue
                ledger = True
                pending = decision.noop is NoOp.CREDENTIALS_PENDING
                if pending and self._may_await_credentials(claims, credentials_until):
                    # amoCRM posts them to secrets_uri, maybe after this redirect (or a retried
                    # install's second post is on its way): wait on the hub, then read again.
                    assert claims is not None  # only a code with a state waits
                    wait = wait or self._start_wait(record, event, claims, source)
                    yield from self.records.wait(record, credentials_until)
                    continue
                if wait is not None:  # they came (or never will): the consent's place is free
                    self._end_wait(wait, came=not pending)
                    wait = None
                if decision.noop is not None:
                    return (yield from self._unchanged(record, decision.noop))
                if claim_deadline is None:
                    claim_deadline = self.records.deadline()
                claimed, slot = yield from self._claim(
                    record, decision, event, claims, source, claim_deadline
                )
                if claimed is ClaimResult.CLAIMED:
                    assert event.host is not None and slot is not None  # claimed: a host
                    finished = self._finish_exchange(decision.record, code, event.host, slot)
                    return (yield from finished)
                if claimed is ClaimResult.STATE_USED:
                    if event.state_holder is None and not state_raced:
                        # Another code of the same consent claimed the state since it was read
                        # free (a double click on "Allow"): read again; the table names it.
                        state_raced = True
                        continue
                    raise CallbackRejected(Reason.REUSED_STATE)
                if claimed is ClaimResult.CODE_TAKEN and not from_admin:
                    # Another connection claimed this code: a duplicate here too, reported at
                    # once. (An admin's code looks again: the table refuses it
                    # code_used_elsewhere.)
                    self.records.metrics.duplicate_answered()
                    return CallbackResult.report(record.public(), duplicate=True)
                # Lost the race for the record, or waited for the claims in flight: look
                # again; the winner's claim usually makes this a duplicate.
        finally:
            if wait is not None:  # an error mid-wait (a store's): not its source's doing
                self._end_wait(wait, came=True)

    def _start_wait(
        self, record: RecordView, event: CodeReceived, claims: StateClaims, source: str | None
    ) -> _Wait:
        """Take this consent's one place among the callbacks waiting for their credentials,
        and count the wait against its source.

        Raises:
            CallbackRejected: ``credentials_missing`` at once when another callback of this
                process waits for the same consent (a consent has one redirect: the others
                are a burst or a flood, and the same redirect succeeds once the post lands);
                ``rate_limited`` when the source's window is full (each wait counts there
                as a try, given back when the credentials come).
        """
        consent = (record.key, code_digest(claims.nonce))
        entered, slot = self._waiting.enter(consent)
        if not entered:
            raise CallbackRejected(Reason.CREDENTIALS_MISSING)
        source = self._source_of(record, event, source)
        if slot is None and source is not None:  # a reload of the consent counts no more
            slot = self._limiter().admit_wait(source)
            if slot is None:
                self._waiting.leave(consent)
                retry = self._limiter().wait_retry_after(source)
                raise CallbackRejected(Reason.RATE_LIMITED, retry_after=retry)
        return _Wait(consent, slot)

    def _end_wait(self, wait: _Wait, *, came: bool) -> None:
        """Free the consent's place; a wait its credentials came for leaves its source's
        window (one they never came for stays there, like a refused code, once per consent:
        the user's reloads of the redirect reuse it)."""
        self._waiting.leave(wait.consent, charged=None if came else wait.slot)
        if came and wait.slot is not None:
            self._limiter().wait_answered(wait.slot)

    @staticmethod
    def _source_of(record: RecordView, event: CodeReceived, source: str | None) -> str | None:
        """Who a callback's exchange (or wait) counts against: the consent's own browser (its
        binding) or its signed-in user is this app's user, so the user is the source, not the
        address it came from (a flood through the same proxy or network does not spend it);
        else the caller's ``source`` (an address; None: unknown)."""
        if event.caller_owns and not record.widget:
            return f"user:{record.connection_id}"
        return source

    def _may_await_credentials(self, claims: StateClaims | None, until: float) -> bool:
        """Whether a new code whose integration's credentials are not here may wait for them:
        only a code with a state (amoCRM posts them under it), until ``until`` (monotonic)."""
        return claims is not None and not self.records.expired(until)

    def _read_code(
        self,
        target: RecordView,
        digest: str,
        host: AccountHost | None,
        claims: StateClaims | None,
        client_id: str | None,
        flags: _Flags,
        *,
        ledger: bool = True,
    ) -> Flow[tuple[RecordView, CodeReceived]]:
        """The record and the code's event, from reads only: nothing is written until the
        table says this worker may claim the code. The ledger is read before the record: a
        claim writes both at once, so a ledger entry seen here is already on the record read
        next (a duplicate then reports the winner's status).

        Without ``ledger``, the record alone, and an event that says the ledger holds neither
        the code nor the state: enough for the table to tell a code the record knows (its
        first rule, ``duplicate_code``, reads nothing else); with the ledger unread, no other
        ``duplicate_code`` can fire, so that answer is the table's whatever the ledger holds.
        """
        holder, used_with = None, None
        if ledger:
            holder = yield from perform(HolderOf(f"code:{digest}"))
            used_with = (yield from perform(HolderOf(claims.nonce))) if claims else None
        record = yield from self.records.reload(target)
        event = self._code_event(record, digest, host, claims, holder, used_with, flags)
        return record, self._with_credentials(event, record, claims, client_id)

    def _claim(
        self,
        record: RecordView,
        decision: Decision,
        event: CodeReceived,
        claims: StateClaims | None,
        source: str | None,
        deadline: float,
    ) -> Flow[tuple[ClaimResult | None, Slot | None]]:
        """Claim the code, within the bounds on token calls, and the slot it took. None: claims
        of this connection were in flight and this call waited for one to land (look again),
        which it does until ``deadline`` (monotonic; from its first try to claim)."""
        assert event.host is not None  # the table claims only with a host
        source = self._source_of(record, event, source)
        limiter = self._limiter()
        attempt = Attempt(record.key, event.host.name, source, record.widget)
        slot = limiter.admit(attempt)
        if slot is None:
            if limiter.in_flight(record.key) and not self.records.expired(deadline):
                # Most likely this is a duplicate of one of them (a burst of the same redirect).
                yield from self.records.wait(record, min(deadline, self.records.soon(1.0)))
                return None, None
            # Beyond the bounds on token calls: nothing written (state, ledger, record), so the
            # same redirect succeeds once the window passes.
            raise CallbackRejected(Reason.RATE_LIMITED, retry_after=limiter.retry_after(attempt))
        code, state = self._ledger_entries(record, event.code_digest, claims)
        claimed = ClaimResult.RECORD_CHANGED  # what a claim that raised amounts to
        try:
            claimed = yield from self.records.claim(record, decision, event.name, code, state)
        finally:  # a lost or failed claim sent nothing: its slot is given back
            limiter.claimed(slot, exchanged=claimed is ClaimResult.CLAIMED)
        return claimed, slot

    def _limiter(self) -> ExchangeLimiter:
        if self._exchange_limiter is None:  # one per service object, made on first use
            config = self.config
            bounds = Bounds(
                connection=config.max_exchanges_per_connection,
                host=config.max_exchanges_per_host,
                process=config.max_exchanges_per_process,
                source=config.max_exchanges_per_source,
                widgets=min(
                    config.max_widget_exchanges, max(1, config.max_exchanges_per_process // 2)
                ),
                widget_host=config.max_widget_exchanges_per_host,
            )
            window = config.exchange_window.total_seconds()
            self._exchange_limiter = ExchangeLimiter(bounds, window)
        return self._exchange_limiter

    def _code_event(
        self,
        record: RecordView,
        digest: str,
        host: AccountHost | None,
        claims: StateClaims | None,
        holder: str | None,
        used_with: str | None,
        flags: _Flags,
    ) -> CodeReceived:
        if host is None:  # the redirect named none: the one the record holds, if allowed
            host = AccountHost.accept(record.host or "", self.config.extra_domains)
        return CodeReceived(
            digest,
            host,
            self.records.lease("exchange"),
            claims.issued_at if claims else None,
            code_holder=holder,
            state_seen_version=claims.seen_version if claims else None,
            state_expires_at=claims.accepted_until if claims else None,
            state_holder=used_with,
            may_claim=flags.may_claim,
            browser_matches=flags.browser_matches,
            caller_owns=flags.caller_owns,
            from_admin=flags.from_admin,
        )

    def _with_credentials(
        self,
        event: CodeReceived,
        record: RecordView,
        claims: StateClaims | None,
        client_id: str | None,
    ) -> CodeReceived:
        """Metadata mode (protocol notes §7): the event with the integration its claim is to
        send the code with. For a code with a state, the newest credentials amoCRM posted to
        ``secrets_uri`` under that state whose client id is the redirect's (any, for a caller
        that names none: the legacy route); for a code without one, the connection's own."""
        if not self.config.metadata_mode:
            return event
        if claims is None:
            return attrs.evolve(event, needs_credentials=True, credentials=record.credentials)
        state_digest = code_digest(claims.nonce)  # how the secrets post names the state
        posted = [
            pending.credentials
            for pending in record.pending_credentials
            if pending.state_digest == state_digest
            and client_id in (None, pending.credentials.client_id)
        ]
        return attrs.evolve(
            event,
            needs_credentials=True,
            credentials=posted[-1] if posted else None,
            state_digest=state_digest,
        )

    def _ledger_entries(
        self, record: RecordView, digest: str, claims: StateClaims | None
    ) -> tuple[LedgerEntry, LedgerEntry | None]:
        """The code's entry in the ledger (held by the record's key) and the state's (held by
        the code's digest; none for a code without a state)."""
        remembered = self.records.now() + CODE_MEMORY
        code = LedgerEntry(f"code:{digest}", record.key, remembered)
        if claims is None:
            return code, None
        return code, LedgerEntry(claims.nonce, digest, self._remembered_until(claims.expires_at))

    def _remembered_until(self, expires_at: datetime) -> datetime:
        """Until when the store keeps a used state or ticket that expires at ``expires_at``."""
        return expires_at + LEDGER_SKEW

    def _unchanged(self, record: RecordView, noop: NoOp) -> Flow[CallbackResult]:
        """Answer a code the table would not claim: refuse it, or report the connection (after
        a verification only when one is due: a duplicate that finds nothing due writes
        nothing)."""
        refusal = _REFUSED.get(noop)
        if refusal is not None:
            raise CallbackRejected(refusal)
        settled = yield from self._settled(record)
        settled, _ = yield from self.verification.verify_if_due(settled)
        duplicate = noop in _DUPLICATES
        if duplicate:
            self.records.metrics.duplicate_answered()
        return CallbackResult.report(settled.public(), duplicate=duplicate)

    def _finish_exchange(
        self, record: RecordView, code: str, host: AccountHost, slot: Slot
    ) -> Flow[CallbackResult]:
        try:
            response = yield Send(
                code_request(self.config, self.records.credentials(record), host, code)
            )
            tokens = read_tokens(response, self.records.now(), grant="authorization_code")
        except ProviderError as error:
            # What the answer means is data (_answers): a transient failure leaves the code's
            # fate unknown (it is never sent again), a misconfigured client is said so.
            answer = meaning_of(error, "authorization_code")
            if answer.meaning.transient:  # amoCRM's own failure: not the source's fault
                self._limiter().released(slot)
            else:  # amoCRM refused the code: junk counts against the suspect shares
                self._limiter().failed(slot)
            self.records.warn(record, "exchange", answer, error, redact=(code,))
            reason = EXCHANGE_FAILURES.get(answer.meaning, Reason.CODE_REJECTED)
            failed = ExchangeFailed(self.records.error_info(Reason(reason), error))
            concluded = yield from self.verification.conclude(record, failed, Outcome.FAILED)
            return attrs.evolve(concluded, refused=str(reason))
        self._limiter().released(slot)  # a real code: it no longer counts against its source
        yield from self.records.register_client(record)  # amoCRM accepted these credentials
        # The code is spent: this pair is the only one. A store that stays down keeps it in
        # memory, to land (even after the lease, within the grace or on exchange_interrupted).
        event = ExchangeSucceeded(tokens, code_digest(code), host=host.name)
        kept = attrs.evolve(event, released=True)  # whoever lands it, this worker won't verify
        exchanged = yield from self.records.keeping(
            record, kept, lambda: self._store_exchanged(record, event)
        )
        if exchanged is None:
            return (yield from self.verification.overtaken(record))
        return (yield from self.verification.verify(exchanged, host, tokens.access_token))

    def _store_exchanged(
        self, record: RecordView, event: ExchangeSucceeded
    ) -> Flow[RecordView | None]:
        """Write the pair from the code over this worker's claim; when another writer moved the
        record on (a worker that stalled past its lease and the grace: a replay of the callback
        gave the code up), the table decides on the record as it now is, as for a kept pair: it
        lands on ``error(exchange_interrupted)`` for this very code, and on nothing else (a new
        consent, a disconnect, another code's exchange). None: it did not land."""
        written = yield from self.records.write(record, event)
        if written is not None:
            return written
        landed, wrote = yield from self.records.apply(record, event)
        return landed if wrote else None

    def _settled(self, record: RecordView) -> Flow[RecordView]:
        """Wait, a bounded time, for another worker's exchange to finish (the table says one
        is in flight while its lease is live)."""
        deadline = self.records.deadline()
        while not self.records.expired(deadline):
            answer = self.records.decide(record, self.records.lease_expired())
            if answer.noop is not NoOp.LEASE_LIVE:
                break
            record = yield from self.records.wait(record, deadline)
        return record

    def _deny(self, denial: Denial, connection_id: str) -> Flow[CallbackResult]:
        claims = denial.state
        now = self.records.now()
        if claims.is_expired(now):
            raise CallbackRejected(Reason.EXPIRED_STATE)
        if issued_ahead(claims.issued_at, now):
            raise CallbackRejected(Reason.CLOCK_SKEW)
        expires_at = self._remembered_until(claims.expires_at)
        if not (yield from perform(ConsumeState(claims.nonce, expires_at, DENIED_HOLDER))):
            raise CallbackRejected(Reason.REUSED_STATE)
        record, _ = yield from self.records.apply(
            self.records.fresh(connection_id), Denied(self.records.now(), denial.reason)
        )
        return CallbackResult(Outcome.DENIED, record.public())
