"""The state secret rotated in a rolling deploy (issue 19 #2).

Three pods share one store (memory, SQLite, PostgreSQL, Redis): pod A signs with the OLD
secret, pod B with the NEW one and still accepts the OLD (``previous_state_secrets``), pod C
has the OLD removed. A consent, a binding and a mobile ticket made on A complete on B; on C a
state signed with OLD is ``bad_state`` for a new code, while the seed's replay of a code
already exchanged is still answered from the code ledger."""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from _pg_server import postgres_url  # noqa: F401
from _redis_server import redis_url  # noqa: F401
from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    CallbackRejected,
    Config,
    ConnectionStatus,
    MemoryStore,
    Outcome,
    SQLiteStore,
    _state_token,
)
from amo_oauth._binding import issue_ticket, read_ticket
from amo_oauth._callback import parse_callback
from amo_oauth._setting_errors import MAX_PREVIOUS_STATE_SECRETS
from amo_oauth._state_token import UnsignedState, issue_state, read_state
from amo_oauth.cli import _config_from_env
from amo_oauth.fastapi import router
from amo_oauth.stores import Store
from amo_oauth.testing import FakeAmoCRM, FakeClock
from test_duplicate_commits import _postgres, _redis
from test_web import user_from_header

from helpers import config_for, examples, query_of
from strategies import T0

OLD = "old-state-secret-of-pod-a-0123456789abcdef"
NEW = "new-state-secret-of-pod-b-0123456789abcdef"
USER = "user-42"
PREFIX = "/api/amo-crm"
AS_USER = {"x-user": USER}

#: Each pod's state secrets: (state_secret, previous_state_secrets).
PODS = {"A": (OLD, ()), "B": (NEW, (OLD,)), "C": (NEW, ())}


def rejected(call: Callable[[], object]) -> str:
    with pytest.raises(CallbackRejected) as caught:
        call()
    return caught.value.reason


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis"])
def store(request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path) -> Iterator[Store]:
    kind = request.param
    shared: Store
    if kind == "memory":
        shared = MemoryStore(clock=clock)
    elif kind == "sqlite":
        shared = SQLiteStore(tmp_path / "shared.db", clock=clock)
    else:  # real servers, started for the session (AMO_OAUTH_REQUIRE_SERVICES=1: never skipped)
        shared = _postgres(request, clock) if kind == "postgres" else _redis(request, clock)
    yield shared
    shared.close()


@pytest.fixture
def pod(make_oauth: Callable[..., AmoOAuth], store: Store) -> Callable[[str], AmoOAuth]:
    """The service of pod A, B or C; every pod reads and writes the one shared store."""
    made: dict[str, AmoOAuth] = {}

    def get(name: str) -> AmoOAuth:
        if name not in made:
            current, previous = PODS[name]
            made[name] = make_oauth(store, state_secret=current, previous_state_secrets=previous)
        return made[name]

    return get


# -- a consent begun before the rotation completes after it ------------------------------------


def test_a_consent_begun_on_the_old_secret_completes_where_it_is_previous(
    pod: Callable[[str], AmoOAuth], fake: FakeAmoCRM
) -> None:
    begun = pod("A").begin(USER)
    result = pod("B").handle_callback(query_of(fake.authorize(begun.state)), binding=begun.binding)
    assert result.outcome is Outcome.CONNECTED
    assert pod("C").status(USER).status is ConnectionStatus.CONNECTED
    assert fake.token_call_count("authorization_code") == 1


def test_the_legacy_exchange_of_a_consent_begun_on_the_old_secret_completes(
    pod: Callable[[str], AmoOAuth], fake: FakeAmoCRM
) -> None:
    begun = pod("A").begin(USER)
    query = query_of(fake.authorize(begun.state))
    result = pod("B").exchange_code(
        USER, query["code"], referer=query["referer"], state=begun.state, binding=begun.binding
    )
    assert result.outcome is Outcome.CONNECTED


def test_the_old_secrets_binding_is_still_checked_where_it_is_previous(
    pod: Callable[[str], AmoOAuth], fake: FakeAmoCRM
) -> None:
    # Accepting the old secret accepts nothing else: another browser's binding is refused.
    begun = pod("A").begin(USER)
    other = pod("A").begin(USER)  # no binding passed: a fresh one, another browser's
    query = query_of(fake.authorize(begun.state))
    assert rejected(lambda: pod("B").handle_callback(query, binding=other.binding)) == (
        "wrong_browser"
    )
    assert rejected(lambda: pod("B").handle_callback(query, connection_id="someone-else")) == (
        "bad_state"
    )
    assert fake.token_call_count() == 0


