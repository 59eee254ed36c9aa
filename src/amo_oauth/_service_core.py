"""What ``AmoOAuth`` and ``AsyncAmoOAuth`` share: the checked config, the flows they drive,
the store's type check, and how a sweep's report counts pairs stored late."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime

import attrs

from ._config import Config
from ._connection_id import ConnectionId
from ._flows import Flows
from ._results import RefreshReport
from .stores import AsyncStore, SQLiteStore, Store

__all__ = ["DEFAULT_DB", "ServiceCore", "default_store", "with_stored"]

#: Where the service keeps its connections when given no store.
DEFAULT_DB = "amo_oauth.db"

logger = logging.getLogger("amo_oauth")


def default_store() -> SQLiteStore:
    """The store of a service given none. Its file is relative to the directory the process
    started in, so where the tokens went is logged once, as an absolute path.

    Raises:
        StoreError: that directory cannot be written.
    """
    store = SQLiteStore(DEFAULT_DB)
    logger.info("no store given: connections are kept in %s", os.path.abspath(DEFAULT_DB))
    return store


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ServiceCore:
    """The construction both services share; each adds its store, http client and driver."""

    store: Store | AsyncStore

    def __init__(self, config: Config, clock: Callable[[], datetime] | None) -> None:
        if not isinstance(config, Config):
            raise TypeError(f"config must be an amo_oauth.Config, not {type(config).__name__}")
        self.config = config
        self._flows = Flows(config, clock or _utcnow)

    @staticmethod
    def _check_store(store: object, *kinds: type) -> None:
        if store is not None and not isinstance(store, kinds):
            names = " or ".join(kind.__name__ for kind in kinds)
            raise TypeError(f"store must be a {names} (e.g. SQLiteStore(path)), not {store!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(client_id={self.config.client_id!r}, store={self.store!r})"


def with_stored(report: RefreshReport, stored: tuple[ConnectionId, ...]) -> RefreshReport:
    """``report`` with the connections whose pair was stored late counted as refreshed. Matched
    by name: a widget install's ``Widget(host)`` never matches an app user named ``host``."""
    late = set(stored) & {connection_id for connection_id, _ in report.failed}
    if not late:
        return report
    return attrs.evolve(
        report,
        refreshed=report.refreshed + tuple(cid for cid, _ in report.failed if cid in late),
        failed=tuple(failure for failure in report.failed if failure[0] not in late),
    )
