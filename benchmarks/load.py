"""Load: the FastAPI example under uvicorn on loopback, many clients, a bounded mixed run.

The example (``examples/fastapi_app.py``) runs under uvicorn in a subprocess (one worker, or
``--workers N``) on a free loopback port; FakeAmoCRM is served on another, in this process,
which counts every token call. Each simulated user signs in (``POST /login``), asks for the
connect link (``GET /connect`` as JSON), opens it as its in-app browser (``/connect?ticket=``:
the binding cookie, then the consent page's URL), presses "Allow" on the fake (in process:
``FakeAmoCRM.authorize``), and then makes the mixed requests, ten per user:

- the first callback and, at the same moment, a duplicate of it (a double tap);
- ``POST /exchange-code`` with the same code (the seed's old app: the replay);
- ``GET /status`` and ``GET /leads`` (the example's route: through ``oauth.auth()``);
- later, two more duplicates of the callback, another status and two more leads.

``--clients`` clients (one ``httpx.AsyncClient`` each, its own cookie jar) take users in
turn until ``--requests`` mixed requests are made. Checked, not just timed: every answer is
the documented one (the "connected" page, ``already_connected`` for the replayed code,
``connected`` for the status, the fake's leads), no 5xx, and the fake saw exactly one token
call per code. Printed per store: p50 / p99 latency per route, requests per second.

The main run raises the API pacer's rate (``Config.api_rate``), the exchange bounds and the
fake's API rate limit: every user connects the same account, whose default budget (7 API
requests a second) would otherwise be the whole measurement. A second, short run keeps every
default (``Config``'s and the fake's) and reports the 429s anyone answered (the fake to the
app, the app to a client): there must be none; ``/leads`` beyond the pacer's wait may answer
503 ``api_busy`` with ``Retry-After``, its documented answer (docs/api-pace.md).

    python benchmarks/load.py [--requests 5000] [--clients 100] [--workers 1]
        [--stores sqlite,postgres] [--postgres URL] [--defaults-requests 200]
        [--defaults-clients 10] [--no-defaults] [--json PATH]

Without ``--postgres`` a throwaway server is started (``tests/_pg_server.py``: Debian's
``initdb`` / ``pg_ctl``). A figure, not a test: the machine is shared; ``tests/test_load.py``
runs it at 1,000 requests and checks the answers, never the times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import httpx

from amo_oauth.testing import FakeAmoCRM, ServedFake

HERE = Path(__file__).resolve().parent
PREFIX = "/api/amo-crm"
LEADS = 3  # the fake's leads: one page, so one API call per /leads
#: The mixed requests one user makes, by route, in the order of ``_one_user``.
MIX = {"callback": 1, "callback duplicate": 3, "exchange-code": 1, "status": 2, "leads": 3}
PER_USER = sum(MIX.values())
ROUTES = (*MIX, "login", "connect", "connect ticket")
SETUP = ("login", "connect", "connect ticket")
RAISED_RATE = 1_000_000  # API requests per second: the pacer's and the fake's, never reached
RAISED_BOUND = 1_000_000_000  # code exchanges per window, never reached
STARTUP = 60.0  # seconds for uvicorn to answer, on a loaded machine
REQUEST_TIMEOUT = 120.0  # seconds: a hang shows as an error, not as a stuck run


@attrs.define
class Tally:
    """What one run's clients saw: latencies (seconds) and statuses per route, and every answer
    that was not the documented one (route, status, a short description: never a secret)."""

    latencies: dict[str, list[float]] = attrs.Factory(lambda: {route: [] for route in ROUTES})
    statuses: Counter[tuple[str, int]] = attrs.Factory(Counter)
    wrong: list[str] = attrs.Factory(list)
    pending: int = 0  # concurrent duplicates answered "pending" (documented; see _check_page)
    busy: int = 0  # /leads answered 503 api_busy (documented under the default pace)
    codes: list[str] = attrs.Factory(list)  # kept in memory for the fake's count, never shown

    def record(self, route: str, seconds: float, status: int) -> None:
        self.latencies[route].append(seconds)
        self.statuses[(route, status)] += 1


@attrs.frozen
class RouteFigures:
    route: str
    count: int
    p50_ms: float
    p99_ms: float
    server_errors: int


@attrs.frozen
class Report:
    """One run's figures and checks (JSON-able through ``attrs.asdict``)."""

    store: str
    defaults: bool
    users: int
    clients: int
    workers: int
    mixed_requests: int
    all_requests: int
    seconds: float
    routes: list[RouteFigures]
    server_errors: int  # answers >= 500 that are not documented (see ``Tally.busy``)
    answered_429: int  # by the fake to the app, and by the app to a client
    busy_503: int
    pending_duplicates: int
    wrong_answers: list[str]
    token_calls_by_code: dict[int, int]  # calls per code -> how many codes
    code_grants_ok: int
    server_log: str = ""  # the tail of uvicorn's output, kept when a check failed

    @property
    def mixed_per_second(self) -> float:
        return self.mixed_requests / self.seconds

    @property
    def all_per_second(self) -> float:
        return self.all_requests / self.seconds

    @property
    def exactly_once(self) -> bool:
        """Every code the fake issued reached its token endpoint exactly once, and was
        accepted (a user whose consent failed before a code is among the wrong answers)."""
        codes = sum(self.token_calls_by_code.values())
        return set(self.token_calls_by_code) <= {1} and self.code_grants_ok == codes


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (``share`` in (0, 1]) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


