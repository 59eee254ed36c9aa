"""Issue 24 §2: SIGKILL of a worker process at each operation a flow yields, before the
operation ran and after it ran (before the flow heard its result): the exchange, the refresh,
the deferred verification, the account-move retry, the disconnect hook, ``disconnect()``, the
sweep and the replay that writes ``exchange_interrupted`` (``FLOWS``, set up by ``ready``).

A worker (``_kill_worker.py``) runs the flow on a SQLite file (``PROOF_FULL`` adds Postgres and
Redis), announcing each operation on stdout and halting at the chosen one; this process then
SIGKILLs it. The fake amoCRM is served over loopback by this process: it is another party, as
amoCRM is, so what it did (a code spent, a pair rotated) outlives the killed worker, and the
test reads it back directly (``token_call_count``, ``is_refresh_token_valid``).

The kill points are ``OPS`` below, a table; ``test_every_yield_point_is_covered`` runs each
flow cleanly under the announcing driver, on ``AmoOAuth`` and on ``AsyncAmoOAuth``, and checks
that both yield exactly the table's operations, so a new yield in a flow fails that test until
the table, ``EXPECTED`` (and docs/reliability.md, "Kills") cover it. After each kill a new
worker recovers: the killed job runs again, without a second exchange of the code; where the
killed worker held the only copy of what amoCRM answered, the state is the documented error
once the lease and the kept-pair grace lapse, and a new consent connects. In CI the flows after
the first two are killed only before operations that leave something behind (``KILLED``). One
warm worker forks a new process for each job (a kill, a recovery's call), so that no job pays
for starting Python.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import attrs
import httpx
import pytest

from _kill_worker import arun, run
from _pg_server import postgres_url  # noqa: F401 - the fixture, under PROOF_FULL
from _proof_worker import consent, digest, open_store
from _redis_server import redis_url  # noqa: F401 - the fixture, under PROOF_FULL
from _served_fake import job_config
from amo_oauth import (
    AmoOAuth,
    Config,
    ConnectionRecord,
    ConnectionStatus,
    Outcome,
    Store,
)
from amo_oauth._records import record_key
from amo_oauth.testing import FakeAmoCRM

from helpers import PROOF_FULL, OffsetClock, assert_status_fits

pytestmark = pytest.mark.proof

WORKER = Path(__file__).with_name("_kill_worker.py")
USER = "user-1"
#: A guard against a hung worker, never a pass condition: every line comes in well under it.
LINE_BOUND = 120.0


# -- the warm worker -------------------------------------------------------------------------------


class Workers:
    """One ``_kill_worker.py`` process, imported once, forking a new process for each job;
    its stdout read by a thread, line by line."""

    def __init__(self, stderr: IO[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.line() == "ready"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("eof")

    def line(self) -> str:
        try:
            return self.lines.get(timeout=LINE_BOUND)
        except queue.Empty:
            raise AssertionError("the worker said nothing for too long") from None

    def start(self, job: dict[str, Any]) -> tuple[int, list[str]]:
        """Give ``job`` to a new process: its pid, its ``op`` lines and its last line
        (``done ...``, or ``halt ...`` at the job's kill point, where it waits)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        first = self.line()
        assert first.startswith("pid "), first
        said: list[str] = []
        while True:
            line = self.line()
            said.append(line)
            if not line.startswith("op "):
                assert line.startswith(("done ", "halt ")), line
                return int(first[4:]), said

    def reaped(self) -> int:
        """The exit code of the job's process, once it ended (-9: SIGKILL)."""
        line = self.line()
        assert line.startswith("reaped "), line
        return int(line[7:])

    def run(self, job: dict[str, Any]) -> list[str]:
        """A job run to its end."""
        _, said = self.start(job)
        assert self.reaped() == 0
        return said

    def kill_at(self, job: dict[str, Any], index: int, phase: str) -> str:
        """A job halted at its kill point and SIGKILLed there: the line it halted with."""
        pid, said = self.start({**job, "kill": {"index": index, "phase": phase}})
        os.kill(pid, signal.SIGKILL)  # whatever it said: a halted process never ends by itself
        assert self.reaped() == -signal.SIGKILL
        return said[-1]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=LINE_BOUND)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    log = tmp_path_factory.mktemp("kill") / "workers.err"
    with log.open("w", encoding="utf-8") as stderr:
        pool = Workers(stderr)
        yield pool
        pool.close()


