"""The record primitives every flow is made of: load, step-and-write, update, wait.

A flow never writes a record it did not step through the table (``_state.step``), and every
write is one compare-and-set on the version it read, so a decision made on a stale read is never
written: the loser reloads and asks the table again. The flows ask the table and act on its
answer; they do not look at a record's state, lease, tokens or error themselves.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import attrs

from ._answers import Answer, describe
from ._config import Config
from ._errors import ProviderError, StoreError
from ._events import Event, LeaseExpired
from ._ops import CompareAndSet, Delete, Flow, Load, Sleep, WaitForChange, perform
from ._reasons import Reason
from ._records import ConnectionRecord, ErrorInfo, Lease, record_key
from ._state import Step, step

__all__ = ["Records"]

#: Seconds a waiter gives a lapsing lease past its end before it looks again.
_LEASE_SLACK = 0.01
#: Pauses (seconds) between the tries a sweep makes, before it returns, to store the rotated
#: pairs the store refused during it (about 15 s in all; a refresh lease lasts 60 s).
_KEPT_PAUSES = (0.5, 1.0, 2.0, 4.0, 8.0)

logger = logging.getLogger("amo_oauth")


def _expected(record: ConnectionRecord) -> int | None:
    return record.version or None


class Records:
    """Load, write and wait on records, for one integration (``config.client_id``)."""

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
        # Events the store failed to take, by record key: written before the next call.
        self._unwritten: dict[str, tuple[ConnectionRecord, Event]] = {}
        self._unwritten_lock = threading.Lock()

    # -- keys and loading ------------------------------------------------------------------

    def fresh(self, connection_id: str, *, widget: bool = False) -> ConnectionRecord:
        """The record of a connection never stored: ``disconnected``, version 0."""
        return ConnectionRecord(connection_id, integration=self.config.client_id, widget=widget)

    def load(self, connection_id: str, *, widget: bool = False) -> Flow[ConnectionRecord]:
        """The stored record (or a fresh one), with a dead worker's exchange lease expired, and
        a rotated pair this process could not store written first."""
        yield from self._write_kept(record_key(self.config.client_id, connection_id, widget=widget))
        while True:
            record = yield from self._load_key(connection_id, widget)
            result = step(record, LeaseExpired(self.now()), self.now())
            if not result.changed:
                return record
            # The worker holding the exchange is presumed dead: the code is never resent.
            expired = yield from self.commit(record, result, LeaseExpired.name)
            if expired is not None:
                return expired

    def _load_key(self, connection_id: str, widget: bool) -> Flow[ConnectionRecord]:
        key = record_key(self.config.client_id, connection_id, widget=widget)
        while True:
            record = yield from perform(Load(key))
            if record is not None:
                return record
            legacy = yield from perform(Load(connection_id))
            if legacy is not None and legacy.integration is not None:
                # A namespaced record under its bare id: the store keys rows by something other
                # than ``record.key``, and every write would conflict with it for ever.
                raise StoreError("the store keeps records under connection_id, not record.key")
            if legacy is None:
                return self.fresh(connection_id, widget=widget)
            # A record stored before keys had a namespace. A widget install was named after
            # its account host: such a record never moves into an app user's namespace.
            if (legacy.host == legacy.connection_id) != widget:
                return self.fresh(connection_id, widget=widget)
            yield from self._migrate(legacy, widget)

    def _migrate(self, legacy: ConnectionRecord, widget: bool) -> Flow[None]:
        """Move a legacy record under its namespaced key: insert there, then delete the old
        row. A racing worker's insert wins the same way, and either delete is harmless."""
        moved = attrs.evolve(
            legacy, integration=self.config.client_id, widget=widget, version=legacy.version + 1
        )
        if (yield from perform(CompareAndSet(moved, None))):
            logger.info("connection %s: moved under its namespaced key", legacy.connection_id)
        yield from perform(Delete(legacy.key, legacy.version))

    # -- pairs the store could not take ------------------------------------------------------

    def keep_unwritten(self, record: ConnectionRecord, event: Event) -> None:
        """Keep an event the store failed to take (a rotated pair) until it can be written."""
        with self._unwritten_lock:
            self._unwritten[record.key] = (record, event)

    def _write_kept(self, key: str) -> Flow[None]:
        with self._unwritten_lock:
            kept = self._unwritten.pop(key, None)
        if kept is None:
            return
        record, event = kept
        try:
            yield from self.apply(record, event)  # the table decides, as for a late answer
        except BaseException:
            with self._unwritten_lock:
                self._unwritten.setdefault(key, kept)
            raise
        logger.info("connection %s: a rotated pair kept in memory was stored", record.connection_id)

    def kept_pairs(self) -> int:
        """How many rotated pairs this process holds that the store has not taken yet."""
        with self._unwritten_lock:
            return len(self._unwritten)

    def store_kept(self) -> Flow[tuple[tuple[str, ...], tuple[str, ...]]]:
        """Try to store every rotated pair kept in memory (the table decides, as for a late
        answer). Returns the connection ids stored, and those still kept (the store failed)."""
        with self._unwritten_lock:
            keys = list(self._unwritten)
        stored: list[str] = []
        left: list[str] = []
        for key in keys:
            with self._unwritten_lock:
                kept = self._unwritten.get(key)
            if kept is None:
                continue  # another caller stored it meanwhile
            try:
                yield from self._write_kept(key)
            except StoreError:
                left.append(kept[0].connection_id)
            else:
                stored.append(kept[0].connection_id)
        return tuple(stored), tuple(left)

    def store_kept_patiently(self) -> Flow[tuple[str, ...]]:
        """Before a sweep returns (and a CLI run exits): ``store_kept``, retried for about 15 s
        while the store refuses, since amoCRM has revoked the tokens these pairs replace.
        Returns the connection ids stored."""
        stored: tuple[str, ...] = ()
        for pause in (0.0, *_KEPT_PAUSES):
            if not self.kept_pairs():
                break
            if pause:
                yield Sleep(pause)
            done, _ = yield from self.store_kept()
            stored += done
        return stored

    def store_kept_at_close(self) -> Flow[None]:
        """One last ``store_kept`` as the service closes; what the store still refuses is named
        in the log (``lost_pairs``)."""
        if not self.kept_pairs():
            return
        try:
            _, left = yield from self.store_kept()
        except Exception:  # closing goes on; the log names what is lost
            left = ()
        self.lost_pairs(left)

    def lost_pairs(self, connection_ids: tuple[str, ...]) -> None:
        """Say loudly which connections lose their only valid pair when this process ends."""
        for connection_id in connection_ids:
            logger.error(
                "connection %s: amoCRM rotated its token pair but the store did not take the"
                " new one; it is lost when this process ends (the connection will need a new"
                " consent unless the old refresh token is still within a grace period)",
                connection_id,
            )

    # -- writing -----------------------------------------------------------------------------

    def write(self, record: ConnectionRecord, event: Event) -> Flow[ConnectionRecord | None]:
        """Step ``record`` by ``event`` and write it. None when a no-op or another writer won."""
        result = step(record, event, self.now())
        if not result.changed:
            return None
        return (yield from self.commit(record, result, event.name))

    def commit(
        self, old: ConnectionRecord, result: Step, event_name: str
    ) -> Flow[ConnectionRecord | None]:
        """Compare-and-set a step's record over ``old``. None when another writer won."""
        new = result.record
        if not (yield from perform(CompareAndSet(new, _expected(old)))):
            return None
        self.log_step(old, new, event_name)
        return new

    def log_step(self, old: ConnectionRecord, new: ConnectionRecord, event_name: str) -> None:
        """One INFO line per written transition (no secret: ids, states and the event)."""
        logger.info(
            "connection %s: %s -> %s (%s)",
            old.connection_id,
            old.state.value,
            new.state.value,
            event_name,
            extra={"amo_event": event_name, "amo_connection_id": old.connection_id},
        )

    def apply(self, record: ConnectionRecord, event: Event) -> Flow[tuple[ConnectionRecord, bool]]:
        """Apply ``event`` to whatever is stored for ``record``'s connection, retrying until
        written or a no-op. Returns the record as it then is, and whether this call wrote it."""
        while True:
            current = yield from self.load(record.connection_id, widget=record.widget)
            result = step(current, event, self.now())
            if not result.changed:
                return current, False
            written = yield from self.commit(current, result, event.name)
            if written is not None:
                return written, True

    # -- waiting -----------------------------------------------------------------------------

    def wait(self, record: ConnectionRecord, until: float) -> Flow[ConnectionRecord]:
        """Wait for the record to change, at most until the monotonic ``until`` or until the
        lease of the worker we wait for lapses (then ``load`` expires it), and reload it."""
        left = until - self._monotonic()
        lease_left = record.lease_seconds_left(self.now())
        if lease_left is not None:
            left = min(left, lease_left + _LEASE_SLACK)
        if left > 0:
            yield from perform(WaitForChange(record.key, record.version, left))
        return (yield from self.load(record.connection_id, widget=record.widget))

    def deadline(self) -> float:
        """The monotonic time a wait for another worker gives up: ``settle_timeout`` away."""
        return self._monotonic() + self.config.settle_timeout

    def soon(self, seconds: float) -> float:
        """The monotonic time ``seconds`` from now."""
        return self._monotonic() + seconds

    def expired(self, until: float) -> bool:
        """True once the monotonic ``until`` has passed."""
        return self._monotonic() >= until

    # -- event parts -------------------------------------------------------------------------

    def lease(self, purpose: str) -> Lease:
        """A lease for this worker, ``lease_ttl`` long."""
        owner = f"{self._instance}:{secrets.token_hex(4)}"
        return Lease(owner, purpose, self.now() + self.config.lease_ttl)

    def warn(
        self,
        record: ConnectionRecord,
        call: str,
        answer: Answer,
        error: ProviderError,
        redact: tuple[str, ...] = (),
    ) -> None:
        """One WARNING per failed exchange, verification or refresh: the reason and amoCRM's
        hint (cleaned: no code, token or secret, even one amoCRM echoed)."""
        secrets_ = (*redact, self.config.client_secret)
        line = describe(answer, error.hint, status=error.status, redact=secrets_)
        logger.warning(
            "connection %s: %s failed: %s",
            record.connection_id,
            call,
            line,
            extra={"amo_reason": answer.reason, "amo_connection_id": record.connection_id},
        )

    def error(self, reason: Reason, error: ProviderError) -> ErrorInfo:
        """``ErrorInfo`` for a provider failure, with amoCRM's hint."""
        return ErrorInfo(reason, error.hint, self.now())

    def store_time(self, moment: datetime) -> datetime:
        """``moment`` on the real clock, for what a store forgets by real time (nonces).

        A test's clock may run far behind the wall clock; the store must not forget early.
        """
        return datetime.now(UTC) + (moment - self.now())
