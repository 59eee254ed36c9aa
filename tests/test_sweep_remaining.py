"""The sweep handles every due connection unless told a limit, and says how many a limit left
(issue 19, item 4): ``refresh_due(within)`` used to refresh 100 of 300 due connections (its
default ``limit=100``) and report no failure. Sync, async and the CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from amo_oauth import AmoOAuth, AsyncAmoOAuth, SQLiteStore, cli
from amo_oauth.cli import main
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import config_for, run_consent

DUE = 300
WEEK = timedelta(days=7)
ENV = ("AMO_CLIENT_ID", "AMO_CLIENT_SECRET", "AMO_REDIRECT_URI", "AMO_STATE_SECRET")


@pytest.fixture
def due_db(tmp_path: Path, fake: FakeAmoCRM, clock: FakeClock) -> Path:
    """300 connections on 10 hosts, 85 days idle: every refresh token expires within a week."""
    db = tmp_path / "due.db"
    http = httpx.Client(transport=fake.transport())
    hosts = [fake.default_account] + [fake.add_account(f"h{i}") for i in range(1, 10)]
    config = config_for(fake, api_rate=None)  # 30 consents a host: faster than the API's pace
    with AmoOAuth(config, store=SQLiteStore(db), http=http, clock=clock) as oauth:
        for i in range(DUE):
            run_consent(oauth, fake, f"c{i:03d}", account=hosts[i % len(hosts)])
    clock.advance(timedelta(days=85))
    return db


def test_every_due_connection_is_refreshed_unless_a_limit_says_how_many_remain(
    due_db: Path, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make_oauth(store=SQLiteStore(due_db, clock=clock))
    every = oauth.refresh_due(WEEK, concurrency=8, per_host_rate=1000)  # the call
    assert len(every.refreshed) == DUE and every.failed == () and every.remaining == 0
    assert fake.token_call_count("refresh_token", "ok") == DUE
    clock.advance(timedelta(days=85))  # the new pairs are all due in turn
    first = oauth.refresh_due(WEEK, 100, concurrency=8, per_host_rate=1000)
    assert (len(first.refreshed), first.remaining) == (100, 200)
    rest = oauth.refresh_due(WEEK, None, concurrency=8, per_host_rate=1000)
    assert (len(rest.refreshed), rest.remaining) == (200, 0)
    assert set(first.refreshed).isdisjoint(rest.refreshed)


def test_the_async_sweep_refreshes_every_due_connection_and_counts_a_limit(
    due_db: Path, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    async def main_() -> None:
        http = httpx.AsyncClient(transport=fake.async_transport())
        store = SQLiteStore(due_db, clock=clock)
        async with AsyncAmoOAuth(config_for(fake), store=store, http=http, clock=clock) as oauth:
            limited = await oauth.refresh_due(WEEK, 120, concurrency=8, per_host_rate=1000)
            assert (len(limited.refreshed), limited.remaining) == (120, 180)
            every = await oauth.refresh_due(WEEK, concurrency=8, per_host_rate=1000)
            assert (len(every.refreshed), every.remaining) == (180, 0)
        await http.aclose()

    asyncio.run(main_())
    assert fake.token_call_count("refresh_token", "ok") == DUE


def _cli_on_the_fakes(fake: FakeAmoCRM, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in zip(
        ENV, (fake.client_id, fake.client_secret, fake.redirect_uri, "s" * 32), strict=True
    ):
        monkeypatch.setenv(name, value)
    import amo_oauth._service as service

    real = service.AmoOAuth.__init__

    def patched(self: AmoOAuth, config: object, **options: object) -> None:
        options["http"] = httpx.Client(transport=fake.transport())
        options["clock"] = clock
        real(self, config, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(service.AmoOAuth, "__init__", patched)
    # The store's clock is the fake one too: the sweep judges what is due by it.
    monkeypatch.setattr(cli, "_open_store", lambda args: SQLiteStore(args.db, clock=clock))


def test_the_cli_takes_a_limit_and_says_how_many_remain(
    due_db: Path,
    fake: FakeAmoCRM,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _cli_on_the_fakes(fake, clock, monkeypatch)
    fast = ["--per-host-rate", "1000", "--concurrency", "8"]
    assert main(["refresh-due", "--db", str(due_db), "--limit", "100", *fast]) == 0
    limited = json.loads(capsys.readouterr().out)
    assert (limited["refreshed_count"], limited["remaining"]) == (100, 200)
    assert main(["refresh-due", "--db", str(due_db), *fast]) == 0
    every = json.loads(capsys.readouterr().out)
    assert (every["refreshed_count"], every["remaining"]) == (200, 0)
