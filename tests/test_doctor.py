"""``amo-oauth doctor`` (issue 23, part 4): each finding provoked, on the store kinds it is
about (SQLite file modes and clocks, a Redis whose policy may evict, an unmigrated PostgreSQL),
through the command where it can be (exit status 1 on an error, JSON, lines), and never a
secret in what it prints.

``PROVOKED`` names the finding each test provokes; a test keeps it equal to ``FINDINGS`` and
docs/operations.md's section listing them.
"""

from __future__ import annotations

import io
import json
import logging
import re
import secrets
import socket
import sqlite3
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography.fernet import Fernet

from _pg_server import postgres_url  # noqa: F401
from _redis_server import REDIS_PASSWORD, redis_url  # noqa: F401
from amo_oauth import AmoOAuth, MemoryStore, SQLiteStore
from amo_oauth._doctor import (
    DRIFT_WARNING,
    FINDINGS,
    Level,
    Report,
    examine_store,
    render_lines,
    render_table,
)
from amo_oauth._state_token import MAX_CLOCK_SKEW
from amo_oauth.cli import main
from amo_oauth.stores import PostgresStore, RedisStore
from amo_oauth.testing import FakeAmoCRM

from helpers import run_consent

ROOT = Path(__file__).resolve().parent.parent
#: Secrets made for this run: none may appear in any output.
CLIENT_SECRET = secrets.token_urlsafe(32)
STATE_SECRET = secrets.token_urlsafe(32)
PREVIOUS_SECRET = secrets.token_urlsafe(32)
KEY = Fernet.generate_key().decode()
OTHER_KEY = Fernet.generate_key().decode()
CANARIES = (CLIENT_SECRET, STATE_SECRET, PREVIOUS_SECRET, KEY, OTHER_KEY, REDIS_PASSWORD)
REDIRECT = "https://app.example/api/amo-crm/callback"
GOOD_ENV = {
    "AMO_CLIENT_ID": "doctor-client",
    "AMO_CLIENT_SECRET": CLIENT_SECRET,
    "AMO_REDIRECT_URI": REDIRECT,
    "AMO_STATE_SECRET": STATE_SECRET,
    "AMO_PREVIOUS_STATE_SECRETS": PREVIOUS_SECRET,
}
SETTINGS = (*GOOD_ENV, "AMO_SECRETS_URI", "AMO_OAUTH_KEYS", "AMO_OAUTH_STORE")
SETTINGS += ("AMO_OAUTH_INTEGRATIONS",)

#: The finding each test below provokes (kept equal to FINDINGS by a test).
PROVOKED = {
    "store_unopened": "test_a_store_url_it_cannot_open",
    "store_unreachable": "test_a_store_that_does_not_answer",
    "store_not_migrated": "test_an_unmigrated_store",
    "store_may_lose_keys": "test_a_redis_that_may_evict",
    "store_warning": "test_a_redis_allowed_to_evict",
    "sqlite_file_mode": "test_sqlite_files_open_to_others",
    "sqlite_directory_writable": "test_an_sqlite_directory_open_to_others",
    "sqlite_directory_readable": "test_an_sqlite_directory_open_to_others",
    "clock_skew": "test_a_store_clock_far_from_this_machine",
    "clock_drift": "test_a_store_clock_far_from_this_machine",
    "encryption_keys_invalid": "test_keys_that_are_not_fernet_keys",
    "encryption_keys_missing": "test_encrypted_records_without_keys",
    "encryption_key_mismatch": "test_keys_that_open_no_record",
    "encryption_records_plain": "test_keys_given_but_the_records_are_plain",
    "store_not_a_database": "test_a_file_that_is_no_database",
    "record_unreadable": "test_a_corrupt_record",
    "settings_unchecked": "test_settings_missing_in_whole_or_in_part",
    "settings_missing": "test_settings_missing_in_whole_or_in_part",
    "settings_invalid": "test_settings_config_refuses",
    "redirect_uri_http": "test_a_redirect_uri_over_http",
    "redirect_uri_path": "test_a_redirect_uri_off_the_routes",
    "app_scheme_invalid": "test_an_app_scheme_that_opens_no_app",
    "state_secret_weak": "test_weak_state_secrets",
    "secrets_uri_http": "test_metadata_mode_secrets_uri",
    "secrets_uri_origin": "test_metadata_mode_secrets_uri",
    "secrets_uri_path": "test_metadata_mode_secrets_uri",
}


