"""The invariant machine for your own backend: your routes, your sign-in, your store.

A hypothesis state machine drives your ASGI or WSGI app, mounting amo_oauth's routes, with
``FakeAmoCRM`` behind it: browsers of signed-in users begin consents (``/connect``), or the
mobile app's ticket URL opens in a signed-out in-app browser; amoCRM redirects them back
(``/callback``) with a code, with a second code under one consent, with a denial or with a
forged state; redirects are replayed in the same browser or another; the old mobile app posts a
code again (``/exchange-code``); users disconnect; the integration is uninstalled and amoCRM's
disconnect hook arrives (signed or forged). After every step it checks:

* each authorization code reached amoCRM's token endpoint at most once, and a code that came
  with a forged state never;
* no answer was a 5xx;
* no replay (a code amoCRM already saw: the code ledger holds it) was answered 403; a NEW code
  from the wrong browser may be, and rightly is, refused;
* ``/status`` of every user says connected exactly when a code of that user's consent was
  exchanged since the user's last disconnect (and names the fake's account);
* no answer's body or headers hold a secret: the client secret, the state secret, a code, an
  access or refresh token.

You give two hooks: ``make_app(amo)`` builds your app over the fake (``FakeSettings``: its
``config``, its ``http()`` / ``async_http()`` clients, the ``users`` to know), and
``sign_in(browser, user)`` signs ``user`` in within ``browser`` (a ``Browser``: post your
login form there, its cookies stay) and answers the headers that mark that browser's requests
as the user's (a bearer token; ``{}`` when your sign-in set a cookie). Then::

    def test_my_backend_keeps_amo_oauths_invariants() -> None:
        run_invariants(make_app, sign_in)

Needs the ``testing`` extra (``pip install 'amo_oauth[testing]'``: pytest and hypothesis);
``import amo_oauth.testing`` and its pytest plugin do not import this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any, ClassVar, Protocol, TypeVar
from urllib.parse import parse_qsl, urlsplit

import attrs
import httpx

from .._config import Config
from .._extras import needs_extra
from ._app_driver import AppDriver, Browser
from ._fake import FakeAmoCRM

with needs_extra("testing", "amo_oauth.testing.invariants"):  # hypothesis
    from hypothesis import HealthCheck
    from hypothesis import settings as hypothesis_settings
    from hypothesis import strategies as st
    from hypothesis.internal.conjecture import engine as hypothesis_engine
    from hypothesis.stateful import (
        Bundle,
        RuleBasedStateMachine,
        invariant,
        precondition,
        rule,
        run_state_machine_as_test,
    )

__all__ = [
    "DEFAULT_REDIRECT_URI",
    "DEFAULT_SETTINGS",
    "SHRINK_SECONDS",
    "USERS",
    "BackendMachine",
    "Browser",
    "FakeSettings",
    "HookQuery",
    "denials",
    "forged_states",
    "hook_queries",
    "machine_for",
    "redirects",
    "replays",
    "run_invariants",
    "second_codes",
    "widget_installs",
]


class Closeable(Protocol):
    def close(self) -> object: ...


C = TypeVar("C", bound=Closeable)

#: The app users the machine signs in (one browser each, plus a signed-out one).
USERS = ("user-1", "user-2")
#: Where the app under test is reached, and where amoCRM redirects back: amo_oauth's routes
#: are the siblings of this ``/callback``.
DEFAULT_REDIRECT_URI = "https://backend.example/api/amo-crm/callback"
#: The browser of nobody signed in (a stranger's, or amoCRM's server sending the hook).
SIGNED_OUT = "signed-out"
BROWSERS = (*USERS, SIGNED_OUT)
#: The connection a widget install makes (named after the account, no app user behind it).
WIDGET = "widget-install"
#: Which browser amoCRM redirects back to: mostly the one that began the consent.
_OWN = "own"
_WHERE = st.sampled_from((_OWN, _OWN, _OWN, *BROWSERS))


@attrs.frozen
class FakeSettings:
    """What ``make_app`` builds the app from: the fake amoCRM and a config matching it.

    Attributes:
        fake: the ``FakeAmoCRM`` behind the app (a fresh one per example; real clock).
        config: a ``Config`` for the fake's integration, with a random client secret and
            state secret; the bounds on code exchanges are raised (a run makes many) and the
            hook check interval is a millisecond (a run uninstalls more than once a minute).
        users: the user ids the machine signs in; ``sign_in`` is asked for each.
    """

    fake: FakeAmoCRM
    config: Config = attrs.field(repr=False)
    users: tuple[str, ...] = USERS
    _closing: contextlib.ExitStack = attrs.field(factory=contextlib.ExitStack, repr=False)

    def http(self) -> httpx.Client:
        """A blocking client to the fake (in-process), closed when the example ends."""
        return self.closes(httpx.Client(transport=self.fake.transport()))

    def async_http(self) -> httpx.AsyncClient:
        """An asyncio client to the fake (in-process); your app's lifespan closes it."""
        return httpx.AsyncClient(transport=self.fake.async_transport())

    def closes(self, thing: C) -> C:
        """Have ``thing.close()`` called when the example ends, after the app's shutdown (a
        blocking ``AmoOAuth`` of a WSGI app, which has no shutdown of its own); returns it."""
        self._closing.callback(thing.close)
        return thing

    def close(self) -> None:
        """Close what ``http()`` and ``closes()`` were given (the machine calls it)."""
        self._closing.close()


