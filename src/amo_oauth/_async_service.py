"""``AsyncAmoOAuth``: the flows of ``_flows.py`` driven over an awaited store and
``httpx.AsyncClient``, each call that may spend a code or a refresh token shielded."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from ._auth import ConnectionAuth
from ._callback import QueryLike
from ._config import Config
from ._connection_id import ConnectionId
from ._driving import adrive
from ._kept import AsyncKeptRetry
from ._lifecycle_events import LifecycleEvent
from ._ops import Emit, Op, Send, Sleep, StoreOp
from ._provider import asend_within
from ._reasons import Reason
from ._record_view import RecordView
from ._records import Connection, ConnectionRecord
from ._results import (
    AuthorizationRequest,
    ButtonMetadata,
    CallbackResult,
    HookResult,
    RefreshReport,
    SecretsResult,
    SiteButton,
    SweepProgress,
)
from ._service_core import ServiceCore, Turn, default_store, with_stored
from ._subscribers import DEFAULT_CALLBACK_TIMEOUT
from ._sweep import Done, SweepPlan, asweep
from .stores import AsyncStore, Store
from .stores._base import as_async_store, is_async_store
from .stores._protocol import DueCursor

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

__all__ = ["AsyncAmoOAuth"]

T = TypeVar("T")
E = TypeVar("E", bound=LifecycleEvent)


class AsyncAmoOAuth(ServiceCore[httpx.AsyncClient]):
    """``AmoOAuth`` for asyncio backends (FastAPI, Starlette): the same methods, awaited.

    An ``AsyncStore`` (Memory, SQLite, Postgres, Redis) is awaited natively; a blocking
    ``Store`` of your own runs in worker threads, so the event loop never blocks on a database.
    Calls that may send a code or a refresh token are shielded from cancellation: a cancelled
    caller gets ``CancelledError`` at once, and the call still stores what amoCRM answered.
    Its arguments are ``AmoOAuth``'s (``meter_provider`` included), with an
    ``httpx.AsyncClient``.
    """

    _http_class = httpx.AsyncClient

    def __init__(
        self,
        config: Config,
        *,
        store: Store | AsyncStore | None = None,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], datetime] | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        super().__init__(config, clock, meter_provider)
        if not is_async_store(store):
            self._check_store(store, Store, AsyncStore)
        if http is not None and not isinstance(http, httpx.AsyncClient):
            raise TypeError(
                "AsyncAmoOAuth needs an httpx.AsyncClient; use AmoOAuth for httpx.Client"
            )
        self.store = store if store is not None else default_store()
        self._astore = as_async_store(self.store)
        self._finishing: set[asyncio.Future[Any]] = set()
        records = self._flows.records
        self._kept_retry = AsyncKeptRetry(
            lambda: adrive(records.store_kept(), self._perform), records.kept_pairs
        )
        records.on_kept = self._kept_retry.start
        self._take_http(http)

    async def begin(
        self, connection_id: str, *, binding: str | None = None, browser_binding: bool = True
    ) -> AuthorizationRequest:
        """See ``AmoOAuth.begin``."""
        return await self._run(self._flows.codes.begin(connection_id, binding, browser_binding))

    async def site_button(
        self,
        connection_id: str,
        *,
        binding: str | None = None,
        browser_binding: bool = True,
        metadata: ButtonMetadata | None = None,
        title: str | None = None,
        compact: bool = False,
        class_name: str | None = None,
        color: str | None = None,
        theme: str | None = None,
        locale: str | None = None,
        error_callback: str | None = None,
    ) -> SiteButton:
        """See ``AmoOAuth.site_button``."""
        flow = self._flows.codes.site_button(
            connection_id,
            binding=binding,
            browser_binding=browser_binding,
            metadata=metadata,
            title=title,
            compact=compact,
            class_name=class_name,
            color=color,
            theme=theme,
            locale=locale,
            error_callback=error_callback,
        )
        return await self._run(flow)

    async def receive_secrets(self, form: QueryLike) -> SecretsResult:
        """See ``AmoOAuth.receive_secrets``."""
        return await self._run(self._flows.codes.receive_secrets(form))

    async def issue_ticket(self, connection_id: str) -> str:
        """See ``AmoOAuth.issue_ticket``."""
        return self._flows.codes.issue_ticket(connection_id)

    async def redeem_ticket(self, ticket: str, *, connection_id: str | None = None) -> str:
        """See ``AmoOAuth.redeem_ticket``."""
        return await self._shielded(self._flows.codes.redeem_ticket(ticket, connection_id))

    async def ledger_holds(self, entry: str) -> bool:
        """See ``AmoOAuth.ledger_holds``."""
        return await self._run(self._ledger_holds(entry))

    async def handle_callback(
        self,
        query: QueryLike,
        *,
        connection_id: str | None = None,
        binding: str | None = None,
        source: str | None = None,
    ) -> CallbackResult:
        """See ``AmoOAuth.handle_callback``."""
        return await self._shielded(
            self._flows.codes.handle_callback(query, connection_id, binding, source)
        )

    async def exchange_code(
        self,
        connection_id: str,
        code: str,
        *,
        referer: str | None = None,
        state: str | None = None,
        exchange_new: bool = True,
        binding: str | None = None,
        source: str | None = None,
    ) -> CallbackResult:
        """See ``AmoOAuth.exchange_code``."""
        flow = self._flows.codes.exchange_code(
            connection_id, code, referer, state, exchange_new, binding, source
        )
        return await self._shielded(flow)

    async def connect_with_code(
        self, connection_id: ConnectionId, code: str, host: str
    ) -> CallbackResult:
        """See ``AmoOAuth.connect_with_code``."""
        return await self._shielded(self._flows.codes.connect_with_code(connection_id, code, host))

    async def connect_long_lived(
        self, connection_id: ConnectionId, token: str, host: str
    ) -> Connection:
        """See ``AmoOAuth.connect_long_lived``."""
        flow = self._flows.tokens.connect_long_lived(connection_id, token, host)
        return await self._shielded(flow)

    async def status(self, connection_id: ConnectionId) -> Connection:
        """See ``AmoOAuth.status``."""
        return await self._shielded(self._flows.connections.status(connection_id))  # it may verify

    async def access_token(self, connection_id: ConnectionId) -> str:
        """See ``AmoOAuth.access_token``."""
        return await self._shielded(self._flows.tokens.access_token(connection_id))

    def auth(self, connection_id: ConnectionId) -> ConnectionAuth:
        """See ``AmoOAuth.auth``; for ``httpx.AsyncClient``."""
        self._flows.records.fresh(connection_id)  # a bad id fails here, not at the first request

        async def token(stale: str | None) -> tuple[str, str]:
            return await self._shielded(self._flows.tokens.api_token(connection_id, stale))

        return ConnectionAuth(async_token=token, pace=self._pace)

    async def disconnect(self, connection_id: ConnectionId) -> Connection:
        """See ``AmoOAuth.disconnect``."""
        return await self._shielded(self._flows.connections.disconnect(connection_id))

    async def handle_disconnect_hook(self, query: QueryLike) -> HookResult:
        """See ``AmoOAuth.handle_disconnect_hook``."""
        flow = self._flows.connections.handle_disconnect_hook(query)
        return await self._shielded(flow, lambda op: self._perform(op, self._hook_turn))

    def on(
        self,
        kind: type[E],
        callback: Callable[[E], object],
        *,
        timeout: float = DEFAULT_CALLBACK_TIMEOUT,
    ) -> Callable[[], None]:
        """See ``AmoOAuth.on``. ``callback`` may be an ``async def`` function: it runs as a
        task of its own on the event loop, awaited for at most ``timeout`` seconds (default
        10); past that it is cancelled, logged and left behind, and the call that wrote goes
        on (even if the callback swallows the cancellation; ``aclose()`` cancels what still
        runs). A ``CancelledError`` or ``TimeoutError`` it raises itself is logged as its
        failure and never reaches the caller. A plain function is called as it is, on the
        loop (keep it quick).

        Raises:
            TypeError: ``kind`` is not a lifecycle event class, or ``callback`` not callable.
            ValueError: ``timeout`` is not > 0 seconds.
        """
        return self._subscribers.add(kind, callback, timeout)

    async def refresh_due(
        self,
        within: timedelta = timedelta(days=7),
        limit: int | None = None,
        *,
        concurrency: int = 16,
        per_host_rate: float | None = None,
        progress: Callable[[SweepProgress], None] | None = None,
    ) -> RefreshReport:
        """See ``AmoOAuth.refresh_due``: the same sweep, with up to ``concurrency`` tasks on
        this event loop instead of threads (``progress`` is called on the loop). Each
        connection's refresh is shielded: a cancelled sweep stops taking new records, and the
        refreshes in flight still store what amoCRM answered (``aclose()`` waits for them)."""
        rate = self._sweep_rate(per_host_rate)
        now = self._flows.records.now()
        plan = SweepPlan.make(now, within, limit, concurrency, rate, self.config.client_id)

        turn = self._sweep_turn(plan.per_host_rate)

        async def paced(op: Op) -> Any:
            return await self._perform(op, turn)

        async def read(after: DueCursor | None, size: int) -> list[ConnectionRecord]:
            return await self._run(self._flows.records.due_page(plan.before, size, after))

        async def refresh(record: ConnectionRecord) -> Done:
            if self._sweep_skips(record):
                return Done(record.name, Reason.API_PAUSED)
            return await self._shielded(
                self._flows.tokens.refresh_one(RecordView(record), plan.before), paced
            )

        mark = self._flows.records.landings()
        try:
            report = await asweep(plan, read, refresh, progress)
        except BaseException:
            await self._run(self._flows.records.store_kept_patiently())
            raise
        await self._run(self._flows.records.store_kept_patiently())
        # Pairs refused during the sweep land by any call or the background retry: each counts.
        return with_stored(report, self._flows.records.landed_after(mark))

    async def aclose(self) -> None:
        """Cancel the async lifecycle callbacks still running (waiting a second at most for
        them: a shielded call waiting on one would otherwise hold the close for its whole
        ``timeout``), let shielded calls whose callers were cancelled finish, stop the
        background retry of kept pairs, store the pairs the store refused earlier if it takes
        them now (else say which are lost), cancel any callback those started, then close the
        http client if this object made it, and the store."""
        await self._subscribers.aclose()
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
        await self._kept_retry.stop()
        await self._run(self._flows.records.store_kept_at_close())
        await self._subscribers.aclose()
        if self._owns_http:
            await self.http.aclose()
        await self._astore.aclose()

    async def __aenter__(self) -> AsyncAmoOAuth:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _run(self, flow: Generator[Op, Any, T]) -> T:
        return await adrive(self._flows.records.landing(flow), self._perform)

    async def _shielded(
        self,
        flow: Generator[Op, Any, T],
        perform: Callable[[Op], Awaitable[Any]] | None = None,
    ) -> T:
        """Run a flow that may send a code or a refresh token, shielded from cancellation.

        amoCRM spends a code or rotates a refresh pair the moment it answers; a caller cancelled
        between that answer and the write that stores it (``asyncio.wait_for``, a client that
        hung up) would lose the only valid pair. The caller is cancelled at once; the flow runs
        on to its end in a task ``aclose()`` waits for.
        """
        landing = self._flows.records.landing(flow)
        task = asyncio.ensure_future(adrive(landing, perform or self._perform))
        self._finishing.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self._finishing.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a cancelled caller's failure is not "never retrieved"

    async def _perform(self, op: Op, turn: Turn | None = None) -> Any:
        """See ``AmoOAuth._perform``."""
        if isinstance(op, StoreOp):
            with self._metrics.store_call(op):
                return await op.arun(self._astore)
        if isinstance(op, Emit):
            await self._subscribers.adeliver(op.event)
            return None
        if isinstance(op, Send):
            slot = (turn or self._check_turn)(op.request)
            sending = await self._pace.pacer.await_for(slot)  # as in AmoOAuth._perform
            sent_at = self._pace.pacer.clock()
            try:
                with self._metrics.token_call(op.request) as answered:
                    response = await asend_within(self.http, op.request, self.config.http_timeout)
                    answered(response)
            finally:
                self._pace.pacer.leave(sending)
            if slot is not None:
                self._note(op.request, response, sent_at)
            return response
        assert isinstance(op, Sleep)
        await asyncio.sleep(op.seconds)
        return None
