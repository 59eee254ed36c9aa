"""AmoOAuth against FakeAmoCRM: the seed's scenario and every rule of the lifecycle."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import attrs
import httpx
import pytest

from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    CallbackRejected,
    ConnectionRecord,
    ConnectionStatus,
    Lease,
    MemoryStore,
    Outcome,
    ProviderError,
    ReauthorizationRequired,
    SeenCode,
    SQLiteStore,
    StoreError,
)
from amo_oauth._records import record_key
from amo_oauth._state_token import MAX_CLOCK_SKEW
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import config_for, query_of, run_consent, stored

USER = "user-42"


def connect(oauth: AmoOAuth, fake: FakeAmoCRM, user: str = USER) -> dict[str, str]:
    """Go through begin -> Allow -> callback; return the callback query."""
    begun = oauth.begin(user)
    query = query_of(fake.authorize(begun.state))
    assert oauth.handle_callback(query, binding=begun.binding).outcome is Outcome.CONNECTED
    return query


def test_seed_scenario_exchanges_once_and_lists_leads(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    query = connect(oauth, fake)
    legacy = oauth.exchange_code(USER, query["code"])  # the old app's second call
    assert legacy.outcome is Outcome.ALREADY_CONNECTED
    assert legacy.duplicate is True
    status = oauth.status(USER)
    assert status.status is ConnectionStatus.CONNECTED
    assert status.account is not None and status.account.id == fake.account_id
    with httpx.Client(transport=fake.transport(), auth=oauth.auth(USER)) as api:
        leads = api.get(f"https://{fake.account_host}/api/v4/leads").json()
    assert [lead["name"] for lead in leads["_embedded"]["leads"]] == [
        "Lead #1",
        "Lead #2",
        "Lead #3",
    ]
    assert fake.token_calls == {("authorization_code", "ok"): 1}


def test_replayed_callback_is_a_duplicate_without_a_token_call(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    query = connect(oauth, fake)
    replay = oauth.handle_callback(query)
    assert (replay.outcome, replay.duplicate) == (Outcome.ALREADY_CONNECTED, True)
    assert replay.connection.version == oauth.status(USER).version
    assert fake.token_call_count() == 1


def test_denied_records_access_denied(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    begun = oauth.begin(USER)
    result = oauth.handle_callback(query_of(fake.deny(begun.state)), binding=begun.binding)
    assert result.outcome is Outcome.DENIED
    assert result.connection.status is ConnectionStatus.ERROR
    assert result.connection.error is not None
    assert result.connection.error.reason == "access_denied"
    assert fake.token_call_count() == 0


def test_forged_state_changes_nothing(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    state = oauth.begin(USER).state
    forged = state[:-2] + ("AA" if not state.endswith("AA") else "BB")
    with pytest.raises(CallbackRejected) as rejected:
        oauth.handle_callback(query_of(fake.authorize(forged)))
    assert rejected.value.reason == "bad_state"
    assert oauth.status(USER).version == 0
    assert fake.token_call_count() == 0


def test_expired_state_with_a_new_code_is_rejected(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    begun = oauth.begin(USER)
    clock.advance(oauth.config.state_ttl + MAX_CLOCK_SKEW)  # its signer may run behind
    with pytest.raises(CallbackRejected) as rejected:
        oauth.handle_callback(query_of(fake.authorize(begun.state)), binding=begun.binding)
    assert rejected.value.reason == "expired_state"
    assert fake.token_call_count() == 0


def test_replay_with_consumed_state_is_still_a_duplicate_after_expiry(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    query = connect(oauth, fake)
    clock.advance(timedelta(hours=1))  # the state is consumed and expired; the code is known
    replay = oauth.handle_callback(query)
    assert (replay.outcome, replay.duplicate) == (Outcome.ALREADY_CONNECTED, True)


def test_a_second_code_of_one_consent_is_reported_not_exchanged(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    """Issue: a double tap on "Allow" gives two codes for one state; the second used to be
    refused (reused_state, a 400 page). It is a duplicate of that consent."""
    query = connect(oauth, fake)
    second = query_of(fake.authorize(query["state"]))
    result = oauth.handle_callback(second)  # a duplicate of that consent: no binding needed
    assert (result.outcome, result.duplicate) == (Outcome.ALREADY_CONNECTED, True)
    legacy = oauth.exchange_code(USER, fake.issue_code(), state=query["state"])
    assert (legacy.outcome, legacy.duplicate) == (Outcome.ALREADY_CONNECTED, True)
    assert fake.token_call_count() == 1
    oauth.disconnect(USER)  # after a disconnect the second code is reported, not exchanged
    late = oauth.handle_callback(second)
    assert (late.outcome, late.duplicate) == (Outcome.FAILED, True)
    assert late.connection.status is ConnectionStatus.DISCONNECTED
    assert fake.token_call_count() == 1


def test_two_codes_of_one_consent_at_once_exchange_one(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    begun = oauth.begin(USER)
    queries = [query_of(fake.authorize(begun.state)) for _ in range(2)] * 10
    callback = functools.partial(oauth.handle_callback, binding=begun.binding)
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(callback, queries))
    assert fake.token_call_count() == 1
    assert sum(r.outcome is Outcome.CONNECTED for r in results) == 1
    assert all(r.outcome in (Outcome.CONNECTED, Outcome.ALREADY_CONNECTED) for r in results)


def test_a_state_that_brought_a_denial_refuses_a_code(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    begun = oauth.begin(USER)
    denial = query_of(fake.deny(begun.state))
    assert oauth.handle_callback(denial, binding=begun.binding).outcome is Outcome.DENIED
    with pytest.raises(CallbackRejected) as rejected:
        oauth.handle_callback(query_of(fake.authorize(begun.state)), binding=begun.binding)
    assert rejected.value.reason == "reused_state"
    assert fake.token_call_count() == 0


def test_reauthorization_with_a_fresh_state_exchanges_the_new_code(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    connect(oauth, fake)
    clock.advance(1)
    again = run_consent(oauth, fake, USER)
    assert (again.outcome, again.duplicate) == (Outcome.CONNECTED, False)
    assert fake.token_call_count("authorization_code", "ok") == 2


def test_state_issued_before_the_connection_cannot_replace_it(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    older = oauth.begin(USER)
    clock.advance(1)
    connect(oauth, fake)
    kept = oauth.handle_callback(query_of(fake.authorize(older.state)), binding=older.binding)
    assert (kept.outcome, kept.duplicate) == (Outcome.ALREADY_CONNECTED, False)
    assert fake.token_call_count() == 1


def test_rejected_code_fails_once_and_is_never_resent(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    referer = fake.account_host
    begun = oauth.begin(USER)
    result = oauth.exchange_code(
        USER, "not-a-real-code", referer=referer, state=begun.state, binding=begun.binding
    )
    assert result.outcome is Outcome.FAILED
    assert result.connection.error is not None
    assert result.connection.error.reason == "code_rejected"
    assert result.connection.error.hint == "Cannot decrypt the authorization code"
    again = oauth.exchange_code(USER, "not-a-real-code", referer=referer)
    assert (again.outcome, again.duplicate) == (Outcome.FAILED, True)
    assert fake.token_calls == {("authorization_code", "code_garbage"): 1}


@pytest.mark.parametrize("kind", ["500", "html", "timeout_before", "lost_answer"])
def test_transient_exchange_failure_never_resends_the_code(
    oauth: AmoOAuth, fake: FakeAmoCRM, kind: str
) -> None:
    fake.fail_next(kind, grant="authorization_code")  # type: ignore[arg-type]
    begun = oauth.begin(USER)
    query = query_of(fake.authorize(begun.state))
    first = oauth.handle_callback(query, binding=begun.binding)
    assert first.outcome is Outcome.FAILED
    assert first.connection.error is not None
    assert first.connection.error.reason == "exchange_interrupted"
    calls = fake.token_call_count()
    second = oauth.handle_callback(query)
    assert (second.outcome, second.duplicate) == (Outcome.FAILED, True)
    assert fake.token_call_count() == calls


def test_a_dead_workers_lease_expires_into_exchange_interrupted(
    oauth: AmoOAuth, clock: FakeClock
) -> None:
    crashed = ConnectionRecord(
        USER,
        status=ConnectionStatus.CODE_RECEIVED,
        version=1,
        host="test.amocrm.ru",
        seen_codes=(SeenCode("0" * 64, clock()),),
        lease=Lease("dead-worker", "exchange", clock() + timedelta(seconds=60)),
    )
    assert oauth.store.compare_and_set(crashed, None)
    assert oauth.status(USER).status is ConnectionStatus.CODE_RECEIVED
    clock.advance(61)
    # Its worker may be alive and keep the pair (a failed store write): awaited a grace.
    assert oauth.status(USER).status is ConnectionStatus.CODE_RECEIVED
    clock.advance(oauth.config.kept_pair_grace.total_seconds())
    status = oauth.status(USER)
    assert status.status is ConnectionStatus.ERROR
    assert status.error is not None and status.error.reason == "exchange_interrupted"


def test_access_token_refreshes_once_when_expired_and_rotates(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    connect(oauth, fake)
    first = oauth.access_token(USER)
    assert oauth.access_token(USER) == first
    assert fake.token_call_count("refresh_token") == 0
    before = stored(oauth, USER)
    clock.advance(timedelta(hours=24))
    second = oauth.access_token(USER)
    after = stored(oauth, USER)
    assert second != first
    assert before is not None and after is not None and before.tokens and after.tokens
    assert after.tokens.refresh_token != before.tokens.refresh_token
    assert after.version == before.version + 2  # claimed, then refreshed
    assert fake.token_calls[("refresh_token", "ok")] == 1


def test_revoked_refresh_token_requires_reauthorization(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    connect(oauth, fake)
    fake.revoke_refresh_tokens()
    clock.advance(timedelta(hours=24))
    with pytest.raises(ReauthorizationRequired):
        oauth.access_token(USER)
    status = oauth.status(USER)
    assert status.status is ConnectionStatus.ERROR
    assert status.error is not None and status.error.reason == "reauthorization_required"
    assert fake.token_calls[("refresh_token", "token_revoked")] == 1


def test_transient_refresh_failure_releases_the_lease(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    connect(oauth, fake)
    clock.advance(timedelta(hours=24))
    fake.fail_next("500", grant="refresh_token")
    with pytest.raises(ProviderError) as failed:
        oauth.access_token(USER)
    assert failed.value.transient
    record = stored(oauth, USER)
    assert record is not None and record.lease is None
    assert record.status is ConnectionStatus.CONNECTED
    # The answer holds refreshes back (test_backoff.py) for failed.value.retry_after seconds.
    assert failed.value.retry_after is not None
    clock.advance(timedelta(seconds=failed.value.retry_after + 1))
    assert oauth.access_token(USER)
    assert fake.token_calls[("refresh_token", "ok")] == 1


def test_auth_refreshes_once_on_401_and_retries(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    connect(oauth, fake)
    fake.expire_access_tokens()
    with httpx.Client(transport=fake.transport(), auth=oauth.auth(USER)) as api:
        response = api.get(f"https://{fake.account_host}/api/v4/account")
    assert response.status_code == 200
    assert fake.token_calls[("refresh_token", "ok")] == 1


def test_disconnect_forgets_tokens_and_keeps_replays_harmless(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    query = connect(oauth, fake)
    assert oauth.disconnect(USER).status is ConnectionStatus.DISCONNECTED
    record = stored(oauth, USER)
    assert record is not None and record.tokens is None and record.account is None
    with pytest.raises(ReauthorizationRequired):
        oauth.access_token(USER)
    replay = oauth.handle_callback(query)
    assert replay.duplicate is True
    assert fake.token_call_count() == 1
    assert oauth.disconnect(USER).version == record.version  # idempotent


def test_disconnect_hook_forgets_every_connection_of_the_account(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    connect(oauth, fake, "user-1")
    connect(oauth, fake, "user-2")
    hook = fake.uninstall()
    changed = oauth.handle_disconnect_hook(hook)
    assert sorted(c.connection_id for c in changed) == ["user-1", "user-2"]
    for user in ("user-1", "user-2"):
        status = oauth.status(user)
        assert status.status is ConnectionStatus.ERROR
        assert status.error is not None and status.error.reason == "disconnected_by_provider"
    versions = [oauth.status(u).version for u in ("user-1", "user-2")]
    oauth.handle_disconnect_hook(hook)
    assert [oauth.status(u).version for u in ("user-1", "user-2")] == versions


def test_forged_disconnect_hook_changes_nothing(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    connect(oauth, fake)
    version = oauth.status(USER).version
    hook = fake.uninstall() | {"signature": "0" * 64}
    with pytest.raises(CallbackRejected) as rejected:
        oauth.handle_disconnect_hook(hook)
    assert rejected.value.reason == "bad_signature"
    assert oauth.status(USER).version == version
    assert oauth.status(USER).status is ConnectionStatus.CONNECTED


def test_refresh_due_keeps_idle_connections_alive(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    connect(oauth, fake, "idle")
    assert oauth.refresh_due(within=timedelta(days=7)).refreshed == ()
    clock.advance(timedelta(days=85))
    report = oauth.refresh_due(within=timedelta(days=7))
    assert report.refreshed == ("idle",)
    assert report.failed == ()
    assert oauth.refresh_due(within=timedelta(days=7)).refreshed == ()


def test_widget_install_needs_opt_in(make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM) -> None:
    query = query_of(fake.authorize(from_widget=True))
    with pytest.raises(CallbackRejected) as rejected:
        make_oauth().handle_callback(query)
    assert rejected.value.reason == "widget_installs_disabled"
    result = make_oauth(allow_widget_installs=True).handle_callback(query)
    assert result.outcome is Outcome.CONNECTED
    assert result.connection.connection_id == fake.account_host


def test_legacy_exchange_of_a_new_code_needs_a_host(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    with pytest.raises(CallbackRejected) as rejected:
        oauth.exchange_code(USER, fake.issue_code())
    assert rejected.value.reason == "missing_referer"
    with pytest.raises(CallbackRejected) as foreign:
        oauth.exchange_code(USER, fake.issue_code(), referer="evil.example.com")
    assert foreign.value.reason == "foreign_host"
    begun = oauth.begin(USER)
    result = oauth.exchange_code(
        USER, fake.issue_code(), referer=fake.account_host, state=begun.state, binding=begun.binding
    )
    assert result.outcome is Outcome.CONNECTED


def test_a_new_code_without_its_consents_state_is_never_exchanged(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    """Issue: the legacy path exchanged a NEW code with no state at all, so whoever held a
    code of someone else's consent (left valid by a rejected callback, in logs and history)
    could bind that amoCRM account to their own app user and read its leads."""
    stolen = fake.issue_code()
    with pytest.raises(CallbackRejected) as refused:
        oauth.exchange_code(USER, stolen, referer=fake.account_host)
    assert refused.value.reason == "new_code_refused"
    assert fake.token_calls_for(stolen) == 0
    assert oauth.status(USER).version == 0  # nothing written
    state = oauth.begin(USER).state
    with pytest.raises(CallbackRejected) as web_like:  # the web route's mode
        oauth.exchange_code(
            USER, stolen, referer=fake.account_host, state=state, exchange_new=False
        )
    assert web_like.value.reason == "new_code_refused"
    assert fake.token_calls_for(stolen) == 0


def test_secrets_never_reach_reprs_or_errors(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    query = connect(oauth, fake)
    record = stored(oauth, USER)
    assert record is not None and record.tokens is not None
    secrets = [
        fake.client_secret,
        query["code"],
        record.tokens.access_token,
        record.tokens.refresh_token,
    ]
    shown = " ".join(
        [repr(oauth), repr(record), repr(oauth.status(USER)), repr(oauth.config), str(record)]
    )
    assert not [s for s in secrets if s in shown]


def test_a_signed_in_user_cannot_be_handed_someone_elses_consent_link(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    # The attacker starts a connection for themselves (opting out of the browser binding: the
    # app's session binds it) and sends the victim the consent link.
    query = query_of(fake.authorize(oauth.begin("attacker", browser_binding=False).state))
    with pytest.raises(CallbackRejected) as rejected:
        oauth.handle_callback(query, connection_id="victim")
    assert rejected.value.reason == "bad_state"
    assert oauth.status("attacker").version == 0
    assert fake.token_call_count() == 0
    result = oauth.handle_callback(query, connection_id="attacker")
    assert result.outcome is Outcome.CONNECTED


def test_a_slow_consent_still_connects(oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock) -> None:
    """Issue: the user took 12 minutes on the consent page; the default state lifetime covers
    the consent plus the code's own 20 minutes."""
    begun = oauth.begin(USER)
    clock.advance(timedelta(minutes=12))
    result = oauth.handle_callback(query_of(fake.authorize(begun.state)), binding=begun.binding)
    assert result.outcome is Outcome.CONNECTED


