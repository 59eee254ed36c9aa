"""Issue 24's benchmark table: each figure beside its baseline and its target.

    python3 tasks.py bench [--quick] [--profile] [--json PATH]
    .venv/bin/python benchmarks/targets.py [--quick] [--profile] [--json PATH]

Everything runs in-process against one FakeAmoCRM per scenario (no latency, no rate limit),
so the figures measure the library, not a network. Every figure is the median of repeated
runs (min / median / max shown); every ratio is taken run by run, the library and its baseline
measured back to back in the same round, then the median of those ratios. The machine is
shared and noisy: read the ratios, not the absolute times (docs/performance.md).

Baselines, fixed so that no one tunes them (issue 24 §1):

- the bare trigger: a ``transitions.Machine`` with the table's states, triggers and
  transitions and the table's guards as conditions, fired once per call on a plain model of
  the shape the guards read;
- two plain httpx calls: an ``httpx.Client`` on the same transport posting the token request
  and getting ``/api/v4/account``, parsing both JSON bodies;
- load plus an expiry check: the same store's ``load()`` and a hand-written comparison of the
  access token's expiry with the clock.

Nothing is cached across calls: every first callback has its own consent and code, every
plain exchange its own code. Events and metrics stay at their defaults (no OpenTelemetry SDK);
the API pacer is off (``api_rate=None``) and the exchange throttles stay on the path with
bounds too high to refuse. Postgres and Redis join the ``access_token()`` rows when
``AMO_OAUTH_BENCH_POSTGRES_URL`` / ``AMO_OAUTH_BENCH_REDIS_URL`` name a server.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing
import operator
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlsplit

import attrs
import httpx
from transitions import Machine

from amo_oauth import AmoOAuth, Config, MemoryStore, SQLiteStore, Store, store_from_url
from amo_oauth._events import CodeReceived, Disconnect, Event
from amo_oauth._hosts import AccountHost
from amo_oauth._lifecycle import TABLE, _Model, rule_transition, step
from amo_oauth._records import ConnectionRecord, ConnectionStatus, Lease, code_digest, record_key
from amo_oauth.stores._protocol import ClaimResult
from amo_oauth.testing import FakeAmoCRM, FakeClock

# The scale rows' scripts are this file's siblings, whichever way it was started.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import burst
import naive
import sweep

USER = "bench-user"
STATE_SECRET = "benchmark-state-secret-0123456789"
HIGH = 1_000_000_000  # a throttle's bound that no benchmark reaches
#: A store's public write methods, and what each returns when it committed.
WRITES: dict[str, object] = {
    "compare_and_set": True,
    "claim": ClaimResult.CLAIMED,
    "consume_state": True,
    "delete": True,
}


@attrs.frozen
class Profile:
    """How much work each figure gets: rounds (the repeated runs) and calls per round."""

    rounds: int
    table_calls: int
    service_calls: int
    sizes: tuple[int, ...]


FULL = Profile(rounds=7, table_calls=20_000, service_calls=1_000, sizes=(10, 1_000, 100_000))
QUICK = Profile(rounds=3, table_calls=300, service_calls=20, sizes=(10, 100, 1_000))


@attrs.frozen
class Spread:
    """Seconds per call (or a ratio) over the rounds."""

    low: float
    median: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(min(values), statistics.median(values), max(values))


@attrs.frozen
class Row:
    """One line of the table: a figure, what it came to, its target, or why it is missing."""

    figure: str
    value: float | None
    unit: str
    spread: Spread | None = None
    target: tuple[str, float] | None = None  # ("<=", 1.5): value <= 1.5 meets it
    detail: str = ""
    reason: str | None = None  # why there is no value
    failure: str | None = None  # a promise beside the figure that did not hold: not met

    @property
    def met(self) -> bool | None:
        if self.value is None or self.target is None:
            return None
        if self.failure is not None:
            return False
        compare = operator.le if self.target[0] == "<=" else operator.ge
        return bool(compare(self.value, self.target[1]))

    @property
    def margin(self) -> float | None:
        """How far inside (positive) or outside (negative) the target, as a fraction of it."""
        if self.value is None or self.target is None:
            return None
        sign, bound = self.target
        return (bound - self.value) / bound if sign == "<=" else (self.value - bound) / bound

    def as_json(self) -> dict[str, Any]:
        spread = None if self.spread is None else attrs.asdict(self.spread)
        target = None if self.target is None else f"{self.target[0]} {self.target[1]:g}"
        return {
            "figure": self.figure,
            "value": self.value,
            "unit": self.unit,
            "spread": spread,
            "target": target,
            "met": self.met,
            "margin": self.margin,
            "detail": self.detail,
            "reason": self.reason,
            "failure": self.failure,
        }


# -- timing -----------------------------------------------------------------------------------


def timed(calls: list[Callable[[], object]]) -> float:
    """Seconds per call over ``calls``, each timed alone (their inputs were made untimed)."""
    total = 0.0
    for call in calls:
        started = time.perf_counter()
        call()
        total += time.perf_counter() - started
    return total / len(calls)


def side_by_side(
    rounds: int, ours: Callable[[], float], baseline: Callable[[], float]
) -> tuple[Spread, Spread, Spread]:
    """Ours, the baseline and their ratio, each round measuring both back to back."""
    mine, theirs, ratios = [], [], []
    for _ in range(rounds):
        a, b = ours(), baseline()
        mine.append(a)
        theirs.append(b)
        ratios.append(a / b)
    return Spread.of(mine), Spread.of(theirs), Spread.of(ratios)


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} us"


# -- the service under measurement ------------------------------------------------------------


def config_for(fake: FakeAmoCRM) -> Config:
    """Defaults but the pacer (off) and the exchange throttles (bounds no run reaches)."""
    return Config(
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        redirect_uri=fake.redirect_uri,
        state_secret=STATE_SECRET,
        api_rate=None,
        max_exchanges_per_connection=HIGH,
        max_exchanges_per_host=HIGH,
        max_exchanges_per_process=HIGH,
        max_exchanges_per_source=HIGH,
        max_widget_exchanges=HIGH,
        max_widget_exchanges_per_host=HIGH,
    )


def service_on(store: Store) -> tuple[AmoOAuth, FakeAmoCRM]:
    fake = FakeAmoCRM(rate_limit=None)
    http = httpx.Client(transport=fake.transport())
    return AmoOAuth(config_for(fake), store=store, http=http), fake


def first_callback(oauth: AmoOAuth, fake: FakeAmoCRM, user: str) -> Callable[[], object]:
    """A fresh user's first callback, its consent made now (untimed)."""
    begun = oauth.begin(user)
    query = dict(parse_qsl(urlsplit(fake.authorize(begun.state)).query))
    return lambda: oauth.handle_callback(query, binding=begun.binding)


