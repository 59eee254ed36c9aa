"""Long-lived tokens (issue 21, part 1): ``connect_long_lived`` verifies an admin's token with
``GET /api/v4/account`` before anything is written, stores it without a refresh token, serves it
to its ``exp``, never refreshes it; its ``exp`` or amoCRM's 401 moves the connection to
``error`` with a reason the app can show; ``refresh_due`` reports the ones about to expire."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import httpx
import pytest
from cryptography.fernet import Fernet

from _backends import Backend
from _pg_server import postgres_url  # noqa: F401
from _redis_server import redis_url  # noqa: F401
from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    CallbackRejected,
    ConnectionStatus,
    MemoryStore,
    ProviderError,
    ReauthorizationRequired,
    SQLiteStore,
    StoreError,
    TryAgainLater,
    Widget,
)
from amo_oauth._codec import record_from_json, record_to_json
from amo_oauth._pace import Pacer
from amo_oauth._records import ConnectionRecord, Lease, record_key
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.testing.faults import FaultyStore

from helpers import config_for, run_consent, stored

USER = "crm"
HINT = "ask your amoCRM admin for a new token"


def _url(fake: FakeAmoCRM) -> str:
    return f"https://{fake.account_host}/api/v4/account"


def _jwt(claims: dict[str, object]) -> str:
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


# -- on every store ------------------------------------------------------------------------------


def test_a_verified_token_is_stored_long_lived_and_served_until_its_exp(
    backend: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make_oauth(store=backend.open())
    token = fake.issue_long_lived_token(lifetime=timedelta(days=30))
    connection = oauth.connect_long_lived(USER, token, fake.account_host)
    assert connection.is_connected and connection.account is not None
    assert connection.account.id == fake.account_id
    assert connection.expires_at == datetime.fromtimestamp(int(clock().timestamp()), UTC) + (
        timedelta(days=30)
    )
    # Another machine's store object reads it back as it was written: long-lived, no refresh.
    other = make_oauth(store=backend.open())
    record = stored(other, USER)
    assert record is not None and record.tokens is not None
    assert record.tokens.long_lived and record.tokens.refresh_token is None
    assert fake.api_call_count() == 1  # the verification, before the write
    clock.advance(timedelta(days=29, hours=23, minutes=59))  # inside any refresh margin
    assert other.access_token(USER) == token
    clock.advance(timedelta(minutes=2))
    with pytest.raises(ReauthorizationRequired) as ended:
        other.access_token(USER)
    assert ended.value.reason == "long_lived_token_expired"
    gone = oauth.status(USER)
    assert gone.status is ConnectionStatus.ERROR and gone.error is not None
    assert (gone.error.reason, gone.error.hint) == ("long_lived_token_expired", HINT)
    assert fake.token_call_count() == 0  # nothing ever tried to refresh it


def test_status_past_exp_reports_the_connection_ended_on_every_store(
    backend: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make_oauth(store=backend.open())
    oauth.connect_long_lived(
        USER, fake.issue_long_lived_token(lifetime=timedelta(days=1)), fake.account_host
    )
    clock.advance(timedelta(hours=23, minutes=59))
    assert oauth.status(USER).is_connected  # to its last second
    clock.advance(timedelta(days=2))
    other = make_oauth(store=backend.open())
    ended = other.status(USER)
    assert ended.status is ConnectionStatus.ERROR and not ended.is_connected
    assert ended.error is not None
    assert (ended.error.reason, ended.error.hint) == ("long_lived_token_expired", HINT)
    assert oauth.status(USER).error == ended.error  # written: every reader agrees
    assert fake.token_call_count() == 0


def test_the_async_status_reports_a_token_past_its_exp(fake: FakeAmoCRM, clock: FakeClock) -> None:
    async def scenario() -> None:
        http = httpx.AsyncClient(transport=fake.async_transport())
        store = MemoryStore(clock=clock)
        async with AsyncAmoOAuth(config_for(fake), store=store, http=http, clock=clock) as oauth:
            token = fake.issue_long_lived_token(lifetime=timedelta(days=1))
            await oauth.connect_long_lived(USER, token, fake.account_host)
            clock.advance(timedelta(days=2))
            ended = await oauth.status(USER)
            assert ended.error is not None and not ended.is_connected
            assert ended.error.reason == "long_lived_token_expired"

    asyncio.run(scenario())


def test_refresh_due_reports_long_lived_tokens_expiring_in_its_window_and_sends_nothing(
    backend: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make_oauth(store=backend.open())
    oauth.connect_long_lived(
        "soon", fake.issue_long_lived_token(lifetime=timedelta(days=3)), fake.account_host
    )
    oauth.connect_long_lived(
        "later", fake.issue_long_lived_token(lifetime=timedelta(days=300)), fake.account_host
    )
    oauth.connect_long_lived(
        "gone", fake.issue_long_lived_token(lifetime=timedelta(days=1)), fake.account_host
    )
    assert run_consent(oauth, fake, "pair").connection.is_connected
    clock.advance(timedelta(days=1, hours=1))
    report = oauth.refresh_due(within=timedelta(days=7))
    assert report.expiring_long_lived == ("soon",)
    assert report.failed == (("gone", "long_lived_token_expired"),)
    assert report.needs_reauthorization == ("gone",)
    assert report.refreshed == ()  # the consent's pair is not due within 7 days
    assert fake.token_call_count("refresh_token") == 0
    assert oauth.access_token("soon")  # reported, still served
    assert oauth.status("gone").error is not None


def test_two_services_on_one_store_connecting_at_once_leave_one_consistent_record(
    backend: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    services = [make_oauth(store=backend.open()) for _ in range(2)]
    tokens = [fake.issue_long_lived_token(lifetime=timedelta(days=d)) for d in (10, 20)]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def connect(index: int) -> None:
        start.wait()
        try:
            for _ in range(5):
                services[index].connect_long_lived(USER, tokens[index], fake.account_host)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=connect, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    record = stored(services[0], USER)
    assert record is not None and record.tokens is not None
    assert record.version == 10  # every write landed, one after another (versioned)
    winner = tokens.index(record.tokens.access_token)
    assert record.public().expires_at == services[winner].status(USER).expires_at
    assert services[1 - winner].access_token(USER) == tokens[winner]


# -- the connection's end: exp, 401 -------------------------------------------------------------


def test_a_401_through_auth_ends_the_connection_as_revoked(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    token = fake.issue_long_lived_token()
    oauth.connect_long_lived(USER, token, fake.account_host)
    with httpx.Client(transport=fake.transport(), auth=oauth.auth(USER)) as api:
        assert api.get(_url(fake)).status_code == 200
        fake.revoke_long_lived_token(token)  # the admin, in the tab
        with pytest.raises(ReauthorizationRequired) as ended:
            api.get(_url(fake))
    assert ended.value.reason == "long_lived_token_revoked"
    error = oauth.status(USER).error
    assert error is not None and (error.reason, error.hint) == ("long_lived_token_revoked", HINT)
    assert fake.token_call_count() == 0


def test_async_connect_serve_and_revocation(fake: FakeAmoCRM, clock: FakeClock) -> None:
    async def scenario() -> None:
        http = httpx.AsyncClient(transport=fake.async_transport())
        store = MemoryStore(clock=clock)
        async with AsyncAmoOAuth(config_for(fake), store=store, http=http, clock=clock) as oauth:
            token = fake.issue_long_lived_token(lifetime=timedelta(days=2))
            connection = await oauth.connect_long_lived(USER, token, fake.account_host)
            assert connection.is_connected
            assert await oauth.access_token(USER) == token
            fake.revoke_long_lived_token(token)
            async with httpx.AsyncClient(
                transport=fake.async_transport(), auth=oauth.auth(USER)
            ) as api:
                with pytest.raises(ReauthorizationRequired) as ended:
                    await api.get(_url(fake))
            assert ended.value.reason == "long_lived_token_revoked"
            fresh = fake.issue_long_lived_token(lifetime=timedelta(days=2))
            assert (await oauth.connect_long_lived(USER, fresh, fake.account_host)).is_connected
            clock.advance(timedelta(days=2, seconds=1))
            with pytest.raises(ReauthorizationRequired) as expired:
                await oauth.access_token(USER)
            assert expired.value.reason == "long_lived_token_expired"

    asyncio.run(scenario())


def test_a_new_token_replaces_the_old_one_and_a_late_401_for_the_old_one_changes_nothing(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    old = fake.issue_long_lived_token()
    oauth.connect_long_lived(USER, old, fake.account_host)
    new = fake.issue_long_lived_token()
    first = oauth.status(USER).version
    assert oauth.connect_long_lived(USER, new, fake.account_host).version == first + 1
    # A caller that still sent the old token hears 401: the table serves the new one.
    assert oauth._run(oauth._flows.tokens.access_token(USER, stale=old)) == new
    assert oauth.status(USER).is_connected


def test_a_long_lived_token_replaces_a_consents_pair_and_is_never_refreshed(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    assert run_consent(oauth, fake, USER).connection.is_connected
    token = fake.issue_long_lived_token(lifetime=timedelta(days=400))
    oauth.connect_long_lived(USER, token, fake.account_host)
    for _ in range(12):
        clock.advance(timedelta(days=30))
        assert oauth.access_token(USER) == token
    assert oauth.refresh_due(within=timedelta(days=30)).expiring_long_lived == ()  # 40 left
    assert oauth.refresh_due(within=timedelta(days=45)).expiring_long_lived == (USER,)
    assert fake.token_call_count("refresh_token") == 0


def test_a_widget_install_can_hold_a_long_lived_token(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    token = fake.issue_long_lived_token()
    widget = Widget(fake.account_host)
    connection = oauth.connect_long_lived(widget, token, fake.account_host)
    assert connection.widget == widget and oauth.access_token(widget) == token


# -- refusals: nothing written --------------------------------------------------------------


@pytest.fixture
def connected(oauth: AmoOAuth, fake: FakeAmoCRM) -> AmoOAuth:
    """A connection made by consent: every refusal below must leave it exactly as it is."""
    assert run_consent(oauth, fake, USER).connection.is_connected
    return oauth


def test_a_token_amocrm_refuses_changes_nothing(connected: AmoOAuth, fake: FakeAmoCRM) -> None:
    token = fake.issue_long_lived_token()
    fake.revoke_long_lived_token(token)
    before = stored(connected, USER)
    with pytest.raises(CallbackRejected) as refused:
        connected.connect_long_lived(USER, token, fake.account_host)
    assert refused.value.reason == "token_refused"
    assert stored(connected, USER) == before


def test_a_token_of_another_account_is_refused(connected: AmoOAuth, fake: FakeAmoCRM) -> None:
    other = fake.add_account("other")
    token = fake.issue_long_lived_token(account=other)
    before = stored(connected, USER)
    with pytest.raises(CallbackRejected) as refused:
        connected.connect_long_lived(USER, token, fake.account_host)
    assert refused.value.reason == "token_refused"
    assert stored(connected, USER) == before


@pytest.mark.parametrize("kind", ["500", "429", "timeout_before", "403_html"])
def test_a_verification_amocrm_cannot_answer_changes_nothing(
    connected: AmoOAuth, fake: FakeAmoCRM, kind: str
) -> None:
    token = fake.issue_long_lived_token()
    before = stored(connected, USER)
    fake.fail_next(kind, endpoint="api", path="/api/v4/account")  # type: ignore[arg-type]
    with pytest.raises(ProviderError) as failed:
        connected.connect_long_lived(USER, token, fake.account_host)
    assert failed.value.transient
    assert stored(connected, USER) == before
    if kind in ("429", "403_html"):  # amoCRM's push-back pauses the host (docs/api-pace.md)
        with pytest.raises(TryAgainLater) as paused:
            connected.connect_long_lived(USER, token, fake.account_host)
        assert paused.value.reason == "api_paused" and stored(connected, USER) == before
        connected._pace = attrs.evolve(connected._pace, pacer=Pacer())  # the pause is over
    assert connected.connect_long_lived(USER, token, fake.account_host).is_connected  # later


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        _jwt({"sub": "1"}),  # no exp
        _jwt({"exp": "2030-01-01"}),
        _jwt({"exp": True}),
        _jwt({"exp": 1e300}),
        "a.b.c",
        "токен.with.unicode",
    ],
)
def test_a_token_without_a_readable_exp_is_refused_malformed_before_sending(
    connected: AmoOAuth, fake: FakeAmoCRM, token: str
) -> None:
    before, calls = stored(connected, USER), fake.api_call_count()
    with pytest.raises(CallbackRejected) as refused:
        connected.connect_long_lived(USER, token, fake.account_host)
    assert refused.value.reason == "malformed"
    assert (stored(connected, USER), fake.api_call_count()) == (before, calls)


def test_a_token_past_its_exp_is_refused_before_sending(
    connected: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    token = fake.issue_long_lived_token(lifetime=timedelta(days=1))
    clock.advance(timedelta(days=1))
    calls = fake.api_call_count()
    with pytest.raises(CallbackRejected) as refused:
        connected.connect_long_lived(USER, token, fake.account_host)
    assert refused.value.reason == "long_lived_token_expired"
    assert fake.api_call_count() == calls and connected.status(USER).is_connected


@pytest.mark.parametrize("host", ["evil.example.com", "amocrm.ru.evil.com", ""])
def test_a_host_outside_the_allowlist_gets_no_token(
    oauth: AmoOAuth, fake: FakeAmoCRM, host: str
) -> None:
    token = fake.issue_long_lived_token()
    with pytest.raises(CallbackRejected) as refused:
        oauth.connect_long_lived(USER, token, host)
    assert refused.value.reason == "foreign_host"
    assert fake.api_call_count() == 0 and stored(oauth, USER) is None


@pytest.mark.parametrize("spelling", ["https://{}/", "{}/", "http://{}"])
def test_a_host_typed_with_a_scheme_a_slash_or_in_capitals_connects(
    oauth: AmoOAuth, fake: FakeAmoCRM, spelling: str
) -> None:
    typed = spelling.format(fake.account_host.upper())
    connection = oauth.connect_long_lived(USER, fake.issue_long_lived_token(), typed)
    assert connection.is_connected
    record = stored(oauth, USER)
    assert record is not None and record.host == fake.account_host


@pytest.mark.parametrize("spelling", ["https://{}/leads", "https://{}:443/", "https://u@{}"])
def test_a_typed_host_with_a_path_port_or_userinfo_is_refused(
    oauth: AmoOAuth, fake: FakeAmoCRM, spelling: str
) -> None:
    with pytest.raises(CallbackRejected) as refused:
        oauth.connect_long_lived(
            USER, fake.issue_long_lived_token(), spelling.format(fake.account_host)
        )
    assert refused.value.reason == "foreign_host" and fake.api_call_count() == 0


def test_a_failing_store_write_leaves_the_connection_as_it_was(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    store = FaultyStore(MemoryStore(clock=clock))
    oauth = make_oauth(store=store)
    assert run_consent(oauth, fake, USER).connection.is_connected
    before = stored(oauth, USER)
    token = fake.issue_long_lived_token()
    store.fail("compare_and_set", times=1)
    with pytest.raises(StoreError):
        oauth.connect_long_lived(USER, token, fake.account_host)
    assert stored(oauth, USER) == before
    assert oauth.connect_long_lived(USER, token, fake.account_host).is_connected


# -- secrets ------------------------------------------------------------------------------------


def test_the_token_is_never_in_a_log_a_repr_or_an_error(
    oauth: AmoOAuth, fake: FakeAmoCRM, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = fake.issue_long_lived_token()
    seen: list[object] = [oauth.connect_long_lived(USER, token, fake.account_host)]
    seen.append(stored(oauth, USER))
    fake.fail_next("500", endpoint="api", path="/api/v4/account")
    with pytest.raises(ProviderError) as transient:
        oauth.connect_long_lived(USER, token, fake.account_host)
    fake.revoke_long_lived_token(token)
    with pytest.raises(CallbackRejected) as refused:
        oauth.connect_long_lived(USER, token, fake.account_host)
    with pytest.raises(ReauthorizationRequired) as ended:
        oauth._run(oauth._flows.tokens.access_token(USER, stale=token))
    with pytest.raises(KeyError) as unknown:
        fake.revoke_long_lived_token(token + "x")
    seen += [transient.value, refused.value, ended.value, unknown.value, oauth, fake]
    texts = [caplog.text] + [f"{item!r} {item}" for item in seen]
    assert all(token not in text for text in texts)
    assert ended.value.reason == "long_lived_token_revoked"


def test_the_token_is_encrypted_at_rest_like_any_token(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock, tmp_path: Path
) -> None:
    db = tmp_path / "encrypted.db"
    oauth = make_oauth(store=SQLiteStore(db, encryption=Fernet(Fernet.generate_key()), clock=clock))
    token = fake.issue_long_lived_token()
    oauth.connect_long_lived(USER, token, fake.account_host)
    oauth.close()
    assert token.encode() not in db.read_bytes()
    rows = sqlite3.connect(db).execute("select * from amo_connections").fetchall()
    assert rows and all(token not in str(row) for row in rows)


def test_the_long_lived_mark_round_trips_and_other_pairs_rows_are_unchanged(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    oauth.connect_long_lived(USER, fake.issue_long_lived_token(), fake.account_host)
    assert run_consent(oauth, fake, "pair").connection.is_connected
    long_lived, pair = stored(oauth, USER), stored(oauth, "pair")
    assert long_lived is not None and pair is not None
    assert record_from_json(record_to_json(long_lived)) == long_lived
    assert '"long_lived"' not in record_to_json(pair)
    assert record_key(oauth.config.client_id, USER) == long_lived.key


# -- the fake ------------------------------------------------------------------------------------


def test_the_fake_issues_tokens_of_1_day_to_5_years_that_expire_on_its_clock(
    fake: FakeAmoCRM, clock: FakeClock
) -> None:
    for wrong in (timedelta(hours=23), timedelta(days=5 * 366 + 1)):
        with pytest.raises(ValueError, match="1 day to 5 years"):
            fake.issue_long_lived_token(lifetime=wrong)
    token = fake.issue_long_lived_token(lifetime=timedelta(days=1))
    _, payload, _ = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["exp"] - claims["iat"] == 86400 and claims["aud"] == fake.client_id
    assert fake.is_access_token_valid(token)
    clock.advance(timedelta(days=1))
    assert not fake.is_access_token_valid(token)


def test_a_live_code_exchange_holds_a_long_lived_token_back_then_yields_to_it(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    store = MemoryStore(clock=clock)
    oauth = make_oauth(store=store, settle_timeout=0.05)
    lease = Lease("another-worker", "exchange", clock() + timedelta(minutes=1))
    key_record = ConnectionRecord(
        USER,
        status=ConnectionStatus.CODE_RECEIVED,
        version=1,
        host=fake.account_host,
        lease=lease,
        integration=fake.client_id,
    )
    assert store.compare_and_set(key_record, None)
    token = fake.issue_long_lived_token()
    with pytest.raises(TryAgainLater) as later:
        oauth.connect_long_lived(USER, token, fake.account_host)
    assert later.value.reason == "exchange_in_progress"
    assert stored(oauth, USER) == key_record  # nothing written
    clock.advance(timedelta(minutes=2))  # that worker is presumed dead
    assert oauth.connect_long_lived(USER, token, fake.account_host).is_connected
