"""The site button's metadata mode after amoCRM's post to ``secrets_uri`` (issue 22, part 1,
items 3 and 4): the callback exchanges a code only with the credentials posted for its state
(waiting a bounded time for them on the stores' wake-up hub, refusing ``credentials_missing``
with nothing claimed or sent), and every later call (refresh, the account-moved retry, the
verification's renewal, ``auth()``'s 401, the keep-alive sweep, the disconnect hook) uses the
connection's own integration, never ``Config``'s (which has none).

A consent starts from ``site_button()`` (``begin()`` has no consent URL in metadata mode);
``post_credentials`` is amoCRM's post (``receive_secrets``), and the fake's own install
(``install_site_button``) plays the whole of it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import attrs
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import amo_oauth._service as service
from _backends import Backend
from _pg_server import postgres_url  # noqa: F401
from _redis_server import redis_url  # noqa: F401
from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    ButtonMetadata,
    CallbackRejected,
    Config,
    ConnectionRecord,
    ConnectionStatus,
    MemoryStore,
    Outcome,
    ReauthorizationRequired,
    SiteButton,
    SQLiteStore,
    cli,
)
from amo_oauth._callback import Grant, parse_callback
from amo_oauth._events import CodeReceived
from amo_oauth._hosts import AccountHost
from amo_oauth._lifecycle import NoOp, step
from amo_oauth._records import (
    ClientCredentials,
    Lease,
    PendingCredentials,
    SeenCode,
    code_digest,
    record_key,
)
from amo_oauth._state_token import issue_state, read_state
from amo_oauth.stores import Store
from amo_oauth.testing import FakeAmoCRM, FakeClock, SiteButtonInstall
from amo_oauth.testing._accounts import FakeIntegration
from amo_oauth.testing.faults import FaultyStore

from helpers import config_for, examples, query_of
from strategies import code_received, records

#: What this product's connections are kept under: in metadata mode never sent to amoCRM.
NAMESPACE = "our-product"
SECRETS_URI = "https://app.example/amo/secrets"
ACCOUNT = "/api/v4/account"
#: Long enough that no loaded machine reaches it before the credentials land; a test that
#: waits it out (the credentials never come) sets its own short wait.
PATIENT = 60.0
#: What amoCRM's button shows of the integration it makes for each install.
META = ButtonMetadata("Shop sync", "Syncs the shop's orders into amoCRM")


#: The settings of metadata mode: the namespace for a client id, no secret, a secrets_uri.
META_MODE: dict[str, Any] = {
    "client_id": NAMESPACE,
    "client_secret": None,
    "secrets_uri": SECRETS_URI,
}


def meta_config(fake: FakeAmoCRM, **overrides: Any) -> Config:
    """A metadata-mode Config on ``fake``, patient for credentials unless overridden."""
    return config_for(fake, **{**META_MODE, "secrets_wait": PATIENT, **overrides})


@pytest.fixture
def make_meta(make_oauth: Callable[..., AmoOAuth]) -> Callable[..., AmoOAuth]:
    """An ``AmoOAuth`` in metadata mode on the fake (keyword arguments override Config)."""

    def make(store: Store | None = None, **overrides: object) -> AmoOAuth:
        return make_oauth(store, **{**META_MODE, "secrets_wait": PATIENT, **overrides})

    return make


def site_integration(fake: FakeAmoCRM) -> FakeIntegration:
    """The integration amoCRM makes for one site-button install (its own id and secret)."""
    tag = uuid.uuid4().hex[:8]
    return fake.add_integration(f"site-{tag}", f"site-secret-{tag}-0123456789", fake.redirect_uri)


def form(integration: FakeIntegration, state: str) -> dict[str, str]:
    """What amoCRM posts to ``secrets_uri`` for ``integration`` under ``state``."""
    return {
        "client_id": integration.client_id,
        "client_secret": integration.client_secret,
        "state": state,
    }


def post_credentials(oauth: AmoOAuth, state: str, integration: FakeIntegration) -> None:
    """amoCRM's post of ``integration``'s credentials under ``state``, received by ``oauth``
    (a service on the store, as any machine behind the route)."""
    assert oauth.receive_secrets(form(integration, state)).stored


@attrs.frozen
class Install:
    """One consent of a site-button install: the redirect, the browser's binding, the state."""

    query: dict[str, str]
    binding: str | None
    state: str

    @property
    def code(self) -> str:
        return self.query["code"]


def start_install(
    oauth: AmoOAuth, fake: FakeAmoCRM, connection_id: str, integration: FakeIntegration, **at: Any
) -> Install:
    """Begin, and press "Allow" for ``integration`` (whose client id the redirect carries)."""
    button = oauth.site_button(connection_id, metadata=META)
    redirect = fake.authorize(button.state, integration=integration, **at)
    return Install(query_of(redirect), button.binding, button.state)


def install(
    oauth: AmoOAuth, fake: FakeAmoCRM, connection_id: str, integration: FakeIntegration, **at: Any
) -> Install:
    """A whole install: the credentials posted, then the redirect; connected."""
    started = start_install(oauth, fake, connection_id, integration, **at)
    post_credentials(oauth, started.state, integration)
    result = oauth.handle_callback(started.query, binding=started.binding)
    assert result.outcome is Outcome.CONNECTED, result
    return started


