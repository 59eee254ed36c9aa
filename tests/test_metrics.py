"""Metrics through OpenTelemetry (docs/metrics.md), read through the SDK's in-memory reader on a
``MeterProvider`` each test gives its own service: token calls by grant and result, duplicates,
refreshes, lapsed leases taken over, store errors and latency, waits; every attribute from a
closed allow-list; and the library without opentelemetry installed at all."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import amo_oauth
from _backends import Backend
from _pg_server import postgres_url  # noqa: F401
from _redis_server import redis_url  # noqa: F401
from amo_oauth import (
    AmoOAuth,
    AmoOAuthError,
    AsyncAmoOAuth,
    ConnectionRecord,
    ConnectionStatus,
    MemoryStore,
    ReauthorizationRequired,
    StoreError,
    TryAgainLater,
)
from amo_oauth._answers import ROWS
from amo_oauth._metrics import INSTRUMENTS, REFRESH_OUTCOMES, Metrics
from amo_oauth._ops import STORE_METHODS
from amo_oauth._records import Lease, SeenCode, record_key
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.testing.faults import FaultyStore, FaultyTransport

from helpers import config_for, consent, run_consent

USER = "user-1"
#: Where this run imports the library from: the subprocess imports the same.
SRC = Path(amo_oauth.__file__).resolve().parents[1]
#: Past the access token's lifetime (a day) and its refresh margin: the next use refreshes.
STALE = timedelta(days=1, minutes=1)

#: Every attribute key an instrument may carry, and the values it may take: closed sets only.
ALLOWED: dict[str, frozenset[str]] = {
    "grant": frozenset({"authorization_code", "refresh_token"}),
    "result": frozenset({"ok", "refused", "transient", "unsent"}),
    "reason": frozenset({row.reason for row in ROWS} | {"unavailable"}),
    "outcome": frozenset(REFRESH_OUTCOMES.values()),
    "purpose": frozenset({"exchange", "refresh"}),
    "operation": frozenset(STORE_METHODS.values()),
}


class Readings:
    """What one service's instruments hold, read through the SDK's in-memory reader."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def points(self) -> list[tuple[str, dict[str, Any], Any]]:
        """Every data point: the instrument's name, its attributes, the point."""
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        return [
            (metric.name, dict(point.attributes or {}), point)
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            for point in metric.data.data_points
        ]

    def count(self, name: str, **attributes: str) -> int:
        """A counter's total over the points whose attributes include ``attributes``."""
        return sum(
            point.value
            for metric, attrs_, point in self.points()
            if metric == name and attributes.items() <= attrs_.items()
        )

    def recorded(self, name: str, **attributes: str) -> int:
        """How many values a histogram recorded, over the points matching ``attributes``."""
        return sum(
            point.count
            for metric, attrs_, point in self.points()
            if metric == name and attributes.items() <= attrs_.items()
        )


def check_attributes(readings: Readings, fake: FakeAmoCRM, *named: str) -> None:
    """Every attribute emitted is on the allow-list; no id, host or secret is among them."""
    for name, attributes, _ in readings.points():
        assert name.startswith("amo_oauth."), name
        for key, value in attributes.items():
            assert key in ALLOWED, (name, key)
            assert value in ALLOWED[key], (name, key, value)
            assert value not in (fake.client_id, fake.client_secret, fake.account_host, *named)


@pytest.fixture
def readings(fake: FakeAmoCRM) -> Iterator[Readings]:
    made = Readings()
    yield made
    check_attributes(made, fake, USER)
    made.provider.shutdown()


@pytest.fixture
def measured(
    fake: FakeAmoCRM, clock: FakeClock, readings: Readings
) -> Iterator[Callable[..., AmoOAuth]]:
    """An ``AmoOAuth`` on the fake whose metrics go to ``readings`` (no global provider)."""
    made: list[AmoOAuth] = []

    def make(store: Any = None, transport: httpx.BaseTransport | None = None) -> AmoOAuth:
        oauth = AmoOAuth(
            config_for(fake),
            store=store if store is not None else MemoryStore(clock=clock),
            http=httpx.Client(transport=transport or fake.transport()),
            clock=clock,
            meter_provider=readings.provider,
        )
        made.append(oauth)
        return oauth

    yield make
    for oauth in made:
        oauth.close()


