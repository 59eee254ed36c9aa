"""``PostgresStore``'s operations, each written once as a generator of statements.

An operation yields a ``Query`` and is sent its ``Result``; ``ROLLBACK`` asks its driver to roll
the transaction back (answered with an empty result). The blocking and the awaited driver
(``_postgres_pools``) run exactly the same statements.

Every answer is checked before it is used: as many rows and columns as the statement returns,
and, for a statement on one key, that key. An answer that is not the statement's (a connection
used by two processes at once reads the other's) raises ``MismatchedAnswer``, which the driver
reports as ``StoreError`` naming the operation: never another key's record, never a write or a
ledger key taken that did not happen.
"""

from __future__ import annotations

import itertools
from collections.abc import Generator
from datetime import datetime
from typing import Any, Final, TypeAlias, TypeVar

from psycopg import sql

from .._errors import StoreError
from .._records import ConnectionRecord, ConnectionStatus
from ._common import check_after, check_limit, check_write, require_aware
from ._driven import Offset, Work, server_now
from ._postgres_sql import SCHEMA_VERSION, Tables
from ._protocol import Claim, ClaimResult, DueCursor, Loaded, StoreCheck
from ._rows import RecordCodec, Row

__all__ = ["ROLLBACK", "MismatchedAnswer", "Op", "PostgresOps", "Query", "Result"]

#: Expired ledger keys are deleted on one ``consume_state`` in this many (the first included),
#: at most ``_PRUNE_BATCH`` at a time.
_PRUNE_EVERY: Final = 64
_PRUNE_BATCH: Final = 500
#: PostgreSQL's ``bigint``.
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
#: A ``pg_notify`` payload must stay under 8000 bytes; a longer key wakes every waiter ("").
_MAX_PAYLOAD: Final = 7000

T = TypeVar("T")


class Query:
    """One statement an operation asks its driver to run."""

    __slots__ = ("params", "query")

    def __init__(self, query: sql.SQL | sql.Composed, params: tuple[Any, ...] = ()) -> None:
        self.query = query
        self.params = params


class Result:
    """What a statement did: its row count and the rows it returned (if any)."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rowcount: int, rows: list[tuple[Any, ...]]) -> None:
        self.rowcount = rowcount
        self.rows = rows


class MismatchedAnswer(Exception):
    """The server's answer does not fit the statement sent: another statement's, or another
    key's. The message names no key and no data."""


def _rows(done: Result, width: int) -> list[tuple[Any, ...]]:
    """The rows of ``done``, each of ``width`` columns."""
    if any(len(row) != width for row in done.rows):
        raise MismatchedAnswer(f"rows of another shape than the statement's {width} columns")
    return done.rows


def _one(done: Result, width: int) -> tuple[Any, ...]:
    """The one row a statement always returns (``now()`` and the like)."""
    rows = _rows(done, width)
    if len(rows) != 1:
        raise MismatchedAnswer(f"{len(rows)} rows where the statement returns one")
    return rows[0]


def _for_key(done: Result, width: int, key: str) -> tuple[Any, ...] | None:
    """The row a statement on one key returned (its first column that key), or None."""
    rows = _rows(done, width)
    if not rows:
        return None
    if len(rows) != 1 or rows[0][0] != key:
        raise MismatchedAnswer("an answer for another key")
    return rows[0]


#: Yielded by an operation to roll its transaction back (answered with an empty ``Result``).
ROLLBACK: Final = Query(sql.SQL(""))

#: The statements of one operation, ending in its value.
Op: TypeAlias = Generator[Query, Result, T]
_Work: TypeAlias = Work[Query, Result, T]


