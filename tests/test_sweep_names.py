"""A widget install and an app user named like its host stay two in a sweep's report.

The reviewer's example: app user ``"test.amocrm.ru"`` and a widget install on test.amocrm.ru,
both due, the install's refresh answered 429. ``RefreshReport`` listed ``'test.amocrm.ru'``
refreshed and failed; the CLI's ``failed`` dict swallowed one entry and
``needs_reauthorization`` showed the same string twice. A widget install is now named
``Widget(host)`` in the report (as every call names it), in ``ReauthorizationRequired``, in
the count of pairs stored late, and under its own ``widgets`` key in the CLI's JSON.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    MemoryStore,
    Outcome,
    ReauthorizationRequired,
    RefreshReport,
    SQLiteStore,
    StoreError,
    Widget,
)
from amo_oauth.cli import main
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.testing.faults import FaultyStore
from test_cli import _sweep_with_the_fakes
from test_kept_pairs import _rotated_pair_write

from helpers import config_for, query_of, run_consent

ENV = ("AMO_CLIENT_ID", "AMO_CLIENT_SECRET", "AMO_REDIRECT_URI", "AMO_STATE_SECRET")


def _user_and_install(oauth: AmoOAuth, fake: FakeAmoCRM) -> str:
    """An app user whose id is the account host, and a widget install on that host."""
    host = fake.account_host
    run_consent(oauth, fake, host)
    result = oauth.handle_callback(query_of(fake.authorize(from_widget=True)))
    assert result.outcome is Outcome.CONNECTED
    return host


def _due(clock: FakeClock) -> None:
    clock.advance(timedelta(days=85))  # both refresh tokens expire within the week


def test_the_report_names_a_widget_install_apart_from_a_user_named_like_its_host(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make_oauth(allow_widget_installs=True)
    host = _user_and_install(oauth, fake)
    _due(clock)
    fake.revoke_refresh_tokens(account=fake.default_account)  # both need a new consent
    report = oauth.refresh_due()
    assert set(report.failed) == {
        (host, "reauthorization_required"),
        (Widget(host), "reauthorization_required"),
    }
    assert set(report.needs_reauthorization) == {host, Widget(host)}
    assert report.refreshed == ()


def test_reauthorization_required_names_the_widget_install(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make_oauth(allow_widget_installs=True)
    host = _user_and_install(oauth, fake)
    _due(clock)
    fake.revoke_refresh_tokens(account=fake.default_account)
    clock.advance(timedelta(days=1))  # the access tokens have expired: a refresh is needed
    with pytest.raises(ReauthorizationRequired) as raised:
        oauth.access_token(Widget(host))
    assert raised.value.connection_id == Widget(host)
    with pytest.raises(ReauthorizationRequired) as raised:
        oauth.access_token(host)
    assert raised.value.connection_id == host


def test_the_async_sweep_names_a_widget_install_apart(fake: FakeAmoCRM, clock: FakeClock) -> None:
    async def run() -> RefreshReport:
        config = config_for(fake, allow_widget_installs=True)
        http = httpx.AsyncClient(transport=fake.async_transport())
        store = MemoryStore(clock=clock)
        async with AsyncAmoOAuth(config, store=store, http=http, clock=clock) as oauth:
            await oauth.handle_callback(query_of(fake.authorize(from_widget=True)))
            _due(clock)
            report = await oauth.refresh_due()
        await http.aclose()
        return report

    assert asyncio.run(run()).refreshed == (Widget(fake.account_host),)


def test_the_cli_lists_widget_installs_under_their_own_key(
    tmp_path: Path,
    fake: FakeAmoCRM,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = tmp_path / "amo.db"
    config = config_for(fake, allow_widget_installs=True)
    http = httpx.Client(transport=fake.transport())
    with AmoOAuth(config, store=SQLiteStore(db), http=http, clock=clock) as oauth:
        host = _user_and_install(oauth, fake)
    _due(clock)
    fake.revoke_refresh_tokens(account=fake.default_account)
    for name, value in zip(
        ENV,
        (fake.client_id, fake.client_secret, fake.redirect_uri, "s" * 32),
        strict=True,
    ):
        monkeypatch.setenv(name, value)
    _sweep_with_the_fakes(fake, clock, monkeypatch)
    assert main(["refresh-due", "--db", str(db)]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["failed"] == {host: "reauthorization_required"}
    assert summary["needs_reauthorization"] == [host]
    assert summary["widgets"] == {
        "refreshed": [],
        "failed": {host: "reauthorization_required"},
        "needs_reauthorization": [host],
    }
    assert summary["failed_by_reason"] == {"reauthorization_required": 2}


def test_a_widget_installs_pair_stored_late_is_counted_as_the_install(
    fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """The sibling in the service: the pairs a run's kept pairs landed for were matched by the
    bare host, so an install's late pair would have moved the app user named like its host
    from ``failed`` to ``refreshed``. They are named ``Widget(host)`` now."""
    store = FaultyStore(MemoryStore(clock=clock))
    config = config_for(fake, allow_widget_installs=True, settle_timeout=0.2)
    http = httpx.Client(transport=fake.transport())
    with AmoOAuth(config, store=store, http=http, clock=clock) as oauth:
        host = _user_and_install(oauth, fake)
        clock.advance(timedelta(days=1, minutes=1))  # the access tokens have expired
        down = store.fail("compare_and_set", times=None, when=_rotated_pair_write)
        oauth._kept_retry.stop(0)  # landed by the next call, not the background retry
        mark = oauth._flows.records.landings()
        with pytest.raises(StoreError):
            oauth.access_token(Widget(host))  # the rotated pair is kept in memory
        down.heal()
        oauth.status(host)  # any call lands it
        assert oauth._flows.records.landed_after(mark) == (Widget(host),)
