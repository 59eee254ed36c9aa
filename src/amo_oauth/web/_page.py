"""The "Return to App" page that answers amoCRM's redirect, and its deep link.

The page is static HTML: no script, one inline stylesheet allowed by its hash, and headers that
keep the callback URL (it carries the code) out of caches and ``Referer`` headers.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import html
import math
import re
from collections.abc import Mapping, Sequence
from typing import Final
from urllib.parse import urlencode

import attrs

from .._setting_errors import setting_error
from .._site_button import is_kommo
from ._http import Request, Response, weighted

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "DEEP_LINK_PATH",
    "PAGE_TEXTS",
    "PageKind",
    "PageText",
    "button_page_policy",
    "check_app_scheme",
    "choose_language",
    "crm_name",
    "deep_link",
    "render_button_page",
    "render_page",
]

#: The deep link is ``{app_scheme}://amo-crm/callback?...``, as the seed's app expects.
DEEP_LINK_PATH: Final = "amo-crm/callback"

_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]{0,63}")
# Schemes a browser would run or read locally instead of handing to an app.
_UNSAFE_SCHEMES: Final = frozenset({"javascript", "vbscript", "data", "blob", "file", "about"})
# Schemes that open a web page: the deep link would leave the user in the browser.
_WEB_SCHEMES: Final = frozenset({"http", "https"})
_LANGUAGE_ALIASES: Final = {"ua": "uk"}  # a common mistake for Ukrainian
#: What ``{crm}`` in a page's text becomes: the CRM's name as its users know it.
_AMOCRM: Final = "amoCRM"
_KOMMO: Final = "Kommo"
_CRM_PLACEHOLDER: Final = "{crm}"
_MAX_LANGUAGES: Final = 16


class PageKind(enum.StrEnum):
    """Which message the page shows."""

    CONNECTED = "connected"
    PENDING = "pending"
    ERROR = "error"
    MISCONFIGURED = "misconfigured"
    WRONG_BROWSER = "wrong_browser"
    CLIENT_ID_MISMATCH = "client_id_mismatch"
    RATE_LIMITED = "rate_limited"
    SITE_BUTTON = "site_button"
    INSTALLING = "installing"


@attrs.frozen(kw_only=True)
class PageText:
    """The page's strings in one language (plain text: they are HTML-escaped when rendered).

    ``{crm}`` in any string becomes the name of the CRM the serving integration connects to:
    ``"Kommo"`` when its ``Config.authorize_url`` is Kommo's (``www.kommo.com``), else
    ``"amoCRM"`` (``crm_name``). The built-in texts use it, so one set of texts serves amoCRM
    and Kommo integrations behind one ``Integrations``; an app's own texts may use it or
    name the CRM themselves. It is a plain replacement: other braces stay as they are.

    Attributes:
        connected_title, connected_body: shown when the account is connected.
        pending_title, pending_body: shown while another worker finishes the exchange.
        error_title, error_body: shown when the user denied access or the connection failed.
        button: the label of the link back to the app.
        error_label: the label before the error's reason slug.
        misconfigured_title, misconfigured_body: shown when amoCRM refused the integration's own
            settings (client id, secret or redirect URI): trying again cannot help. English by
            default, so that texts written before these fields existed keep working.
        wrong_browser_title, wrong_browser_body: shown when the consent came back to a browser
            other than the one that started it (``wrong_browser``): a forwarded link. English
            by default, like the misconfigured texts.
        client_id_mismatch_title, client_id_mismatch_body: shown when amoCRM's redirect names
            another integration's client id than this backend's (``client_id_mismatch``).
            English by default, like the misconfigured texts.
        rate_limited_title, rate_limited_body: shown when too many connection attempts were
            made (``rate_limited``); ``{minutes}`` in the body becomes the whole minutes
            (rounded up) until a try is admitted again. English by default, like the
            misconfigured texts.
        site_button_title, site_button_body: ``/connect`` in metadata mode, above amoCRM's
            site button. English by default, like the misconfigured texts.
        installing_title, installing_body: metadata mode, when amoCRM's redirect came before
            the new integration's keys reached ``secrets_uri`` (``credentials_missing``): the
            code was not spent, so reloading the page finishes the install once they arrive.
            English by default, like the misconfigured texts.
    """

    connected_title: str
    connected_body: str
    pending_title: str
    pending_body: str
    error_title: str
    error_body: str
    button: str
    error_label: str
    misconfigured_title: str = "{crm} integration is misconfigured"
    misconfigured_body: str = (
        "{crm} refused this app's integration settings, so trying again will not help. "
        "Return to the app and let its support team know."
    )
    wrong_browser_title: str = "Connect from the app"
    wrong_browser_body: str = (
        "This connection was started in another browser or app. "
        "Start connecting again from the app."
    )
    client_id_mismatch_title: str = "This answer is for another integration"
    client_id_mismatch_body: str = (
        "{crm} sent back the client id of another integration than this app's, so nothing "
        "was connected. Start connecting again from the app; if this happens again, let its "
        "support team know."
    )
    rate_limited_title: str = "Too many attempts"
    rate_limited_body: str = (
        "There were too many connection attempts. Return to the app and try again in {minutes} min."
    )
    site_button_title: str = "Connect {crm}"
    site_button_body: str = (
        "Press the button and choose your account: {crm} sets up the integration for it and "
        "brings you back here."
    )
    installing_title: str = "Finishing the installation"
    installing_body: str = (
        "{crm} has not passed this app the new integration's keys yet. "
        "Reload this page in a few seconds."
    )

    def title(self, kind: PageKind, crm: str = _AMOCRM) -> str:
        """The title in ``kind``, ``{crm}`` replaced by ``crm`` (``"amoCRM"`` or ``"Kommo"``)."""
        return str(getattr(self, f"{kind.value}_title")).replace(_CRM_PLACEHOLDER, crm)

    def body(self, kind: PageKind, minutes: int | None = None, crm: str = _AMOCRM) -> str:
        """The body in ``kind``: ``{crm}`` replaced by ``crm``, and ``{minutes}`` when
        ``minutes`` is given (by plain replacement: an app's text may hold other braces)."""
        body = str(getattr(self, f"{kind.value}_body")).replace(_CRM_PLACEHOLDER, crm)
        return body if minutes is None else body.replace("{minutes}", str(minutes))


#: The built-in translations; pass ``texts=`` to the handlers to add or replace languages.
PAGE_TEXTS: Final[Mapping[str, PageText]] = {
    "en": PageText(
        connected_title="{crm} is connected",
        connected_body="Your {crm} account is connected. Return to the app to continue.",
        pending_title="Almost done",
        pending_body="{crm} is finishing the connection. Return to the app: "
        "it will show the result in a moment.",
        error_title="{crm} was not connected",
        error_body="The connection did not go through. Return to the app and try again.",
        button="Return to App",
        error_label="Error code:",
    ),
    "ru": PageText(
        connected_title="{crm} подключена",
        connected_body="Ваш аккаунт {crm} подключён. Вернитесь в приложение, чтобы продолжить.",
        pending_title="Почти готово",
        pending_body="{crm} завершает подключение. Вернитесь в приложение: "
        "результат появится через несколько секунд.",
        error_title="{crm} не подключена",
        error_body="Подключение не удалось. Вернитесь в приложение и попробуйте ещё раз.",
        button="Вернуться в приложение",
        error_label="Код ошибки:",
        misconfigured_title="Интеграция {crm} настроена неверно",
        misconfigured_body="{crm} отклонила настройки интеграции этого приложения, поэтому "
        "повторная попытка не поможет. Вернитесь в приложение и сообщите в его поддержку.",
        wrong_browser_title="Подключите из приложения",
        wrong_browser_body="Это подключение было начато в другом браузере или приложении. "
        "Начните подключение заново из приложения.",
        client_id_mismatch_title="Этот ответ для другой интеграции",
        client_id_mismatch_body="{crm} вернула client id другой интеграции, не этого "
        "приложения, поэтому ничего не подключено. Начните подключение заново из приложения; "
        "если это повторится, сообщите в его поддержку.",
        rate_limited_title="Слишком много попыток",
        rate_limited_body="Было слишком много попыток подключения. Вернитесь в приложение и "
        "попробуйте снова через {minutes} мин.",
        site_button_title="Подключите {crm}",
        site_button_body="Нажмите кнопку и выберите аккаунт: {crm} настроит для него "
        "интеграцию и вернёт вас сюда.",
        installing_title="Завершаем установку",
        installing_body="{crm} ещё не передала этому приложению ключи новой интеграции. "
        "Обновите эту страницу через несколько секунд.",
    ),
    "uk": PageText(
        connected_title="{crm} підключено",
        connected_body="Ваш обліковий запис {crm} підключено. "
        "Поверніться до застосунку, щоб продовжити.",
        pending_title="Майже готово",
        pending_body="{crm} завершує підключення. Поверніться до застосунку: "
        "результат з'явиться за кілька секунд.",
        error_title="{crm} не підключено",
        error_body="Підключення не вдалося. Поверніться до застосунку та спробуйте ще раз.",
        button="Повернутися до застосунку",
        error_label="Код помилки:",
        misconfigured_title="Інтеграцію {crm} налаштовано неправильно",
        misconfigured_body="{crm} відхилила налаштування інтеграції цього застосунку, тож "
        "повторна спроба не допоможе. Поверніться до застосунку та повідомте його підтримку.",
        wrong_browser_title="Підключіть із застосунку",
        wrong_browser_body="Це підключення було розпочато в іншому браузері або застосунку. "
        "Почніть підключення знову із застосунку.",
        client_id_mismatch_title="Ця відповідь для іншої інтеграції",
        client_id_mismatch_body="{crm} повернула client id іншої інтеграції, не цього "
        "застосунку, тому нічого не підключено. Почніть підключення знову із застосунку; "
        "якщо це повториться, повідомте його підтримку.",
        rate_limited_title="Забагато спроб",
        rate_limited_body="Було забагато спроб підключення. Поверніться до застосунку та "
        "спробуйте знову через {minutes} хв.",
        site_button_title="Підключіть {crm}",
        site_button_body="Натисніть кнопку й виберіть обліковий запис: {crm} налаштує для "
        "нього інтеграцію та поверне вас сюди.",
        installing_title="Завершуємо встановлення",
        installing_body="{crm} ще не передала цьому застосунку ключі нової інтеграції. "
        "Оновіть цю сторінку за кілька секунд.",
    ),
}

_STYLE: Final = (
    ":root{color-scheme:light dark;font-family:system-ui,-apple-system,'Segoe UI',Roboto,"
    "sans-serif}"
    "body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center}"
    "main{max-width:28rem;padding:2rem 1.5rem;text-align:center}"
    "h1{font-size:1.5rem;margin:0 0 .75rem}"
    "p{line-height:1.5;margin:0 0 1.5rem}"
    ".button{display:inline-block;box-sizing:border-box;min-height:44px;padding:.75rem 1.5rem;"
    "border-radius:.5rem;background:#0b57d0;color:#fff;font-weight:600;text-decoration:none}"
    ".button:focus-visible{outline:3px solid #f9ab00;outline-offset:3px}"
    "small{display:block;margin-top:1.5rem}"
)
_STYLE_HASH: Final = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

#: No script may run, nothing may load, and the page may not be framed: only its own styles.
CONTENT_SECURITY_POLICY: Final = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS: Final = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-frame-options", "DENY"),
)