@pytest.fixture
def place(tmp_path: Path) -> Path:
    """A directory only its owner may enter, as a store's should be."""
    directory = tmp_path / "private"
    directory.mkdir(mode=0o700)
    directory.chmod(0o700)
    return directory


@pytest.fixture
def db(place: Path) -> Path:
    """A migrated, empty SQLite store (its files 0600, as the store makes them)."""
    path = place / "amo.db"
    assert main(["migrate", "--store", f"sqlite:///{path}"]) == 0
    return path


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch, db: Path) -> Callable[..., None]:
    """Sets the good settings (and the store), then ``changes`` (None: unset)."""
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)

    def set_(**changes: str | None) -> None:
        values: dict[str, str | None] = {**GOOD_ENV, "AMO_OAUTH_STORE": f"sqlite:///{db}"}
        values.update(changes)
        for name, value in values.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)

    set_()
    return set_


@pytest.fixture
def doctor(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, dict[str, Any]]]:
    """Runs ``amo-oauth doctor ... --json``: its exit status and JSON, checked for secrets."""

    def run(*args: str) -> tuple[int, dict[str, Any]]:
        code = main(["doctor", *args, "--json"])
        out, err = capsys.readouterr()
        for canary in CANARIES:
            assert canary not in out + err
        return code, json.loads(out)

    return run


def ids(shown: dict[str, Any]) -> list[str]:
    return [finding["id"] for finding in shown["findings"]]


#: ``connect(user, key)``: a connection of ``user`` stored in ``db``, its tokens sealed by
#: ``key`` (a Fernet key) or, for None, stored plain.
Connect = Callable[[str, "str | None"], None]


@pytest.fixture
def connect(db: Path, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM) -> Connect:
    def store_one(user: str, key: str | None) -> None:
        encryption = Fernet(key.encode()) if key is not None else None
        oauth = make_oauth(store=SQLiteStore(db, encryption=encryption))
        run_consent(oauth, fake, user)
        oauth.close()

    return store_one


# -- a healthy setup ----------------------------------------------------------------------


def test_a_healthy_setup_finds_nothing_and_exits_0(
    environ: Callable[..., None],
    doctor: Callable[..., tuple[int, dict[str, Any]]],
    connect: Connect,
) -> None:
    connect("user-1", KEY)
    environ(AMO_OAUTH_KEYS=f"{KEY},{OTHER_KEY}")
    code, shown = doctor("--app-scheme", "myapp")
    assert (code, shown) == (0, {"healthy": True, "findings": []})


def test_warnings_alone_exit_0(
    environ: Callable[..., None], doctor: Callable[..., tuple[int, dict[str, Any]]]
) -> None:
    environ(AMO_REDIRECT_URI="http://127.0.0.1:8000/api/amo-crm/callback")
    code, shown = doctor()
    assert (code, ids(shown), shown["healthy"]) == (0, ["redirect_uri_http"], True)


# -- the store ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://host/db", "memory://", "sqlite://host/x.db"])
def test_a_store_url_it_cannot_open(
    environ: Callable[..., None], doctor: Callable[..., tuple[int, dict[str, Any]]], url: str
) -> None:
    code, shown = doctor("--store", url)
    assert (code, ids(shown)) == (1, ["store_unopened"])


def test_a_file_that_is_no_database(
    environ: Callable[..., None], doctor: Callable[..., tuple[int, dict[str, Any]]], place: Path
) -> None:
    garbage = place / "not-a-database.db"
    garbage.write_bytes(b"this is no SQLite file at all" * 100)
    garbage.chmod(0o600)
    code, shown = doctor("--store", f"sqlite:///{garbage}")
    assert (code, ids(shown)) == (1, ["store_not_a_database"])
    assert "start the store" not in shown["findings"][0]["action"]  # no server to start
    assert str(garbage) in shown["findings"][0]["message"]