# -- the stack ---------------------------------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on just now (uvicorn binds it next; a rare race fails loudly)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def app_config(fake: FakeAmoCRM, served: ServedFake, *, defaults: bool) -> dict[str, Any]:
    """The example's ``Config`` keyword arguments: the fake's integration; raised bounds
    unless ``defaults``."""
    config: dict[str, Any] = {
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "redirect_uri": fake.redirect_uri,
        "state_secret": secrets.token_hex(32),
        "authorize_url": f"{served.url}/oauth",
    }
    if not defaults:
        config["api_rate"] = float(RAISED_RATE)
        for bound in (
            "max_exchanges_per_connection",
            "max_exchanges_per_host",
            "max_exchanges_per_process",
            "max_exchanges_per_source",
        ):
            config[bound] = RAISED_BOUND
    return config


@contextlib.contextmanager
def serve_example(job: dict[str, Any], port: int, workers: int, log: Path) -> Iterator[str]:
    """uvicorn serving ``load_app:create`` on ``port``; yields its base URL; stops it after.

    Raises:
        RuntimeError: uvicorn exited, or did not answer within ``STARTUP`` seconds (its log's
            tail is in the message: it holds no secret, the job is in the environment).
    """
    command = [
        *(sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "load_app:create"),
        *("--factory", "--host", "127.0.0.1", "--port", str(port)),
        *("--workers", str(workers), "--no-access-log", "--log-level", "warning"),
    ]
    env = {**os.environ, "AMO_LOAD_JOB": json.dumps(job)}
    with log.open("wb") as out:
        # uvicorn from this venv, serving this directory's own module.
        process = subprocess.Popen(  # noqa: S603
            command, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(process, url, log)
        yield url
    finally:
        _stop(process)


def _wait_until_up(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn exited ({process.returncode}):\n{_tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/login", timeout=5).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"uvicorn did not answer within {STARTUP:.0f} s:\n{_tail(log)}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT (uvicorn's graceful stop: the app's lifespan closes the service), then SIGKILL."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


# -- the clients -------------------------------------------------------------------------------


async def _timed(
    tally: Tally, route: str, send: Callable[[], Awaitable[httpx.Response]]
) -> httpx.Response | None:
    """Send one request and record its latency and status; None (and a wrong answer) when it
    got no answer at all."""
    started = time.perf_counter()
    try:
        answer = await send()
    except httpx.HTTPError as failed:
        tally.record(route, time.perf_counter() - started, 0)
        tally.wrong.append(f"{route}: no answer ({type(failed).__name__})")
        return None
    tally.record(route, time.perf_counter() - started, answer.status_code)
    return answer


def _json(answer: httpx.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _check(tally: Tally, route: str, answer: httpx.Response | None, ok: bool) -> None:
    if answer is not None and not ok:
        tally.wrong.append(f"{route}: {answer.status_code} {answer.text[:80]!r}")


def _check_page(tally: Tally, route: str, answer: httpx.Response | None, *, racing: bool) -> None:
    """The callback's page: "connected" (its deep link says ``success=true``). A duplicate sent
    together with the first may also be answered "pending" (``pending=true``) when the first's
    exchange outlasts ``Config.settle_timeout``: documented (the app rereads the status)."""
    if answer is None:
        return
    if answer.status_code == 200 and "success=true" in answer.text:
        return
    if racing and answer.status_code == 200 and "pending=true" in answer.text:
        tally.pending += 1
        return
    # The deep link's parameters but the state (echoed, signed: no need to print it).
    link = re.search(r"foryoure://[^?\"']*\?([^\"']*)", answer.text)
    said = [part for part in (link.group(1) if link else "").split("&amp;") if "state=" not in part]
    tally.wrong.append(f"{route}: {answer.status_code} {'&'.join(said)!r}")


class User:
    """One simulated user: an app (bearer token) and its in-app browser (cookies), sharing
    one client and its cookie jar."""

    def __init__(self, client: httpx.AsyncClient, tally: Tally, fake: FakeAmoCRM) -> None:
        self.client, self.tally, self.fake = client, tally, fake
        self.bearer: dict[str, str] = {}

    async def sign_in(self, name: str) -> None:
        answer = await _timed(
            self.tally, "login", lambda: self.client.post("/login", json={"user": name})
        )
        token = _json(answer).get("token") if answer is not None else None
        _check(self.tally, "login", answer, isinstance(token, str))
        self.bearer = {"authorization": f"Bearer {token}"}

    async def consent(self) -> str | None:
        """Connect -> the ticket URL -> the consent page -> "Allow": the callback URL."""
        headers = {**self.bearer, "accept": "application/json"}
        link = await _timed(
            self.tally, "connect", lambda: self.client.get(f"{PREFIX}/connect", headers=headers)
        )
        url = _json(link).get("url") if link is not None else None
        _check(self.tally, "connect", link, isinstance(url, str))
        if not isinstance(url, str):
            return None
        opened = await _timed(self.tally, "connect ticket", lambda: self.client.get(url))
        where = opened.headers.get("location", "") if opened is not None else ""
        state = dict(parse_qsl(urlsplit(where).query)).get("state")
        _check(self.tally, "connect ticket", opened, opened is not None and bool(state))
        if not state:
            return None
        callback = self.fake.authorize(state)
        self.tally.codes.append(dict(parse_qsl(urlsplit(callback).query))["code"])
        return callback

    async def callbacks(self, callback: str) -> None:
        """The first delivery and a duplicate at once (a double tap): one exchange."""

        async def deliver(route: str) -> None:
            answer = await _timed(self.tally, route, lambda: self.client.get(callback))
            _check_page(self.tally, route, answer, racing=True)

        await asyncio.gather(deliver("callback"), deliver("callback duplicate"))

    async def duplicate(self, callback: str) -> None:
        route = "callback duplicate"
        answer = await _timed(self.tally, route, lambda: self.client.get(callback))
        _check_page(self.tally, route, answer, racing=False)

    async def replay(self, callback: str) -> None:
        """The seed's old app: the code it saw, posted to exchange-code after the callback."""
        query = dict(parse_qsl(urlsplit(callback).query))
        body = {"code": query["code"], "state": query["state"]}
        answer = await _timed(
            self.tally,
            "exchange-code",
            lambda: self.client.post(f"{PREFIX}/exchange-code", json=body, headers=self.bearer),
        )
        said = _json(answer) if answer is not None else {}
        documented = (said.get("outcome"), said.get("duplicate")) == ("already_connected", True)
        _check(self.tally, "exchange-code", answer, answer is not None and documented)

    async def status(self) -> None:
        answer = await _timed(
            self.tally, "status", lambda: self.client.get(f"{PREFIX}/status", headers=self.bearer)
        )
        said = _json(answer) if answer is not None else {}
        ok = answer is not None and answer.status_code == 200
        _check(self.tally, "status", answer, ok and said.get("status") == "connected")

    async def leads(self) -> None:
        answer = await _timed(
            self.tally, "leads", lambda: self.client.get(f"{PREFIX}/leads", headers=self.bearer)
        )
        if answer is None:
            return
        said = _json(answer)
        if answer.status_code == 503 and said.get("error") == "api_busy":
            # The default pace refused it unsent: documented, with the seconds to wait.
            self.tally.busy += 1
            _check(self.tally, "leads", answer, "retry-after" in answer.headers)
            return
        leads = said.get("leads")
        _check(self.tally, "leads", answer, isinstance(leads, list) and len(leads) == LEADS)


async def _one_user(user: User, name: str) -> None:
    """One user's setup and its ``PER_USER`` mixed requests (``MIX``)."""
    user.client.cookies.clear()
    await user.sign_in(name)
    callback = await user.consent()
    if callback is None:
        return
    await user.callbacks(callback)
    await user.replay(callback)
    await user.status()
    await user.leads()
    await user.duplicate(callback)
    await user.leads()
    await user.status()
    await user.duplicate(callback)
    await user.leads()


async def drive(backend: str, fake: FakeAmoCRM, users: int, clients: int) -> tuple[Tally, float]:
    """``clients`` clients take ``users`` users in turn; the tally and the wall time (s)."""
    tally = Tally()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for number in range(users):
        queue.put_nowait(number)
    run = uuid.uuid4().hex[:8]  # a fresh name per run: a store is never reused, but be sure

    async def client(http: httpx.AsyncClient) -> None:
        user = User(http, tally, fake)
        while not queue.empty():
            await _one_user(user, f"load-{run}-{queue.get_nowait()}")

    async with contextlib.AsyncExitStack() as opened:
        # Made before the clock starts: each client loads its TLS context (tens of ms of this
        # event loop), which would otherwise land in the other clients' first latencies.
        made = [
            await opened.enter_async_context(
                httpx.AsyncClient(base_url=backend, timeout=REQUEST_TIMEOUT)
            )
            for _ in range(min(clients, users))
        ]
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for http in made))
        return tally, time.perf_counter() - started


# -- one run -----------------------------------------------------------------------------------


@attrs.frozen
class Store:
    """Where the example keeps its records: ``sqlite`` (a file in a temporary directory) or
    ``postgres`` (a URL; each run gets a fresh table, migrated here)."""

    kind: str
    url: str | None = None

    def job(self, directory: Path) -> dict[str, Any]:
        if self.kind == "sqlite":
            return {"store": "sqlite", "path": str(directory / "load.db")}
        from amo_oauth.stores.postgres import PostgresStore

        assert self.url is not None
        table = f"load_{uuid.uuid4().hex[:12]}"
        store = PostgresStore(self.url, table=table)
        try:
            store.migrate()  # once, here: N workers would race to create the table
        finally:
            store.close()
        return {"store": "postgres", "url": self.url, "table": table}


def run_load(
    store: Store,
    *,
    requests: int,
    clients: int,
    workers: int = 1,
    defaults: bool = False,
) -> Report:
    """One bounded run: ``ceil(requests / PER_USER)`` users over ``clients`` clients.

    Args:
        defaults: keep ``Config``'s and the fake's defaults (the 429 check) instead of raising
            the pace and the bounds.

    Raises:
        RuntimeError: the example's server did not start (see ``serve_example``).
    """
    users = max(1, math.ceil(requests / PER_USER))
    port = free_port()
    options: dict[str, Any] = {} if defaults else {"rate_limit": RAISED_RATE}
    fake = FakeAmoCRM(
        redirect_uri=f"http://127.0.0.1:{port}{PREFIX}/callback", leads=LEADS, **options
    )
    with tempfile.TemporaryDirectory(prefix="amo_oauth_load_") as temp, fake.serve() as served:
        directory = Path(temp)
        job = {
            "fake_url": served.url,
            "domain": fake.domain,
            "config": app_config(fake, served, defaults=defaults),
            **store.job(directory),
        }
        log = directory / "uvicorn.log"
        with serve_example(job, port, workers, log) as backend:
            tally, seconds = asyncio.run(drive(backend, fake, users, clients))
        report = _report(store.kind, fake, tally, seconds, users, clients, workers, defaults)
        # What the server said, when something went wrong (the library logs no secret).
        return attrs.evolve(report, server_log=_tail(log) if not passed(report) else "")


def _report(
    kind: str,
    fake: FakeAmoCRM,
    tally: Tally,
    seconds: float,
    users: int,
    clients: int,
    workers: int,
    defaults: bool,
) -> Report:
    routes = [
        RouteFigures(
            route,
            len(tally.latencies[route]),
            percentile(tally.latencies[route], 0.50) * 1000,
            percentile(tally.latencies[route], 0.99) * 1000,
            sum(n for (r, status), n in tally.statuses.items() if r == route and status >= 500),
        )
        for route in ROUTES
    ]
    errors = sum(figures.server_errors for figures in routes) - tally.busy
    app_429 = sum(n for (_, status), n in tally.statuses.items() if status == 429)
    fake_429 = sum(1 for seen in fake.requests if seen.status == 429)
    by_code = Counter(fake.token_calls_for(code) for code in tally.codes)
    mixed = sum(figures.count for figures in routes if figures.route not in SETUP)
    return Report(
        store=kind,
        defaults=defaults,
        users=users,
        clients=min(clients, users),
        workers=workers,
        mixed_requests=mixed,
        all_requests=sum(figures.count for figures in routes),
        seconds=seconds,
        routes=routes,
        server_errors=errors,
        answered_429=app_429 + fake_429,
        busy_503=tally.busy,
        pending_duplicates=tally.pending,
        wrong_answers=tally.wrong,
        token_calls_by_code=dict(by_code),
        code_grants_ok=fake.token_call_count("authorization_code", "ok"),
    )


# -- printing ----------------------------------------------------------------------------------


def table(reports: list[Report]) -> str:
    """The latency table (Markdown), one row per store and route, and each run's summary."""
    lines = [
        "| store | route | requests | p50 ms | p99 ms | 5xx |",
        "|---|---|---|---|---|---|",
    ]
    for report in reports:
        name = report.store + (" (defaults)" if report.defaults else "")
        for figures in report.routes:
            lines.append(
                f"| {name} | {figures.route} | {figures.count:,} | {figures.p50_ms:.1f} "
                f"| {figures.p99_ms:.1f} | {figures.server_errors} |"
            )
    lines.append("")
    lines += [summary(report) for report in reports]
    return "\n".join(lines)


def summary(report: Report) -> str:
    """One run's line: throughput and every check's figure."""
    name = report.store + (" (defaults)" if report.defaults else "")
    once = (
        "exactly one each" if report.exactly_once else f"NOT ONE EACH {report.token_calls_by_code}"
    )
    setup = report.all_requests - report.mixed_requests
    return (
        f"{name}: {report.mixed_requests:,} mixed requests (+{setup:,}"
        f" sign-in/connect) from {report.clients} clients, {report.workers} worker(s), in "
        f"{report.seconds:.1f} s: {report.mixed_per_second:,.0f} mixed req/s "
        f"({report.all_per_second:,.0f} req/s in all); 5xx {report.server_errors}; "
        f"429s {report.answered_429}; 503 api_busy {report.busy_503}; pending duplicates "
        f"{report.pending_duplicates}; {sum(report.token_calls_by_code.values()):,} codes, "
        f"token calls per code: {once}; "
        f"wrong answers {len(report.wrong_answers)}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the load on each store, then the short defaults run; print the table.

    Returns:
        0 when every check held (no 5xx, one exchange per code, documented answers, no 429 in
        the defaults run), else 1.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=5000, help="mixed requests per store")
    parser.add_argument("--clients", type=int, default=100, help="concurrent clients")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--stores", default="sqlite,postgres", help="sqlite and/or postgres")
    parser.add_argument("--postgres", help="a PostgreSQL URL (default: a throwaway server)")
    parser.add_argument("--defaults-requests", type=int, default=200)
    parser.add_argument("--defaults-clients", type=int, default=10)
    parser.add_argument("--no-defaults", action="store_true", help="skip the defaults run")
    parser.add_argument("--json", type=Path, help="also write the reports here as JSON")
    args = parser.parse_args(argv)
    kinds = [kind.strip() for kind in args.stores.split(",") if kind.strip()]
    with contextlib.ExitStack() as running:
        stores = [
            Store(kind, _postgres_url(args, running) if kind == "postgres" else None)
            for kind in kinds
        ]
        reports = [
            run_load(store, requests=args.requests, clients=args.clients, workers=args.workers)
            for store in stores
        ]
        if not args.no_defaults:
            reports.append(
                run_load(
                    stores[0],
                    requests=args.defaults_requests,
                    clients=args.defaults_clients,
                    workers=args.workers,
                    defaults=True,
                )
            )
    print(table(reports))
    for report in reports:
        for wrong in report.wrong_answers[:10]:
            print(f"  {report.store}: {wrong}")
    if args.json:
        args.json.write_text(json.dumps([attrs.asdict(r) for r in reports], indent=2))
    return 0 if all(passed(report) for report in reports) else 1


def passed(report: Report) -> bool:
    """Every check of a run: no 5xx, exactly one exchange per code, every answer documented,
    and (the defaults run) no 429."""
    return (
        report.server_errors == 0
        and report.exactly_once
        and not report.wrong_answers
        and (report.answered_429 == 0 or not report.defaults)
    )


def _postgres_url(args: argparse.Namespace, running: contextlib.ExitStack) -> str:
    if args.postgres:
        return str(args.postgres)
    # The tests' throwaway server (tests/ is no package: imported by path, untyped here).
    sys.path.insert(0, str(HERE.parent / "tests"))
    servers: Any = importlib.import_module("_pg_server")
    return str(running.enter_context(servers.throwaway_postgres()))


if __name__ == "__main__":
    sys.exit(main())