#: ``make_app(amo)``: your ASGI or WSGI app over ``amo.config`` and the fake's client.
AppFactory = Callable[[FakeSettings], Any]
#: ``sign_in(browser, user)``: sign ``user`` in within ``browser``; the headers that mark its
#: requests as ``user``'s (``{}`` when the sign-in set a session cookie in the browser).
SignIn = Callable[[Browser, str], Mapping[str, str]]


@attrs.frozen
class HookQuery:
    """A disconnect-hook query (protocol notes §6) and whether amoCRM could have sent it.

    Attributes:
        query: ``client_uuid``, ``account_id``, ``signature`` (some missing or wrong when
            forged).
        genuine: signed under the client secret (for the fake's account or another one);
            a forged one is answered 400 and changes nothing.
        account_id: the account it names (None when missing).
    """

    query: Mapping[str, str] = attrs.field(repr=False)
    genuine: bool
    account_id: int | None


class _Hidden(str):
    """A string holding a secret (a code, a state): hypothesis prints the steps of a failure
    with the values drawn, and its repr shows only what kind of value it is."""

    __slots__ = ()
    kind: ClassVar[str] = "a value"

    def __repr__(self) -> str:
        return f"<{self.kind}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis's printer
        printer.text(repr(self))


class _HiddenUrl(_Hidden):
    __slots__ = ()
    kind = "redirect URL"


class _HiddenState(_Hidden):
    __slots__ = ()
    kind = "forged state"


def forged_states(state: str) -> st.SearchStrategy[str]:
    """States that are not ``state`` and that nobody signed: one character changed, cut
    short, lengthened, or any text (a callback with one is refused, its code never sent)."""

    def changed(at: int) -> str:
        index = at % len(state)
        return state[:index] + ("A" if state[index] != "A" else "B") + state[index + 1 :]

    shapes = st.one_of(
        st.integers(0, max(len(state) - 1, 0)).map(changed),
        st.integers(1, max(len(state) - 1, 1)).map(lambda keep: state[:keep]),
        st.text("ABCxyz019-_.", min_size=1, max_size=8).map(lambda tail: state + tail),
        st.text(min_size=1, max_size=40),
    )
    unsigned = shapes.filter(lambda forged: forged != state and forged.strip() != "")
    return unsigned.map(_HiddenState)