# -- the stores -----------------------------------------------------------------------------------

STORES = ["sqlite", "postgres", "redis"] if PROOF_FULL else ["sqlite"]


@attrs.define
class Place:
    """Where the record lives, as the workers' job names it, and a store object on it here."""

    spec: dict[str, Any]
    clock: OffsetClock
    opened: list[Store] = attrs.field(factory=list)

    def open(self) -> Store:
        store = open_store(self.spec, self.clock)
        self.opened.append(store)
        return store


@pytest.fixture
def clock() -> OffsetClock:
    """The real UTC time plus an offset the test moves; each job carries the offset."""
    return OffsetClock()


@pytest.fixture
def fake(clock: OffsetClock) -> FakeAmoCRM:
    return FakeAmoCRM(clock=clock, rate_limit=None)


@pytest.fixture(params=STORES)
def place(request: pytest.FixtureRequest, tmp_path: Path, clock: OffsetClock) -> Iterator[Place]:
    kind, name = str(request.param), uuid.uuid4().hex[:12]
    if kind == "sqlite":
        spec: dict[str, Any] = {"kind": "sqlite", "path": str(tmp_path / "kill.db")}
    elif kind == "postgres":
        spec = {"kind": "postgres", "url": request.getfixturevalue("postgres_url")}
        spec["table"] = f"k_{name}"
    else:
        spec = {"kind": "redis", "url": request.getfixturevalue("redis_url")}
        spec["prefix"] = f"k-{name}:"
    made = Place(spec, clock)
    if kind != "sqlite":
        made.open().migrate()  # type: ignore[attr-defined]
    yield made
    for store in made.opened:
        store.close()


# -- one scene: the fake served here, the store, the workers --------------------------------

#: Seconds past which a dead worker's lease and the kept-pair grace (two leases) have lapsed.
LAPSE = 60 + 120 + 5
GRANTS = {"exchange": "authorization_code", "refresh": "refresh_token"}


@attrs.define
class Scene:
    fake: FakeAmoCRM
    url: str
    place: Place
    clock: OffsetClock
    workers: Workers

    @property
    def config(self) -> dict[str, Any]:
        # A replay that meets a dead worker's lease waits settle_timeout for a change that
        # never comes: short, so the recovery costs little (the answer is the same).
        return job_config(self.fake, settle_timeout=0.2)

    def job(self, action: str, **extra: Any) -> dict[str, Any]:
        return {
            "store": self.place.spec,
            "url": self.url,
            "domain": self.fake.domain,
            "config": self.config,
            "offset": self.clock.offset.total_seconds(),
            "action": action,
            "connection_id": USER,
            "kill": None,
            **extra,
        }

    def local(self) -> AmoOAuth:
        """A service in this process on the same store, reaching the fake in-process."""
        http = httpx.Client(transport=self.fake.transport())
        store = open_store(self.place.spec, self.clock)
        return AmoOAuth(Config(**self.config), store=store, http=http, clock=self.clock)

    def consent(self) -> dict[str, Any]:
        with self.local() as oauth:
            given: dict[str, Any] = consent(oauth, self.fake, USER)
        return given

    def record(self) -> ConnectionRecord | None:
        store = self.place.open()
        return store.load(record_key(self.fake.client_id, USER)).record

    def run(self, job: dict[str, Any]) -> str:
        """Run ``job`` on a warm worker to its end; its answer, as a word (see ``word``)."""
        said = self.workers.run(job)
        assert said[-1].startswith("done "), said[-1]
        return word(json.loads(said[-1][5:]), self)

    def kill_at(self, job: dict[str, Any], point: KillPoint) -> None:
        """Run ``job`` in a new process that halts at ``point``, and SIGKILL it there."""
        halted = self.workers.kill_at(job, point.index, point.phase)
        assert halted == f"halt {point.index} {point.op} {point.phase}", halted

    def ops(self, job: dict[str, Any]) -> list[tuple[int, str, str]]:
        """The operations a clean run of ``job`` announced: (index, op class, phase)."""
        said = self.workers.run(job)
        assert said[-1].startswith("done ") and "error" not in json.loads(said[-1][5:]), said
        return [(int(i), op, phase) for _, i, op, phase in (s.split() for s in said[:-1])]