def test_a_first_callback_counts_one_code_call(
    measured: Callable[..., AmoOAuth], fake: FakeAmoCRM, readings: Readings
) -> None:
    run_consent(measured(), fake, USER)
    assert readings.count("amo_oauth.token_calls", grant="authorization_code", result="ok") == 1
    assert readings.count("amo_oauth.token_calls") == 1
    assert readings.recorded("amo_oauth.token_call.duration", grant="authorization_code") == 1
    assert readings.count("amo_oauth.duplicates") == 0
    # The claim, the exchanged pair and the verified account: one claim, two writes.
    assert readings.recorded("amo_oauth.store.duration", operation="claim") == 1
    assert readings.recorded("amo_oauth.store.duration", operation="compare_and_set") == 2


def test_a_duplicate_counts_one_duplicate_and_no_code_call(
    measured: Callable[..., AmoOAuth], fake: FakeAmoCRM, readings: Readings
) -> None:
    oauth = measured()
    query, binding = consent(oauth, fake, USER)
    oauth.handle_callback(query, binding=binding)
    again = oauth.handle_callback(query, binding=binding)
    assert again.duplicate
    assert readings.count("amo_oauth.duplicates") == 1
    assert readings.count("amo_oauth.token_calls", grant="authorization_code") == 1


def test_a_refresh_counts_its_call_and_its_outcome(
    measured: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock, readings: Readings
) -> None:
    oauth = measured()
    run_consent(oauth, fake, USER)
    clock.advance(STALE)
    oauth.access_token(USER)
    assert readings.count("amo_oauth.token_calls", grant="refresh_token", result="ok") == 1
    assert readings.count("amo_oauth.refreshes", outcome="refreshed") == 1
    assert readings.count("amo_oauth.refreshes") == 1


def test_a_refused_refresh_counts_refused_with_its_reason(
    measured: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock, readings: Readings
) -> None:
    oauth = measured()
    run_consent(oauth, fake, USER)
    fake.revoke_refresh_tokens()
    clock.advance(STALE)
    with pytest.raises(ReauthorizationRequired):
        oauth.access_token(USER)
    refused = readings.count("amo_oauth.token_calls", grant="refresh_token", result="refused")
    assert refused == 1
    reasons = {
        attributes.get("reason")
        for name, attributes, _ in readings.points()
        if name == "amo_oauth.token_calls" and attributes["result"] == "refused"
    }
    assert reasons == {"token_revoked"}
    assert readings.count("amo_oauth.refreshes", outcome="refused") == 1
    assert readings.count("amo_oauth.refreshes", outcome="refreshed") == 0


def test_a_refresh_amocrm_fails_counts_transient_and_deferred(
    measured: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock, readings: Readings
) -> None:
    oauth = measured()
    run_consent(oauth, fake, USER)
    fake.fail_next("500", grant="refresh_token")
    clock.advance(STALE)
    with pytest.raises(TryAgainLater):  # amoCRM pushed back: refreshes held back a while
        oauth.access_token(USER)
    assert readings.count("amo_oauth.token_calls", grant="refresh_token", result="transient") == 1
    assert readings.count("amo_oauth.refreshes", outcome="deferred") == 1


@pytest.mark.parametrize("grant", ["authorization_code", "refresh_token"])
def test_a_call_that_never_connected_counts_unsent_not_sent(
    measured: Callable[..., AmoOAuth],
    fake: FakeAmoCRM,
    clock: FakeClock,
    readings: Readings,
    grant: str,
) -> None:
    oauth = measured()
    if grant == "refresh_token":
        run_consent(oauth, fake, USER)
        clock.advance(STALE)
    fake.fail_next("timeout_before", grant=grant)  # a ConnectTimeout: nothing reached amoCRM
    with contextlib.suppress(AmoOAuthError):
        if grant == "refresh_token":
            oauth.access_token(USER)
        else:
            run_consent(oauth, fake, USER)
    assert readings.count("amo_oauth.token_calls", grant=grant, result="unsent") == 1
    assert readings.count("amo_oauth.token_calls", grant=grant, result="transient") == 0


def test_a_dead_workers_exchange_lease_counts_one_expiry(
    measured: Callable[..., AmoOAuth], clock: FakeClock, readings: Readings
) -> None:
    store = MemoryStore(clock=clock)
    oauth = measured(store=store)
    crashed = ConnectionRecord(
        USER,
        integration=oauth.config.client_id,
        status=ConnectionStatus.CODE_RECEIVED,
        version=1,
        host="test.amocrm.ru",
        seen_codes=(SeenCode("0" * 64, clock()),),
        lease=Lease("dead-worker", "exchange", clock() + timedelta(seconds=60)),
    )
    assert store.compare_and_set(crashed, None)
    oauth.status(USER)
    assert readings.count("amo_oauth.lease_expiries") == 0  # live: nothing lapsed
    clock.advance(61 + oauth.config.kept_pair_grace.total_seconds())
    assert oauth.status(USER).status is ConnectionStatus.ERROR
    assert readings.count("amo_oauth.lease_expiries", purpose="exchange") == 1
    oauth.status(USER)  # expired once: a later load finds nothing to take over
    assert readings.count("amo_oauth.lease_expiries") == 1


