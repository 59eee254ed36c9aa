"""Records stored before keys had a namespace are moved under ``u:<client id>:<id>`` on first
load; a widget install's record (named after its host) never lands in an app user's namespace."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from amo_oauth import AmoOAuth, ConnectionRecord, ConnectionStatus, MemoryStore, SQLiteStore
from amo_oauth._records import record_key
from amo_oauth.stores import Store
from amo_oauth.testing import FakeAmoCRM

from helpers import run_consent

LEGACY = ConnectionRecord(
    "user-7", status=ConnectionStatus.DISCONNECTED, version=5, host="test.amocrm.ru"
)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "old.db")


def test_a_legacy_record_moves_under_its_namespaced_key(
    make_oauth: Callable[..., AmoOAuth], store: Store
) -> None:
    assert store.compare_and_set(LEGACY, None)  # as the first release stored it
    oauth = make_oauth(store=store)
    status = oauth.status("user-7")
    assert (status.status, status.version, status.host) == (
        ConnectionStatus.DISCONNECTED,
        6,
        LEGACY.host,
    )
    moved = store.load(record_key(oauth.config.client_id, "user-7")).record
    assert moved is not None and moved.integration == oauth.config.client_id
    assert store.load("user-7").record is None  # the old row is gone
    assert oauth.status("user-7") == status  # and a second load changes nothing


def test_a_legacy_widget_record_never_becomes_an_app_users(
    make_oauth: Callable[..., AmoOAuth], store: Store, fake: FakeAmoCRM
) -> None:
    widget = ConnectionRecord(fake.account_host, version=3, host=fake.account_host)
    assert store.compare_and_set(widget, None)
    oauth = make_oauth(store=store)
    # An app user whose id is the account host sees a fresh connection, not the install.
    assert oauth.status(fake.account_host).version == 0
    assert store.load(fake.account_host).record is not None  # the install's row is left alone
    result = run_consent(oauth, fake, fake.account_host)
    assert result.connection.status is ConnectionStatus.CONNECTED
    assert store.load(fake.account_host).record == widget
