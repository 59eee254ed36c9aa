"""One worker process of tests/test_cross_process.py, on any store: SQLite file, Postgres, Redis.

``python _proof_worker.py``, then one job file's path per line of stdin. For each job it builds
an ``AmoOAuth`` (``mode`` ``threads``) or an ``AsyncAmoOAuth`` (``mode`` ``asyncio``) on the
job's store, reaching the served FakeAmoCRM over loopback HTTP, prints ``ready``, waits for a
line on stdin so that every process starts at once, runs ``count`` calls of ``action`` at the
same moment (threads, or asyncio tasks) and prints one JSON line: ``{"pid": ..., "results":
[...], "errors": [...], "seconds": ...}`` (from the start line to the last call's end). Tokens
are reported as sha256 digests, never as themselves.

The job: ``store`` (see ``open_store``), ``url`` and ``domain`` of the served fake, ``config``
(``Config`` keyword arguments), ``offset`` (seconds added to the real UTC time: the clock every
process and the fake share), ``mode``, ``count``, ``action`` (``callback`` with ``consent``, or
``access_token`` with ``connection_id``).

Every consent goes through ``consent`` (in the test process) and ``callback`` /
``acallback`` (wherever the redirect arrives): one place to change when the callback needs
more than the redirect's query.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from amo_oauth import AmoOAuth, AsyncAmoOAuth, CallbackResult, Config, Store
from amo_oauth.testing import AsyncLoopbackTransport, FakeAmoCRM, LoopbackTransport

#: What a consent carries to the callback, as JSON: the redirect's ``query``, and the
#: ``binding`` of the browser that began it (its cookie).
Consent = dict[str, Any]


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def consent(oauth: AmoOAuth, fake: FakeAmoCRM, connection_id: str) -> Consent:
    """Begin connecting ``connection_id`` and let the fake's consent page answer: what the
    browser brings to the callback."""
    request = oauth.begin(connection_id)
    query = dict(parse_qsl(urlsplit(fake.authorize(request.state)).query))
    return {"query": query, "binding": request.binding}


async def aconsent(oauth: AsyncAmoOAuth, fake: FakeAmoCRM, connection_id: str) -> Consent:
    """``consent`` for an ``AsyncAmoOAuth``."""
    request = await oauth.begin(connection_id)
    query = dict(parse_qsl(urlsplit(fake.authorize(request.state)).query))
    return {"query": query, "binding": request.binding}


def callback(oauth: AmoOAuth, given: Consent) -> CallbackResult:
    """The redirect of ``given`` arriving at this worker, from the browser that began it."""
    return oauth.handle_callback(given["query"], binding=given["binding"])


async def acallback(oauth: AsyncAmoOAuth, given: Consent) -> CallbackResult:
    """``callback`` for an ``AsyncAmoOAuth``."""
    return await oauth.handle_callback(given["query"], binding=given["binding"])


def open_store(spec: dict[str, Any], clock: Callable[[], datetime] | None = None) -> Store:
    """The store a job names: ``{"kind": "sqlite", "path": ...}``, ``{"kind": "postgres",
    "url": ..., "table": ...}`` or ``{"kind": "redis", "url": ..., "prefix": ...}``; ``timeout``
    (seconds) for the server stores, when given. With ``clock`` (the test's moved clock) the
    store reads it too: leases and the ledger are judged by the store's clock."""
    kind = spec["kind"]
    options: dict[str, Any] = {}
    if "timeout" in spec:
        options["timeout"] = spec["timeout"]
    if clock is not None and kind != "sqlite":
        options["clock_offset"] = lambda: clock() - datetime.now(UTC)
    if kind == "sqlite":
        from amo_oauth import SQLiteStore

        return SQLiteStore(spec["path"], clock=clock)
    if kind == "postgres":
        from amo_oauth import PostgresStore

        return PostgresStore(spec["url"], table=spec["table"], **options)
    if kind == "redis":
        from amo_oauth import RedisStore

        return RedisStore(spec["url"], prefix=spec["prefix"], **options)
    raise ValueError(f"unknown store kind {kind!r}")


def _report(outcome: CallbackResult) -> dict[str, Any]:
    return {"outcome": outcome.outcome.value, "duplicate": outcome.duplicate}


def _config(job: dict[str, Any]) -> Config:
    options = dict(job["config"])
    if "lease_ttl" in options:  # seconds in the job
        options["lease_ttl"] = timedelta(seconds=options["lease_ttl"])
    return Config(**options)


def threads_at_once(run: Callable[[], dict[str, Any]], count: int) -> dict[str, Any]:
    """Print ``ready``, wait for the start line on stdin, then run ``run`` in ``count`` threads
    released together at one barrier: ``{"results": [...], "errors": [...], "seconds": ...}``
    (from the start line to the last call's end). Shared with ``_mp_worker.py``."""
    barrier = threading.Barrier(count)
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        try:
            outcome = run()
        except Exception as error:  # reported, and the test fails on any
            with lock:
                errors.append(f"{type(error).__name__}: {error}")
        else:
            with lock:
                results.append(outcome)

    print("ready", flush=True)
    sys.stdin.readline()
    started = time.monotonic()
    pool = [threading.Thread(target=worker) for _ in range(count)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return {"results": results, "errors": errors, "seconds": time.monotonic() - started}


def _threads(job: dict[str, Any], clock: Callable[[], datetime]) -> dict[str, Any]:
    http = httpx.Client(transport=LoopbackTransport.to(job["url"], domain=job["domain"]))
    oauth = AmoOAuth(_config(job), store=open_store(job["store"], clock), http=http, clock=clock)

    def run() -> dict[str, Any]:
        if job["action"] == "callback":
            return _report(callback(oauth, job["consent"]))
        return {"token": digest(oauth.access_token(job["connection_id"]))}

    try:
        oauth.status("warm-up")  # connect before the start line, not after
        return threads_at_once(run, int(job["count"]))
    finally:
        oauth.close()
        http.close()


async def _tasks(job: dict[str, Any], clock: Callable[[], datetime]) -> dict[str, Any]:
    transport = AsyncLoopbackTransport.to(job["url"], domain=job["domain"])
    http = httpx.AsyncClient(transport=transport)
    oauth = AsyncAmoOAuth(
        _config(job), store=open_store(job["store"], clock), http=http, clock=clock
    )

    async def run() -> dict[str, Any]:
        if job["action"] == "callback":
            return _report(await acallback(oauth, job["consent"]))
        return {"token": digest(await oauth.access_token(job["connection_id"]))}

    try:
        await oauth.status("warm-up")  # connect before the start line, not after
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        started = time.monotonic()
        calls: list[Awaitable[dict[str, Any]]] = [run() for _ in range(int(job["count"]))]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        return {
            "results": [o for o in outcomes if not isinstance(o, BaseException)],
            "seconds": time.monotonic() - started,
            "errors": [
                f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)
            ],
        }
    finally:
        await oauth.aclose()
        await http.aclose()


def run_job(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    offset = timedelta(seconds=job["offset"])

    def clock() -> datetime:
        return datetime.now(UTC) + offset

    if job.get("mode", "threads") == "asyncio":
        report = asyncio.run(_tasks(job, clock))
    else:
        report = _threads(job, clock)
    print(json.dumps({"pid": os.getpid(), **report}), flush=True)


def main() -> None:
    """Run jobs, one per line of stdin (a job file's path), until stdin ends: one process
    serves many tests, so that each does not pay for starting Python."""
    for line in iter(sys.stdin.readline, ""):
        if line.strip():
            run_job(line.strip())


if __name__ == "__main__":
    main()
