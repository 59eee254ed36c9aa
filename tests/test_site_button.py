"""The site button (issue 22, part 1): ``site_button()`` returns amoCRM's ``<script>`` element
with the documented ``data-*`` attributes (protocol notes §7), each value checked and escaped,
carrying a state the callback accepts; ``begin()`` refuses in metadata mode. The HTML is read
back with the standard library's parser, as a browser would read the attributes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from typing import Any

import attrs
import httpx
import pytest

from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    ButtonMetadata,
    CallbackRejected,
    Config,
    MemoryStore,
    Outcome,
    SiteButton,
)
from amo_oauth._binding import parse_binding
from amo_oauth._state_token import read_state
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import STATE_SECRET, config_for, query_of

USER = "user-42"
SECRETS_URI = "https://backend.example/api/amo-crm/secrets"
METADATA = ButtonMetadata(
    "Acme leads", "Leads from the site", ("crm", "notifications"), "https://cdn.example/a.png"
)
LOOK: dict[str, Any] = {
    "title": "Connect amoCRM",
    "compact": True,
    "class_name": "amo-button",
    "color": "violet",
    "error_callback": "app.onAmoError",
}


class _Elements(HTMLParser):
    """Every start tag of a fragment, with its attributes as the browser reads them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        self.text += data


def attributes_of(html: str) -> dict[str, str | None]:
    """The one ``<script>`` element's attributes; it must be all the fragment holds."""
    elements = _Elements()
    elements.feed(html)
    elements.close()
    assert [tag for tag, _ in elements.tags] == ["script"], html
    assert elements.text == ""
    assert html.endswith("></script>")
    attrs = elements.tags[0][1]
    assert len({name for name, _ in attrs}) == len(attrs), "an attribute written twice"
    return dict(attrs)


@pytest.fixture
def metadata_oauth(make_oauth: Callable[..., AmoOAuth]) -> AmoOAuth:
    return make_oauth(secrets_uri=SECRETS_URI, client_secret=None)


@pytest.fixture
def async_oauth(fake: FakeAmoCRM, clock: FakeClock) -> Iterator[AsyncAmoOAuth]:
    oauth = AsyncAmoOAuth(
        config_for(fake),
        store=MemoryStore(clock=clock),
        http=httpx.AsyncClient(transport=fake.async_transport()),
        clock=clock,
    )
    yield oauth
    asyncio.run(oauth.aclose())


# -- the attributes, exact ------------------------------------------------------------------


def test_a_fixed_client_id_button_carries_every_attribute(oauth: AmoOAuth) -> None:
    button = oauth.site_button(USER, **LOOK)
    assert attributes_of(button.html) == {
        "class": "amocrm_oauth",
        "charset": "utf-8",
        "data-client-id": oauth.config.client_id,
        "data-title": "Connect amoCRM",
        "data-compact": "true",
        "data-class-name": "amo-button",
        "data-color": "violet",
        "data-state": button.state,
        "data-error-callback": "app.onAmoError",
        "data-mode": "post_message",
        "src": "https://www.amocrm.ru/auth/button.min.js",
    }


def test_a_bare_button_carries_only_what_it_must(make_oauth: Callable[..., AmoOAuth]) -> None:
    oauth = make_oauth(mode="popup", button_script_url="https://fake.example/auth/button.min.js")
    button = oauth.site_button(USER)
    assert attributes_of(button.html) == {
        "class": "amocrm_oauth",
        "charset": "utf-8",
        "data-client-id": oauth.config.client_id,
        "data-compact": "false",
        "data-state": button.state,
        "data-mode": "popup",
        "src": "https://fake.example/auth/button.min.js",
    }


def test_a_metadata_mode_button_carries_the_metadata_and_no_client_id(
    metadata_oauth: AmoOAuth,
) -> None:
    button = metadata_oauth.site_button(USER, metadata=METADATA, **LOOK)
    assert attributes_of(button.html) == {
        "class": "amocrm_oauth",
        "charset": "utf-8",
        "data-name": "Acme leads",
        "data-description": "Leads from the site",
        "data-logo": "https://cdn.example/a.png",
        "data-redirect_uri": metadata_oauth.config.redirect_uri,
        "data-secrets_uri": SECRETS_URI,
        "data-scopes": "crm,notifications",
        "data-title": "Connect amoCRM",
        "data-compact": "true",
        "data-class-name": "amo-button",
        "data-color": "violet",
        "data-state": button.state,
        "data-error-callback": "app.onAmoError",
        "data-mode": "post_message",
        "src": "https://www.amocrm.ru/auth/button.min.js",
    }


