"""``amo-oauth connections`` (a look at every connection) and ``amo-oauth status`` in full.

Records are written straight into the store, so each test says exactly what is stored: the
report's counts, the connections it names, its JSON Lines and its tables on a terminal, its
paging (a store that counts its ``scan`` pages), and never a secret (canary values).
"""

from __future__ import annotations

import io
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from _backends import Backend
from _pg_server import postgres_url  # noqa: F401
from _redis_server import redis_url  # noqa: F401
from amo_oauth import ConnectionRecord, MemoryStore, SQLiteStore, cli
from amo_oauth._connections_report import MAX_HOSTS, PAGE_SIZE, Tally, walk
from amo_oauth._records import (
    Backoff,
    ClientCredentials,
    ConnectionStatus,
    ErrorInfo,
    Lease,
    PendingCredentials,
    SeenCode,
    TokenSet,
    code_digest,
)
from amo_oauth.cli import main
from amo_oauth.stores import Store
from amo_oauth.testing import FakeClock

CLIENT = "client-1"
#: Values that must never be printed: tokens, a client secret, a code's and a state's digest.
CANARIES = (
    "ACCESS-canary-7f3a",
    "REFRESH-canary-9b1c",
    "SECRET-canary-44d2",
    code_digest("CODE-canary"),
    code_digest("STATE-canary"),
)


def _tokens(now: datetime, *, ends_in: timedelta, long_lived: bool = False) -> TokenSet:
    refresh = None if long_lived else CANARIES[1]
    expires = now + (ends_in if long_lived else timedelta(hours=1))
    return TokenSet(CANARIES[0], refresh, expires, now + ends_in, long_lived=long_lived)


def _record(name: str, now: datetime, **fields: Any) -> ConnectionRecord:
    base = ConnectionRecord(name, version=1, integration=CLIENT, host="a.amocrm.ru")
    return attrs.evolve(base, **fields)


def _connected(name: str, now: datetime, ends_in: timedelta, **fields: Any) -> ConnectionRecord:
    long_lived = fields.pop("long_lived", False)
    tokens = _tokens(now, ends_in=ends_in, long_lived=long_lived)
    return _record(name, now, status=ConnectionStatus.CONNECTED, tokens=tokens, **fields)


def _error(name: str, now: datetime, reason: str, **fields: Any) -> ConnectionRecord:
    error = ErrorInfo(reason, "amoCRM's hint", now)
    return _record(name, now, status=ConnectionStatus.ERROR, error=error, **fields)


def _sample(now: datetime) -> list[ConnectionRecord]:
    """Two hosts; each state; two reasons; expiring in 3 and 20 days; one long ago."""
    day = timedelta(days=1)
    return [
        _connected("fresh", now, 60 * day),
        _connected("soon", now, 3 * day, host="b.kommo.com"),
        _connected("in-20-days", now, 20 * day),
        _connected("long-lived", now, 5 * day, long_lived=True, host="b.kommo.com"),
        _connected("ended", now, -day),
        _error("denied", now, "reauthorization_required"),
        _error("gone", now, "disconnected_by_provider", host="b.kommo.com"),
        _record("waiting", now, status=ConnectionStatus.EXCHANGED),
        _record("off", now, host=None),
        # Another integration's record in the same store: never counted here.
        attrs.evolve(_error("theirs", now, "reauthorization_required"), integration="other"),
    ]


def _fill(store: Store, records: list[ConnectionRecord]) -> None:
    for record in records:
        store.compare_and_set(record, None)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "amo.db"
    store = SQLiteStore(path)
    _fill(store, _sample(datetime.now(UTC)))
    store.close()
    return path