def connect(oauth: AmoOAuth, fake: FakeAmoCRM) -> Callable[[], object]:
    """Connect USER; the duplicate of its callback (the same query and binding again)."""
    callback = first_callback(oauth, fake, USER)
    callback()
    return callback


def plain_httpx(fake: FakeAmoCRM, client: httpx.Client) -> Callable[[], object]:
    """The naive minimum of a first callback: exchange a fresh code, read the account."""
    body = {
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "grant_type": "authorization_code",
        "code": fake.issue_code(),
        "redirect_uri": fake.redirect_uri,
    }
    host = f"https://{fake.account_host}"

    def two_calls() -> object:
        tokens = client.post(f"{host}/oauth2/access_token", json=body).json()
        bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
        return client.get(f"{host}/api/v4/account", headers=bearer).json()

    return two_calls


class Commits:
    """Counts successful writes at a store's public write methods (one commit each)."""

    def __init__(self, store: Store) -> None:
        self.count = 0
        for name, wrote in WRITES.items():
            method = getattr(store, name)
            setattr(store, name, self._counting(method, wrote))

    def _counting(self, method: Callable[..., Any], wrote: object) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if result == wrote:
                self.count += 1
            return result

        return counted


# -- the table against the bare trigger -------------------------------------------------------


def bare_machine() -> Machine:
    """The baseline: the table's states, triggers, transitions and guards, nothing else."""
    return Machine(
        model=None,
        states=ConnectionStatus,
        transitions=[rule_transition(rule) for rule in TABLE],
        initial=ConnectionStatus.DISCONNECTED,
        auto_transitions=False,
        model_attribute="status",
        send_event=True,
    )