def test_a_metadata_button_without_a_logo_has_no_logo_attribute(
    metadata_oauth: AmoOAuth,
) -> None:
    button = metadata_oauth.site_button(USER, metadata=ButtonMetadata("Acme", "Leads"))
    attributes = attributes_of(button.html)
    assert "data-logo" not in attributes
    assert attributes["data-scopes"] == "crm"


def test_a_kommo_authorize_url_makes_kommos_button(make_oauth: Callable[..., AmoOAuth]) -> None:
    oauth = make_oauth(authorize_url="https://www.kommo.com/oauth")
    button = oauth.site_button(USER, theme="dark", locale="es", color="red")
    assert attributes_of(button.html) == {
        "class": "kommo_oauth",
        "charset": "utf-8",
        "data-client-id": oauth.config.client_id,
        "data-compact": "false",
        "data-color": "red",
        "data-theme": "dark",
        "data-locale": "es",
        "data-state": button.state,
        "data-mode": "post_message",
        "src": "https://www.kommo.com/auth/button.js",
    }


def test_a_kommo_metadata_button(make_oauth: Callable[..., AmoOAuth]) -> None:
    oauth = make_oauth(
        authorize_url="https://www.kommo.com/oauth", secrets_uri=SECRETS_URI, client_secret=None
    )
    attributes = attributes_of(oauth.site_button(USER, metadata=METADATA).html)
    assert attributes["class"] == "kommo_oauth"
    assert attributes["data-secrets_uri"] == SECRETS_URI
    assert "data-client-id" not in attributes


# -- escaping ---------------------------------------------------------------------------------

HOSTILE = "\"><script>alert('x')</script><i a='"


@pytest.mark.parametrize(
    ("option", "attribute"),
    [("class_name", "data-class-name"), ("title", "data-title")],
)
def test_hostile_look_values_are_escaped(oauth: AmoOAuth, option: str, attribute: str) -> None:
    # A title holds no "<" (the script writes it as markup): its hostile value keeps the rest.
    value = HOSTILE if option != "title" else "R&D \"quoted\" 'single' &amp; > end"
    button = oauth.site_button(USER, **{option: value})
    assert attributes_of(button.html)[attribute] == value


@pytest.mark.parametrize(
    ("field", "attribute"), [("name", "data-name"), ("description", "data-description")]
)
def test_hostile_metadata_is_escaped(metadata_oauth: AmoOAuth, field: str, attribute: str) -> None:
    value = "\"><script>alert('x')</script><b title='"
    metadata = ButtonMetadata(**{"name": "Acme", "description": "Leads", field: value})
    button = metadata_oauth.site_button(USER, metadata=metadata)
    assert attributes_of(button.html)[attribute] == value
    assert "<script>alert" not in button.html


# -- what is refused ------------------------------------------------------------------------

REFUSED_METADATA: dict[str, dict[str, Any]] = {
    "an empty name": {"name": ""},
    "a blank description": {"description": "  "},
    "a logo over http": {"logo": "http://cdn.example/a.png"},
    "a logo that is no URL": {"logo": "a.png"},
    "an unreadable logo": {"logo": "https://[cdn.example/a.png"},
    # The script joins values into the consent URL unencoded: this would post the new
    # integration's secret to a second secrets_uri.
    "a logo that adds a parameter": {
        "logo": "https://cdn.example/a.png?x=1&secrets_uri=https://evil.example/"
    },
    "a name with '&'": {"name": "Leads & deals"},
    "a description with '#'": {"description": "Leads #1"},
    "a name with '%'": {"name": "Acme 100%"},
    "a name with '+'": {"name": "Acme+"},
    "a name with a newline": {"name": "Acme\nLeads"},
    "scopes as one string": {"scopes": "crm"},
    "no scopes": {"scopes": ()},
    "an upper-case scope": {"scopes": ("CRM",)},
    "a scope with a comma": {"scopes": ("crm,files",)},
    "a scope with a hyphen": {"scopes": ("crm-x",)},
}


