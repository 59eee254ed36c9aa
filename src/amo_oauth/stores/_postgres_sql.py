"""The SQL of ``PostgresStore``, composed once per table name: the schema and every statement.

Two tables per store: the records (``<table>``) and the ledger of single-use keys
(``<table>_ledger``); ``<table>_schema`` records the schema version ``migrate()`` made.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from psycopg import sql

__all__ = ["SCHEMA_VERSION", "Tables"]

#: The schema ``migrate()`` creates; a database of any other schema is refused. 2 keeps a
#: connection's lifecycle value as its ``status`` (the column and the record body, format 2),
#: which tables of 1, made before any release, call ``state``: they are not converted.
SCHEMA_VERSION: Final = 2

#: A table name: lower-case letters, digits and ``_``, optionally after ``schema.``. Short
#: enough that every derived name (``<table>_ledger_expires_idx``) fits in 63 bytes.
_NAME: Final = re.compile(r"(?:([a-z_][a-z0-9_]{0,62})\.)?([a-z_][a-z0-9_]{0,39})")


class Tables:
    """The store's SQL, composed once from its validated table name."""

    def __init__(self, table: str) -> None:
        match = _NAME.fullmatch(table)
        if match is None:
            raise ValueError(
                "table must be lower-case letters, digits and _ (at most 40), optionally "
                "after 'schema.'"
            )
        schema, name = match.group(1), match.group(2)
        self.qualified = table

        def ident(suffix: str) -> sql.Identifier:
            return (
                sql.Identifier(schema, name + suffix) if schema else sql.Identifier(name + suffix)
            )

        records, ledger, meta = ident(""), ident("_ledger"), ident("_schema")
        digest = hashlib.sha256(table.encode()).hexdigest()
        #: The LISTEN/NOTIFY channel: one per table, whatever its schema.
        self.channel = f"amo_oauth_{digest[:24]}"
        self.listen = sql.SQL("LISTEN {}").format(sql.Identifier(self.channel))
        self.notify = sql.SQL("SELECT pg_notify(%s, %s)")
        #: The advisory lock ``migrate`` holds, so that concurrent migrations queue.
        self.lock_id = int.from_bytes(bytes.fromhex(digest[:16]), "big", signed=True)
        self._migration(meta)
        #: The schema table's name, as ``to_regclass`` reads it.
        self.meta_name = f"{schema}.{name}_schema" if schema else f"{name}_schema"
        self.schema = _schema(name, records, ledger)
        self._records({"records": records})
        self._ledger({"ledger": ledger})

    def _migration(self, meta: sql.Identifier) -> None:
        self.lock = sql.SQL("SELECT pg_advisory_xact_lock(%s)")
        self.create_meta = sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (version INTEGER NOT NULL)"
        ).format(meta)
        self.schema_version = sql.SQL("SELECT max(version) FROM {}").format(meta)
        self.record_version = sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(meta)
        # ``check``: the clock, and whether the schema table exists, without an error if not.
        self.check = sql.SQL("SELECT now(), to_regclass(%s) IS NOT NULL")

    def _records(self, fmt: dict[str, sql.Identifier]) -> None:
        # Every statement on one key returns that key: the operation checks the answer is for
        # the key it asked about (_postgres_ops.Answer).
        # One row whether or not the record exists: the server's clock with it.
        self.load = sql.SQL(
            """SELECT now(), r.key, r.version, r.data
            FROM (VALUES (1)) AS one LEFT JOIN {records} AS r ON r.key = %s"""
        ).format(**fmt)
        self.insert = sql.SQL(
            """INSERT INTO {records} (key, version, status, account_id, refresh_due, data)
            VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING RETURNING key"""
        ).format(**fmt)
        self.update = sql.SQL(
            """UPDATE {records}
            SET version = %s, status = %s, account_id = %s, refresh_due = %s, data = %s
            WHERE key = %s AND version = %s RETURNING key"""
        ).format(**fmt)
        self.delete = sql.SQL(
            "DELETE FROM {records} WHERE key = %s AND version = %s RETURNING key"
        ).format(**fmt)
        self.by_account = sql.SQL(
            "SELECT data FROM {records} WHERE account_id = %s ORDER BY key"
        ).format(**fmt)
        # Keyset pages on the (status, refresh_due, key) index: no offset, no sort.
        self.due_after = sql.SQL(
            """SELECT key, version, data FROM {records}
            WHERE status = %s AND refresh_due < %s AND (refresh_due, key) > (%s, %s)
            ORDER BY refresh_due, key LIMIT %s"""
        ).format(**fmt)
        self.due_first = sql.SQL(
            """SELECT key, version, data FROM {records} WHERE status = %s AND refresh_due < %s
            ORDER BY refresh_due, key LIMIT %s"""
        ).format(**fmt)
        self.scan_first = sql.SQL(
            "SELECT key, version, data FROM {records} ORDER BY key LIMIT %s"
        ).format(**fmt)
        self.scan_after = sql.SQL(
            "SELECT key, version, data FROM {records} WHERE key > %s ORDER BY key LIMIT %s"
        ).format(**fmt)
        # Rewrites the table (and its TOAST) into new files: the old row versions, e.g. token
        # pairs from before encryption or a key rotation, are gone from it. Outside a
        # transaction, under an ACCESS EXCLUSIVE lock.
        self.vacuum_full = sql.SQL("VACUUM FULL {records}").format(**fmt)

    def _ledger(self, fmt: dict[str, sql.Identifier]) -> None:
        # A free key is inserted; an expired one is taken over; a live one is locked (the
        # WHERE of DO UPDATE is false) so that the SELECT of its holder that follows sees it.
        self.take = sql.SQL(
            """INSERT INTO {ledger} AS l (key, holder, expires_at) VALUES (%s, %s, %s)
            ON CONFLICT (key) DO UPDATE SET holder = excluded.holder,
                expires_at = excluded.expires_at
            WHERE l.expires_at < now() + %s
            RETURNING l.key"""
        ).format(**fmt)
        self.holder = sql.SQL("SELECT key, holder FROM {ledger} WHERE key = %s").format(**fmt)
        self.live_holder = sql.SQL(
            "SELECT key, holder FROM {ledger} WHERE key = %s AND expires_at >= now() + %s"
        ).format(**fmt)
        # SKIP LOCKED: two pruning writers never wait for (or deadlock on) each other's rows.
        self.prune = sql.SQL(
            """DELETE FROM {ledger} WHERE key IN (
                SELECT key FROM {ledger} WHERE expires_at < now() + %s
                LIMIT %s FOR UPDATE SKIP LOCKED)"""
        ).format(**fmt)


