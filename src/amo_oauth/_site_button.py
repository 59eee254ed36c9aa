"""amoCRM's site button (protocol notes §7): the ``<script>`` element ``site_button()`` returns.

amoCRM's (or Kommo's) button script finds the element by its class, reads its ``data-*``
attributes and, on a click, opens the consent page. Every value is checked here and
HTML-escaped, so nothing a caller passes can end the attribute or the element. Two checks
follow from what the script does with a value (docs/site-button.md, "Where each attribute
comes from"): it builds the consent URL by joining values without URL-encoding them, so a
value sent in that URL must hold nothing a query string would read differently (``&``, ``#``,
``%``, ``+``, control characters: ``unsendable``, which ``ButtonMetadata`` and ``Config`` in
metadata mode apply when they are made, so that ``/connect`` never fails on them); it
evaluates ``data-error-callback`` (``eval``), so that must be a function's name or dotted
path; and it puts ``data-title`` into the page as markup, so a title holds no ``<``.

Pure: no I/O. ``site_button()`` checks the options before it reads the store, then renders the
element around the fresh state.
"""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import attrs

if TYPE_CHECKING:
    from ._config import Config
    from ._results import ButtonMetadata

__all__ = [
    "AMOCRM_BUTTON_SCRIPT",
    "BUTTON_COLORS",
    "KOMMO_BUTTON_SCRIPT",
    "ButtonOptions",
    "button_attributes",
    "button_html",
    "check_button_text",
    "check_logo",
    "check_scopes",
    "is_kommo",
    "unsendable",
]

#: amoCRM's button script (protocol notes §7; amoCRM's PHP SDK, ``getOAuthButton``).
AMOCRM_BUTTON_SCRIPT: Final = "https://www.amocrm.ru/auth/button.min.js"
#: Kommo's, as its "Button on Site" page gives it.
KOMMO_BUTTON_SCRIPT: Final = "https://www.kommo.com/auth/button.js"
#: The consent page host that makes a configuration Kommo's.
_KOMMO_CONSENT_HOST: Final = "www.kommo.com"
#: The colors amoCRM's button has (amoCRM's PHP SDK refuses any other; the script falls back
#: to ``default`` for one it does not know).
BUTTON_COLORS: Final = ("default", "blue", "violet", "green", "orange", "red")

_SCOPE: Final = re.compile(r"[a-z_]+")
_JS_NAME: Final = r"[A-Za-z_$][A-Za-z0-9_$]*"
_JS_PATH: Final = re.compile(rf"{_JS_NAME}(?:\.{_JS_NAME})*")
# What a query string reads differently from the text: a separator, a fragment, an escape,
# a space; and control characters, which a browser drops from a URL.
_UNSENDABLE: Final = re.compile(r"[&#%+\x00-\x1f\x7f]")
# What each of them would do to the value there, for the message.
_EFFECTS: Final = {
    "&": "separates parameters (the rest would become a parameter of its own)",
    "#": "starts the fragment (the rest, the state included, would never reach amoCRM)",
    "%": "starts an escape (the characters after it would be decoded)",
    "+": "reads as a space",
}


def unsendable(value: str) -> str | None:
    """Why ``value`` cannot travel in the consent URL the button script joins unencoded: the
    first character a query string reads differently, quoted, and what it would do; None
    when there is none.

    No escape makes such a character safe: whether amoCRM's script URL-encodes values is not
    known (the copies found do not; FakeAmoCRM's stand-in does), so a value written as
    ``%26`` would reach amoCRM as ``&`` under one script and as ``%26`` under the other.
    """
    found = _UNSENDABLE.search(value)
    if found is None:
        return None
    char = found.group()
    effect = _EFFECTS.get(char, "a browser drops from a URL (a control character)")
    return f"{char!r}, which {effect}"


def is_kommo(authorize_url: str) -> bool:
    """Is ``authorize_url`` Kommo's consent page (``https://www.kommo.com/oauth``)? Then the
    button is Kommo's: its class, its script, ``data-theme`` and ``data-locale``."""
    return (urlsplit(authorize_url).hostname or "") == _KOMMO_CONSENT_HOST


@attrs.frozen(kw_only=True)
class ButtonOptions:
    """What ``site_button()`` was asked for besides the connection (its keyword arguments)."""

    metadata: ButtonMetadata | None = None
    title: str | None = None
    compact: bool = False
    class_name: str | None = None
    color: str | None = None
    theme: str | None = None
    locale: str | None = None
    error_callback: str | None = None


def button_attributes(config: Config, options: ButtonOptions) -> tuple[tuple[str, str], ...]:
    """The script element's attributes, in order, all but ``data-state``: its class and
    charset, the integration (``data-client-id``, or the metadata of metadata mode), the
    button's look, ``data-mode`` and ``src``.

    Raises:
        ValueError: an option amoCRM's button could not take (its message names it):
            ``metadata`` missing in metadata mode or given without it; a client id sent in
            the consent URL holding ``&``, ``#``, ``%``, ``+`` or a control character (the
            metadata and metadata mode's URIs were checked when they were made); a title
            holding ``<``; a color amoCRM has not; ``theme`` or ``locale``
            for amoCRM's button (they are Kommo's); an ``error_callback`` that is not a
            JavaScript name or dotted path.
    """
    kommo = is_kommo(config.authorize_url)
    integration = _integration(config, options.metadata)
    for name, value in integration:
        problem = unsendable(value)
        if problem is not None:
            raise ValueError(
                f"{name} must not hold {problem}: the button script puts it into the consent "
                "URL as it is"
            )
    return (
        ("class", "kommo_oauth" if kommo else "amocrm_oauth"),
        ("charset", "utf-8"),
        *integration,
        *_look(options, kommo),
        ("data-mode", config.mode),
        ("src", config.button_script_url),
    )