_TEMPLATE: Final = """<!doctype html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<main>
<h1>{title}</h1>
<p>{body}</p>
{action}
</main>
</body>
</html>
"""
#: What a result page offers under its text: the way back to the app (and the error's slug).
_LINK_BACK: Final = '<a class="button" href="{link}" rel="noreferrer">{button}</a>{detail}'


def crm_name(authorize_url: str) -> str:
    """The CRM an integration connects to, as a page names it: ``"Kommo"`` for Kommo's consent
    page (``https://www.kommo.com/oauth``, protocol notes §5), else ``"amoCRM"``."""
    return _KOMMO if is_kommo(authorize_url) else _AMOCRM


def button_page_policy(script_origin: str) -> str:
    """The site button page's ``Content-Security-Policy``: the page's own style, and amoCRM's
    button script with what it loads from its own origin (``script_origin``, e.g.
    ``https://www.amocrm.ru``); nothing else loads, nothing inline runs, no framing."""
    return (
        f"default-src 'none'; script-src {script_origin}; "
        f"style-src 'sha256-{_STYLE_HASH}' {script_origin}; img-src {script_origin}; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def render_button_page(
    text: PageText,
    lang: str,
    button_html: str,
    script_origin: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    crm: str = _AMOCRM,
) -> Response:
    """``/connect``'s answer in metadata mode: amoCRM's site button on a page of its own.

    Args:
        text: the strings in ``lang`` (``site_button_title``, ``site_button_body``).
        lang: the page's ``lang`` attribute.
        button_html: ``SiteButton.html``, put in as it is (the service escaped its values).
        script_origin: the origin of ``Config.button_script_url``, allowed by the CSP.
        headers: more headers, e.g. the binding's ``Set-Cookie``.
        crm: what ``{crm}`` in the texts becomes (``crm_name``).

    Returns:
        200, with ``no-store``-ready headers and ``button_page_policy``.
    """
    escape = html.escape
    page = _TEMPLATE.format(
        lang=escape(lang),
        title=escape(text.title(PageKind.SITE_BUTTON, crm)),
        style=_STYLE,
        body=escape(text.body(PageKind.SITE_BUTTON, crm=crm)),
        action=button_html,
    )
    policy = (("content-security-policy", button_page_policy(script_origin)),)
    return Response.html(200, page, (*policy, ("x-frame-options", "DENY"), *headers))