def _lines(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    assert main(["connections", *argv]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _run(db: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    return _lines(capsys, "--db", str(db), "--client-id", CLIENT, *argv)


def _named(lines: list[dict[str, Any]], why: str) -> dict[str, Any]:
    return {line["connection_id"]: line for line in lines if line.get("why") == why}


def test_counts_each_state_and_host(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = _run(db, capsys)[-1]
    assert summary["type"] == "summary"
    assert summary["total"] == 9
    assert summary["by_status"] == {
        "connected": 5,
        "disconnected": 1,
        "error": 2,
        "exchanged": 1,
    }
    assert summary["hosts"] == {"a.amocrm.ru": 5, "b.kommo.com": 3}
    assert summary["other_hosts"] == 0


def test_names_who_needs_reauthorization_and_why(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _run(db, capsys)
    needs = _named(lines, "needs_reauthorization")
    assert {name: line["reason"] for name, line in needs.items()} == {
        "denied": "reauthorization_required",
        "gone": "disconnected_by_provider",
        "ended": "reauthorization_required",  # its refresh token ended: nothing can renew it
    }
    assert lines[-1]["needs_reauthorization"] == 3
    assert lines[-1]["needs_reauthorization_by_reason"] == {
        "disconnected_by_provider": 1,
        "reauthorization_required": 2,
    }


def test_names_whose_refresh_token_ends_within_the_window(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _run(db, capsys)
    expiring = _named(lines, "expiring")
    assert set(expiring) == {"soon", "long-lived"}  # 14 days by default; not in-20-days
    assert expiring["long-lived"]["long_lived"] is True
    assert expiring["soon"]["long_lived"] is False
    assert lines[-1]["expiring"] == 2
    assert lines[-1]["due_within_days"] == 14


def test_due_within_days_widens_the_window(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = _run(db, capsys, "--due-within-days", "30")
    assert set(_named(lines, "expiring")) == {"soon", "long-lived", "in-20-days"}
    lines = _run(db, capsys, "--due-within-days", "1")
    assert _named(lines, "expiring") == {}


def test_state_filter_counts_and_names_only_that_state(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _run(db, capsys, "--state", "error")
    assert lines[-1]["by_status"] == {"error": 2}
    assert lines[-1]["total"] == 2
    assert set(_named(lines, "needs_reauthorization")) == {"denied", "gone"}
    assert _named(lines, "expiring") == {}


def test_json_lines_shape(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = _run(db, capsys, "--json")
    *named, summary = lines
    assert {line["type"] for line in named} == {"connection"}
    for line in named:
        assert set(line) == {
            "type",
            "why",
            "connection_id",
            "widget",
            "status",
            "host",
            "reason",
            "ends_at",
            "long_lived",
        }
    assert set(summary) == {
        "type",
        "now",
        "due_within_days",
        "total",
        "by_status",
        "needs_reauthorization",
        "needs_reauthorization_by_reason",
        "expiring",
        "unreadable",
        "unreadable_hint",
        "hosts",
        "other_hosts",
    }
    # Named in key order, as the walk meets them.
    assert [line["connection_id"] for line in named] == sorted(
        line["connection_id"] for line in named
    )


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_lines_and_tables(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("rich")
    out = _Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setenv("COLUMNS", "160")
    assert main(["connections", "--db", str(db), "--client-id", CLIENT]) == 0
    text = out.getvalue()
    assert "needs re-authorization" in text
    assert "disconnected_by_provider" in text
    assert "expiring within 14 days" in text
    assert "b.kommo.com" in text
    assert "{" not in text  # tables, not JSON
    assert not any(canary in text for canary in CANARIES)


def test_json_flag_on_a_terminal(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["connections", "--db", str(db), "--client-id", CLIENT, "--json"]) == 0
    assert json.loads(out.getvalue().splitlines()[-1])["type"] == "summary"


def test_without_rich_a_terminal_is_told_and_gets_json(
    db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)  # import rich raises ImportError
    out = _Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["connections", "--db", str(db), "--client-id", CLIENT]) == 0
    assert "pip install 'amo_oauth[cli]'" in capsys.readouterr().err
    assert json.loads(out.getvalue().splitlines()[-1])["type"] == "summary"


def test_no_secret_in_any_output(
    db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = SQLiteStore(db)
    _fill(store, [_full_record(datetime.now(UTC))])
    store.close()
    printed = json.dumps(_run(db, capsys, "--due-within-days", "60"))
    assert "user-full" in printed
    assert not any(canary in printed for canary in CANARIES)


class _PageCountingStore(MemoryStore):
    """A store that records each ``scan`` call's limit."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.limits: list[int] = []

    def scan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        self.limits.append(limit)
        return super().scan(after, limit)

    def close(self) -> None:
        """Kept open: the command opens the store twice (a check, then the walk)."""


def test_the_command_reads_the_store_by_pages(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = _PageCountingStore(clock)
    now = clock()
    _fill(store, [_error(f"user-{n:05}", now, "reauthorization_required") for n in range(2500)])
    monkeypatch.setattr(cli, "_open_store", lambda args, create=False: store)
    lines = _lines(capsys, "--client-id", CLIENT)
    assert lines[-1]["needs_reauthorization"] == 2500
    assert len(lines) == 2501
    # 2,500 records in pages of 500: five full pages and an empty one; never all at once.
    assert store.limits == [PAGE_SIZE] * 6


def test_each_connection_is_handed_out_before_the_next_page_is_read(clock: FakeClock) -> None:
    store = _PageCountingStore(clock)
    now = clock()
    _fill(store, [_error(f"user-{n:05}", now, "reauthorization_required") for n in range(2500)])
    listed = walk(
        store, Tally(), integration=CLIENT, now=now, due_within=timedelta(days=14), page_size=100
    )
    next(listed)
    assert store.limits == [100]
    assert sum(1 for _ in listed) == 2499
    assert store.limits == [100] * 26


def test_hosts_beyond_the_cap_are_counted_together(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    now = clock()
    hosts = [f"h{n}.amocrm.ru" for n in range(MAX_HOSTS + 5)]
    _fill(store, [_record(f"user-{n:05}", now, host=host) for n, host in enumerate(hosts)])
    tally = Tally()
    assert list(walk(store, tally, integration=CLIENT, now=now, due_within=timedelta())) == []
    assert len(tally.hosts) == MAX_HOSTS
    assert tally.other_hosts == 5
    assert tally.total == MAX_HOSTS + 5


def test_every_store(backend: Backend, clock: FakeClock) -> None:
    store = backend.open()
    now = clock()
    _fill(store, _sample(now))
    tally = Tally()
    listed = list(walk(store, tally, integration=CLIENT, now=now, due_within=timedelta(days=14)))
    assert {(one.why, one.connection_id) for one in listed} == {
        ("needs_reauthorization", "denied"),
        ("needs_reauthorization", "gone"),
        ("needs_reauthorization", "ended"),
        ("expiring", "soon"),
        ("expiring", "long-lived"),
    }
    assert tally.total == 9
    assert tally.by_status["connected"] == 5
    assert not any(canary in repr(listed) for canary in CANARIES)


def test_each_integration_of_the_file(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "integrations.toml"
    file.write_text(
        f'[integrations.mine]\nclient_id = "{CLIENT}"\nclient_secret_env = "S1"\n'
        'redirect_uri = "https://example.com/cb"\nstate_secret_env = "S2"\n\n'
        '[integrations.theirs]\nclient_id = "other"\nclient_secret_env = "S1"\n'
        'redirect_uri = "https://example.com/cb"\nstate_secret_env = "S2"\n',
        encoding="utf-8",
    )
    lines = _lines(capsys, "--db", str(db), "--integrations", str(file))
    summaries = {line["integration"]: line for line in lines if line["type"] == "summary"}
    assert summaries["mine"]["total"] == 9
    assert summaries["theirs"]["total"] == 1
    assert {line["integration"] for line in lines} == {"mine", "theirs"}


# ``status`` in full.


def _full_record(now: datetime) -> ConnectionRecord:
    """A connection with every field set, secrets being canaries."""
    return _connected(
        "user-full",
        now,
        timedelta(days=30),
        lease=Lease("worker-1", "refresh", now + timedelta(seconds=30)),
        backoff=Backoff(now + timedelta(minutes=5), 2, "unavailable"),
        credentials=ClientCredentials("own-client-id", CANARIES[2]),
        seen_codes=(SeenCode(CANARIES[3], now),),
        pending_credentials=(
            PendingCredentials(CANARIES[4], ClientCredentials("next", CANARIES[2]), now),
        ),
        connected_at=now - timedelta(days=1),
    )


@pytest.fixture
def full_db(tmp_path: Path) -> Path:
    path = tmp_path / "full.db"
    store = SQLiteStore(path)
    _fill(store, [_full_record(datetime.now(UTC))])
    store.close()
    return path


def _status(path: Path, capsys: pytest.CaptureFixture[str], name: str) -> dict[str, Any]:
    assert main(["status", name, "--db", str(path), "--client-id", CLIENT]) == 0
    printed = capsys.readouterr().out
    assert not any(canary in printed for canary in CANARIES)
    shown: dict[str, Any] = json.loads(printed)
    return shown


def test_status_shows_one_connection_in_full(
    full_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = _status(full_db, capsys, "user-full")
    assert shown["status"] == "connected"
    assert shown["lease"]["held"] is True
    assert shown["lease"]["purpose"] == "refresh"
    assert shown["backoff"]["attempts"] == 2
    assert shown["backoff"]["cause"] == "unavailable"
    assert shown["own_client_id"] == "own-client-id"
    assert shown["client_id"] == CLIENT
    assert shown["long_lived"] is False
    assert shown["connected_at"] is not None
    assert shown["refresh_expires_at"] is not None
    assert shown["pending_verification"] is None
    assert "worker-1" not in json.dumps(shown)  # a lease's owner names a worker: left out


def test_status_shows_an_error_with_its_hint_and_a_pending_verification(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, now = tmp_path / "e.db", datetime.now(UTC)
    store = SQLiteStore(path)
    later = now + timedelta(minutes=2)
    _fill(
        store,
        [
            _error("denied", now, "reauthorization_required"),
            _record("waiting", now, status=ConnectionStatus.EXCHANGED, verify_after=later),
        ],
    )
    store.close()
    shown = _status(path, capsys, "denied")
    assert (shown["error"], shown["error_hint"]) == ("reauthorization_required", "amoCRM's hint")
    assert shown["lease"] is None
    waiting = _status(path, capsys, "waiting")["pending_verification"]
    assert waiting == {"after": later.isoformat(), "attempts": 0}


def test_status_on_a_terminal_is_a_table(full_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("rich")
    out = _Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setenv("COLUMNS", "160")
    assert main(["status", "user-full", "--db", str(full_db), "--client-id", CLIENT]) == 0
    text = out.getvalue()
    assert "own-client-id" in text
    assert "refresh_expires_at" in text
    assert not any(canary in text for canary in CANARIES)


def test_a_record_stored_before_keys_had_an_integration_is_counted(clock: FakeClock) -> None:
    store, now = MemoryStore(clock=clock), clock()
    _fill(store, [attrs.evolve(_error("old", now, "verify_failed"), integration=None)])
    tally = Tally()
    listed = list(walk(store, tally, integration=CLIENT, now=now, due_within=timedelta()))
    assert [(one.connection_id, one.reason) for one in listed] == [("old", "verify_failed")]
    assert tally.by_reason == {"verify_failed": 1}


# Encrypted records and the one judgement of connections and status.


def _sealed_db(tmp_path: Path, now: datetime) -> Path:
    """A store whose connected records were sealed with a key the command is not given."""
    fernet = pytest.importorskip("cryptography.fernet")
    path = tmp_path / "sealed.db"
    store = SQLiteStore(path, encryption=fernet.Fernet(fernet.Fernet.generate_key()))
    day = timedelta(days=1)
    sealed = [_connected("sealed-1", now, 60 * day), _connected("sealed-2", now, 60 * day)]
    theirs = attrs.evolve(_connected("theirs", now, 60 * day), integration="other")
    _fill(store, [*sealed, theirs, _error("denied", now, "reauthorization_required")])
    store.close()
    return path


@pytest.mark.parametrize("keys", ["", "wrong"])
def test_records_the_keys_do_not_open_are_named_unreadable_and_the_walk_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, keys: str
) -> None:
    fernet = pytest.importorskip("cryptography.fernet")
    path = _sealed_db(tmp_path, datetime.now(UTC))
    given = fernet.Fernet.generate_key().decode() if keys else ""
    monkeypatch.setenv("AMO_OAUTH_KEYS", given)
    lines = _run(path, capsys)
    assert sorted(_named(lines, "unreadable")) == ["sealed-1", "sealed-2"]
    assert set(_named(lines, "needs_reauthorization")) == {"denied"}
    summary = lines[-1]
    assert (summary["total"], summary["unreadable"]) == (3, 2)
    assert "AMO_OAUTH_KEYS" in summary["unreadable_hint"]


def test_status_of_a_record_the_keys_do_not_open_says_to_set_the_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _sealed_db(tmp_path, datetime.now(UTC))
    monkeypatch.delenv("AMO_OAUTH_KEYS", raising=False)
    with pytest.raises(SystemExit) as stopped:
        main(["status", "sealed-1", "--db", str(path), "--client-id", CLIENT])
    assert "'sealed-1'" in str(stopped.value)
    assert "AMO_OAUTH_KEYS" in str(stopped.value)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("ended", "reauthorization_required"),
        ("long-lived-ended", "long_lived_token_expired"),
        ("denied", "reauthorization_required"),
        ("fresh", None),
    ],
)
def test_status_judges_reauthorization_as_connections_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, reason: str | None
) -> None:
    path, now, day = tmp_path / "j.db", datetime.now(UTC), timedelta(days=1)
    store = SQLiteStore(path)
    _fill(
        store,
        [
            _connected("ended", now, -day),
            _connected("long-lived-ended", now, -day, long_lived=True),
            _error("denied", now, "reauthorization_required"),
            _connected("fresh", now, 60 * day),
        ],
    )
    store.close()
    listed = _named(_run(path, capsys), "needs_reauthorization")
    assert (listed[name]["reason"] if name in listed else None) == reason
    assert _status(path, capsys, name)["needs_reauthorization"] == reason