def table_rows(profile: Profile) -> list[Row]:
    now = datetime.now(UTC)
    lease = Lease("bench", "exchange", now + timedelta(minutes=1))
    claim = CodeReceived(code_digest("c"), AccountHost("test.amocrm.ru"), lease)
    fresh = ConnectionRecord(USER)
    claimed = step(fresh, claim, now).record
    machine = bare_machine()
    cases: dict[str, tuple[ConnectionRecord, Event]] = {
        "claim": (fresh, claim),
        "duplicate": (claimed, claim),
        "disconnect": (claimed, Disconnect()),
    }
    rows, worst = [], None
    for name, (record, event) in cases.items():

        def pure(record: ConnectionRecord = record, event: Event = event) -> float:
            return timed([lambda: step(record, event, now)] * profile.table_calls)

        def bare(record: ConnectionRecord = record, event: Event = event) -> float:
            trigger = machine.events[event.name].trigger
            return timed([lambda: trigger(_Model(record, event, now))] * profile.table_calls)

        mine, theirs, ratio = side_by_side(profile.rounds, pure, bare)
        row = Row(
            f"pure step vs bare trigger: {name}",
            ratio.median,
            "x",
            ratio,
            ("<=", 1.5),
            f"{us(mine.median)} vs {us(theirs.median)}",
        )
        rows.append(row)
        if worst is None or ratio.median > (worst.value or 0):
            worst = row
    assert worst is not None
    worst_name = worst.figure.rsplit(": ", 1)[1]
    rows.append(attrs.evolve(worst, figure=f"pure step vs bare trigger: worst ({worst_name})"))
    return rows


# -- first callbacks --------------------------------------------------------------------------


class FirstCallbacks:
    """First callbacks on one store and, beside them, the two plain httpx calls."""

    def __init__(self, store: Store, calls: int) -> None:
        self.oauth, self.fake = service_on(store)
        self.commits = Commits(store)
        self.client = httpx.Client(transport=self.fake.transport())
        self.calls = calls
        self.made = 0  # first callbacks made, to divide the commits by

    def ours(self) -> float:
        batch = [self.fresh() for _ in range(self.calls)]
        return timed(batch)

    def fresh(self) -> Callable[[], object]:
        self.made += 1
        return first_callback(self.oauth, self.fake, f"first-{self.made}")

    def baseline(self) -> float:
        return timed([plain_httpx(self.fake, self.client) for _ in range(self.calls)])

    def close(self) -> None:
        self.client.close()
        self.oauth.close()


def first_callback_rows(profile: Profile, folder: Path) -> list[Row]:
    rows = []
    for name, store in (("Memory", MemoryStore()), ("SQLite", SQLiteStore(folder / "first.db"))):
        bench = FirstCallbacks(store, profile.service_calls)
        mine, theirs, ratio = side_by_side(profile.rounds, bench.ours, bench.baseline)
        figure = f"first callback, {name}, vs two plain httpx calls"
        target = ("<=", 1.3) if name == "Memory" else None
        detail = f"{us(mine.median)} vs {us(theirs.median)}"
        rows.append(Row(figure, ratio.median, "x", ratio, target, detail))
        if name == "SQLite":
            commits = bench.commits.count / bench.made
            figure = "first callback, SQLite: commits per callback"
            rows.append(Row(figure, commits, "commits", None, ("<=", 3)))
        bench.close()
    return rows


# -- duplicates, fresh tokens -----------------------------------------------------------------


def repeated(profile: Profile, call: Callable[[], object]) -> Spread:
    return Spread.of([timed([call] * profile.service_calls) for _ in range(profile.rounds)])


def duplicate_rows(profile: Profile, folder: Path) -> list[Row]:
    rows = []
    targets = {"Memory": 20_000.0, "SQLite": 5_000.0}
    for name, store in (("Memory", MemoryStore()), ("SQLite", SQLiteStore(folder / "dup.db"))):
        oauth, fake = service_on(store)
        duplicate = connect(oauth, fake)
        spread = repeated(profile, duplicate)
        per_second = Spread(1 / spread.high, 1 / spread.median, 1 / spread.low)
        rows.append(
            Row(
                f"duplicate callback no-ops per second per core, {name}",
                per_second.median,
                "/s",
                per_second,
                (">=", targets[name]),
                f"{us(spread.median)} each",
            )
        )
        oauth.close()
    return rows


