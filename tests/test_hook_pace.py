"""The disconnect hook paced (issue 20, item 5): a valid hook URL never expires, so each of
its replays used to make a ``GET /api/v4/account`` with the account's token (40 replays, 40
calls in 1.9 s: the account's 7 requests a second spent, the app's own calls answered 502).
amoCRM is now asked at most once per account in any ``Config.hook_check_interval``, across
every process sharing the store, and the answer says what happened."""

from __future__ import annotations

import asyncio
import json
import pickle
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from amo_oauth import AmoOAuth, AsyncAmoOAuth, HookResult, MemoryStore, SQLiteStore
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.web import Handlers, Request

from helpers import config_for, query_of

ACCOUNT_CALLS = "/api/v4/account"
PREFIX = "/api/amo-crm"


def connect(oauth: AmoOAuth, fake: FakeAmoCRM, user: str = "user-1") -> None:
    begun = oauth.begin(user)
    oauth.handle_callback(query_of(fake.authorize(begun.state)), binding=begun.binding)
    assert oauth.status(user).is_connected


def hook_answer(handlers: Handlers, query: dict[str, str]) -> tuple[int, object]:
    request = Request("GET", f"{PREFIX}/disconnect-hook", urlencode(query))
    answer = handlers.handle(request)
    return answer.status, json.loads(answer.body)