def word(done: dict[str, Any], scene: Scene) -> str:
    """A worker's answer as one word: ``token`` (a token, checked to be the stored one and
    live at amoCRM), a callback's outcome, ``status:<status>``, ``hook:<disconnected or the
    reason>``, ``sweep:<the report>``, or ``<Error>:<reason>``."""
    if "error" in done:
        error = done["error"]
        return f"{error['type']}:{error['reason']}"
    result = done["result"]
    if "token" in result:
        record = scene.record()
        assert record is not None and record.tokens is not None
        stored = record.tokens.access_token
        same, live = digest(stored) == result["token"], scene.fake.is_access_token_valid(stored)
        assert same and live
        return "token"
    if "outcome" in result:
        return str(result["outcome"])
    if "hook" in result:
        return f"hook:{result['hook']}"
    if "sweep" in result:
        return f"sweep:{result['sweep']}"
    return f"status:{result['status']}"


@attrs.frozen
class KillPoint:
    flow: str
    index: int
    op: str
    phase: str

    @property
    def id(self) -> str:
        return f"{self.flow}-{self.index:02d}-{self.op}-{self.phase}"


@pytest.fixture
def scene(fake: FakeAmoCRM, place: Place, clock: OffsetClock, workers: Workers) -> Iterator[Scene]:
    with fake.serve() as served:
        yield Scene(fake, served.url, place, clock, workers)


#: The flows whose operations the matrix enumerates and kills, each named by the job it
#: interrupts (``ready``).
FLOWS = ("exchange", "refresh", "verify", "moved", "hook", "disconnect", "sweep", "interrupted")


def ready(scene: Scene, flow: str) -> dict[str, Any]:
    """The job a flow's kill interrupts, with the state it starts from set up here:

    - ``exchange``: a first callback;
    - ``refresh``: an expired connection's ``access_token()`` (connected here, then a day and
      a minute later);
    - ``verify``: ``status()`` once a verification deferred by a 500 of ``/api/v4/account``
      is due (five seconds later);
    - ``moved``: ``access_token()`` of an expired connection whose account was renamed (a
      move takes the same path): the refresh refused, the lookup, the retry on the new
      host, the write;
    - ``hook``: amoCRM's disconnect hook after a real uninstall;
    - ``disconnect``: ``disconnect()`` of a connected connection;
    - ``sweep``: ``refresh_due()`` over an expired connection (one record, one at a time);
    - ``interrupted``: the callback replayed after a worker was killed holding the code's
      claim and the lease lapsed: it writes ``exchange_interrupted``.
    """
    given = scene.consent()
    if flow in ("exchange", "interrupted"):
        job = scene.job("callback", consent=given)
        if flow == "interrupted":
            claim = OPS["exchange"].index("ClaimOp")
            scene.kill_at(job, KillPoint("exchange", claim, "ClaimOp", "after"))
            scene.clock.offset += timedelta(seconds=LAPSE)
            job["offset"] = scene.clock.offset.total_seconds()
        return job
    if flow == "verify":
        scene.fake.fail_next("500", endpoint="api", path="/api/v4/account")
    with scene.local() as oauth:
        connected = oauth.handle_callback(given["query"], binding=given["binding"])
    if flow == "verify":
        assert connected.outcome is Outcome.IN_PROGRESS
        scene.clock.offset += timedelta(seconds=5)
        return scene.job("status")
    assert connected.outcome is Outcome.CONNECTED
    if flow == "hook":
        return scene.job("hook", hook=scene.fake.uninstall())
    if flow == "disconnect":
        return scene.job("disconnect")
    scene.clock.offset += timedelta(days=1, minutes=1)
    if flow == "moved":
        scene.fake.rename_account(None, "renamed")  # the move's path, on a routed domain
    return scene.job("sweep" if flow == "sweep" else "access_token")


