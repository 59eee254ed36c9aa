"""The mobile app's side of the seed, played against a backend over HTTP, in both versions.

The OLD app is what broke in the seed: after "Return to App" it posts the authorization code it
saw to ``POST /api/amo-crm/exchange-code``, although the backend already exchanged it (here it
takes the code from the callback URL the in-app browser followed; the seed's old backend put it
in the deep link). Against a non-idempotent backend that second exchange was the 403.

The NEW app trusts the deep link: ``success=true`` -> it re-reads ``GET /status`` and the leads;
``error=...`` -> "authorization error, try again"; neither (and no code) -> "authorization code
missing". A ``code`` in the deep link (an old backend) still falls back to exchange-code.

The in-app browser is played too, like a person: it opens the ``/connect?ticket=...`` URL the app
got from its backend (``GET /connect`` as JSON, authenticated), keeps the binding cookie that sets,
presses "Allow" (or "Deny") on the consent page and reads the "Return to App" button. That works
against ``amo-oauth demo --serve`` (a fake amoCRM), not against amoCRM, whose consent page needs
a login.

As a library: ``sign_in`` (the app's: JSON, and no ``Origin``, as a native app sends none),
``sign_in_browser`` (a person's: the sign-in form, posted from the backend's own page),
``authorize_in_browser`` (or its steps ``connect_link``, ``open_connect``, ``press``, ``land``),
``old_app`` and ``new_app`` return what the app would show. As a script::

    python examples/mobile_client.py --backend http://127.0.0.1:8000 --version new
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import httpx

PREFIX = "/api/amo-crm"
CONNECT = "Connect amoCRM"
TRY_AGAIN = "authorization error, try again"
CODE_MISSING = "authorization code missing"
_SETTLING = ("code_received", "exchanged")  # another worker is finishing the exchange


class BrowserError(Exception):
    """The in-app browser did not get where a person would have."""


@dataclass(frozen=True)
class Screen:
    """What the app shows the user.

    Attributes:
        message: "Connected: <account>", "Connect amoCRM", or an error message.
        connected: whether the app shows the account as connected.
        leads: the lead names listed.
    """

    message: str
    connected: bool = False
    leads: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [self.message, *(f"  - {name}" for name in self.leads)]
        return "\n".join(lines)


@dataclass(frozen=True)
class Visit:
    """Where the in-app browser ended: the "Return to App" page.

    Attributes:
        callback_url: the backend URL amoCRM redirected to; it carries the code (no repr).
        status: the page's HTTP status.
        title: the page's heading.
        deep_link: the "Return to App" button's href.
    """

    callback_url: str = field(repr=False)
    status: int
    title: str
    deep_link: str


# -- the in-app browser ----------------------------------------------------------------------


@dataclass
class _Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    label: str = ""  # its button's text


class _Page(HTMLParser):
    """The heading, links and forms of a page: all a person looks at here."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.h1 = ""
        self.links: list[str] = []
        self.forms: list[_Form] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {key: value or "" for key, value in attrs}
        if tag == "a" and "href" in found:
            self.links.append(found["href"])
        elif tag == "form":
            self.forms.append(_Form(found.get("action", ""), found.get("method", "get").upper()))
        elif tag == "input" and self.forms and found.get("name"):
            self.forms[-1].fields[found["name"]] = found.get("value", "")
        self._in = tag if tag in ("h1", "button") else self._in

    def handle_endtag(self, tag: str) -> None:
        self._in = None if tag == self._in else self._in

    def handle_data(self, data: str) -> None:
        if self._in == "h1":
            self.h1 += data
        elif self._in == "button" and self.forms:
            self.forms[-1].label += data


