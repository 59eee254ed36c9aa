"""Several OS processes, one SQLite file, one FakeAmoCRM on loopback: still exactly once.

The bursts and kills on every store are in ``test_cross_process.py``; this module keeps what
is SQLite's own (a second store object on one file) and ``LoopbackTransport.to``.

The fake runs in this process (``fake.serve()``); each worker (``_mp_worker.py``, run with
``sys.executable``) reaches it over real HTTP through ``LoopbackTransport.to(url, domain=...)``
and shares the store's file. Every process and the fake read the same clock: the real UTC time
plus an offset, so a test moves time for everyone by passing the offset along.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

import _served_fake
from amo_oauth import AmoOAuth, Outcome, SQLiteStore
from amo_oauth.testing import AsyncLoopbackTransport, FakeAmoCRM, LoopbackTransport

from helpers import OffsetClock, config_for, query_of

WORKER = Path(__file__).with_name("_mp_worker.py")
PROCESSES = 4
THREADS = 8
USER = "user-42"
SETTLE = 10.0  # seconds a duplicate waits for the winner: ample, so none reports in_progress

# The served fake and its clock (shared with the other worker-process tests).
clock, fake, served = _served_fake.clock, _served_fake.fake, _served_fake.served


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "shared.db"


@pytest.fixture
def parent(fake: FakeAmoCRM, served: str, db: Path, clock: OffsetClock) -> Iterator[AmoOAuth]:
    """This process's own AmoOAuth on the same file and server (it also creates the schema)."""
    http = httpx.Client(transport=LoopbackTransport.to(served, domain=fake.domain))
    oauth = AmoOAuth(
        config_for(fake, settle_timeout=SETTLE), store=SQLiteStore(db), http=http, clock=clock
    )
    oauth.status(USER)
    yield oauth
    oauth.close()
    http.close()


def run_workers(tmp_path: Path, job: dict[str, Any]) -> list[dict[str, Any]]:
    """Start PROCESSES workers, release them together, return each one's JSON report."""
    job_file = tmp_path / f"job-{job['action']}.json"
    job_file.write_text(json.dumps(job), encoding="utf-8")
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(job_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line == "ready\n", f"worker did not start: {line!r} {proc.stderr}"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=15)
            assert proc.returncode == 0, f"worker failed ({proc.returncode}): {err[-2000:]}"
            reports.append(json.loads(out))
        return reports
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def job_for(
    fake: FakeAmoCRM, served: str, db: Path, clock: OffsetClock, **task: Any
) -> dict[str, Any]:
    config = _served_fake.job_config(fake, settle_timeout=SETTLE)
    return {
        "db": str(db),
        "url": served,
        "domain": fake.domain,
        "config": config,
        "offset": clock.offset.total_seconds(),
        "threads": THREADS,
        **task,
    }


def gathered(reports: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str], int]:
    results = [result for report in reports for result in report["results"]]
    errors = [error for report in reports for error in report["errors"]]
    return results, errors, len({report["pid"] for report in reports})


# -- LoopbackTransport.to: a loopback route from just the URL and the domain -----------------


def test_loopback_transport_from_url_routes_the_domain(fake: FakeAmoCRM, served: str) -> None:
    with httpx.Client(transport=LoopbackTransport.to(served, domain="amocrm.ru")) as http:
        response = http.post(
            f"https://{fake.account_host}/oauth2/access_token",
            json={"grant_type": "authorization_code", "code": "nope"},
        )
        assert response.status_code == 400  # the fake answered, as the account host
        with pytest.raises(httpx.ConnectError, match=r"no route to host 'evil\.example'"):
            http.get("https://evil.example/oauth2/access_token")
        with pytest.raises(httpx.ConnectError, match="no route"):
            http.get("https://amocrm.ru.evil.example/")
    assert [(r.host, r.path, r.status) for r in fake.requests] == [
        ("test.amocrm.ru", "/oauth2/access_token", 400)
    ]


def test_async_loopback_transport_from_url(fake: FakeAmoCRM, served: str) -> None:
    async def main() -> int:
        transport = AsyncLoopbackTransport.to(served, domain=fake.domain)
        async with httpx.AsyncClient(transport=transport) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get("https://kommo.com/")
            response = await http.get(f"https://{fake.account_host}/api/v4/account")
            return response.status_code

    assert asyncio.run(main()) == 401
    assert fake.api_calls == {("/api/v4/account", "unauthorized"): 1}


@pytest.mark.parametrize(
    ("url", "domain"),
    [
        ("https://127.0.0.1:8080", "amocrm.ru"),
        ("http://127.0.0.1", "amocrm.ru"),
        ("http://127.0.0.1:8080/oauth", "amocrm.ru"),
        ("http://user@127.0.0.1:8080", "amocrm.ru"),
        ("http://127.0.0.1:8080", ""),
        ("http://127.0.0.1:8080", ".amocrm.ru"),
        ("http://127.0.0.1:8080", "amocrm.ru:443"),
    ],
)
def test_loopback_transport_refuses_what_is_not_a_served_fake(url: str, domain: str) -> None:
    with pytest.raises(ValueError, match="not a"):
        LoopbackTransport.to(url, domain=domain)
    with pytest.raises(ValueError, match="not a"):
        AsyncLoopbackTransport.to(url, domain=domain)


def test_two_service_objects_on_one_file_and_worker_processes_exchange_once(
    fake: FakeAmoCRM,
    served: str,
    db: Path,
    clock: OffsetClock,
    parent: AmoOAuth,
    tmp_path: Path,
) -> None:
    """The defect of the core-seam issue, end to end: a second store object on the same file
    (here a second AmoOAuth) used to drop this process's SQLite locks, so a worker process and
    this process could both win the claim and send the code twice."""
    http = httpx.Client(transport=LoopbackTransport.to(served, domain=fake.domain))
    second = AmoOAuth(
        config_for(fake, settle_timeout=SETTLE), store=SQLiteStore(db), http=http, clock=clock
    )
    second.status(USER)  # both objects hold connections to the file now
    begun = parent.begin(USER)
    query = query_of(fake.authorize(begun.state))
    job = job_for(fake, served, db, clock, action="callback", query=query, binding=begun.binding)
    with ThreadPoolExecutor(max_workers=2) as pool:
        here = [
            pool.submit(oauth.handle_callback, query, binding=begun.binding)
            for oauth in (parent, second)
        ]
        results, errors, _ = gathered(run_workers(tmp_path, job))
        outcomes = Counter(result["outcome"] for result in results)
        outcomes.update(future.result().outcome.value for future in here)
    second.close()
    http.close()
    figures = f"token calls {dict(fake.token_calls)}, outcomes {dict(outcomes)}, errors {errors}"
    assert errors == [], figures
    assert fake.token_calls_for(query["code"]) == 1, figures
    assert outcomes[Outcome.CONNECTED.value] == 1, figures
    assert outcomes[Outcome.ALREADY_CONNECTED.value] == PROCESSES * THREADS + 1, figures
