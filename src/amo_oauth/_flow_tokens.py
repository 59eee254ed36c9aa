"""The token flows: a usable access token, and the keep-alive sweep.

amoCRM's refresh tokens rotate and are single-use, so a refresh is claimed through the table
(one live refresh lease per connection, anywhere) and its answer is stored in one write before
anyone uses it. Everyone else waits for that write and uses its token.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import NoReturn, assert_never

import attrs

from ._answers import REFRESH_REFUSALS, SPENT_TOKEN_REASONS, Answer, Meaning
from ._connection_id import ConnectionId
from ._errors import (
    AmoOAuthError,
    CallbackRejected,
    ProviderError,
    ReauthorizationRequired,
    StoreError,
    TryAgainLater,
)
from ._events import (
    LONG_LIVED_HINT,
    LongLivedEnded,
    LongLivedInstalled,
    RefreshClaimed,
    RefreshDeferred,
    RefreshDoubted,
    Refreshed,
    RefreshFailed,
    RefreshReleased,
)
from ._flow_records import logger
from ._flow_verify import Verification
from ._hosts import AccountHost
from ._lifecycle import NoOp
from ._ops import Flow, Send, Sleep
from ._provider import (
    answered,
    api_domain_of,
    long_lived_expiry,
    lookup_request,
    maybe_spent,
    meaning_of,
    read_lookup,
    read_tokens,
    reason_of,
    refresh_request,
)
from ._reasons import Reason
from ._record_view import RecordView
from ._records import Account, Connection, ErrorInfo, TokenSet
from ._sweep import Done

__all__ = ["TokenFlows"]

#: Pauses (seconds) between tries to store a rotated pair while the store fails; well inside
#: a lease, so no other worker sends the spent token meanwhile.
_STORE_RETRIES = (0.05, 0.2, 0.5)


class LongLivedExpiring(AmoOAuthError):
    """The sweep met a long-lived token about to expire: reported, never refreshed (internal:
    ``refresh_one`` turns it into its ``Done``)."""


class TokenFlows:
    """The logic behind ``access_token``, ``auth`` and ``refresh_due``."""

    def __init__(self, verification: Verification) -> None:
        self.verification = verification
        self.records = verification.records
        self.config = verification.config

    def access_token(self, connection_id: ConnectionId, stale: str | None = None) -> Flow[str]:
        # ``load`` checks the id before anything is read.
        first = self.records.load(connection_id)

        def wanted() -> RefreshClaimed:
            now = self.records.now()  # one reading for the lease and the event
            margin = self.config.refresh_margin
            return RefreshClaimed(self.records.lease("refresh", now), now, margin, stale=stale)

        return (yield from self._token(first, wanted))

    def connect_long_lived(
        self, connection_id: ConnectionId, token: str, host: str
    ) -> Flow[Connection]:
        """Connect with an admin's long-lived token (protocol notes §8): checked, verified with
        ``GET /api/v4/account`` on ``host``, then stored in one versioned write that replaces
        whatever the connection held. Nothing is written before amoCRM accepted the token."""
        target = self.records.fresh(connection_id)  # checks the id before anything is sent
        account_host = AccountHost.typed(host, self.config.extra_domains)
        if account_host is None:
            raise CallbackRejected(Reason.FOREIGN_HOST)
        expires_at = long_lived_expiry(token) if isinstance(token, str) else None
        if expires_at is None:  # not a JWT with an exp: nothing to schedule, nothing sent
            raise CallbackRejected(Reason.MALFORMED)
        if expires_at <= self.records.now():
            raise CallbackRejected(Reason.LONG_LIVED_TOKEN_EXPIRED)
        account = yield from self._verified_account(target, account_host, token)
        now = self.records.now()
        tokens = TokenSet(token, None, expires_at, expires_at, issued_at=now, long_lived=True)
        installed = LongLivedInstalled(tokens, account_host, account, now)
        deadline = self.records.deadline()
        while True:
            record, wrote = yield from self.records.apply(target, installed)
            if wrote:
                return record.public()
            # The table keeps a live code exchange: its pair is about to land.
            if self.records.expired(deadline):
                raise TryAgainLater(
                    Reason.EXCHANGE_IN_PROGRESS,
                    "a code exchange of this connection is still in flight",
                    retry_after=self.records.retry_after(record),
                )
            target = yield from self.records.wait(record, deadline)

    def _verified_account(self, target: RecordView, host: AccountHost, token: str) -> Flow[Account]:
        """The account the long-lived token opens on ``host``, or the refusal (nothing
        written): ``token_refused`` for amoCRM's 401 or another account's answer, amoCRM's own
        ``ProviderError`` (transient or not) for anything else."""
        try:
            return (yield from self.verification.account_of(host, token))
        except ProviderError as error:
            answer = meaning_of(error, "account")
            self.records.warn(target, "long-lived token verification", answer, error, (token,))
            if answer.meaning in (Meaning.TOKEN_REJECTED, Meaning.UNUSABLE):
                raise CallbackRejected(Reason.TOKEN_REFUSED) from None
            raise

    def api_token(
        self, connection_id: ConnectionId, stale: str | None = None
    ) -> Flow[tuple[str, str]]:
        """``(account host, access token)``: what ``auth()`` needs to send the token only to
        that host, read with the token (after an account move, the new host)."""
        token = yield from self.access_token(connection_id, stale)
        record = yield from self.records.load(connection_id)
        host, _, _ = record.api_credentials()
        return host, token

    def refresh_one(self, ref: RecordView, before: datetime) -> Flow[Done]:
        """The keep-alive sweep's work on one due record: refresh it unless its refresh token
        already outlasts ``before`` (the table decides; another machine may have done it).
        Never raises for a failed refresh: the ``Done`` says why."""
        if ref.integration not in (None, self.config.client_id):
            return Done(ref.name, skipped=True)  # our secret cannot refresh it

        def wanted() -> RefreshClaimed:
            return RefreshClaimed(
                self.records.lease("refresh"), self.records.now(), refresh_before=before
            )

        try:
            yield from self._token(self.records.reload(ref), wanted)
        except LongLivedExpiring:
            return Done(ref.name, expiring_long_lived=True)
        except ReauthorizationRequired as error:
            if error.reason == Reason.DISCONNECTED:
                # Its user disconnected it after the page was read: nothing failed, and nothing
                # is left to keep alive.
                return Done(ref.name, skipped=True)
            return Done(ref.name, str(error.reason), reauthorize=True)
        except AmoOAuthError as error:
            return Done(ref.name, _slug(error))
        except Exception as error:  # one connection's fault must not end the run
            # Not a failure the flows know (a bug, a damaged answer no check caught): reported
            # for this connection by its class name, never its message (it may quote a secret).
            logger.error(
                "connection %s: the sweep's refresh failed unexpectedly: %s",
                ref.name,
                type(error).__name__,
            )
            return Done(ref.name, type(error).__name__)
        return Done(ref.name)

    def _token(self, first: Flow[RecordView], wanted: Callable[[], RefreshClaimed]) -> Flow[str]:
        """A usable access token; at most one refresh in flight per connection, anywhere.
        ``first`` reads the record (``Records.load`` or ``reload``)."""
        deadline = self.records.deadline()
        record = yield from first
        while True:
            event = wanted()
            noop = self.records.decide(record, event).noop
            if noop is None:  # the table lets this worker claim the refresh
                token = yield from self._claim_and_refresh(record, event)
                if token is not None:
                    return token
                record = yield from self.records.reload(record)
                continue
            answered = yield from self._answer(record, noop, deadline)
            if isinstance(answered, str):
                return answered
            record = answered

    def _answer(self, record: RecordView, noop: NoOp, deadline: float) -> Flow[str | RecordView]:
        """Act on the table's no-op to a refresh claim: the access token, or the record to ask
        about again (after a wait, a verification or giving the spent token up)."""
        match noop:
            case NoOp.TOKEN_FRESH:
                return record.access_token()
            case NoOp.EXCHANGE_IN_PROGRESS if (
                yield from self._pending_verification(record)
            ) != record:
                pass  # this call verified (or tried to): look again
            case NoOp.EXCHANGE_IN_PROGRESS | NoOp.REFRESH_IN_PROGRESS if not self.records.expired(
                deadline
            ):
                return (yield from self.records.wait(record, deadline))
            case NoOp.REFRESH_IN_PROGRESS:
                raise TryAgainLater(
                    Reason.REFRESH_IN_PROGRESS,
                    "a refresh by another worker is still running",
                    retry_after=self.records.retry_after(record),
                )
            case NoOp.REFRESH_BACKOFF:
                # amoCRM pushed back on the last refresh: nobody sends one before it lapses.
                raise TryAgainLater(
                    Reason.REFRESH_BACKOFF,
                    self.records.held_back(record),
                    retry_after=self.records.retry_after(record),
                )
            case NoOp.KEPT_PAIR_PENDING if not self.records.expired(deadline):
                return (yield from self.records.wait(record, deadline))
            case NoOp.KEPT_PAIR_PENDING:
                raise self._later(record)
            case NoOp.EXCHANGE_IN_PROGRESS if self._awaits_kept_exchange(record):
                raise self._later(record)  # and the wait for it is over
            case NoOp.REFUSED_AGAIN:
                # The pair is kept; the API refuses tokens however new (a blocked integration,
                # missing scopes): the caller hears it, amoCRM gets no more refreshes for it.
                raise ProviderError(401, "amoCRM refused a freshly refreshed access token")
            case NoOp.NO_REFRESH_TOKEN:
                raise ReauthorizationRequired(record.name, Reason.TOKEN_EXPIRED)
            case NoOp.REFRESH_EXHAUSTED:
                yield from self._give_up(record)
            case NoOp.LONG_LIVED_REVOKED:
                yield from self._end_long_lived(record, Reason.LONG_LIVED_TOKEN_REVOKED)
            case NoOp.LONG_LIVED_EXPIRED:
                yield from self._end_long_lived(record, Reason.LONG_LIVED_TOKEN_EXPIRED)
            case NoOp.LONG_LIVED_EXPIRING:
                yield from self.records.announce_expiring(record)
                raise LongLivedExpiring(record.connection_id)  # the sweep's: report, not refresh
            case (
                NoOp.NOT_CONNECTED
                | NoOp.EXCHANGE_IN_PROGRESS  # and the wait for it is over
                | NoOp.UNDEFINED
                # Never answered to refresh_claimed; named so that a new no-op gets a place.
                | NoOp.DUPLICATE_CODE
                | NoOp.DUPLICATE_CONSENT
                | NoOp.EXPIRED_STATE
                | NoOp.STATE_FROM_AHEAD
                | NoOp.REUSED_STATE
                | NoOp.WRONG_BROWSER
                | NoOp.NEW_CODE_REFUSED
                | NoOp.CODE_USED_ELSEWHERE
                | NoOp.CREDENTIALS_PENDING
                | NoOp.NO_HOST
                | NoOp.KEEP_CONNECTION
                | NoOp.STALE
                | NoOp.LEASE_LIVE
                | NoOp.VERIFICATION_PENDING
                | NoOp.NO_EXCHANGE
                | NoOp.VERIFICATION_DEFERRED
                | NoOp.NOTHING_TO_VERIFY
                | NoOp.ALREADY_ROTATED
                | NoOp.ALREADY_DISCONNECTED
                | NoOp.HOOK_REPLAYED
                | NoOp.NOTHING_TO_FORGET
                | NoOp.FIRST_SEND
                | NoOp.CREDENTIALS_SETTLED
                | NoOp.CREDENTIALS_UNCHANGED
                | NoOp.CREDENTIALS_CONFLICT
                | NoOp.CREDENTIALS_CROWDED
            ):
                raise ReauthorizationRequired(record.name, record.not_connected_reason())
            case unreachable:
                assert_never(unreachable)
        return (yield from self.records.reload(record))

    def _later(self, record: RecordView) -> TryAgainLater:
        """The error for a caller while a pair kept in memory elsewhere is awaited."""
        return TryAgainLater(
            Reason.KEPT_PAIR_PENDING,
            "a pair another worker keeps in memory may still be stored",
            retry_after=self.records.retry_after(record),
        )

    def _awaits_kept_exchange(self, record: RecordView) -> bool:
        """The table says the exchange's lease lapsed within the grace: its pair is awaited."""
        return self.records.decide(record, self.records.lease_expired()).noop is (
            NoOp.KEPT_PAIR_PENDING
        )

    def _pending_verification(self, record: RecordView) -> Flow[RecordView]:
        """Verify a pair whose verification is due; a deferred one is reported at once."""
        current, noop = yield from self.verification.verify_if_due(record)
        if noop is NoOp.VERIFICATION_DEFERRED:
            raise TryAgainLater(
                Reason.VERIFICATION_DEFERRED,
                "amoCRM could not verify the new connection yet; it is retried",
                retry_after=self.records.retry_after(current),
            )
        return current

    def _end_long_lived(self, record: RecordView, reason: Reason) -> Flow[None]:
        """A long-lived token reached its ``exp`` or amoCRM refused it: the connection goes to
        ``error`` (nothing can renew it; an admin issues a new one). Falls through when a new
        token replaced it meanwhile (the caller looks again)."""
        ended = LongLivedEnded(record.access_token(), reason, self.records.now())
        _, wrote = yield from self.records.apply(record, ended)
        if wrote:
            logger.warning(
                "connection %s: its long-lived token ended (%s): %s",
                record.connection_id,
                reason.value,
                LONG_LIVED_HINT,
            )
            raise ReauthorizationRequired(record.connection_id, reason)

    def _give_up(self, record: RecordView) -> Flow[None]:
        """The refresh token went out twice without a stored answer: it is never sent again."""
        spent = record.refresh_token()
        hint = "the refresh token was sent twice without an answer"
        failed = RefreshFailed(
            ErrorInfo(Reason.REAUTHORIZATION_REQUIRED, hint, self.records.now()), spent
        )
        _, wrote = yield from self.records.apply(record, failed)
        if wrote:
            raise ReauthorizationRequired(record.name, Reason.REAUTHORIZATION_REQUIRED)

    def _claim_and_refresh(self, record: RecordView, event: RefreshClaimed) -> Flow[str | None]:
        host = AccountHost.accept(record.host or "", self.config.extra_domains)
        if host is None:  # the allowlist changed since: no secret goes there now
            raise ReauthorizationRequired(record.name, Reason.FOREIGN_HOST)
        # Metadata mode: a connection without its integration's credentials has nothing to
        # send (credentials_missing), so it claims nothing either: no lease left to lapse.
        self.records.credentials(record)
        claimed = yield from self.records.write(record, event)
        if claimed is None:
            return None
        return (yield from self._refresh(claimed, host, after_rejection=event.stale is not None))

    def _refresh(
        self, record: RecordView, host: AccountHost, *, after_rejection: bool
    ) -> Flow[str | None]:
        """Spend the refresh token once. None: the record moved on under us; look again."""
        spent = record.refresh_token()
        try:
            response = yield Send(
                refresh_request(self.config, self.records.credentials(record), host, spent)
            )
            tokens = read_tokens(response, self.records.now(), grant="refresh_token", sent=spent)
            tokens = attrs.evolve(tokens, after_rejection=after_rejection)
        except ProviderError as error:
            if meaning_of(error, "refresh_token").meaning is Meaning.ACCOUNT_MOVED:
                self.records.warn(
                    record, "refresh", meaning_of(error, "refresh_token"), error, (spent,)
                )
                return (yield from self._follow_move(record, spent, after_rejection))
            return (yield from self._refresh_failed(record, spent, error))
        # The rotated pair is persisted in one write before anyone uses it. When our claim was
        # overtaken (our lease lapsed, or another worker declared the connection dead on its
        # "revoked"), the table still keeps our pair: amoCRM revoked the token we spent.
        event = Refreshed(tokens, spent)
        written = yield from self._store_rotated(record, event)
        return tokens.access_token if written else None

    def _follow_move(
        self, record: RecordView, spent: str, after_rejection: bool
    ) -> Flow[str | None]:
        """The account was renamed or moved (``Invalid account``, 404): ask amoCRM where it lives
        now, accept the new host only through the allowlist, and retry the refresh there once
        (protocol notes §5). The new host is stored in one write with the rotated pair."""
        extra = self.config.extra_domains
        claimed_api = api_domain_of(record.access_token())
        api_host = AccountHost.accept(claimed_api or "", extra)
        if api_host is None:  # a token from before the claim existed: no lookup possible
            return (
                yield from self._moved_away(record, spent, "the access token names no api_domain")
            )
        try:
            response = yield Send(lookup_request(self.config, api_host, spent))
            moved_to = read_lookup(response, extra)
        except ProviderError as error:
            answer = meaning_of(error, "subdomain_lookup")
            self.records.warn(record, "account lookup", answer, error, redact=(spent,))
            if answer.meaning.transient:  # amoCRM did not say: keep the pair for a later try
                # (a lookup sends the refresh token but never spends it)
                yield from self._keep_for_later(record, answer, error, sent=False)
            # The lookup refuses a spent token: sent again after a lapse, an earlier moved
            # retry may have rotated it, its pair lost or kept in memory, as for any refresh.
            if answer.reason in SPENT_TOKEN_REASONS and (yield from self._doubt(record, spent)):
                return None  # someone else rotated the pair meanwhile: adopt theirs
            return (yield from self._moved_away(record, spent, error.hint))
        if moved_to is None:  # no secret goes to a host the allowlist refuses
            return (
                yield from self._moved_away(record, spent, "the lookup named a host not allowed")
            )
        try:  # the one retry on the new host, with the same refresh token (protocol §5)
            response = yield Send(
                refresh_request(self.config, self.records.credentials(record), moved_to, spent)
            )
            tokens = read_tokens(response, self.records.now(), grant="refresh_token", sent=spent)
        except ProviderError as error:
            # As any refresh failure; the host is still the old one, so a later try looks the
            # account up again.
            return (yield from self._refresh_failed(record, spent, error))
        logger.info("connection %s: the account moved to %s", record.connection_id, moved_to.name)
        tokens = attrs.evolve(tokens, after_rejection=after_rejection)
        event = Refreshed(tokens, spent, host=moved_to)
        written = yield from self._store_rotated(record, event)
        return tokens.access_token if written else None

    def _moved_away(self, record: RecordView, spent: str, hint: str) -> Flow[NoReturn]:
        """The account's new host cannot be had: the connection leaves ``connected`` with the
        reason ``account_moved``.

        Raises:
            ReauthorizationRequired: always, once the record is written.
        """
        gone = RefreshFailed(ErrorInfo(Reason.ACCOUNT_MOVED, hint, self.records.now()), spent)
        yield from self.records.apply(record, gone)
        raise ReauthorizationRequired(record.name, Reason.ACCOUNT_MOVED)

    def _store_rotated(self, record: RecordView, event: Refreshed) -> Flow[bool]:
        """Store a rotated pair: amoCRM has revoked the token we spent, so this pair is the only
        valid one. A store that fails is retried within the lease; if it stays down, the pair
        is kept in this process (``Records.keeping``: written before its next store operation,
        and by the background retry) and the caller gets the ``StoreError``. False: the table
        made it a no-op (a disconnect)."""
        # amoCRM accepted the connection's own integration again: (re-)enter its client id,
        # which a crash right after the code's exchange may have left out.
        yield from self.records.register_client(record)

        def attempt() -> Flow[bool]:
            written = yield from self.records.write(record, event)
            if written is None:
                _, wrote = yield from self.records.apply(record, event)
                return wrote
            return True

        return (yield from self.records.keeping(record, event, attempt))

    def _refresh_failed(
        self, record: RecordView, spent: str, error: ProviderError
    ) -> Flow[str | None]:
        answer = meaning_of(error, "refresh_token")
        self.records.warn(record, "refresh", answer, error, redact=(spent,))
        if answer.meaning not in REFRESH_REFUSALS:
            # Not the token's fault (amoCRM down, the account blocked, the client misconfigured):
            # keep the pair for a later try.
            yield from self._keep_for_later(record, answer, error, sent=maybe_spent(error))
        if answer.reason in SPENT_TOKEN_REASONS and (yield from self._doubt(record, spent)):
            return None  # someone else rotated the pair meanwhile: adopt theirs
        # Refused for good: this refresh token is never sent again.
        failed = RefreshFailed(
            self.records.error_info(Reason.REAUTHORIZATION_REQUIRED, error), spent
        )
        _, wrote = yield from self.records.apply(record, failed)
        if not wrote:
            return None  # someone else rotated the pair: adopt theirs
        raise ReauthorizationRequired(record.name, Reason.REAUTHORIZATION_REQUIRED)

    def _keep_for_later(
        self, record: RecordView, answer: Answer, error: ProviderError, *, sent: bool
    ) -> Flow[NoReturn]:
        """Give the claim up and keep the pair for a later try. An answer from amoCRM that kept
        it (a 429, a blocked account's 403, a 5xx...) holds the connection's refreshes back
        for every process (``RefreshDeferred``: a back-off in the record, growing while it
        goes on); ``error.retry_after`` then says for how long. No answer only releases the
        lease: a request that never left (a refused connect, the API's pace) spent nothing and
        pushed back on nothing, and one that may have arrived (a read timeout) may have rotated
        the pair, so a second send of its token must come while amoCRM still honours it.
        ``sent``: the refresh token may have been spent (``RefreshReleased``).

        Raises:
            TryAgainLater: ``refresh_backoff`` when the refresh is held back, amoCRM's status
                on it, ``error`` as its cause; also when the store failed every try to take
                the back-off (then logged as a WARNING): the caller's retry helps either way.
            ProviderError: ``error`` itself when no answer came.
        """
        if not answered(error):
            # Nothing reached amoCRM, or nothing came back: amoCRM pushed back on nothing, so
            # nothing is held back for every machine (one machine's broken network must not
            # stop the others). ``sent`` says whether the token may have been spent.
            yield from self.records.write(record, RefreshReleased(sent=sent))
            raise error
        deferral = self.records.deferral(record, answer.reason, error.retry_after, sent=sent)
        hint = error.hint
        try:
            held = yield from self._write_deferral(record, deferral)
        except StoreError as failure:
            # The answer stands even if the store would not take it: the caller hears the
            # back-off it earned, this process keeps it (written by its next load that the
            # store takes); the store's failure is logged (no secret in its name).
            self.records.keep_pushback(record, deferral)
            logger.warning(
                "connection %s: the refresh's back-off could not be stored (%s): this process"
                " holds its refreshes back and stores it once the store takes writes again",
                record.connection_id,
                type(failure).__name__,
            )
            waited = (deferral.until - self.records.now()).total_seconds()
            raise TryAgainLater(
                Reason.REFRESH_BACKOFF, hint, retry_after=max(waited, 0.0), status=error.status
            ) from error
        retry_after = self.records.retry_after(held) if held is not None else error.retry_after
        # The same error every caller meets until the back-off lapses, amoCRM's status on it:
        # one ``except TryAgainLater`` handles the first call and the ones it holds back.
        raise TryAgainLater(
            Reason.REFRESH_BACKOFF, hint, retry_after=retry_after, status=error.status
        ) from error

    def _write_deferral(
        self, record: RecordView, deferral: RefreshDeferred
    ) -> Flow[RecordView | None]:
        """Write the back-off of a refresh that got an answer, tried again within the lease
        while the store fails: left unwritten, the claim would count a send that amoCRM's
        answer proved unspent, and two such would end the connection ("sent twice without an
        answer"). None: another writer moved the record on.

        Raises:
            StoreError: the store failed every try.
        """
        for pause in (*_STORE_RETRIES, None):
            try:
                return (yield from self.records.write(record, deferral))
            except StoreError:
                if pause is None:
                    raise
            yield Sleep(pause)
        raise AssertionError("not reached: the last try returns or raises")

    def _doubt(self, record: RecordView, spent: str) -> Flow[bool]:
        """amoCRM refused ``spent`` as revoked or invalid (the refresh, or the account lookup
        of a moved account). Where the table says the token went out before without a stored
        answer, that refusal is no verdict: the first sender may keep the rotated pair in
        memory, so the pair is awaited ``Config.kept_pair_grace`` (the table's
        ``refresh_doubted``). False: the token's first send, the refusal stands. True: the
        record moved on meanwhile (a rotated pair landed): look again.

        Raises:
            TryAgainLater: ``kept_pair_pending`` once the wait is written.
        """
        doubted = RefreshDoubted(spent, self.records.now() + self.config.kept_pair_grace)
        if not self._maybe_rotated(record, doubted):
            return False
        awaited, wrote = yield from self.records.apply(record, doubted)
        if not wrote:
            return True
        raise self._later(awaited)

    def _maybe_rotated(self, record: RecordView, doubted: RefreshDoubted) -> bool:
        """Whether a "revoked" for this refresh may not be the token's verdict: the table says
        the token was sent more than once (after a lapsed lease, or a send without a stored
        answer), so its pair is awaited ``Config.kept_pair_grace`` rather than given up."""
        return self.records.decide(record, doubted).noop is not NoOp.FIRST_SEND


def _slug(error: AmoOAuthError) -> str:
    """What a sweep reports for a connection it could not refresh: what amoCRM's answer meant
    (``account_blocked``, ``unavailable``...) when one came, else why nothing was sent."""
    if isinstance(error, TryAgainLater):
        cause = error.__cause__
        if isinstance(cause, TryAgainLater):  # never sent: why (``api_paused``)
            return str(cause.reason)
        return reason_of(cause) if isinstance(cause, ProviderError) else error.reason
    if isinstance(error, ProviderError):
        return reason_of(error)
    return type(error).__name__