class PostgresOps:
    """Every operation of ``PostgresStore`` on one set of tables."""

    def __init__(self, tables: Tables, codec: RecordCodec, where: str, offset: Offset) -> None:
        self._tables = tables
        self._codec = codec
        self._where = where
        #: Added to the server's ``now()`` wherever the store reads its clock.
        self._offset = offset
        self._calls = itertools.count()

    def migrate(self) -> _Work[None]:
        return Work("migrate the schema", self._migrate(), atomic=True)

    def load(self, key: str) -> _Work[Loaded]:
        return Work("read a record", self._load(key))

    def compare_and_set(
        self, record: ConnectionRecord, expected_version: int | None
    ) -> _Work[bool]:
        return Work("write a record", self._write(record, expected_version), atomic=True)

    def delete(self, key: str, expected_version: int) -> _Work[bool]:
        return Work("delete a record", self._delete(key, expected_version), atomic=True)

    def consume_state(self, nonce: str, expires_at: datetime, holder: str | None) -> _Work[bool]:
        require_aware(expires_at, "expires_at")
        prune = next(self._calls) % _PRUNE_EVERY == 0
        steps = self._consume(nonce, expires_at, holder, prune)
        return Work("consume a ledger key", steps, atomic=True)

    def holder_of(self, key: str) -> _Work[str | None]:
        return Work("read the ledger", self._holder(key))

    def claim(self, claim: Claim) -> _Work[ClaimResult]:
        write = self._write(claim.record, claim.expected_version)
        require_aware(claim.code.expires_at, "code.expires_at")
        if claim.state is not None:
            require_aware(claim.state.expires_at, "state.expires_at")
        return Work("claim a code", self._claim(claim, write), atomic=True)

    def find_by_account(self, account_id: int) -> _Work[list[ConnectionRecord]]:
        return Work("find records", self._by_account(account_id))

    def due_page(
        self, before: datetime, limit: int, after: DueCursor | None
    ) -> _Work[list[ConnectionRecord]]:
        moment = require_aware(before, "before").timestamp()
        count = min(check_limit(limit), _INT64_MAX)
        cursor = check_after(after)
        status = ConnectionStatus.CONNECTED.value
        if cursor is None:
            query = Query(self._tables.due_first, (status, moment, count))
        else:
            query = Query(self._tables.due_after, (status, moment, *cursor, count))
        return Work("find records due", self._keyed_rows(query))

    def scan(self, after: str | None, limit: int) -> _Work[list[ConnectionRecord]]:
        count = min(check_limit(limit), _INT64_MAX)
        if after is None:
            query = Query(self._tables.scan_first, (count,))
        else:
            query = Query(self._tables.scan_after, (after, count))
        return Work("scan records", self._keyed_rows(query))

    def check(self) -> _Work[StoreCheck]:
        return Work("check the store", self._check())

    def vacuum_full(self) -> _Work[None]:
        return Work("rewrite the records table", _only(Query(self._tables.vacuum_full)))

    # -- the statements ------------------------------------------------------------------

    def _migrate(self) -> Op[None]:
        t = self._tables
        yield Query(t.lock, (t.lock_id,))
        yield Query(t.create_meta)
        done = yield Query(t.schema_version)
        found = _one(done, 1)[0] or 0
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"{self._where}: table {t.qualified!r} has schema version {found}; "
                f"this library knows {SCHEMA_VERSION}"
            )
        if 0 < found < SCHEMA_VERSION:
            raise StoreError(
                f"{self._where}: table {t.qualified!r} has schema version {found}, from before "
                f"a connection's status was stored under that name; this library knows "
                f"{SCHEMA_VERSION} and converts no older table: drop it or use another"
            )
        if found == 0:
            for statement in t.schema:
                yield Query(statement)
            yield Query(t.record_version, (SCHEMA_VERSION,))

    def _load(self, key: str) -> Op[Loaded]:
        done = yield Query(self._tables.load, (key,))
        now, found, version, data = _one(done, 4)
        if found is not None and found != key:
            raise MismatchedAnswer("an answer for another key")
        record = None if found is None else self._codec.decode_row(found, version, data)
        return Loaded(record, server_now(now, self._offset))

    def _check(self) -> Op[StoreCheck]:
        t = self._tables
        done = yield Query(t.check, (t.meta_name,))
        now, migrated = _one(done, 2)
        now = server_now(now, self._offset)
        if not migrated:
            detail = f"table {t.qualified!r} does not exist; run amo-oauth migrate"
            return StoreCheck("postgres", True, False, now, detail)
        done = yield Query(t.schema_version)
        found = _one(done, 1)[0] or 0
        if found != SCHEMA_VERSION:
            detail = f"schema version {found}; this library knows {SCHEMA_VERSION}"
            return StoreCheck("postgres", True, False, now, detail)
        return StoreCheck("postgres", True, True, now)

    def _write(self, record: ConnectionRecord, expected_version: int | None) -> Op[bool]:
        """Checks ``record`` now (``ValueError`` before any connection is borrowed); returns
        the statements that write it."""
        check_write(record, expected_version)
        row = self._codec.row(record)
        for number, name in ((row.version, "version"), (row.account_id, "account id")):
            if number is not None and not _fits(number):
                raise ValueError(f"{name} does not fit in PostgreSQL's 64-bit bigint")
        return self._write_row(row, expected_version)

    def _write_row(self, row: Row, expected_version: int | None) -> Op[bool]:
        t = self._tables
        columns = (row.version, row.status, row.account_id, row.refresh_due, row.data)
        if expected_version is None:
            done = yield Query(t.insert, (row.key, *columns))
        elif not _fits(expected_version):
            return False  # no stored version can be that number
        else:
            done = yield Query(t.update, (*columns, row.key, expected_version))
        if _for_key(done, 1, row.key) is None:
            return False
        yield self._notify(row.key)
        return True

    def _delete(self, key: str, expected_version: int) -> Op[bool]:
        if not _fits(expected_version):
            return False  # no stored version can be that number
        done = yield Query(self._tables.delete, (key, expected_version))
        if _for_key(done, 1, key) is None:
            return False
        yield self._notify(key)
        return True

    def _consume(
        self, nonce: str, expires_at: datetime, holder: str | None, prune: bool
    ) -> Op[bool]:
        if prune:
            yield Query(self._tables.prune, (self._offset(), _PRUNE_BATCH))
        taken = yield from self._take(nonce, holder, expires_at)
        return taken

    def _take(self, key: str, holder: str | None, expires_at: datetime) -> Op[bool]:
        """Take a ledger key for ``holder`` (None: plainly single-use), inside a transaction."""
        t = self._tables
        done = yield Query(t.take, (key, holder, expires_at, self._offset()))
        if _for_key(done, 1, key) is not None:
            return True
        # The live entry is locked by this transaction now: it is still there to be read.
        done = yield Query(t.holder, (key,))
        entry = _for_key(done, 2, key)
        if entry is None:
            raise MismatchedAnswer("no entry where the statement before found one")
        return holder is not None and entry[1] == holder

    def _holder(self, key: str) -> Op[str | None]:
        done = yield Query(self._tables.live_holder, (key, self._offset()))
        entry = _for_key(done, 2, key)
        if entry is None:
            return None
        holder: str | None = entry[1]
        return holder

    def _claim(self, claim: Claim, write: Op[bool]) -> Op[ClaimResult]:
        if claim.state is not None:
            state = claim.state
            if not (yield from self._take(state.key, state.holder, state.expires_at)):
                yield ROLLBACK
                return ClaimResult.STATE_USED
        code = claim.code
        if not (yield from self._take(code.key, code.holder, code.expires_at)):
            yield ROLLBACK
            return ClaimResult.CODE_TAKEN
        if not (yield from write):
            yield ROLLBACK
            return ClaimResult.RECORD_CHANGED
        return ClaimResult.CLAIMED

    def _by_account(self, account_id: int) -> Op[list[ConnectionRecord]]:
        if not _fits(account_id):
            return []  # no stored account can be that number
        done = yield Query(self._tables.by_account, (account_id,))
        records = [self._codec.decode(data) for (data,) in _rows(done, 1)]
        if any(record.account is None or record.account.id != account_id for record in records):
            raise MismatchedAnswer("records of another account")
        return records

    def _keyed_rows(self, query: Query) -> Op[list[ConnectionRecord]]:
        done = yield query
        rows = _rows(done, 3)
        return [self._codec.decode_row(key, version, data) for key, version, data in rows]

    def _notify(self, key: str) -> Query:
        payload = key if len(key.encode()) <= _MAX_PAYLOAD else ""
        return Query(self._tables.notify, (self._tables.channel, payload))


def _fits(number: int) -> bool:
    return _INT64_MIN <= number <= _INT64_MAX


def _only(query: Query) -> Op[None]:
    """One statement whose result means nothing."""
    yield query