def test_a_store_that_does_not_answer(
    environ: Callable[..., None], doctor: Callable[..., tuple[int, dict[str, Any]]]
) -> None:
    with socket.socket() as unused:  # a loopback port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    code, shown = doctor("--store", f"redis://127.0.0.1:{port}/0")
    assert (code, ids(shown)) == (1, ["store_unreachable"])


@pytest.fixture
def pool_log_levels() -> Iterator[None]:
    """The psycopg_pool loggers' levels, restored after a command set them."""
    loggers = [logging.getLogger(name) for name in ("psycopg.pool", "psycopg_pool")]
    before = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, before, strict=True):
        logger.setLevel(level)


@pytest.mark.parametrize("command", [["doctor"], ["connections"], ["status", "user-1"]])
def test_a_postgres_that_does_not_answer_is_said_once_without_the_pools_warnings(
    environ: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    pool_log_levels: None,
    command: list[str],
) -> None:
    pytest.importorskip("psycopg_pool")
    with socket.socket() as unused:  # a loopback port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    url = f"postgresql://app:{CANARIES[0]}@127.0.0.1:{port}/amo"
    try:
        main([*command, "--store", url])
        stopped = ""
    except SystemExit as exit_:  # the interpreter prints its message on stderr
        stopped = str(exit_)
    out, err = capsys.readouterr()
    err += stopped
    pool = [record for record in caplog.records if record.name.startswith("psycopg")]
    assert [record.getMessage() for record in pool] == []
    assert "could not connect" in out + err  # the command's own sentence, once
    assert CANARIES[0] not in out + err


def test_an_unmigrated_store(
    environ: Callable[..., None], doctor: Callable[..., tuple[int, dict[str, Any]]], place: Path
) -> None:
    missing = place / "typo.db"
    code, shown = doctor("--store", f"sqlite:///{missing}")
    assert (code, ids(shown)) == (1, ["store_not_migrated"])
    assert "amo-oauth migrate" in shown["findings"][0]["action"]
    # The doctor and the docs agree: only migrate makes a store (never "on first use").
    assert "amo-oauth migrate creates it" in shown["findings"][0]["message"]
    assert "first use" not in shown["findings"][0]["message"]
    assert not missing.exists()  # the doctor creates nothing


@pytest.mark.services
def test_an_unmigrated_postgres(postgres_url: str) -> None:  # noqa: F811
    store = PostgresStore(postgres_url, table=f"doctor_{uuid.uuid4().hex[:12]}")
    try:
        found = examine_store(store, keys_given=False)
    finally:
        store.close()
    assert [finding.id for finding in found] == ["store_not_migrated"]
    assert "migrate" in found[0].message


@pytest.fixture
def policy(redis_url: str) -> Iterator[Callable[[str], None]]:  # noqa: F811
    """Set the session server's maxmemory-policy under a 1 GB limit; restored after."""
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    before = raw.config_get("maxmemory-policy"), raw.config_get("maxmemory")

    def set_(name: str) -> None:
        raw.config_set("maxmemory", 2**30)
        raw.config_set("maxmemory-policy", name)

    yield set_
    raw.config_set("maxmemory", before[1]["maxmemory"])
    raw.config_set("maxmemory-policy", before[0]["maxmemory-policy"])
    raw.close()


def _redis_findings(url: str, **options: Any) -> list[str]:
    prefix = f"doctor-{uuid.uuid4().hex}:"
    RedisStore(url, prefix=prefix, allow_eviction=True).migrate()
    store = RedisStore(url, prefix=prefix, **options)
    try:
        found = examine_store(store, keys_given=False)
    finally:
        store.close()
    for finding in found:
        assert REDIS_PASSWORD not in finding.message
    return [finding.id for finding in found]


@pytest.mark.services
def test_a_redis_that_may_evict(redis_url: str, policy: Callable[[str], None]) -> None:  # noqa: F811
    assert _redis_findings(redis_url) == []  # the session's server: noeviction
    policy("allkeys-lru")
    assert _redis_findings(redis_url) == ["store_may_lose_keys"]


