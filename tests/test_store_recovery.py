"""Issue 24 §2, "recovery by the next call": a store that refuses the writes after the token
call, then comes back. The process that made the call keeps what the store refused (the pair,
or the claim's last step: the verification, its deferral, a refused code) and its next call
lands it at once: connected (or settled) with no second token call, and no wait for the
process's own exchange lease to lapse (``Records.concluding``, the table's ``claim_replaced``).

Each row runs on ``AmoOAuth`` and ``AsyncAmoOAuth`` over the memory and SQLite stores
(Postgres and Redis too under ``python3 tasks.py full``). No clock moves between the heal and
the call that must recover, except in the deferral row, by less than the lease.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import attrs
import httpx
import pytest

from _backends import KINDS, Backend
from _pg_server import postgres_url  # noqa: F401
from _redis_server import redis_url  # noqa: F401
from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    CallbackResult,
    Config,
    ConnectionRecord,
    ConnectionStatus,
    MemoryStore,
    Outcome,
    StoreError,
    _flow_records,
    _kept,
)
from amo_oauth._driving import drive
from amo_oauth._events import ExchangeSucceeded, Verified
from amo_oauth._flow_records import Records
from amo_oauth._lifecycle import NoOp, step
from amo_oauth._record_view import RecordView
from amo_oauth._records import Account, record_key
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.testing.faults import (
    AsyncFaultyStore,
    AsyncFaultyTransport,
    FaultyStore,
    FaultyTransport,
)

from helpers import PROOF_FULL, config_for, query_of

pytestmark = pytest.mark.proof

USER = "user-1"
S = ConnectionStatus
#: Memory and SQLite in CI; the server stores start servers, so only under the full profile.
STORES = KINDS if PROOF_FULL else ["memory", "sqlite"]
Given = tuple[dict[str, str], str | None]


class Rig:
    """A service (``mode``: ``sync`` or ``async``) on a faulty wrap of ``store``, the fake
    behind a faulty transport; every call made the way the mode makes it."""

    def __init__(self, mode: str, fake: FakeAmoCRM, clock: FakeClock, store: Any) -> None:
        self.fake, self.clock, self.raw = fake, clock, store
        self.config = config_for(fake)
        self._runner: asyncio.Runner | None = None
        self.store: FaultyStore | AsyncFaultyStore
        self.transport: FaultyTransport | AsyncFaultyTransport
        self.oauth: AmoOAuth | AsyncAmoOAuth
        if mode == "sync":
            self.store = FaultyStore(store)
            self.transport = FaultyTransport(fake.transport())
            http = httpx.Client(transport=self.transport)
            self.oauth = AmoOAuth(self.config, store=self.store, http=http, clock=clock)
        else:
            self._runner = asyncio.Runner()
            self.store = AsyncFaultyStore(store)
            self.transport = AsyncFaultyTransport(fake.async_transport())
            client = httpx.AsyncClient(transport=self.transport)
            self.oauth = AsyncAmoOAuth(self.config, store=self.store, http=client, clock=clock)

    def _call(self, made: Callable[[], Any]) -> Any:
        if self._runner is None:
            return made()
        coroutine: Coroutine[Any, Any, Any] = made()
        return self._runner.run(coroutine)

    def consent(self) -> Given:
        begun = self._call(lambda: self.oauth.begin(USER))
        return query_of(self.fake.authorize(begun.state)), begun.binding

    def callback(self, given: Given) -> CallbackResult:
        query, binding = given
        result: CallbackResult = self._call(
            lambda: self.oauth.handle_callback(query, binding=binding)
        )
        return result

    def works(self) -> bool:
        """``access_token()`` answers a token amoCRM accepts (a bool: no token in output)."""
        token: str = self._call(lambda: self.oauth.access_token(USER))
        return self.fake.is_access_token_valid(token)

    def status(self) -> ConnectionStatus:
        status: ConnectionStatus = self._call(lambda: self.oauth.status(USER)).status
        return status

    def stored(self) -> ConnectionRecord | None:
        return self.raw.load(record_key(self.config.client_id, USER)).record  # type: ignore[no-any-return]

    def tokens_sent(self) -> int:
        return self.fake.token_call_count("authorization_code") + self.fake.token_call_count(
            "refresh_token"
        )

    def close(self) -> None:
        if isinstance(self.oauth, AmoOAuth):
            self.oauth.close()
            return
        oauth = self.oauth
        assert self._runner is not None
        self._runner.run(oauth.aclose())
        self._runner.close()


# -- which write the store refuses ------------------------------------------------------------


def _refuses(status: ConnectionStatus, **fields: Callable[[Any], bool]) -> Callable[..., bool]:
    """A ``when`` for ``compare_and_set``: the write of a record going to ``status`` whose
    attributes pass ``fields``' checks."""

    def when(args: tuple[object, ...]) -> bool:
        record = args[0]
        if not isinstance(record, ConnectionRecord) or record.status is not status:
            return False
        return all(check(getattr(record, name)) for name, check in fields.items())

    return when