def stored(oauth: AmoOAuth, connection_id: str) -> ConnectionRecord | None:
    return oauth.store.load(record_key(NAMESPACE, connection_id)).record


def own(integration: FakeIntegration) -> ClientCredentials:
    return ClientCredentials(integration.client_id, integration.client_secret)


def calls(fake: FakeAmoCRM, grant: str, integration: FakeIntegration | None = None) -> int:
    """Token calls amoCRM answered "ok" for ``grant`` (with ``integration``'s client id)."""
    return fake.token_call_count(grant, "ok", integration=integration)


class Waiting:
    """A callback running in a thread (it waits for the credentials): its result or error."""

    def __init__(self, run: Callable[[], object]) -> None:
        self.result: object = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.took = 0.0
        self._thread = threading.Thread(target=self._run, args=(run,))
        self._thread.start()

    def _run(self, run: Callable[[], object]) -> None:
        try:
            self.result = run()
        except BaseException as error:
            self.error = error
        self.took = time.monotonic() - self.started

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


@pytest.fixture
def waiting() -> Iterator[Callable[[Callable[[], object]], Waiting]]:
    started: list[Waiting] = []

    def start(run: Callable[[], object]) -> Waiting:
        started.append(Waiting(run))
        return started[-1]

    yield start
    for each in started:
        each.join()


def settle(seconds: float = 0.3) -> None:
    """Let a started callback reach its wait (what it may do before is reads)."""
    time.sleep(seconds)


# -- the table ------------------------------------------------------------------------------------

T0 = datetime(2030, 1, 1, tzinfo=UTC)
HOST = AccountHost("acme.amocrm.ru")
POSTED = ClientCredentials("site-1", "site-secret-1")
STATE_DIGEST = code_digest("nonce-1")


def new_code(**fields: Any) -> CodeReceived:
    """A new code of a fresh consent in metadata mode, its credentials not posted."""
    base: dict[str, Any] = {
        "code_digest": code_digest("c0de"),
        "host": HOST,
        "lease": Lease("worker-1", "exchange", T0 + timedelta(minutes=1)),
        "state_issued_at": T0,
        "state_expires_at": T0 + timedelta(hours=1),
        "needs_credentials": True,
        "state_digest": STATE_DIGEST,
        "caller_owns": True,
    }
    return CodeReceived(**{**base, **fields})


def test_the_table_answers_duplicates_and_refusals_before_it_asks_for_credentials() -> None:
    fresh = ConnectionRecord("ann", integration=NAMESPACE)
    known = attrs.evolve(fresh, seen_codes=(SeenCode(code_digest("c0de"), T0),))
    connected = attrs.evolve(
        fresh, status=ConnectionStatus.CONNECTED, version=3, connected_version=3
    )
    for record, event, answer in (
        (fresh, new_code(), NoOp.CREDENTIALS_PENDING),
        (known, new_code(), NoOp.DUPLICATE_CODE),
        (fresh, new_code(code_holder="u:elsewhere:bob"), NoOp.DUPLICATE_CODE),
        (fresh, new_code(may_claim=False, state_issued_at=None), NoOp.NEW_CODE_REFUSED),
        (fresh, new_code(browser_matches=False), NoOp.WRONG_BROWSER),
        (fresh, new_code(host=None), NoOp.NO_HOST),
        (connected, new_code(state_seen_version=2), NoOp.KEEP_CONNECTION),  # an older consent
        (connected, new_code(state_seen_version=3), NoOp.CREDENTIALS_PENDING),  # a fresh one
    ):
        result = step(record, event, T0)
        assert (result.changed, result.noop) == (False, answer), (record.status, event)


def test_the_claim_makes_the_states_credentials_the_connections_own_in_its_one_write() -> None:
    other = PendingCredentials(code_digest("nonce-2"), ClientCredentials("site-2", "s2"), T0)
    mine = PendingCredentials(STATE_DIGEST, POSTED, T0)
    record = ConnectionRecord("ann", integration=NAMESPACE, pending_credentials=(other, mine))
    claimed = step(record, new_code(credentials=POSTED), T0)
    assert claimed.changed and claimed.record.status is ConnectionStatus.CODE_RECEIVED
    assert claimed.record.credentials == POSTED
    assert claimed.record.pending_credentials == (other,)  # another consent's stay pending
    fixed = step(ConnectionRecord("ann"), attrs.evolve(new_code(), needs_credentials=False), T0)
    assert fixed.changed and fixed.record.credentials is None  # fixed mode: Config's


@settings(max_examples=examples(500))
@given(record=records, event=code_received(st.sampled_from(["c0de", "other"])))
def test_no_code_is_claimed_without_credentials_in_metadata_mode(
    record: ConnectionRecord, event: CodeReceived
) -> None:
    event = attrs.evolve(event, needs_credentials=True, credentials=None)
    # The event as drawn, and as a claim would most often see it (new to the ledger, its
    # state unused, from its own browser), which the drawn fields rarely all give.
    claimable = attrs.evolve(
        event, code_holder=None, state_holder=None, may_claim=True, browser_matches=True
    )
    for each in (event, claimable):
        assert not step(record, each, T0).changed, (record.status, each)


# -- the callback, on every store ----------------------------------------------------------------


