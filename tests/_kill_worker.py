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
``consent``, ``access_token`` or ``status``), ``connection_id``, and ``kill`` (or null).

One process serves jobs until stdin ends, so that a recovery job and the next kill pay no
Python start-up: a kill ends only the job's own process. Tokens are reported as sha256
digests, never as themselves.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from _proof_worker import callback, digest, open_store
from amo_oauth import AmoOAuth, Config
from amo_oauth._ops import Op
from amo_oauth._service_core import Turn
from amo_oauth.testing import LoopbackTransport


class Announcing(AmoOAuth):
    """An ``AmoOAuth`` that announces each operation its flows yield and halts at one."""

    def __init__(self, *args: Any, kill: dict[str, Any] | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kill = kill
        self._index = 0
        #: Off once the job's call returned: close() performs operations of its own.
        self.announcing = True
        self._lock = threading.Lock()

    def _perform(self, op: Op, turn: Turn | None = None) -> Any:
        with self._lock:
            index, self._index = self._index, self._index + 1
        name = type(op).__name__
        self._announce(index, name, "before")
        result = super()._perform(op, turn)
        self._announce(index, name, "after")
        return result

    def _announce(self, index: int, name: str, phase: str) -> None:
        if not self.announcing:
            return
        kill = self._kill
        if kill is not None and kill["index"] == index and kill["phase"] == phase:
            print(f"halt {index} {name} {phase}", flush=True)
            threading.Event().wait()  # the SIGKILL comes here
        print(f"op {index} {name} {phase}", flush=True)


def _config(job: dict[str, Any]) -> Config:
    options = dict(job["config"])
    if "lease_ttl" in options:  # seconds in the job
        options["lease_ttl"] = timedelta(seconds=options["lease_ttl"])
    return Config(**options)


def _act(oauth: AmoOAuth, job: dict[str, Any]) -> dict[str, Any]:
    action, connection_id = job["action"], job["connection_id"]
    if action == "callback":
        result = callback(oauth, job["consent"])
        return {"outcome": result.outcome.value, "status": result.connection.status.value}
    if action == "access_token":
        return {"token": digest(oauth.access_token(connection_id))}
    return {"status": oauth.status(connection_id).status.value}


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job; what it answered, or the error it raised (type and reason only)."""
    offset = timedelta(seconds=job["offset"])

    def clock() -> datetime:
        return datetime.now(UTC) + offset

    http = httpx.Client(transport=LoopbackTransport.to(job["url"], domain=job["domain"]))
    store = open_store(job["store"], clock)
    oauth = Announcing(_config(job), store=store, http=http, clock=clock, kill=job.get("kill"))
    try:
        return {"result": _act(oauth, job)}
    except Exception as error:
        return {"error": {"type": type(error).__name__, "reason": getattr(error, "reason", None)}}
    finally:
        oauth.announcing = False
        oauth.close()
        http.close()


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