def test_a_state_expires_after_thirty_minutes_by_default(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    begun = oauth.begin(USER)
    # Thirty minutes, plus MAX_CLOCK_SKEW: the machine that signed it may run behind.
    clock.advance(timedelta(minutes=29, seconds=59) + MAX_CLOCK_SKEW)
    late = oauth.begin(USER, binding=begun.binding)  # the same browser, a second "Connect"
    assert late.binding == begun.binding
    clock.advance(timedelta(seconds=1))
    with pytest.raises(CallbackRejected) as rejected:
        oauth.handle_callback(query_of(fake.authorize(begun.state)), binding=begun.binding)
    assert rejected.value.reason == "expired_state"
    result = oauth.handle_callback(query_of(fake.authorize(late.state)), binding=late.binding)
    assert result.outcome is Outcome.CONNECTED


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"http": httpx.AsyncClient()}, "httpx.Client"),
        ({"store": "amo.db"}, "store must be"),
    ],
)
def test_the_service_refuses_the_wrong_kind_of_client_or_store(
    fake: FakeAmoCRM, kwargs: dict[str, object], says: str
) -> None:
    from helpers import config_for

    with pytest.raises(TypeError, match=says):
        AmoOAuth(config_for(fake), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Config"):
        AmoOAuth({"client_id": "x"})  # type: ignore[arg-type]


@pytest.mark.parametrize("query", [None, "code=1&state=2", b"code=1"])
def test_a_raw_query_string_is_a_type_error_not_a_crash(oauth: AmoOAuth, query: object) -> None:
    with pytest.raises(TypeError, match="mapping"):
        oauth.handle_callback(query)  # type: ignore[arg-type]


def test_a_store_that_keys_rows_by_connection_id_is_a_store_error(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """A store written against the first docs (rows under ``connection_id``) used to make a
    duplicate callback spin for ever; now the first load says what is wrong."""

    class ByConnectionId(MemoryStore):
        """Keeps rows under ``record.connection_id`` whatever ``record.key`` says."""

        def compare_and_set(self, record, expected_version):  # type: ignore[no-untyped-def]
            return super().compare_and_set(attrs.evolve(record, integration=None), expected_version)

    store = ByConnectionId()
    oauth = make_oauth(store=store)
    namespaced = ConnectionRecord(USER, version=1, integration=oauth.config.client_id)
    store._records[USER] = namespaced  # as such a store holds a record it was given
    with pytest.raises(StoreError, match=r"record\.key"):
        oauth.status(USER)


def test_an_app_user_named_like_a_widget_install_never_gets_its_tokens(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """Issue: widget installs were stored under the account host, so an app user whose id is
    that host got the install's status and tokens. Installs now live under ``w:<client>:<host>``."""
    oauth = make_oauth(allow_widget_installs=True)
    install = oauth.handle_callback(query_of(fake.authorize(from_widget=True)))
    assert install.outcome is Outcome.CONNECTED
    impostor = fake.account_host  # an app user id equal to the installed account's host
    status = oauth.status(impostor)
    assert (status.status, status.version, status.account) == (
        ConnectionStatus.DISCONNECTED,
        0,
        None,
    )
    with pytest.raises(ReauthorizationRequired):
        oauth.access_token(impostor)
    assert oauth.disconnect(impostor).status is ConnectionStatus.DISCONNECTED
    widget = oauth.store.load(record_key(oauth.config.client_id, impostor, widget=True)).record
    assert widget is not None and widget.status is ConnectionStatus.CONNECTED  # untouched


def test_a_replayed_disconnect_hook_changes_nothing_after_a_reconnect(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    """Issue: the hook's signature has no time or nonce, so a hook URL seen in an access log
    disconnected the account again after the user reconnected."""
    connect(oauth, fake)
    hook = fake.uninstall()  # a real uninstall: amoCRM now answers 401 for the tokens
    (gone,) = oauth.handle_disconnect_hook(hook)
    assert gone.error is not None and gone.error.reason == "disconnected_by_provider"
    connect(oauth, fake)  # the user installs and connects again
    before = oauth.status(USER)
    assert before.status is ConnectionStatus.CONNECTED
    (replayed,) = oauth.handle_disconnect_hook(hook)  # the old URL, replayed
    assert replayed == before == oauth.status(USER)


def test_a_hook_for_tokens_amocrm_still_accepts_is_a_replay(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    connect(oauth, fake)
    before = oauth.status(USER)
    assert oauth.handle_disconnect_hook(fake.hook_query()) == (before,)  # signed, not uninstalled
    assert oauth.status(USER) == before


def test_a_replayed_hook_spares_an_idle_connection_whose_access_token_expired(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """An idle connection's access token expires within a day: that proves nothing. The
    refresh token is then asked through the account lookup (which does not spend it)."""
    connect(oauth, fake)
    old_hook = fake.hook_query()  # signed, as seen in an access log; nothing uninstalled
    clock.advance(timedelta(days=2))
    before = oauth.status(USER)
    assert oauth.handle_disconnect_hook(old_hook) == (before,)
    assert oauth.status(USER).status is ConnectionStatus.CONNECTED
    assert fake.token_call_count("refresh_token") == 0  # nothing spent to find out
    fake.uninstall()  # a real uninstall now: both tokens refused
    clock.advance(oauth.config.hook_check_interval)  # amoCRM is asked once an interval
    (gone,) = oauth.handle_disconnect_hook(old_hook)
    assert gone.status is ConnectionStatus.ERROR


def test_a_hook_replayed_while_amocrm_cannot_be_asked_changes_nothing(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """Found by review: during an amoCRM outage a replayed hook used to disconnect working
    connections ("cannot ask" counted as "not accepted"). Only a definite refusal counts."""
    connect(oauth, fake)
    old_hook = fake.hook_query()
    fake.fail_next("500", endpoint="api", path="/api/v4/account")
    before = oauth.status(USER)
    assert oauth.handle_disconnect_hook(old_hook) == (before,)
    assert oauth.status(USER) == before


# -- the default store ------------------------------------------------------------------------


@pytest.mark.parametrize("service", [AmoOAuth, AsyncAmoOAuth], ids=["blocking", "awaited"])
def test_the_default_store_logs_its_absolute_path_once(
    service: type[AmoOAuth] | type[AsyncAmoOAuth],
    fake: FakeAmoCRM,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="amo_oauth")
    made = service(config_for(fake))
    assert isinstance(made.store, SQLiteStore)
    said = [r for r in caplog.records if r.name == "amo_oauth" and "amo_oauth.db" in r.message]
    assert [(r.levelno, r.getMessage()) for r in said] == [
        (logging.INFO, f"no store given: connections are kept in {tmp_path / 'amo_oauth.db'}")
    ]
    made.store.close()