def _schema(name: str, records: sql.Identifier, ledger: sql.Identifier) -> list[sql.Composed]:
    """The statements that create the tables and their indexes (schema 2)."""
    fmt = {"records": records, "ledger": ledger}
    return [
        sql.SQL(
            """CREATE TABLE {records} (
                key TEXT COLLATE "C" PRIMARY KEY,
                version BIGINT NOT NULL,
                status TEXT NOT NULL,
                account_id BIGINT,
                refresh_due DOUBLE PRECISION,
                data TEXT NOT NULL
            )"""
        ).format(**fmt),
        sql.SQL("CREATE INDEX {idx} ON {records} (account_id, key)").format(
            idx=sql.Identifier(name + "_account_idx"), **fmt
        ),
        sql.SQL("CREATE INDEX {idx} ON {records} (status, refresh_due, key)").format(
            idx=sql.Identifier(name + "_refresh_idx"), **fmt
        ),
        sql.SQL(
            """CREATE TABLE {ledger} (
                key TEXT COLLATE "C" PRIMARY KEY,
                holder TEXT,
                expires_at TIMESTAMPTZ NOT NULL
            )"""
        ).format(**fmt),
        sql.SQL("CREATE INDEX {idx} ON {ledger} (expires_at)").format(
            idx=sql.Identifier(name + "_ledger_expires_idx"), **fmt
        ),
    ]