def _is_none(value: object) -> bool:
    return value is None


def _is_set(value: object) -> bool:
    return value is not None


@attrs.frozen
class Row:
    """``refused``: the write the store refuses after the token call (until healed);
    ``account_down`` / ``token_500``: the fault that makes that write the one it is;
    ``during``: the stored status while the store is down; ``recovery``: a key of
    ``RECOVERIES``."""

    id: str
    flow: str
    refused: Callable[..., bool]
    during: ConnectionStatus
    recovery: str
    account_down: bool = False
    token_500: bool = False


ROWS = [
    # the pair from the code (kept since before: the next call lands it, lease released)
    Row(
        "pair-exchange",
        "exchange",
        _refuses(S.EXCHANGED, lease=_is_set),
        S.CODE_RECEIVED,
        "connects",
    ),
    # the verification (the pair is stored, the exchange's lease on it)
    Row("verified", "exchange", _refuses(S.CONNECTED), S.EXCHANGED, "connects"),
    # the verification deferred (the account endpoint failed for a moment)
    Row(
        "verify-deferred",
        "exchange",
        _refuses(S.EXCHANGED, verify_after=_is_set),
        S.EXCHANGED,
        "verifies_after_backoff",
        account_down=True,
    ),
    # a code whose exchange failed (the token endpoint's 500): the error, not a live claim
    Row(
        "exchange-failed",
        "exchange",
        _refuses(S.ERROR),
        S.CODE_RECEIVED,
        "new_consent",
        token_500=True,
    ),
    # the rotated pair of a refresh
    Row("pair-refresh", "refresh", _refuses(S.CONNECTED, lease=_is_none), S.CONNECTED, "serves"),
]


# -- recoveries: the first call after the heal -----------------------------------------------


def _connects(rig: Rig, given: Given) -> None:
    assert rig.callback(given).outcome is Outcome.ALREADY_CONNECTED
    assert rig.works()


def _serves(rig: Rig, given: Given) -> None:
    assert rig.works()


def _verifies_after_backoff(rig: Rig, given: Given) -> None:
    # The deferral landed: no lease holds the record, only the verification's back-off (5 s,
    # well inside the 60 s lease the exchange held): past it, the next call verifies.
    rig.clock.advance(timedelta(seconds=6))
    assert rig.status() is S.CONNECTED
    assert rig.works()


def _new_consent(rig: Rig, given: Given) -> None:
    assert rig.status() is S.ERROR  # the refused code's error, not the claim still in flight
    assert rig.callback(rig.consent()).outcome is Outcome.CONNECTED
    assert rig.works()


RECOVERIES: dict[str, Callable[[Rig, Given], None]] = {
    "connects": _connects,
    "serves": _serves,
    "verifies_after_backoff": _verifies_after_backoff,
    "new_consent": _new_consent,
}


@pytest.fixture(autouse=True)
def _quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # The write's tries within the lease sleep 0.75 s in all; the rows test what follows.
    monkeypatch.setattr(_flow_records, "_STORE_RETRIES", (0.0,))
    # No background retry lands it first: the next call itself must.
    monkeypatch.setattr(_kept, "KEPT_RETRY_PAUSES", (3600.0,))


