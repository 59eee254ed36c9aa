"""Verification of a stored pair: ``GET /api/v4/account`` with the new tokens, once after an
exchange, and again later when it failed for a moment.

A pair from a spent code is never thrown away because of a transient fault: a 5xx, a 429 or a
timeout defers verification (``verify_deferred``, the next try's time stored in the record, so
every process shares one backoff), and a lease that lapses after the pair was stored leaves it
pending. Only a definite refusal moves the connection to ``error``.
"""

from __future__ import annotations

from datetime import timedelta

from ._answers import Answer, Meaning
from ._errors import ProviderError, TryAgainLater
from ._events import (
    Concluding,
    Refreshed,
    Verified,
    VerifyClaimed,
    VerifyDeferred,
    VerifyFailed,
)
from ._flow_records import Records
from ._hosts import AccountHost
from ._lifecycle import NoOp
from ._ops import Delete, Flow, Send, perform
from ._pace import pause_after
from ._provider import (
    account_request,
    check_account_host,
    meaning_of,
    read_account,
    read_tokens,
    refresh_request,
)
from ._reasons import Reason
from ._record_view import RecordView
from ._records import Account
from ._results import CallbackResult, Outcome

__all__ = ["Verification"]

#: The first retry of a verification that failed for a moment, doubling up to the last.
FIRST_RETRY = timedelta(seconds=5)
LAST_RETRY = timedelta(hours=1)


class Verification:
    """Verify a stored pair; held by the code flows and the token flows, it holds the
    ``Records`` they share."""

    def __init__(self, records: Records) -> None:
        self.records = records
        self.config = records.config

    def verify(
        self,
        record: RecordView,
        host: AccountHost,
        access_token: str,
        *,
        may_renew: bool = False,
    ) -> Flow[CallbackResult]:
        try:
            response = yield Send(account_request(self.config, host, access_token))
            account = check_account_host(read_account(response), host)
        except ProviderError as error:
            answer = meaning_of(error, "account")
            self.records.warn(record, "verification", answer, error)
            if answer.meaning is Meaning.TOKEN_REJECTED and may_renew:
                # A retry after the access token expired (nobody called for a day): renew the
                # pair from the spent code with its refresh token, then verify once more.
                return (yield from self._renew_and_verify(record, host))
            return (yield from self._verification_failed(record, answer, error))
        verified = Verified(account, self.records.now())
        return (yield from self.conclude(record, verified, Outcome.CONNECTED))

    def account_of(self, host: AccountHost, access_token: str) -> Flow[Account]:
        """The account ``access_token`` opens on ``host`` (``GET /api/v4/account``, protocol
        notes §5), which must be that host's; nothing is written.

        Raises:
            ProviderError: amoCRM refused the token or did not answer (``meaning_of`` with the
                ``account`` call says which), or answered for another account's subdomain.
        """
        response = yield Send(account_request(self.config, host, access_token))
        return check_account_host(read_account(response), host)

    def _verification_failed(
        self, record: RecordView, answer: Answer, error: ProviderError
    ) -> Flow[CallbackResult]:
        if answer.meaning.transient:  # amoCRM down or busy: keep the pair, try later
            deferred = self._deferral(record, error)
            return (yield from self.conclude(record, deferred, Outcome.IN_PROGRESS))
        failed = VerifyFailed(self.records.error_info(Reason.VERIFY_FAILED, error))
        return (yield from self.conclude(record, failed, Outcome.FAILED))

    def _deferral(self, record: RecordView, error: ProviderError) -> VerifyDeferred:
        """When to verify again after a transient failure. Refused unsent because amoCRM
        paused the host's API (``api_paused``): when the pause ends, and the try does not
        count. Sent: the back-off (5 s doubling to an hour), and no sooner than the pause
        amoCRM's answer began (a 429's ``retry_after``, a blocked account's minute; protocol
        notes §9), so the next try is not refused by it."""
        now = self.records.now()
        if isinstance(error, TryAgainLater) and error.reason == Reason.API_PAUSED:
            return VerifyDeferred(now + timedelta(seconds=error.retry_after or 0), sent=False)
        backoff = min(FIRST_RETRY * 2**record.verify_attempts, LAST_RETRY)
        paused = timedelta(seconds=pause_after(error.status, error.retry_after) or 0)
        return VerifyDeferred(now + max(backoff, paused))

    def _renew_and_verify(self, record: RecordView, host: AccountHost) -> Flow[CallbackResult]:
        spent = record.refresh_token()
        try:
            response = yield Send(
                refresh_request(self.config, self.records.credentials(record), host, spent)
            )
            tokens = read_tokens(response, self.records.now(), grant="refresh_token", sent=spent)
        except ProviderError as error:
            answer = meaning_of(error, "refresh_token")
            self.records.warn(record, "refresh", answer, error, redact=(spent,))
            return (yield from self._verification_failed(record, answer, error))
        renewed = yield from self.records.write(record, Refreshed(tokens, spent))
        if renewed is None:
            return (yield from self.overtaken(record))
        return (yield from self.verify(renewed, host, tokens.access_token))

    def conclude(
        self, record: RecordView, event: Concluding, outcome: Outcome
    ) -> Flow[CallbackResult]:
        """Write the exchange's last step on the record this worker claimed, and report.

        Raises:
            StoreError: the store refused the write, tried again within the lease; the step is
                kept in memory and lands at this process's next store operation
                (``Records.concluding``), so the next call finds the connection settled.
        """
        written = yield from self.records.concluding(
            record, event, lambda: self.records.write(record, event)
        )
        if written is None:
            return (yield from self.overtaken(record))
        if outcome is Outcome.FAILED and written.widget:
            # A failed widget install leaves no permanent record (anyone can send one); its
            # code stays in the ledger for a day, so it is still never resent.
            yield from perform(Delete(written.key, written.version))
        return CallbackResult(outcome, written.public())

    def overtaken(self, record: RecordView) -> Flow[CallbackResult]:
        """Our claim was overtaken (a disconnect, a hook, a lapsed lease): theirs stands, and
        nothing of ours (tokens, account) is written onto a record we no longer hold."""
        current = yield from self.records.reload(record)
        return CallbackResult.report(current.public(), duplicate=False)

    def verify_if_due(self, record: RecordView) -> Flow[tuple[RecordView, NoOp | None]]:
        """Try a pending verification when the table says it is due.

        Returns the record as it then is, and the table's answer to ``verify_claimed``: None
        when this call verified (or tried to), else the no-op (``NOTHING_TO_VERIFY``,
        ``LEASE_LIVE``, ``VERIFICATION_DEFERRED``).
        """
        fixed = self.records.fixed_noop(record, VerifyClaimed.name)
        if fixed is not None:  # the table's one answer in this status (connected: nothing due)
            return record, fixed
        event = VerifyClaimed(self.records.lease("exchange"))
        decision = self.records.decide(record, event)
        if not decision.changed:  # nothing due: nothing written
            return record, decision.noop
        claimed = yield from self.records.commit(record, decision, event.name)
        host = AccountHost.accept(record.host or "", self.config.extra_domains)
        if claimed is None or host is None:
            current = yield from self.records.reload(record)
            return current, NoOp.LEASE_LIVE
        yield from self.verify(claimed, host, claimed.access_token(), may_renew=True)
        current = yield from self.records.reload(record)
        return current, None