def _read(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


def _redirect(answer: httpx.Response, what: str) -> str:
    if answer.status_code not in (302, 303) or "location" not in answer.headers:
        raise BrowserError(f"{what}: expected a redirect, got {answer.status_code}")
    return urljoin(str(answer.url), answer.headers["location"])


def connect_link(backend: str, token: str) -> str:
    """The app asks its backend, signed in, where to send its in-app browser: the JSON form of
    ``/connect`` answers ``{url}``, a ``/connect?ticket=...`` URL good once, for about a minute."""
    headers = {"authorization": f"Bearer {token}", "accept": "application/json"}
    answer = httpx.get(f"{backend}{PREFIX}/connect", headers=headers)
    if answer.status_code != 200:
        raise BrowserError(f"connect (JSON): {answer.status_code}")
    return str(answer.json()["url"])


def open_connect(browser: httpx.Client, backend: str, token: str) -> str:
    """Get the ticket URL from the backend (as the app), open it in the in-app browser (no app
    session there); return the consent page URL it redirects to.

    ``/connect?ticket=...`` sets the browser-binding cookie in that browser, which keeps it for
    the whole consent (ASWebAuthenticationSession, Custom Tabs, httpx's cookie jar here): the
    callback completes only in the browser that started the consent.
    """
    answer = browser.get(connect_link(backend, token))
    return _redirect(answer, "connect")


def press(browser: httpx.Client, consent_url: str, button: str = "Allow") -> str:
    """Load the consent page and press ``button``; return the URL amoCRM redirects to."""
    page = browser.get(consent_url)
    if page.status_code != 200:
        raise BrowserError(f"consent page: {page.status_code}")
    forms = [form for form in _read(page.text).forms if form.label.strip() == button]
    if not forms:
        raise BrowserError(f"consent page: no {button!r} button")
    form, target = forms[0], urljoin(consent_url, forms[0].action)
    if form.method == "POST":
        answer = browser.post(target, data=form.fields)
    else:
        answer = browser.get(f"{target}?{urlencode(form.fields)}")
    return _redirect(answer, f"pressing {button}")


def land(browser: httpx.Client, callback_url: str) -> Visit:
    """Follow amoCRM's redirect to the backend and read the "Return to App" page."""
    answer = browser.get(callback_url)
    page = _read(answer.text)
    if len(page.links) != 1:
        raise BrowserError(f"callback page ({answer.status_code}): no single Return-to-App link")
    return Visit(callback_url, answer.status_code, page.h1.strip(), page.links[0])


def authorize_in_browser(
    browser: httpx.Client, backend: str, token: str, button: str = "Allow"
) -> Visit:
    """The user taps "Connect amoCRM", then ``button`` on amoCRM's consent page."""
    return land(browser, press(browser, open_connect(browser, backend, token), button))


# -- the app ----------------------------------------------------------------------------------


def sign_in(app: httpx.Client, user: str) -> str:
    """Sign in to the backend; ``app`` sends the session token from now on. Returns it."""
    answer = app.post("/login", json={"user": user})
    answer.raise_for_status()
    token = str(answer.json()["token"])
    app.headers["authorization"] = f"Bearer {token}"
    return token


def sign_in_browser(browser: httpx.Client, backend: str, user: str, then: str = "/") -> str:
    """Sign a browser in as a person does: open the backend's sign-in form (``GET /login``,
    which signs nobody in), then post it from that page (``Origin``: the backend, as a browser
    sends it). Returns where the backend sends the browser next (``then``, a local path)."""
    browser.get(f"{backend}/login", params={"next": then}).raise_for_status()
    answer = browser.post(
        f"{backend}/login", data={"user": user, "next": then}, headers={"origin": backend}
    )
    if answer.status_code != 303:
        raise BrowserError(f"the sign-in form answered {answer.status_code}")
    return answer.headers["location"]


def _query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def _exchange(app: httpx.Client, code: str, state: str | None) -> httpx.Response:
    body = {"code": code} if state is None else {"code": code, "state": state}
    return app.post(f"{PREFIX}/exchange-code", json=body)


def old_app(app: httpx.Client, callback_url: str) -> Screen:
    """The app version that broke in the seed: it exchanges the code a second time."""
    query = _query(callback_url)
    if "error" in query:
        return Screen(TRY_AGAIN)
    if not query.get("code"):
        return Screen(CODE_MISSING)
    answer = _exchange(app, query["code"], query.get("state"))
    if answer.status_code != 200:
        # The seed's old app stopped here: an error, and "Connect amoCRM" for good.
        return Screen(f"{TRY_AGAIN} ({answer.status_code})")
    return home(app)


def new_app(app: httpx.Client, deep_link: str) -> Screen:
    """The fixed app: the deep link says how it went; the backend already holds the tokens."""
    query = _query(deep_link)
    if "error" in query:
        return Screen(TRY_AGAIN)
    if query.get("success") == "true" or query.get("pending") == "true":
        return home(app)
    if query.get("code"):  # an old backend still sends the code: fall back to exchange-code
        answer = _exchange(app, query["code"], query.get("state"))
        return home(app) if answer.status_code == 200 else Screen(TRY_AGAIN)
    return Screen(CODE_MISSING)


def home(app: httpx.Client, settle: float = 5.0) -> Screen:
    """Re-read the status and, when connected, the leads: the app's main screen."""
    status = _status(app)
    deadline = time.monotonic() + settle
    while status["status"] in _SETTLING and time.monotonic() < deadline:
        time.sleep(0.2)  # "pending": the backend is finishing the exchange
        status = _status(app)
    if not status["connected"]:
        return Screen(CONNECT)
    name = status["account"]["name"]
    answer = app.get(f"{PREFIX}/leads")
    if answer.status_code != 200:
        return Screen(f"Connected: {name} (leads unavailable: {answer.status_code})", True)
    leads = tuple(str(lead["name"]) for lead in answer.json()["leads"])
    return Screen(f"Connected: {name}", True, leads)


def _status(app: httpx.Client) -> dict[str, Any]:
    answer = app.get(f"{PREFIX}/status")
    answer.raise_for_status()
    status: dict[str, Any] = answer.json()
    return status


# -- the script ---------------------------------------------------------------------------------


def trace(say: Callable[[str], None], who: str) -> Callable[[httpx.Response], None]:
    """An httpx response hook printing each call as "who -> METHOD /path: status (gist)".

    Never the query (the callback's carries the code) nor a body (the login's has a token).
    """

    def hook(response: httpx.Response) -> None:
        request, gist = response.request, ""
        if response.headers.get("content-type", "").startswith("application/json"):
            response.read()
            gist = _gist(response.json())
        path = request.url.path
        say(f"   {who} -> {request.method} {path}: {response.status_code}{gist}")

    return hook


def _gist(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    if "outcome" in body:
        return f" ({body['outcome']}, duplicate={str(body.get('duplicate')).lower()})"
    if body.get("error"):
        return f" ({body['error']})"
    if "status" in body:
        return f" ({body['status']})"
    if "leads" in body:
        return f" ({len(body['leads'])} leads)"
    return ""


def play(backend: str, version: str, user: str = "demo", button: str = "Allow") -> Screen:
    """Sign in, connect in the in-app browser, return to the app (old or new); print the way."""
    hooks = {"response": [trace(print, "browser")]}
    with (
        httpx.Client(event_hooks=hooks) as browser,
        httpx.Client(base_url=backend, event_hooks={"response": [trace(print, "app")]}) as app,
    ):
        token = sign_in(app, user)
        visit = authorize_in_browser(browser, backend, token, button)
        print(f"   page: {visit.status} {visit.title!r}")
        return (
            old_app(app, visit.callback_url) if version == "old" else new_app(app, visit.deep_link)
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", required=True, help="e.g. http://127.0.0.1:8000")
    parser.add_argument("--version", choices=("old", "new"), default="new")
    parser.add_argument("--user", default="demo")
    parser.add_argument("--press", choices=("Allow", "Deny"), default="Allow")
    args = parser.parse_args(argv)
    screen = play(args.backend.rstrip("/"), args.version, args.user, args.press)
    print(f"The app shows: {screen}")
    return 0 if screen.connected else 1


if __name__ == "__main__":
    sys.exit(main())