@pytest.mark.parametrize("changed", REFUSED_METADATA.values(), ids=REFUSED_METADATA.keys())
def test_metadata_amocrm_could_not_take_is_refused_when_made(changed: dict[str, Any]) -> None:
    # Refused when made, so a router holding it is never built and /connect never fails.
    field = next(iter(changed))
    with pytest.raises(ValueError, match=rf"ButtonMetadata\.{field} |ButtonMetadata\.scopes "):
        ButtonMetadata(**{"name": "Acme", "description": "Leads", **changed})


def test_the_reviewers_button_text_is_refused_naming_field_and_character() -> None:
    # Issue 22's review: "Smith & Sons" was accepted, then every GET /connect was a 500.
    with pytest.raises(ValueError, match=r"^ButtonMetadata\.name must not hold '&', which"):
        ButtonMetadata("Smith & Sons", "Orders synced")
    with pytest.raises(ValueError, match=r"^ButtonMetadata\.description must not hold '%'"):
        ButtonMetadata("Smith and Sons", "Orders, 100% synced")


REFUSED_LOOK: dict[str, tuple[str, str]] = {
    "a call in error_callback": ("error_callback", "alert(1)"),
    "an empty error_callback": ("error_callback", ""),
    "a dotted path with a hole": ("error_callback", "app..onError"),
    "a quote in error_callback": ("error_callback", "a'b"),
    "a color amoCRM has not": ("color", "pink"),
    "markup in the title": ("title", "<img src=x onerror=alert(1)>"),
    "an empty title": ("title", ""),
    "a theme on amoCRM's button": ("theme", "dark"),
    "a locale on amoCRM's button": ("locale", "en"),
}


@pytest.mark.parametrize(("option", "value"), REFUSED_LOOK.values(), ids=REFUSED_LOOK.keys())
def test_a_look_amocrm_could_not_take_is_refused(oauth: AmoOAuth, option: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"^{option} "):
        oauth.site_button(USER, **{option: value})


def test_metadata_without_metadata_mode_is_refused(oauth: AmoOAuth) -> None:
    with pytest.raises(ValueError, match="metadata is for the site button's metadata mode"):
        oauth.site_button(USER, metadata=METADATA)


def test_metadata_mode_without_metadata_is_refused(metadata_oauth: AmoOAuth) -> None:
    with pytest.raises(ValueError, match="needs metadata=ButtonMetadata"):
        metadata_oauth.site_button(USER)


@pytest.mark.parametrize(
    ("field", "url", "char"),
    [
        ("redirect_uri", "https://backend.example/cb?app=1&tenant=2", "'&'"),
        ("secrets_uri", "https://b.example/api/amo-crm/secrets?tenant=a&x=1", "'&'"),
        ("secrets_uri", "https://b.example/api/amo-crm/secrets?sig=a+b", "'+'"),
        ("secrets_uri", "https://b.example/api/amo-crm/secrets?sig=a%2Fb", "'%'"),
    ],
)
def test_a_metadata_mode_uri_the_script_would_cut_is_refused_by_config(
    fake: FakeAmoCRM, field: str, url: str, char: str
) -> None:
    # Issue 22's review: such a Config was accepted, then every GET /connect was a 500.
    settings = {"secrets_uri": SECRETS_URI, "client_secret": None, field: url}
    with pytest.raises(ValueError, match=f"^{field} must not hold {re.escape(char)}") as refused:
        attrs.evolve(config_for(fake), **settings)
    assert url not in str(refused.value)  # a URL may carry a secret: never in a message


def test_the_same_uri_is_fine_for_a_fixed_client_id(fake: FakeAmoCRM) -> None:
    # Only the button joins it unencoded; begin() URL-encodes the redirect URI.
    config = attrs.evolve(config_for(fake), redirect_uri="https://backend.example/cb?a=1&b=2")
    assert config.redirect_uri.endswith("&b=2")


class _UnreadableStore(MemoryStore):
    def load(self, key: str) -> Any:
        raise AssertionError("read before the options were checked")


def test_options_are_checked_before_the_store_is_read(fake: FakeAmoCRM) -> None:
    oauth = AmoOAuth(config_for(fake), store=_UnreadableStore())
    with pytest.raises(ValueError, match="color"):
        oauth.site_button(USER, color="pink")
    oauth.close()