def _connected(rig: Rig) -> Given:
    given = rig.consent()
    assert rig.callback(given).outcome is Outcome.CONNECTED
    rig.clock.advance(timedelta(days=1, seconds=1))  # the access token expires: a refresh is due
    return given


def _faulted_call(rig: Rig, row: Row, given: Given) -> None:
    """The call the store's outage meets: it raises ``StoreError`` after the token call."""
    grant = "authorization_code" if row.flow == "exchange" else "refresh_token"
    if row.token_500:
        rig.fake.fail_next("500", grant=grant)
    if row.account_down:
        rig.transport.fail(path="/api/v4/account")
    rig.store.fail("compare_and_set", times=None, when=row.refused)
    call: Callable[[], object] = (
        (lambda: rig.callback(given)) if row.flow == "exchange" else rig.works
    )
    with pytest.raises(StoreError):
        call()


@pytest.mark.parametrize("backend", STORES, indirect=True)
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_next_call_recovers(row: Row, mode: str, backend: Backend, clock: FakeClock) -> None:
    fake = FakeAmoCRM(clock=clock, rate_limit=None)
    rig = Rig(mode, fake, clock, backend.open())
    try:
        given = _connected(rig) if row.flow == "refresh" else rig.consent()
        _faulted_call(rig, row, given)
        during = rig.stored()
        assert during is not None and during.status is row.during  # the outage's shape
        sent = rig.tokens_sent()
        rig.store.heal()
        rig.transport.heal()
        RECOVERIES[row.recovery](rig, given)
        extra = 1 if row.recovery == "new_consent" else 0  # the new consent's own code
        assert rig.tokens_sent() == sent + extra  # no second exchange, no second refresh
        assert fake.token_call_count("authorization_code", "code_revoked") == 0
    finally:
        rig.close()


def _outage_record(clock: FakeClock) -> tuple[Config, ConnectionRecord]:
    """The record the "verified" row leaves while the store is down: ``exchanged``, the pair
    stored, the exchange's lease on it."""
    fake = FakeAmoCRM(clock=clock, rate_limit=None)
    rig = Rig("sync", fake, clock, MemoryStore(clock=clock))
    try:
        row = next(row for row in ROWS if row.id == "verified")
        _faulted_call(rig, row, rig.consent())
        ours = rig.stored()
    finally:
        rig.close()
    assert ours is not None and ours.lease is not None and ours.tokens is not None
    return rig.config, ours


def test_kept_result_lands_only_on_its_claim(clock: FakeClock) -> None:
    """A verification kept in memory names its claim's lease: once another worker's claim
    holds the record (the lease lapsed and was taken over), it is stale and changes nothing;
    on its own claim it connects."""
    _, ours = _outage_record(clock)
    assert ours.lease is not None
    theirs = attrs.evolve(ours, lease=attrs.evolve(ours.lease, owner="another:worker"))
    account = Account(1, "example", "Example")
    kept = Verified(account, clock(), claim=ours.lease)
    assert step(ours, kept, clock()).record.status is S.CONNECTED
    replaced = step(theirs, kept, clock())
    assert not replaced.changed and replaced.noop is NoOp.STALE
    # written by the claim's own worker (no claim named): as before
    assert step(theirs, attrs.evolve(kept, claim=None), clock()).changed


def test_kept_result_never_replaces_a_kept_pair(clock: FakeClock) -> None:
    """A claim's result the store refused is not kept over a pair kept for the same record
    (the pair is the only valid one): with the store still down, the pair is still named as
    kept (a result is never named: none is lost with it)."""
    config, ours = _outage_record(clock)
    assert ours.tokens is not None
    records = Records(config, clock)
    view = RecordView(ours)
    records.keep_unwritten(view, ExchangeSucceeded(ours.tokens, released=True))
    verified = Verified(Account(1, "example", "Example"), clock(), claim=ours.lease)
    records.keep_unwritten(view, verified)

    def down(op: object) -> object:
        raise StoreError("the store is down")

    stored, left = drive(records.store_kept(), down)
    assert stored == () and left == (ours.connection_id,)