def assert_consistent(scene: Scene) -> None:
    """The record (if written) decodes, has a lifecycle status and no lease beyond
    ``lease_ttl``; no code went to amoCRM twice, no refresh token a third time."""
    record = scene.record()
    if record is not None:
        assert_status_fits(record)
        if record.lease is not None:
            assert record.lease.expires_at <= scene.clock() + timedelta(seconds=60)
    assert scene.fake.token_call_count("authorization_code", "code_revoked") == 0
    assert scene.fake.token_call_count("refresh_token", "token_revoked") <= 1


#: Refresh sends one killed job may make: one, but two where the account moved (the send the
#: old host refused, then the retry on the new host).
REFRESH_SENDS = {"moved": 2}


def assert_killed_once(scene: Scene, flow: str) -> None:
    """Right after the kill: the killed worker sent its code at most once, its refresh token
    at most once to each host."""
    assert_consistent(scene)
    assert scene.fake.token_call_count("authorization_code", "ok") <= 1
    assert scene.fake.token_call_count("refresh_token") <= REFRESH_SENDS.get(flow, 1)


def assert_latest_pair_stored(scene: Scene) -> None:
    """The pair amoCRM issued last is the stored one (a rotation revokes the one it spent)."""
    record = scene.record()
    assert record is not None and record.status is ConnectionStatus.CONNECTED
    assert record.tokens is not None and record.tokens.refresh_token is not None
    live = scene.fake.is_refresh_token_valid(record.tokens.refresh_token)
    assert live


#: Answers after which the connection is usable: the next ``access_token()`` answers it.
USABLE = ("connected", "already_connected", "status:connected", "sweep:refreshed")
#: Answers after which the connection needs a new consent: a documented error, or gone.
GONE = (
    "failed",
    "ReauthorizationRequired:reauthorization_required",
    "ReauthorizationRequired:account_moved",
    "status:disconnected",
    "hook:disconnected",
    "hook:nothing_to_forget",
    "sweep:reauthorization_required",
)


def recover(scene: Scene, job: dict[str, Any]) -> list[str]:
    """What new workers answer after the kill: the killed job run again (the replayed
    callback, the next ``access_token()``, ``status()``, hook, ``disconnect()`` or sweep),
    again after a lapse (``LAPSE`` seconds later) while the answer says to wait; then the
    next ``access_token()`` where the answer leaves the connection usable, or a new consent
    where it is a documented error or disconnected."""
    answers: list[str] = []
    for _ in range(3):
        answer = scene.run({**job, "offset": scene.clock.offset.total_seconds()})
        answers.append(answer)
        if answer in USABLE:
            answers.append(scene.run(scene.job("access_token")))
            return answers
        if answer == "token":
            return answers
        if answer in GONE:
            answers.append(scene.run(scene.job("callback", consent=scene.consent())))
            answers.append(scene.run(scene.job("access_token")))
            return answers
        scene.clock.offset += timedelta(seconds=LAPSE)
        answers.append("lapse")
    return answers


def _points(flow: str, ops: list[str]) -> list[KillPoint]:
    return [
        KillPoint(flow, index, op, phase)
        for index, op in enumerate(ops)
        for phase in ("before", "after")
    ]


