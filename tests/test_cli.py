"""`amo-oauth status` and `amo-oauth refresh-due` against an SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from amo_oauth import AmoOAuth, ConnectionRecord, SQLiteStore
from amo_oauth.cli import main
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import config_for, query_of

ENV = ("AMO_CLIENT_ID", "AMO_CLIENT_SECRET", "AMO_REDIRECT_URI", "AMO_STATE_SECRET")


@pytest.fixture
def connected_db(tmp_path: Path, fake: FakeAmoCRM, clock: FakeClock) -> Path:
    db = tmp_path / "amo.db"
    http = httpx.Client(transport=fake.transport())
    with AmoOAuth(config_for(fake), store=SQLiteStore(db), http=http, clock=clock) as oauth:
        oauth.handle_callback(query_of(fake.authorize(oauth.begin("user-42").state)))
    return db


def test_status_prints_the_connection_without_secrets(
    connected_db: Path, fake: FakeAmoCRM, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["status", "user-42", "--db", str(connected_db), "--client-id", fake.client_id]) == 0
    )
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "connected"
    assert shown["account"] == "test"
    assert shown["host"] == fake.account_host
    assert shown["version"] == 3
    assert set(shown) == {
        "connection_id",
        "state",
        "account",
        "expires_at",
        "error",
        "version",
        "host",
    }


def test_status_of_an_unknown_connection(
    connected_db: Path, fake: FakeAmoCRM, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "nobody", "--db", str(connected_db), "--client-id", fake.client_id]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "connection_id": "nobody",
        "state": "disconnected",
    }


def test_a_missing_store_is_an_error_not_an_empty_one(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    with pytest.raises(SystemExit, match="no store at"):
        main(["status", "user-42", "--db", str(missing), "--client-id", "c"])
    assert not missing.exists()


def test_status_needs_the_integration(connected_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMO_CLIENT_ID", raising=False)
    with pytest.raises(SystemExit, match="--client-id"):
        main(["status", "user-42", "--db", str(connected_db)])


def test_status_reads_a_record_stored_before_keys_had_a_namespace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "old.db"
    store = SQLiteStore(db)
    store.compare_and_set(ConnectionRecord("user-7", version=4), None)  # integration None
    store.close()
    assert main(["status", "user-7", "--db", str(db), "--client-id", "c"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 4


def test_refresh_due_needs_the_integration_settings(
    connected_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit, match="set AMO_CLIENT_ID"):
        main(["refresh-due", "--db", str(connected_db)])


def test_refresh_due_with_nothing_due_refreshes_nothing(
    connected_db: Path,
    fake: FakeAmoCRM,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    values = (fake.client_id, fake.client_secret, fake.redirect_uri, "s" * 32)
    for name, value in zip(ENV, values, strict=True):
        monkeypatch.setenv(name, value)
    assert main(["refresh-due", "--db", str(connected_db), "--within-days", "7"]) == 0
    assert json.loads(capsys.readouterr().out) == {"refreshed": [], "failed": {}}
