"""Argument checks every store shares, so all of them refuse the same calls the same way."""

from __future__ import annotations

from datetime import datetime

from .._errors import StoreError
from .._records import ConnectionRecord

__all__ = ["check_limit", "check_write", "closed_error", "require_aware"]


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
    another, so every store refuses it."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return moment


def check_limit(limit: int) -> int:
    """``limit`` itself when it is >= 0 (SQL would read a negative LIMIT as "no limit")."""
    if limit < 0:
        raise ValueError("limit must be >= 0")
    return limit


def closed_error() -> StoreError:
    """The error every call on a closed store raises."""
    return StoreError("the store is closed")