#: The operations each flow yields, in order, as a clean run announces them.
OPS = {
    "exchange": [
        # The record first (a known code is answered from it alone): a new connection's key
        # and the key it had before namespaces, both empty; then the ledger, then the record.
        "Load",
        "Load",
        "HolderOf",
        "HolderOf",
        "Load",
        "Load",
        "ClaimOp",
        "Send",
        "CompareAndSet",
        "Send",
        "CompareAndSet",
        "Emit",
    ],
    "refresh": ["Load", "CompareAndSet", "Send", "CompareAndSet"],
    "verify": ["Load", "CompareAndSet", "Send", "CompareAndSet", "Emit", "Load"],
    "moved": ["Load", "CompareAndSet", "Send", "Send", "Send", "CompareAndSet", "Emit"],
    "hook": ["FindByAccount", "ConsumeState", "Send", "Send", "Load", "CompareAndSet", "Emit"],
    "disconnect": ["Load", "CompareAndSet"],
    "sweep": ["DuePage", "Load", "CompareAndSet", "Send", "CompareAndSet"],
    # The record knows the code: answered from it, the lapsed lease written on the way.
    "interrupted": ["Load", "CompareAndSet"],
}
POINTS = [point for flow, ops in OPS.items() for point in _points(flow, ops)]

