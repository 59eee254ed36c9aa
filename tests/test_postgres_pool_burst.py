"""A PostgresStore's first awaited calls, many at once, on a pool slow to fill: all succeed.
Found by the load run (tests/test_load.py): 100 clients' first calls queued on the new async
pool; the opener's wait for the pool's first connection timed out on the loaded machine, and it
closed the pool under them: 94 requests answered 503 ``store_unavailable`` (PoolClosed)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

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


def test_a_first_caller_cancelled_while_the_pool_opens_leaves_it_to_the_others(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first call (the one that made the pool) is cancelled while the pool opens: a
    duplicate callback's wait timing out, a client gone. The pool opens for the others."""
    opened = AsyncConnectionPool.open

    async def slow_open(self: AsyncConnectionPool, *args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0.2)  # a loaded machine
        await opened(self, *args, **kwargs)

    monkeypatch.setattr(AsyncConnectionPool, "open", slow_open)

    async def burst() -> list[Loaded]:
        try:
            first = asyncio.ensure_future(store.aload("key-first"))
            await asyncio.sleep(0)  # it claims the pool and starts opening it
            others = [asyncio.ensure_future(store.aload(f"key-{n}")) for n in range(10)]
            await asyncio.sleep(0.05)
            first.cancel()
            return await asyncio.gather(*others)
        finally:
            await store.aclose()

    loaded = asyncio.run(burst())
    assert [found.record for found in loaded] == [None] * 10