def server_stores() -> Iterator[tuple[str, str | None]]:
    yield "Postgres", os.environ.get("AMO_OAUTH_BENCH_POSTGRES_URL")
    yield "Redis", os.environ.get("AMO_OAUTH_BENCH_REDIS_URL")


def server_store(url: str) -> Store:
    """The store a URL names, its schema made (``migrate()``: the database is the bench's)."""
    store = store_from_url(url)
    migrate = getattr(store, "migrate", None)
    if migrate is not None:
        migrate()
    return store


def access_token_rows(profile: Profile, folder: Path) -> list[Row]:
    stores: list[tuple[str, Store | None]] = [
        ("SQLite", SQLiteStore(folder / "token.db")),
        ("Memory", MemoryStore()),
    ]
    stores += [(name, server_store(url) if url else None) for name, url in server_stores()]
    rows = []
    for name, store in stores:
        figure = f"fresh access_token() vs load() + expiry check, {name}"
        target = ("<=", 5.0 if name == "Memory" else 1.5)
        if store is None:
            reason = f"not measured: no server (set AMO_OAUTH_BENCH_{name.upper()}_URL)"
            rows.append(Row(figure, None, "x", target=target, reason=reason))
            continue
        mine, theirs, ratio = fresh_tokens(profile, store)
        detail = f"{us(mine.median)} vs {us(theirs.median)}"
        rows.append(Row(figure, ratio.median, "x", ratio, target, detail))
    return rows


def load_and_check(oauth: AmoOAuth, store: Store) -> Callable[[], str]:
    """The baseline of the fresh ``access_token()`` row: the store's ``load()`` of the user's
    record and a hand-written check that its access token is outside the refresh margin."""
    key = record_key(oauth.config.client_id, USER)
    margin = oauth.config.refresh_margin

    def by_hand() -> str:
        tokens = store.load(key).record.tokens  # type: ignore[union-attr]
        assert tokens is not None and tokens.expires_at - margin > datetime.now(UTC)
        return tokens.access_token

    return by_hand


def fresh_tokens(profile: Profile, store: Store) -> tuple[Spread, Spread, Spread]:
    """``access_token()`` on a fresh token beside the store's ``load()`` and a by-hand check."""
    oauth, fake = service_on(store)
    connect(oauth, fake)
    by_hand = load_and_check(oauth, store)

    def ours() -> float:
        return timed([lambda: oauth.access_token(USER)] * profile.service_calls)

    def baseline() -> float:
        return timed([by_hand] * profile.service_calls)

    try:
        return side_by_side(profile.rounds, ours, baseline)
    finally:
        oauth.close()


# -- cost growth with the number of stored connections ----------------------------------------


def fill(store: Store, template: ConnectionRecord, count: int) -> None:
    """``count`` more connected records beside USER's (copies of it under other names)."""
    for n in range(count):
        store.compare_and_set(attrs.evolve(template, connection_id=f"filler-{n}", version=1), None)


def growth_rows(profile: Profile, folder: Path) -> list[Row]:
    rows = []
    span = f"{profile.sizes[0]:,} -> {profile.sizes[-1]:,}"
    for name in ("Memory", "SQLite"):
        services = [stored(name, folder, size) for size in profile.sizes]
        figures: dict[str, list[Callable[[], object]]] = {
            "duplicate": [duplicate for _, duplicate in services],
            "status()": [partial(oauth.status, USER) for oauth, _ in services],
        }
        for figure, calls in figures.items():
            costs, growth = across_sizes(profile, calls)
            shown = ", ".join(
                f"{size:,}: {us(cost.median)}"
                for size, cost in zip(profile.sizes, costs, strict=True)
            )
            figure = f"cost growth {span}: {figure}, {name}"
            rows.append(Row(figure, growth.median, "x", growth, ("<=", 1.5), shown))
        for oauth, _ in services:
            oauth.close()
    return rows