def test_a_dead_workers_refresh_lease_counts_one_expiry(
    measured: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock, readings: Readings
) -> None:
    store = MemoryStore(clock=clock)
    oauth = measured(store=store)
    run_consent(oauth, fake, USER)
    record = store.load(record_key(oauth.config.client_id, USER)).record
    assert record is not None
    lease = Lease("dead-worker", "refresh", clock() + timedelta(seconds=60))
    assert store.compare_and_set(
        attrs.evolve(record, lease=lease, version=record.version + 1), record.version
    )
    clock.advance(STALE)  # past the lease too
    oauth.access_token(USER)
    assert readings.count("amo_oauth.lease_expiries", purpose="refresh") == 1
    assert readings.count("amo_oauth.refreshes", outcome="refreshed") == 1


def test_a_store_error_counts_by_operation(
    measured: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock, readings: Readings
) -> None:
    store = FaultyStore(MemoryStore(clock=clock))
    oauth = measured(store=store)
    run_consent(oauth, fake, USER)
    store.fail("load", times=1)
    with pytest.raises(StoreError):
        oauth.status(USER)
    assert readings.count("amo_oauth.store.errors", operation="load") == 1
    assert readings.count("amo_oauth.store.errors") == 1
    # The failed load was timed too.
    assert readings.recorded("amo_oauth.store.duration", operation="load") >= 2


def test_every_store_is_timed_and_its_errors_counted(
    measured: Callable[..., AmoOAuth],
    fake: FakeAmoCRM,
    clock: FakeClock,
    readings: Readings,
    backend: Backend,
) -> None:
    store = FaultyStore(backend.open())
    oauth = measured(store=store)
    run_consent(oauth, fake, USER)
    assert readings.recorded("amo_oauth.store.duration", operation="claim") == 1
    assert readings.recorded("amo_oauth.store.duration", operation="compare_and_set") == 2
    store.fail("holder_of", times=1)
    with pytest.raises(StoreError):
        run_consent(oauth, fake, USER)  # a new consent: the callback reads the code's holder
    assert readings.count("amo_oauth.store.errors", operation="holder_of") == 1
    assert readings.count("amo_oauth.store.errors") == 1


