"""How a process learns of another process's commits to an SQLite file: ``FilePoller``.

SQLite has no change notification across processes. ``PRAGMA data_version`` is the cheapest
question it answers: it changes, on a connection, when any *other* connection has committed
since that connection last asked, and asking reads no page (the WAL index in shared memory).
So the file's hub has one poller thread with one connection of its own that never writes; when
the answer moves (or on its first question, which has nothing to compare with), it reads the
stored versions of the watched keys in one statement and names the keys that moved.

An unchanged answer only vouches for the keys already compared at that ``data_version``: a
waiter may register after the hub took its list of watched keys for a poll, and another
process commit before that poll's ``PRAGMA``; the answer then moves without the key being
looked at, and never moves again for that commit. So the poller remembers which keys (and which
read versions) it compared at the current ``data_version``, and reads the stored versions of
any others on the next poll, whatever the answer.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Mapping

from .._errors import StoreError
from ._hub import Poller

__all__ = ["FilePoller", "Identity", "file_identity", "named"]

#: A file's (st_dev, st_ino): what stays the same whatever path spells it.
Identity = tuple[int, int]

#: Keys asked about per statement (SQLite allows 32,766 parameters; stay well below).
_CHUNK = 500


class FilePoller(Poller):
    """The poller of one database file: ``PRAGMA data_version``, then the watched versions.

    Args:
        path: the database file (already made by a store: the poller never creates it).
        identity: the file's identity when the store opened it; a file replaced since is
            reported by raising, which wakes every waiter to meet ``StoreError`` itself.
    """

    def __init__(self, path: str, identity: Identity) -> None:
        self._path = path
        self._identity = identity
        self._conn: sqlite3.Connection | None = None
        self._seen: int | None = None
        #: The versions read by waiters, per key, already compared with the stored ones at
        #: ``data_version`` ``_seen``: an unchanged ``data_version`` says nothing of the others.
        self._compared: dict[str, frozenset[int]] = {}

    def poll(self, watched: Mapping[str, frozenset[int]]) -> list[str]:
        """The watched keys whose stored version is not what a waiter read.

        Raises:
            StoreError: the file was deleted or replaced.
            sqlite3.Error: the file could not be read.
        """
        if file_identity(self._path) != self._identity:
            raise StoreError(f"{named(self._path)}: the database file was deleted or replaced")
        conn = self._connection()
        ((version,),) = conn.execute("PRAGMA data_version").fetchall()
        # Nothing committed since the last look: only the keys (or read versions) not compared
        # yet at this data_version, those that came after the hub's list for an earlier poll,
        # whose change may have landed before that poll's PRAGMA. Else (or on the first look):
        # every watched key.
        compared = self._compared if version == self._seen else {}
        fresh = {
            key: read for key, read in watched.items() if not read <= compared.get(key, frozenset())
        }
        stored = _versions(conn, list(fresh)) if fresh else {}
        # Remembered only once read; the keys nobody watches any more are forgotten (a key
        # watched again is simply read again).
        self._seen = version
        self._compared = {
            key: read | compared.get(key, frozenset()) for key, read in watched.items()
        }
        return [key for key, read in fresh.items() if read != {stored.get(key, 0)}]

    def idle(self) -> None:
        """Close the connection (through SQLite; see ``SQLiteStore`` on why that matters).
        The next poll opens a new one and, with nothing to compare, reads the versions."""
        conn, self._conn, self._seen, self._compared = self._conn, None, None, {}
        if conn is not None:
            conn.close()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # isolation_level=None: no transaction is ever left open, so each statement reads
            # the newest commit.
            self._conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        return self._conn


#: The versions of up to ``_CHUNK`` keys; ``{marks}`` becomes that many placeholders (only
#: placeholders are put into the text: the keys go as parameters).
_VERSIONS = "SELECT connection_id, version FROM amo_connections WHERE connection_id IN ({marks})"


def _versions(conn: sqlite3.Connection, keys: list[str]) -> dict[str, int]:
    """The stored version of each of ``keys`` that has a record."""
    found: dict[str, int] = {}
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        sql = _VERSIONS.format(marks=", ".join("?" * len(chunk)))
        found.update((key, int(version)) for key, version in conn.execute(sql, chunk))
    return found


def file_identity(path: str) -> Identity | None:
    """The file's (st_dev, st_ino), or None when it is gone; a stat, never a descriptor.

    Raises:
        StoreError: the file could not be looked at (not a missing file).
    """
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, "OSError")
        raise StoreError(f"{named(path)} could not check its file: {code}") from None
    return status.st_dev, status.st_ino


def named(path: str) -> str:
    """How an error names the store: by its file (a path is not a secret; ``repr`` shows it)."""
    return f"SQLite store {path!r}"