# What new workers answer after each kill (``recover``), by what the kill left behind:
#: nothing claimed: the replay exchanges the code (once) and connects.
FRESH = ("connected", "token")
#: the code claimed, perhaps sent, nothing stored: the replay waits the lease out; then the
#: loader writes exchange_interrupted (the code is never resent) and a new consent connects.
INTERRUPTED = ("in_progress", "lapse", "failed", "connected", "token")
#: the pair stored (exchanged), unverified: after the lease the next caller verifies it.
VERIFY_LATER = ("in_progress", "lapse", "already_connected", "token")
#: connected, stored: the replay is answered from the ledger.
DONE = ("already_connected", "token")
#: the refresh not claimed, or its new pair stored: the next call answers.
REFRESHED = ("token",)
#: the refresh claimed, its token not sent: after the lease the next call refreshes.
CLAIMED = ("TryAgainLater:refresh_in_progress", "lapse", "token")
#: amoCRM rotated the pair and the only copy died with the worker: amoCRM refuses the spent
#: token sent again, callers hear kept_pair_pending for the grace, then
#: reauthorization_required; a new consent connects (the documented exception).
ROTATED_AND_LOST = (
    "TryAgainLater:refresh_in_progress",
    "lapse",
    "TryAgainLater:kept_pair_pending",
    "lapse",
    "ReauthorizationRequired:reauthorization_required",
    "connected",
    "token",
)
#: verification: not claimed, or concluded: the next status() verifies (or reads connected).
VERIFIED = ("status:connected", "token")
#: verification claimed, not concluded: status() reads exchanged until the lease lapses.
VERIFY_CLAIMED = ("status:exchanged", "lapse", "status:connected", "token")
#: the hook's check not taken: the replayed hook checks and disconnects.
HOOK_HEARD = ("hook:disconnected", "connected", "token")
#: the hook's check of this interval taken, the record not written: the replay is paced
#: until the next interval, then checks and disconnects.
HOOK_PACED = ("hook:hook_paced", "lapse", "hook:disconnected", "connected", "token")
#: the record disconnected: the replayed hook has nothing to forget.
HOOK_DONE = ("hook:nothing_to_forget", "connected", "token")
#: disconnect() replayed: disconnected either way.
DISCONNECTED = ("status:disconnected", "connected", "token")
#: the sweep's refresh not claimed, or stored: the next sweep (or call) answers.
SWEPT = ("sweep:refreshed", "token")
#: the sweep's refresh claimed, not sent: the next sweep after the lease refreshes.
SWEEP_CLAIMED = ("sweep:refresh_in_progress", "lapse", "sweep:refreshed", "token")
#: as ROTATED_AND_LOST, as the next sweeps report it.
SWEEP_LOST = (
    "sweep:refresh_in_progress",
    "lapse",
    "sweep:kept_pair_pending",
    "lapse",
    "sweep:reauthorization_required",
    "connected",
    "token",
)
#: the replay writing exchange_interrupted killed: the next replay writes (or reads) it.
INTERRUPTED_AGAIN = ("failed", "connected", "token")
EXPECTED: dict[str, tuple[str, ...]] = {
    "exchange-00-Load-before": FRESH,
    "exchange-00-Load-after": FRESH,
    "exchange-01-Load-before": FRESH,
    "exchange-01-Load-after": FRESH,
    "exchange-02-HolderOf-before": FRESH,
    "exchange-02-HolderOf-after": FRESH,
    "exchange-03-HolderOf-before": FRESH,
    "exchange-03-HolderOf-after": FRESH,
    "exchange-04-Load-before": FRESH,
    "exchange-04-Load-after": FRESH,
    "exchange-05-Load-before": FRESH,
    "exchange-05-Load-after": FRESH,
    "exchange-06-ClaimOp-before": FRESH,
    "exchange-06-ClaimOp-after": INTERRUPTED,
    "exchange-07-Send-before": INTERRUPTED,
    "exchange-07-Send-after": INTERRUPTED,
    "exchange-08-CompareAndSet-before": INTERRUPTED,
    "exchange-08-CompareAndSet-after": VERIFY_LATER,
    "exchange-09-Send-before": VERIFY_LATER,
    "exchange-09-Send-after": VERIFY_LATER,
    "exchange-10-CompareAndSet-before": VERIFY_LATER,
    "exchange-10-CompareAndSet-after": DONE,
    "exchange-11-Emit-before": DONE,
    "exchange-11-Emit-after": DONE,
    "refresh-00-Load-before": REFRESHED,
    "refresh-00-Load-after": REFRESHED,
    "refresh-01-CompareAndSet-before": REFRESHED,
    "refresh-01-CompareAndSet-after": CLAIMED,
    "refresh-02-Send-before": CLAIMED,
    "refresh-02-Send-after": ROTATED_AND_LOST,
    "refresh-03-CompareAndSet-before": ROTATED_AND_LOST,
    "refresh-03-CompareAndSet-after": REFRESHED,
    "verify-00-Load-before": VERIFIED,
    "verify-00-Load-after": VERIFIED,
    "verify-01-CompareAndSet-before": VERIFIED,
    "verify-01-CompareAndSet-after": VERIFY_CLAIMED,
    "verify-02-Send-before": VERIFY_CLAIMED,
    "verify-02-Send-after": VERIFY_CLAIMED,
    "verify-03-CompareAndSet-before": VERIFY_CLAIMED,
    "verify-03-CompareAndSet-after": VERIFIED,
    "verify-04-Emit-before": VERIFIED,
    "verify-04-Emit-after": VERIFIED,
    "verify-05-Load-before": VERIFIED,
    "verify-05-Load-after": VERIFIED,
    "moved-00-Load-before": REFRESHED,
    "moved-00-Load-after": REFRESHED,
    "moved-01-CompareAndSet-before": REFRESHED,
    "moved-01-CompareAndSet-after": CLAIMED,
    "moved-02-Send-before": CLAIMED,
    "moved-02-Send-after": CLAIMED,
    "moved-03-Send-before": CLAIMED,
    "moved-03-Send-after": CLAIMED,
    "moved-04-Send-before": CLAIMED,
    # The retry on the new host rotated the pair, whose only copy died: the lookup refuses the
    # spent token sent again, and the lost pair is awaited like the plain refresh's.
    "moved-04-Send-after": ROTATED_AND_LOST,
    "moved-05-CompareAndSet-before": ROTATED_AND_LOST,
    "moved-05-CompareAndSet-after": REFRESHED,
    "moved-06-Emit-before": REFRESHED,
    "moved-06-Emit-after": REFRESHED,
    "hook-00-FindByAccount-before": HOOK_HEARD,
    "hook-00-FindByAccount-after": HOOK_HEARD,
    "hook-01-ConsumeState-before": HOOK_HEARD,
    "hook-01-ConsumeState-after": HOOK_PACED,
    "hook-02-Send-before": HOOK_PACED,
    "hook-02-Send-after": HOOK_PACED,
    "hook-03-Send-before": HOOK_PACED,
    "hook-03-Send-after": HOOK_PACED,
    "hook-04-Load-before": HOOK_PACED,
    "hook-04-Load-after": HOOK_PACED,
    "hook-05-CompareAndSet-before": HOOK_PACED,
    "hook-05-CompareAndSet-after": HOOK_DONE,
    "hook-06-Emit-before": HOOK_DONE,
    "hook-06-Emit-after": HOOK_DONE,
    "disconnect-00-Load-before": DISCONNECTED,
    "disconnect-00-Load-after": DISCONNECTED,
    "disconnect-01-CompareAndSet-before": DISCONNECTED,
    "disconnect-01-CompareAndSet-after": DISCONNECTED,
    "sweep-00-DuePage-before": SWEPT,
    "sweep-00-DuePage-after": SWEPT,
    "sweep-01-Load-before": SWEPT,
    "sweep-01-Load-after": SWEPT,
    "sweep-02-CompareAndSet-before": SWEPT,
    "sweep-02-CompareAndSet-after": SWEEP_CLAIMED,
    "sweep-03-Send-before": SWEEP_CLAIMED,
    "sweep-03-Send-after": SWEEP_LOST,
    "sweep-04-CompareAndSet-before": SWEEP_LOST,
    "sweep-04-CompareAndSet-after": SWEPT,
    "interrupted-00-Load-before": INTERRUPTED_AGAIN,
    "interrupted-00-Load-after": INTERRUPTED_AGAIN,
    "interrupted-01-CompareAndSet-before": INTERRUPTED_AGAIN,
    "interrupted-01-CompareAndSet-after": INTERRUPTED_AGAIN,
}