def test_an_install_exchanges_its_code_once_with_its_own_integration(
    backend: Backend, make_meta: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make_meta(store=backend.open())
    site = site_integration(fake)
    started = install(oauth, fake, "ann", site)
    record = stored(oauth, "ann")
    assert record is not None
    assert (record.status, record.credentials) == (ConnectionStatus.CONNECTED, own(site))
    assert record.pending_credentials == ()  # moved into credentials by the claim's one write
    assert calls(fake, "authorization_code", site) == 1
    assert fake.token_call_count() == 1  # nothing with Config's (it has none) or another's
    # The same redirect on another machine: the seed's replay, answered from reads.
    other = make_meta(store=backend.open())
    again = other.handle_callback(started.query, binding=started.binding)
    assert (again.outcome, again.duplicate) == (Outcome.ALREADY_CONNECTED, True)
    assert fake.token_calls_for(started.code) == 1
    assert fake.is_access_token_valid(other.access_token("ann"))


def test_a_redirect_before_its_credentials_waits_for_them(
    backend: Backend,
    make_meta: Callable[..., AmoOAuth],
    fake: FakeAmoCRM,
    waiting: Callable[[Callable[[], object]], Waiting],
) -> None:
    oauth = make_meta(store=backend.open())
    site = site_integration(fake)
    started = start_install(oauth, fake, "ann", site)
    callback = waiting(lambda: oauth.handle_callback(started.query, binding=started.binding))
    settle()
    assert callback.alive() and fake.token_call_count() == 0  # waiting, nothing claimed
    # amoCRM's post lands on another machine: the hub wakes the waiting callback.
    post_credentials(make_meta(store=backend.open()), started.state, site)
    callback.join()
    assert callback.error is None, callback.error
    assert getattr(callback.result, "outcome", None) is Outcome.CONNECTED
    assert callback.took < PATIENT  # woken by the post, not by the end of the wait
    assert calls(fake, "authorization_code", site) == 1


def test_credentials_that_never_come_refuse_the_code_unspent_and_it_connects_later(
    backend: Backend, make_meta: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make_meta(store=backend.open(), secrets_wait=0.3)
    site = site_integration(fake)
    started = start_install(oauth, fake, "ann", site)
    began = time.monotonic()
    with pytest.raises(CallbackRejected) as refused:
        oauth.handle_callback(started.query, binding=started.binding)
    assert refused.value.reason == "credentials_missing"
    assert time.monotonic() - began >= 0.3  # it waited for them
    # Nothing claimed or sent: state, ledger and record untouched, the code unspent.
    assert fake.token_call_count() == 0
    assert oauth.store.holder_of(f"code:{code_digest(started.code)}") is None
    nonce = read_state(oauth.config.accepted_state_secrets, started.state).nonce
    assert oauth.store.holder_of(nonce) is None
    assert stored(oauth, "ann") is None
    # The post arrives after all: the same redirect now connects.
    post_credentials(make_meta(store=backend.open()), started.state, site)
    result = oauth.handle_callback(started.query, binding=started.binding)
    assert result.outcome is Outcome.CONNECTED
    assert fake.token_calls_for(started.code) == 1


def test_burst_of_one_redirect_waiting_for_its_credentials_makes_one_token_call(
    backend: Backend,
    make_meta: Callable[..., AmoOAuth],
    fake: FakeAmoCRM,
    waiting: Callable[[Callable[[], object]], Waiting],
) -> None:
    services = [make_meta(store=backend.open()) for _ in range(2)]
    site = site_integration(fake)
    started = start_install(services[0], fake, "ann", site)
    callbacks = [
        waiting(
            lambda oauth=services[i % 2]: oauth.handle_callback(
                started.query, binding=started.binding
            )
        )
        for i in range(4)
    ]
    settle()
    post_credentials(make_meta(store=backend.open()), started.state, site)
    for callback in callbacks:
        callback.join()
    # One callback per consent waits in each process (service); one that came while another
    # waited was refused at once, unspent (the browser's reload is then a duplicate).
    refused = [c.error for c in callbacks if c.error is not None]
    assert all(getattr(e, "reason", e) == "credentials_missing" for e in refused), refused
    assert len(refused) <= 2
    outcomes = sorted(str(c.result.outcome) for c in callbacks if c.error is None)  # type: ignore[attr-defined]
    assert outcomes.count("connected") == 1, outcomes
    assert set(outcomes) <= {"connected", "already_connected", "in_progress"}
    assert fake.token_calls_for(started.code) == 1
    assert calls(fake, "authorization_code", site) == 1


# -- the fake's whole install ---------------------------------------------------------------------


def secrets_route(oauth: AmoOAuth) -> httpx.MockTransport:
    """``secrets_uri`` in process: the post's form handed to ``receive_secrets``, 200."""

    def answer(request: httpx.Request) -> httpx.Response:
        oauth.receive_secrets(dict(parse_qsl(request.content.decode())))
        return httpx.Response(200, json={"ok": True})

    return httpx.MockTransport(answer)


def fakes_install(
    oauth: AmoOAuth, fake: FakeAmoCRM, **options: Any
) -> tuple[SiteButton, SiteButtonInstall, dict[str, str]]:
    """``ann``'s site button, installed through the fake's button script (``options``: those
    of ``install_site_button``): the button, the install, and the code redirect's query."""
    button = oauth.site_button("ann", metadata=META)
    done = fake.install_site_button(
        redirect_uri=fake.redirect_uri, secrets_uri=SECRETS_URI, state=button.state, **options
    )
    assert done.redirect_url is not None
    return button, done, query_of(done.redirect_url)


def test_the_fakes_retried_install_exchanges_once_with_its_last_integration(
    make_meta: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make_meta()
    # The user retried: amoCRM made (and posted) a second integration.
    button, done, query = fakes_install(oauth, fake, transport=secrets_route(oauth), attempts=2)
    first, last = done.integrations
    assert oauth.handle_callback(query, binding=button.binding).outcome is Outcome.CONNECTED
    again = oauth.handle_callback(query, binding=button.binding)
    assert (again.outcome, again.duplicate) == (Outcome.ALREADY_CONNECTED, True)
    assert fake.token_calls_for(query["code"]) == 1
    assert calls(fake, "authorization_code", last) == 1
    assert fake.token_call_count(integration=first) == 0
    record = stored(oauth, "ann")
    assert record is not None and record.credentials == own(last)


def test_the_fakes_install_whose_post_comes_after_the_redirect_connects(
    make_meta: Callable[..., AmoOAuth],
    fake: FakeAmoCRM,
    waiting: Callable[[Callable[[], object]], Waiting],
) -> None:
    oauth = make_meta()
    button, done, query = fakes_install(oauth, fake, post_credentials=False)
    callback = waiting(lambda: oauth.handle_callback(query, binding=button.binding))
    settle()
    assert callback.alive() and fake.token_call_count() == 0
    fake.post_site_button_secrets(done, transport=secrets_route(make_meta(store=oauth.store)))
    callback.join()
    assert getattr(callback.result, "outcome", None) is Outcome.CONNECTED, callback.error
    assert calls(fake, "authorization_code", done.integration) == 1


# -- which credentials ---------------------------------------------------------------------------


def test_a_redirect_for_another_client_id_waits_for_its_own_credentials(
    make_meta: Callable[..., AmoOAuth],
    fake: FakeAmoCRM,
    waiting: Callable[[Callable[[], object]], Waiting],
) -> None:
    """The user retried the install: amoCRM made a second integration, and the redirect is
    its code. The first post's credentials are not sent with it; the second post's are."""
    oauth = make_meta(secrets_wait=0.3)
    first, retried = site_integration(fake), site_integration(fake)
    started = start_install(oauth, fake, "ann", retried)
    post_credentials(oauth, started.state, first)
    with pytest.raises(CallbackRejected) as refused:
        oauth.handle_callback(started.query, binding=started.binding)
    assert refused.value.reason == "credentials_missing"
    assert fake.token_call_count() == 0
    # Waiting for them again, the retried install's post lands: exchanged with its own.
    patient = make_meta(store=oauth.store)
    callback = waiting(lambda: patient.handle_callback(started.query, binding=started.binding))
    settle()
    assert callback.alive()
    post_credentials(oauth, started.state, retried)
    callback.join()
    assert getattr(callback.result, "outcome", None) is Outcome.CONNECTED, callback.error
    assert calls(fake, "authorization_code", retried) == 1
    assert fake.token_call_count() == 1
    record = stored(oauth, "ann")
    assert record is not None and record.credentials == own(retried)


def test_another_states_credentials_are_not_this_consents(
    make_meta: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make_meta(secrets_wait=0.2)
    site = site_integration(fake)
    earlier = oauth.site_button("ann", metadata=META)
    started = start_install(oauth, fake, "ann", site)
    post_credentials(oauth, earlier.state, site)  # under the other state
    with pytest.raises(CallbackRejected) as refused:
        oauth.handle_callback(started.query, binding=started.binding)
    assert refused.value.reason == "credentials_missing"
    assert fake.token_call_count() == 0


def test_metadata_mode_never_compares_the_redirect_with_config_client_id(
    make_meta: Callable[..., AmoOAuth], make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    site = site_integration(fake)
    # Fixed mode is unchanged: another integration's redirect is not this one's.
    fixed = make_oauth()
    begun = fixed.begin("ann")
    with pytest.raises(CallbackRejected) as mismatch:
        fixed.handle_callback(query_of(fake.authorize(begun.state, integration=site)))
    assert mismatch.value.reason == "client_id_mismatch"
    # Metadata mode: the redirect names the install's own integration, never the namespace.
    meta = make_meta()
    started = install(meta, fake, "ann", site)
    assert started.query["client_id"] == site.client_id != NAMESPACE
    assert fake.token_call_count() == fake.token_call_count(integration=site) == 1


def test_the_legacy_exchange_with_a_state_uses_the_states_credentials(
    make_meta: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """``exchange_code`` has no client id (the legacy route's body carries none): the state's
    posted credentials are the consent's."""
    oauth = make_meta()
    site = site_integration(fake)
    started = start_install(oauth, fake, "ann", site)
    post_credentials(oauth, started.state, site)
    result = oauth.exchange_code(
        "ann",
        started.code,
        referer=started.query["referer"],
        state=started.state,
        binding=started.binding,
    )
    assert result.outcome is Outcome.CONNECTED
    assert calls(fake, "authorization_code", site) == 1


def test_a_code_without_a_state_has_no_credentials_to_wait_for(
    make_meta: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """An admin's keys-tab code for a connection that never received its integration's
    credentials: refused at once (nothing will be posted for it), the code unspent."""
    oauth = make_meta()
    code = fake.issue_keys_tab_code()
    began = time.monotonic()
    with pytest.raises(CallbackRejected) as refused:
        oauth.connect_with_code("ann", code, fake.account_host)
    assert refused.value.reason == "credentials_missing"
    assert time.monotonic() - began < PATIENT / 2
    assert fake.token_calls_for(code) == 0


# -- the seed's replay never waits ---------------------------------------------------------------


def test_the_seeds_replay_is_answered_at_once_during_and_after_a_wait(
    make_meta: Callable[..., AmoOAuth],
    fake: FakeAmoCRM,
    waiting: Callable[[Callable[[], object]], Waiting],
) -> None:
    oauth = make_meta()
    first = install(oauth, fake, "ann", site_integration(fake))
    referer = first.query["referer"]
    # A re-authorization whose credentials have not come: its callback waits.
    second_site = site_integration(fake)
    second = start_install(oauth, fake, "ann", second_site)
    callback = waiting(lambda: oauth.handle_callback(second.query, binding=second.binding))
    settle()
    assert callback.alive()

    def replays() -> None:
        for replay in (
            lambda: oauth.exchange_code("ann", first.code, referer=referer),
            lambda: oauth.exchange_code("ann", first.code, referer=referer, state=first.state),
            lambda: oauth.handle_callback(first.query),  # no binding: the ledger names it
        ):
            began = time.monotonic()
            result = replay()
            assert time.monotonic() - began < PATIENT / 2  # never waits for credentials
            assert (result.outcome, result.duplicate) == (Outcome.ALREADY_CONNECTED, True)
            assert result.connection.status is ConnectionStatus.CONNECTED

    replays()  # during the wait
    assert callback.alive()
    post_credentials(oauth, second.state, second_site)
    callback.join()
    assert getattr(callback.result, "outcome", None) is Outcome.CONNECTED, callback.error
    replays()  # and after
    assert fake.token_calls_for(first.code) == 1
    assert fake.token_calls_for(second.code) == 1
    record = stored(oauth, "ann")
    assert record is not None and record.credentials == own(second_site)


# -- every later call with the connection's own credentials ---------------------------------------


def test_refreshes_use_the_connections_own_integration(
    make_meta: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make_meta()
    site = site_integration(fake)
    install(oauth, fake, "ann", site)
    clock.advance(timedelta(days=1, minutes=1))
    assert fake.is_access_token_valid(oauth.access_token("ann"))
    assert calls(fake, "refresh_token", site) == 1
    assert fake.token_call_count("refresh_token") == 1


def test_a_connection_without_its_own_credentials_claims_no_refresh(
    make_meta: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """A metadata-mode record with no credentials of its own (written before they were kept)
    has nothing to send: ``credentials_missing`` at once, every time, no lease left held."""
    oauth = make_meta(settle_timeout=0.5)
    install(oauth, fake, "ann", site_integration(fake))
    record = stored(oauth, "ann")
    assert record is not None
    bare = attrs.evolve(record, credentials=None, version=record.version + 1)
    assert oauth.store.compare_and_set(bare, record.version)
    clock.advance(timedelta(days=1, minutes=1))
    for _ in range(2):
        with pytest.raises(ReauthorizationRequired) as missing:
            oauth.access_token("ann")
        assert missing.value.reason == "credentials_missing"
    after = stored(oauth, "ann")
    assert after is not None and (after.lease, after.version) == (None, bare.version)
    assert fake.token_call_count("refresh_token") == 0


def test_the_account_moved_retry_uses_the_connections_own_integration(
    make_meta: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make_meta()
    site = site_integration(fake)
    install(oauth, fake, "ann", site)
    record = stored(oauth, "ann")
    assert record is not None and record.tokens is not None
    spent = record.tokens.refresh_token
    clock.advance(timedelta(days=1, minutes=1))
    moved = fake.move_account(None, domain="kommo.com")
    assert fake.is_access_token_valid(oauth.access_token("ann"))
    assert fake.refresh_sends(spent, host=moved.host) == 1  # the one retry on the new host
    assert calls(fake, "refresh_token", site) == 1


def test_the_verifications_renewal_uses_the_connections_own_integration(
    make_meta: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make_meta()
    site = site_integration(fake)
    fake.fail_next("500", endpoint="api", path=ACCOUNT)  # the verification is deferred
    started = start_install(oauth, fake, "ann", site)
    post_credentials(oauth, started.state, site)
    result = oauth.handle_callback(started.query, binding=started.binding)
    assert result.outcome is Outcome.IN_PROGRESS
    clock.advance(timedelta(days=1, seconds=10))  # its access token expired meanwhile
    status = oauth.status("ann")
    assert (status.status, status.error) == (ConnectionStatus.CONNECTED, None)
    assert calls(fake, "refresh_token", site) == 1


def test_auth_refreshes_on_a_401_with_the_connections_own_integration(
    make_meta: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make_meta()
    site = site_integration(fake)
    install(oauth, fake, "ann", site)
    fake.expire_access_tokens()
    with httpx.Client(transport=fake.transport(), auth=oauth.auth("ann")) as api:
        response = api.get(f"https://{fake.account_host}{ACCOUNT}")
    assert response.status_code == 200
    assert calls(fake, "refresh_token", site) == 1


def test_the_sweep_refreshes_each_install_with_its_own_integration(
    backend: Backend, make_meta: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """The issue's regression: a backend holding per-install integrations saw ``refresh_due``
    report ``refreshed=[]``, ``skipped=2``, and the connections died at 90 days."""
    oauth = make_meta(store=backend.open())
    sites = {"ann": site_integration(fake), "bob": site_integration(fake)}
    other = fake.add_account("other")
    install(oauth, fake, "ann", sites["ann"])
    install(oauth, fake, "bob", sites["bob"], account=other)
    clock.advance(timedelta(days=85))
    report = make_meta(store=backend.open()).refresh_due()
    assert sorted(report.refreshed) == ["ann", "bob"]
    assert (report.failed, report.skipped) == ((), 0)
    for site in sites.values():
        assert calls(fake, "refresh_token", site) == 1
    assert fake.token_call_count("refresh_token") == 2


def test_the_cli_sweep_refreshes_each_install_with_its_own_integration(
    tmp_path: Path,
    make_meta: Callable[..., AmoOAuth],
    fake: FakeAmoCRM,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``amo-oauth refresh-due`` in metadata mode: no client secret to read, each connection
    refreshed with its own integration."""
    db = tmp_path / "amo.db"
    oauth = make_meta(store=SQLiteStore(db))
    sites = [site_integration(fake), site_integration(fake)]
    install(oauth, fake, "ann", sites[0])
    install(oauth, fake, "bob", sites[1], account=fake.add_account("other"))
    clock.advance(timedelta(days=85))
    env = {
        "AMO_CLIENT_ID": NAMESPACE,
        "AMO_SECRETS_URI": SECRETS_URI,
        "AMO_REDIRECT_URI": fake.redirect_uri,
        "AMO_STATE_SECRET": "s" * 32,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AMO_CLIENT_SECRET", raising=False)
    real = service.AmoOAuth.__init__

    def on_the_fake(self: AmoOAuth, config: object, **options: object) -> None:
        options["http"], options["clock"] = httpx.Client(transport=fake.transport()), clock
        real(self, config, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(service.AmoOAuth, "__init__", on_the_fake)
    assert cli.main(["refresh-due", "--db", str(db)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (sorted(summary["refreshed"]), summary["skipped"]) == (["ann", "bob"], 0)
    for site in sites:
        assert calls(fake, "refresh_token", site) == 1


# -- the disconnect hook --------------------------------------------------------------------------


def test_the_hook_is_checked_with_the_secret_of_the_install_it_names(
    make_meta: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make_meta()
    ann_site, bob_site = site_integration(fake), site_integration(fake)
    other = fake.add_account("other")
    install(oauth, fake, "ann", ann_site)
    install(oauth, fake, "bob", bob_site, account=other)
    # Bob's integration on ann's account: no connection of that account has it.
    for forged in (
        fake.hook_query(integration=bob_site),
        {**fake.hook_query(integration=ann_site), "signature": "0" * 64},
        {**fake.hook_query(integration=ann_site), "client_uuid": NAMESPACE},
    ):
        with pytest.raises(CallbackRejected) as refused:
            oauth.handle_disconnect_hook(forged)
        assert refused.value.reason == "bad_signature"
    assert oauth.status("ann").status is ConnectionStatus.CONNECTED
    result = oauth.handle_disconnect_hook(fake.uninstall(integration=ann_site))
    assert [c.connection_id for c in result.disconnected] == ["ann"]
    assert oauth.status("ann").status is ConnectionStatus.ERROR
    assert oauth.status("bob").status is ConnectionStatus.CONNECTED


def test_the_hook_in_fixed_mode_is_unchanged(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    from helpers import run_consent

    run_consent(oauth, fake, "ann")
    site = site_integration(fake)
    with pytest.raises(CallbackRejected) as refused:
        oauth.handle_disconnect_hook(fake.hook_query(integration=site))
    assert refused.value.reason == "bad_signature"
    result = oauth.handle_disconnect_hook(fake.uninstall())
    assert [c.connection_id for c in result.disconnected] == ["ann"]


# -- the async twin -------------------------------------------------------------------------------


def test_the_async_twin_waits_for_the_credentials_and_uses_them_after(
    fake: FakeAmoCRM, clock: FakeClock
) -> None:
    config = meta_config(fake)
    store = MemoryStore(clock=clock)
    ann_site, bob_site = site_integration(fake), site_integration(fake)

    async def scenario() -> None:
        http = httpx.AsyncClient(transport=fake.async_transport())
        async with AsyncAmoOAuth(config, store=store, http=http, clock=clock) as oauth:
            begun = await oauth.site_button("ann", metadata=META)
            query = query_of(fake.authorize(begun.state, integration=ann_site))
            callback = asyncio.ensure_future(oauth.handle_callback(query, binding=begun.binding))
            await asyncio.sleep(0.3)
            assert not callback.done() and fake.token_call_count() == 0
            assert (await oauth.receive_secrets(form(ann_site, begun.state))).stored
            result = await callback
            assert result.outcome is Outcome.CONNECTED
            again = await oauth.handle_callback(query)  # the replay: at once, from reads
            assert (again.outcome, again.duplicate) == (Outcome.ALREADY_CONNECTED, True)
            # A second install on another account, whose credentials never come.
            other = fake.add_account("other")
            begun = await oauth.site_button("bob", metadata=META)
            query = query_of(fake.authorize(begun.state, integration=bob_site, account=other))
            short = attrs.evolve(config, secrets_wait=0.2)
            # Not closed: closing a service closes its store, which the other one uses.
            hasty = AsyncAmoOAuth(short, store=store, http=http, clock=clock)
            with pytest.raises(CallbackRejected) as refused:
                await hasty.handle_callback(query, binding=begun.binding)
            assert refused.value.reason == "credentials_missing"
            assert (await oauth.receive_secrets(form(bob_site, begun.state))).stored
            assert (await oauth.handle_callback(query, binding=begun.binding)).outcome is (
                Outcome.CONNECTED
            )
            clock.advance(timedelta(days=85))
            report = await oauth.refresh_due()
            assert sorted(report.refreshed) == ["ann", "bob"] and report.skipped == 0
            hook = fake.uninstall(integration=bob_site, account=other)
            gone = await oauth.handle_disconnect_hook(hook)
            assert [c.connection_id for c in gone.disconnected] == ["bob"]

    asyncio.run(scenario())
    assert calls(fake, "authorization_code", ann_site) == 1
    assert calls(fake, "authorization_code", bob_site) == 1
    assert calls(fake, "refresh_token", ann_site) == 1
    assert calls(fake, "refresh_token", bob_site) == 1


def test_parsing_carries_the_redirects_client_id_only_in_metadata_mode(fake: FakeAmoCRM) -> None:
    fixed = config_for(fake)
    meta = config_for(fake, **META_MODE)
    redirect = {"code": "c0de", "referer": fake.account_host, "client_id": "site-x"}
    with pytest.raises(CallbackRejected) as refused:
        parse_callback({**redirect, "from_widget": "1"}, fixed)
    assert refused.value.reason == "client_id_mismatch"
    state = issue_state(
        meta.state_secret, "ann", datetime.now(UTC), meta.state_ttl, namespace=meta.client_id
    )[0]
    grant = parse_callback({**redirect, "state": state}, meta)
    assert isinstance(grant, Grant) and grant.client_id == "site-x"
    fixed_state = issue_state(
        fixed.state_secret, "ann", datetime.now(UTC), fixed.state_ttl, namespace=fixed.client_id
    )[0]
    own_id = {**redirect, "state": fixed_state, "client_id": fake.client_id}
    fixed_grant = parse_callback(own_id, fixed)
    assert isinstance(fixed_grant, Grant) and fixed_grant.client_id is None


# -- the client id enters the ledger once amoCRM accepted it ------------------------------------


def client_holder(oauth: AmoOAuth, integration: FakeIntegration) -> str | None:
    return oauth.store.holder_of(f"client:{integration.client_id}")


def test_only_an_exchange_amocrm_accepted_enters_the_client_id(
    backend: Backend, make_meta: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """The post enters nothing; amoCRM's acceptance of the code does, naming the record; a
    secret amoCRM refuses enters nothing (attack review of issue 22: anyone could enter any
    client id, for ten years, by posting it under their own state)."""
    oauth = make_meta(store=backend.open())
    site = site_integration(fake)
    started = start_install(oauth, fake, "ann", site)
    post_credentials(oauth, started.state, site)
    assert client_holder(oauth, site) is None
    oauth.handle_callback(started.query, binding=started.binding)
    assert client_holder(oauth, site) == record_key(NAMESPACE, "ann")
    # A client id posted with a secret amoCRM does not know: its code is refused, no entry.
    other = site_integration(fake)
    bad = start_install(oauth, fake, "bob", other)
    wrong = {**form(other, bad.state), "client_secret": "not-the-secret-0123456789"}
    assert oauth.receive_secrets(wrong).stored
    refused = oauth.handle_callback(bad.query, binding=bad.binding)
    assert refused.outcome is Outcome.FAILED
    assert client_holder(oauth, other) is None


def test_a_client_id_another_record_holds_is_logged_and_the_connection_stands(
    make_meta: Callable[..., AmoOAuth], fake: FakeAmoCRM, caplog: pytest.LogCaptureFixture
) -> None:
    oauth = make_meta()
    site = site_integration(fake)
    started = start_install(oauth, fake, "ann", site)
    post_credentials(oauth, started.state, site)
    someone = record_key(NAMESPACE, "someone-else")
    far = datetime(2099, 1, 1, tzinfo=UTC)
    assert oauth.store.consume_state(f"client:{site.client_id}", far, someone)
    result = oauth.handle_callback(started.query, binding=started.binding)
    assert result.outcome is Outcome.CONNECTED
    assert client_holder(oauth, site) == someone
    assert "was not entered in the ledger" in caplog.text
    assert site.client_secret not in caplog.text


def test_a_client_id_the_store_failed_to_enter_is_entered_at_the_next_refresh(
    make_meta: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """The crash window (the code exchanged, the entry not written) closes at the next
    refresh: amoCRM accepting the connection's own credentials again enters it."""
    store = FaultyStore(MemoryStore(clock=clock))
    oauth = make_meta(store=store)
    site = site_integration(fake)
    started = start_install(oauth, fake, "ann", site)
    post_credentials(oauth, started.state, site)
    fault = store.fail("consume_state", times=1)
    result = oauth.handle_callback(started.query, binding=started.binding)
    assert result.outcome is Outcome.CONNECTED and fault.fired == 1
    assert client_holder(oauth, site) is None
    clock.advance(timedelta(days=1, minutes=1))
    assert fake.is_access_token_valid(oauth.access_token("ann"))
    assert client_holder(oauth, site) == record_key(NAMESPACE, "ann")


# -- waiting callbacks are bounded ----------------------------------------------------------------


def made_up(started: Install, n: int) -> dict[str, str]:
    """The consent's redirect with a made-up code and client id (a signed-in user's own state
    and binding: what a flood needs)."""
    return {**started.query, "code": f"made-up-code-{n}", "client_id": f"made-up-client-{n}"}


def test_one_callback_per_consent_waits_and_the_others_are_refused_at_once(
    backend: Backend,
    make_meta: Callable[..., AmoOAuth],
    fake: FakeAmoCRM,
    waiting: Callable[[Callable[[], object]], Waiting],
) -> None:
    """Attack review of issue 22: a burst of redirects under one state (made-up codes and
    client ids) held a worker each for ``secrets_wait``. Now one waits; the others are refused
    ``credentials_missing`` while it still waits; nothing is claimed or sent."""
    oauth = make_meta(store=backend.open())
    site = site_integration(fake)
    started = start_install(oauth, fake, "ann", site)
    first = waiting(lambda: oauth.handle_callback(started.query, binding=started.binding))
    settle()
    burst = [
        waiting(lambda n=n: oauth.handle_callback(made_up(started, n), binding=started.binding))
        for n in range(5)
    ]
    for callback in burst:
        callback.join(PATIENT / 2)  # refused at once; a waiting one would take PATIENT
        assert not callback.alive()
        assert getattr(callback.error, "reason", callback.result) == "credentials_missing"
    assert first.alive() and fake.token_call_count() == 0
    post_credentials(make_meta(store=backend.open()), started.state, site)
    first.join()
    assert getattr(first.result, "outcome", first.error) is Outcome.CONNECTED
    assert fake.token_call_count() == 1


def test_the_async_twin_lets_one_callback_per_consent_wait(
    fake: FakeAmoCRM, clock: FakeClock
) -> None:
    config = meta_config(fake)
    site = site_integration(fake)

    async def scenario() -> None:
        http = httpx.AsyncClient(transport=fake.async_transport())
        store = MemoryStore(clock=clock)
        async with AsyncAmoOAuth(config, store=store, http=http, clock=clock) as oauth:
            begun = await oauth.site_button("ann", metadata=META)
            query = query_of(fake.authorize(begun.state, integration=site))
            first = asyncio.ensure_future(oauth.handle_callback(query, binding=begun.binding))
            await asyncio.sleep(0.3)
            flood = {**query, "code": "made-up", "client_id": "made-up-client"}
            with pytest.raises(CallbackRejected) as refused:  # at once: a wait takes PATIENT
                await asyncio.wait_for(
                    oauth.handle_callback(flood, binding=begun.binding), PATIENT / 2
                )
            assert refused.value.reason == "credentials_missing" and not first.done()
            assert (await oauth.receive_secrets(form(site, begun.state))).stored
            assert (await first).outcome is Outcome.CONNECTED

    asyncio.run(scenario())
    assert fake.token_call_count() == 1


def test_waits_count_against_their_source_so_a_flood_of_states_is_rate_limited(
    make_meta: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """Each wait its credentials never came for counts as a try of its source (here the
    signed-in user whose binding the states carry); beyond ``max_exchanges_per_source`` a new
    consent's callback is refused ``rate_limited`` without waiting (test_limits: a wait whose
    credentials came is given back)."""
    oauth = make_meta(secrets_wait=0.05, max_exchanges_per_source=3)
    site = site_integration(fake)
    honest = start_install(oauth, fake, "mallory", site)
    post_credentials(oauth, honest.state, site)
    assert oauth.handle_callback(honest.query, binding=honest.binding).outcome is (
        Outcome.CONNECTED
    )
    reasons = []
    for n in range(4):
        started = start_install(oauth, fake, "mallory", site)
        try:
            oauth.handle_callback(made_up(started, n), binding=started.binding)
        except CallbackRejected as refused:
            reasons.append(refused.reason)
    assert reasons == ["credentials_missing"] * 3 + ["rate_limited"]
    assert fake.token_call_count() == 1


def test_an_honest_user_reloading_while_the_post_is_late_is_never_locked_out() -> None:
    """Final review of issue 22: the 503 page asks to reload; each reload's wait used to
    count in the user's window, so after ``max_exchanges_per_source`` reloads the user was
    refused ``rate_limited`` for ten minutes, even once amoCRM's post had landed. The
    consent's waits count once now. (Real clocks: the waits are real, 50 ms each.)"""
    fake = FakeAmoCRM(rate_limit=None)
    config = meta_config(
        fake,
        secrets_wait=0.05,
        max_exchanges_per_source=10,  # the default (the tests' helper raises it)
    )
    with AmoOAuth(
        config, store=MemoryStore(), http=httpx.Client(transport=fake.transport())
    ) as oauth:
        site = site_integration(fake)
        started = start_install(oauth, fake, "ann", site)
        for _ in range(2 * config.max_exchanges_per_source):
            with pytest.raises(CallbackRejected) as refused:
                oauth.handle_callback(started.query, binding=started.binding)
            assert refused.value.reason == "credentials_missing"
        post_credentials(oauth, started.state, site)
        result = oauth.handle_callback(started.query, binding=started.binding)
        assert result.outcome is Outcome.CONNECTED
        assert fake.token_call_count() == 1