def button_html(attributes: tuple[tuple[str, str], ...], state: str) -> str:
    """The ``<script>`` element: ``attributes`` and ``data-state``, every value escaped."""
    written = " ".join(
        f'{name}="{html.escape(value, quote=True)}"'
        for name, value in (*attributes, ("data-state", state))
    )
    return f"<script {written}></script>"


def _integration(config: Config, metadata: ButtonMetadata | None) -> list[tuple[str, str]]:
    """Which integration the button installs: Config's client id, or (metadata mode) the
    metadata amoCRM makes a new integration from for each installing account."""
    if not config.metadata_mode:
        if metadata is not None:
            raise ValueError(
                "metadata is for the site button's metadata mode (Config.secrets_uri set); "
                "without it the button names Config.client_id"
            )
        return [("data-client-id", config.client_id)]
    if metadata is None:
        raise ValueError(
            "metadata mode (Config.secrets_uri set) needs metadata=ButtonMetadata(name, "
            "description, ...): amoCRM makes each account's integration from it"
        )
    assert config.secrets_uri is not None  # metadata mode
    # ButtonMetadata checked its values when it was made (check_button_text, ...).
    attributes = [
        ("data-name", metadata.name),
        ("data-description", metadata.description),
        ("data-redirect_uri", config.redirect_uri),
        ("data-secrets_uri", config.secrets_uri),
        ("data-scopes", ",".join(metadata.scopes)),
    ]
    if metadata.logo is not None:
        attributes.append(("data-logo", metadata.logo))
    return attributes


def _look(options: ButtonOptions, kommo: bool) -> list[tuple[str, str]]:
    """The button's own attributes: each one given, and ``data-compact`` always."""
    look = [("data-compact", "true" if options.compact else "false")]
    if options.title is not None:
        if "<" in _text("title", options.title):
            raise ValueError("title must not hold '<': the button script writes it as markup")
        look.append(("data-title", options.title))
    if options.class_name is not None:
        look.append(("data-class-name", _text("class_name", options.class_name)))
    if options.color is not None:
        if options.color not in BUTTON_COLORS:
            raise ValueError(f"color must be one of {', '.join(BUTTON_COLORS)}")
        look.append(("data-color", options.color))
    for name, value in (("theme", options.theme), ("locale", options.locale)):
        if value is None:
            continue
        if not kommo:
            raise ValueError(
                f"{name} is for Kommo's button (authorize_url on www.kommo.com); "
                "amoCRM's takes color"
            )
        look.append((f"data-{name}", _text(name, value)))
    if options.error_callback is not None:
        if not isinstance(options.error_callback, str) or not _JS_PATH.fullmatch(
            options.error_callback
        ):
            raise ValueError(
                "error_callback must be a JavaScript function's name or dotted path, such as "
                "handleOauthError or app.onAmoError: the button script evaluates it"
            )
        look.append(("data-error-callback", options.error_callback))
    return look


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    return value


def check_button_text(name: str, value: object) -> None:
    """``ButtonMetadata``'s check of its name or description (``name``, for the message).

    Raises:
        ValueError: not a non-empty string, or holding a character the consent URL would read
            differently (``unsendable``); the message names the field and the character.
    """
    text = _text(f"ButtonMetadata.{name}", value)
    problem = unsendable(text)
    if problem is not None:
        raise ValueError(
            f"ButtonMetadata.{name} must not hold {problem}: amoCRM's button script puts it "
            "into the consent URL as it is (write 'and' for '&', 'percent' for '%')"
        )


def check_scopes(scopes: object) -> None:
    """``ButtonMetadata.scopes``' check.

    Raises:
        ValueError: not a non-empty tuple (or list) of amoCRM scope names of ``[a-z_]``.
    """
    # Not any iterable: the string "crm" would pass as the scopes "c", "r" and "m".
    if not isinstance(scopes, (tuple, list)) or not scopes:
        raise ValueError("ButtonMetadata.scopes must be a non-empty tuple such as ('crm',)")
    for scope in scopes:
        if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
            raise ValueError("each of ButtonMetadata.scopes must be an amoCRM scope name of [a-z_]")


def check_logo(logo: object) -> None:
    """``ButtonMetadata.logo``'s check (None passes: no logo).

    Raises:
        ValueError: not an https URL, or holding a character the consent URL would read
            differently (a ``&`` could add a second ``secrets_uri``, where the new
            integration's secret would be posted).
    """
    if logo is None:
        return
    try:
        parts = urlsplit(logo) if isinstance(logo, str) else None
        hostname = parts.hostname if parts is not None else None
    except ValueError:  # an unreadable authority, such as an unclosed "["
        parts = hostname = None
    if parts is None or parts.scheme != "https" or not hostname:
        raise ValueError("ButtonMetadata.logo must be an https URL")
    problem = unsendable(str(logo))
    if problem is not None:
        raise ValueError(
            f"ButtonMetadata.logo must not hold {problem}: amoCRM's button script puts it "
            "into the consent URL as it is"
        )
