"""The connection flows: a connection's status, and its ends (the app's disconnect, amoCRM's
uninstall hook).

A status read verifies a pending pair only when the table says a verification is due; a
disconnect and a hook are events the table applies to whatever is stored.
"""

from __future__ import annotations

from ._callback import QueryLike
from ._connection_id import ConnectionId
from ._errors import ProviderError, UnreadableRecord
from ._events import Disconnect, ProviderDisconnected
from ._flow_verify import Verification
from ._hook import verify_disconnect_hook
from ._hosts import AccountHost
from ._ops import Flow, Send
from ._provider import (
    account_request,
    api_domain_of,
    lookup_request,
    meaning_of,
    read_account,
    read_lookup,
)
from ._record_view import RecordView
from ._records import Connection

__all__ = ["ConnectionFlows"]


class ConnectionFlows:
    """The logic behind ``status``, ``disconnect`` and ``handle_disconnect_hook``."""

    def __init__(self, verification: Verification) -> None:
        self.verification = verification
        self.records = verification.records
        self.config = verification.config

    def status(self, connection_id: ConnectionId) -> Flow[Connection]:
        record = yield from self.records.load(connection_id)
        # Network I/O (and a write) only when a verification is due.
        record, _ = yield from self.verification.verify_if_due(record)
        return record.public()

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

    def handle_disconnect_hook(self, query: QueryLike) -> Flow[tuple[Connection, ...]]:
        account_id = verify_disconnect_hook(query, self.config)
        records = yield from self.records.find_by_account(account_id)
        done = []
        for record in records:
            if record.integration in (None, self.config.client_id):  # this integration's only
                alive = yield from self._token_still_accepted(record)
                event = ProviderDisconnected(self.records.now(), token_still_accepted=alive)
                updated, _ = yield from self.records.apply(record, event)
                done.append(updated.public())
        return tuple(done)

    def _token_still_accepted(self, record: RecordView) -> Flow[bool]:
        """Does amoCRM still accept the connection's tokens? After a real uninstall it answers
        401 to both (protocol notes §6). The access token is asked first (the account call);
        an expired one proves nothing, so the refresh token is then asked through the account
        lookup, which does not spend it (§5). Only definite refusals count as "no": when amoCRM
        cannot be asked (down, busy), the hook is not acted on, so a replay during an outage
        changes nothing (a real uninstall still shows at the next use of the tokens)."""
        extra = self.config.extra_domains
        host_name, access, refresh = record.api_credentials()
        host = AccountHost.accept(host_name, extra)
        if host is None:
            return False
        try:
            read_account((yield Send(account_request(self.config, host, access))))
            return True
        except ProviderError as error:
            if meaning_of(error, "account").meaning.transient:
                return True  # cannot tell: change nothing
        api_host = AccountHost.accept(api_domain_of(access) or "", extra)
        if api_host is None:
            return False
        try:
            answer = yield Send(lookup_request(self.config, api_host, refresh))
            return read_lookup(answer, extra) is not None
        except ProviderError as error:
            return meaning_of(error, "subdomain_lookup").meaning.transient