def hook_queries(fake: FakeAmoCRM) -> st.SearchStrategy[HookQuery]:
    """amoCRM's disconnect hook for ``fake``'s integration: signed for its account or another
    account, or forged (a wrong signature, a field missing, another integration's id)."""
    genuine = fake.hook_query()
    foreign = st.integers(1, 10**9).filter(lambda account: account != fake.account_id)

    def signed_for(account: int) -> HookQuery:
        message = f"{fake.client_id}|{account}".encode()
        signature = _hmac_hex(fake.client_secret.encode(), message)
        query = {"client_uuid": fake.client_id, "account_id": str(account), "signature": signature}
        return HookQuery(query, genuine=True, account_id=account)

    def without(field: str) -> HookQuery:
        query = {name: value for name, value in genuine.items() if name != field}
        account = None if field == "account_id" else fake.account_id
        return HookQuery(query, genuine=False, account_id=account)

    def altered(field: str) -> HookQuery:
        value = genuine[field]
        query = {**genuine, field: value[:-1] + ("0" if value[-1] != "0" else "1")}
        return HookQuery(query, genuine=False, account_id=int(query["account_id"]))

    fields = st.sampled_from(sorted(genuine))
    return st.one_of(
        st.just(HookQuery(genuine, genuine=True, account_id=fake.account_id)),
        foreign.map(signed_for),
        fields.map(without),
        st.sampled_from(("signature", "client_uuid")).map(altered),
    )


def redirects(fake: FakeAmoCRM, state: str | None) -> st.SearchStrategy[str]:
    """amoCRM's redirect back after "Allow" under the consent that sent ``state`` (protocol
    notes §2): the full URL, ``{redirect_uri}?code=...&state=...&referer=...&client_id=...``,
    with a code ``fake`` issues when it is drawn (a new one each draw)."""
    return st.builds(lambda: _HiddenUrl(fake.authorize(state)))


def widget_installs(fake: FakeAmoCRM) -> st.SearchStrategy[str]:
    """A widget or marketplace install's redirect (protocol notes §2): ``from_widget=1`` and
    no state, a new code each draw; amoCRM sends it server to server (no browser)."""
    return st.builds(lambda: _HiddenUrl(fake.authorize(from_widget=True)))


def second_codes(fake: FakeAmoCRM, url: str) -> st.SearchStrategy[str]:
    """Another redirect under the consent that ``url`` (a redirect from ``redirects`` or
    ``widget_installs``) came back from: the same state, a new code."""
    query = dict(_query_pairs(urlsplit(url).query))
    if query.get("from_widget") == "1":
        return widget_installs(fake)
    return redirects(fake, query.get("state"))


def replays(url: str, *, most: int = 3) -> st.SearchStrategy[list[str]]:
    """``url`` again, 1 to ``most`` times in a row (a reload, the back button, a prefetch, a
    copied link): the list of URLs to send, in order."""
    hidden = _HiddenUrl(url)
    return st.integers(1, most).map(lambda times: [hidden] * times)


def denials(fake: FakeAmoCRM, state: str) -> st.SearchStrategy[str]:
    """ "Deny" pressed on the consent that sent ``state`` (protocol notes §2):
    ``{redirect_uri}?error=access_denied&client_id=...&state=...``."""
    return st.builds(lambda: _HiddenUrl(fake.deny(state)))


