"""Key rotation: every record re-encrypted with the newest key, status untouched, leased records
put aside and done later, undecryptable rows counted; the core and ``amo-oauth rotate-key``."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import attrs
import httpx
import pytest
from cryptography.fernet import Fernet, MultiFernet

from _pg_server import postgres_url  # noqa: F401
from _redis_server import redis_url  # noqa: F401
from amo_oauth import AmoOAuth, ConnectionRecord, ConnectionStatus, SQLiteStore, StoreError
from amo_oauth._records import Lease
from amo_oauth._rotation import RotationProgress, rotate_keys
from amo_oauth.cli import main
from amo_oauth.stores import BaseStore, Loaded, MemoryStore, Store
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import config_for, run_consent

OLD, NEW = Fernet.generate_key(), Fernet.generate_key()
USERS = ("u1", "u2", "u3", "u4")


def connect(store: Store, fake: FakeAmoCRM, clock: FakeClock, users: tuple[str, ...]) -> None:
    http = httpx.Client(transport=fake.transport())
    oauth = AmoOAuth(config_for(fake), store=store, http=http, clock=clock)
    for user in users:
        assert run_consent(oauth, fake, user).connection.is_connected
    http.close()


def keys_of(store: Store) -> list[str]:
    return [record.key for record in store.scan(None, 1000)]


def lease(store: Store, key: str, clock: FakeClock) -> ConnectionRecord:
    """Give the record a live refresh lease, as a worker between its claim and its store."""
    record = store.load(key).record
    assert record is not None
    held = Lease("worker-1", "refresh", clock() + timedelta(seconds=60))
    leased = attrs.evolve(record, lease=held, version=record.version + 1)
    assert store.compare_and_set(leased, record.version)
    return leased


def tokens_of(store: Store) -> dict[str, tuple[str, str]]:
    out = {}
    for record in store.scan(None, 1000):
        if record.tokens is not None:
            out[record.key] = (record.tokens.access_token, record.tokens.refresh_token)
    return out


@pytest.fixture
def db(tmp_path: Path, fake: FakeAmoCRM, clock: FakeClock) -> Path:
    """An SQLite store sealed with OLD: four connections and one record without tokens."""
    path = tmp_path / "amo.db"
    store = SQLiteStore(path, encryption=Fernet(OLD))
    connect(store, fake, clock, USERS)
    assert store.compare_and_set(ConnectionRecord("bare", version=1), None)
    store.close()
    return path


def raw_rows(path: Path) -> list[tuple[str, int, str, str]]:
    with sqlite3.connect(path) as raw:
        rows = raw.execute("SELECT connection_id, version, status, data FROM amo_connections")
        found = [tuple(row) for row in rows]
    raw.close()
    return found  # type: ignore[return-value]


def test_every_row_ends_sealed_with_the_newest_key(db: Path, clock: FakeClock) -> None:
    rotating = SQLiteStore(db, encryption=MultiFernet([Fernet(NEW), Fernet(OLD)]))
    before = {record.key: record for record in rotating.scan(None, 100)}
    secrets = tokens_of(rotating)
    seen: list[RotationProgress] = []
    report = rotate_keys(rotating, now=clock, progress=seen.append, page_size=2)
    assert report.rewritten == 4 and report.without_tokens == 1
    assert report.complete and report.left_leased == () and report.undecryptable == ()
    assert report.last_key == max(before)
    assert [p.after for p in seen] == sorted(before)[1::2]  # after each full page of 2
    rotating.close()
    # The new key alone opens every row; the old one alone opens none with tokens.
    new_only = SQLiteStore(db, encryption=Fernet(NEW))
    after = {record.key: record for record in new_only.scan(None, 100)}
    assert tokens_of(new_only) == secrets
    for key, record in after.items():
        was = before[key]
        if was.tokens is None:
            assert record == was  # nothing sealed: not rewritten
        else:
            assert record == attrs.evolve(was, version=was.version + 1)
            assert record.status is ConnectionStatus.CONNECTED
    new_only.close()
    old_only = SQLiteStore(db, encryption=Fernet(OLD))
    with pytest.raises(StoreError, match="cannot decrypt"):
        old_only.scan(None, 100)
    old_only.close()
    # No token in clear anywhere in the table.
    for _, _, _, data in raw_rows(db):
        assert not any(token in data for pair in secrets.values() for token in pair)


def test_a_leased_record_is_skipped_then_done(db: Path, clock: FakeClock) -> None:
    rotating = SQLiteStore(db, encryption=MultiFernet([Fernet(NEW), Fernet(OLD)]), clock=clock)
    key = keys_of(rotating)[1]
    leased = lease(rotating, key, clock)
    released: list[float] = []

    def holder_finishes(seconds: float) -> None:  # the lease's holder stores its pair
        released.append(seconds)
        done = attrs.evolve(leased, lease=None, version=leased.version + 1)
        assert rotating.compare_and_set(done, leased.version)

    report = rotate_keys(rotating, now=clock, sleep=holder_finishes, pause=0.5)
    assert released == [0.5]  # one round of retries, after the pass
    assert report.complete and report.rewritten == 4
    stored = rotating.load(key).record
    assert stored is not None and stored.version == leased.version + 2 and stored.lease is None
    rotating.close()
    assert len(tokens_of(SQLiteStore(db, encryption=Fernet(NEW)))) == 4


def test_a_lease_that_stays_is_left_for_a_later_run(db: Path, clock: FakeClock) -> None:
    # The store's clock judges the lease: the test moves it.
    rotating = SQLiteStore(db, encryption=MultiFernet([Fernet(NEW), Fernet(OLD)]), clock=clock)
    key = keys_of(rotating)[1]  # [0] is "bare"
    leased = lease(rotating, key, clock)
    pauses: list[float] = []
    report = rotate_keys(rotating, now=clock, sleep=pauses.append, retries=3, pause=1.0)
    assert pauses == [1.0, 1.0, 1.0]
    assert report.left_leased == (key,) and not report.complete
    assert report.rewritten == 3
    assert rotating.load(key).record == leased  # never touched
    # The lease ends (its holder died): the next run finishes the job.
    clock.advance(timedelta(seconds=61))
    again = rotate_keys(rotating, now=clock, sleep=pauses.append)
    assert again.complete and again.rewritten == 4
    rotating.close()
    assert len(tokens_of(SQLiteStore(db, encryption=Fernet(NEW)))) == 4


def test_rows_no_key_opens_are_counted_not_crashed_on(
    tmp_path: Path, db: Path, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    stranger = SQLiteStore(db, encryption=Fernet(Fernet.generate_key()))
    connect(stranger, fake, clock, ("u2b", "zz"))  # sealed with a key nobody passes
    stranger.close()
    rotating = SQLiteStore(db, encryption=MultiFernet([Fernet(NEW), Fernet(OLD)]))
    report = rotate_keys(rotating, now=clock, page_size=3)
    assert sorted(report.undecryptable) == [
        f"u:{fake.client_id}:u2b",
        f"u:{fake.client_id}:zz",
    ]
    assert report.rewritten == 4 and not report.complete
    rotating.close()


def test_resuming_after_a_printed_key(db: Path, clock: FakeClock) -> None:
    rotating = SQLiteStore(db, encryption=MultiFernet([Fernet(NEW), Fernet(OLD)]))
    keys = keys_of(rotating)
    report = rotate_keys(rotating, now=clock, after=keys[2])
    assert report.rewritten == len([k for k in keys[3:] if k != "bare"])
    again = rotate_keys(rotating, now=clock)  # from the start: safe, and it finishes
    assert again.complete and again.rewritten == 4
    rotating.close()


def test_a_store_that_cannot_list_is_a_clear_error(clock: FakeClock) -> None:
    class NoScan(BaseStore):  # a store of one's own that left scan out
        def __init__(self) -> None:
            self.inner = MemoryStore()

        def load(self, key: str) -> Loaded:
            return self.inner.load(key)

    with pytest.raises(NotImplementedError, match="scan"):
        rotate_keys(NoScan(), now=clock)
    with pytest.raises(ValueError, match="retries"):
        rotate_keys(MemoryStore(), retries=-1)


# -- Postgres and Redis ----------------------------------------------------------------------


def rotate_on(
    make: Callable[..., Store],
    fake: FakeAmoCRM,
    clock: FakeClock,
    raw_bodies: Callable[[], list[str]],
) -> None:
    old = make(encryption=Fernet(OLD))
    connect(old, fake, clock, USERS)
    secrets = tokens_of(old)
    key = keys_of(old)[0]
    leased = lease(old, key, clock)

    rotating = make(encryption=MultiFernet([Fernet(NEW), Fernet(OLD)]))

    def holder_finishes(_: float) -> None:
        assert rotating.compare_and_set(
            attrs.evolve(leased, lease=None, version=leased.version + 1), leased.version
        )

    report = rotate_keys(rotating, now=clock, sleep=holder_finishes, page_size=3)
    assert report.complete and report.rewritten == 4
    assert tokens_of(make(encryption=Fernet(NEW))) == secrets
    with pytest.raises(StoreError, match="cannot decrypt"):
        make(encryption=Fernet(OLD)).load(key)
    bodies = raw_bodies()
    assert len(bodies) == 4
    for body in bodies:
        assert not any(token in body for pair in secrets.values() for token in pair)
        assert '"status":"connected"' in body.replace(" ", "")


@pytest.mark.services
def test_rotation_on_postgres(
    request: pytest.FixtureRequest, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    from amo_oauth.stores import PostgresStore

    url: str = request.getfixturevalue("postgres_url")
    table = f"rot_{uuid.uuid4().hex[:12]}"
    made: list[PostgresStore] = []

    def make(**options: object) -> PostgresStore:
        store = PostgresStore(url, table=table, **options)  # type: ignore[arg-type]
        store.migrate()
        made.append(store)
        return store

    def raw_bodies() -> list[str]:
        import psycopg

        with psycopg.connect(url) as conn:
            rows = conn.execute(f'SELECT data FROM "{table}"'.encode()).fetchall()
        return [str(data) for (data,) in rows]

    try:
        rotate_on(make, fake, clock, raw_bodies)
    finally:
        for store in made:
            store.close()


@pytest.mark.services
def test_rotation_on_redis(
    request: pytest.FixtureRequest, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    from amo_oauth.stores import RedisStore

    url: str = request.getfixturevalue("redis_url")
    prefix = f"rot{uuid.uuid4().hex[:12]}:"
    made: list[RedisStore] = []

    def make(**options: object) -> RedisStore:
        store = RedisStore(url, prefix=prefix, **options)  # type: ignore[arg-type]
        store.migrate()
        made.append(store)
        return store

    def raw_bodies() -> list[str]:
        import redis

        client = redis.Redis.from_url(url, decode_responses=True)
        try:
            keys = client.keys(f"{prefix}c:*")
            return [str(client.hget(key, "d")) for key in keys]
        finally:
            client.close()

    try:
        rotate_on(make, fake, clock, raw_bodies)
    finally:
        for store in made:
            store.close()


# -- the command -------------------------------------------------------------------------------


def rotate(db: Path, monkeypatch: pytest.MonkeyPatch, keys: str | None, *extra: str) -> int:
    if keys is None:
        monkeypatch.delenv("AMO_OAUTH_KEYS", raising=False)
    else:
        monkeypatch.setenv("AMO_OAUTH_KEYS", keys)
    return main(["rotate-key", "--store", f"sqlite:///{db}", *extra])


def test_the_command_rotates_and_prints_a_summary(
    db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = f" {NEW.decode()} , {OLD.decode()} "
    assert rotate(db, monkeypatch, keys) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["rewritten"] == 4 and summary["left_leased"] == []
    assert summary["undecryptable"] == [] and summary["without_tokens"] == 1
    assert NEW.decode() not in out + err and OLD.decode() not in out + err
    assert len(tokens_of(SQLiteStore(db, encryption=Fernet(NEW)))) == 4
    # Every other command opens the store with AMO_OAUTH_KEYS too.
    monkeypatch.setenv("AMO_OAUTH_KEYS", NEW.decode())
    assert (
        main(["status", "u1", "--store", f"sqlite:///{db}", "--client-id", "fake-client-id"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["status"] == "connected"


def test_the_command_prints_where_to_resume(
    db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("amo_oauth._rotation.PAGE_SIZE", 2)
    assert rotate(db, monkeypatch, f"{NEW.decode()},{OLD.decode()}") == 0
    err = capsys.readouterr().err
    assert "resume with --after 'u:fake-client-id:u1'" in err
    assert rotate(db, monkeypatch, f"{NEW.decode()},{OLD.decode()}", "--after", "u:a") == 0
    assert json.loads(capsys.readouterr().out)["rewritten"] == 4  # every key sorts after u:a


def test_the_command_exits_non_zero_when_rows_are_left(
    db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # NEW only: the OLD-sealed rows open with none of the keys given.
    assert rotate(db, monkeypatch, NEW.decode()) == 1
    out, err = capsys.readouterr()
    assert len(json.loads(out)["undecryptable"]) == 4
    assert "cannot decrypt: wrong key?" in err


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        (None, "set AMO_OAUTH_KEYS"),
        ("", "set AMO_OAUTH_KEYS"),
        (" , ", "set AMO_OAUTH_KEYS"),
        ("not-a-key", "key 1 of 1 is not a Fernet key"),
        (f"{NEW.decode()},short-secret-value", "key 2 of 2 is not a Fernet key"),
    ],
    ids=["unset", "empty", "commas", "not-a-key", "good,short"],
)
def test_missing_or_bad_keys_are_a_clear_error(
    db: Path, monkeypatch: pytest.MonkeyPatch, keys: str | None, says: str
) -> None:
    with pytest.raises(SystemExit, match=says) as exited:
        rotate(db, monkeypatch, keys)
    assert "short-secret-value" not in str(exited.value)
    assert "not-a-key" not in str(exited.value)


def test_a_lease_is_judged_by_the_stores_clock_not_the_jobs(db: Path, clock: FakeClock) -> None:
    # The job's machine runs two minutes ahead of the store (lease 60 s): the lease is live.
    rotating = SQLiteStore(db, encryption=MultiFernet([Fernet(NEW), Fernet(OLD)]), clock=clock)
    key = keys_of(rotating)[1]
    leased = lease(rotating, key, clock)
    ahead = lambda: clock() + timedelta(seconds=120)  # noqa: E731
    report = rotate_keys(rotating, now=ahead, sleep=lambda _: None, retries=0)
    assert report.left_leased == (key,)
    assert rotating.load(key).record == leased
    rotating.close()
