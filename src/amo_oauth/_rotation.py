"""Re-encrypting every stored record with the newest key (``amo-oauth rotate-key``).

The store is opened with a ``MultiFernet`` of every key, newest first: it reads a row sealed
with any of them and seals what it writes with the newest. So re-encrypting a record is
rewriting it: load it and compare-and-set the same content one version up. Nothing about the
connection changes (status, tokens, lease, times); only the ciphertext and the version move.

- Records are visited page by page through ``Store.scan`` (by key), so memory stays one
  page plus the keys put aside, and the run can resume after any key it printed.
- A record with a live lease is never written (its holder is between its claim and its
  store, and would lose its write): it is put aside, and tried again after the pass, a few
  rounds with a pause between; still leased then, it is reported as left for a later run.
- A record that changed between the read and the write is put aside the same way.
- A row none of the keys opens is counted and named by key, never a crash; the pass goes on.
- Records without tokens hold nothing encrypted and are left as they are.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import attrs

from ._errors import UndecryptableRecord
from ._records import ConnectionRecord
from .stores._protocol import Store
from .stores._skew import clock_skew

__all__ = [
    "RotationProgress",
    "RotationReport",
    "holds_secrets",
    "readable_page",
    "rotate_keys",
]

#: Records read per page.
PAGE_SIZE = 256


@attrs.frozen
class RotationReport:
    """What a ``rotate_keys`` run did.

    Attributes:
        rewritten: records re-encrypted with the newest key.
        without_tokens: records holding nothing encrypted (no tokens, no integration
            credentials), left as they are.
        undecryptable: keys of the records none of the keys opens (wrong key?), untouched.
        left_leased: keys of the records still leased (or still changing) after every
            retry: run the command again later.
        last_key: the last record key the pass reached (None: the store was empty).
    """

    rewritten: int = 0
    without_tokens: int = 0
    undecryptable: tuple[str, ...] = ()
    left_leased: tuple[str, ...] = ()
    last_key: str | None = None

    @property
    def complete(self) -> bool:
        """True when every record now holds its tokens sealed with the newest key."""
        return not self.undecryptable and not self.left_leased


@attrs.frozen
class RotationProgress:
    """Where a pass is, after each page: ``after`` is the key to resume after."""

    after: str
    rewritten: int


class _Pass:
    def __init__(self, store: Store, now: Callable[[], datetime]) -> None:
        self.store = store
        self.now = now
        self.rewritten = 0
        self.without_tokens = 0
        self.undecryptable: list[str] = []
        self.aside: list[str] = []

    def rewrite(self, record: ConnectionRecord) -> bool:
        """Re-encrypt one record; False when it must be tried again later (leased, or
        written meanwhile)."""
        if not holds_secrets(record):
            self.without_tokens += 1
            return True
        if record.live_lease(self.now()) is not None:
            return False
        again = attrs.evolve(record, version=record.version + 1)
        if not self.store.compare_and_set(again, record.version):
            return False
        self.rewritten += 1
        return True


def readable_page(
    store: Store, after: str | None, size: int
) -> tuple[list[ConnectionRecord], str | None]:
    """The next ``store.scan`` page after ``after``, and the key of an undecryptable row that
    ended it early (None): jobs visiting every record (``rotate-key``, ``connections``) name
    such a row and go on after it.

    A page holding such a row is read again one record at a time up to that row, so the
    records before it are not skipped.

    Raises:
        StoreError: the store failed, or holds a corrupt row (``UnreadableRecord``) or an
            undecryptable one whose key it cannot name.
    """
    try:
        return store.scan(after, size), None
    except UndecryptableRecord as error:
        if error.key is None:
            raise
    records: list[ConnectionRecord] = []
    cursor = after
    while len(records) < size:
        try:
            found = store.scan(cursor, 1)
        except UndecryptableRecord as error:
            if error.key is None:
                raise
            return records, error.key
        if not found:
            break
        records.append(found[0])
        cursor = found[0].key
    return records, None


def holds_secrets(record: ConnectionRecord) -> bool:
    """Does the record hold what the store encrypts (``RecordCodec``): a token pair, or a
    site-button connection's integration credentials, its own or pending for a consent?"""
    return (
        record.tokens is not None
        or record.credentials is not None
        or bool(record.pending_credentials)
    )


def rotate_keys(
    store: Store,
    *,
    after: str | None = None,
    retries: int = 5,
    pause: float = 2.0,
    now: Callable[[], datetime] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[RotationProgress], None] | None = None,
    page_size: int | None = None,
) -> RotationReport:
    """Rewrite every record of ``store`` so that its tokens are sealed with the store's
    newest key (open the store with ``encryption=MultiFernet([newest, ..., oldest])``).

    Args:
        store: a store with ``scan`` (Memory, SQLite, Postgres, Redis).
        after: resume after this record key (a ``RotationProgress.after`` of an earlier run);
            None: from the first record. Running again from the start is safe too.
        retries: rounds of retrying the records put aside (leased or changing), >= 0.
        pause: seconds between those rounds (a lease lasts ``Config.lease_ttl``, 60 s by
            default; a refresh holds it for about one token call).
        now: this machine's aware UTC clock; default the real one. A lease is judged live by
            the store's clock: this clock plus the skew one ``store.check()`` measures at the
            start (``stores.clock_skew``), as the service judges it.
        sleep: how to pause; for tests.
        progress: called after each page with the key to resume after.
        page_size: records read per page, >= 1 (default ``PAGE_SIZE``, 256).

    Returns:
        A ``RotationReport``; ``complete`` is False when records were left leased or could
        not be decrypted.

    Raises:
        ValueError: ``retries`` < 0, ``pause`` < 0 or ``page_size`` < 1.
        NotImplementedError: the store cannot list its records (no ``scan``).
        StoreError: the store failed, or holds a corrupt record (``UnreadableRecord``).
    """
    page_size = PAGE_SIZE if page_size is None else page_size
    if retries < 0 or pause < 0 or page_size < 1:
        raise ValueError("retries and pause must be >= 0 and page_size >= 1")
    clock = now or _utcnow
    skew = clock_skew(store, clock=clock)
    run = _Pass(store, lambda: clock() + skew)
    last = after
    while True:
        records, bad = readable_page(run.store, last, page_size)
        for record in records:
            if not run.rewrite(record):
                run.aside.append(record.key)
        if records:
            last = records[-1].key
        if bad is not None:
            run.undecryptable.append(bad)
            last = bad
        elif len(records) < page_size:
            break
        if progress is not None and last is not None:
            progress(RotationProgress(last, run.rewritten))
    left = _retry(run, retries, pause, sleep)
    return RotationReport(
        rewritten=run.rewritten,
        without_tokens=run.without_tokens,
        undecryptable=tuple(run.undecryptable),
        left_leased=tuple(left),
        last_key=last,
    )


def _retry(run: _Pass, rounds: int, pause: float, sleep: Callable[[float], None]) -> list[str]:
    """Try the records put aside again, ``rounds`` times with ``pause`` seconds before each."""
    waiting = run.aside
    for _ in range(rounds):
        if not waiting:
            break
        sleep(pause)
        still: list[str] = []
        for key in waiting:
            try:
                record = run.store.load(key).record
            except UndecryptableRecord:
                run.undecryptable.append(key)
                continue
            if record is not None and not run.rewrite(record):
                still.append(key)
        waiting = still
    return waiting


def _utcnow() -> datetime:
    return datetime.now(UTC)