def stored(name: str, folder: Path, size: int) -> tuple[AmoOAuth, Callable[[], object]]:
    """A service whose store holds ``size`` connections (USER's among them); USER's duplicate."""
    store = MemoryStore() if name == "Memory" else SQLiteStore(folder / f"growth-{size}.db")
    oauth, fake = service_on(store)
    duplicate = connect(oauth, fake)
    template = store.load(record_key(fake.client_id, USER)).record
    assert template is not None
    fill(store, template, size - 1)
    return oauth, duplicate


def across_sizes(
    profile: Profile, calls: list[Callable[[], object]]
) -> tuple[list[Spread], Spread]:
    """Each size's seconds per call, every round measuring all sizes back to back, and the
    largest size's cost over the smallest's, round by round."""
    rounds: list[list[float]] = []
    for _ in range(profile.rounds):
        rounds.append([timed([call] * profile.service_calls) for call in calls])
    costs = [Spread.of([r[i] for r in rounds]) for i in range(len(calls))]
    return costs, Spread.of([r[-1] / r[0] for r in rounds])


# -- scale: bursts, the sweep and the naive baseline (burst.py, sweep.py, naive.py) ------------


@attrs.frozen
class Scale:
    """How big the scale rows run: callers per burst and bursts per figure, the sweep's two
    sizes (connections, with ``per_host`` connections on each account host), the naive
    scenarios' callers, and the token endpoint's latency (seconds)."""

    callers: int
    rounds: int
    sweep_sizes: tuple[int, int]
    naive_callers: int
    per_host: int = 10
    latency: float = 0.02
    sweep_latency: float = 0.02
    in_process: bool = False  # sweeps in this process: their RSS is then not their own


SCALE_FULL = Scale(callers=1_000, rounds=3, sweep_sizes=(1_000, 10_000), naive_callers=100)
#: The smoke run's: the per-host rate (7/s) paces a sweep, so a few connections per host.
SCALE_QUICK = Scale(
    callers=20,
    rounds=1,
    sweep_sizes=(5, 10),
    naive_callers=10,
    per_host=2,
    sweep_latency=0.001,
    in_process=True,
)
#: The slowest caller's bound beyond the winner's last write, milliseconds (issue 24 §1).
LAG_BOUND_MS = {"Memory": 100.0, "SQLite": 100.0, "Postgres": 250.0, "Redis": 250.0}
#: Bursts run with the library's default settle_timeout: what an application gets.
SETTLE = 5.0
assert attrs.fields(Config).settle_timeout.default == SETTLE, "Config's default moved"
BURSTS = {"callbacks": "duplicate callbacks", "access_token": "access_token() on an expired token"}


def scale_rows(quick: bool, folder: Path) -> list[Row]:
    """The burst, sweep and naive rows, at ``SCALE_QUICK`` or ``SCALE_FULL``."""
    scale = SCALE_QUICK if quick else SCALE_FULL
    return burst_rows(scale, folder) + sweep_rows(scale) + naive_rows(scale)


def scale_stores(folder: Path) -> list[tuple[str, Callable[[FakeClock], Store] | None]]:
    """Each store of the scale rows and how to make a fresh one reading the clock it is given
    (None: no server named: ``AMO_OAUTH_BENCH_POSTGRES_URL`` / ``..._REDIS_URL``)."""
    servers = dict(server_stores())
    postgres, redis = servers["Postgres"], servers["Redis"]
    return [
        ("Memory", lambda clock: MemoryStore(clock=clock)),
        ("SQLite", lambda clock: SQLiteStore(folder / f"{time.monotonic_ns()}.db", clock=clock)),
        ("Postgres", None if postgres is None else partial(burst._postgres, postgres)),
        ("Redis", None if redis is None else partial(burst._redis, redis)),
    ]