@pytest.mark.services
def test_a_redis_that_may_evict_through_the_command(
    redis_url: str,  # noqa: F811
    policy: Callable[[str], None],
    environ: Callable[..., None],
    doctor: Callable[..., tuple[int, dict[str, Any]]],
) -> None:
    own_db = redis_url.rsplit("/", 1)[0] + "/11"  # the default prefix, kept off others' db 0
    RedisStore(own_db).migrate()
    policy("volatile-lru")
    code, shown = doctor("--store", own_db)
    assert (code, ids(shown)) == (1, ["store_may_lose_keys"])
    assert "noeviction" in shown["findings"][0]["action"]


@pytest.mark.services
@pytest.mark.parametrize("allow_eviction", [False, True])
def test_an_unmigrated_redis_that_may_evict_says_each_part_in_its_own_finding(
    redis_url: str,  # noqa: F811
    policy: Callable[[str], None],
    allow_eviction: bool,
) -> None:
    policy("allkeys-lru")
    prefix = f"doctor-{uuid.uuid4().hex}:"  # never migrated
    store = RedisStore(redis_url, prefix=prefix, allow_eviction=allow_eviction)
    try:
        found = {finding.id: finding.message for finding in examine_store(store, keys_given=False)}
    finally:
        store.close()
    memory = "store_warning" if allow_eviction else "store_may_lose_keys"
    assert set(found) == {"store_not_migrated", memory}
    assert "maxmemory" not in found["store_not_migrated"]
    assert "schema" not in found[memory]
    assert "maxmemory-policy allkeys-lru" in found[memory]


@pytest.mark.services
def test_a_redis_allowed_to_evict(redis_url: str, policy: Callable[[str], None]) -> None:  # noqa: F811
    policy("allkeys-lru")
    assert _redis_findings(redis_url, allow_eviction=True) == ["store_warning"]


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_sqlite_files_open_to_others(
    environ: Callable[..., None],
    doctor: Callable[..., tuple[int, dict[str, Any]]],
    db: Path,
    suffix: str,
    mode: int,
) -> None:
    running = SQLiteStore(db)  # an app's open store: its -wal and -shm exist meanwhile
    running.load("u:doctor-client:someone")
    file = Path(f"{db}{suffix}")
    try:
        assert file.exists()
        file.chmod(mode)
        code, shown = doctor()
        assert (code, ids(shown)) == (1, ["sqlite_file_mode"])
        assert str(file) in shown["findings"][0]["message"]
        # SQLite gives a -wal or -shm it makes the database's mode: each is put right.
        for made in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            if made.exists():
                made.chmod(0o600)
        assert doctor()[0] == 0
    finally:
        running.close()


@pytest.mark.parametrize(
    ("mode", "found", "code"),
    [
        (0o770, "sqlite_directory_writable", 1),
        (0o703, "sqlite_directory_writable", 1),
        (0o755, "sqlite_directory_readable", 0),
        (0o710, "sqlite_directory_readable", 0),
    ],
)
def test_an_sqlite_directory_open_to_others(
    environ: Callable[..., None],
    doctor: Callable[..., tuple[int, dict[str, Any]]],
    place: Path,
    mode: int,
    found: str,
    code: int,
) -> None:
    place.chmod(mode)
    try:
        assert doctor()[0:1] == (code,)
        assert ids(doctor()[1]) == [found]
    finally:
        place.chmod(0o700)


def _shifted(by: timedelta) -> Callable[[], datetime]:
    return lambda: datetime.now(UTC) + by


@pytest.mark.parametrize(
    ("by", "found"),
    [
        (MAX_CLOCK_SKEW + timedelta(seconds=30), ["clock_skew"]),
        (-MAX_CLOCK_SKEW - timedelta(seconds=30), ["clock_skew"]),
        (DRIFT_WARNING + timedelta(seconds=10), ["clock_drift"]),
        (-DRIFT_WARNING - timedelta(seconds=10), ["clock_drift"]),
        (DRIFT_WARNING - timedelta(seconds=10), []),
    ],
)
def test_a_store_clock_far_from_this_machine(db: Path, by: timedelta, found: list[str]) -> None:
    store = SQLiteStore(db, clock=_shifted(by))
    try:
        findings = examine_store(store, keys_given=False)
    finally:
        store.close()
    assert [finding.id for finding in findings] == found
    if found == ["clock_skew"]:
        assert findings[0].level is Level.ERROR
        way = "ahead of" if by > timedelta(0) else "behind"
        assert way in findings[0].message


