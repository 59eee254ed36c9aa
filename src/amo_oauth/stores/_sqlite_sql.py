"""What ``SQLiteStore`` says to SQLite: the schema, the statements, and the steps written
inside a transaction (the compare-and-set, taking a ledger key)."""

from __future__ import annotations

import sqlite3
from typing import Final

from .._errors import StoreError
from ._protocol import LedgerEntry
from ._rows import Row
from ._sqlite_poll import named

__all__ = [
    "BY_ACCOUNT",
    "DELETE",
    "DUE",
    "DUE_AFTER",
    "HOLDER",
    "INT64_MAX",
    "LOAD",
    "PRUNE",
    "PRUNE_EVERY",
    "SCAN",
    "SCAN_AFTER",
    "SCHEMA_VERSION",
    "VERSION",
    "commit_if",
    "fits",
    "migrate",
    "put",
    "take",
]

#: ``PRAGMA user_version`` of the schema below; a new file is brought to it, a file of any other
#: schema is refused. 3 keeps a connection's lifecycle value as its ``status`` (the column and
#: the record body, format 2), which files of 1 and 2, made before any release, call ``state``:
#: they are not converted.
SCHEMA_VERSION: Final = 3

# ``connection_id`` holds ``ConnectionRecord.key`` (the same text as before for legacy records).
SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS amo_connections (
        connection_id TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        status TEXT NOT NULL,
        account_id INTEGER,
        refresh_expires_at REAL,
        data TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS amo_connections_account ON amo_connections (account_id)",
    """CREATE INDEX IF NOT EXISTS amo_connections_refresh
        ON amo_connections (status, refresh_expires_at)""",
    # The keyset order of due_page: (expiry, key) after a cursor, with no sort.
    """CREATE INDEX IF NOT EXISTS amo_connections_due
        ON amo_connections (status, refresh_expires_at, connection_id)""",
    """CREATE TABLE IF NOT EXISTS amo_states (
        nonce TEXT PRIMARY KEY,
        holder TEXT,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS amo_states_expires ON amo_states (expires_at)",
)

INSERT: Final = """INSERT INTO amo_connections
    (version, status, account_id, refresh_expires_at, data, connection_id)
    VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (connection_id) DO NOTHING"""
UPDATE: Final = """UPDATE amo_connections
    SET version = ?, status = ?, account_id = ?, refresh_expires_at = ?, data = ?
    WHERE connection_id = ? AND version = ?"""
LOAD: Final = "SELECT connection_id, version, data FROM amo_connections WHERE connection_id = ?"
VERSION: Final = "SELECT version FROM amo_connections WHERE connection_id = ?"
BY_ACCOUNT: Final = """SELECT connection_id, version, data FROM amo_connections
    WHERE account_id = ? ORDER BY connection_id"""
DUE: Final = """SELECT connection_id, version, data FROM amo_connections
    WHERE status = ? AND refresh_expires_at < ?
    ORDER BY refresh_expires_at, connection_id LIMIT ?"""
DUE_AFTER: Final = """SELECT connection_id, version, data FROM amo_connections
    WHERE status = ? AND refresh_expires_at < ? AND (refresh_expires_at, connection_id) > (?, ?)
    ORDER BY refresh_expires_at, connection_id LIMIT ?"""
SCAN: Final = """SELECT connection_id, version, data FROM amo_connections
    ORDER BY connection_id LIMIT ?"""
SCAN_AFTER: Final = """SELECT connection_id, version, data FROM amo_connections
    WHERE connection_id > ? ORDER BY connection_id LIMIT ?"""
# An expired entry is free: taking it over is what forgetting it would allow anyway.
TAKE: Final = """INSERT INTO amo_states (nonce, holder, expires_at) VALUES (?, ?, ?)
    ON CONFLICT (nonce) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
    WHERE amo_states.expires_at < ?"""
HOLDER: Final = "SELECT holder FROM amo_states WHERE nonce = ? AND expires_at >= ?"
PRUNE: Final = "DELETE FROM amo_states WHERE expires_at < ?"
DELETE: Final = "DELETE FROM amo_connections WHERE connection_id = ? AND version = ?"

#: Expired nonces are deleted on one ``consume_state`` in this many (the first one included).
PRUNE_EVERY: Final = 64
#: SQLite integers are signed 64-bit; Python's are not.
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Put the file in WAL mode and make its schema (``SCHEMA_VERSION``), unless it has one; a
    file of another schema is refused."""
    # WAL is a property of the file, kept once set; readers then never block the writer.
    conn.execute("PRAGMA journal_mode = WAL").fetchall()
    conn.execute("BEGIN IMMEDIATE")
    try:
        ((found,),) = conn.execute("PRAGMA user_version").fetchall()
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"{named(path)}: the database has schema version {found}; this library knows "
                f"{SCHEMA_VERSION}"
            )
        if 0 < found < SCHEMA_VERSION:
            raise StoreError(
                f"{named(path)}: the database has schema version {found}, from before a "
                f"connection's status was stored under that name; this library knows "
                f"{SCHEMA_VERSION} and converts no older file: start a new one"
            )
        if found == 0:
            for statement in SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def put(conn: sqlite3.Connection, row: Row, expected_version: int | None) -> bool:
    """The compare-and-set itself, inside the caller's transaction."""
    columns = (row.version, row.status, row.account_id, row.refresh_due, row.data, row.key)
    if expected_version is None:
        return conn.execute(INSERT, columns).rowcount == 1
    if not fits(expected_version):
        return False  # no stored version can be that number
    return conn.execute(UPDATE, (*columns, expected_version)).rowcount == 1


def take(conn: sqlite3.Connection, entry: LedgerEntry, holder: str | None, now: float) -> bool:
    """Take a ledger key for ``holder`` (None: nobody may pass again), inside a transaction."""
    expiry = entry.expires_at.timestamp()
    if conn.execute(TAKE, (entry.key, holder, expiry, now)).rowcount:
        return True
    rows = conn.execute("SELECT holder FROM amo_states WHERE nonce = ?", (entry.key,)).fetchall()
    return holder is not None and bool(rows[0][0] == holder)


def commit_if(changed: bool) -> tuple[bool, bool]:
    """A transaction body's answer: its result, and whether to commit (only what changed)."""
    return changed, changed


def fits(number: int) -> bool:
    """True when ``number`` is one of SQLite's signed 64-bit integers."""
    return INT64_MIN <= number <= INT64_MAX
