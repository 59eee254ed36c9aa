"""`amo-oauth status` and `amo-oauth refresh-due` against an SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from amo_oauth import AmoOAuth, ConnectionRecord, SQLiteStore
from amo_oauth.cli import main
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import config_for, run_consent

ENV = ("AMO_CLIENT_ID", "AMO_CLIENT_SECRET", "AMO_REDIRECT_URI", "AMO_STATE_SECRET")


@pytest.fixture
def connected_db(tmp_path: Path, fake: FakeAmoCRM, clock: FakeClock) -> Path:
    db = tmp_path / "amo.db"
    http = httpx.Client(transport=fake.transport())
    with AmoOAuth(config_for(fake), store=SQLiteStore(db), http=http, clock=clock) as oauth:
        run_consent(oauth, fake, "user-42")
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


def test_migrate_creates_an_sqlite_store_that_status_then_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/new.db"
    assert main(["migrate", "--store", url]) == 0
    assert (tmp_path / "new.db").is_file()
    capsys.readouterr()
    assert main(["status", "nobody", "--store", url, "--client-id", "c"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "disconnected"


def test_the_store_comes_from_the_environment(
    connected_db: Path,
    fake: FakeAmoCRM,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AMO_OAUTH_STORE", f"sqlite:///{connected_db}")
    assert main(["status", "user-42", "--client-id", fake.client_id]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "connected"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("memory://", "memory:// keeps nothing"),
        ("mysql://root:hunter2@db/app", "unknown store scheme"),
        ("sqlite://host/x.db", "sqlite:///relative.db"),
        ("not a url", "scheme://"),
    ],
)
def test_a_bad_store_url_is_a_clear_error(url: str, says: str) -> None:
    with pytest.raises(SystemExit, match=says) as exited:
        main(["status", "u", "--store", url, "--client-id", "c"])
    assert "hunter2" not in str(exited.value)


def test_store_from_url_knows_every_scheme(tmp_path: Path) -> None:
    from amo_oauth import MemoryStore, store_from_url

    assert isinstance(store_from_url("memory://"), MemoryStore)
    relative = store_from_url("sqlite:///amo.db")
    absolute = store_from_url(f"sqlite:///{tmp_path}/amo.db")  # four slashes: absolute
    assert isinstance(relative, SQLiteStore) and isinstance(absolute, SQLiteStore)
    assert (relative.path, absolute.path) == ("amo.db", f"{tmp_path}/amo.db")
    assert not (tmp_path / "amo.db").exists()  # nothing is opened or created
    pg = store_from_url("postgres://u:hunter2@127.0.0.1:5432/app")
    rs = store_from_url("rediss://:hunter2@127.0.0.1:6380/1")
    assert "hunter2" not in repr(pg) + repr(rs)
    assert type(pg).__name__ == "PostgresStore" and type(rs).__name__ == "RedisStore"
