"""The four stores as a test's backend (importable as ``_backends``: tests/ is on sys.path):
``open()`` gives another store object on the same data, as another machine would hold."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from amo_oauth import MemoryStore, SQLiteStore
from amo_oauth.stores import Store
from amo_oauth.testing import FakeClock

from helpers import following

KINDS = ["memory", "sqlite", "postgres", "redis"]


class Backend:
    """One store backend; ``open()`` gives another store object on the same data, as another
    machine would hold."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> None:
        self.kind: str = request.param
        self._request, self._clock = request, clock
        self._path = tmp_path / "store.db"
        self._name = uuid.uuid4().hex[:16]
        self._memory = MemoryStore(clock=clock)
        self.opened: list[Store] = []

    def open(self) -> Store:
        store = self._open()
        self.opened.append(store)
        return store

    def _open(self) -> Store:
        if self.kind == "memory":
            return self._memory  # one process: the same object is the shared store
        if self.kind == "sqlite":
            return SQLiteStore(self._path, clock=self._clock)
        if self.kind == "postgres":
            pytest.importorskip("psycopg")
            from amo_oauth.stores import PostgresStore

            url = self._request.getfixturevalue("postgres_url")
            pg = PostgresStore(url, table=f"t_{self._name}", clock_offset=following(self._clock))
            pg.migrate()
            return pg
        pytest.importorskip("redis")
        from amo_oauth.stores import RedisStore

        url = self._request.getfixturevalue("redis_url")
        offset = following(self._clock)
        redis = RedisStore(url, prefix=f"t-{self._name}:", clock_offset=offset)
        redis.migrate()
        return redis


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Backend]:
    """Each of the four stores in turn (tests/conftest.py offers it; the test module imports
    ``postgres_url`` and ``redis_url``); the server stores opened are closed after the test."""
    made = Backend(request, tmp_path, clock)
    yield made
    for store in {id(store): store for store in made.opened}.values():
        if made.kind != "memory":
            store.close()
