"""A Redis that may evict the store's keys is refused; one that hides its policy is warned about.

The store reads ``INFO memory`` before its first call and in ``check()``: ``noeviction`` or
``maxmemory 0`` is safe; any other policy under a limit is refused with ``StoreError`` unless
``allow_eviction`` (keyword, or ``?allow_eviction=true`` on the URL); a server whose ``INFO``
is denied, renamed or incomplete is used, with a warning. Against the session's real
``redis-server`` (its policy set with ``CONFIG SET`` and restored; the limit is 1 GB, so
nothing is actually evicted meanwhile), blocking and awaited.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from _redis_server import REDIS_PASSWORD, _binary, _start, _stop, redis_url  # noqa: F401
from amo_oauth import AmoOAuth, CallbackRejected, ConnectionStatus, Outcome
from amo_oauth._errors import StoreError
from amo_oauth.stores import RedisStore, store_from_url
from amo_oauth.stores._redis_memory import Eviction, judge
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import consent, following

pytestmark = pytest.mark.services

GIGABYTE = 2**30
EVICTING = (
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
)
LOGGER = "amo_oauth.stores"
USER = "user-1"


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:  # noqa: F811
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def set_policy(raw: redis.Redis) -> Iterator[Callable[[str, int], None]]:
    """Set the session server's ``maxmemory-policy`` and ``maxmemory``; restored after."""
    before = raw.config_get("maxmemory-policy"), raw.config_get("maxmemory")

    def set_(policy: str, maxmemory: int) -> None:
        raw.config_set("maxmemory", maxmemory)
        raw.config_set("maxmemory-policy", policy)

    yield set_
    raw.config_set("maxmemory", before[1]["maxmemory"])
    raw.config_set("maxmemory-policy", before[0]["maxmemory-policy"])


@pytest.fixture
def make_store(redis_url: str) -> Iterator[Callable[..., RedisStore]]:  # noqa: F811
    """Stores on the session's server under one prefix, migrated while the policy is safe."""
    prefix = f"evict-{uuid.uuid4().hex}:"
    RedisStore(redis_url, prefix=prefix).migrate()  # the default server: noeviction
    made: list[RedisStore] = []

    def make(url: str = redis_url, **options: object) -> RedisStore:
        store = RedisStore(url, prefix=prefix, **options)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def awaited_refusal(store: RedisStore) -> str:
    async def main() -> str:
        try:
            with pytest.raises(StoreError) as caught:
                await store.aload("c1")
            return str(caught.value)
        finally:
            await store.aclose()

    return asyncio.run(main())


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelname == "WARNING"]


# -- what INFO memory means ------------------------------------------------------------------


@pytest.mark.parametrize("policy", EVICTING)
def test_every_policy_that_evicts_under_a_limit_may_lose_keys(policy: str) -> None:
    verdict = judge({"maxmemory_policy": policy, "maxmemory": 1})
    assert verdict.eviction is Eviction.POSSIBLE
    victims = "ledger" if policy.startswith("volatile-") else "connection records"
    assert victims in verdict.sentence("h:1 db 0")


@pytest.mark.parametrize("policy", [*EVICTING, "noeviction"])
def test_no_limit_evicts_nothing_whatever_the_policy(policy: str) -> None:
    assert judge({"maxmemory_policy": policy, "maxmemory": 0}).eviction is Eviction.NEVER
    assert judge({"maxmemory_policy": "noeviction", "maxmemory": GIGABYTE}).eviction is (
        Eviction.NEVER
    )


@pytest.mark.parametrize(
    "info",
    [None, {}, {"maxmemory": GIGABYTE}, {"maxmemory_policy": "allkeys-lru"}, {"maxmemory": "x"}],
)
def test_a_server_that_does_not_tell_is_untold(info: dict[str, object] | None) -> None:
    assert judge(info).eviction is Eviction.UNTOLD


# -- a real server ---------------------------------------------------------------------------


@pytest.mark.parametrize("policy", EVICTING)
def test_a_policy_that_may_evict_is_refused_on_first_call(
    policy: str, make_store: Callable[..., RedisStore], set_policy: Callable[[str, int], None]
) -> None:
    set_policy(policy, GIGABYTE)
    store = make_store()
    with pytest.raises(StoreError) as caught:
        store.load("c1")
    message = str(caught.value)
    assert f"maxmemory-policy {policy}" in message and "allow_eviction=True" in message
    assert REDIS_PASSWORD not in message
    with pytest.raises(StoreError):
        store.migrate()  # every call, a migration too
    report = store.check()  # never raises: it reports
    assert report.reachable and report.schema_ready and not report.safe and not report.ok
    assert policy in report.detail and REDIS_PASSWORD not in repr(report)
    assert awaited_refusal(make_store()) == message


