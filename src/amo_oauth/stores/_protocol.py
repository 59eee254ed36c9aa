"""The one protocol every store implements, sync; ``AsyncAmoOAuth`` runs it off the event loop."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from .._records import ConnectionRecord

__all__ = ["Store"]


@runtime_checkable
class Store(Protocol):
    """Where connection records live. Every write is one atomic compare-and-set on ``version``.

    Implementations must be safe to call from many threads at once; stores meant for many
    processes or machines (SQLite on one machine, Postgres and Redis across machines) must keep
    the compare-and-set atomic across them too.
    """

    def load(self, connection_id: str) -> ConnectionRecord | None:
        """The stored record, or None when there is none."""
        ...

    def compare_and_set(self, record: ConnectionRecord, expected_version: int | None) -> bool:
        """Write ``record`` if the stored version is still ``expected_version``.

        ``expected_version=None`` inserts and fails when a record exists (stored versions start
        at 1, so 0 never matches). ``record.version`` must
        be greater than ``expected_version``. Returns False, writing nothing, when another writer
        got there first.
        """
        ...

    def delete(self, connection_id: str, expected_version: int) -> bool:
        """Delete the record if its version is still ``expected_version``."""
        ...

    def consume_state(self, nonce: str, expires_at: datetime, holder: str | None = None) -> bool:
        """Mark a state nonce used. True the first time, and again only for the same ``holder``.

        Without a holder a nonce is plainly single-use: True once, then never again.

        The holder (the digest of the code the state came with) lets two workers racing on the
        same redirect both pass, so the record's compare-and-set, not the nonce, picks the
        winner, and the loser sees a duplicate instead of ``reused_state``. Nonces may be
        forgotten after ``expires_at``.

        The service also keeps its code ledger here: keys ``code:<sha256 hex>`` held for a day
        by the one call allowed to send that code. Keys never collide with state nonces.
        """
        ...

    def find_by_account(self, account_id: int) -> list[ConnectionRecord]:
        """Every record whose verified account is ``account_id``."""
        ...

    def due_for_refresh(self, before: datetime, limit: int) -> list[ConnectionRecord]:
        """Up to ``limit`` connected records whose refresh token expires before ``before``,
        soonest first."""
        ...

    def close(self) -> None:
        """Release connections and files. The store is unusable afterwards."""
        ...
