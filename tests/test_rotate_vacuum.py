"""``amo-oauth rotate-key`` says where old values remain, and ``--vacuum`` removes them from the
store's own files: PostgreSQL's heap file (``VACUUM FULL``), SQLite's file and ``-wal`` file
(``VACUUM`` and a truncating checkpoint), Redis's append-only file (``BGREWRITEAOF``).

Encryption is turned on for a store written in plaintext; a canary refresh token is then looked
for in the bytes of the server's or the file's own files, after a checkpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from cryptography.fernet import Fernet

from _pg_server import PASSWORD_MARK, PostgresProcess, own_postgres
from _redis_server import REDIS_PASSWORD, own_redis
from amo_oauth._remnants import remnants
from amo_oauth.cli import main
from amo_oauth.stores import BaseStore, MemoryStore, SQLiteStore, Store
from amo_oauth.testing._contract import make_record

CANARY = "CANARY-refresh-" + "q" * 24
RECORDS = 6
KEY = Fernet.generate_key().decode()


def write_plaintext(store: Store) -> None:
    """Records whose refresh tokens hold the canary, written with no encryption."""
    for number in range(RECORDS):
        record = make_record(f"c{number}")
        assert record.tokens is not None
        tokens = attrs.evolve(record.tokens, refresh_token=f"{CANARY}{number:03d}")
        assert store.compare_and_set(attrs.evolve(record, tokens=tokens), None)


def canaries(*paths: Path) -> int:
    """How many times the canary occurs in the files (or every file under the directories)."""
    found = 0
    for path in paths:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        found += sum(file.read_bytes().count(CANARY.encode()) for file in files)
    return found


def said(summary: dict[str, object], key: str) -> str:
    """The sentences of a summary's list ``key``, as one text."""
    sentences = summary[key]
    assert isinstance(sentences, list)
    return " ".join(sentences)


def rotate(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[dict[str, object], str]:
    monkeypatch.setenv("AMO_OAUTH_KEYS", KEY)
    assert main(["rotate-key", "--store", url, *extra]) == 0
    out, err = capsys.readouterr()
    assert KEY not in out + err
    summary: dict[str, object] = json.loads(out)
    assert summary["rewritten"] == RECORDS
    return summary, err


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture
def postgres() -> Iterator[PostgresProcess]:
    with own_postgres() as server:
        yield server


def heap_file(server: PostgresProcess) -> Path:
    """The records table's heap file, after a checkpoint wrote the shared buffers to it."""
    import psycopg

    server.admin("CHECKPOINT")
    with psycopg.connect(server.url) as conn:
        ((relative,),) = conn.execute("SELECT pg_relation_filepath('amo_oauth_connections')")
    return server.data / str(relative)


@pytest.mark.services
def test_postgres_keeps_the_plaintext_until_rotate_key_vacuum(
    postgres: PostgresProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from amo_oauth.stores import PostgresStore

    store = PostgresStore(postgres.url)
    store.migrate()
    write_plaintext(store)
    store.close()
    before = heap_file(postgres)
    assert canaries(before) == RECORDS  # the test can see the plaintext where it is

    summary, err = rotate(postgres.url, monkeypatch, capsys)
    assert canaries(heap_file(postgres)) > 0  # rewritten, yet still in the file
    remaining = said(summary, "may_remain")
    assert "VACUUM FULL" in remaining and "rotate-key --vacuum" in remaining
    assert "WAL" in remaining and "replicas" in remaining and "backups" in remaining
    assert "old values may remain" in err and summary["vacuumed"] == []

    summary, err = rotate(postgres.url, monkeypatch, capsys, "--vacuum")
    after = heap_file(postgres)
    assert after != before and canaries(after) == 0
    assert not before.exists() or canaries(before) == 0  # the old file is emptied
    assert "VACUUM FULL" in said(summary, "vacuumed")
    assert "WAL" in said(summary, "may_remain")
    assert PASSWORD_MARK not in err + json.dumps(summary)


# -- SQLite ----------------------------------------------------------------------------------


def test_sqlite_keeps_the_plaintext_in_its_wal_while_workers_hold_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "amo.db"
    wal = tmp_path / "amo.db-wal"
    worker = SQLiteStore(db)  # a worker of the app keeps the file open throughout
    write_plaintext(worker)
    url = f"sqlite:///{db}"

    summary, _ = rotate(url, monkeypatch, capsys)
    assert canaries(wal) > 0  # the old pages, in the -wal file the worker keeps
    assert "-wal" in said(summary, "may_remain")

    summary, _ = rotate(url, monkeypatch, capsys, "--vacuum")
    assert canaries(db) == 0 and (not wal.exists() or canaries(wal) == 0)
    assert "VACUUM" in said(summary, "vacuumed")
    worker.close()


# -- Redis -----------------------------------------------------------------------------------


def rewritten(client: Any, deadline: float) -> None:
    """Wait for the append-only file's rewrite to end (Redis runs it in a child process)."""
    while time.monotonic() < deadline:
        info = client.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            return
        time.sleep(0.05)
    raise AssertionError("the append-only file was not rewritten")


@pytest.mark.services
def test_redis_keeps_old_values_in_its_aof_until_rotate_key_vacuum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import redis

    from amo_oauth.stores import RedisStore

    with own_redis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        store = RedisStore(server.url)
        store.migrate()
        write_plaintext(store)
        store.close()
        assert canaries(tmp_path) >= RECORDS  # the append-only file holds the plaintext

        summary, _ = rotate(server.url, monkeypatch, capsys)
        assert canaries(tmp_path) >= RECORDS
        remaining = said(summary, "may_remain")
        assert "append-only file" in remaining and "RDB" in remaining

        summary, err = rotate(server.url, monkeypatch, capsys, "--vacuum")
        assert "BGREWRITEAOF started" in said(summary, "vacuumed")
        rewritten(client, time.monotonic() + 120)
        assert canaries(tmp_path) == 0
        assert REDIS_PASSWORD not in err + json.dumps(summary)
        client.close()


# -- every other store -----------------------------------------------------------------------


def test_a_memory_store_keeps_nothing_and_ones_own_store_is_told_so() -> None:
    assert remnants(MemoryStore(), vacuum=False).remaining == ()

    class Own(BaseStore):
        pass

    store = Own.__new__(Own)
    assert "store of your own" in remnants(store, vacuum=True).remaining[0]