@pytest.mark.parametrize(("policy", "maxmemory"), [("noeviction", GIGABYTE), ("allkeys-lru", 0)])
def test_a_safe_server_is_used_without_a_word(
    policy: str,
    maxmemory: int,
    make_store: Callable[..., RedisStore],
    set_policy: Callable[[str, int], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    set_policy(policy, maxmemory)
    store = make_store()
    with caplog.at_level(logging.INFO, LOGGER):
        assert store.load("c1").record is None
        report = store.check()
    assert report.ok and report.detail == ""
    assert warnings(caplog) == []


def test_a_corrected_policy_is_used_without_a_restart(
    make_store: Callable[..., RedisStore], set_policy: Callable[[str, int], None]
) -> None:
    set_policy("allkeys-lru", GIGABYTE)
    store = make_store()
    with pytest.raises(StoreError):
        store.load("c1")
    set_policy("noeviction", GIGABYTE)
    assert store.load("c1").record is None


@pytest.mark.parametrize("how", ["keyword", "url"])
def test_the_opt_in_downgrades_the_refusal_to_one_warning(
    how: str,
    redis_url: str,  # noqa: F811
    make_store: Callable[..., RedisStore],
    set_policy: Callable[[str, int], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    set_policy("volatile-lru", GIGABYTE)
    if how == "keyword":
        store = make_store(allow_eviction=True)
    else:
        store = make_store(redis_url + "?allow_eviction=true")
    with caplog.at_level(logging.WARNING, LOGGER):
        assert store.load("c1").record is None
        assert store.load("c2").record is None
    [warning] = warnings(caplog)
    assert "volatile-lru" in warning and REDIS_PASSWORD not in warning
    report = store.check()
    assert report.ok and "volatile-lru" in report.detail


def test_store_from_url_takes_the_opt_in(
    redis_url: str,  # noqa: F811
    make_store: Callable[..., RedisStore],
    set_policy: Callable[[str, int], None],
) -> None:
    prefix = make_store().prefix
    set_policy("allkeys-lfu", GIGABYTE)
    refused = store_from_url(redis_url)
    allowed = store_from_url(redis_url + "?allow_eviction=yes")
    try:
        with pytest.raises(StoreError, match="may lose keys"):
            refused.load("c1")
        assert isinstance(allowed, RedisStore)
        with pytest.raises(StoreError, match="no amo_oauth schema"):  # past the policy
            allowed.load("c1")
        assert RedisStore(redis_url + "?allow_eviction=1", prefix=prefix).check().safe
    finally:
        refused.close()
        allowed.close()


def test_a_malformed_opt_in_is_refused_without_the_url(redis_url: str) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="allow_eviction in a Redis URL") as caught:
        RedisStore(redis_url + "?allow_eviction=maybe")
    assert "allow_eviction" in str(caught.value) and REDIS_PASSWORD not in str(caught.value)


@pytest.fixture
def info_denied(raw: redis.Redis, redis_url: str) -> Iterator[str]:  # noqa: F811
    """The URL of a user whose ACL denies INFO, as some managed services do."""
    user, password = f"noinfo{uuid.uuid4().hex[:8]}", "pw-" + uuid.uuid4().hex
    raw.acl_setuser(
        user, enabled=True, passwords=[f"+{password}"], keys="*", channels="*",
        commands=["+@all", "-info"],
    )  # fmt: skip
    yield redis_url.replace(f":{REDIS_PASSWORD}@", f"{user}:{password}@")
    raw.acl_deluser(user)


def test_a_server_that_denies_info_is_used_with_a_warning(
    info_denied: str,
    make_store: Callable[..., RedisStore],
    set_policy: Callable[[str, int], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    set_policy("allkeys-lru", GIGABYTE)  # hidden from this user: a warning, not a refusal
    store = make_store(info_denied)
    with caplog.at_level(logging.WARNING, LOGGER):
        assert store.load("c1").record is None
    [warning] = warnings(caplog)
    assert "could not read the server's maxmemory-policy" in warning
    report = store.check()
    assert report.ok and "could not read" in report.detail

    async def main() -> bool:
        try:
            return (await store.aload("c1")).record is None and (await store.acheck()).ok
        finally:
            await store.aclose()

    assert asyncio.run(main())


def test_a_server_with_info_renamed_away_is_used_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    binary = _binary()
    with tempfile.TemporaryDirectory() as directory:
        options = ("--save", "", "--appendonly", "no", "--rename-command", "INFO", "")
        process, port = _start(binary, Path(directory), persistence=options)
        try:
            store = RedisStore(f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0")
            with caplog.at_level(logging.WARNING, LOGGER):
                assert store.migrate() >= 1
            assert "could not read" in warnings(caplog)[0]
            assert store.check().ok
            store.close()
        finally:
            _stop(process)


# -- the example: a reload after the ledger was evicted -------------------------------


def test_refusing_prevents_the_evicted_ledger_reload(
    make_store: Callable[..., RedisStore],
    set_policy: Callable[[str, int], None],
    make_oauth: Callable[..., AmoOAuth],
    fake: FakeAmoCRM,
    clock: FakeClock,
    raw: redis.Redis,
) -> None:
    set_policy("volatile-lru", GIGABYTE)
    refused = make_oauth(store=make_store(clock_offset=following(clock)))
    with pytest.raises(StoreError, match="allow_eviction"):
        refused.begin(USER)  # the store refuses before anything is written or sent

    # What the refusal prevents, with the risk accepted: the ledger keys (they carry a TTL)
    # are what volatile-lru evicts; deleted here as the server would under memory pressure.
    store = make_store(clock_offset=following(clock), allow_eviction=True)
    oauth = make_oauth(store=store)
    query, binding = consent(oauth, fake, USER)
    assert oauth.handle_callback(query, binding=binding).outcome is Outcome.CONNECTED
    assert oauth.handle_callback(query).outcome is Outcome.ALREADY_CONNECTED  # the ledger knows
    ledger = raw.keys(f"{store.prefix}l:*")
    assert ledger and not any(raw.ttl(key) == -1 for key in ledger)  # every one has a TTL
    raw.delete(*ledger)
    with pytest.raises(CallbackRejected) as reload:  # the webview's reload, no binding
        oauth.handle_callback(query)
    assert reload.value.reason == "wrong_browser"  # was already_connected before the eviction
    assert oauth.status(USER).status is ConnectionStatus.CONNECTED  # records carry no TTL
