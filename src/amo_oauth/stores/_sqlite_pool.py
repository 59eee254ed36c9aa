"""``FilePool``: a ``SQLiteStore``'s connections to its file, and the file's hub.

- The file is made on first use, by ``sqlite3.connect`` under a temporary umask (mode 0600),
  put in WAL mode and brought to the schema (``_sqlite_sql.migrate``).
- SQLite's locks are POSIX record locks, which belong to the *process*: closing any descriptor
  of the file drops every lock the process holds on it. So no descriptor is ever opened on the
  file here: it is checked with ``os.stat`` and closed only through SQLite, which defers
  closing a descriptor while another connection of the process holds a lock on it.
- Connections come from a bounded pool, one borrowed per call and never shared by two threads
  at once (hence ``check_same_thread=False``); callers wait for a free one.
- Writers of this process queue on a ``threading.Lock`` before ``BEGIN IMMEDIATE``: only for
  speed (a lock wakes the next writer at once; SQLite's busy handler sleeps and polls).
- Every call compares the file's identity with the one opened, so a file deleted or replaced
  under a running store raises ``StoreError`` instead of taking writes nobody will see.
- A connection must not cross ``fork()``: before one, every pool waits for its borrowed
  connections and closes them all, and every hub's poller lets go of its own.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

from .._errors import StoreError
from ._common import closed_error
from ._hub import Hub
from ._sqlite_poll import FilePoller, Identity, file_identity, named
from ._sqlite_sql import migrate

__all__ = ["FilePool", "check_place", "hub_for"]

T = TypeVar("T")

#: The poller looks at ``PRAGMA data_version`` this often (seconds) while nothing changes, up to
#: ``MAX_POLL``; a look reads no page.
FIRST_POLL: Final = 0.005
MAX_POLL: Final = 0.05
#: Seconds a fork waits for a hub's poller thread to let go of its connection.
_FORK_WAIT: Final = 5.0
_REPLACED: Final = "the database file was deleted or replaced"
#: What an error code most often means, added to the message.
_HINTS: Final = {
    "SQLITE_CANTOPEN": " (does its directory exist, and may this process write there?)",
}

#: One hub per database file of this process, by identity: every store object on the file
#: shares it, whatever path spelling it was given.
_HUBS: dict[Identity, Hub] = {}
_HUBS_LOCK = threading.Lock()
#: ``os.umask`` is process-wide: two stores creating files at once must not restore each
#: other's mask.
_UMASK_LOCK = threading.Lock()


def check_place(path: str) -> None:
    """Refuse, when the store is made, a file that could never be opened for writing: SQLite
    itself would say so only at the first call, perhaps a user's first click. Names the file by
    its absolute path (a relative one depends on the directory the process started in).

    ``os.access`` asks the kernel what this process may do: it honours a read-only file system
    even for root, who may write anywhere else.

    Raises:
        StoreError: the directory is missing, not a directory, or not writable by this
            process (SQLite creates the file and its ``-wal`` and ``-shm`` files there); the
            path is a directory; or the file exists and is read-only.
    """
    where = os.path.abspath(path)
    problem = _place_problem(where, os.path.dirname(where))
    if problem is not None:
        raise StoreError(f"{named(where)} cannot be used: {problem}")


def _place_problem(where: str, folder: str) -> str | None:
    """What keeps the file ``where`` (absolute) in ``folder`` from being written; None if
    nothing does."""
    if not os.path.exists(folder):
        return f"its directory {folder!r} does not exist: create it, or choose another path"
    if not os.path.isdir(folder):
        return f"{folder!r} is not a directory"
    if os.path.isdir(where):
        return "that path is a directory: name a file in it, e.g. amo_oauth.db"
    if not os.access(folder, os.W_OK | os.X_OK):
        return (
            f"this process may not write in its directory {folder!r} (SQLite keeps the file "
            "and its -wal and -shm files there): make it writable, or choose another path"
        )
    if os.path.exists(where) and not os.access(where, os.R_OK | os.W_OK):
        return "the file is read-only to this process: make it writable"
    return None


def hub_for(identity: Identity, path: str) -> Hub:
    """The hub of the file ``identity`` (made, with its poller, on first use)."""
    with _HUBS_LOCK:
        hub = _HUBS.get(identity)
        if hub is None:
            poller = FilePoller(path, identity)
            hub = _HUBS[identity] = Hub(
                poller, interval=FIRST_POLL, max_interval=MAX_POLL, name=path
            )
        return hub


class FilePool:
    """The connections of one store object to its file (at most ``size`` at once).

    Args:
        path: the database file.
        timeout: seconds a call waits for a free connection, another writer, or SQLite's lock.
        size: the most connections open at once (>= 1).
    """

    def __init__(self, path: str, timeout: float, size: int) -> None:
        self.path = path
        self._timeout = timeout
        self._size = size
        self.identity: Identity | None = None
        self.closed = False
        self._idle: list[sqlite3.Connection] = []
        self.open = 0  # connections open now, idle or borrowed
        self.opened = 0  # connections ever opened
        self._new_locks()
        _POOLS.add(self)

    def _new_locks(self) -> None:
        self._lock = threading.Condition()  # guards _idle, open, opened, closed
        self._write_lock = threading.Lock()
        self._prepare_lock = threading.Lock()

    # -- calls -----------------------------------------------------------------------------

    def read(self, action: str, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """All rows of one statement, on a borrowed connection.

        Raises:
            StoreError: the file could not be read, or was deleted or replaced.
        """
        with mapped(action, self.path), self.connection() as conn:
            # fetchall() runs the statement to its end: a statement left open would keep its
            # read snapshot on the pooled connection, and the next borrower would read stale rows.
            rows = conn.execute(sql, params).fetchall()
        self.check_file()  # rows of a deleted or replaced file are nobody's rows
        return rows

    def transaction(
        self, action: str, body: Callable[[sqlite3.Connection], tuple[T, bool]]
    ) -> tuple[T, bool]:
        """Run ``body`` in one ``BEGIN IMMEDIATE`` transaction, committed when it says so.
        Returns its result and whether it committed.

        Raises:
            StoreError: the file could not be written, or was deleted or replaced.
        """
        with mapped(action, self.path), self._queued(action), self.connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self.check_file()  # holding the write lock: a replacement shows by now
                result, commit = body(conn)
                conn.execute("COMMIT" if commit else "ROLLBACK")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return result, commit

    def hub(self) -> Hub:
        """The file's hub.

        Raises:
            StoreError: the file could not be opened.
        """
        self.prepare()
        assert self.identity is not None
        return hub_for(self.identity, self.path)

    def close(self) -> None:
        """Close the idle connections now and the busy ones when their call ends; wake the
        file's waiters (this store's raise ``StoreError``). Closing again does nothing."""
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
            self.open -= len(idle)
            self._lock.notify_all()  # callers waiting for a connection now raise
        _POOLS.discard(self)
        for conn in idle:
            conn.close()  # through SQLite, which keeps a descriptor open while locks need it
        if self.identity is not None:
            hub_for(self.identity, self.path).notify_all()

    def check_open(self) -> None:
        """Raise ``StoreError`` if closed."""
        with self._lock:
            if self.closed:
                raise closed_error()

    @contextlib.contextmanager
    def _queued(self, action: str) -> Iterator[None]:
        if not self._write_lock.acquire(timeout=self._timeout):
            raise StoreError(
                f"{named(self.path)} could not {action}: timed out waiting for a writer"
            )
        try:
            yield
        finally:
            self._write_lock.release()

    # -- the file --------------------------------------------------------------------------

    def check_file(self) -> None:
        """Raise unless the path still names the file opened. ``os.stat`` opens no
        descriptor, so it cannot drop the process's locks."""
        if file_identity(self.path) != self.identity:
            raise StoreError(f"{named(self.path)}: {_REPLACED}")

    def prepare(self) -> None:
        """On first use: create the file (0600), switch it to WAL, create the schema and
        remember the file's identity. The connection used for it joins the pool."""
        if self.identity is not None:
            return
        with self._prepare_lock:
            if self.identity is not None:
                return
            self.check_open()
            with mapped("open its file", self.path):
                conn = self._connect()
                try:
                    migrate(conn, self.path)
                    identity = file_identity(self.path)
                    if identity is None:
                        raise StoreError(f"{named(self.path)}: {_REPLACED}")
                except BaseException:
                    conn.close()
                    raise
            with self._lock:
                self.open += 1
                self.opened += 1
                self._idle.append(conn)
            self.identity = identity

    def _connect(self) -> sqlite3.Connection:
        """A new connection; the file is created with mode 0600 when missing.

        ``os.path.exists`` is a stat: no descriptor. A missing file has no inode yet, so no
        connection of this process can hold a lock that creating it could drop.
        """
        if os.path.exists(self.path):
            return self._open_connection()
        with _UMASK_LOCK:
            previous = os.umask(0o077)  # SQLite creates the file, its -wal and -shm with 0600
            try:
                return self._open_connection()
            finally:
                os.umask(previous)

    def _open_connection(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit BEGIN; this module says where transactions start.
        return sqlite3.connect(
            self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )

    # -- borrowing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A connection of the pool for the block (waiting up to ``timeout`` for one).

        Raises:
            StoreError: closed, or no connection was free in time.
        """
        conn = self._borrow()
        try:
            yield conn
        finally:
            self._give_back(conn)

    def _borrow(self) -> sqlite3.Connection:
        self.prepare()
        with self._lock:
            ready = self._lock.wait_for(
                lambda: self.closed or bool(self._idle) or self.open < self._size,
                self._timeout,
            )
            if self.closed:
                raise closed_error()
            if not ready:
                raise StoreError(f"{named(self.path)}: timed out waiting for a free connection")
            if self._idle:
                return self._idle.pop()
            self.open += 1  # the slot is ours while the connection is made
            self.opened += 1
        try:
            return self._connect()
        except BaseException:
            self._release_slot()
            raise

    def _give_back(self, conn: sqlite3.Connection) -> None:
        # A connection still inside a transaction failed to roll back: never reuse it.
        with self._lock:
            if not self.closed and not conn.in_transaction:
                self._idle.append(conn)
                self._lock.notify()
                return
        conn.close()
        self._release_slot()

    def _release_slot(self) -> None:
        with self._lock:
            self.open -= 1
            self._lock.notify()

    # -- fork ------------------------------------------------------------------------------

    def before_fork(self) -> None:
        """Quiesce before ``fork()``: wait (up to ``timeout``) for borrowed connections, close
        the idle ones through SQLite, and keep the pool locked until the fork is done.

        A connection must not cross fork() (SQLite's "how to corrupt" page), and a child whose
        SQLite library remembers the parent's open connections on the file would share their
        lock and WAL-index state. With none open at the fork, the child starts clean.
        """
        self._lock.acquire()
        self._lock.wait_for(lambda: self.open == len(self._idle), self._timeout)
        idle, self._idle = self._idle, []
        self.open -= len(idle)
        for conn in idle:
            conn.close()

    def after_fork_in_parent(self) -> None:
        self._lock.release()

    def after_fork_in_child(self) -> None:
        # Connections still borrowed at the fork belong to threads the child does not have:
        # they are never given back, so never closed here (closing one would drop this
        # process's locks on the file). The locks are replaced: a vanished thread may hold one.
        self._new_locks()
        self.open = 0


#: Every open pool of this process, for the fork handlers below.
_POOLS: weakref.WeakSet[FilePool] = weakref.WeakSet()


def _before_fork() -> None:
    for hub in list(_HUBS.values()):
        hub.pause(_FORK_WAIT)  # its poller's connection must not cross fork() either
    for pool in list(_POOLS):
        pool.before_fork()


def _after_fork_in_parent() -> None:
    for pool in list(_POOLS):
        pool.after_fork_in_parent()
    for hub in list(_HUBS.values()):
        hub.resume()


def _after_fork_in_child() -> None:
    global _HUBS_LOCK, _UMASK_LOCK
    _HUBS_LOCK, _UMASK_LOCK = threading.Lock(), threading.Lock()
    _HUBS.clear()  # their waiters are threads the child does not have
    for pool in list(_POOLS):
        pool.after_fork_in_child()


if hasattr(os, "register_at_fork"):  # one registration for every pool, not one per pool
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


@contextlib.contextmanager
def mapped(action: str, path: str) -> Iterator[None]:
    """Turn sqlite3's errors into ``StoreError``, naming the file and the error code but no
    data."""
    try:
        yield
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        hint = _HINTS.get(code, "")
        raise StoreError(f"{named(path)} could not {action}: {code}{hint}") from exc
