"""Several integrations behind one set of routes (issue 22, part 2): ``web.Integrations``.

Two integrations of one FakeAmoCRM (its default one, "amocrm", and a second, "kommo"), each an
``AmoOAuth`` (or ``AsyncAmoOAuth``) of its own, sharing one state secret, served by one set of
routes: directly through the handlers, and through every adapter.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import flask
import httpx
import pytest
from django.test import override_settings
from fastapi import FastAPI
from fastapi.testclient import TestClient

from _backends import Backend
from _pg_server import postgres_url  # noqa: F401
from _redis_server import redis_url  # noqa: F401
from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    ButtonMetadata,
    CallbackRejected,
    Config,
    MemoryStore,
    Outcome,
)
from amo_oauth._driving import adrive, drive
from amo_oauth._records import record_key
from amo_oauth._state_token import UnsignedState, read_state
from amo_oauth.django import urls
from amo_oauth.fastapi import router
from amo_oauth.flask import blueprint
from amo_oauth.stores import Store
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.web import AsyncHandlers, Handlers, Integrations, Request
from amo_oauth.web._integrations import Ask
from test_django import client_sender, new_client, project
from test_fastapi_adapter import sender as fastapi_sender
from test_flask_adapter import sender as flask_sender
from test_web import (
    AS_USER,
    PREFIX,
    USER,
    CookieJar,
    Send,
    async_sender,
    callback_query,
    deep_link,
    post_code,
    sender,
    user_from_header,
)

from helpers import config_for, query_of

AMO, KOMMO = "amocrm", "kommo"
KOMMO_ID, KOMMO_SECRET = "kommo-client-id", "kommo-client-secret-for-tests"
SITE = "https://backend.example/api/amo-crm/secrets"
BUTTON = ButtonMetadata("Our product", "Leads in one place")

#: A store's operations, blocking and awaited: what "touching a store" means here.
_OPS = frozenset(
    name
    for op in (
        "load",
        "compare_and_set",
        "delete",
        "consume_state",
        "find_by_account",
        "holder_of",
        "claim",
        "wait_for_change",
        "due_page",
        "scan",
    )
    for name in (op, "a" + op)
)


class CountingStore(MemoryStore):
    """A memory store that counts every operation asked of it."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.ops: collections.Counter[str] = collections.Counter()

    def __getattribute__(self, name: str) -> Any:
        if name in _OPS:
            object.__getattribute__(self, "ops")[name] += 1
        return super().__getattribute__(name)


@pytest.fixture
def kommo(fake: FakeAmoCRM) -> str:
    """The fake's second integration, on the same redirect URI; its client id."""
    fake.add_integration(KOMMO_ID, KOMMO_SECRET, fake.redirect_uri)
    return KOMMO_ID


def configs(fake: FakeAmoCRM) -> dict[str, Config]:
    """Both integrations' settings: one state secret (helpers.STATE_SECRET) for both."""
    return {
        AMO: config_for(fake),
        KOMMO: config_for(fake, client_id=KOMMO_ID, client_secret=KOMMO_SECRET),
    }


@pytest.fixture
def make_services(
    fake: FakeAmoCRM, clock: FakeClock, kommo: str
) -> Iterator[Callable[..., dict[str, AmoOAuth]]]:
    made: list[AmoOAuth] = []

    def make(stores: Mapping[str, Store] | None = None) -> dict[str, AmoOAuth]:
        shared = MemoryStore(clock=clock)
        services = {
            name: AmoOAuth(
                config,
                store=(stores or {}).get(name, shared),
                http=httpx.Client(transport=fake.transport()),
                clock=clock,
            )
            for name, config in configs(fake).items()
        }
        made.extend(services.values())
        return services

    yield make
    for oauth in made:
        oauth.close()


@pytest.fixture
def services(make_services: Callable[..., dict[str, AmoOAuth]]) -> dict[str, AmoOAuth]:
    return make_services()


@pytest.fixture
def async_services(
    fake: FakeAmoCRM, clock: FakeClock, kommo: str
) -> Iterator[dict[str, AsyncAmoOAuth]]:
    shared = MemoryStore(clock=clock)
    made = {
        name: AsyncAmoOAuth(
            config,
            store=shared,
            http=httpx.AsyncClient(transport=fake.async_transport()),
            clock=clock,
        )
        for name, config in configs(fake).items()
    }
    yield made
    for oauth in made.values():
        asyncio.run(oauth.aclose())


