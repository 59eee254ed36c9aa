"""``RedisStore``'s operations, each written once: the script call it makes and what its reply
means. The blocking and the awaited driver (``_redis_clients``) make exactly the same calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeAlias, TypeVar

import attrs

from .._errors import StoreError, UndecryptableRecord
from .._records import ConnectionRecord
from ._common import check_after, check_limit, check_write, require_aware
from ._driven import Offset, Work, server_now
from ._protocol import Claim, ClaimResult, DueCursor, LedgerEntry, Loaded, StoreCheck
from ._redis_lua import SCHEMA_VERSION
from ._redis_memory import Eviction, MemoryVerdict, judge
from ._rows import RecordCodec, Row

__all__ = ["Command", "Op", "RedisOps", "Script", "Step"]

#: ``ZRANGE ... LIMIT`` takes a signed 64-bit count; larger limits mean "all" anyway.
_MAX_LIMIT: Final = 2**62
#: Ledger values: a holder's entry is ``=`` + holder; an entry without a holder is ``-``.
_NO_HOLDER: Final = "-"
_HOLDER_MARK: Final = "="

T = TypeVar("T")


class Script:
    """One call of a script of ``_redis_lua.SCRIPTS``: its name, keys and arguments."""

    __slots__ = ("args", "keys", "name")

    def __init__(self, name: str, keys: list[str], args: list[str]) -> None:
        self.name = name
        self.keys = keys
        self.args = args


class Command:
    """One plain command, not a script (``INFO`` is not ours to run inside one). Its reply is
    what redis-py makes of it, or None when the server answers with an error: a command
    renamed away, disabled, or denied by an ACL, as managed services do."""

    __slots__ = ("args",)

    def __init__(self, *args: str) -> None:
        self.args = args


#: What an operation asks its driver to do.
Step: TypeAlias = Script | Command
#: An operation's calls, ending in its value.
Op: TypeAlias = Generator[Step, Any, T]
_Work: TypeAlias = Work[Step, Any, T]


class RedisOps:
    """Every operation of ``RedisStore`` under one key prefix."""

    def __init__(
        self,
        prefix: str,
        channel: str,
        codec: RecordCodec,
        where: str,
        offset: Offset,
        *,
        allow_eviction: bool = False,
    ) -> None:
        self._prefix = prefix
        self._allow_eviction = allow_eviction
        self._channel = channel
        self._codec = codec
        self._where = where
        #: Added to the server's ``TIME`` wherever the store reads its clock.
        self._offset = offset

    def migrate(self) -> _Work[int]:
        script = Script("migrate", [self._prefix + "schema"], [str(SCHEMA_VERSION)])
        return Work("migrate", _reply(script, self._checked_schema))

    def load(self, key: str) -> _Work[Loaded]:
        script = self._script("load", [self._record_key(key)])
        return Work("load a record", _reply(script, self._loaded))

    def compare_and_set(
        self, record: ConnectionRecord, expected_version: int | None
    ) -> _Work[bool]:
        row = self._row_args(record, expected_version)
        script = self._script("cas", [self._record_key(record.key)], *row)
        return Work("write a record", _reply(script, bool))

    def delete(self, key: str, expected_version: int) -> _Work[bool]:
        script = self._script("delete", [self._record_key(key)], key, str(expected_version))
        return Work("delete a record", _reply(script, bool))

    def consume_state(self, nonce: str, expires_at: datetime, holder: str | None) -> _Work[bool]:
        value, expiry = _ledger_value(holder), _expiry_ms(self._on_server(expires_at))
        args = (value, expiry, "0" if holder is None else "1", self._ahead_ms())
        script = self._script("consume", [self._ledger_key(nonce)], *args)
        return Work("consume a state", _reply(script, bool))

    def holder_of(self, key: str) -> _Work[str | None]:
        script = self._script("holder", [self._ledger_key(key)], self._ahead_ms())
        return Work("read the ledger", _reply(script, _holder))

    def claim(self, claim: Claim) -> _Work[ClaimResult]:
        row = self._row_args(claim.record, claim.expected_version)
        code = self._entry_args(claim.code)
        keys = [self._record_key(claim.record.key), self._ledger_key(claim.code.key)]
        state = ["", ""]
        if claim.state is not None:
            state = self._entry_args(claim.state)
            keys.append(self._ledger_key(claim.state.key))
        script = self._script("claim", keys, *row, *code, *state, self._ahead_ms())
        return Work("claim a code", _reply(script, ClaimResult))

    def find_by_account(self, account_id: int) -> _Work[list[ConnectionRecord]]:
        script = self._script("find", [], str(int(account_id)))
        return Work("find records by account", _reply(script, self._by_key))

    def due_page(
        self, before: datetime, limit: int, after: DueCursor | None
    ) -> _Work[list[ConnectionRecord]]:
        cutoff = "(" + repr(require_aware(before, "before").timestamp())
        count = str(min(check_limit(limit), _MAX_LIMIT))
        cursor = check_after(after)
        score, key = ("", "") if cursor is None else (repr(cursor[0]), cursor[1])
        script = self._script("due_page", [], cutoff, count, score, key)
        return Work("list records due for refresh", _reply(script, self._keyed))

    def scan(self, after: str | None, limit: int) -> _Work[list[ConnectionRecord]]:
        count = str(min(check_limit(limit), _MAX_LIMIT))
        start = "-" if after is None else "(" + after
        script = self._script("scan", [], start, count)
        return Work("scan records", _reply(script, self._keyed))

    def check(self) -> _Work[StoreCheck]:
        return Work("check the store", self._check())

    def memory(self) -> _Work[MemoryVerdict]:
        """What the server's memory policy means for the store's keys (``_redis_memory``)."""
        return Work("read the memory policy", _reply(Command("INFO", "memory"), judge))

    def rewrite_aof(self) -> _Work[bool | None]:
        return Work("rewrite the append-only file", self._rewrite_aof())

    def _rewrite_aof(self) -> Op[bool | None]:
        persistence = yield Command("INFO", "persistence")
        if persistence is None or "aof_enabled" not in persistence:
            return None
        if not persistence["aof_enabled"]:
            return False
        started = yield Command("BGREWRITEAOF")
        return None if started is None else True

    def _check(self) -> Op[StoreCheck]:
        checked = self._checked((yield Script("check", [self._prefix + "schema"], [])))
        verdict = judge((yield Command("INFO", "memory")))
        sentence = verdict.sentence(self._where)
        if verdict.eviction is Eviction.NEVER:
            return checked
        detail = "; ".join(part for part in (checked.detail, sentence) if part)
        safe = not verdict.refused(self._allow_eviction)
        return attrs.evolve(
            checked,
            detail=detail,
            safe=safe,
            memory_detail=sentence,
            schema_detail=checked.detail,
        )

    # -- the calls -----------------------------------------------------------------------

    def _script(self, name: str, keys: list[str], *args: str) -> Script:
        """A call of ``name`` with the keys and arguments every script but migrate starts with
        (see ``_redis_lua``)."""
        base_keys = [self._prefix + "schema", self._prefix + "due", *keys]
        base_args = [str(SCHEMA_VERSION), self._prefix, self._channel, *args]
        return Script(name, base_keys, base_args)

    def _record_key(self, key: str) -> str:
        return f"{self._prefix}c:{key}"

    def _ledger_key(self, key: str) -> str:
        return f"{self._prefix}l:{key}"

    def _row_args(self, record: ConnectionRecord, expected_version: int | None) -> list[str]:
        check_write(record, expected_version)
        row: Row = self._codec.row(record)
        return [
            "" if expected_version is None else str(expected_version),
            row.key,
            str(row.version),
            row.status,
            "" if row.account_id is None else str(row.account_id),
            "" if row.refresh_due is None else repr(row.refresh_due),
            row.data,
        ]

    # -- the replies ---------------------------------------------------------------------

    def _now(self, seconds: str, micros: str) -> datetime:
        """The store's clock from the server's ``TIME`` reply."""
        moment = datetime.fromtimestamp(int(seconds), UTC) + timedelta(microseconds=int(micros))
        return server_now(moment, self._offset)

    def _loaded(self, reply: Sequence[str | None]) -> Loaded:
        seconds, micros, data = reply
        assert seconds is not None and micros is not None
        record = None if data is None else self._codec.decode(data)
        return Loaded(record, self._now(seconds, micros))

    def _checked(self, reply: Sequence[str]) -> StoreCheck:
        seconds, micros, found = reply
        now = self._now(seconds, micros)
        if found == str(SCHEMA_VERSION):
            return StoreCheck("redis", True, True, now)
        if not found:
            detail = f"no amo_oauth schema under prefix {self._prefix!r}: run amo-oauth migrate"
        else:
            detail = f"schema {found!r} under prefix {self._prefix!r}, not {SCHEMA_VERSION}"
        return StoreCheck("redis", True, False, now, detail)

    def _ahead_ms(self) -> str:
        """How far the store's clock runs ahead of the server's, in ms: a ledger entry is
        over once Redis has less than that left of it (a clock behind is applied when the
        entry is written, ``_on_server``)."""
        return str(max(0, math.floor(self._offset().total_seconds() * 1000)))

    def _on_server(self, expires_at: datetime) -> datetime:
        """A ledger expiry on the store's clock as Redis must keep it (``PXAT`` is on the
        server's clock): later by as much as the store's clock runs behind the server's, so
        an entry is forgotten by the store's clock, never a caller's. (A clock ahead is
        applied when the entry is read, ``_ahead_ms``, so a test may move it on meanwhile.)"""
        behind = min(self._offset(), timedelta(0))
        return require_aware(expires_at, "expires_at") - behind

    def _entry_args(self, entry: LedgerEntry) -> list[str]:
        return [_ledger_value(entry.holder), _expiry_ms(self._on_server(entry.expires_at))]

    def _keyed(self, reply: Sequence[str]) -> list[ConnectionRecord]:
        """The records of a paged read's ``key, body, ...`` reply, in its order."""
        records = []
        for key, data in zip(reply[::2], reply[1::2], strict=True):
            try:
                records.append(self._codec.decode(data))
            except UndecryptableRecord as error:
                raise UndecryptableRecord(str(error), key) from None
        return records

    def _by_key(self, reply: Sequence[str]) -> list[ConnectionRecord]:
        """``_keyed``'s records, by key (a set's members come in no order)."""
        return sorted(self._keyed(reply), key=lambda record: record.key)

    def _checked_schema(self, found: str) -> int:
        try:
            version = int(found)
        except ValueError:
            version = -1
        if version != SCHEMA_VERSION:
            older = 0 < version < SCHEMA_VERSION
            raise StoreError(
                f"Redis store at {self._where} has schema {found!r} under prefix"
                f" {self._prefix!r}; this library knows {SCHEMA_VERSION}"
                + (" and converts no older schema: use a new prefix" if older else "")
            )
        return version


def _reply(step: Step, meaning: Callable[[Any], T]) -> Op[T]:
    """Make ``step``'s call; its reply, read by ``meaning``, is the operation's value."""
    reply = yield step
    return meaning(reply)


def _ledger_value(holder: str | None) -> str:
    return _NO_HOLDER if holder is None else _HOLDER_MARK + holder


def _holder(value: str | None) -> str | None:
    if value is None or not value.startswith(_HOLDER_MARK):
        return None
    return value[len(_HOLDER_MARK) :]


def _expiry_ms(expires_at: datetime) -> str:
    """``expires_at`` as ``PXAT``'s POSIX milliseconds: rounded up, and at least 1 (``PXAT``
    refuses 0 and below; any moment in the past expires the key at once)."""
    moment = require_aware(expires_at, "expires_at").timestamp()
    return str(max(1, math.ceil(moment * 1000)))
