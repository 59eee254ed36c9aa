"""The record primitives every flow is made of: load, decide, write, apply, wait.

A flow never writes a record it did not step through the table (``_lifecycle.step``), and every
write is one compare-and-set on the version it read, so a decision made on a stale read is never
written: the loser reloads and asks the table again.

``Records`` is the one part that holds whole records: it hands the other flows a
``RecordView`` (no status, lease, tokens or error) and the table's answer as a ``Decision``, and
takes them back to write. So the flows act on the table's answer and cannot look at what it
decides on: mypy rejects it.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import attrs

from ._answers import Answer, describe
from ._config import Config
from ._connection_id import ConnectionId, resolve_connection_id
from ._errors import ProviderError, ReauthorizationRequired, StoreError, UnreadableRecord
from ._events import CONCLUDING, Concluding, Event, LeaseExpired, RefreshDeferred
from ._lifecycle import NoOp, Step, fixed_noop, may_change, step
from ._lifecycle_events import events_of_write, long_lived_expiring
from ._metrics import SILENT, Recorder
from ._ops import (
    ClaimOp,
    CompareAndSet,
    ConsumeState,
    Delete,
    DuePage,
    Emit,
    FindByAccount,
    Flow,
    Load,
    Sleep,
    StoreOp,
    WaitForChange,
    perform,
)
from ._reasons import Reason
from ._record_view import (
    RecordView,
    backoff_until,
    held_back_hint,
    lapsed_lease,
    record_of,
    retry_after_of,
    seconds_to_wait,
)
from ._records import (
    CLIENT_MEMORY,
    ClientCredentials,
    ConnectionRecord,
    ErrorInfo,
    Lease,
    client_key,
    record_key,
)
from .stores._forks import reset_in_child
from .stores._protocol import Claim, ClaimResult, DueCursor, LedgerEntry

__all__ = ["Decision", "Records", "legacy_record"]

#: Seconds a waiter gives a lapsing lease past its end before it looks again.
_LEASE_SLACK = 0.01
#: Pauses (seconds) between tries to store a pair amoCRM just gave while the store fails; well
#: inside a lease, so no other worker sends the spent token (or gives the code up) meanwhile.
_STORE_RETRIES = (0.05, 0.2, 0.5)
#: Pauses (seconds) between the tries a sweep makes, before it returns, to store the rotated
#: pairs the store refused during it (about 15 s in all; a refresh lease lasts 60 s).
_KEPT_PAUSES = (0.5, 1.0, 2.0, 4.0, 8.0)

logger = logging.getLogger("amo_oauth")
T = TypeVar("T")


def _expected(record: ConnectionRecord) -> int | None:
    return record.version or None


@attrs.frozen
class Decision:
    """The table's answer about a view: ``noop``, why nothing happens, or (``changed``) the
    record to write one version up, which only ``Records.commit`` and ``Records.claim`` write."""

    _step: Step

    @property
    def changed(self) -> bool:
        return self._step.changed

    @property
    def noop(self) -> NoOp | None:
        return self._step.noop

    @property
    def record(self) -> RecordView:
        """The record as it would be written (unchanged for a no-op)."""
        return RecordView(self._step.record)


def legacy_record(
    found: ConnectionRecord | None, connection_id: str, *, widget: bool
) -> ConnectionRecord | None:
    """The record a connection had before keys had a namespace, from ``found``: what the
    store holds under the bare ``connection_id``. None when that is nothing, a record of the
    other kind (a widget install was named after its account host: it never moves into an app
    user's namespace, nor the reverse), or another connection's namespaced record whose key is
    spelled like this id (``w:<client>:<host>``): an id is only an id.

    Raises:
        StoreError: a namespaced record under its bare id: the store keys rows by something
            other than ``record.key``, and every write would conflict with it for ever.
    """
    if found is None:
        return None
    if found.integration is not None:
        if found.key == connection_id:
            return None
        raise StoreError("the store keeps records under connection_id, not record.key")
    return found if (found.host == found.connection_id) == widget else None


class Records:
    """Load, write and wait on records, for one integration (``config.client_id``)."""

    def __init__(
        self,
        config: Config,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        #: A number in [0, 1) for each back-off's jitter (``deferral``); replaceable in tests.
        self.draw = draw
        self._clock = clock
        # The store's clock minus this machine's, as the last load read it (``Loaded.now``):
        # every expiry that decides who may send (leases, the ledger) is judged by the store's
        # clock, so machines whose clocks drift apart still agree on whose lease is live.
        self._skew = timedelta(0)
        # Waits are bounded in real time even when the clock is a test's frozen fake.
        self._monotonic = monotonic
        self._instance = secrets.token_hex(4)
        # Events the store failed to take, by record key: written before the next store call.
        self._unwritten: dict[str, tuple[ConnectionRecord, Event]] = {}
        self._unwritten_lock = threading.Lock()
        self._writing: set[str] = set()  # keys taken out of _unwritten by a call writing them
        # amoCRM's push-backs on a refresh that the store refused to take, by record key
        # (``keep_pushback``): decided on by every load of this process until written.
        self._pushbacks: dict[str, RefreshDeferred] = {}
        reset_in_child(self)
        # When each connection's kept pair last landed (a count of landings), for the sweep's
        # report: a pair may land by any call or the background retry.
        self._landed: dict[ConnectionId, int] = {}
        self._landings = 0
        #: Called (with no lock held) when a pair is kept: the service starts its retry.
        self.on_kept: Callable[[], None] | None = None
        #: Where decisions are counted (refresh outcomes, lapsed leases taken over, duplicates
        #: answered); the service gives its own, the default counts nothing.
        self.metrics: Recorder = SILENT

    # -- the store's clock -------------------------------------------------------------------

    def now(self) -> datetime:
        """The store's clock (aware, UTC): this machine's clock plus the skew the latest load
        measured (none before the first). What the table decides with and leases are written
        with."""
        return self._clock() + self._skew

    def _observe(self, store_now: datetime) -> datetime:
        """Learn the store's clock from a load (``Loaded.now``); returns it."""
        # One store per service, so the skew is this machine's against it: the latest load's
        # reading serves every record (one reference assignment: safe across threads).
        self._skew = store_now - self._clock()
        return store_now

    # -- keys and loading ------------------------------------------------------------------

    def fresh(self, connection_id: ConnectionId) -> RecordView:
        """The record of a connection never stored: ``disconnected``, version 0.

        Raises:
            ValueError: not a valid connection id (``resolve_connection_id``).
        """
        return RecordView(self._fresh(*self._named(connection_id)))

    def _named(self, connection_id: ConnectionId) -> tuple[str, bool]:
        return resolve_connection_id(connection_id, self.config.extra_domains)

    def _fresh(self, connection_id: str, widget: bool) -> ConnectionRecord:
        return ConnectionRecord(connection_id, integration=self.config.client_id, widget=widget)

    def load(self, connection_id: ConnectionId) -> Flow[RecordView]:
        """The stored record (or a fresh one), with a dead worker's exchange lease expired
        (after the grace a kept pair is awaited).

        Raises:
            ValueError: not a valid connection id (``resolve_connection_id``).
        """
        return RecordView((yield from self._load(*self._named(connection_id))))

    def reload(self, view: RecordView) -> Flow[RecordView]:
        """``load`` the record ``view`` was read from, as it is now."""
        return RecordView((yield from self._load(view.connection_id, view.widget)))

    def lease_expired(self) -> LeaseExpired:
        """The event a load fires on a record whose exchange lease may have lapsed, with the
        grace a pair kept in memory is awaited (``Config.kept_pair_grace``)."""
        return LeaseExpired(self.now(), self.config.kept_pair_grace)

    def _load(self, connection_id: str, widget: bool) -> Flow[ConnectionRecord]:
        while True:
            record, now = yield from self._load_key(connection_id, widget)
            # Judged by the clock the store read with the record (``Loaded.now``).
            result = self._lease_expiry(record, now)
            if not result.changed:
                pushed_back = yield from self._pushed_back(record)
                if pushed_back is not None:
                    return pushed_back
                continue  # another writer moved the record on: read it again
            # The worker holding the exchange is presumed dead: the code is never resent.
            expired = yield from self._commit(record, result, LeaseExpired.name)
            if expired is not None:
                return expired

    def _lease_expiry(self, record: ConnectionRecord, now: datetime) -> Step:
        """The table's answer to a lapsed lease on ``record``, as every load asks. In a status
        where no rule for it has a destination (``may_change``: all but ``code_received``) the
        answer is "unchanged" whatever the record holds, so no step is fired: the load of a
        connected record, every ``access_token()``'s, steps the table once, not twice. (The
        no-op's reason is not read here, so that answer names none.)"""
        if not may_change(LeaseExpired.name, record.status):
            return Step(record, changed=False)
        return step(record, LeaseExpired(now, self.config.kept_pair_grace), now)

    def version_of(self, connection_id: str) -> Flow[int]:
        """The version stored under the connection's key (0: none), by one read that writes
        nothing (no lease expiry, no key migration), learning the store's clock with it. A row
        that cannot be read answers its intact version column (or 0): a new consent is the
        way out of a corrupt row, so it must not be blocked by it."""
        try:
            loaded = yield from perform(Load(record_key(self.config.client_id, connection_id)))
        except UnreadableRecord as unreadable:
            return unreadable.version or 0
        self._observe(loaded.now)
        return loaded.version

    def _load_key(
        self, connection_id: str, widget: bool
    ) -> Flow[tuple[ConnectionRecord, datetime]]:
        """The record under its key (or a fresh one) and the store's clock read with it."""
        key = record_key(self.config.client_id, connection_id, widget=widget)
        while True:
            loaded = yield from perform(Load(key))
            now = self._observe(loaded.now)
            if loaded.record is not None:
                return loaded.record, now
            found = (yield from perform(Load(connection_id))).record
            legacy = legacy_record(found, connection_id, widget=widget)
            if legacy is None:
                return self._fresh(connection_id, widget), now
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

    # -- push-backs the store could not take --------------------------------------------------

    def keep_pushback(self, view: RecordView, deferral: RefreshDeferred) -> None:
        """Keep amoCRM's push-back on the refresh ``view``'s claim sent (``deferral``, naming
        that claim's lease) when the store refused every try to write it: the answer proved the
        refresh token unspent, and a claim left counting it would, with one more, end the
        connection ("sent twice without an answer")."""
        with self._unwritten_lock:
            self._pushbacks[view.key] = deferral

    def _pushed_back(self, record: ConnectionRecord) -> Flow[ConnectionRecord | None]:
        """``record`` as a push-back kept for it (``keep_pushback``) leaves it, when the table
        says it still concludes the record's claim: written now if the store takes it, else
        as if written (same version, so a write over it replaces the stored row), so this
        process sends no refresh inside the back-off and the send is not counted. ``record``
        itself when none applies (then it is forgotten); None when another writer moved the
        record on (read it again).
        """
        if not self._pushbacks:  # the common case, read without the lock
            return record
        with self._unwritten_lock:
            deferral = self._pushbacks.get(record.key)
        if deferral is None:
            return record
        result = step(record, deferral, self.now())
        if not result.changed:  # another claim holds the record, or it left ``connected``
            self._forget_pushback(record.key, deferral)
            return record
        try:
            written = yield from self._commit(record, result, deferral.name)
        except StoreError:
            return attrs.evolve(result.record, version=record.version)
        if written is not None:
            self._forget_pushback(record.key, deferral)
        return written

    def _forget_pushback(self, key: str, deferral: RefreshDeferred) -> None:
        with self._unwritten_lock:
            if self._pushbacks.get(key) is deferral:
                del self._pushbacks[key]

    # -- pairs the store could not take ------------------------------------------------------

    def after_fork(self) -> None:
        """In a forked child: a new lock (a thread the child does not have may have held this
        one at the fork), and no kept pairs: they are the parent's, which still holds them and
        stores them (its retry, its ``close()``); the child writing the same pairs would only
        race it, and a write in flight at the fork belongs to a thread the child lacks."""
        self._unwritten_lock = threading.Lock()
        self._unwritten = {}
        self._writing = set()

    def keep_unwritten(self, view: RecordView, event: Event) -> None:
        """Keep an event the store failed to take (a rotated pair, the pair from a code, a
        claim's result) until it can be written: every store operation of this process tries
        it first (``landing``), and the service's background retry (``on_kept``) does too.
        A claim's result never replaces a pair kept for the same record (the pair is the only
        valid one; the result's claim then lapses as it would have). Never logged: it holds
        tokens."""
        with self._unwritten_lock:
            if isinstance(event, CONCLUDING) and self._holds_pair(view.key):
                return
            self._unwritten[view.key] = (record_of(view), event)
        if self.on_kept is not None:
            self.on_kept()

    def _holds_pair(self, key: str) -> bool:
        """A pair is kept for ``key``, or being written by a call (under the lock)."""
        kept = self._unwritten.get(key)
        pair = kept is not None and not isinstance(kept[1], CONCLUDING)
        return pair or key in self._writing

    def keeping(self, view: RecordView, event: Event, attempt: Callable[[], Flow[T]]) -> Flow[T]:
        """Run ``attempt`` (a write of a pair amoCRM just gave: the only valid one), tried again
        within the lease while the store fails. If the store stays down, ``event`` (that pair's
        event, as another call or the background retry is to write it) is kept in memory
        (``keep_unwritten``) and the ``StoreError`` raised. Any other exception (a custom
        store's ``OSError``, a driver's own, an interrupt) keeps the pair too and is raised at
        once: it is a fault nobody planned for, so no retry, but the pair is still the only one.

        Raises:
            StoreError: the store failed every try; the pair is kept.
            BaseException: whatever else the write raised, unchanged; the pair is kept.
        """
        for pause in (*_STORE_RETRIES, None):
            try:
                return (yield from attempt())
            except StoreError:
                if pause is None:
                    self.keep_unwritten(view, event)
                    raise
            except BaseException:
                self.keep_unwritten(view, event)
                raise
            yield Sleep(pause)
        raise AssertionError("not reached: the last try returns or raises")

    def concluding(
        self, view: RecordView, event: Concluding, attempt: Callable[[], Flow[T]]
    ) -> Flow[T]:
        """``keeping`` for the last write of the code's claim ``view`` shows (a refused code, a
        verification's result): kept naming the claim's lease, so this process lands it at its
        next store operation once the store is back, and the next caller finds the connection
        settled instead of waiting for its own lease to lapse. It lands only while that claim
        still holds the record (the table's ``claim_replaced``).

        Raises:
            StoreError: the store failed every try; the result is kept.
        """
        kept = attrs.evolve(event, claim=record_of(view).lease)
        return (yield from self.keeping(view, kept, attempt))

    def landing(self, flow: Flow[T]) -> Flow[T]:
        """``flow``, with the pairs kept in memory tried first before each of its store
        operations, whatever connection it is about: a kept pair is the only valid one, and
        any call of this process may find the store back. A pair the store still refuses stays
        kept, and the operation goes on (it meets the store as it is)."""
        reply: Any = None
        error: Exception | None = None
        try:
            while True:
                try:
                    op = flow.throw(error) if error is not None else flow.send(reply)
                except StopIteration as stop:
                    result: T = stop.value
                    return result
                reply, error = None, None
                if isinstance(op, StoreOp) and self.kept_pairs():
                    yield from self.store_kept(stop_at_failure=True)
                try:
                    reply = yield op
                except Exception as exc:  # the driver's answer: the flow knows what it means
                    error = exc
        finally:
            flow.close()

    def _write_kept(self, key: str) -> Flow[None]:
        with self._unwritten_lock:
            kept = self._unwritten.pop(key, None)
            if kept is None:
                return
            self._writing.add(key)  # still counted as kept while this call writes it
        record, event = kept
        try:
            yield from self._apply(record, event)  # the table decides, as for a late answer
        except BaseException:
            with self._unwritten_lock:
                self._unwritten.setdefault(key, kept)
            raise
        finally:
            with self._unwritten_lock:
                self._writing.discard(key)
        if isinstance(event, CONCLUDING):  # no pair: nothing for the sweep's report
            logger.info(
                "connection %s: a claim's result kept in memory was stored",
                record.connection_id,
            )
            return
        with self._unwritten_lock:
            self._landings += 1
            self._landed[record.name] = self._landings
        logger.info("connection %s: a pair kept in memory was stored", record.connection_id)

    def landings(self) -> int:
        """A mark for ``landed_after``: how many kept pairs landed so far."""
        with self._unwritten_lock:
            return self._landings

    def landed_after(self, mark: int) -> tuple[ConnectionId, ...]:
        """The connections (app user ids, ``Widget`` values) whose kept pair landed after
        ``landings()`` returned ``mark``."""
        with self._unwritten_lock:
            return tuple(cid for cid, when in self._landed.items() if when > mark)

    def kept_pairs(self) -> int:
        """How many pairs (and claims' results, ``concluding``) this process holds that the
        store has not taken yet (those a call is writing now included)."""
        if not self._unwritten and not self._writing:
            # Every store operation asks (``landing``): the usual answer needs no lock, as
            # the locked one is just as soon out of date when another thread keeps a pair.
            return 0
        with self._unwritten_lock:
            return len(self._unwritten.keys() | self._writing)

    def store_kept(
        self, *, stop_at_failure: bool = False
    ) -> Flow[tuple[tuple[str, ...], tuple[str, ...]]]:
        """Try to store every pair kept in memory (the table decides, as for a late answer).
        Returns the connection ids stored, and those still kept (the store failed); with
        ``stop_at_failure``, the first failure ends the try (the store is down: the rest would
        fail too). A claim's result (``concluding``) is tried too but named in neither: no
        pair is lost with it. Raises nothing for a store that fails."""
        with self._unwritten_lock:
            keys = list(self._unwritten)
        stored: list[str] = []
        left: list[str] = []
        for key in keys:
            with self._unwritten_lock:
                kept = self._unwritten.get(key)
            if kept is None:
                continue  # another caller stored it meanwhile
            named = [] if isinstance(kept[1], CONCLUDING) else [kept[0].connection_id]
            try:
                yield from self._write_kept(key)
            except Exception:  # a store that fails (``StoreError`` or its own): it stays
                left.extend(named)
                if stop_at_failure:
                    break
            else:
                stored.extend(named)
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

    # -- deciding and writing ---------------------------------------------------------------

    def decide(self, view: RecordView, event: Event) -> Decision:
        """The table's answer to ``event`` on the record ``view`` shows, now."""
        return Decision(step(record_of(view), event, self.now()))

    def fixed_noop(self, view: RecordView, event_name: str) -> NoOp | None:
        """The table's no-op to ``event_name`` on the record ``view`` shows when it is the one
        answer in the record's status, whatever the event holds (``_lifecycle.fixed_noop``):
        a flow that only wants to hear it needs no event and no step."""
        return fixed_noop(event_name, record_of(view).status)

    def write(self, view: RecordView, event: Event) -> Flow[RecordView | None]:
        """Step the record by ``event`` and write it. None when a no-op or another writer won."""
        decision = self.decide(view, event)
        if not decision.changed:
            return None
        return (yield from self.commit(view, decision, event.name))

    def commit(
        self, old: RecordView, decision: Decision, event_name: str
    ) -> Flow[RecordView | None]:
        """Compare-and-set a decision's record over ``old``. None when another writer won."""
        return (yield from self._written(self._commit(record_of(old), decision._step, event_name)))

    def _commit(
        self, old: ConnectionRecord, result: Step, event_name: str
    ) -> Flow[ConnectionRecord | None]:
        new = result.record
        if not (yield from perform(CompareAndSet(new, _expected(old)))):
            return None
        self._log_step(old, new, event_name)
        self.metrics.written(event_name, lapsed_lease(old, self.now()))
        yield from self._announce(old, new)
        return new

    @staticmethod
    def _written(commit: Flow[ConnectionRecord | None]) -> Flow[RecordView | None]:
        written = yield from commit
        return None if written is None else RecordView(written)

    def claim(
        self,
        old: RecordView,
        decision: Decision,
        event_name: str,
        code: LedgerEntry,
        state: LedgerEntry | None,
    ) -> Flow[ClaimResult]:
        """Claim a code: the decision's record written over ``old`` with the code's and the
        state's ledger entries, in one store operation (``ClaimOp``)."""
        new = decision._step.record
        claim = Claim(new, _expected(record_of(old)), code, state)
        claimed = yield from perform(ClaimOp(claim))
        if claimed is ClaimResult.CLAIMED:
            self._log_step(record_of(old), new, event_name)
            yield from self._announce(record_of(old), new)
        return claimed

    def _announce(self, old: ConnectionRecord, new: ConnectionRecord) -> Flow[None]:
        """Tell the application what the write of ``new`` over ``old`` changed (``Emit``),
        once the store took it: every write of a stepped record passes here, so a write that
        lost its compare-and-set, or was never made (a no-op, a duplicate), tells nothing."""
        for event in events_of_write(old, new, self.config.client_id, self.now()):
            yield Emit(event)

    def announce_expiring(self, view: RecordView) -> Flow[None]:
        """Tell the application that ``view``'s long-lived token expires inside the sweep's
        window (the table answered ``long_lived_expiring``); nothing is written."""
        yield Emit(long_lived_expiring(record_of(view), self.config.client_id, self.now()))

    def _log_step(self, old: ConnectionRecord, new: ConnectionRecord, event_name: str) -> None:
        """One INFO line per written transition (no secret: ids, statuses and the event)."""
        logger.info(
            "connection %s: %s -> %s (%s)",
            old.connection_id,
            old.status.value,
            new.status.value,
            event_name,
            extra={"amo_event": event_name, "amo_connection_id": old.connection_id},
        )

    def apply(self, view: RecordView, event: Event) -> Flow[tuple[RecordView, bool]]:
        """Apply ``event`` to whatever is stored for the view's connection, retrying until
        written or a no-op. Returns the record as it then is, and whether this call wrote it."""
        record, wrote = yield from self._apply(record_of(view), event)
        return RecordView(record), wrote

    def _apply(self, record: ConnectionRecord, event: Event) -> Flow[tuple[ConnectionRecord, bool]]:
        while True:
            current = yield from self._load(record.connection_id, record.widget)
            result = step(current, event, self.now())
            if not result.changed:
                return current, False
            written = yield from self._commit(current, result, event.name)
            if written is not None:
                return written, True

    def replace_unreadable(
        self, connection_id: ConnectionId, version: int
    ) -> Flow[RecordView | None]:
        """Overwrite a corrupt row whose version is intact with a fresh, disconnected record.
        None when another writer got there first."""
        fresh = attrs.evolve(
            self._fresh(*self._named(connection_id)), version=version + 1, updated_at=self.now()
        )
        if not (yield from perform(CompareAndSet(fresh, version))):
            return None
        logger.warning("connection %s: an unreadable record was replaced", fresh.connection_id)
        return RecordView(fresh)

    # -- reading many --------------------------------------------------------------------------

    def find_by_account(self, account_id: int) -> Flow[list[RecordView]]:
        """Every record whose verified account is ``account_id``."""
        records = yield from perform(FindByAccount(account_id))
        return [RecordView(record) for record in records]

    def due_page(
        self, before: datetime, limit: int, after: DueCursor | None
    ) -> Flow[list[ConnectionRecord]]:
        """One page of the records whose refresh token expires before ``before``: whole
        records, for the sweep's keyset cursor (``_sweep``), each handed to a flow as a view."""
        return (yield from perform(DuePage(before, limit, after)))

    # -- waiting -----------------------------------------------------------------------------

    def wait(self, view: RecordView, until: float) -> Flow[RecordView]:
        """Wait for the record to change, at most until the monotonic ``until`` or until the
        lease of the worker we wait for lapses (then ``load`` expires it), and reload it."""
        left = until - self._monotonic()
        left = seconds_to_wait(record_of(view), self.now(), left, _LEASE_SLACK)
        if left > 0:
            yield from perform(WaitForChange(view.key, view.version, left))
        return (yield from self.reload(view))

    def retry_after(self, view: RecordView) -> float | None:
        """Seconds until what holds ``view``'s record up lapses (a live lease, a deferred
        verification, a kept pair's grace, a refresh's back-off), for
        ``TryAgainLater.retry_after``; None when nothing known holds it up."""
        return retry_after_of(record_of(view), self.now(), self.config.kept_pair_grace)

    def deferral(
        self, view: RecordView, cause: str, retry_after: float | None, *, sent: bool
    ) -> RefreshDeferred:
        """The event that holds ``view``'s refreshes back after amoCRM pushed back on one
        (``cause``: the answer's reason slug; ``retry_after``: a 429's, in seconds): until the
        back-off the record's earlier ones and the config give (``backoff_until``), jittered."""
        config = self.config
        until = backoff_until(
            record_of(view),
            self.now(),
            initial=config.refresh_backoff_initial,
            maximum=config.refresh_backoff_max,
            jitter=config.refresh_backoff_jitter * self.draw(),
            retry_after=retry_after,
        )
        return RefreshDeferred(until, cause, sent, record_of(view).lease)

    def held_back(self, view: RecordView) -> str:
        """Why ``view``'s refresh is held back, for ``TryAgainLater`` (no secret)."""
        return held_back_hint(record_of(view))

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

    def lease(self, purpose: str, now: datetime | None = None) -> Lease:
        """A lease for this worker, ``lease_ttl`` long from ``now`` (the store's clock read
        now when None)."""
        # The owner tells one claim from another (never a secret: the compare-and-set decides
        # who holds a record): 32 random bits from ``random`` (reseeded in a forked child), not
        # ``secrets``, whose system call every access_token() and callback paid.
        owner = f"{self._instance}:{random.getrandbits(32):08x}"
        return Lease(owner, purpose, (now or self.now()) + self.config.lease_ttl)

    def warn(
        self,
        record: RecordView,
        call: str,
        answer: Answer,
        error: ProviderError,
        redact: tuple[str, ...] = (),
    ) -> None:
        """One WARNING per failed exchange, verification or refresh: the reason and amoCRM's
        hint (cleaned: no code, token or secret, even one amoCRM echoed)."""
        own = record.credentials or self.config.credentials
        secrets_ = (*redact, *((own.client_secret,) if own is not None else ()))
        line = describe(answer, error.hint, status=error.status, redact=secrets_)
        logger.warning(
            "connection %s: %s failed: %s",
            record.connection_id,
            call,
            line,
            extra={"amo_reason": answer.reason, "amo_connection_id": record.connection_id},
        )

    def register_client(self, record: RecordView) -> Flow[None]:
        """Name, in the ledger, the record whose own integration (metadata mode) amoCRM just
        accepted a code or a refresh token from (``client:<client_id>``), so that a hook
        bringing that client id finds its integration on every store (``HolderOf``). Written
        after amoCRM's answer and before its tokens are: only a holder of the secret gets an
        entry. A store answers the same holder's entry again (a refresh re-enters it: what a
        crash right after the exchange left out is entered at the next refresh).

        Never raises: the code or refresh token is spent and the pair must land. A ledger that
        names another record, or a store that fails, is logged; the connection stands.
        """
        credentials = record.credentials
        if credentials is None:  # Config's integration: routed in memory, never entered
            return
        until = self.now() + CLIENT_MEMORY
        entry = ConsumeState(client_key(credentials.client_id), until, record.key)
        try:
            entered = yield from perform(entry)
        except StoreError as error:
            self.note_unregistered(record, error)
            return
        if not entered:
            self.note_unregistered(record, None)

    def note_unregistered(self, record: RecordView, error: Exception | None) -> None:
        """One WARNING when a connection's own client id could not be entered in the ledger
        after amoCRM accepted its code: another record holds it (``error`` None), or the store
        failed. The connection stands; its uninstall hook cannot be routed by client id."""
        why = "another connection holds it" if error is None else type(error).__name__
        logger.warning(
            "connection %s: its integration's client id was not entered in the ledger (%s); "
            "it stays connected, but a disconnect hook with that client id finds no integration",
            record.connection_id,
            why,
            extra={"amo_connection_id": record.connection_id},
        )

    def credentials(self, record: RecordView) -> ClientCredentials:
        """What the connection's token calls carry: its own integration's credentials (a
        site-button install in metadata mode, protocol notes §7), else ``Config``'s.

        Raises:
            ReauthorizationRequired: ``credentials_missing``: in metadata mode, a record that
                never received its integration's credentials has nothing to send.
        """
        credentials = record.credentials or self.config.credentials
        if credentials is None:
            raise ReauthorizationRequired(record.name, Reason.CREDENTIALS_MISSING)
        return credentials

    def error_info(self, reason: Reason, error: ProviderError) -> ErrorInfo:
        """``ErrorInfo`` for a provider failure, with amoCRM's hint."""
        return ErrorInfo(reason, error.hint, self.now())