def check_app_scheme(scheme: str) -> str:
    """Validate the app's URL scheme (RFC 3986 §3.1: a letter, then letters, digits, ``+-.``).

    The deep link ``{scheme}://amo-crm/callback?...`` must open the app: a web scheme would open
    a web page instead, and a scheme a browser handles itself (``javascript``, ``data``...)
    would run or show something in the browser.

    Args:
        scheme: e.g. ``"foryoure"`` (without ``://``).

    Returns:
        The scheme, lower-cased (schemes are case-insensitive).

    Raises:
        ValueError: empty, not text, written with ``://``, not a scheme's syntax, ``http`` or
            ``https`` (any case), or one a browser handles itself; the message says which.
    """
    problem = _scheme_problem(scheme)
    if problem is not None:
        shown = scheme.lower() if isinstance(scheme, str) else ""
        raise ValueError(setting_error(problem, type=type(scheme).__name__, scheme=shown))
    return scheme.lower()


def _scheme_problem(scheme: object) -> str | None:
    """Which rule ``scheme`` breaks: the key of its message, or None."""
    if not isinstance(scheme, str):
        return "app_scheme_type"
    lowered = scheme.lower()
    if not lowered:
        return "app_scheme_empty"
    if ":" in lowered or "/" in lowered:
        return "app_scheme_separator"
    if not _SCHEME.fullmatch(lowered):
        return "app_scheme_syntax"
    if lowered in _WEB_SCHEMES:
        return "app_scheme_web"
    if lowered in _UNSAFE_SCHEMES:
        return "app_scheme_browser"
    return None