#: Operations that leave nothing behind (a read, an event delivered in the process): a kill
#: before one leaves the state a kill before the next operation leaves.
LEAVES_NOTHING = frozenset({"Load", "HolderOf", "FindByAccount", "DuePage", "Emit"})
#: The flows the matrix first covered, killed at every point in CI too.
FIRST = ("exchange", "refresh")
#: The points killed: every one under PROOF_FULL; in CI, the first flows' and the others'
#: 'before' points of operations that leave something behind (the CI budget).
KILLED = [
    point
    for point in POINTS
    if PROOF_FULL
    or point.flow in FIRST
    or (point.phase == "before" and point.op not in LEAVES_NOTHING)
]


@contextmanager
def fresh_scene(root: Path, workers: Workers) -> Iterator[Scene]:
    """A scene of its own (fake, clock, SQLite file under ``root``), outside the fixtures."""
    root.mkdir()
    clock = OffsetClock()
    fake = FakeAmoCRM(clock=clock, rate_limit=None)
    place = Place({"kind": "sqlite", "path": str(root / "kill.db")}, clock)
    with fake.serve() as served:
        yield Scene(fake, served.url, place, clock, workers)
    for store in place.opened:
        store.close()


@pytest.mark.parametrize("flow", FLOWS)
def test_every_yield_point_is_covered(flow: str, tmp_path: Path, workers: Workers) -> None:
    """A clean run of the flow under the announcing driver yields exactly the table's
    operations, ``AmoOAuth`` and ``AsyncAmoOAuth`` alike (each in this process, on a scene of
    its own): so a new yield fails here until the table has its points, and the kill rows,
    run on ``AmoOAuth``, cover the async service's operations too."""
    said: dict[str, list[str]] = {}
    for name, runner in (("sync", run), ("async", arun)):
        with fresh_scene(tmp_path / name, workers) as scene:
            lines: list[str] = []
            done = runner(ready(scene, flow), lines.append)
            assert "error" not in done, done
            said[name] = lines
    table = [f"op {point.index} {point.op} {point.phase}" for point in _points(flow, OPS[flow])]
    assert said["sync"] == table
    assert said["async"] == said["sync"]


def test_every_point_has_its_expected_recovery() -> None:
    assert set(OPS) == set(FLOWS)
    assert [point.id for point in POINTS] == list(EXPECTED)


@pytest.mark.parametrize("point", KILLED, ids=[point.id for point in KILLED])
def test_kill(point: KillPoint, scene: Scene) -> None:
    job = ready(scene, point.flow)
    scene.kill_at(job, point)
    assert_killed_once(scene, point.flow)
    answers = recover(scene, job)
    assert tuple(answers) == EXPECTED[point.id]
    assert_consistent(scene)
    assert_latest_pair_stored(scene)