def burst_rows(scale: Scale, folder: Path) -> list[Row]:
    """Per store, scenario and driver: the slowest caller's lag beyond the winner's last
    write (median of ``scale.rounds`` bursts); a burst with more than one token call, an
    error or an unsettled caller fails its row."""
    rows = []
    drivers = (("threads", burst.run_threads), ("tasks", burst.run_tasks))
    for name, make in scale_stores(folder):
        target = ("<=", LAG_BOUND_MS[name])
        for scenario, label in BURSTS.items():
            for driver, run_burst in drivers:
                figure = f"burst of {scale.callers:,} {label}, {name}, {driver}: slowest lag"
                if make is None:
                    reason = f"not measured: no server (set AMO_OAUTH_BENCH_{name.upper()}_URL)"
                    rows.append(Row(figure, None, "ms", target=target, reason=reason))
                    continue
                runs = [
                    run_burst(make, scenario, scale.callers, scale.latency, SETTLE)
                    for _ in range(scale.rounds)
                ]
                rows.append(burst_row(figure, target, runs))
    return rows


def burst_row(figure: str, target: tuple[str, float], runs: list[burst.Measured]) -> Row:
    lags = Spread.of([m.lag * 1e3 for m in runs])
    failures = [m.failure for m in runs if m.failure is not None]
    took = statistics.median(m.took for m in runs)
    detail = (
        f"token calls {'/'.join(str(m.token_calls) for m in runs)}, "
        f"errors {'/'.join(str(m.errors) for m in runs)}, "
        f"settled {min(m.settled for m in runs)}/{runs[0].callers} at worst; "
        f"wall {took * 1e3:,.0f} ms"
    )
    failure = f"{len(failures)} of {len(runs)} bursts: {failures[0]}" if failures else None
    return Row(figure, lags.median, "ms", lags, target, detail, failure=failure)


def sweep_rows(scale: Scale) -> list[Row]:
    """Per store: the sweep at the larger size (seconds), and its peak RSS beside the smaller
    size's. Each sweep runs in a process of its own, so that its RSS is its own."""
    small, big = scale.sweep_sizes
    rows = []
    for name, url in (("Memory", None), ("SQLite", None), *server_stores()):
        hosts = big // scale.per_host
        figure = f"keep-alive sweep, {big:,} connections over {hosts:,} hosts, {name}"
        if name in ("Postgres", "Redis") and url is None:
            reason = f"not measured: no server (set AMO_OAUTH_BENCH_{name.upper()}_URL)"
            rows.append(Row(f"{figure}: time", None, "s", reason=reason))
            rows.append(Row(f"{figure}: peak RSS", None, "MiB", reason=reason))
            continue
        at = {size: swept(name.lower(), url, size, scale) for size in (small, big)}
        done = at[big]
        detail = f"{done.grants:,} refresh grants: each connection once, none failed"
        rows.append(Row(f"{figure}: time", done.seconds, "s", detail=detail))
        rows.append(Row(f"{figure}: peak RSS", done.peak_rss, "MiB", detail=rss_detail(at)))
    return rows