@pytest.mark.services
def test_a_redis_clock_far_from_this_machine(redis_url: str) -> None:  # noqa: F811
    ahead = MAX_CLOCK_SKEW + timedelta(minutes=1)
    assert _redis_findings(redis_url, clock_offset=lambda: ahead) == ["clock_skew"]


# -- encryption at rest -------------------------------------------------------------------


@pytest.mark.parametrize("keys", ["not-a-key", f"{KEY},short"], ids=["not-a-key", "good,short"])
def test_keys_that_are_not_fernet_keys(
    environ: Callable[..., None], doctor: Callable[..., tuple[int, dict[str, Any]]], keys: str
) -> None:
    environ(AMO_OAUTH_KEYS=keys)
    code, shown = doctor()
    assert (code, ids(shown)) == (1, ["encryption_keys_invalid"])


def test_encrypted_records_without_keys(
    environ: Callable[..., None],
    doctor: Callable[..., tuple[int, dict[str, Any]]],
    connect: Connect,
) -> None:
    connect("user-1", KEY)
    code, shown = doctor()
    assert (code, ids(shown)) == (1, ["encryption_keys_missing"])


def test_keys_that_open_no_record(
    environ: Callable[..., None],
    doctor: Callable[..., tuple[int, dict[str, Any]]],
    connect: Connect,
) -> None:
    connect("user-1", KEY)
    environ(AMO_OAUTH_KEYS=OTHER_KEY)
    code, shown = doctor()
    assert (code, ids(shown)) == (1, ["encryption_key_mismatch"])
    assert "user-1" in shown["findings"][0]["message"]  # the record's key: no secret
    environ(AMO_OAUTH_KEYS=f"{OTHER_KEY},{KEY}")  # the old key added after the new one
    assert doctor()[0] == 0


def test_keys_given_but_the_records_are_plain(
    environ: Callable[..., None],
    doctor: Callable[..., tuple[int, dict[str, Any]]],
    connect: Connect,
) -> None:
    connect("user-1", None)  # no encryption: its tokens stored plain
    connect("user-1", KEY)  # user-1 again, now sealed
    environ(AMO_OAUTH_KEYS=KEY)
    assert doctor() == (0, {"healthy": True, "findings": []})
    connect("user-2", None)  # one plain record beside the sealed one
    code, shown = doctor()
    assert (code, ids(shown)) == (0, ["encryption_records_plain"])  # a warning
    assert "1 of the first 2 records" in shown["findings"][0]["message"]
    assert "rotate-key" in shown["findings"][0]["action"]


def test_a_corrupt_record(
    environ: Callable[..., None],
    doctor: Callable[..., tuple[int, dict[str, Any]]],
    db: Path,
    connect: Connect,
) -> None:
    connect("user-1", None)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE amo_connections SET data = 'not a record'")
    conn.close()
    code, shown = doctor()
    assert (code, ids(shown)) == (0, ["record_unreadable"])


# -- the settings -------------------------------------------------------------------------


def test_settings_missing_in_whole_or_in_part(
    environ: Callable[..., None], doctor: Callable[..., tuple[int, dict[str, Any]]]
) -> None:
    environ(**dict.fromkeys(GOOD_ENV))
    code, shown = doctor()
    assert (code, ids(shown)) == (0, ["settings_unchecked"])  # a store-only run
    environ(AMO_CLIENT_SECRET=None)
    code, shown = doctor()
    assert (code, ids(shown)) == (1, ["settings_missing"])
    assert shown["findings"][0]["message"] == "AMO_CLIENT_SECRET unset"


@pytest.mark.parametrize(
    "change",
    [
        {"AMO_STATE_SECRET": CLIENT_SECRET},  # Config refuses the client secret as state's
        {"AMO_STATE_SECRET": STATE_SECRET[:20]},  # too short
        {"AMO_PREVIOUS_STATE_SECRETS": STATE_SECRET},  # the current one again
        {"AMO_REDIRECT_URI": "http://app.example/api/amo-crm/callback"},
    ],
)
def test_settings_config_refuses(
    environ: Callable[..., None],
    doctor: Callable[..., tuple[int, dict[str, Any]]],
    change: dict[str, str],
) -> None:
    environ(**change)
    code, shown = doctor()
    assert (code, ids(shown)) == (1, ["settings_invalid"])