def _hmac_hex(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@attrs.frozen
class Consent:
    """A consent begun for ``user`` in ``browser``: the state ``/connect`` sent it to amoCRM
    with. The browser is the user's own, or the signed-out one for a mobile app's ticket; a
    widget install's is ``WIDGET``'s, in the signed-out browser, with no state."""

    user: str
    browser: str
    state: str | None = attrs.field(repr=False)


@attrs.frozen
class Redirect:
    """amoCRM's redirect back with a code (the URL, kept for replays)."""

    consent: Consent
    url: str = attrs.field(repr=False)

    @property
    def query(self) -> str:
        return urlsplit(self.url).query

    @property
    def code(self) -> str:
        return dict(_query_pairs(self.query))["code"]


#: What follows the common path in the same step (so that short runs reach the 3rd arrival of
#: one code): the same redirect reloaded, or its code posted by the old mobile app.
_RELOAD, _POST = "reload", "exchange-code"
_FOLLOW_UPS = st.lists(st.sampled_from((_RELOAD, _RELOAD, _POST)), max_size=3)


class BackendMachine(RuleBasedStateMachine):
    """The machine; ``run_invariants`` makes and runs one for your hooks. Subclass the class
    it runs (``machine_for``) to add rules of your own."""

    make_app: ClassVar[AppFactory]
    sign_in: ClassVar[SignIn]
    redirect_uri: ClassVar[str] = DEFAULT_REDIRECT_URI
    widget_installs: ClassVar[bool] = True

    consents = Bundle("consents")
    arrived = Bundle("redirects")

    def __init__(self) -> None:
        super().__init__()
        fake = FakeAmoCRM(
            client_secret=secrets.token_urlsafe(24), redirect_uri=self.redirect_uri, rate_limit=None
        )
        self.state_secret = secrets.token_urlsafe(32)
        config = _config_for(fake, self.state_secret, widget_installs=self.widget_installs)
        self.amo = FakeSettings(fake, config)
        self.fake = fake
        self.prefix = urlsplit(self.redirect_uri).path.rpartition("/")[0]
        try:
            self.driver = AppDriver(type(self).make_app(self.amo), _origin(self.redirect_uri))
        except BaseException:
            self.amo.close()
            raise
        self.browsers = {name: self.driver.browser() for name in BROWSERS}
        self.headers: dict[str, dict[str, str]] = {SIGNED_OUT: {}}
        try:
            for user in USERS:
                self.headers[user] = dict(type(self).sign_in(self.browsers[user], user))
        except BaseException:  # hypothesis calls teardown only on a machine it made
            self.teardown()
            raise
        #: Whether each connection (each user's, and the widget install's) must be connected
        #: (None: not known after a failed exchange, which the machine does not predict).
        self.connected: dict[str, bool | None] = dict.fromkeys((*USERS, WIDGET), False)
        #: Connections whose tokens an uninstall revoked at the fake since they connected.
        self.revoked: set[str] = set()
        self.forged_codes: set[str] = set()

    def teardown(self) -> None:
        try:
            self.driver.close()
        finally:
            self.amo.close()

    # -- rules ---------------------------------------------------------------------------

    @rule(target=consents, user=st.sampled_from(USERS))
    def connect(self, user: str) -> Consent:
        """The user's browser begins a consent: ``/connect`` answers 302 to amoCRM."""
        return self.begin(user)

    @rule(target=consents, user=st.sampled_from(USERS))
    def connect_by_ticket(self, user: str) -> Consent:
        """The mobile app asks for a ticket URL (``/connect`` as JSON) and opens it in an
        in-app browser where nobody is signed in: ``/connect?ticket=...`` answers 302 there."""
        asked = self.send(user, "GET", "/connect", params={"format": "json"})
        assert asked.status_code == 200, f"/connect?format=json answered {asked.status_code}"
        url = urlsplit(asked.json()["url"])
        assert url.path == self.prefix + "/connect", "the ticket URL is not /connect"
        opened = self.send(SIGNED_OUT, "GET", "/connect", params=_query_pairs(url.query))
        return self.consent_of(user, SIGNED_OUT, opened)

    @rule(target=arrived, user=st.sampled_from(USERS), follow_ups=_FOLLOW_UPS)
    def consent_in_full(self, user: str, follow_ups: list[str]) -> Redirect:
        """The common path in one step: ``/connect``, "Allow", back in the same browser; then
        maybe reloaded, or its code posted by the old mobile app, a few times in a row."""
        consent = self.begin(user)
        redirect = self.arrive(consent, self.fake.authorize(consent.state), _OWN)
        for follow_up in follow_ups:
            if follow_up == _RELOAD:
                self.callback(redirect, _OWN)
            else:
                self.post_code(redirect)
        return redirect

    @rule(target=arrived, consent=consents, where=_WHERE, data=st.data())
    def allow(self, consent: Consent, where: str, data: st.DataObject) -> Redirect:
        """ "Allow" pressed: amoCRM redirects a browser back with a code."""
        url = data.draw(redirects(self.fake, consent.state), label="redirect")
        return self.arrive(consent, url, where)

    @rule(target=arrived, redirect=arrived, where=_WHERE, data=st.data())
    def second_code(self, redirect: Redirect, where: str, data: st.DataObject) -> Redirect:
        """Another code under a consent that already brought one back."""
        url = data.draw(second_codes(self.fake, redirect.url), label="second code")
        return self.arrive(redirect.consent, url, where)

    @precondition(lambda self: self.amo.config.allow_widget_installs)
    @rule(target=arrived, data=st.data())
    def widget_install(self, data: st.DataObject) -> Redirect:
        """A widget or marketplace install: amoCRM's server sends the redirect, with
        ``from_widget=1`` and no state (skipped when the config does not allow them)."""
        url = data.draw(widget_installs(self.fake), label="widget install")
        return self.arrive(Consent(WIDGET, SIGNED_OUT, None), url, _OWN)

    @rule(redirect=arrived, where=_WHERE, data=st.data())
    def replay(self, redirect: Redirect, where: str, data: st.DataObject) -> None:
        """The same redirect URL again, a few times in a row (a reload, a back button, a
        prefetch, a copied link)."""
        for _ in data.draw(replays(redirect.url), label="replays"):
            self.callback(redirect, where)

    @rule(redirect=arrived)
    def legacy_post(self, redirect: Redirect) -> None:
        """The old mobile app posts the code (and state) it was handed: never a 403."""
        self.post_code(redirect)

    @rule(consent=consents, where=_WHERE, data=st.data())
    def deny(self, consent: Consent, where: str, data: st.DataObject) -> None:
        """ "Deny" pressed: amoCRM redirects back with ``error=access_denied``."""
        assert consent.state is not None  # consents of this bundle came from /connect
        url = data.draw(denials(self.fake, consent.state), label="denial")
        self.send(self.browser_of(consent, where), "GET", "/callback", params=_query(url))

    @rule(consent=consents, data=st.data())
    def forge(self, consent: Consent, data: st.DataObject) -> None:
        """A redirect whose state nobody signed, with a fresh code: refused, never sent."""
        assert consent.state is not None
        forged = data.draw(forged_states(consent.state), label="forged state")
        url = self.fake.authorize(forged)
        code = dict(parse_qsl(urlsplit(url).query))["code"]
        self.forged_codes.add(code)
        self.send(self.browser_of(consent, _OWN), "GET", "/callback", params=_query(url))

    @rule(user=st.sampled_from(USERS))
    def disconnect(self, user: str) -> None:
        """The user disconnects amoCRM (a same-site POST)."""
        origin = {"origin": _origin(self.redirect_uri)}
        answer = self.send(user, "POST", "/disconnect", headers=origin)
        assert answer.status_code == 200, f"/disconnect answered {answer.status_code}"
        self.connected[user] = False
        self.revoked.discard(user)

    @rule(data=st.data())
    def amocrm_side(self, data: st.DataObject) -> None:
        """What happens at amoCRM: the integration is uninstalled (every code and token
        revoked, the hook not sent yet), or a disconnect hook arrives, signed or forged (one
        rule for both, so that they come up about as often as each browser step)."""
        if data.draw(st.booleans(), label="uninstall"):
            self.uninstall()
        else:
            self.hook(data.draw(hook_queries(self.fake), label="hook"))

    def uninstall(self) -> None:
        """The integration is uninstalled at amoCRM: the tokens of every connection that may
        be connected are revoked (the hook is not sent yet)."""
        self.fake.uninstall()
        self.revoked = {name for name, now in self.connected.items() if now is not False}

    def hook(self, hook: HookQuery) -> None:
        """A forged hook is refused and changes nothing; a genuine one for the fake's account
        that amoCRM was asked about disconnects the connections whose tokens were revoked."""
        answer = self.send(SIGNED_OUT, "GET", "/disconnect-hook", params=dict(hook.query))
        if not hook.genuine:
            assert answer.status_code == 400, f"a forged hook answered {answer.status_code}"
            return
        assert answer.status_code == 200, f"a signed hook answered {answer.status_code}"
        said = answer.json()
        if hook.account_id != self.fake.account_id or not said["checked"]:
            return
        gone = {user for user in self.revoked if self.connected[user]}
        if None not in self.connected.values():
            assert said["disconnected"] == len(gone), _hook_disagrees(said, gone)
        for user in gone:
            self.connected[user] = False
        self.revoked -= gone

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def each_code_is_sent_at_most_once(self) -> None:
        codes, _ = _issued(self.fake)
        for code in codes:
            sent = self.fake.token_calls_for(code)
            assert sent <= 1, f"a code reached amoCRM's token endpoint {sent} times"
        for code in self.forged_codes:
            assert self.fake.token_calls_for(code) == 0, "a code with a forged state was sent"

    @invariant()
    def status_reflects_the_connection(self) -> None:
        for user in USERS:
            expected = self.connected[user]
            if expected is None:
                continue
            answer = self.send(user, "GET", "/status")
            assert answer.status_code == 200, f"/status answered {answer.status_code}"
            said = answer.json()
            assert said["connected"] is expected, (
                f"{user}'s /status says connected={said['connected']}, expected {expected} "
                f"({said['status']})"
            )
            if expected:
                assert said["account"]["id"] == self.fake.account_id

    # -- helpers -------------------------------------------------------------------------

    def begin(self, user: str) -> Consent:
        answer = self.send(user, "GET", "/connect")
        return self.consent_of(user, user, answer)

    def consent_of(self, user: str, browser: str, answer: httpx.Response) -> Consent:
        """The consent a ``/connect`` answer began: a 302 to amoCRM, with the state."""
        assert answer.status_code == 302, f"/connect answered {answer.status_code}"
        location = answer.headers["location"]
        return Consent(user, browser, dict(parse_qsl(urlsplit(location).query))["state"])

    def browser_of(self, consent: Consent, where: str) -> str:
        return consent.browser if where == _OWN else where

    def arrive(self, consent: Consent, url: str, where: str) -> Redirect:
        redirect = Redirect(consent, url)
        self.callback(redirect, where)
        return redirect

    def callback(self, redirect: Redirect, where: str) -> None:
        """``redirect`` arrives at ``/callback`` in the browser ``where`` names."""
        browser = self.browser_of(redirect.consent, where)

        def get() -> httpx.Response:
            return self.send(browser, "GET", "/callback", params=_query_pairs(redirect.query))

        self.exchanged(redirect.consent, redirect.code, get)

    def post_code(self, redirect: Redirect) -> None:
        """The old mobile app posts ``redirect``'s code and state to ``/exchange-code``: never a
        403. It is never handed a widget install's code (amoCRM sends that to the server)."""
        consent = redirect.consent
        if consent.user == WIDGET:
            return
        fields = {"code": redirect.code, "state": consent.state}

        def post() -> httpx.Response:
            return self.send(consent.user, "POST", "/exchange-code", json=fields)

        answer = self.exchanged(consent, redirect.code, post)
        assert answer.status_code != 403, "/exchange-code answered 403"

    def exchanged(
        self, consent: Consent, code: str, call: Callable[[], httpx.Response]
    ) -> httpx.Response:
        """Make a request carrying ``code``: no 403 if it is a replay; the model follows an
        exchange it made (connected when amoCRM took the code, unknown when it refused it)."""
        replay = self.fake.token_calls_for(code) > 0
        taken = self.fake.token_call_count("authorization_code", "ok")
        answer = call()
        assert not (replay and answer.status_code == 403), (
            "a replayed code (one amoCRM already saw) was answered 403"
        )
        if not replay and self.fake.token_calls_for(code) > 0:
            took = self.fake.token_call_count("authorization_code", "ok") > taken
            self.connected[consent.user] = True if took else None
            if took:
                self.revoked.discard(consent.user)
        return answer

    def send(self, browser: str, method: str, path: str, **options: Any) -> httpx.Response:
        """One request to the app in ``browser``, with its sign-in headers; never a 5xx, and
        no secret in the answer."""
        headers = {**self.headers[browser], **options.pop("headers", {})}
        answer = self.browsers[browser].request(
            method, self.prefix + path, headers=headers, **options
        )
        assert answer.status_code < 500, f"{method} {path} answered {answer.status_code}"
        assert answer.status_code != 404, self.not_mounted(method, path)
        self.check_no_secret(answer, f"{method} {path}")
        return answer

    def not_mounted(self, method: str, path: str) -> str:
        """Why a route of amo_oauth answered 404: not mounted where the machine looks."""
        return (
            f"{method} {self.prefix}{path} answered 404: the machine looks for amo_oauth's "
            f"routes beside the redirect URI's /callback ({self.redirect_uri}); if your app "
            "mounts them elsewhere, pass run_invariants(..., redirect_uri=...) with its "
            "callback URL"
        )

    def check_no_secret(self, answer: httpx.Response, what: str) -> None:
        said = "\n".join([answer.text, *(f"{k}: {v}" for k, v in answer.headers.multi_items())])
        codes, tokens = _issued(self.fake)
        named = {
            "the client secret": {self.fake.client_secret},
            "the state secret": {self.state_secret},
            "a code": codes,
            "a token": tokens,
        }
        for kind, values in named.items():
            assert not any(value in said for value in values), f"{what}'s answer holds {kind}"


def _hook_disagrees(said: Mapping[str, Any], gone: set[str]) -> str:
    """Why a checked hook's count is not the model's (``gone``: the connections holding tokens
    the uninstall revoked). The model takes tokens amoCRM issued for a code during a request
    as the app's connection's (its /status, checked after each step, says so for a user; a
    widget install has none), so more disconnected than expected most often means tokens that
    never reached amo_oauth: the app sent a code itself."""
    expected = f"expected {len(gone)} ({', '.join(sorted(gone)) or 'none'} held revoked tokens)"
    if said["disconnected"] > len(gone):
        return (
            f"the hook disconnected more connections than held revoked tokens: it answered "
            f"{said}, {expected}; did tokens amoCRM issued for a code during a request not "
            "reach amo_oauth (the app sent the code itself), or did the hook end live tokens?"
        )
    return f"the hook left connections holding revoked tokens: it answered {said}, {expected}"


def _issued(fake: FakeAmoCRM) -> tuple[set[str], set[str]]:
    """Every code, and every access and refresh token, the fake issued so far."""
    core = fake._core
    with core.lock:
        grants = core.grants
        return set(grants.codes), set(grants.access) | set(grants.refresh)


def _config_for(fake: FakeAmoCRM, state_secret: str, *, widget_installs: bool) -> Config:
    many = 1_000_000
    return Config(
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        redirect_uri=fake.redirect_uri,
        state_secret=state_secret,
        authorize_url=f"https://{fake.consent_host}/oauth",
        api_rate=None,
        hook_check_interval=timedelta(milliseconds=1),
        max_exchanges_per_connection=many,
        max_exchanges_per_host=many,
        max_exchanges_per_process=many,
        max_exchanges_per_source=many,
        allow_widget_installs=widget_installs,
        max_widget_exchanges=many,
        max_widget_exchanges_per_host=many,
    )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _query(url: str) -> list[tuple[str, str]]:
    return _query_pairs(urlsplit(url).query)


def _query_pairs(query: str) -> list[tuple[str, str]]:
    return parse_qsl(query, keep_blank_values=True)


def machine_for(
    make_app: AppFactory,
    sign_in: SignIn,
    *,
    redirect_uri: str = DEFAULT_REDIRECT_URI,
    widget_installs: bool = True,
) -> type[BackendMachine]:
    """The ``BackendMachine`` over your hooks (the arguments as for ``run_invariants``):
    ``machine_for(...).TestCase`` is a test class (give it ``.settings``), or subclass it to
    add rules."""
    hooks = {
        "make_app": staticmethod(make_app),
        "sign_in": staticmethod(sign_in),
        "redirect_uri": redirect_uri,
        "widget_installs": widget_installs,
    }
    return type("YourBackend", (BackendMachine,), hooks)


#: What ``run_invariants`` runs unless given ``settings``: a few seconds on one core for a
#: backend like the examples'. One failure is reported (the first found, shrunk), not an
#: ExceptionGroup of every distinct one: shrinking each of them multiplies the wait.
DEFAULT_SETTINGS = hypothesis_settings(
    max_examples=20,
    stateful_step_count=25,
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

#: How long hypothesis may shrink a failure (seconds; its own bound is 300): after it, hypothesis
#: reports the shortest sequence of steps found so far.
SHRINK_SECONDS = 20


def run_invariants(
    make_app: AppFactory,
    sign_in: SignIn,
    *,
    settings: hypothesis_settings | None = None,
    redirect_uri: str = DEFAULT_REDIRECT_URI,
    widget_installs: bool = True,
    shrink_seconds: float = SHRINK_SECONDS,
) -> None:
    """Run the invariant machine against your app.

    Args:
        make_app: given a ``FakeSettings``, return your ASGI or WSGI app (a fresh one, with a
            fresh store, per call: each example starts from nothing).
        sign_in: given a ``Browser`` and a user id, sign the user in; the headers to send.
        settings: hypothesis settings (``max_examples``, ``stateful_step_count``); default
            ``DEFAULT_SETTINGS``.
        redirect_uri: where the app is reached and amoCRM redirects back; amo_oauth's routes
            are the siblings of its ``/callback``. The default's host is ``backend.example``
            (Django: add it to ``ALLOWED_HOSTS``).
        widget_installs: whether ``amo.config`` allows widget installs (``from_widget=1``,
            protocol notes §2) and the machine sends them; False when your app refuses them.
        shrink_seconds: the bound on shrinking a failure, in seconds.

    Raises:
        AssertionError: an invariant broke (or your app raised it): the first failure found,
            with the shortest sequence of steps found within ``shrink_seconds``; any other
            distinct failure (``report_multiple_bugs=True``) is named in its notes.
        Exception: what your app or hooks raised, as they raised it.
    """
    machine = machine_for(
        make_app, sign_in, redirect_uri=redirect_uri, widget_installs=widget_installs
    )
    try:
        with _shrinking_for(shrink_seconds):
            # Typed in later hypothesis releases, not at the testing extra's floor.
            run_state_machine_as_test(  # type: ignore[no-untyped-call, unused-ignore]
                machine, settings=settings or DEFAULT_SETTINGS
            )
    except BaseExceptionGroup as failures:
        raise _first_of(failures) from None


@contextlib.contextmanager
def _shrinking_for(seconds: float) -> Iterator[None]:
    """Bound hypothesis's shrink phase: it reads this bound (a module constant, 300 s, with no
    setting for it) when it starts shrinking."""
    bound = "MAX_SHRINKING_SECONDS"
    before = getattr(hypothesis_engine, bound, None)
    if before is None:  # a hypothesis without it: its own bound holds
        yield
        return
    setattr(hypothesis_engine, bound, seconds)
    try:
        yield
    finally:
        setattr(hypothesis_engine, bound, before)


def _first_of(failures: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first of several distinct failures, the others named in its notes."""
    first, *others = failures.exceptions
    for other in others:
        said = str(other).splitlines()[0] if str(other) else ""
        first.add_note(f"also failing: {type(other).__name__}: {said}")
    return first