class _WaitSignalling(MemoryStore):
    """A memory store that says when a caller starts waiting for a change."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.waiting = threading.Event()

    def wait_for_change(self, key: str, version: int, timeout: float) -> None:
        self.waiting.set()
        super().wait_for_change(key, version, timeout)


def test_a_waiter_for_another_workers_refresh_counts_its_wait(
    measured: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock, readings: Readings
) -> None:
    transport = FaultyTransport(fake.transport())
    store = _WaitSignalling(clock=clock)
    oauth = measured(store=store, transport=transport)
    run_consent(oauth, fake, USER)
    clock.advance(timedelta(days=2))  # the access token expired: nobody is served it
    held = transport.hold(grant="refresh_token")
    tokens: list[str] = []
    refresher = threading.Thread(target=lambda: tokens.append(oauth.access_token(USER)))
    refresher.start()
    held.wait_reached()
    waiter = threading.Thread(target=lambda: tokens.append(oauth.access_token(USER)))
    waiter.start()
    assert store.waiting.wait(timeout=60)  # bounds a hung test only: the wait starts at once
    held.release()
    refresher.join()
    waiter.join()
    assert len(tokens) == 2 and tokens[0] == tokens[1]
    assert readings.count("amo_oauth.waits") >= 1
    assert readings.recorded("amo_oauth.wait.duration") == readings.count("amo_oauth.waits")
    assert readings.count("amo_oauth.token_calls", grant="refresh_token") == 1
    # A wait is not a store operation's latency.
    assert readings.recorded("amo_oauth.store.duration", operation="wait_for_change") == 0


def test_the_sweep_counts_its_refreshes(
    measured: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock, readings: Readings
) -> None:
    oauth = measured()
    for user in ("a", "b"):
        run_consent(oauth, fake, user)
    report = oauth.refresh_due(within=timedelta(days=100), concurrency=2)
    assert len(report.refreshed) == 2
    assert readings.count("amo_oauth.token_calls", grant="refresh_token", result="ok") == 2
    assert readings.count("amo_oauth.refreshes", outcome="refreshed") == 2
    assert readings.recorded("amo_oauth.store.duration", operation="due_page") >= 1
    check_attributes(readings, fake, "a", "b")


def test_the_async_service_counts_the_same(
    fake: FakeAmoCRM, clock: FakeClock, readings: Readings
) -> None:
    async def main() -> None:
        http = httpx.AsyncClient(transport=fake.async_transport())
        async with AsyncAmoOAuth(
            config_for(fake),
            store=MemoryStore(clock=clock),
            http=http,
            clock=clock,
            meter_provider=readings.provider,
        ) as oauth:
            begun = await oauth.begin(USER)
            query = dict(httpx.URL(fake.authorize(begun.state)).params)
            await oauth.handle_callback(query, binding=begun.binding)
            again = await oauth.handle_callback(query, binding=begun.binding)
            assert again.duplicate
            clock.advance(STALE)
            await oauth.access_token(USER)
        await http.aclose()

    asyncio.run(main())
    assert readings.count("amo_oauth.token_calls", grant="authorization_code", result="ok") == 1
    assert readings.count("amo_oauth.token_calls", grant="refresh_token", result="ok") == 1
    assert readings.count("amo_oauth.duplicates") == 1
    assert readings.count("amo_oauth.refreshes", outcome="refreshed") == 1
    assert readings.recorded("amo_oauth.store.duration", operation="claim") == 1


def test_a_failing_store_in_the_async_service_counts_its_error(
    fake: FakeAmoCRM, clock: FakeClock, readings: Readings
) -> None:
    store = FaultyStore(MemoryStore(clock=clock))

    async def main() -> None:
        async with AsyncAmoOAuth(
            config_for(fake),
            store=store,
            http=httpx.AsyncClient(transport=fake.async_transport()),
            clock=clock,
            meter_provider=readings.provider,
        ) as oauth:
            store.fail("load", times=1)
            with pytest.raises(StoreError):
                await oauth.status(USER)

    asyncio.run(main())
    assert readings.count("amo_oauth.store.errors", operation="load") == 1


_WITHOUT_OPENTELEMETRY = """
import sys

class Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Hide())
import httpx
from amo_oauth import AmoOAuth, MemoryStore
from amo_oauth._metrics import SILENT
from amo_oauth.testing import FakeAmoCRM
sys.path.insert(0, TESTS)
from helpers import config_for, run_consent

fake = FakeAmoCRM(rate_limit=None)
oauth = AmoOAuth(
    config_for(fake), store=MemoryStore(), http=httpx.Client(transport=fake.transport())
)
assert oauth._metrics is SILENT
result = run_consent(oauth, fake, "user-1")
assert result.connection.status.value == "connected", result
assert oauth.access_token("user-1")
assert not [name for name in sys.modules if name.startswith("opentelemetry")]
print("works without opentelemetry")
"""


def test_the_library_works_without_opentelemetry() -> None:
    script = _WITHOUT_OPENTELEMETRY.replace("TESTS", repr(str(Path(__file__).parent)))
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "works without opentelemetry" in done.stdout


class _Listing:
    """A meter provider (and meter) that lists the instruments made."""

    def __init__(self) -> None:
        self.made: list[tuple[str, str, str, str]] = []

    def get_meter(self, *args: object, **kwargs: object) -> _Listing:
        return self

    def create_counter(self, name: str, unit: str = "", description: str = "") -> _Listing:
        self.made.append((name, "counter", unit, description))
        return self

    def create_histogram(self, name: str, unit: str = "", description: str = "") -> _Listing:
        self.made.append((name, "histogram", unit, description))
        return self


def test_metrics_make_every_instrument_of_the_table_once() -> None:
    listing = _Listing()
    Metrics(listing)  # type: ignore[arg-type]
    table = [(made.name, made.kind, made.unit, made.description) for made in INSTRUMENTS]
    assert sorted(listing.made) == sorted(table)
    assert len({name for name, *_ in table}) == len(table)


def test_the_docs_list_every_instrument_with_its_kind_and_unit() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    documented = re.findall(r"^\| `(amo_oauth\.[\w.]+)` \| (\w+) \| `([^`]+)` \|", page, re.M)
    assert documented == [(made.name, made.kind, made.unit) for made in INSTRUMENTS]
