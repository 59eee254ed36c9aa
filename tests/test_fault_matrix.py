"""Issue 24 §2: every fault against the exchange (a callback) and the refresh (``access_token``),
blocking and asyncio, on a SQLite file.

Each case is one row of ``CELLS`` (fault x flow, with what the library must do), run by
``AmoOAuth`` and by ``AsyncAmoOAuth``. After the faulted call: a record that a fresh store
object loads, with a lifecycle status and no lease beyond ``lease_ttl``; no code exchanged
twice; a clear error (its type, and its reason slug where it carries one). Then the recovery the
row names (the next call, a wait the library names, or a new consent) and, after it, the pair
amoCRM issued last is the one stored. docs/reliability.md ("Faults") is this table in prose.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import attrs
import httpx
import pytest

from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    CallbackResult,
    Config,
    Connection,
    ConnectionRecord,
    ConnectionStatus,
    Outcome,
    ProviderError,
    ReauthorizationRequired,
    SQLiteStore,
    StoreError,
    TryAgainLater,
)
from amo_oauth._records import record_key
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.testing.faults import (
    AsyncFaultyStore,
    AsyncFaultyTransport,
    FaultyStore,
    FaultyTransport,
    grant_of,
)

from helpers import assert_status_fits, config_for, query_of

pytestmark = pytest.mark.proof

T = TypeVar("T")
USER = "user-1"
GRANTS = {"exchange": "authorization_code", "refresh": "refresh_token"}
#: A trickle past the deadline: at least CHUNKS * PAUSE seconds of sleeping (0.24 s) against
#: an ``http_timeout`` of 0.2 s, so the deadline is passed however fast the machine is.
CHUNKS, PAUSE, SHORT_TIMEOUT = 40, 0.006, 0.2


# -- a trickling answer: the server acted, its body arrives a few bytes at a time -------------


def _pieces(body: bytes, chunks: int) -> list[bytes]:
    size = max(1, -(-len(body) // chunks))
    return [body[i : i + size] for i in range(0, len(body), size)]


class _SlowBody(httpx.SyncByteStream):
    def __init__(self, body: bytes, chunks: int, pause: float) -> None:
        self._pieces, self._pause = _pieces(body, chunks), pause

    def __iter__(self) -> Iterator[bytes]:
        for piece in self._pieces:
            time.sleep(self._pause)
            yield piece


class _AsyncSlowBody(httpx.AsyncByteStream):
    def __init__(self, body: bytes, chunks: int, pause: float) -> None:
        self._pieces, self._pause = _pieces(body, chunks), pause

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._pieces:
            await asyncio.sleep(self._pause)
            yield piece


@attrs.define
class Trickle:
    """When armed, the next token answer of ``grant`` comes in ``chunks`` pieces, ``pause``
    seconds apart (the server has acted by then: the code is spent, the pair rotated)."""

    grant: str | None = None
    chunks: int = 1
    pause: float = 0.0

    def arm(self, grant: str, chunks: int, pause: float) -> None:
        self.grant, self.chunks, self.pause = grant, chunks, pause

    def takes(self, request: httpx.Request) -> bool:
        if self.grant is None or grant_of(request) != self.grant:
            return False
        self.grant = None
        return True


class _TrickleTransport(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport, trickle: Trickle) -> None:
        self.inner, self.trickle = inner, trickle

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        slow = self.trickle.takes(request)
        response = self.inner.handle_request(request)
        if not slow:
            return response
        body = _SlowBody(response.read(), self.trickle.chunks, self.trickle.pause)
        return httpx.Response(response.status_code, headers=response.headers, stream=body)


class _AsyncTrickleTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, trickle: Trickle) -> None:
        self.inner, self.trickle = inner, trickle

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        slow = self.trickle.takes(request)
        response = await self.inner.handle_async_request(request)
        if not slow:
            return response
        body = _AsyncSlowBody(await response.aread(), self.trickle.chunks, self.trickle.pause)
        return httpx.Response(response.status_code, headers=response.headers, stream=body)


# -- one service, blocking or asyncio, behind the same calls ------------------------------------


class Rig:
    """The service under test (``mode``: ``sync`` or ``async``) on a SQLite file, its faulty
    store and transport, and the fake; every call is made the way the mode makes it."""

    def __init__(self, mode: str, fake: FakeAmoCRM, clock: FakeClock, path: Path, **cfg: Any):
        self.mode, self.fake, self.clock, self.path = mode, fake, clock, path
        self.config: Config = config_for(fake, **cfg)
        self.trickle = Trickle()
        self._runner: asyncio.Runner | None = None
        self.store: FaultyStore | AsyncFaultyStore
        self.transport: FaultyTransport | AsyncFaultyTransport
        self.oauth: AmoOAuth | AsyncAmoOAuth
        if mode == "sync":
            self.store = FaultyStore(SQLiteStore(path, clock=clock))
            self.transport = FaultyTransport(_TrickleTransport(fake.transport(), self.trickle))
            http = httpx.Client(transport=self.transport)
            self.oauth = AmoOAuth(self.config, store=self.store, http=http, clock=clock)
        else:
            self._runner = asyncio.Runner()
            self.store = AsyncFaultyStore(SQLiteStore(path, clock=clock))
            inner = _AsyncTrickleTransport(fake.async_transport(), self.trickle)
            self.transport = AsyncFaultyTransport(inner)
            client = httpx.AsyncClient(transport=self.transport)
            self.oauth = AsyncAmoOAuth(self.config, store=self.store, http=client, clock=clock)

    def _call(self, made: Callable[[], Any]) -> Any:
        if self._runner is None:
            return made()
        coroutine: Coroutine[Any, Any, Any] = made()
        return self._runner.run(coroutine)

    def consent(self) -> tuple[dict[str, str], str | None]:
        begun = self._call(lambda: self.oauth.begin(USER))
        return query_of(self.fake.authorize(begun.state)), begun.binding

    def callback(self, given: tuple[dict[str, str], str | None]) -> CallbackResult:
        query, binding = given
        result: CallbackResult = self._call(
            lambda: self.oauth.handle_callback(query, binding=binding)
        )
        return result

    def access_token(self) -> str:
        token: str = self._call(lambda: self.oauth.access_token(USER))
        return token

    def status(self) -> Connection:
        connection: Connection = self._call(lambda: self.oauth.status(USER))
        return connection

    def heal(self) -> None:
        self.store.heal()
        self.transport.heal()

    def stored(self) -> ConnectionRecord | None:
        """The record as a fresh store object on the same file reads it (it must decode)."""
        fresh = SQLiteStore(self.path, clock=self.clock)
        try:
            return fresh.load(record_key(self.config.client_id, USER)).record
        finally:
            fresh.close()

    def close(self) -> None:
        if isinstance(self.oauth, AmoOAuth):
            self.oauth.close()
        else:
            oauth = self.oauth
            assert self._runner is not None
            self._runner.run(oauth.aclose())
            self._runner.close()


# -- the faults ---------------------------------------------------------------------------------


def _answer(status: int, body: str, kind: str) -> Callable[[], httpx.Response]:
    return lambda: httpx.Response(status, text=body, headers={"content-type": kind})


def _new_pair(args: tuple[object, ...]) -> bool:
    """A write carrying a pair amoCRM just issued: the exchange's (under its lease) or the
    refreshed one (no lease); not the refresh claim, which carries the old pair."""
    record = args[0]
    if not isinstance(record, ConnectionRecord) or record.tokens is None:
        return False
    return record.lease is None or record.lease.purpose == "exchange"


def _inject(fault: str, rig: Rig, grant: str) -> None:
    """Script ``fault`` for the next request of ``grant`` (or the store / account endpoint)."""
    transport = rig.transport
    if fault == "token_500":
        rig.fake.fail_next("500", grant=grant)
    elif fault == "token_502_html":
        html = "<html><body><h1>502 Bad Gateway</h1></body></html>"
        transport.answer(_answer(502, html, "text/html"), grant=grant)
    elif fault == "truncated_json":
        cut = '{"token_type":"Bearer","access_tok'
        transport.answer(_answer(200, cut, "application/json"), grant=grant)
    elif fault == "timeout_before":
        transport.fail(grant=grant, error=lambda: httpx.ConnectTimeout("injected"))
    elif fault == "timeout_after":  # processed (code spent, pair rotated), the answer lost
        rig.fake.fail_next("lost_answer", grant=grant)
    elif fault == "connection_reset":
        transport.fail(grant=grant, error=lambda: httpx.ReadError("connection reset by peer"))
    elif fault == "trickle_past_deadline":
        rig.trickle.arm(grant, CHUNKS, PAUSE)
    elif fault == "trickle_within_deadline":
        rig.trickle.arm(grant, 5, 0.001)
    elif fault == "account_down":
        transport.fail(path="/api/v4/account", times=None)
    elif fault == "store_down_after_token":
        rig.store.fail("compare_and_set", times=None, when=_new_pair)
    else:
        raise AssertionError(f"no such fault {fault}")


@attrs.frozen
class Cell:
    """One fault against one flow, and what the library must do.

    ``raises``: the faulted call's exception type (None: it returns). ``reason``: the reason
    slug it reports (the callback's ``connection.error``, a ``TryAgainLater``'s), or None.
    ``status``: the stored status right after. ``spent``: amoCRM acted on the request (the code
    consumed, the pair rotated). ``recovery``: a key of ``RECOVERIES``.
    """

    fault: str
    flow: str
    raises: type[BaseException] | None
    reason: str | None
    status: ConnectionStatus
    spent: bool
    recovery: str

    @property
    def id(self) -> str:
        return f"{self.fault}-{self.flow}"


C, E, X = ConnectionStatus.CONNECTED, ConnectionStatus.ERROR, ConnectionStatus.EXCHANGED
CODE_RECEIVED = ConnectionStatus.CODE_RECEIVED
INTERRUPTED = "exchange_interrupted"
CELLS = [
    Cell("token_500", "exchange", None, INTERRUPTED, E, False, "new_consent"),
    Cell("token_502_html", "exchange", None, INTERRUPTED, E, False, "new_consent"),
    Cell("truncated_json", "exchange", None, INTERRUPTED, E, False, "new_consent"),
    Cell("timeout_before", "exchange", None, INTERRUPTED, E, False, "new_consent"),
    Cell("timeout_after", "exchange", None, INTERRUPTED, E, True, "new_consent"),
    Cell("connection_reset", "exchange", None, INTERRUPTED, E, False, "new_consent"),
    Cell("trickle_past_deadline", "exchange", None, INTERRUPTED, E, True, "new_consent"),
    Cell("trickle_within_deadline", "exchange", None, None, C, True, "none"),
    Cell("account_down", "exchange", None, None, X, True, "verify_later"),
    Cell("store_down_after_token", "exchange", StoreError, None, CODE_RECEIVED, True, "land"),
    Cell("token_500", "refresh", TryAgainLater, "refresh_backoff", C, False, "after_backoff"),
    Cell("token_502_html", "refresh", TryAgainLater, "refresh_backoff", C, False, "after_backoff"),
    Cell("truncated_json", "refresh", TryAgainLater, "refresh_backoff", C, False, "after_backoff"),
    Cell("timeout_before", "refresh", ProviderError, None, C, False, "next_call"),
    Cell("timeout_after", "refresh", ProviderError, None, C, True, "revoked_by_amocrm"),
    Cell("connection_reset", "refresh", ProviderError, None, C, False, "next_call"),
    Cell("trickle_past_deadline", "refresh", ProviderError, None, C, True, "revoked_by_amocrm"),
    Cell("trickle_within_deadline", "refresh", None, None, C, True, "none"),
    Cell("account_down", "refresh", None, None, C, True, "none"),
    Cell("store_down_after_token", "refresh", StoreError, None, C, True, "land"),
]
FAULTS = sorted({cell.fault for cell in CELLS})


def test_every_fault_meets_both_flows() -> None:
    assert {(cell.fault, cell.flow) for cell in CELLS} == {
        (fault, flow) for fault in FAULTS for flow in GRANTS
    }
    assert len(FAULTS) == 10


# -- the checks after each fault ----------------------------------------------------------------


def assert_consistent(rig: Rig) -> ConnectionRecord:
    """The record decodes from a fresh store object, its status is the lifecycle's, its lease
    (if any) lapses within ``lease_ttl``, and no code went to amoCRM twice."""
    record = rig.stored()
    assert record is not None
    assert_status_fits(record)
    if record.lease is not None:
        assert record.lease.expires_at <= rig.clock() + rig.config.lease_ttl
    assert rig.fake.token_call_count("authorization_code", "code_revoked") == 0
    return record


def assert_latest_pair_stored(rig: Rig) -> None:
    """The pair amoCRM issued last is the stored one: its refresh token is live at amoCRM (a
    rotation revokes the one it spent), and its access token too unless it has expired.
    (Booleans first: an assertion's explanation must not print a token.)"""
    record = rig.stored()
    assert record is not None and record.status is ConnectionStatus.CONNECTED
    tokens = record.tokens
    assert tokens is not None and tokens.refresh_token is not None
    refresh_live = rig.fake.is_refresh_token_valid(tokens.refresh_token)
    assert refresh_live
    if tokens.expires_at > rig.clock():
        access_live = rig.fake.is_access_token_valid(tokens.access_token)
        assert access_live


def faulted_call(rig: Rig, cell: Cell, given: tuple[dict[str, str], str | None]) -> object:
    """The call the fault meets; returns its result or the exception it raised."""
    try:
        if cell.flow == "exchange":
            return rig.callback(given)
        return rig.access_token()
    except Exception as error:
        return error


def assert_clear(cell: Cell, outcome: object) -> None:
    if cell.raises is not None:
        assert type(outcome) is cell.raises, type(outcome).__name__
        if isinstance(outcome, ProviderError):
            assert outcome.transient
        if cell.reason is not None:
            assert getattr(outcome, "reason", None) == cell.reason
        return
    assert not isinstance(outcome, BaseException), type(outcome).__name__
    if isinstance(outcome, CallbackResult):
        error = outcome.connection.error
        assert (error.reason if error else None) == cell.reason
        assert outcome.connection.status is cell.status


# -- recoveries: what brings the connection back, asserted ----------------------------------------


def _replay_is_answered_without_sending(rig: Rig, given: tuple[dict[str, str], str | None]) -> None:
    before = rig.fake.token_call_count("authorization_code")
    result = rig.callback(given)
    assert result.outcome is not Outcome.CONNECTED
    assert rig.fake.token_call_count("authorization_code") == before


def _new_consent(rig: Rig, given: tuple[dict[str, str], str | None]) -> None:
    _replay_is_answered_without_sending(rig, given)
    assert rig.callback(rig.consent()).outcome is Outcome.CONNECTED
    assert _works(rig)


def _none(rig: Rig, given: tuple[dict[str, str], str | None]) -> None:
    assert _works(rig)


def _verify_later(rig: Rig, given: tuple[dict[str, str], str | None]) -> None:
    rig.heal()
    assert rig.callback(given).outcome is Outcome.IN_PROGRESS  # the pair is kept, unverified
    rig.clock.advance(timedelta(hours=1))  # past the verification's back-off
    assert rig.status().status is ConnectionStatus.CONNECTED
    assert rig.callback(given).outcome is Outcome.ALREADY_CONNECTED


def _land(rig: Rig, given: tuple[dict[str, str], str | None]) -> None:
    """The pair kept in memory is written by this process's next store operation once the
    store is back, with no clock moved: an exchange's pair lands with its lease released, so
    that same call verifies it (tests/test_store_recovery.py: no background retry, no second
    token call)."""
    rig.heal()
    if given[0]:
        assert rig.status().status is ConnectionStatus.CONNECTED
        assert rig.callback(given).outcome is Outcome.ALREADY_CONNECTED
    assert _works(rig)


def _after_backoff(rig: Rig, given: tuple[dict[str, str], str | None]) -> None:
    with pytest.raises(TryAgainLater) as held:  # no second send while the back-off runs
        rig.access_token()
    assert held.value.reason == "refresh_backoff" and held.value.retry_after is not None
    rig.clock.advance(timedelta(seconds=held.value.retry_after + 1))
    assert _works(rig)


def _next_call(rig: Rig, given: tuple[dict[str, str], str | None]) -> None:
    rig.heal()
    assert _works(rig)


def _revoked_by_amocrm(rig: Rig, given: tuple[dict[str, str], str | None]) -> None:
    """The documented exception: amoCRM rotated the pair and its answer never arrived, so the
    rotated pair is nowhere; amoCRM refuses the spent token sent again. Callers hear
    ``kept_pair_pending`` (another process may hold it) for ``kept_pair_grace``, then
    ``reauthorization_required``; a new consent connects again."""
    with pytest.raises(TryAgainLater) as pending:
        rig.access_token()
    assert pending.value.reason == "kept_pair_pending"
    assert rig.fake.token_call_count("refresh_token", "token_revoked") == 1
    rig.clock.advance(rig.config.kept_pair_grace + timedelta(seconds=1))
    with pytest.raises(ReauthorizationRequired) as needed:
        rig.access_token()
    assert needed.value.reason == "reauthorization_required"
    assert rig.fake.token_call_count("refresh_token", "token_revoked") == 1  # never a third
    assert rig.callback(rig.consent()).outcome is Outcome.CONNECTED


def _works(rig: Rig) -> bool:
    """``access_token()`` answers a token amoCRM accepts (a bool: no token in any output)."""
    return rig.fake.is_access_token_valid(rig.access_token())


RECOVERIES: dict[str, Callable[[Rig, tuple[dict[str, str], str | None]], None]] = {
    "new_consent": _new_consent,
    "none": _none,
    "verify_later": _verify_later,
    "land": _land,
    "after_backoff": _after_backoff,
    "next_call": _next_call,
    "revoked_by_amocrm": _revoked_by_amocrm,
}


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("cell", CELLS, ids=[cell.id for cell in CELLS])
def test_fault(cell: Cell, mode: str, fake: FakeAmoCRM, clock: FakeClock, tmp_path: Path) -> None:
    timeout = SHORT_TIMEOUT if cell.fault == "trickle_past_deadline" else 10.0
    rig = Rig(mode, fake, clock, tmp_path / "c.db", http_timeout=timeout)
    try:
        given = _setup(rig, cell)
        issued = rig.fake.token_call_count(GRANTS[cell.flow], "ok")
        _inject(cell.fault, rig, GRANTS[cell.flow])
        outcome = faulted_call(rig, cell, given)
        assert rig.trickle.grant is None  # an armed trickle met its request
        assert_clear(cell, outcome)
        record = assert_consistent(rig)
        assert record.status is cell.status
        # amoCRM acted exactly when the row says, and at most once.
        assert rig.fake.token_call_count(GRANTS[cell.flow], "ok") == issued + int(cell.spent)
        if cell.flow == "refresh" and not cell.spent:
            assert_latest_pair_stored(rig)  # nothing was rotated: the stored pair still works
        RECOVERIES[cell.recovery](rig, given if cell.flow == "exchange" else ({}, None))
        assert_consistent(rig)
        assert_latest_pair_stored(rig)
    finally:
        rig.close()


def _setup(rig: Rig, cell: Cell) -> tuple[dict[str, str], str | None]:
    """The exchange: a consent whose redirect the faulted call brings. The refresh: a
    connection whose access token has expired."""
    given = rig.consent()
    if cell.flow == "exchange":
        return given
    assert rig.callback(given).outcome is Outcome.CONNECTED
    rig.clock.advance(timedelta(days=1, minutes=1))
    return given
