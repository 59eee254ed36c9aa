"""One worker process of tests/test_kill_matrix.py: runs one flow per job and announces every
operation the flow yields, so that the test can SIGKILL it at a chosen one.

``python _kill_worker.py`` prints ``ready`` once imported, then reads one JSON job per line of
stdin and runs each in a process forked for it (see ``main``), which answers with lines on
stdout:

- ``op <index> <Op class> before`` when the service is about to perform the flow's operation
  number ``index`` (from 0, counted over this job), ``op <index> <Op class> after`` once it has;
- ``halt <index> <Op class> <phase>`` at the job's kill point (``kill``: ``{"index": ...,
  "phase": "before" | "after"}``), after which the worker does nothing more, waiting for the
  SIGKILL: before the operation ran, or after it ran and before the flow was given its result;
- ``done <json>`` when the job ends: ``{"result": ...}`` or ``{"error": {"type", "reason"}}``.

A job: ``store`` (``_proof_worker.open_store``'s spec), ``url`` and ``domain`` of the served
FakeAmoCRM, ``config`` (``Config`` keyword arguments, JSON), ``offset`` (seconds added to the
real UTC time: the clock the test and the fake share), ``action`` (``callback`` with
``consent``, ``access_token``, ``status``, ``disconnect``, ``hook`` with ``hook``, the hook's
query, or ``sweep``: ``refresh_due`` one connection at a time), ``connection_id``, and ``kill``
(or null).

The test process also calls ``run`` and ``arun`` (an ``AsyncAmoOAuth``) itself, for a clean
run whose announcements it collects: the same operations, the async service's too.

One process serves jobs until stdin ends, so that a recovery job and the next kill pay no
Python start-up: a kill ends only the job's own process. Tokens are reported as sha256
digests, never as themselves.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from _proof_worker import acallback, callback, digest, open_store
from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    CallbackResult,
    Config,
    HookResult,
    RefreshReport,
)
from amo_oauth._ops import Op
from amo_oauth._service_core import Turn
from amo_oauth.testing import AsyncLoopbackTransport, LoopbackTransport


class Announcer:
    """Numbers the operations one job's flows yield, says each before and after it runs, and
    halts at the job's kill point (``kill``, or None)."""

    def __init__(self, kill: dict[str, Any] | None, say: Callable[[str], None]) -> None:
        self._kill = kill
        self._say = say
        self._index = 0
        #: Off once the job's call returned: close() performs operations of its own.
        self.on = True
        self._lock = threading.Lock()

    def number(self) -> int:
        with self._lock:
            index, self._index = self._index, self._index + 1
        return index

    def announce(self, index: int, name: str, phase: str) -> None:
        if not self.on:
            return
        kill = self._kill
        if kill is not None and kill["index"] == index and kill["phase"] == phase:
            self._say(f"halt {index} {name} {phase}")
            threading.Event().wait()  # the SIGKILL comes here
        self._say(f"op {index} {name} {phase}")


