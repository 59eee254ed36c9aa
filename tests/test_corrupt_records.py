"""A corrupt row in a real store: every reading call raises ``StoreError`` (the web layer answers
503, never 500), and ``disconnect()`` still overwrites it, after which the connection works."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from amo_oauth import (
    AmoOAuth,
    ConnectionStatus,
    Outcome,
    SQLiteStore,
    StoreError,
    UnreadableRecord,
)
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.web import Handlers, Request

from helpers import consent, run_consent

USER = "user-1"
#: Bodies a row may hold that no version of this library wrote.
CORRUPT = ["[]", "null", '"x"', "[" * 100_000 + "]" * 100_000, '{"format": 1}']


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "amo.db"


@pytest.fixture
def connected(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, db: Path, clock: FakeClock
) -> tuple[AmoOAuth, dict[str, str]]:
    oauth = make_oauth(store=SQLiteStore(db, clock=clock))
    query, binding = consent(oauth, fake, USER)
    assert oauth.handle_callback(query, binding=binding).outcome is Outcome.CONNECTED
    return oauth, query


def corrupt(db: Path, body: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE amo_connections SET data = ?", (body,))
    conn.close()


@pytest.mark.parametrize("body", CORRUPT, ids=["list", "null", "text", "deep", "partial"])
def test_every_reading_call_raises_store_error(
    connected: tuple[AmoOAuth, dict[str, str]], db: Path, clock: FakeClock, body: str
) -> None:
    oauth, query = connected
    corrupt(db, body)
    with pytest.raises(UnreadableRecord) as unreadable:
        oauth.status(USER)
    assert unreadable.value.version == 3  # the intact version column
    assert body[:20] not in str(unreadable.value)
    with pytest.raises(StoreError):
        oauth.access_token(USER)
    with pytest.raises(StoreError):
        oauth.handle_callback(query)
    clock.advance(timedelta(days=85))
    with pytest.raises(StoreError):
        oauth.refresh_due(within=timedelta(days=7))


def test_the_web_layer_answers_503(connected: tuple[AmoOAuth, dict[str, str]], db: Path) -> None:
    oauth, _ = connected
    corrupt(db, "[]")
    handlers = Handlers(oauth, connection_id=lambda _: USER, app_scheme="app")
    for path in ("/api/amo-crm/status", "/api/amo-crm/connect"):
        answer = handlers.handle(Request("GET", path, "", {}, b""))
        if path.endswith("status"):
            assert (answer.status, json.loads(answer.text)) == (503, {"error": "store_unavailable"})
        else:
            assert answer.status in (200, 302)  # begin() reads only the version column


def test_disconnect_overwrites_a_corrupt_row_and_the_code_stays_spent(
    connected: tuple[AmoOAuth, dict[str, str]], db: Path, fake: FakeAmoCRM
) -> None:
    oauth, query = connected
    corrupt(db, "[]")
    disconnected = oauth.disconnect(USER)
    assert (disconnected.status, disconnected.version) == (ConnectionStatus.DISCONNECTED, 4)
    assert oauth.status(USER) == disconnected
    calls = fake.token_call_count("authorization_code")
    replay = oauth.handle_callback(query)  # the code ledger still knows the spent code
    assert replay.duplicate
    assert fake.token_call_count("authorization_code") == calls
    fresh = run_consent(oauth, fake, USER)
    assert fresh.outcome is Outcome.CONNECTED


def test_a_row_whose_version_is_also_corrupt_is_not_overwritten_blindly(
    connected: tuple[AmoOAuth, dict[str, str]], db: Path
) -> None:
    oauth, _ = connected
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE amo_connections SET data = '[]', version = 'x'")
    conn.close()
    with pytest.raises(UnreadableRecord) as unreadable:
        oauth.disconnect(USER)
    assert unreadable.value.version is None