def test_40_replays_make_one_account_call(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """Issue 20.5: 40 replays made 40 account calls, and each answered {"disconnected": 1}."""
    connect(oauth, fake)
    handlers = Handlers(oauth, connection_id=lambda r: None, app_scheme="app")
    hook = fake.hook_query()  # signed, nothing uninstalled: a replay
    before = fake.api_call_count(ACCOUNT_CALLS)
    answers = [hook_answer(handlers, hook) for _ in range(40)]
    assert fake.api_call_count(ACCOUNT_CALLS) - before == 1
    checked = {"disconnected": 0, "checked": True, "reason": "hook_replayed"}
    paced = {"disconnected": 0, "checked": False, "reason": "hook_paced"}
    assert answers == [(200, checked)] + [(200, paced)] * 39
    assert oauth.status("user-1").is_connected
    # After the interval amoCRM is asked again: once.
    clock.advance(oauth.config.hook_check_interval)
    assert [hook_answer(handlers, hook) for _ in range(5)] == [(200, checked)] + [(200, paced)] * 4
    assert fake.api_call_count(ACCOUNT_CALLS) - before == 2


@pytest.fixture
def shared_db(tmp_path: Path) -> Path:
    return tmp_path / "shared.db"


@pytest.fixture
def two_services(
    fake: FakeAmoCRM, clock: FakeClock, shared_db: Path
) -> Iterator[tuple[AmoOAuth, AmoOAuth]]:
    """Two services over one SQLite file: two processes as the store sees them."""
    made = [
        AmoOAuth(
            config_for(fake),
            store=SQLiteStore(shared_db, clock=clock),
            http=httpx.Client(transport=fake.transport()),
            clock=clock,
        )
        for _ in range(2)
    ]
    yield made[0], made[1]
    for oauth in made:
        oauth.close()


def test_the_pace_holds_across_processes_sharing_the_store(
    two_services: tuple[AmoOAuth, AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    first, second = two_services
    connect(first, fake)
    hook = fake.hook_query()
    before = fake.api_call_count(ACCOUNT_CALLS)
    results = [(first, second)[n % 2].handle_disconnect_hook(hook) for n in range(40)]
    assert fake.api_call_count(ACCOUNT_CALLS) - before == 1
    assert [result.checked for result in results] == [True] + [False] * 39
    clock.advance(first.config.hook_check_interval)
    assert second.handle_disconnect_hook(hook).checked
    assert not first.handle_disconnect_hook(hook).checked
    assert fake.api_call_count(ACCOUNT_CALLS) - before == 2


def test_a_real_uninstall_is_said_and_then_nothing_is_asked(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    connect(oauth, fake)
    hook = fake.uninstall()
    result = oauth.handle_disconnect_hook(hook)
    assert (len(result.disconnected), result.checked, result.reason) == (1, True, None)
    assert result == result.disconnected  # the tuple: the account's connections, as now
    calls = fake.api_call_count()
    clock.advance(oauth.config.hook_check_interval)
    again = oauth.handle_disconnect_hook(hook)  # nothing left to lose: amoCRM is not asked
    assert (again.disconnected, again.checked, again.reason) == ((), False, "nothing_to_forget")
    assert again == result and fake.api_call_count() == calls


def test_a_hook_while_amocrm_cannot_be_asked_says_so(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    connect(oauth, fake)
    fake.fail_next("500", endpoint="api", path=ACCOUNT_CALLS)
    result = oauth.handle_disconnect_hook(fake.hook_query())
    assert (result.disconnected, result.checked, result.reason) == (
        (),
        True,
        "provider_unavailable",
    )
    assert oauth.status("user-1").is_connected


def test_a_hook_for_an_account_without_connections(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    result = oauth.handle_disconnect_hook(fake.hook_query())
    assert result == () and (result.checked, result.reason) == (False, "nothing_to_forget")
    assert isinstance(result, HookResult)


def test_the_awaited_service_is_paced_too(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    store = MemoryStore(clock=clock)
    connect(make_oauth(store=store), fake)
    hook = fake.hook_query()

    async def replays() -> list[HookResult]:
        service = AsyncAmoOAuth(
            config_for(fake, hook_check_interval=timedelta(minutes=5)),
            store=store,
            http=httpx.AsyncClient(transport=fake.async_transport()),
            clock=clock,
        )
        try:
            return [await service.handle_disconnect_hook(hook) for _ in range(10)]
        finally:
            await service.aclose()

    before = fake.api_call_count(ACCOUNT_CALLS)
    results = asyncio.run(replays())
    assert [result.reason for result in results] == ["hook_replayed"] + ["hook_paced"] * 9
    assert fake.api_call_count(ACCOUNT_CALLS) - before == 1


def test_the_result_keeps_no_secret_and_pickles(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    connect(oauth, fake)
    result = oauth.handle_disconnect_hook(fake.hook_query())
    assert fake.client_secret not in repr(result) and "signature" not in repr(result)
    copy = pickle.loads(pickle.dumps(result))
    assert copy == result and (copy.checked, copy.reason) == (True, "hook_replayed")


# -- one account, many connections (issue 20.5, the last review) --------------------------------


def test_20_connections_of_one_account_are_each_asked_once_an_interval(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """20 app users connected the same account; the hook URL replayed 5 times an interval.
    Each connection is asked about its own tokens (one accepted token proves only that the
    integration is installed now: a consent after an uninstall installs it again, and older
    tokens stay dead; the lifecycle machine found an uninstalled connection kept that way),
    once an interval: the interval's other replays ask nothing."""
    users = [f"employee-{n}" for n in range(20)]
    for user in users:
        connect(oauth, fake, user)
    hook = fake.hook_query()
    before = fake.api_call_count(ACCOUNT_CALLS)
    for interval in range(3):
        results = [oauth.handle_disconnect_hook(hook) for _ in range(5)]
        assert fake.api_call_count(ACCOUNT_CALLS) - before == 20 * (interval + 1)
        assert (results[0].checked, results[0].reason) == (True, "hook_replayed")
        assert all(result.reason == "hook_paced" for result in results[1:])
        assert len(results[0]) == 20 and not results[0].disconnected
        clock.advance(oauth.config.hook_check_interval)
    assert all(oauth.status(user).is_connected for user in users)


def test_a_connection_uninstalled_before_a_reinstall_ends_beside_the_new_ones(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    """An uninstall's hook arriving after a new consent installed the integration again: the
    new connection's token is accepted, the old one's refused. The old one ends, the new one
    stands (an accepted token must not speak for the other connections)."""
    connect(oauth, fake, "before")
    hook = fake.uninstall()  # the hook is late: a consent installs the integration again
    connect(oauth, fake, "after")
    result = oauth.handle_disconnect_hook(hook)
    assert [c.connection_id for c in result.disconnected] == ["before"]
    assert oauth.status("after").is_connected
    assert not oauth.status("before").is_connected


def test_a_real_uninstall_ends_every_connection_of_the_account(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    users = [f"employee-{n}" for n in range(5)]
    for user in users:
        connect(oauth, fake, user)
    result = oauth.handle_disconnect_hook(fake.uninstall())
    assert sorted(c.connection_id for c in result.disconnected) == users
    assert not any(oauth.status(user).is_connected for user in users)
