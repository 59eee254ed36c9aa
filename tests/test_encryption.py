"""Encryption at rest: the token pair is stored encrypted (cryptography's Fernet and
MultiFernet fit as they are); the rest stays in clear so the indexes work; a wrong or missing
key is a StoreError, never garbage."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, MultiFernet

from amo_oauth import AmoOAuth, ConnectionStatus, SQLiteStore, StoreError, UnreadableRecord
from amo_oauth._records import record_key
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import run_consent

USER = "user-1"


def raw_rows(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT * FROM amo_connections").fetchall()
    conn.close()
    return repr(rows)


@pytest.fixture
def connected(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, tmp_path: Path, clock: FakeClock
) -> tuple[AmoOAuth, Path, Fernet]:
    key = Fernet(Fernet.generate_key())
    db = tmp_path / "sealed.db"
    oauth = make_oauth(store=SQLiteStore(db, encryption=key, clock=clock))
    run_consent(oauth, fake, USER)
    return oauth, db, key


def test_no_token_is_stored_in_clear(connected: tuple[AmoOAuth, Path, Fernet]) -> None:
    oauth, db, _ = connected
    record = oauth.store.load(record_key(oauth.config.client_id, USER)).record  # type: ignore[union-attr]
    assert record is not None and record.tokens is not None
    stored = raw_rows(db)
    assert record.tokens.access_token not in stored
    assert record.tokens.refresh_token not in stored
    assert '"status":"connected"' in stored  # the rest stays readable for the indexes
    assert oauth.status(USER).status is ConnectionStatus.CONNECTED
    assert oauth.access_token(USER) == record.tokens.access_token


def test_a_wrong_or_missing_key_is_a_store_error_never_garbage(
    connected: tuple[AmoOAuth, Path, Fernet],
) -> None:
    oauth, db, _ = connected
    key = record_key(oauth.config.client_id, USER)
    wrong = SQLiteStore(db, encryption=Fernet(Fernet.generate_key()))
    with pytest.raises(StoreError, match="wrong key") as refused:
        wrong.load(key)
    assert not isinstance(refused.value, UnreadableRecord)  # never overwritten as corrupt
    with pytest.raises(StoreError, match="encrypted"):
        SQLiteStore(db).load(key)


def test_multifernet_reads_old_rows_and_rewrites_them_with_the_new_key(
    connected: tuple[AmoOAuth, Path, Fernet],
    make_oauth: Callable[..., AmoOAuth],
    clock: FakeClock,
) -> None:
    oauth, db, old = connected
    new = Fernet(Fernet.generate_key())
    rotating = make_oauth(store=SQLiteStore(db, encryption=MultiFernet([new, old]), clock=clock))
    assert rotating.status(USER).status is ConnectionStatus.CONNECTED  # old rows read
    clock.advance(timedelta(days=1, minutes=1))
    token = rotating.access_token(USER)  # the refresh rewrites the row, with the newest key
    key = record_key(oauth.config.client_id, USER)
    record = SQLiteStore(db, encryption=new).load(key).record
    assert record is not None and record.tokens is not None
    assert record.tokens.access_token == token
    with pytest.raises(StoreError, match="wrong key"):
        SQLiteStore(db, encryption=old).load(key)