def handlers_for(services: Mapping[str, AmoOAuth], default: str | None = AMO) -> Handlers:
    return Handlers(
        Integrations(services, default=default),
        connection_id=user_from_header,
        app_scheme="foryoure",
        button=BUTTON,  # shown by the metadata-mode integrations' /connect only
    )


# -- the seed, across integrations -------------------------------------------------------------


def connect(send: Send, fake: FakeAmoCRM, name: str, client_id: str) -> str:
    """Connect USER to integration ``name`` as a browser does; the code amoCRM sent."""
    answer = send("GET", f"{PREFIX}/connect", query=f"integration={name}", headers=AS_USER)
    assert answer.status == 302
    consent = query_of(answer.headers["location"])
    assert consent["client_id"] == client_id  # the consent is for that integration
    redirect = fake.authorize(consent["state"], integration=client_id)
    page = send("GET", f"{PREFIX}/callback", query=callback_query(redirect))
    assert page.status == 200
    assert deep_link(page)[1]["success"] == "true"
    return query_of(redirect)["code"]


def seed_across_integrations(send: Send, fake: FakeAmoCRM) -> None:
    """The seed's scenario on both integrations behind one set of routes: each code is
    exchanged once, by its own integration; the old app's replay of each (no client id in its
    body, no state) answers 200 with that connection's status, whatever the default."""
    integrations = {AMO: fake.client_id, KOMMO: KOMMO_ID}
    codes = {name: connect(send, fake, name, client_id) for name, client_id in integrations.items()}
    for code in codes.values():
        replay = post_code(send, {"code": code})
        assert replay.status == 200, replay.text  # never "unknown client id", never 400
        assert (replay.json()["outcome"], replay.json()["duplicate"]) == ("already_connected", True)
    for name, client_id in integrations.items():
        status = send("GET", f"{PREFIX}/status", query=f"integration={name}", headers=AS_USER)
        assert status.json()["connected"] is True
        assert fake.token_call_count("authorization_code", integration=client_id) == 1
    assert fake.token_call_count() == 2


def test_the_seed_across_integrations(services: dict[str, AmoOAuth], fake: FakeAmoCRM) -> None:
    seed_across_integrations(sender(handlers_for(services)), fake)


def test_the_seed_across_integrations_async(
    async_services: dict[str, AsyncAmoOAuth], fake: FakeAmoCRM
) -> None:
    handlers = AsyncHandlers(
        Integrations(async_services, default=KOMMO),
        connection_id=user_from_header,
        app_scheme="foryoure",
    )
    seed_across_integrations(async_sender(handlers), fake)


def test_the_seed_across_integrations_on_flask(
    services: dict[str, AmoOAuth], fake: FakeAmoCRM
) -> None:
    app = flask.Flask(__name__)
    routes = blueprint(
        Integrations(services, default=AMO), connection_id=user_from_header, app_scheme="app"
    )
    app.register_blueprint(routes)
    seed_across_integrations(flask_sender(app.test_client()), fake)


def test_the_seed_across_integrations_on_fastapi(
    async_services: dict[str, AsyncAmoOAuth], fake: FakeAmoCRM
) -> None:
    app = FastAPI()
    app.include_router(
        router(Integrations(async_services), connection_id=user_from_header, app_scheme="app")
    )
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as client:
        seed_across_integrations(fastapi_sender(client), fake)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_seed_across_integrations_on_django(
    kind: str,
    services: dict[str, AmoOAuth],
    async_services: dict[str, AsyncAmoOAuth],
    fake: FakeAmoCRM,
) -> None:
    chosen: Any = services if kind == "sync" else async_services
    patterns = urls(
        Integrations(chosen, default=AMO), connection_id=user_from_header, app_scheme="app"
    )
    with override_settings(ROOT_URLCONF=project(patterns)):
        seed_across_integrations(client_sender(new_client(kind)), fake)


# -- each request to its own integration only --------------------------------------------------


