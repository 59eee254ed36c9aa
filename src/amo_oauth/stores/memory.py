"""``MemoryStore``: records in a dict, for tests and single-process tools."""

from __future__ import annotations

import heapq
import threading
import time
from datetime import datetime

from .._records import ConnectionRecord, ConnectionState
from ._common import check_limit, check_write, closed_error, require_aware

__all__ = ["MemoryStore"]


class MemoryStore:
    """A ``Store`` in this process's memory: nothing survives the process.

    Safe across threads: one lock guards every call, so each compare-and-set is atomic. The
    records are kept as they are given: they are frozen, so no caller can change a stored one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, ConnectionRecord] = {}
        # nonce -> (holder, expires_at as a POSIX timestamp), and a heap of (expires_at, nonce)
        # with one entry per stored nonce, so expired nonces are pruned in O(log n) per call
        # instead of a sweep over the whole dict.
        self._nonces: dict[str, tuple[str | None, float]] = {}
        self._expiries: list[tuple[float, str]] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryStore(records={len(self._records)})"

    def load(self, connection_id: str) -> ConnectionRecord | None:
        """The stored record, or None when there is none."""
        with self._lock:
            self._check_open()
            return self._records.get(connection_id)

    def compare_and_set(self, record: ConnectionRecord, expected_version: int | None) -> bool:
        """Write ``record`` if the stored version is still ``expected_version`` (None: insert).

        Raises:
            ValueError: ``record.version`` does not move past ``expected_version``.
        """
        check_write(record, expected_version)
        with self._lock:
            self._check_open()
            current = self._records.get(record.key)
            stored_version = None if current is None else current.version
            if stored_version != expected_version:
                return False
            self._records[record.key] = record
            return True

    def delete(self, connection_id: str, expected_version: int) -> bool:
        """Delete the record if its version is still ``expected_version``."""
        with self._lock:
            self._check_open()
            current = self._records.get(connection_id)
            if current is None or current.version != expected_version:
                return False
            del self._records[connection_id]
            return True

    def consume_state(self, nonce: str, expires_at: datetime, holder: str | None = None) -> bool:
        """Mark a state nonce used: True the first time, and again only for the same holder.

        Expired nonces are forgotten (pruned on every call).
        """
        expiry = require_aware(expires_at, "expires_at").timestamp()
        with self._lock:
            self._check_open()
            self._prune(time.time())
            stored = self._nonces.get(nonce)
            if stored is None:
                self._nonces[nonce] = (holder, expiry)
                heapq.heappush(self._expiries, (expiry, nonce))
                return True
            return holder is not None and stored[0] == holder

    def find_by_account(self, account_id: int) -> list[ConnectionRecord]:
        """Every record whose verified account is ``account_id``, by connection id."""
        with self._lock:
            self._check_open()
            found = [
                record
                for record in self._records.values()
                if record.account is not None and record.account.id == account_id
            ]
        return sorted(found, key=lambda record: record.key)

    def due_for_refresh(self, before: datetime, limit: int) -> list[ConnectionRecord]:
        """Up to ``limit`` connected records whose refresh token expires before ``before``,
        soonest first (ties by connection id)."""
        require_aware(before, "before")
        check_limit(limit)
        with self._lock:
            self._check_open()
            due = [
                (record.tokens.refresh_expires_at, record.key, record)
                for record in self._records.values()
                if record.state == ConnectionState.CONNECTED
                and record.tokens is not None
                and record.tokens.refresh_expires_at < before
            ]
        return [record for _, _, record in heapq.nsmallest(limit, due, key=lambda t: t[:2])]

    def close(self) -> None:
        """Drop every record. Any later call raises ``StoreError``; closing again does nothing."""
        with self._lock:
            self._closed = True
            self._records.clear()
            self._nonces.clear()
            self._expiries.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise closed_error()

    def _prune(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] < now:
            _, nonce = heapq.heappop(self._expiries)
            del self._nonces[nonce]