class Announcing(AmoOAuth):
    """An ``AmoOAuth`` that announces each operation its flows yield and halts at one."""

    def __init__(self, *args: Any, announcer: Announcer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.announcer = announcer

    def _perform(self, op: Op, turn: Turn | None = None) -> Any:
        index, name = self.announcer.number(), type(op).__name__
        self.announcer.announce(index, name, "before")
        try:
            return super()._perform(op, turn)
        finally:  # a raised failure too: the flow has not heard it yet
            self.announcer.announce(index, name, "after")


class AsyncAnnouncing(AsyncAmoOAuth):
    """``Announcing`` for the awaiting service: the same announcements, never a kill (the
    test compares its operations with the blocking service's, in its own process)."""

    def __init__(self, *args: Any, announcer: Announcer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.announcer = announcer

    async def _perform(self, op: Op, turn: Turn | None = None) -> Any:
        index, name = self.announcer.number(), type(op).__name__
        self.announcer.announce(index, name, "before")
        try:
            return await super()._perform(op, turn)
        finally:  # a raised failure too: the flow has not heard it yet
            self.announcer.announce(index, name, "after")


def _config(job: dict[str, Any]) -> Config:
    options = dict(job["config"])
    if "lease_ttl" in options:  # seconds in the job
        options["lease_ttl"] = timedelta(seconds=options["lease_ttl"])
    return Config(**options)


def _act(oauth: AmoOAuth, job: dict[str, Any]) -> dict[str, Any]:
    action, connection_id = job["action"], job["connection_id"]
    if action == "callback":
        return _called_back(callback(oauth, job["consent"]))
    if action == "access_token":
        return {"token": digest(oauth.access_token(connection_id))}
    if action == "disconnect":
        return {"status": oauth.disconnect(connection_id).status.value}
    if action == "hook":
        return _hooked(oauth.handle_disconnect_hook(job["hook"]))
    if action == "sweep":
        return _swept(oauth.refresh_due(SWEEP_WITHIN, concurrency=1))
    return {"status": oauth.status(connection_id).status.value}


async def _aact(oauth: AsyncAmoOAuth, job: dict[str, Any]) -> dict[str, Any]:
    """``_act`` for an ``AsyncAmoOAuth``."""
    action, connection_id = job["action"], job["connection_id"]
    if action == "callback":
        return _called_back(await acallback(oauth, job["consent"]))
    if action == "access_token":
        return {"token": digest(await oauth.access_token(connection_id))}
    if action == "disconnect":
        return {"status": (await oauth.disconnect(connection_id)).status.value}
    if action == "hook":
        return _hooked(await oauth.handle_disconnect_hook(job["hook"]))
    if action == "sweep":
        return _swept(await oauth.refresh_due(SWEEP_WITHIN, concurrency=1))
    return {"status": (await oauth.status(connection_id)).status.value}


#: The sweep's window: a pair refreshed a day ago expires in 89 days, so it is due.
SWEEP_WITHIN = timedelta(days=90)


def _called_back(result: CallbackResult) -> dict[str, Any]:
    return {"outcome": result.outcome.value, "status": result.connection.status.value}


def _hooked(result: HookResult) -> dict[str, Any]:
    return {"hook": "disconnected" if result.disconnected else str(result.reason)}


def _swept(report: RefreshReport) -> dict[str, Any]:
    """The sweep's one connection: ``refreshed``, or the reason it failed."""
    if report.refreshed:
        return {"sweep": "refreshed"}
    return {"sweep": ",".join(str(reason) for _, reason in report.failed)}


def _errored(error: Exception) -> dict[str, Any]:
    return {"error": {"type": type(error).__name__, "reason": getattr(error, "reason", None)}}


def _clock(job: dict[str, Any]) -> Callable[[], datetime]:
    offset = timedelta(seconds=job["offset"])

    def clock() -> datetime:
        return datetime.now(UTC) + offset

    return clock


def run(job: dict[str, Any], say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one job; what it answered, or the error it raised (type and reason only).
    ``say`` hears each announcement (``op ...``, ``halt ...``)."""
    clock = _clock(job)
    announcer = Announcer(job.get("kill"), say)
    http = httpx.Client(transport=LoopbackTransport.to(job["url"], domain=job["domain"]))
    store = open_store(job["store"], clock)
    oauth = Announcing(_config(job), store=store, http=http, clock=clock, announcer=announcer)
    try:
        return {"result": _act(oauth, job)}
    except Exception as error:
        return _errored(error)
    finally:
        announcer.on = False
        oauth.close()
        http.close()


def arun(job: dict[str, Any], say: Callable[[str], None]) -> dict[str, Any]:
    """``run`` on an ``AsyncAmoOAuth``, in this process (a job without a kill)."""
    assert job.get("kill") is None

    async def go() -> dict[str, Any]:
        clock = _clock(job)
        announcer = Announcer(None, say)
        transport = AsyncLoopbackTransport.to(job["url"], domain=job["domain"])
        async with httpx.AsyncClient(transport=transport) as http:
            store = open_store(job["store"], clock)
            oauth = AsyncAnnouncing(
                _config(job), store=store, http=http, clock=clock, announcer=announcer
            )
            try:
                return {"result": await _aact(oauth, job)}
            except Exception as error:
                return _errored(error)
            finally:
                announcer.on = False
                await oauth.aclose()

    return asyncio.run(go())


def main() -> None:
    """Serve jobs until stdin ends, each in a child forked from this warm process: the
    child prints ``pid <pid>``, runs the job and ends; this process then prints ``reaped
    <code>`` (the child's exit status, ``-9`` once SIGKILLed) and takes the next job. Forking
    costs no Python start-up, and nothing of one job's service (threads, connections) exists
    here to be inherited: this process only reads stdin."""
    print("ready", flush=True)
    for line in iter(sys.stdin.readline, ""):
        if not line.strip():
            continue
        sys.stdout.flush()
        child = os.fork()
        if child == 0:
            try:
                print(f"pid {os.getpid()}", flush=True)
                print(f"done {json.dumps(run(json.loads(line)))}", flush=True)
            finally:
                os._exit(0)
        _, status = os.waitpid(child, 0)
        print(f"reaped {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    main()