def test_a_ticket_issued_on_the_old_secret_is_redeemed_where_it_is_previous(
    pod: Callable[[str], AmoOAuth],
) -> None:
    assert pod("B").redeem_ticket(pod("A").issue_ticket(USER)) == USER
    # Pod A does not know the new secret: what B signs is refused there (hence the rollout's
    # first step, docs/operations.md), and C no longer accepts the old one.
    assert rejected(lambda: pod("A").redeem_ticket(pod("B").issue_ticket(USER))) == "bad_ticket"
    assert rejected(lambda: pod("C").redeem_ticket(pod("A").issue_ticket(USER))) == "bad_ticket"


def test_the_async_service_accepts_the_previous_secret(fake: FakeAmoCRM, clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)

    async def scenario() -> Outcome:
        pods = [
            AsyncAmoOAuth(
                config_for(fake, state_secret=current, previous_state_secrets=previous),
                store=store,
                http=httpx.AsyncClient(transport=fake.async_transport()),
                clock=clock,
            )
            for current, previous in (PODS["A"], PODS["B"])
        ]
        try:
            assert await pods[1].redeem_ticket(await pods[0].issue_ticket(USER)) == USER
            begun = await pods[0].begin(USER)
            query = query_of(fake.authorize(begun.state))
            return (await pods[1].handle_callback(query, binding=begun.binding)).outcome
        finally:
            for oauth in pods:
                await oauth.aclose()

    assert asyncio.run(scenario()) is Outcome.CONNECTED


# -- once the old secret is removed ----------------------------------------------------------


def test_a_state_signed_with_a_removed_secret_is_bad_state_for_a_new_code(
    pod: Callable[[str], AmoOAuth], fake: FakeAmoCRM
) -> None:
    begun = pod("A").begin(USER)
    query = query_of(fake.authorize(begun.state))
    code, referer = query["code"], query["referer"]
    c = pod("C")
    assert rejected(lambda: c.handle_callback(query, binding=begun.binding)) == "bad_state"
    assert rejected(lambda: c.handle_callback(query)) == "bad_state"
    legacy = {"state": begun.state, "binding": begun.binding}
    assert rejected(lambda: c.exchange_code(USER, code, referer=referer, **legacy)) == "bad_state"
    assert rejected(lambda: c.exchange_code(USER, code, **legacy)) == "bad_state"
    assert fake.token_call_count() == 0
    assert c.status(USER).version == 0  # nothing written


def test_the_seeds_replay_of_a_code_whose_state_lost_its_secret_is_still_answered(
    pod: Callable[[str], AmoOAuth], fake: FakeAmoCRM
) -> None:
    begun = pod("A").begin(USER)
    query = query_of(fake.authorize(begun.state))
    assert pod("A").handle_callback(query, binding=begun.binding).outcome is Outcome.CONNECTED
    c = pod("C")  # the old secret is gone
    version = c.status(USER).version
    replays = [
        lambda: c.handle_callback(query),  # a reload of the callback page (cookie cleared)
        lambda: c.handle_callback(query, binding=begun.binding),
        lambda: c.handle_callback(query, connection_id=USER),
        lambda: c.exchange_code(USER, query["code"], state=begun.state),  # the seed's old app
        lambda: c.exchange_code(USER, query["code"], state=begun.state, exchange_new=False),
        lambda: c.exchange_code(USER, query["code"], referer=query["referer"], state=begun.state),
    ]
    for replay in replays:
        result = replay()
        assert (result.outcome, result.duplicate) == (Outcome.ALREADY_CONNECTED, True)
    assert fake.token_call_count("authorization_code") == 1
    assert c.status(USER).version == version  # answered from reads: nothing written
    # The ledger names the connection; a browser or session naming another one is refused.
    assert rejected(lambda: c.handle_callback(query, connection_id="someone-else")) == "bad_state"
    other = pod("C").begin("someone-else")
    assert rejected(lambda: c.handle_callback(query, binding=other.binding)) == "bad_state"


# -- the web layer: one browser, three pods behind one host (FastAPI) -----------------------


