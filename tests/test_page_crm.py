"""The pages name the serving integration's CRM (issue 22's review): ``{crm}`` in the texts
becomes "Kommo" for an integration whose ``Config.authorize_url`` is Kommo's and "amoCRM"
otherwise, on every page (/connect's site-button page, the callback's pages, its refusals),
for one integration and for several behind one ``Integrations`` sharing one set of texts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import httpx
import pytest

from amo_oauth import AmoOAuth, AsyncAmoOAuth, ButtonMetadata, Config, MemoryStore
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.web import AsyncHandlers, Handlers, Integrations, PageKind, PageText, Request
from test_web import AS_USER, PREFIX, Send, async_sender, callback_query, parse_page, sender

from helpers import config_for, query_of

KOMMO_ID, KOMMO_SECRET = "kommo-client-id", "kommo-client-secret-for-tests"
KOMMO_CONSENT = "https://www.kommo.com/oauth"
BUTTON = ButtonMetadata("Our product", "Leads in one place")


@pytest.fixture
def configs(fake: FakeAmoCRM) -> dict[str, Config]:
    """amoCRM's integration (the fake's own) and a Kommo one, with one redirect URI."""
    fake.add_integration(KOMMO_ID, KOMMO_SECRET, fake.redirect_uri)
    kommo = config_for(
        fake, client_id=KOMMO_ID, client_secret=KOMMO_SECRET, authorize_url=KOMMO_CONSENT
    )
    return {"amocrm": config_for(fake), "kommo": kommo}


@pytest.fixture
def make_service(fake: FakeAmoCRM, clock: FakeClock) -> Iterator[Callable[[Config], AmoOAuth]]:
    made: list[AmoOAuth] = []
    store = MemoryStore(clock=clock)

    def make(config: Config) -> AmoOAuth:
        made.append(AmoOAuth(config, store=store, http=httpx.Client(transport=fake.transport())))
        return made[-1]

    yield make
    for oauth in made:
        oauth.close()


def _several(
    configs: dict[str, Config], make: Callable[[Config], AmoOAuth], **options: object
) -> Send:
    services = {name: make(config) for name, config in configs.items()}
    handlers = Handlers(
        Integrations(services, default="amocrm"),
        connection_id=lambda request: request.header("x-user"),
        app_scheme="foryoure",
        **options,  # type: ignore[arg-type]
    )
    return sender(handlers)


def _callback_page(send: Send, fake: FakeAmoCRM, name: str, client_id: str, lang: str) -> str:
    """Connect through integration ``name`` and answer its redirect: the page's heading."""
    answer = send("GET", f"{PREFIX}/connect", query=f"integration={name}", headers=AS_USER)
    state = query_of(answer.headers["location"])["state"]
    redirect = fake.authorize(state, integration=client_id)
    page = send("GET", f"{PREFIX}/callback", query=f"{callback_query(redirect)}&lang={lang}")
    assert page.status == 200
    return parse_page(page.text).h1


@pytest.mark.parametrize(
    ("lang", "kommo", "amocrm"),
    [
        ("en", "Kommo is connected", "amoCRM is connected"),
        ("ru", "Kommo подключена", "amoCRM подключена"),
        ("uk", "Kommo підключено", "amoCRM підключено"),
    ],
)
def test_each_integration_behind_one_set_of_routes_names_its_crm(
    configs: dict[str, Config],
    make_service: Callable[[Config], AmoOAuth],
    fake: FakeAmoCRM,
    lang: str,
    kommo: str,
    amocrm: str,
) -> None:
    send = _several(configs, make_service)
    assert _callback_page(send, fake, "kommo", KOMMO_ID, lang) == kommo
    assert _callback_page(send, fake, "amocrm", fake.client_id, lang) == amocrm


def test_a_refusal_page_names_the_integrations_crm(
    configs: dict[str, Config], make_service: Callable[[Config], AmoOAuth], fake: FakeAmoCRM
) -> None:
    send = _several(configs, make_service)
    answer = send("GET", f"{PREFIX}/connect", query="integration=kommo", headers=AS_USER)
    denied = fake.deny(query_of(answer.headers["location"])["state"], integration=KOMMO_ID)
    page = send("GET", f"{PREFIX}/callback", query=callback_query(denied))
    assert parse_page(page.text).h1 == "Kommo was not connected"
    assert "amoCRM" not in page.text


def test_the_site_button_page_of_a_kommo_integration_says_kommo(
    fake: FakeAmoCRM, make_service: Callable[[Config], AmoOAuth]
) -> None:
    # Issue 22's review (kommo_meta.py): "Connect amoCRM" above Kommo's button.
    metadata = config_for(
        fake,
        client_secret=None,
        secrets_uri="https://backend.example/api/amo-crm/secrets",
        authorize_url=KOMMO_CONSENT,
    )
    handlers = Handlers(
        make_service(metadata),
        connection_id=lambda request: request.header("x-user"),
        app_scheme="foryoure",
        button=BUTTON,
    )
    for lang, heading in (("en", "Connect Kommo"), ("ru", "Подключите Kommo")):
        page = sender(handlers)("GET", f"{PREFIX}/connect", query=f"lang={lang}", headers=AS_USER)
        assert 'class="kommo_oauth"' in page.text
        assert parse_page(page.text).h1 == heading


def test_an_apps_own_texts_work_with_and_without_the_placeholder(
    configs: dict[str, Config], make_service: Callable[[Config], AmoOAuth], fake: FakeAmoCRM
) -> None:
    english = PageText(
        connected_title="Your {crm} is linked",
        connected_body="Back to the app.",
        pending_title="Almost",
        pending_body="Wait.",
        error_title="Acme CRM link failed",  # the app names the CRM itself: kept as written
        error_body="Try again.",
        button="Back",
        error_label="Code:",
    )
    send = _several(configs, make_service, texts={"en": english})
    assert _callback_page(send, fake, "kommo", KOMMO_ID, "en") == "Your Kommo is linked"
    assert _callback_page(send, fake, "amocrm", fake.client_id, "en") == "Your amoCRM is linked"
    refused = send("GET", f"{PREFIX}/callback", query="lang=en")
    assert parse_page(refused.text).h1 == "Acme CRM link failed"
    # A default string the app left alone still names the CRM.
    assert english.title(PageKind.SITE_BUTTON, "Kommo") == "Connect Kommo"


def test_the_async_routes_name_the_crm_too(configs: dict[str, Config], fake: FakeAmoCRM) -> None:
    services = {
        name: AsyncAmoOAuth(
            config,
            store=MemoryStore(),
            http=httpx.AsyncClient(transport=fake.async_transport()),
        )
        for name, config in configs.items()
    }
    handlers = AsyncHandlers(
        Integrations(services, default="amocrm"),
        connection_id=lambda request: request.header("x-user"),
        app_scheme="foryoure",
    )
    send = async_sender(handlers)
    assert _callback_page(send, fake, "kommo", KOMMO_ID, "en") == "Kommo is connected"
    for oauth in services.values():
        asyncio.run(oauth.aclose())


def test_one_amocrm_integration_keeps_its_words(
    fake: FakeAmoCRM, make_service: Callable[[Config], AmoOAuth]
) -> None:
    handlers = Handlers(make_service(config_for(fake)), connection_id=str, app_scheme="app")
    page = handlers.handle(Request("GET", f"{PREFIX}/callback", "lang=ru"))
    assert parse_page(page.text).h1 == "amoCRM не подключена"
    assert "{crm}" not in page.text
