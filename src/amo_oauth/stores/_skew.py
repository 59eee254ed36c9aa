"""How far this machine's clock is from its store's: ``clock_skew`` and ``aclock_skew``.

The library judges every lease and ledger expiry by the store's clock (``Loaded.now``), so a
skew between machines changes no decision; what is checked without a store read (a signed
state, a mobile ticket) tolerates ``amo_oauth.MAX_CLOCK_SKEW``. Operators read the skew to
find a machine whose clock drifted beyond that.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from .._errors import StoreError
from ._base import utc_now
from ._common import read_clock
from ._protocol import AsyncStore, Store, StoreCheck

__all__ = ["aclock_skew", "clock_skew"]


def clock_skew(store: Store, *, clock: Callable[[], datetime] | None = None) -> timedelta:
    """The store's clock minus this machine's, read by one ``store.check()``.

    Positive: the store's clock (PostgreSQL ``now()``, Redis ``TIME``, the host's for SQLite
    and memory, each plus its injected clock or ``clock_offset``) is ahead of this machine's.
    This machine's time is taken halfway through the round trip, so the answer is good to
    about half of it.

    Args:
        store: any ``Store``.
        clock: this machine's clock (aware datetimes, UTC); the system's by default.

    Returns:
        The skew as a ``timedelta`` (seconds, microsecond resolution).

    Raises:
        StoreError: the store is unreachable (its ``check().detail`` says why).
    """
    mine = clock or utc_now
    before = read_clock(mine)
    checked = store.check()
    return _skew(checked, before, read_clock(mine))


async def aclock_skew(
    store: AsyncStore, *, clock: Callable[[], datetime] | None = None
) -> timedelta:
    """``clock_skew`` for an ``AsyncStore``, by one ``await store.acheck()``.

    Raises:
        StoreError: the store is unreachable.
    """
    mine = clock or utc_now
    before = read_clock(mine)
    checked = await store.acheck()
    return _skew(checked, before, read_clock(mine))


def _skew(checked: StoreCheck, before: datetime, after: datetime) -> timedelta:
    if checked.now is None:
        raise StoreError(f"cannot read the store's clock: {checked.detail or 'unreachable'}")
    return checked.now - (before + (after - before) / 2)
