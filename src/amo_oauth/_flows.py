"""The service's logic, written once as generators of I/O operations.

A flow yields ``Call`` (a store method), ``Send`` (an HTTP request) or ``Sleep``, and is driven by
``AmoOAuth`` (blocking) or ``AsyncAmoOAuth`` (awaiting), the way httpx's auth flows serve both
clients. Every write goes through ``step`` (the table) and one compare-and-set, so a decision
made on a stale read is never written: the loser reloads and looks again.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Generator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlencode

import attrs
import httpx

from ._callback import Denial, QueryLike, parse_callback
from ._config import Config
from ._errors import AmoOAuthError, CallbackRejected, ProviderError, ReauthorizationRequired
from ._events import (
    CodeReceived,
    Denied,
    Disconnect,
    Event,
    ExchangeFailed,
    ExchangeSucceeded,
    LeaseExpired,
    ProviderDisconnected,
    RefreshClaimed,
    Refreshed,
    RefreshFailed,
    RefreshReleased,
    Verified,
    VerifyFailed,
)
from ._hook import verify_disconnect_hook
from ._hosts import AccountHost
from ._provider import (
    account_request,
    code_request,
    read_account,
    read_tokens,
    reason_of,
    refresh_request,
)
from ._records import (
    CODE_MEMORY,
    Connection,
    ConnectionRecord,
    ConnectionState,
    ErrorInfo,
    Lease,
    TokenSet,
    code_digest,
)
from ._results import AuthorizationRequest, CallbackResult, Outcome, RefreshReport
from ._state import EXCHANGING, step
from ._state_token import StateClaims, issue_state, read_state

__all__ = ["Call", "Flow", "Flows", "Op", "Send", "Sleep"]

logger = logging.getLogger("amo_oauth")

T = TypeVar("T")

S = ConnectionState
_MAX_ID = 255  # room for a widget install, named after its account host
_MAX_CODE = 2048


@attrs.frozen
class Call:
    """Call a ``Store`` method."""

    method: str
    args: tuple[Any, ...] = ()


@attrs.frozen
class Send:
    """Send a request to amoCRM; the driver answers with the response or throws ProviderError."""

    request: httpx.Request


@attrs.frozen
class Sleep:
    seconds: float


Op = Call | Send | Sleep
Flow = Generator[Op, Any, T]


def check_connection_id(connection_id: object) -> str:
    """A connection id is the application's key: non-empty printable text, at most 255 chars."""
    if not isinstance(connection_id, str) or not 0 < len(connection_id) <= _MAX_ID:
        raise ValueError("connection_id must be a non-empty string of at most 255 characters")
    if not connection_id.isprintable():
        raise ValueError("connection_id must be printable")
    return connection_id


def _expected(record: ConnectionRecord) -> int | None:
    return record.version or None