def swept(store: str, url: str | None, connections: int, scale: Scale) -> sweep.Swept:
    """One sweep (``sweep.measure``) in a fresh spawned process, so that its RSS is its own;
    the smoke run's in this one (starting a process would be most of its time)."""
    hosts = max(1, connections // scale.per_host)
    if scale.in_process:
        return sweep.measure(store, url, connections, hosts, scale.sweep_latency)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        done = pool.submit(sweep.measure, store, url, connections, hosts, scale.sweep_latency)
        return done.result()


def rss_detail(at: dict[int, sweep.Swept]) -> str:
    """Each size's peak RSS and its rise during the sweep, MiB."""
    parts = []
    for size, done in at.items():
        rise = "" if done.rss_growth is None else f" (+{done.rss_growth:.1f} in the sweep)"
        parts.append(f"{size:,}: {done.peak_rss:.0f} MiB{rise}")
    return "; ".join(parts) + "; the fake's records are in it (docs/performance.md)"


def naive_rows(scale: Scale) -> list[Row]:
    """Token calls of the naive authlib handler (plain and checked) and ours, in the same
    duplicate-code and refresh-storm scenarios; ours fails its row unless it made one token
    call, every caller got an answer and its stored token still works."""
    n = scale.naive_callers
    labels = {
        "duplicates": f"duplicate code (callback, replay, {n:,} at once)",
        "storm": f"refresh storm ({n:,} reads of an expired token)",
    }
    rows = []
    for scenario, handlers in naive.SCENARIOS.items():
        for handler, run_scenario in handlers.items():
            out = run_scenario(n, scale.latency)
            figure = f"naive baseline, {labels[scenario]}, {handler}: token calls"
            works = "works" if out.token_works else "BROKEN"
            tally = ", ".join(f"{kind} x{count}" for kind, count in sorted(out.answers.items()))
            detail = f"stored token {works}; callers got: {tally}"
            target = ("<=", 1.0) if handler == "ours" else None
            failure = None
            if handler == "ours" and (out.errors or not out.token_works):
                failure = f"errors {out.errors}, stored token {works}"
            calls = float(out.token_calls)
            rows.append(Row(figure, calls, "calls", None, target, detail, failure=failure))
    return rows


# -- where the time goes: a profile of each missed target ------------------------------------

#: The library's side of a row, made ready (its inputs untimed) for ``profile_of``.
#: Its services are closed by the ExitStack it is given, after the profile.
Scenario = Callable[[Path, int, ExitStack], Callable[[], object]]


def step_scenario(name: str) -> Scenario:
    def ready(folder: Path, calls: int, closing: ExitStack) -> Callable[[], object]:
        now = datetime.now(UTC)
        lease = Lease("bench", "exchange", now + timedelta(minutes=1))
        claim = CodeReceived(code_digest("c"), AccountHost("test.amocrm.ru"), lease)
        record = ConnectionRecord(USER)
        if name != "claim":
            record = step(record, claim, now).record
        event: Event = Disconnect() if name == "disconnect" else claim
        return lambda: [step(record, event, now) for _ in range(calls)]

    return ready


def service_named(name: str, folder: Path, closing: ExitStack) -> tuple[AmoOAuth, FakeAmoCRM]:
    oauth, fake = service_on(store_named(name, folder))
    closing.callback(oauth.close)
    return oauth, fake


def store_named(name: str, folder: Path) -> Store:
    servers = {server: url for server, url in server_stores() if url}
    if name in servers:
        return server_store(servers[name])
    return MemoryStore() if name == "Memory" else SQLiteStore(folder / "profile.db")


def first_callback_scenario(name: str) -> Scenario:
    def ready(folder: Path, calls: int, closing: ExitStack) -> Callable[[], object]:
        oauth, fake = service_named(name, folder, closing)
        batch = [first_callback(oauth, fake, f"profiled-{n}") for n in range(calls)]
        return lambda: [callback() for callback in batch]

    return ready


def duplicate_scenario(name: str) -> Scenario:
    def ready(folder: Path, calls: int, closing: ExitStack) -> Callable[[], object]:
        oauth, fake = service_named(name, folder, closing)
        duplicate = connect(oauth, fake)
        return lambda: [duplicate() for _ in range(calls)]

    return ready


def access_token_scenario(name: str) -> Scenario:
    def ready(folder: Path, calls: int, closing: ExitStack) -> Callable[[], object]:
        oauth, fake = service_named(name, folder, closing)
        connect(oauth, fake)
        return lambda: [oauth.access_token(USER) for _ in range(calls)]

    return ready


SCENARIOS: dict[str, Scenario] = {
    **{
        f"pure step vs bare trigger: {n}": step_scenario(n)
        for n in ("claim", "duplicate", "disconnect")
    },
    **{f"first callback, {n}, vs": first_callback_scenario(n) for n in ("Memory", "SQLite")},
    **{
        f"duplicate callback no-ops per second per core, {n}": duplicate_scenario(n)
        for n in ("Memory", "SQLite")
    },
    **{
        f"fresh access_token() vs load() + expiry check, {n}": access_token_scenario(n)
        for n in ("Memory", "SQLite", "Postgres", "Redis")
    },
}


def print_profiles(rows: list[Row], profile: Profile, stream: TextIO) -> None:
    """For each missed row with a scenario: cProfile's top entries, by cumulative time and by
    own time."""
    calls = max(profile.service_calls, 200)
    for row in rows:
        scenario = next(
            (s for prefix, s in SCENARIOS.items() if row.figure.startswith(prefix)), None
        )
        if row.met is not False or scenario is None:
            continue
        with (
            tempfile.TemporaryDirectory(prefix="amo_oauth-profile-") as tmp,
            ExitStack() as closing,
        ):
            work = scenario(Path(tmp), calls, closing)
            profiler = cProfile.Profile()
            profiler.runcall(work)
        stats = pstats.Stats(profiler, stream=stream).strip_dirs()
        for order in (pstats.SortKey.CUMULATIVE, pstats.SortKey.TIME):
            by = "own" if order is pstats.SortKey.TIME else "cumulative"
            print(f"\n== {row.figure}: {calls} calls, by {by} time", file=stream)
            stats.sort_stats(order).print_stats(PROFILE_ENTRIES)


PROFILE_ENTRIES = 15


# -- the report -------------------------------------------------------------------------------


def value_text(row: Row) -> str:
    """The median and its spread, or the reason there is none."""
    if row.value is None:
        return "-"
    spread = "" if row.spread is None else f" ({row.spread.low:,.2f}-{row.spread.high:,.2f})"
    return f"{row.value:,.2f} {row.unit}{spread}"


def target_text(row: Row) -> str:
    if row.target is None:
        return "-" if row.value is None else "printed"
    return f"{row.target[0]} {row.target[1]:g}"


def verdict(row: Row) -> str:
    if row.met is None:
        return ""
    return f"{'met' if row.met else 'MISSED'} ({row.margin:+.1%})"


def _said(row: Row) -> str:
    """The last column: the reason there is no value, else the detail (a failure first)."""
    if row.reason:
        return row.reason
    return f"FAILED: {row.failure}; {row.detail}" if row.failure else row.detail


HEADINGS = ("figure", "median (min-max)", "target", "met (margin)", "detail, or why not measured")


def print_table(rows: list[Row], stream: TextIO) -> None:
    """One line per row (only the last column may wrap): rich's table if it is installed,
    plain if not."""
    lines = [(r.figure, value_text(r), target_text(r), verdict(r), _said(r)) for r in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for line in (HEADINGS, *lines):
            print(" | ".join(line), file=stream)
        return
    table = Table(title="issue 24 §1 benchmarks")
    for heading in HEADINGS:
        table.add_column(heading, no_wrap=heading != HEADINGS[-1])
    for line in lines:
        table.add_row(*line)
    Console(file=stream, width=240).print(table)


def run(profile: Profile, *, scale: bool = True, per_call: bool = True) -> list[Row]:
    """The table's rows: the per-call rows (the step, callbacks, ``access_token()``, growth),
    then the scale rows (bursts, sweeps, the naive handler)."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="amo_oauth-bench-") as tmp:
        folder = Path(tmp)
        if per_call:
            rows += table_rows(profile)
            rows += first_callback_rows(profile, folder)
            rows += duplicate_rows(profile, folder)
            rows += access_token_rows(profile, folder)
            rows += growth_rows(profile, folder)
        if scale:
            rows += scale_rows(profile is QUICK, folder)
    return rows


@contextmanager
def output(path: str | None) -> Iterator[Any]:
    if path is None:
        yield sys.stdout
        return
    with open(path, "w", encoding="utf-8") as handle:
        yield handle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few calls, small stores: a smoke run")
    parser.add_argument("--profile", action="store_true", help="profile each missed target")
    parser.add_argument("--json", metavar="PATH", help="write the JSON summary here, not stdout")
    only = parser.add_mutually_exclusive_group()
    only.add_argument(
        "--scale-only", action="store_true", help="only the burst, sweep and naive rows"
    )
    only.add_argument(
        "--per-call-only", action="store_true", help="only the step, callback, token, growth rows"
    )
    args = parser.parse_args()
    profile = QUICK if args.quick else FULL
    rows = run(profile, scale=not args.per_call_only, per_call=not args.scale_only)
    # Without --json, the JSON owns stdout (so it can be piped) and the table goes to stderr.
    shown = sys.stdout if args.json else sys.stderr
    print_table(rows, shown)
    if args.profile:
        print_profiles(rows, profile, shown)
    summary = {
        "quick": args.quick,
        "profile": attrs.asdict(profile),
        "scale": attrs.asdict(SCALE_QUICK if args.quick else SCALE_FULL),
        "rows": [r.as_json() for r in rows],
    }
    with output(args.json) as handle:
        json.dump(summary, handle, indent=2)
        handle.write("\n")


if __name__ == "__main__":
    main()
