"""`amo-oauth status` and `amo-oauth refresh-due` against an SQLite store."""

from __future__ import annotations

import io
import json
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from amo_oauth import AmoOAuth, ConnectionRecord, SQLiteStore, SweepProgress, cli
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
    assert shown["status"] == "connected"
    assert shown["account"] == "test"
    assert shown["host"] == fake.account_host
    assert shown["version"] == 3
    # The first release's keys, then the connection in full (test_cli_connections.py).
    assert list(shown)[:7] == [
        "connection_id",
        "status",
        "account",
        "expires_at",
        "error",
        "version",
        "host",
    ]
    assert shown["lease"] is None
    assert shown["long_lived"] is False


def test_status_of_an_unknown_connection(
    connected_db: Path, fake: FakeAmoCRM, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "nobody", "--db", str(connected_db), "--client-id", fake.client_id]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "connection_id": "nobody",
        "status": "disconnected",
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


#: ``refresh-due``'s summary of widget installs when there are none.
NO_WIDGETS = {"refreshed": [], "failed": {}, "needs_reauthorization": []}


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
    assert json.loads(capsys.readouterr().out) == {
        "refreshed": [],
        "failed": {},
        "refreshed_count": 0,
        "failed_by_reason": {},
        "needs_reauthorization": [],
        "skipped": 0,
        "remaining": 0,
        "expiring_long_lived": [],
        "widgets": NO_WIDGETS,
    }


def _integration_env(fake: FakeAmoCRM, monkeypatch: pytest.MonkeyPatch) -> None:
    values = (fake.client_id, fake.client_secret, fake.redirect_uri, "s" * 32)
    for name, value in zip(ENV, values, strict=True):
        monkeypatch.setenv(name, value)


@pytest.fixture
def due_db(tmp_path: Path, fake: FakeAmoCRM, clock: FakeClock) -> Path:
    """Five connections on five hosts, 85 days idle: all due within a week."""
    db = tmp_path / "due.db"
    http = httpx.Client(transport=fake.transport())
    with AmoOAuth(config_for(fake), store=SQLiteStore(db), http=http, clock=clock) as oauth:
        hosts = [fake.default_account] + [fake.add_account(f"h{i}") for i in range(1, 5)]
        for i, account in enumerate(hosts):
            run_consent(oauth, fake, f"user-{i}", account=account)
    clock.advance(timedelta(days=85))
    return db


