"""A PostgresStore's first awaited calls, many at once, on a pool slow to fill: all succeed.
Found by the load run (tests/test_load.py): 100 clients' first calls queued on the new async
pool; the opener's wait for the pool's first connection timed out on the loaded machine, and it
closed the pool under them: 94 requests answered 503 ``store_unavailable`` (PoolClosed)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from _pg_server import postgres_url  # noqa: F401
from amo_oauth.stores import Loaded
from amo_oauth.stores.postgres import PostgresStore


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresStore]:  # noqa: F811
    made = PostgresStore(postgres_url, table=f"t_{uuid.uuid4().hex[:16]}")
    made.migrate()
    yield made
    made.close()


def test_concurrent_first_calls_survive_a_pool_slow_to_fill(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def slow_to_fill(self: AsyncConnectionPool, timeout: float = 30.0) -> None:
        raise PoolTimeout("pool initialization incomplete after 10.0 sec")  # a loaded machine

    monkeypatch.setattr(AsyncConnectionPool, "wait", slow_to_fill)

    async def burst() -> list[Loaded]:
        try:
            return await asyncio.gather(*(store.aload(f"key-{n}") for n in range(20)))
        finally:
            await store.aclose()

    loaded = asyncio.run(burst())
    assert [found.record for found in loaded] == [None] * 20