def test_a_redirect_uri_over_http(
    environ: Callable[..., None], doctor: Callable[..., tuple[int, dict[str, Any]]]
) -> None:
    environ(AMO_REDIRECT_URI="http://localhost:8000/api/amo-crm/callback")
    code, shown = doctor()
    assert (code, ids(shown)) == (0, ["redirect_uri_http"])


def test_a_redirect_uri_off_the_routes(
    environ: Callable[..., None], doctor: Callable[..., tuple[int, dict[str, Any]]]
) -> None:
    environ(AMO_REDIRECT_URI="https://app.example/oauth/done")
    assert ids(doctor()[1]) == ["redirect_uri_path"]
    environ(AMO_REDIRECT_URI="https://app.example/amo/callback")
    assert ids(doctor()[1]) == ["redirect_uri_path"]  # the default prefix is /api/amo-crm
    assert doctor("--prefix", "/amo")[1]["findings"] == []
    # Mounted under a path of the app's own (include_router's prefix, a proxy's path).
    environ(AMO_REDIRECT_URI="https://app.example/v2/api/amo-crm/callback")
    assert doctor()[1]["findings"] == []


@pytest.mark.parametrize("scheme", ["https", "HTTP", "javascript", "data", "my app", "1app"])
def test_an_app_scheme_that_opens_no_app(
    environ: Callable[..., None],
    doctor: Callable[..., tuple[int, dict[str, Any]]],
    scheme: str,
) -> None:
    code, shown = doctor("--app-scheme", scheme)
    assert (code, ids(shown)) == (1, ["app_scheme_invalid"])


@pytest.mark.parametrize(
    "weak",
    [
        "a" * 40,
        "0123456789" * 4,
        "a" * 39 + "b",
        secrets.token_urlsafe(32) + "password",
        "my-amoCRM-state-" + secrets.token_hex(8),
        "Secret" + secrets.token_urlsafe(32),
    ],
    # Stable ids: the same on every collection (pytest -n compares them), no secret shown.
    ids=["repeated", "digits", "near-repeated", "suffix-word", "prefix-word", "prefix-Secret"],
)
@pytest.mark.parametrize("where", ["AMO_STATE_SECRET", "AMO_PREVIOUS_STATE_SECRETS"])
def test_weak_state_secrets(
    environ: Callable[..., None],
    doctor: Callable[..., tuple[int, dict[str, Any]]],
    weak: str,
    where: str,
) -> None:
    environ(**{where: weak})
    code, shown = doctor()
    assert (code, ids(shown)) == (1, ["state_secret_weak"])
    message = shown["findings"][0]["message"]
    assert weak not in message
    named = "state_secret" if where == "AMO_STATE_SECRET" else "previous state secret 1 of 1"
    assert message.startswith(named)


@pytest.mark.parametrize(
    ("secrets_uri", "found"),
    [
        ("https://app.example/api/amo-crm/secrets", []),
        ("http://127.0.0.1/api/amo-crm/secrets", ["secrets_uri_http", "secrets_uri_origin"]),
        ("https://other.example/api/amo-crm/secrets", ["secrets_uri_origin"]),
        ("https://app.example:8443/api/amo-crm/secrets", ["secrets_uri_origin"]),
        ("https://app.example/amocrm-posts-here", ["secrets_uri_path"]),
    ],
)
def test_metadata_mode_secrets_uri(
    environ: Callable[..., None],
    doctor: Callable[..., tuple[int, dict[str, Any]]],
    secrets_uri: str,
    found: list[str],
) -> None:
    environ(AMO_SECRETS_URI=secrets_uri, AMO_CLIENT_SECRET=None)
    code, shown = doctor()
    assert (code, sorted(ids(shown))) == (0, found)


# -- several integrations, and how it is shown ---------------------------------------------


