"""One worker process of tests/test_multiprocess.py: several threads on one shared SQLite file.

``python _mp_worker.py JOB.json``: reads the job, builds an ``AmoOAuth`` on ``SQLiteStore(db)``
that reaches the served FakeAmoCRM over loopback HTTP (``LoopbackTransport.to``), prints
``ready``, waits for a line on stdin so that every process starts at once, runs ``threads``
threads that all do ``action`` at the same moment, and prints one JSON line:
``{"pid": ..., "results": [...], "errors": [...]}``. Tokens are reported as sha256 digests,
never as themselves.

The job: ``db``, ``url`` and ``domain`` of the served fake, ``config`` (``Config`` keyword
arguments), ``offset`` (seconds added to the real UTC time: the clock every process and the
fake share), ``threads``, ``action`` (``callback`` with ``query``, or ``access_token`` with
``connection_id``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from _proof_worker import digest, threads_at_once
from amo_oauth import AmoOAuth, Config, SQLiteStore
from amo_oauth.testing import LoopbackTransport


def task(oauth: AmoOAuth, job: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    if job["action"] == "callback":

        def callback() -> dict[str, Any]:
            # The job's redirect comes back in the browser that started it (its binding).
            result = oauth.handle_callback(job["query"], binding=job.get("binding"))
            return {"outcome": result.outcome.value, "duplicate": result.duplicate}

        return callback

    def access_token() -> dict[str, Any]:
        return {"token": digest(oauth.access_token(job["connection_id"]))}

    return access_token


def main(job_path: str) -> None:
    with open(job_path, encoding="utf-8") as file:
        job = json.load(file)
    offset = timedelta(seconds=job["offset"])
    transport = LoopbackTransport.to(job["url"], domain=job["domain"])
    http = httpx.Client(transport=transport)
    oauth = AmoOAuth(
        Config(**job["config"]),
        store=SQLiteStore(job["db"]),
        http=http,
        clock=lambda: datetime.now(UTC) + offset,
    )
    run = task(oauth, job)
    try:
        oauth.status("warm-up")  # open the database file before the start line, not after
        report = threads_at_once(run, int(job["threads"]))
        print(
            json.dumps(
                {"pid": os.getpid(), "results": report["results"], "errors": report["errors"]}
            ),
            flush=True,
        )
    finally:
        oauth.close()
        http.close()


if __name__ == "__main__":
    main(sys.argv[1])