@pytest.fixture
def web_pods(fake: FakeAmoCRM, clock: FakeClock) -> Iterator[dict[str, TestClient]]:
    store, jar = MemoryStore(clock=clock), http.cookiejar.CookieJar()
    services, clients = [], {}
    for name, (current, previous) in PODS.items():
        oauth = AsyncAmoOAuth(
            config_for(fake, state_secret=current, previous_state_secrets=previous),
            store=store,
            http=httpx.AsyncClient(transport=fake.async_transport()),
            clock=clock,
        )
        app = FastAPI()
        app.include_router(router(oauth, connection_id=user_from_header, app_scheme="foryoure"))
        client = TestClient(app, base_url="https://testserver", follow_redirects=False)
        client.cookies = jar  # one browser (one cookie jar), whichever pod answers
        services.append(oauth)
        clients[name] = client.__enter__()
    yield clients
    for client in clients.values():
        client.__exit__(None, None, None)
    for oauth in services:
        asyncio.run(oauth.aclose())


def test_over_http_a_consent_and_a_ticket_cross_the_rotation(
    web_pods: dict[str, TestClient], fake: FakeAmoCRM
) -> None:
    a, b, c = web_pods["A"], web_pods["B"], web_pods["C"]
    # The mobile app asks pod A for a ticket URL; its in-app browser opens it on pod B.
    ticket_url = a.get(f"{PREFIX}/connect", params={"format": "json"}, headers=AS_USER)
    opened = b.get(
        urlsplit(ticket_url.json()["url"]).path, params=query_of(ticket_url.json()["url"])
    )
    assert opened.status_code == 302
    # The browser consents from pod A (state and binding under OLD); amoCRM sends it to B.
    connect = a.get(f"{PREFIX}/connect", headers=AS_USER)
    state = query_of(connect.headers["location"])["state"]
    redirect = fake.authorize(state)
    page = b.get(f"{PREFIX}/callback", params=query_of(redirect))
    assert page.status_code == 200 and "success=true" in page.text
    # OLD removed: the reload of the callback page and the old app's post, both on pod C.
    reload = c.get(f"{PREFIX}/callback", params=query_of(redirect))
    assert reload.status_code == 200 and "success=true" in reload.text
    body = json.dumps({"code": query_of(redirect)["code"], "state": state})
    headers = {**AS_USER, "content-type": "application/json"}
    legacy = c.post(f"{PREFIX}/exchange-code", headers=headers, content=body)
    assert legacy.status_code == 200
    assert (legacy.json()["outcome"], legacy.json()["duplicate"]) == ("already_connected", True)
    assert fake.token_call_count("authorization_code") == 1
    # A new consent begun on A now fails on C, and says why.
    fresh = fake.authorize(
        query_of(a.get(f"{PREFIX}/connect", headers=AS_USER).headers["location"])["state"]
    )
    refused = c.get(f"{PREFIX}/callback", params=query_of(fresh))
    assert refused.status_code == 400 and "error=bad_state" in refused.text


# -- the settings --------------------------------------------------------------------------