# -- the state ------------------------------------------------------------------------------


def test_the_buttons_state_connects_in_the_browser_it_was_made_for(
    oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    button = oauth.site_button(USER, **LOOK)
    redirect = query_of(fake.authorize(attributes_of(button.html)["data-state"]))
    with pytest.raises(CallbackRejected) as refused:
        oauth.handle_callback(redirect)  # another browser: no binding
    assert refused.value.reason == "wrong_browser"
    result = oauth.handle_callback(redirect, binding=button.binding)
    assert result.outcome is Outcome.CONNECTED
    assert result.connection.connection_id == USER


def test_the_metadata_buttons_state_names_the_connection_and_binds_the_browser(
    metadata_oauth: AmoOAuth,
) -> None:
    button = metadata_oauth.site_button(USER, metadata=METADATA)
    claims = read_state(metadata_oauth.config.accepted_state_secrets, button.state)
    bound = parse_binding(button.binding)
    assert bound is not None and bound.connection_id == USER
    assert claims.names(USER) and not claims.names("user-43")
    assert claims.binds(bound.secret)
    assert claims.expires_at == button.expires_at


def test_a_button_made_in_the_same_browser_keeps_its_binding(oauth: AmoOAuth) -> None:
    first = oauth.site_button(USER)
    again = oauth.site_button(USER, binding=first.binding)
    assert again.binding == first.binding and again.state != first.state


# -- no secret --------------------------------------------------------------------------------


def test_no_secret_is_in_the_html_or_the_repr(oauth: AmoOAuth, metadata_oauth: AmoOAuth) -> None:
    fixed = oauth.site_button(USER, **LOOK)
    metadata = metadata_oauth.site_button(USER, metadata=METADATA)
    assert oauth.config.client_secret is not None
    for button in (fixed, metadata):
        assert fixed.binding is not None
        for secret in (
            oauth.config.client_secret,
            STATE_SECRET,
            button.binding,
            parse_binding(button.binding).secret,  # type: ignore[union-attr]
        ):
            assert str(secret) not in button.html
        shown = repr(button)
        assert button.state not in shown and str(button.binding) not in shown
        assert "script" not in shown


# -- begin() in metadata mode -------------------------------------------------------------


def test_begin_in_metadata_mode_points_to_the_site_button(metadata_oauth: AmoOAuth) -> None:
    with pytest.raises(ValueError, match=r"site_button\(") as refused:
        metadata_oauth.begin(USER)
    assert metadata_oauth.config.client_id not in str(refused.value)


def test_begin_with_a_fixed_client_id_still_makes_the_consent_url(oauth: AmoOAuth) -> None:
    begun = oauth.begin(USER)
    assert query_of(begun.url) == {
        "client_id": oauth.config.client_id,
        "state": begun.state,
        "mode": "post_message",
    }


# -- the awaited service ------------------------------------------------------------------


def test_the_async_service_makes_the_same_button(
    async_oauth: AsyncAmoOAuth, oauth: AmoOAuth, fake: FakeAmoCRM
) -> None:
    button: SiteButton = asyncio.run(async_oauth.site_button(USER, **LOOK))
    expected = attributes_of(oauth.site_button(USER, **LOOK).html)
    attributes = attributes_of(button.html)
    assert attributes == {**expected, "data-state": button.state}
    redirect = query_of(fake.authorize(button.state))
    result = asyncio.run(async_oauth.handle_callback(redirect, binding=button.binding))
    assert result.outcome is Outcome.CONNECTED


def test_the_async_service_refuses_alike(fake: FakeAmoCRM) -> None:
    config: Config = config_for(fake, secrets_uri=SECRETS_URI, client_secret=None)
    oauth = AsyncAmoOAuth(config, store=MemoryStore())

    async def main() -> None:
        with pytest.raises(ValueError, match=r"site_button\("):
            await oauth.begin(USER)
        with pytest.raises(ValueError, match="needs metadata"):
            await oauth.site_button(USER)
        button = await oauth.site_button(USER, metadata=METADATA)
        assert attributes_of(button.html)["data-secrets_uri"] == SECRETS_URI
        await oauth.aclose()

    asyncio.run(main())
