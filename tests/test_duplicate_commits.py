"""A duplicate that finds nothing due commits nothing, on every store.

A duplicate callback (a reload of the callback page) or a duplicate legacy exchange-code (the
seed's replay) is answered from reads: the table calls it a duplicate, and unless a pending
verification is due, nothing is written. Commits are counted at the store's public write
methods (``compare_and_set``, ``claim``, ``consume_state``, ``delete``), successful ones only.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from _pg_server import postgres_url  # noqa: F401
from _redis_server import redis_url  # noqa: F401
from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    ConnectionStatus,
    MemoryStore,
    Outcome,
    SQLiteStore,
    Store,
)
from amo_oauth.stores._protocol import ClaimResult
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import config_for, consent, following

USER = "user-1"
ACCOUNT = "/api/v4/account"
#: The store's write methods, and what each returns when it wrote.
WRITES: dict[str, object] = {
    "compare_and_set": True,
    "claim": ClaimResult.CLAIMED,
    "consume_state": True,
    "delete": True,
}


class Commits:
    """Counts the successful writes made through a store's public write methods, blocking
    (``compare_and_set``) and awaited (``acompare_and_set``).

    A store may build one write from another (a default ``claim`` made of ``consume_state``
    and ``compare_and_set``): only the outermost call counts, as the one commit it is.
    """

    def __init__(self, store: object) -> None:
        self.count = 0
        self._depth: contextvars.ContextVar[int] = contextvars.ContextVar("depth", default=0)
        for name, wrote in WRITES.items():
            for method_name in (name, f"a{name}"):
                method = getattr(store, method_name, None)
                if method is not None:
                    setattr(store, method_name, self._counting(method, wrote))

    def _counted(self, depth: int, result: object, wrote: object) -> None:
        if depth == 0 and result == wrote:
            self.count += 1

    def _counting(self, method: Callable[..., Any], wrote: object) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(method):

            @functools.wraps(method)
            async def acounted(*args: Any, **kwargs: Any) -> Any:
                depth = self._depth.get()
                token = self._depth.set(depth + 1)
                try:
                    result = await method(*args, **kwargs)
                finally:
                    self._depth.reset(token)
                self._counted(depth, result, wrote)
                return result

            return acounted

        @functools.wraps(method)
        def counted(*args: Any, **kwargs: Any) -> Any:
            depth = self._depth.get()
            token = self._depth.set(depth + 1)
            try:
                result = method(*args, **kwargs)
            finally:
                self._depth.reset(token)
            self._counted(depth, result, wrote)
            return result

        return counted


def _postgres(request: pytest.FixtureRequest, clock: FakeClock) -> Store:
    pytest.importorskip("psycopg")
    from amo_oauth.stores import PostgresStore

    url = request.getfixturevalue("postgres_url")
    store = PostgresStore(url, table=_unique("t_"), clock_offset=following(clock))
    store.migrate()
    return store


def _redis(request: pytest.FixtureRequest, clock: FakeClock) -> Store:
    pytest.importorskip("redis")
    from amo_oauth.stores import RedisStore

    url, prefix = request.getfixturevalue("redis_url"), _unique("commits-") + ":"
    store = RedisStore(url, prefix=prefix, clock_offset=following(clock))
    store.migrate()
    return store


def _unique(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:16]


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    kind = request.param
    if kind == "memory":
        yield MemoryStore(clock=clock)
    elif kind == "sqlite":
        yield SQLiteStore(tmp_path / "commits.db", clock=clock)
    else:
        yield _postgres(request, clock) if kind == "postgres" else _redis(request, clock)


@pytest.fixture
def counted(store: Store, make_oauth: Callable[..., AmoOAuth]) -> tuple[AmoOAuth, Commits]:
    return make_oauth(store=store), Commits(store)


def test_a_duplicate_callback_commits_nothing(
    counted: tuple[AmoOAuth, Commits], fake: FakeAmoCRM
) -> None:
    oauth, commits = counted
    query, binding = consent(oauth, fake, USER)
    first = oauth.handle_callback(query, binding=binding)
    assert first.outcome is Outcome.CONNECTED
    assert commits.count == 3  # the claim, the exchanged pair, the verified account
    for replay in (oauth.handle_callback(query), oauth.handle_callback(query, binding=binding)):
        assert (replay.outcome, replay.duplicate) == (Outcome.ALREADY_CONNECTED, True)
    assert commits.count == 3


def test_a_duplicate_legacy_exchange_commits_nothing(
    counted: tuple[AmoOAuth, Commits], fake: FakeAmoCRM
) -> None:
    oauth, commits = counted
    query, binding = consent(oauth, fake, USER)
    oauth.handle_callback(query, binding=binding)
    before = commits.count
    code, referer, state = query["code"], query["referer"], query["state"]
    for exchange_new in (True, False):  # the library's call, and the web route's
        replay = oauth.exchange_code(
            USER, code, referer=referer, state=state, exchange_new=exchange_new
        )
        assert (replay.outcome, replay.duplicate) == (Outcome.ALREADY_CONNECTED, True)
    assert oauth.exchange_code(USER, code).duplicate  # without a state: still a duplicate
    assert commits.count == before
    assert fake.token_call_count("authorization_code") == 1


def test_a_duplicate_while_verification_waits_commits_nothing_until_it_is_due(
    counted: tuple[AmoOAuth, Commits], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """A transient fault deferred verification: duplicates before its next try write nothing;
    the first one after it is due verifies (that is something due, and it commits)."""
    oauth, commits = counted
    fake.fail_next("500", endpoint="api", path=ACCOUNT)
    query, binding = consent(oauth, fake, USER)
    assert oauth.handle_callback(query, binding=binding).outcome is Outcome.IN_PROGRESS
    before = commits.count
    replay = oauth.handle_callback(query)
    assert (replay.connection.status, replay.duplicate) == (ConnectionStatus.EXCHANGED, True)
    assert oauth.exchange_code(USER, query["code"]).duplicate
    assert commits.count == before
    # The 5 s backoff, plus a second: a server store's clock follows the fake one through an
    # offset, to a few milliseconds.
    clock.advance(timedelta(seconds=6))
    due = oauth.handle_callback(query)
    assert (due.outcome, due.duplicate) == (Outcome.ALREADY_CONNECTED, True)
    assert commits.count == before + 2  # the verification's claim, the verified account


def test_a_duplicate_callback_commits_nothing_on_the_async_service(
    store: Store, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    commits = Commits(store)

    async def main() -> None:
        http = httpx.AsyncClient(transport=fake.async_transport())
        async with AsyncAmoOAuth(config_for(fake), store=store, http=http, clock=clock) as oauth:
            begun = await oauth.begin(USER)
            query = dict(httpx.URL(fake.authorize(begun.state)).params)
            first = await oauth.handle_callback(query, binding=begun.binding)
            assert (first.outcome, commits.count) == (Outcome.CONNECTED, 3)
            replay = await oauth.handle_callback(query)
            assert (replay.outcome, replay.duplicate) == (Outcome.ALREADY_CONNECTED, True)
            legacy = await oauth.exchange_code(USER, query["code"], state=query["state"])
            assert (legacy.outcome, legacy.duplicate) == (Outcome.ALREADY_CONNECTED, True)
            assert commits.count == 3
            await http.aclose()

    asyncio.run(main())


def test_a_status_read_commits_only_the_end_of_a_long_lived_token_past_its_exp(
    counted: tuple[AmoOAuth, Commits], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth, commits = counted
    token = fake.issue_long_lived_token(lifetime=timedelta(days=1))
    oauth.connect_long_lived(USER, token, fake.account_host)
    before = commits.count
    assert oauth.status(USER).is_connected and commits.count == before  # nothing due
    clock.advance(timedelta(days=2))
    assert oauth.status(USER).error is not None and commits.count == before + 1
    assert oauth.status(USER).error is not None and commits.count == before + 1
