"""Argument checks every store shares, so all of them refuse the same calls the same way."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from .._errors import StoreError
from .._records import ConnectionRecord
from ._protocol import Claim, DueCursor

__all__ = [
    "check_after",
    "check_claim",
    "check_limit",
    "check_write",
    "closed_error",
    "due_position",
    "read_clock",
    "require_aware",
    "wait_seconds",
]


def check_write(record: ConnectionRecord, expected_version: int | None) -> None:
    """Refuse a write that would not move ``version`` forward (invariant 5).

    Raises:
        ValueError: an insert of version < 1, or an update whose version is not above
            ``expected_version``.
    """
    if expected_version is None:
        if record.version < 1:
            raise ValueError("an inserted record must have version >= 1")
    elif record.version <= expected_version:
        raise ValueError("record.version must be greater than expected_version")


def require_aware(moment: datetime, name: str) -> datetime:
    """``moment`` itself; a naive datetime would compare as local time in one store and fail in
    another, so every store refuses it.

    Raises:
        ValueError: ``moment`` is naive.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return moment


def read_clock(clock: Callable[[], datetime]) -> datetime:
    """What a store's injected ``clock`` says, in UTC (``Loaded.now``, ``StoreCheck.now``).

    Raises:
        ValueError: the clock gave a naive datetime.
    """
    return require_aware(clock(), "the store's clock").astimezone(UTC)


def check_claim(claim: Claim) -> None:
    """Refuse a claim ``BaseStore.claim`` would refuse, before anything is taken or written.

    Raises:
        ValueError: the record's version does not move past ``claim.expected_version``, or a
            ledger entry's ``expires_at`` is naive.
    """
    check_write(claim.record, claim.expected_version)
    require_aware(claim.code.expires_at, "expires_at")
    if claim.state is not None:
        require_aware(claim.state.expires_at, "expires_at")


def check_limit(limit: int) -> int:
    """``limit`` itself when it is >= 0 (SQL would read a negative LIMIT as "no limit").

    Raises:
        ValueError: ``limit`` is negative.
    """
    if limit < 0:
        raise ValueError("limit must be >= 0")
    return limit


def check_after(after: DueCursor | None) -> tuple[float, str] | None:
    """A ``due_page`` cursor as stores compare it: (POSIX seconds of the expiry, key).

    Raises:
        ValueError: the cursor is not ``(aware datetime, str)``.
    """
    if after is None:
        return None
    moment, key = after
    if not isinstance(moment, datetime) or not isinstance(key, str):
        raise ValueError("after must be (refresh_expires_at, key) of the last record of a page")
    return require_aware(moment, "after").timestamp(), key


def due_position(record: ConnectionRecord) -> DueCursor:
    """The ``due_page`` cursor just past ``record``: its refresh-token expiry and key.

    Raises:
        ValueError: the record holds no tokens (``due_page`` returns none such).
    """
    if record.tokens is None:
        raise ValueError("a record without tokens has no place in the refresh order")
    return record.tokens.refresh_expires_at, record.key


def wait_seconds(timeout: float) -> float:
    """``timeout`` (seconds) as a wait primitives accept it: a negative or NaN one is 0, an
    infinite or huge one ``threading.TIMEOUT_MAX``."""
    if math.isnan(timeout) or timeout <= 0:
        return 0.0
    return min(float(timeout), threading.TIMEOUT_MAX)


def closed_error() -> StoreError:
    """The error every call on a closed store raises."""
    return StoreError("the store is closed")
