"""What ``AmoOAuth`` and ``AsyncAmoOAuth`` share: the checked config, the flows they drive,
the store's type check, and how a sweep's report counts pairs stored late."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Generic, TypeVar

import attrs
import httpx

from ._config import Config
from ._connection_id import ConnectionId
from ._flows import Flows
from ._metrics import metrics_for
from ._ops import Flow, HolderOf, perform
from ._pace import DEFAULT_API_RATE, ApiPace, Pacer, Slot, is_api_request
from ._provider_reads import retry_after_in
from ._records import ConnectionRecord, record_key
from ._results import RefreshReport
from ._subscribers import Subscribers
from .stores import AsyncStore, SQLiteStore, Store
from .stores._forks import reset_in_child

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

__all__ = ["DEFAULT_DB", "ServiceCore", "Turn", "default_store", "with_stored"]

#: Where the service keeps its connections when given no store.
DEFAULT_DB = "amo_oauth.db"

logger = logging.getLogger("amo_oauth")

Turn = Callable[[httpx.Request], Slot | None]
"""How a request to amoCRM takes its slot of the API's pace (None: it is not paced)."""

#: The http client a service reaches amoCRM with: ``httpx.Client`` or ``httpx.AsyncClient``.
H = TypeVar("H", httpx.Client, httpx.AsyncClient)


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


class ServiceCore(Generic[H]):
    """The construction both services share; each adds its store and driver, and names the
    class of its http client (``_http_class``)."""

    store: Store | AsyncStore
    http: H
    _http_class: type[H]

    def __init__(
        self,
        config: Config,
        clock: Callable[[], datetime] | None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        if not isinstance(config, Config):
            raise TypeError(f"config must be an amo_oauth.Config, not {type(config).__name__}")
        self.config = config
        self._flows = Flows(config, clock or _utcnow)
        # The driver measures what it performs; Records, what the table decided (one object).
        self._metrics = metrics_for(meter_provider)
        self._flows.records.metrics = self._metrics
        # One pacer for everything this service sends to an account host's API (auth()'s
        # calls, verifications, the hook's checks) and the sweep's token calls: each host's
        # schedule is shared by all of them.
        self._pace = ApiPace(
            Pacer(), config.client_id, config.api_rate or None, config.api_max_wait
        )
        # The application's lifecycle callbacks (``on()``), called by the driver's _perform.
        self._subscribers = Subscribers()

    def _take_http(self, http: H | None) -> None:
        """Reach amoCRM with ``http``, or (None) with a client of this service's own, which a
        forked child replaces (``after_fork``)."""
        self._owns_http = http is None
        self.http = http if http is not None else self._new_http()
        if self._owns_http:
            reset_in_child(self)

    def _new_http(self) -> H:
        return self._http_class(timeout=self.config.http_timeout, follow_redirects=False)

    def after_fork(self) -> None:
        """In a forked child: a client of its own. httpx keeps no fork check, so the parent's
        client would share its keep-alive connections to amoCRM with the child, and one
        process could read the other's answer. The parent's is not closed: its sockets are
        the parent's too. Registered only for a client this object made: one passed in is the
        caller's to replace (docs/stores.md, After fork())."""
        self.http = self._new_http()

    def _sweep_rate(self, per_host_rate: float | None) -> float:
        """A sweep's requests per second per host: its own, else ``Config.api_rate`` (else, with
        the pace off, amoCRM's 7)."""
        if per_host_rate is not None:
            return per_host_rate
        return self.config.api_rate or DEFAULT_API_RATE

    def _check_turn(self, request: httpx.Request) -> Slot | None:
        """How a flow's request is paced unless the caller says otherwise: one to an account
        host's API (a new connection's verification, a long-lived token's check) waits for its
        slot, however far, and is refused during a pause (the verification then defers, as
        for a transient failure); the token endpoint and the account lookup are not paced
        (docs/api-pace.md#limits).

        Raises:
            TryAgainLater: ``api_paused``.
        """
        if not is_api_request(request.url):
            return None
        return self._pace.check_turn(request.url.host)

    def _hook_turn(self, request: httpx.Request) -> Slot | None:
        """The disconnect hook's checks: an API call's slot, within ``Config.api_max_wait``.

        Raises:
            TryAgainLater: ``api_paused`` / ``api_busy``.
        """
        return self._pace.turn(request.url.host)

    def _sweep_skips(self, record: ConnectionRecord) -> bool:
        """Whether the sweep leaves ``record`` for a later run: its host's pace is paused (a
        429 to an API call). Judged before the refresh claims anything, so nothing is counted
        as sent for it and no worker sits the pause out."""
        return record.host is not None and self._pace.paused(record.host)

    def _sweep_turn(self, rate: float) -> Turn:
        """A sweep's requests: a slot at ``rate``; refused (nothing sent) while the host is
        paused, so the refresh is held back like one that never reached amoCRM."""
        return lambda request: self._pace.sweep_turn(request.url.host, rate)

    def _note(self, request: httpx.Request, response: httpx.Response, sent_at: float) -> None:
        """A 429 or 403 (read in full) to an API ``request``, sent at ``sent_at`` (the
        pacer's clock), pauses the host's schedule. The token endpoint's answers pause nothing
        (protocol notes §9: whether it shares the API's limit is unknown; a refresh it pushes
        back on is held back in its record instead)."""
        if not is_api_request(request.url):
            return
        status, seconds = response.status_code, retry_after_in(response)
        self._pace.answered(request.url.host, status, seconds, sent_at)

    def _ledger_holds(self, entry: str) -> Flow[bool]:
        """Whether the store's ledger holds ``entry`` for a record of this integration: its
        holder is a record key in this namespace (``u:<client id>:...``, ``w:<client id>:...``;
        ``record_key`` quotes the client id, so one namespace is never a prefix of another)."""
        holder = yield from perform(HolderOf(entry))
        namespace = self.config.client_id
        ours = (record_key(namespace, ""), record_key(namespace, "", widget=True))
        return holder is not None and holder.startswith(ours)

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