class Flows:
    """The logic behind every public method of ``AmoOAuth`` and ``AsyncAmoOAuth``."""

    def __init__(
        self,
        config: Config,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.now = clock
        # Waits are bounded in real time even when the clock is a test's frozen fake.
        self._monotonic = monotonic
        self._instance = secrets.token_hex(4)

    # -- begin ---------------------------------------------------------------------------

    def begin(self, connection_id: str) -> AuthorizationRequest:
        check_connection_id(connection_id)
        config = self.config
        token, claims = issue_state(
            config.state_secret, connection_id, self.now(), config.state_ttl
        )
        query = urlencode({"client_id": config.client_id, "state": token, "mode": config.mode})
        joiner = "&" if "?" in config.authorize_url else "?"
        return AuthorizationRequest(
            f"{config.authorize_url}{joiner}{query}", token, claims.expires_at
        )

    # -- codes ---------------------------------------------------------------------------

    def handle_callback(
        self, query: QueryLike, signed_in: str | None = None
    ) -> Flow[CallbackResult]:
        parsed = parse_callback(query, self.config)
        state = parsed.state
        if signed_in is not None and state is not None and state.connection_id != signed_in:
            # The redirect was started by someone else's begin(): refuse to attach this
            # browser's amoCRM account to their connection.
            raise CallbackRejected("bad_state")
        if isinstance(parsed, Denial):
            return (yield from self._deny(parsed))
        # A widget install has no state: its connection is named after the account host.
        connection_id = parsed.state.connection_id if parsed.state else parsed.host.name
        return (yield from self._exchange(connection_id, parsed.code, parsed.host, parsed.state))

    def exchange_code(
        self,
        connection_id: str,
        code: str,
        referer: str | None = None,
        state: str | None = None,
    ) -> Flow[CallbackResult]:
        check_connection_id(connection_id)
        if not isinstance(code, str) or not code:
            raise CallbackRejected("missing_code")
        if len(code) > _MAX_CODE or not code.isprintable():
            raise CallbackRejected("malformed")
        claims = read_state(self.config.state_secret, state) if state else None
        if claims is not None and claims.connection_id != connection_id:
            raise CallbackRejected("bad_state")
        host = None
        if referer:
            host = AccountHost.accept(referer, self.config.extra_domains)
            if host is None:
                raise CallbackRejected("foreign_host")
        return (yield from self._exchange(connection_id, code, host, claims))

    def _exchange(
        self,
        connection_id: str,
        code: str,
        host: AccountHost | None,
        claims: StateClaims | None,
    ) -> Flow[CallbackResult]:
        digest = code_digest(code)
        while True:
            record = yield from self._load(connection_id)
            if record.knows_code(digest):
                return (yield from self._report(record, duplicate=True))
            if claims is not None:
                yield from self._consume(claims, holder=digest)
            target = host or self._stored_host(record)
            event = CodeReceived(
                digest,
                target,
                self._lease("exchange"),
                claims.issued_at if claims else None,
            )
            result = step(record, event, self.now())
            if not result.changed:  # an exchange in flight, or a connection to keep
                return (yield from self._report(record, duplicate=False))
            if not (yield from self._own_code(digest, connection_id)):
                # Another connection claimed this code: a duplicate here too, reported at once.
                return CallbackResult.report(record.public(), duplicate=True)
            claimed = yield from self._commit(record, result.record, event)
            if claimed is not None:
                return (yield from self._finish_exchange(claimed, code, target))
            # Lost the race: reload; the winner's claim usually makes this a duplicate.

    def _finish_exchange(
        self, record: ConnectionRecord, code: str, host: AccountHost
    ) -> Flow[CallbackResult]:
        try:
            response = yield Send(code_request(self.config, host, code))
            tokens = read_tokens(response, self.now())
        except ProviderError as error:
            # A transient failure leaves the code's fate unknown: it is never sent again.
            reason = "exchange_interrupted" if error.transient else "code_rejected"
            failed = ExchangeFailed(self._error(reason, error))
            return (yield from self._conclude(record, failed, Outcome.FAILED))
        exchanged = yield from self._write(record, ExchangeSucceeded(tokens))
        if exchanged is None:
            return (yield from self._overtaken(record))
        return (yield from self._verify(exchanged, host, tokens))

    def _verify(
        self, record: ConnectionRecord, host: AccountHost, tokens: TokenSet
    ) -> Flow[CallbackResult]:
        try:
            response = yield Send(account_request(self.config, host, tokens.access_token))
            account = read_account(response)
        except ProviderError as error:
            failed = VerifyFailed(self._error("verify_failed", error))
            return (yield from self._conclude(record, failed, Outcome.FAILED))
        verified = Verified(account, self.now())
        return (yield from self._conclude(record, verified, Outcome.CONNECTED))

    def _conclude(
        self, record: ConnectionRecord, event: Event, outcome: Outcome
    ) -> Flow[CallbackResult]:
        """Write the exchange's last step on the record this worker claimed, and report."""
        written = yield from self._write(record, event)
        if written is None:
            return (yield from self._overtaken(record))
        return CallbackResult(outcome, written.public())

    def _overtaken(self, record: ConnectionRecord) -> Flow[CallbackResult]:
        """Our claim was overtaken (a disconnect, a hook, a lapsed lease): theirs stands, and
        nothing of ours (tokens, account) is written onto a record we no longer hold."""
        current = yield from self._load(record.connection_id)
        return CallbackResult.report(current.public(), duplicate=False)

    def _deny(self, denial: Denial) -> Flow[CallbackResult]:
        yield from self._consume(denial.state, holder="denied")
        record = yield from self._update(
            denial.state.connection_id, Denied(self.now(), denial.reason)
        )
        return CallbackResult(Outcome.DENIED, record.public())

    def _consume(self, claims: StateClaims, holder: str) -> Flow[None]:
        if claims.is_expired(self.now()):
            raise CallbackRejected("expired_state")
        expires_at = self._store_time(claims.expires_at)
        if not (yield Call("consume_state", (claims.nonce, expires_at, holder))):
            raise CallbackRejected("reused_state")

    def _own_code(self, digest: str, connection_id: str) -> Flow[bool]:
        """Claim a code for one connection, store-wide: no other connection may send it.

        Calls for the same connection all pass, so that the record's compare-and-set, which
        also remembers the code, picks the one sender among them (as with states).
        """
        expires_at = self._store_time(self.now() + CODE_MEMORY)
        return bool((yield Call("consume_state", (f"code:{digest}", expires_at, connection_id))))

    def _store_time(self, moment: datetime) -> datetime:
        """``moment`` on the real clock, for what a store forgets by real time (nonces).

        A test's clock may run far behind the wall clock; the store must not forget early.
        """
        return datetime.now(UTC) + (moment - self.now())

    def _stored_host(self, record: ConnectionRecord) -> AccountHost:
        host = AccountHost.accept(record.host or "", self.config.extra_domains)
        if host is None:
            raise CallbackRejected("missing_referer")
        return host

    def _report(self, record: ConnectionRecord, *, duplicate: bool) -> Flow[CallbackResult]:
        record = yield from self._settled(record)
        return CallbackResult.report(record.public(), duplicate=duplicate)

    def _settled(self, record: ConnectionRecord) -> Flow[ConnectionRecord]:
        """Wait, a bounded time, for another worker's exchange to finish."""
        deadline = self._monotonic() + self.config.settle_timeout
        delay = 0.01
        while record.state in EXCHANGING and self._monotonic() < deadline:
            yield Sleep(delay)
            delay = min(delay * 2, 0.1)
            record = yield from self._load(record.connection_id)
        return record

    # -- status and disconnects -------------------------------------------------------------

    def status(self, connection_id: str) -> Flow[Connection]:
        check_connection_id(connection_id)
        record = yield from self._load(connection_id)
        return record.public()

    def disconnect(self, connection_id: str) -> Flow[Connection]:
        check_connection_id(connection_id)
        record = yield from self._update(connection_id, Disconnect())
        return record.public()

    def handle_disconnect_hook(self, query: QueryLike) -> Flow[tuple[Connection, ...]]:
        account_id = verify_disconnect_hook(query, self.config)
        records: list[ConnectionRecord] = yield Call("find_by_account", (account_id,))
        event = ProviderDisconnected(self.now())
        done = []
        for record in records:
            done.append((yield from self._update(record.connection_id, event)).public())
        return tuple(done)

    # -- tokens ----------------------------------------------------------------------------

    def access_token(self, connection_id: str, stale: str | None = None) -> Flow[str]:
        check_connection_id(connection_id)
        margin = self.config.refresh_margin

        def needs_refresh(tokens: TokenSet) -> bool:
            return tokens.access_token == stale or not tokens.is_fresh(self.now(), margin)

        return (yield from self._token(connection_id, needs_refresh))

    def refresh_due(self, within: timedelta, limit: int) -> Flow[RefreshReport]:
        before = self.now() + within
        records: list[ConnectionRecord] = yield Call("due_for_refresh", (before, limit))
        refreshed, failed = [], []
        for record in records:
            try:
                yield from self._token(
                    record.connection_id, lambda t: t.refresh_expires_at < before
                )
            except AmoOAuthError as error:
                failed.append((record.connection_id, _slug(error)))
            else:
                refreshed.append(record.connection_id)
        return RefreshReport(tuple(refreshed), tuple(failed))

    def _token(self, connection_id: str, needs_refresh: Callable[[TokenSet], bool]) -> Flow[str]:
        """A usable access token; at most one refresh in flight per connection, anywhere."""
        deadline = self._monotonic() + self.config.settle_timeout
        while True:
            record = yield from self._settled((yield from self._load(connection_id)))
            tokens = record.tokens
            if record.state is not S.CONNECTED or tokens is None:
                raise ReauthorizationRequired(connection_id, _why_not_connected(record))
            if not needs_refresh(tokens):
                return tokens.access_token
            if record.live_lease(self.now()) is None:
                host = AccountHost.accept(record.host or "", self.config.extra_domains)
                if host is None:  # the allowlist changed since: no secret goes there now
                    raise ReauthorizationRequired(connection_id, "foreign_host")
                claimed = yield from self._write(record, RefreshClaimed(self._lease("refresh")))
                token = (yield from self._refresh(claimed, host)) if claimed else None
                if token is not None:
                    return token
            elif self._monotonic() < deadline:
                yield Sleep(0.02)  # another worker is refreshing: adopt its tokens
            else:
                raise ProviderError(
                    None, "a refresh by another worker is still running", transient=True
                )

    def _refresh(self, record: ConnectionRecord, host: AccountHost) -> Flow[str | None]:
        """Spend the refresh token once. None: the record moved on under us; look again."""
        assert record.tokens is not None
        try:
            response = yield Send(refresh_request(self.config, host, record.tokens.refresh_token))
            tokens = read_tokens(response, self.now())
        except ProviderError as error:
            return (yield from self._refresh_failed(record, error))
        # The rotated pair is persisted in one write before anyone uses it.
        written = yield from self._write(record, Refreshed(tokens))
        if written is None:
            written = yield from self._keep_rotated(record, tokens)
        return tokens.access_token if written else None

    def _keep_rotated(
        self, spent: ConnectionRecord, tokens: TokenSet
    ) -> Flow[ConnectionRecord | None]:
        """Store a rotated pair whose claim was overtaken, unless the record moved on for good.

        amoCRM has revoked the refresh token we spent: our pair is the only valid one. If our
        lease lapsed and another worker claimed (and will resend the spent token), or already
        declared the connection dead on its "revoked", the pair must still win; after a
        disconnect or a hook it must not (the table makes that a no-op).
        """
        assert spent.tokens is not None
        event = Refreshed(tokens)
        while True:
            current = yield from self._load(spent.connection_id)
            rotated = current.tokens and current.tokens.refresh_token != spent.tokens.refresh_token
            result = step(current, event, self.now())
            if rotated or not result.changed:
                return None
            written = yield from self._commit(current, result.record, event)
            if written is not None:
                return written

    def _refresh_failed(self, record: ConnectionRecord, error: ProviderError) -> Flow[str | None]:
        assert record.tokens is not None
        if reason_of(error) != "token_revoked":
            yield from self._write(record, RefreshReleased())
            raise error
        current = yield from self._load(record.connection_id)
        if current.tokens and current.tokens.refresh_token != record.tokens.refresh_token:
            return None  # someone else rotated the pair: adopt theirs
        failed = RefreshFailed(self._error("reauthorization_required", error))
        yield from self._write(record, failed)
        raise ReauthorizationRequired(record.connection_id, "reauthorization_required")

    # -- records -----------------------------------------------------------------------------

    def _load(self, connection_id: str) -> Flow[ConnectionRecord]:
        """The stored record (or a new one), with a dead worker's exchange lease expired."""
        while True:
            record = (yield Call("load", (connection_id,))) or ConnectionRecord(connection_id)
            if record.state not in EXCHANGING or record.live_lease(self.now()) is not None:
                return record
            # The worker holding the exchange is presumed dead: the code is never resent.
            expired = yield from self._write(record, LeaseExpired(self.now()))
            if expired is not None:
                return expired

    def _write(self, record: ConnectionRecord, event: Event) -> Flow[ConnectionRecord | None]:
        """Step ``record`` by ``event`` and write it. None when a no-op or another writer won."""
        result = step(record, event, self.now())
        if not result.changed:
            return None
        return (yield from self._commit(record, result.record, event))

    def _commit(
        self, old: ConnectionRecord, new: ConnectionRecord, event: Event
    ) -> Flow[ConnectionRecord | None]:
        """Compare-and-set ``new`` over ``old``. None when another writer won."""
        if not (yield Call("compare_and_set", (new, _expected(old)))):
            return None
        logger.info(
            "connection %s: %s -> %s (%s)",
            old.connection_id,
            old.state.value,
            new.state.value,
            event.name,
            extra={"amo_event": event.name, "amo_connection_id": old.connection_id},
        )
        return new

    def _update(self, connection_id: str, event: Event) -> Flow[ConnectionRecord]:
        """Apply an event to whatever is stored, retrying until written or a no-op."""
        while True:
            record = yield from self._load(connection_id)
            result = step(record, event, self.now())
            if not result.changed:
                return record
            written = yield from self._commit(record, result.record, event)
            if written is not None:
                return written

    def _lease(self, purpose: str) -> Lease:
        owner = f"{self._instance}:{secrets.token_hex(4)}"
        return Lease(owner, purpose, self.now() + self.config.lease_ttl)

    def _error(self, reason: str, error: ProviderError) -> ErrorInfo:
        return ErrorInfo(reason, error.hint, self.now())


def _why_not_connected(record: ConnectionRecord) -> str:
    return record.error.reason if record.error else record.state.value


def _slug(error: AmoOAuthError) -> str:
    if isinstance(error, ReauthorizationRequired):
        return error.reason
    if isinstance(error, ProviderError):
        return reason_of(error)
    return type(error).__name__
