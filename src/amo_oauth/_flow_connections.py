"""The connection flows: a connection's status, and its ends (the app's disconnect, amoCRM's
uninstall hook).

A status read verifies a pending pair only when the table says a verification is due; a
disconnect and a hook are events the table applies to whatever is stored.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from ._callback import QueryLike
from ._connection_id import ConnectionId
from ._errors import CallbackRejected, ProviderError, UnreadableRecord
from ._events import Disconnect, LongLivedEnded, ProviderDisconnected
from ._flow_verify import Verification
from ._hook import DisconnectHook, read_disconnect_hook
from ._hosts import AccountHost
from ._ops import ConsumeState, Flow, Send, perform
from ._provider import (
    account_request,
    api_domain_of,
    lookup_request,
    meaning_of,
    read_account,
    read_lookup,
)
from ._reasons import Reason
from ._record_view import RecordView
from ._records import Connection
from ._results import HookResult
from ._state_token import MAX_CLOCK_SKEW

__all__ = ["ConnectionFlows"]


class ConnectionFlows:
    """The logic behind ``status``, ``disconnect`` and ``handle_disconnect_hook``."""

    def __init__(self, verification: Verification) -> None:
        self.verification = verification
        self.records = verification.records
        self.config = verification.config

    def status(self, connection_id: ConnectionId) -> Flow[Connection]:
        record = yield from self.records.load(connection_id)
        record = yield from self._end_if_expired(record)
        # Network I/O (and a write) only when a verification is due.
        record, _ = yield from self.verification.verify_if_due(record)
        return record.public()

    def _end_if_expired(self, record: RecordView) -> Flow[RecordView]:
        """A long-lived token past its ``exp`` (protocol §8) ends the connection here as
        ``access_token`` would: the status read writes ``error(long_lived_token_expired)``, so
        every later read (and the sweep) agrees. Nothing is written when nothing ended."""
        ended = LongLivedEnded(None, Reason.LONG_LIVED_TOKEN_EXPIRED, self.records.now())
        if not self.records.decide(record, ended).changed:
            return record
        record, _ = yield from self.records.apply(record, ended)
        return record

    def disconnect(self, connection_id: ConnectionId) -> Flow[Connection]:
        fresh = self.records.fresh(connection_id)  # checks the id before anything is read
        while True:
            try:
                record, _ = yield from self.records.apply(fresh, Disconnect())
            except UnreadableRecord as unreadable:
                if unreadable.version is None:
                    raise
                # The row is corrupt but its version is intact: overwrite it with a fresh,
                # disconnected record. (Replays of its codes stay no-ops: the store-wide code
                # ledger still holds them.)
                replaced = yield from self.records.replace_unreadable(
                    connection_id, unreadable.version
                )
                if replaced is None:
                    continue
                record = replaced
            return record.public()

    def handle_disconnect_hook(self, query: QueryLike) -> Flow[HookResult]:
        hook = read_disconnect_hook(query)
        account_id = hook.account_id
        fixed = self.config.credentials
        if fixed is not None and not hook.signed_by(fixed):
            raise CallbackRejected(Reason.BAD_SIGNATURE)  # before anything is read
        records = yield from self.records.find_by_account(account_id)
        ours = [r for r in records if r.integration in (None, self.config.client_id)]
        if fixed is None:
            ours = _signed_by_their_own(hook, ours)
        # Only connections the hook would change are worth a question to amoCRM.
        unheard = ProviderDisconnected(self.records.now())
        due = [r for r in ours if self.records.decide(r, unheard).noop is None]
        if not due:
            return _result(ours, reason=Reason.NOTHING_TO_FORGET)
        if not (yield from self._may_check(account_id)):
            return _result(ours, reason=Reason.HOOK_PACED)
        after = {r.key: r for r in ours}
        disconnected, standing = [], None
        for record in due:
            # Each connection is asked about its own tokens: one accepted token proves only
            # that the integration is installed now (a consent after the uninstall installs it
            # again), not that an older connection's tokens survived the uninstall.
            reason = yield from self._why_it_stands(record)
            event = ProviderDisconnected(self.records.now(), token_still_accepted=bool(reason))
            updated, wrote = yield from self.records.apply(record, event)
            after[record.key] = updated
            if wrote and not reason:
                disconnected.append(updated.public())
            standing = standing or reason
        reason = None if disconnected else (standing or Reason.NOTHING_TO_FORGET)
        return _result(list(after.values()), disconnected, checked=True, reason=reason)

    def _may_check(self, account_id: int) -> Flow[bool]:
        """Take this account's one check of the current ``hook_check_interval`` (a ledger key
        per interval on the store's clock, so every process sharing the store counts it):
        a hook URL replays for ever, and each check spends one of the account's API calls."""
        interval = self.config.hook_check_interval.total_seconds()
        now = self.records.now()
        index = int(now.timestamp() // interval)
        ends = datetime.fromtimestamp((index + 1) * interval, UTC) + MAX_CLOCK_SKEW
        key = f"hookcheck:{self.config.client_id}:{account_id}:{index}"
        return (yield from perform(ConsumeState(key, ends, secrets.token_urlsafe(12))))

    def _why_it_stands(self, record: RecordView) -> Flow[Reason | None]:
        """Why the hook must not disconnect this connection: amoCRM still accepts its tokens
        (``hook_replayed``: after a real uninstall it answers 401 to both, protocol notes §6)
        or could not be asked (``provider_unavailable``: a replay during an outage changes
        nothing; a real uninstall still shows at the next use of the tokens). None: amoCRM
        refused them. The access token is asked first (the account call); an expired one
        proves nothing, so the refresh token is then asked through the account lookup, which
        does not spend it (§5)."""
        extra = self.config.extra_domains
        host_name, access, refresh = record.api_credentials()
        host = AccountHost.accept(host_name, extra)
        if host is None:
            return None
        try:
            read_account((yield Send(account_request(self.config, host, access))))
            return Reason.HOOK_REPLAYED
        except ProviderError as error:
            if meaning_of(error, "account").meaning.transient:
                return Reason.PROVIDER_UNAVAILABLE
        api_host = AccountHost.accept(api_domain_of(access) or "", extra)
        if api_host is None:
            return None
        try:
            answer = yield Send(lookup_request(self.config, api_host, refresh))
            return Reason.HOOK_REPLAYED if read_lookup(answer, extra) is not None else None
        except ProviderError as error:
            transient = meaning_of(error, "subdomain_lookup").meaning.transient
            return Reason.PROVIDER_UNAVAILABLE if transient else None


def _signed_by_their_own(hook: DisconnectHook, records: list[RecordView]) -> list[RecordView]:
    """Metadata mode (protocol notes §7): the hook's ``client_uuid`` is the client id of the
    integration amoCRM made for one install; the account's connections it is about are those
    whose own credentials signed it (each compared in constant time).

    Raises:
        CallbackRejected: ``bad_signature``: no connection of the account has that
            integration, or its secret did not sign the hook.
    """
    signed = [r for r in records if r.credentials is not None and hook.signed_by(r.credentials)]
    if not signed:
        raise CallbackRejected(Reason.BAD_SIGNATURE)
    return signed


def _result(
    records: list[RecordView],
    disconnected: list[Connection] | None = None,
    *,
    checked: bool = False,
    reason: Reason | None,
) -> HookResult:
    connections = tuple(record.public() for record in records)
    gone = tuple(disconnected or ())
    return HookResult(connections, disconnected=gone, checked=checked, reason=reason)