def _sweep_with_the_fakes(
    fake: FakeAmoCRM, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command builds its own AmoOAuth: give it the fake's transport and clock."""
    import amo_oauth._service as service

    real = service.AmoOAuth.__init__

    def patched(self: AmoOAuth, config: object, **options: object) -> None:
        options["http"] = httpx.Client(transport=fake.transport())
        options["clock"] = clock
        real(self, config, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(service.AmoOAuth, "__init__", patched)


def test_refresh_due_refreshes_and_summarizes(
    due_db: Path,
    fake: FakeAmoCRM,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _integration_env(fake, monkeypatch)
    _sweep_with_the_fakes(fake, clock, monkeypatch)
    argv = ["refresh-due", "--db", str(due_db), "--concurrency", "2", "--per-host-rate", "3.5"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {
        "refreshed": [f"user-{i}" for i in range(5)],
        "failed": {},
        "refreshed_count": 5,
        "failed_by_reason": {},
        "needs_reauthorization": [],
        "skipped": 0,
        "remaining": 0,
        "expiring_long_lived": [],
        "widgets": NO_WIDGETS,
    }
    assert err == ""  # fewer than a thousand, and not a terminal: no progress line
    assert fake.token_call_count("refresh_token", "ok") == 5


def test_refresh_due_exits_non_zero_when_any_failed(
    due_db: Path,
    fake: FakeAmoCRM,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _integration_env(fake, monkeypatch)
    _sweep_with_the_fakes(fake, clock, monkeypatch)
    fake.revoke_refresh_tokens(account=fake.default_account)
    fake.fail_next("500", grant="refresh_token", account=fake.accounts[1])
    assert main(["refresh-due", "--db", str(due_db)]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["refreshed_count"] == len(summary["refreshed"]) == 3
    assert summary["failed_by_reason"] == {"reauthorization_required": 1, "unavailable": 1}
    # The first release's shape: each failed connection with its reason.
    assert summary["failed"] == {"user-0": "reauthorization_required", "user-1": "unavailable"}
    assert summary["needs_reauthorization"] == ["user-0"]


def test_a_stray_secrets_uri_beside_the_client_secret_is_refused_never_dropped(
    due_db: Path,
    fake: FakeAmoCRM,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The review's case: a leftover AMO_SECRETS_URI dropped AMO_CLIENT_SECRET, and the sweep
    failed every connection with credentials_missing. Now Config's own refusal, said first."""
    _integration_env(fake, monkeypatch)
    _sweep_with_the_fakes(fake, clock, monkeypatch)
    monkeypatch.setenv("AMO_SECRETS_URI", "https://app.example/api/amo-crm/secrets")
    with pytest.raises(SystemExit, match="client_secret must be absent with secrets_uri") as ended:
        main(["refresh-due", "--db", str(due_db)])
    assert fake.client_secret not in str(ended.value)
    assert fake.token_call_count("refresh_token") == 0
    assert main(["doctor", "--json", "--db", str(due_db)]) == 1
    findings = json.loads(capsys.readouterr().out)["findings"]
    assert "settings_invalid" in [finding["id"] for finding in findings]


def test_a_missing_client_secret_names_the_metadata_mode_alternative(
    due_db: Path, fake: FakeAmoCRM, monkeypatch: pytest.MonkeyPatch
) -> None:
    _integration_env(fake, monkeypatch)
    monkeypatch.delenv("AMO_CLIENT_SECRET")
    monkeypatch.delenv("AMO_SECRETS_URI", raising=False)
    with pytest.raises(SystemExit, match="set AMO_CLIENT_SECRET \\(or AMO_SECRETS_URI instead"):
        main(["refresh-due", "--db", str(due_db)])


def test_settings_config_refuses_end_the_command_with_its_message_not_a_traceback(
    due_db: Path, fake: FakeAmoCRM, monkeypatch: pytest.MonkeyPatch
) -> None:
    _integration_env(fake, monkeypatch)
    monkeypatch.setenv("AMO_STATE_SECRET", "short-state-value")
    with pytest.raises(SystemExit, match="state_secret must be at least 32 bytes") as ended:
        main(["refresh-due", "--db", str(due_db)])
    assert "short-state-value" not in str(ended.value)


def test_refresh_due_exits_3_when_only_long_lived_tokens_expire_in_the_window(
    tmp_path: Path,
    fake: FakeAmoCRM,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = tmp_path / "long.db"
    http = httpx.Client(transport=fake.transport())
    with AmoOAuth(config_for(fake), store=SQLiteStore(db), http=http, clock=clock) as oauth:
        token = fake.issue_long_lived_token(lifetime=timedelta(days=3))
        oauth.connect_long_lived("admin", token, fake.account_host)
    _integration_env(fake, monkeypatch)
    _sweep_with_the_fakes(fake, clock, monkeypatch)
    assert main(["refresh-due", "--db", str(db), "--within-days", "1"]) == 0  # not yet
    capsys.readouterr()
    assert main(["refresh-due", "--db", str(db), "--within-days", "7"]) == 3
    summary = json.loads(capsys.readouterr().out)
    assert summary["expiring_long_lived"] == ["admin"] and summary["failed"] == {}
    assert fake.token_call_count() == 0


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--concurrency", "0"),
        ("--concurrency", "two"),
        ("--per-host-rate", "0"),
        ("--per-host-rate", "-1"),
        ("--per-host-rate", "inf"),
        ("--within-days", "0"),
    ],
)
def test_refresh_due_refuses_bad_flags(
    connected_db: Path, flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["refresh-due", "--db", str(connected_db), flag, value])
    assert exited.value.code == 2
    assert flag in capsys.readouterr().err


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_without_a_terminal_is_a_line_per_thousand() -> None:
    stream = _Stream(tty=False)
    show, stop = cli._progress_printer(stream)
    for done in range(1, 2501):
        show(SweepProgress(done, done - done // 100, done // 100))
    stop()
    assert stream.getvalue().splitlines() == [
        "refresh-due: 1000 done (990 refreshed, 10 failed)",
        "refresh-due: 2000 done (1980 refreshed, 20 failed)",
    ]


def test_progress_on_a_terminal_is_a_bar() -> None:
    stream = _Stream(tty=True)
    show, stop = cli._progress_printer(stream)
    for done in range(1, 51):
        show(SweepProgress(done, done, 0))
    stop()
    shown = stream.getvalue()
    assert "refresh-due: 50 done, 50 refreshed, 0 failed" in shown
    assert "\n" in shown and "1000" not in shown


def test_progress_on_a_terminal_without_rich_is_plain_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "rich.progress", None)
    stream = _Stream(tty=True)
    show, stop = cli._progress_printer(stream)
    for done in range(1, 1001):
        show(SweepProgress(done, done, 0))
    stop()
    assert stream.getvalue().splitlines() == [
        "refresh-due: a progress bar needs the cli extra: pip install 'amo_oauth[cli]'",
        "refresh-due: 1000 done (1000 refreshed, 0 failed)",
    ]


def test_migrate_creates_an_sqlite_store_that_status_then_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/new.db"
    assert main(["migrate", "--store", url]) == 0
    assert (tmp_path / "new.db").is_file()
    capsys.readouterr()
    assert main(["status", "nobody", "--store", url, "--client-id", "c"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "disconnected"


def test_the_store_comes_from_the_environment(
    connected_db: Path,
    fake: FakeAmoCRM,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AMO_OAUTH_STORE", f"sqlite:///{connected_db}")
    assert main(["status", "user-42", "--client-id", fake.client_id]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "connected"


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


def test_store_and_db_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["status", "u", "--store", "sqlite:///a.db", "--db", str(tmp_path / "b.db")])
    assert exited.value.code == 2  # argparse: not allowed with


def test_concurrency_beyond_the_bound_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["refresh-due", "--concurrency", "100000"])
    assert "at most 256" in capsys.readouterr().err


def test_ctrl_c_ends_a_command_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_status", interrupted)
    assert main(["status", "u", "--store", "sqlite:///x.db", "--client-id", "c"]) == 130
    assert capsys.readouterr().err == "amo-oauth: interrupted\n"