def test_a_request_of_one_integration_never_touches_the_others_store(
    make_services: Callable[..., dict[str, AmoOAuth]], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    stores = {AMO: CountingStore(clock), KOMMO: CountingStore(clock)}
    send = sender(handlers_for(make_services(stores)))
    connect(send, fake, KOMMO, KOMMO_ID)
    assert send("GET", f"{PREFIX}/status", query="integration=kommo", headers=AS_USER).status == 200
    hook = send(
        "GET", f"{PREFIX}/disconnect-hook", query=_query(fake.uninstall(integration=KOMMO_ID))
    )
    assert hook.status == 200 and hook.json()["disconnected"] == 1
    assert stores[AMO].ops == {}  # connect, callback, status and hook of kommo: none here
    assert stores[KOMMO].ops["claim"] == 1
    kommo_ops = sum(stores[KOMMO].ops.values())
    connect(send, fake, AMO, fake.client_id)
    assert sum(stores[KOMMO].ops.values()) == kommo_ops
    assert fake.token_call_count("authorization_code", integration=KOMMO_ID) == 1


def test_the_hook_is_routed_by_its_client_uuid(
    services: dict[str, AmoOAuth], fake: FakeAmoCRM
) -> None:
    send = sender(handlers_for(services))
    connect(send, fake, AMO, fake.client_id)
    connect(send, fake, KOMMO, KOMMO_ID)
    hook = send(
        "GET", f"{PREFIX}/disconnect-hook", query=_query(fake.uninstall(integration=KOMMO_ID))
    )
    assert hook.status == 200 and hook.json()["disconnected"] == 1
    assert services[KOMMO].status(USER).is_connected is False
    assert services[AMO].status(USER).is_connected is True


def test_an_unknown_client_id_is_client_id_mismatch(
    services: dict[str, AmoOAuth], fake: FakeAmoCRM
) -> None:
    send = sender(handlers_for(services))
    state = query_of(send("GET", f"{PREFIX}/connect", headers=AS_USER).headers["location"])["state"]
    fake.add_integration("stranger-id", "stranger-secret", fake.redirect_uri)
    redirect = fake.authorize(state, integration="stranger-id")
    page = send("GET", f"{PREFIX}/callback", query=callback_query(redirect))
    assert page.status == 400
    assert deep_link(page)[1] == {"error": "client_id_mismatch"}
    hook = send(
        "GET", f"{PREFIX}/disconnect-hook", query=_query(fake.hook_query(integration="stranger-id"))
    )
    assert (hook.status, hook.json()) == (400, {"error": "client_id_mismatch"})
    assert fake.token_call_count() == 0


def test_connect_names_its_integration(services: dict[str, AmoOAuth], fake: FakeAmoCRM) -> None:
    send = sender(handlers_for(services))
    unknown = send("GET", f"{PREFIX}/connect", query="integration=nope", headers=AS_USER)
    assert (unknown.status, unknown.json()) == (400, {"error": "unknown_integration"})
    default = send("GET", f"{PREFIX}/connect", headers=AS_USER)
    assert query_of(default.headers["location"])["client_id"] == fake.client_id
    no_default = sender(handlers_for(services, default=None))
    for path in ("/connect", "/status"):
        refused = no_default("GET", f"{PREFIX}{path}", headers=AS_USER)
        assert (refused.status, refused.json()) == (400, {"error": "unknown_integration"})
    # The mobile app's ticket URL keeps the integration: its in-app browser consents to it.
    asked = send(
        "GET",
        f"{PREFIX}/connect",
        query="integration=kommo",
        headers={**AS_USER, "accept": "application/json"},
    )
    ticket_url = asked.json()["url"]
    assert query_of(ticket_url)["integration"] == KOMMO
    opened = send("GET", f"{PREFIX}/connect", query=ticket_url.partition("?")[2])
    assert opened.status == 302
    assert query_of(opened.headers["location"])["client_id"] == KOMMO_ID


def test_a_legacy_post_with_a_state_goes_to_the_states_integration(
    services: dict[str, AmoOAuth], fake: FakeAmoCRM
) -> None:
    """No ledger entry yet: the state's signer answers (a new code is refused there, as on one
    integration's route: ``new_code_refused``, not the default's ``bad_state``)."""
    send = sender(handlers_for(services))
    location = send("GET", f"{PREFIX}/connect", query="integration=kommo", headers=AS_USER)
    state = query_of(location.headers["location"])["state"]
    fresh = fake.issue_code(integration=KOMMO_ID)
    answer = post_code(send, {"code": fresh, "state": state, "referer": fake.account().host})
    assert (answer.status, answer.json()["error"]) == (400, "new_code_refused")
    assert fake.token_call_count() == 0


# -- one state secret, two integrations ------------------------------------------------------------


def test_a_state_of_one_integration_is_never_accepted_by_another(
    services: dict[str, AmoOAuth], fake: FakeAmoCRM
) -> None:
    """Both share the state secret: amocrm's state (with its browser's binding) must not let
    kommo exchange a code, by the redirect or by exchange_code."""
    amo, other = services[AMO], services[KOMMO]
    begun = amo.begin(USER)
    redirect = query_of(fake.authorize(begun.state, integration=KOMMO_ID))
    with pytest.raises(CallbackRejected) as refused:
        other.handle_callback(redirect, binding=begun.binding)
    assert refused.value.reason == "bad_state"
    code, host = fake.issue_code(integration=KOMMO_ID), fake.account().host
    with pytest.raises(CallbackRejected) as refused:
        other.exchange_code(USER, code, referer=host, state=begun.state, binding=begun.binding)
    assert refused.value.reason == "bad_state"
    assert fake.token_call_count() == 0
    with pytest.raises(UnsignedState):
        read_state(other.config.accepted_state_secrets, begun.state, KOMMO_ID)
    mine = amo.handle_callback(query_of(fake.authorize(begun.state)), binding=begun.binding)
    assert mine.outcome is Outcome.CONNECTED  # its own integration still takes it


def test_the_state_names_its_integration(services: dict[str, AmoOAuth]) -> None:
    """``integration_for_state``: the hook for ``POST /secrets`` (it carries only the state)."""
    integrations = Integrations(services)
    for name, oauth in services.items():
        assert integrations.integration_for_state(oauth.begin(USER).state) == name
    assert integrations.integration_for_state("v2.bm90.aGVyZQ") is None
    assert integrations.integration_for_state(None) is None


# -- per-connection client ids (metadata mode): the store says whose -------------------------


#: (route, query, the integration chosen, or the refusal's reason).
PER_CONNECTION = (
    ("callback", "client_id=per-connection-1&code=c", "site2"),
    ("disconnect_hook", "client_uuid=per-connection-2", "site"),
    ("callback", "client_id=fake-client-id", AMO),  # fixed: in memory
    ("callback", "client_id=per-connection-3", "client_id_mismatch"),  # another namespace's
    ("callback", "client_id=never-seen", "client_id_mismatch"),
    ("disconnect_hook", "client_uuid=never-seen", "client_id_mismatch"),
)


def choices(integrations: Integrations[Any]) -> list[str]:
    """Each of ``PER_CONNECTION`` chosen over blocking services."""

    def ask(item: Ask[Any]) -> Any:
        return item.call.run(integrations[item.name])

    found: list[str] = []
    for route, query, _ in PER_CONNECTION:
        try:
            found.append(drive(integrations.choose(route, Request("GET", "/", query)), ask))
        except CallbackRejected as refused:
            found.append(refused.reason)
    return found


async def achoices(integrations: Integrations[Any]) -> list[str]:
    """``choices`` over awaited services, then closed, in one event loop."""

    async def ask(item: Ask[Any]) -> Any:
        return await item.call.arun(integrations[item.name])

    found: list[str] = []
    for route, query, _ in PER_CONNECTION:
        try:
            found.append(await adrive(integrations.choose(route, Request("GET", "/", query)), ask))
        except CallbackRejected as refused:
            found.append(refused.reason)
    for oauth in integrations.values():
        await oauth.aclose()
    return found


def refuse_lookups(ask: Ask[Any]) -> bool:
    """No ledger entry anywhere: every lookup answers no."""
    return False


def state_of(config: Config, clock: FakeClock) -> str:
    """A state that ``config``'s integration issues for USER (it is the same on any store)."""
    with AmoOAuth(config, store=MemoryStore(clock=clock), clock=clock) as oauth:
        if config.metadata_mode:  # begin() makes no consent URL there: the button's state
            return oauth.site_button(USER, metadata=BUTTON).state
        return oauth.begin(USER).state


@pytest.mark.parametrize("awaited", [False, True], ids=["sync", "async"])
def test_a_per_connection_client_id_is_routed_by_its_ledger_entry(
    backend: Backend, fake: FakeAmoCRM, clock: FakeClock, awaited: bool
) -> None:
    """Two metadata-mode integrations ("site", "site-two": one a prefix of the other's
    namespace) and a fixed one on one store: a client id is routed to the integration whose
    namespace holds its ``client:`` entry, on every store; one held by no integration of
    these, or by nobody, is ``client_id_mismatch``."""
    fixed = config_for(fake)
    site = config_for(fake, client_id="site", client_secret=None, secrets_uri=SITE)
    site_two = config_for(fake, client_id="site-two", client_secret=None, secrets_uri=SITE)
    kind: Any = AsyncAmoOAuth if awaited else AmoOAuth
    services = {
        name: kind(config, store=backend.open(), clock=clock)
        for name, config in ((AMO, fixed), ("site", site), ("site2", site_two))
    }
    integrations = Integrations(services, default=AMO)
    store, far = backend.open(), clock() + timedelta(days=3650)
    store.consume_state("client:per-connection-1", far, record_key("site-two", USER))
    widget_key = record_key("site", "example.amocrm.ru", widget=True)
    store.consume_state("client:per-connection-2", far, widget_key)
    store.consume_state("client:per-connection-3", far, record_key("elsewhere", USER))
    states = {name: state_of(oauth.config, clock) for name, oauth in services.items()}
    # Before amoCRM posted the new integration's credentials, only the state names it.
    early = Request("GET", "/", urlencode({"client_id": "not-yet", "state": states["site2"]}))
    assert drive(integrations.choose("callback", early), refuse_lookups) == "site2"
    fixed_state = urlencode({"client_id": "not-yet", "state": states[AMO]})
    with pytest.raises(CallbackRejected, match="client_id_mismatch"):
        drive(integrations.choose("callback", Request("GET", "/", fixed_state)), refuse_lookups)
    if awaited:
        found = asyncio.run(achoices(integrations))
    else:
        found = choices(integrations)
        for oauth in services.values():  # the backend closes its stores once more: harmless
            oauth.close()
    assert found == [expected for _, _, expected in PER_CONNECTION]


def test_a_per_connection_hook_reaches_its_integration_only(
    fake: FakeAmoCRM, clock: FakeClock
) -> None:
    store = MemoryStore(clock=clock)
    site = config_for(fake, client_id="site", client_secret=None, secrets_uri=SITE)
    services = {
        AMO: AmoOAuth(config_for(fake), store=store, clock=clock),
        "site": AmoOAuth(site, store=store, clock=clock),
    }
    asked: dict[str, list[object]] = {AMO: [], "site": []}

    def recorder(name: str) -> Callable[[object], object]:
        def record(query: object) -> object:
            asked[name].append(query)
            raise CallbackRejected("bad_signature")

        return record

    for name, oauth in services.items():
        oauth.handle_disconnect_hook = recorder(name)  # type: ignore[method-assign]
    holder = record_key("site", USER)
    store.consume_state("client:per-connection-1", clock() + timedelta(days=1), holder)
    send = sender(handlers_for(services))
    query = "client_uuid=per-connection-1&account_id=1&signature=s"
    assert send("GET", f"{PREFIX}/disconnect-hook", query=query).status == 400
    assert (len(asked["site"]), asked[AMO]) == (1, [])
    for oauth in services.values():
        oauth.close()


def _query(params: Mapping[str, str]) -> str:
    return "&".join(f"{key}={value}" for key, value in params.items())


def test_one_service_is_the_only_integration(services: dict[str, AmoOAuth]) -> None:
    """One service: nothing is chosen, no parameter read (its routes answer as before)."""
    alone = Handlers(services[AMO], connection_id=user_from_header, app_scheme="foryoure")
    assert list(alone.integrations) == ["default"] and alone.oauth is services[AMO]
    send = sender(alone, CookieJar())
    answer = send("GET", f"{PREFIX}/connect", query="integration=whatever", headers=AS_USER)
    assert answer.status == 302
    assert json.loads(send("GET", f"{PREFIX}/status", headers=AS_USER).text)["connected"] is False


# -- the site button's metadata mode beside a fixed integration ------------------------------------


def metadata_services(fake: FakeAmoCRM, clock: FakeClock) -> dict[str, AmoOAuth]:
    """A fixed integration and two metadata-mode ones ("site", "site-two") on one store, all
    under one state secret."""
    store = MemoryStore(clock=clock)
    settings = {
        AMO: config_for(fake),
        "site": config_for(fake, client_id="site", client_secret=None, secrets_uri=SITE),
        "site2": config_for(fake, client_id="site-two", client_secret=None, secrets_uri=SITE),
    }
    http = httpx.Client(transport=fake.transport())
    return {
        name: AmoOAuth(config, store=store, http=http, clock=clock)
        for name, config in settings.items()
    }


def post_secrets(send: Send, state: str, client_id: str) -> int:
    body = urlencode(
        {"client_id": client_id, "client_secret": "per-account-secret", "state": state}
    )
    form = {"content-type": "application/x-www-form-urlencoded"}
    return send("POST", f"{PREFIX}/secrets", headers=form, body=body.encode()).status


def test_the_secrets_post_goes_to_the_integration_whose_state_it_brings(
    fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """amoCRM posts only client_id, client_secret and state: the state's signer stores them,
    in its own namespace, and the client id it registers routes the redirect and the hook."""
    services = metadata_services(fake, clock)
    handlers = handlers_for(services)
    send = sender(handlers)
    page = send("GET", f"{PREFIX}/connect", query="integration=site2", headers=AS_USER)
    assert page.status == 200 and "data-secrets_uri" in page.text  # the button's page
    state = services["site2"].site_button(USER, metadata=BUTTON).state
    assert post_secrets(send, state, "per-account-1") == 200
    store = services["site2"].store
    mine = store.load(record_key("site-two", USER)).record
    assert mine is not None and len(mine.pending_credentials) == 1
    assert store.load(record_key("site", USER)).record is None  # the other namespace: nothing
    found = drive(
        handlers.integrations.choose(
            "disconnect_hook", Request("GET", "/", "client_uuid=per-account-1")
        ),
        lambda ask: ask.call.run(services[ask.name]),
    )
    assert found == "site2"  # by the ledger entry receive_secrets wrote
    redirected = send("GET", f"{PREFIX}/connect", query="integration=amocrm", headers=AS_USER)
    assert redirected.status == 302  # the fixed integration still redirects to its consent
    for oauth in services.values():
        oauth.close()


def test_a_secrets_post_is_refused_by_an_integration_that_did_not_sign_its_state(
    fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """Both share the state secret: site's state must not store credentials with site-two
    (its connection is decrypted under the same secret, so only the namespace tells)."""
    services = metadata_services(fake, clock)
    state = services["site"].site_button(USER, metadata=BUTTON).state
    form = {"client_id": "per-account-2", "client_secret": "per-account-secret", "state": state}
    with pytest.raises(CallbackRejected) as refused:
        services["site2"].receive_secrets(form)
    assert refused.value.reason == "bad_state"
    assert services["site2"].store.load(record_key("site-two", USER)).record is None
    assert services["site"].receive_secrets(form).stored is True
    for oauth in services.values():
        oauth.close()


def test_the_fakes_site_button_install_connects_through_one_set_of_routes(
    fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """FakeAmoCRM's metadata-mode install against one Flask app of three integrations: the
    credentials' post reaches "site" (its state's signer), the code redirect is routed by the
    new client id and exchanged once with THAT integration's credentials, and its uninstall
    hook (signed with that secret) disconnects the connection; "site-two" sees nothing."""
    services = metadata_services(fake, clock)
    integrations = Integrations(services, default=AMO)
    app = flask.Flask(__name__)
    routes = blueprint(
        integrations, connection_id=user_from_header, app_scheme="app", button=BUTTON
    )
    app.register_blueprint(routes)
    send = flask_sender(app.test_client())  # one browser: it keeps the binding cookie
    page = send("GET", f"{PREFIX}/connect", query="integration=site", headers=AS_USER)
    state = re.search(r'data-state="([^"]+)"', page.text)
    assert page.status == 200 and state is not None
    install = fake.install_site_button(
        redirect_uri=fake.redirect_uri,
        secrets_uri=SITE,
        state=state.group(1),
        transport=httpx.WSGITransport(app=app),
    )
    assert [post.status for post in install.posts] == [200]
    assert install.redirect_url is not None
    callback = send("GET", f"{PREFIX}/callback", query=urlsplit(install.redirect_url).query)
    assert deep_link(callback)[1]["success"] == "true", callback.text
    assert services["site"].status(USER).is_connected
    assert fake.token_call_count("authorization_code", "ok", integration=install.integration) == 1
    assert fake.token_call_count() == 1
    assert services["site2"].store.load(record_key("site-two", USER)).record is None
    hook = send(
        "GET",
        f"{PREFIX}/disconnect-hook",
        query=_query(fake.uninstall(integration=install.integration)),
    )
    assert (hook.status, hook.json()["disconnected"]) == (200, 1)
    assert not services["site"].status(USER).is_connected
    for oauth in services.values():
        oauth.close()