def config_with(**changes: object) -> Config:
    base: dict[str, object] = {
        "client_id": "client-1",
        "client_secret": "client-secret-of-at-least-32-bytes!",
        "redirect_uri": "https://app.example.com/cb",
        "state_secret": NEW,
    }
    return Config(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize("position", [0, 1, 2])
def test_no_accepted_secret_may_be_the_client_secret(position: int) -> None:
    client_secret = "client-secret-of-at-least-32-bytes!"
    previous = [f"previous-secret-{n}-".ljust(32, "p") for n in range(3)]
    previous[position] = client_secret
    with pytest.raises(ValueError, match="must not hold the client_secret") as refused:
        config_with(previous_state_secrets=previous)
    assert client_secret not in str(refused.value) and client_secret not in repr(refused.value)
    bytes_too = [value.encode() for value in previous]
    with pytest.raises(ValueError, match="must not hold the client_secret"):
        config_with(previous_state_secrets=bytes_too)


def test_the_previous_secrets_are_kept_as_bytes_and_accepted_after_the_current() -> None:
    config = config_with(previous_state_secrets=[OLD, bytearray(b"o" * 32)])
    assert config.previous_state_secrets == (OLD.encode(), b"o" * 32)
    assert config.accepted_state_secrets == (NEW.encode(), OLD.encode(), b"o" * 32)
    assert config_with().accepted_state_secrets == (NEW.encode(),)


def test_no_repr_or_message_shows_a_secret(clock: FakeClock) -> None:
    config = config_with(previous_state_secrets=[OLD])
    token, claims = issue_state(
        config.state_secret, USER, clock(), config.state_ttl, namespace=config.client_id
    )
    query = {"code": "c", "state": token, "referer": "acme.amocrm.ru"}
    shown = [repr(config), str(config), repr(claims), repr(parse_callback(query, config))]
    unsigned = parse_callback({**query, "state": token[:-2] + "xx"}, config)
    shown.append(repr(unsigned))
    for text in shown:
        assert OLD not in text and NEW not in text and repr(OLD.encode()) not in text
    undecodable = "TOPSECRET-previous-" + "x" * 32 + "\udcff"
    with pytest.raises(ValueError, match="previous_state_secrets is not valid text") as refused:
        config_with(previous_state_secrets=[undecodable])
    assert "TOPSECRET" not in str(refused.value) and "TOPSECRET" not in repr(refused.value)


def test_the_keyed_hashes_are_checked_under_the_secret_that_signed_the_state(
    clock: FakeClock,
) -> None:
    token, _ = issue_state(
        OLD.encode(),
        USER,
        clock(),
        config_with().state_ttl,
        "binding-1",
        namespace=config_with().client_id,
    )
    claims = read_state([NEW.encode(), OLD.encode()], token)
    assert claims.signed_with == OLD.encode()
    assert claims.names(USER) and not claims.names("someone-else")
    assert claims.binds("binding-1") and not claims.binds("binding-2")
    with pytest.raises(CallbackRejected):
        read_state([NEW.encode()], token)


@settings(max_examples=examples(100))
@given(
    accepted=st.lists(st.binary(min_size=32, max_size=48), min_size=1, max_size=4, unique=True),
    data=st.data(),
)
def test_a_state_or_ticket_reads_under_the_secret_that_signed_it_and_no_other(
    accepted: list[bytes], data: st.DataObject
) -> None:
    signer = data.draw(st.sampled_from(accepted), label="signer")
    others = [key for key in accepted if key != signer]
    token, made = issue_state(
        signer, USER, T0, timedelta(minutes=30), "binding-1", namespace="client-1"
    )
    claims = read_state(accepted, token)
    assert claims == made and claims.signed_with == signer
    assert claims.names(USER) and claims.binds("binding-1")
    with pytest.raises(UnsignedState):
        read_state(others, token)
    ticket = issue_ticket(signer, USER, T0, timedelta(seconds=60))
    assert read_ticket(accepted, ticket).connection_id == USER
    assert rejected(lambda: read_ticket(others, ticket)) == "bad_ticket"


def test_the_command_reads_the_previous_secrets_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AMO_CLIENT_ID", "client-1")
    monkeypatch.setenv("AMO_CLIENT_SECRET", "client-secret-of-at-least-32-bytes!")
    monkeypatch.setenv("AMO_REDIRECT_URI", "https://app.example.com/cb")
    monkeypatch.setenv("AMO_STATE_SECRET", NEW)
    assert _config_from_env().previous_state_secrets == ()
    monkeypatch.setenv("AMO_PREVIOUS_STATE_SECRETS", f" {OLD} , {'o' * 32},")
    assert _config_from_env().previous_state_secrets == (OLD.encode(), b"o" * 32)


def test_verifying_costs_one_mac_per_accepted_secret_and_their_number_is_bounded(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whoever sends a state none signed makes this process compute at most
    # 1 + MAX_PREVIOUS_STATE_SECRETS MACs; each secret is tried, whichever signed.
    macs: list[bytes] = []
    real_mac = _state_token._mac
    monkeypatch.setattr(
        _state_token, "_mac", lambda key, payload: macs.append(key) or real_mac(key, payload)
    )
    accepted = [bytes([n]) * 32 for n in range(1 + MAX_PREVIOUS_STATE_SECRETS)]
    forged, _ = issue_state(
        b"f" * 32, USER, clock(), config_with().state_ttl, namespace=config_with().client_id
    )
    macs.clear()
    assert rejected(lambda: read_state(accepted, forged)) == "bad_state"
    assert macs == accepted
    macs.clear()
    signed, _ = issue_state(
        accepted[0], USER, clock(), config_with().state_ttl, namespace=config_with().client_id
    )
    assert read_state(accepted, signed).signed_with == accepted[0]
    assert macs == [accepted[0], *accepted]  # issuing made one; reading tried every secret
    too_many = [
        f"previous-secret-{n}-".ljust(32, "p") for n in range(MAX_PREVIOUS_STATE_SECRETS + 1)
    ]
    with pytest.raises(ValueError, match="at most 3 secrets"):
        config_with(previous_state_secrets=too_many)