def deep_link(scheme: str, params: Sequence[tuple[str, str]]) -> str:
    """``{scheme}://amo-crm/callback?{params}``, the link the page's button opens."""
    return f"{scheme}://{DEEP_LINK_PATH}?{urlencode(params)}"


def _match(tag: str, available: Mapping[str, object]) -> str | None:
    tag = tag.strip().lower()
    for candidate in (tag, tag.split("-", 1)[0]):
        candidate = _LANGUAGE_ALIASES.get(candidate, candidate)
        if candidate in available:
            return candidate
    return None


def choose_language(request: Request, available: Mapping[str, object], default: str) -> str:
    """The page's language: ``?lang=``, then ``Accept-Language``, then ``default``.

    Args:
        request: the callback request.
        available: the languages there are texts for.
        default: the language when nothing matches.

    Returns:
        A key of ``available`` (or ``default``).
    """
    wanted = request.param("lang")
    candidates = [wanted] if wanted else []
    header = request.header("accept-language") or ""
    candidates += [tag for tag, quality in weighted(header, _MAX_LANGUAGES) if 0 < quality <= 1]
    for tag in candidates:
        found = _match(tag, available)
        if found is not None:
            return found
    return default


def render_page(
    status: int,
    text: PageText,
    lang: str,
    kind: PageKind,
    link: str,
    reason: str | None = None,
    *,
    retry_after: float | None = None,
    crm: str = _AMOCRM,
) -> Response:
    """The HTML page with every interpolated value escaped.

    Args:
        status: the status code.
        text: the strings in ``lang``.
        lang: the page's ``lang`` attribute.
        kind: which message to show.
        link: the deep link for the button.
        reason: the error's reason slug, shown under the button.
        retry_after: seconds until a try is admitted again (``rate_limited``): the body's
            ``{minutes}``, in whole minutes rounded up (at least 1).
        crm: what ``{crm}`` in the texts becomes (``crm_name``).

    Returns:
        The page with ``no-store``, ``no-referrer``, ``nosniff`` and a script-free CSP.
    """
    escape = html.escape
    detail = ""
    if reason is not None:
        detail = f"\n<small>{escape(text.error_label)} <code>{escape(reason)}</code></small>"
    action = _LINK_BACK.format(link=escape(link), button=escape(text.button), detail=detail)
    page = _TEMPLATE.format(
        lang=escape(lang),
        title=escape(text.title(kind, crm)),
        style=_STYLE,
        body=escape(text.body(kind, _minutes(retry_after), crm)),
        action=action,
    )
    return Response.html(status, page, _PAGE_HEADERS)


def _minutes(seconds: float | None) -> int | None:
    """Whole minutes, rounded up, at least 1 (a page saying "in 0 min" invites a reload)."""
    return None if seconds is None else max(1, math.ceil(seconds / 60))