def test_each_integration_of_the_file_is_examined(
    environ: Callable[..., None],
    doctor: Callable[..., tuple[int, dict[str, Any]]],
    tmp_path: Path,
    db: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    file = tmp_path / "integrations.toml"
    file.write_text(
        f'store = "sqlite:///{db}"\n'
        "[integrations.good]\n"
        'client_id = "good"\n'
        'client_secret_env = "AMO_CLIENT_SECRET"\n'
        f'redirect_uri = "{REDIRECT}"\n'
        'state_secret_env = "AMO_STATE_SECRET"\n'
        "[integrations.weak]\n"
        'client_id = "weak"\n'
        'client_secret_env = "AMO_CLIENT_SECRET"\n'
        'redirect_uri = "https://app.example/weak"\n'
        'state_secret_env = "WEAK_STATE_SECRET"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("WEAK_STATE_SECRET", "x" * 40)
    code, shown = doctor("--integrations", str(file))
    assert code == 1
    by_name = shown["integrations"]
    assert by_name["good"] == {"healthy": True, "findings": []}
    assert sorted(ids(by_name["weak"])) == ["redirect_uri_path", "state_secret_weak"]
    code, shown = doctor("--integrations", str(file), "--integration", "good")
    assert (code, shown["integration"], shown["findings"]) == (0, "good", [])


def test_lines_off_a_terminal_say_what_to_do(
    environ: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    environ(AMO_STATE_SECRET="q" * 40)
    assert main(["doctor", "--app-scheme", "https"]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[-1] == "doctor: 2 error(s), 0 warning(s)"
    assert lines[0].startswith("error app_scheme_invalid: ")
    assert "; do: " in lines[0]
    assert "q" * 40 not in out


def test_the_table_on_a_terminal() -> None:
    from amo_oauth._doctor import Finding

    reports = {
        "one": Report((Finding("clock_drift", "the store's clock is 40.0 s ahead"),)),
        "two": Report(()),
    }
    stream = io.StringIO()
    assert render_table(reports, stream)
    table = stream.getvalue()
    assert "clock_drift" in table and "40.0 s ahead" in table and "synchronise" in table
    assert "doctor: 0 error(s), 1 warning(s)" in table
    plain = io.StringIO()
    render_lines({None: Report(())}, plain)
    assert plain.getvalue() == "doctor: nothing found\n"


def test_the_doctor_reads_memory_stores_too() -> None:
    """A store of any kind is judged through ``check()``: MemoryStore has nothing to find."""
    store = MemoryStore()
    assert examine_store(store, keys_given=False) == []


# -- the list of findings ------------------------------------------------------------------


def test_every_finding_is_provoked_by_a_test_here() -> None:
    assert set(PROVOKED) == set(FINDINGS)
    names = {name for name in globals() if name.startswith("test_")}
    assert set(PROVOKED.values()) <= names


def test_operations_md_lists_every_finding_and_what_to_do() -> None:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = re.search(r"### `amo-oauth doctor`\n(.*?)\n## ", text, re.S)
    assert section is not None
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", section[1], re.M))
    assert listed == set(FINDINGS)
    for finding, (level, _) in FINDINGS.items():
        assert re.search(rf"^\| `{finding}` \| {level.value} \|", section[1], re.M), finding


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_the_table(
    environ: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    environ(AMO_STATE_SECRET="q" * 40)
    terminal = _Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    assert main(["doctor"]) == 1
    shown = terminal.getvalue()
    assert "amo-oauth doctor" in shown and "state_secret_weak" in shown
    assert "q" * 40 not in shown


@pytest.mark.services
def test_a_postgres_that_does_not_answer() -> None:
    from _redis_server import free_port

    store = PostgresStore(f"postgresql://nobody@127.0.0.1:{free_port()}/none", timeout=2.0)
    try:
        found = examine_store(store, keys_given=False)
    finally:
        store.close()
    assert [finding.id for finding in found] == ["store_unreachable"]


def test_keys_without_the_crypto_extra(
    environ: Callable[..., None],
    doctor: Callable[..., tuple[int, dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.fernet", None)  # as if not installed
    environ(AMO_OAUTH_KEYS=KEY)
    code, shown = doctor()
    assert (code, ids(shown)) == (1, ["encryption_keys_invalid"])
    assert "pip install 'amo_oauth[crypto]'" in shown["findings"][0]["message"]
