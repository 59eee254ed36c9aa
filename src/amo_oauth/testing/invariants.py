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
from collections.abc import Callable, Mapping
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
    from hypothesis.stateful import (
        Bundle,
        RuleBasedStateMachine,
        invariant,
        rule,
        run_state_machine_as_test,
    )

__all__ = [
    "DEFAULT_REDIRECT_URI",
    "DEFAULT_SETTINGS",
    "USERS",
    "BackendMachine",
    "Browser",
    "FakeSettings",
    "HookQuery",
    "forged_states",
    "hook_queries",
    "machine_for",
    "run_invariants",
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
    return shapes.filter(lambda forged: forged != state and forged.strip() != "")


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


def _hmac_hex(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@attrs.frozen
class Consent:
    """A consent begun for ``user`` in ``browser``: the state ``/connect`` sent it to amoCRM
    with. The browser is the user's own, or the signed-out one for a mobile app's ticket."""

    user: str
    browser: str
    state: str = attrs.field(repr=False)


@attrs.frozen
class Redirect:
    """amoCRM's redirect back with a code (the query, kept for replays)."""

    consent: Consent
    query: str = attrs.field(repr=False)
    code: str = attrs.field(repr=False)


class BackendMachine(RuleBasedStateMachine):
    """The machine; ``run_invariants`` makes and runs one for your hooks. Subclass the class
    it runs (``machine_for``) to add rules of your own."""

    make_app: ClassVar[AppFactory]
    sign_in: ClassVar[SignIn]
    redirect_uri: ClassVar[str] = DEFAULT_REDIRECT_URI

    consents = Bundle("consents")
    redirects = Bundle("redirects")

    def __init__(self) -> None:
        super().__init__()
        fake = FakeAmoCRM(
            client_secret=secrets.token_urlsafe(24), redirect_uri=self.redirect_uri, rate_limit=None
        )
        self.state_secret = secrets.token_urlsafe(32)
        self.amo = FakeSettings(fake, _config_for(fake, self.state_secret))
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
        #: Whether each user's status must say connected (None: not known after a failed
        #: exchange, which the machine does not predict).
        self.connected: dict[str, bool | None] = dict.fromkeys(USERS, False)
        #: Users whose tokens an uninstall revoked at the fake since they last connected.
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

    @rule(target=redirects, user=st.sampled_from(USERS))
    def consent_in_full(self, user: str) -> Redirect:
        """The common path in one step: ``/connect``, "Allow", back in the same browser."""
        consent = self.begin(user)
        return self.arrive(consent, self.fake.authorize(consent.state), _OWN)

    @rule(target=redirects, consent=consents, where=_WHERE)
    def allow(self, consent: Consent, where: str) -> Redirect:
        """ "Allow" pressed: amoCRM redirects a browser back with a code."""
        return self.arrive(consent, self.fake.authorize(consent.state), where)

    @rule(target=redirects, redirect=redirects, where=_WHERE)
    def second_code(self, redirect: Redirect, where: str) -> Redirect:
        """Another code under a consent that already brought one back."""
        return self.arrive(redirect.consent, self.fake.authorize(redirect.consent.state), where)

    @rule(redirect=redirects, where=_WHERE)
    def replay(self, redirect: Redirect, where: str) -> None:
        """The same redirect URL again (a reload, a back button, a prefetch, a copied link)."""
        self.callback(redirect.consent, redirect.query, redirect.code, where)

    @rule(redirect=redirects)
    def legacy_post(self, redirect: Redirect) -> None:
        """The old mobile app posts the code (and state) it was handed: never a 403."""
        user, consent = redirect.consent.user, redirect.consent
        fields = {"code": redirect.code, "state": consent.state}

        def post() -> httpx.Response:
            return self.send(user, "POST", "/exchange-code", json=fields)

        answer = self.exchanged(consent, redirect.code, post)
        assert answer.status_code != 403, "/exchange-code answered 403"

    @rule(consent=consents, where=_WHERE)
    def deny(self, consent: Consent, where: str) -> None:
        """ "Deny" pressed: amoCRM redirects back with ``error=access_denied``."""
        self.send(
            self.browser_of(consent, where),
            "GET",
            "/callback",
            params=_query(self.fake.deny(consent.state)),
        )

    @rule(consent=consents, data=st.data())
    def forge(self, consent: Consent, data: st.DataObject) -> None:
        """A redirect whose state nobody signed, with a fresh code: refused, never sent."""
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
            self.fake.uninstall()
            self.revoked = {user for user in USERS if self.connected[user] is not False}
        else:
            self.hook(data.draw(hook_queries(self.fake), label="hook"))

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
            assert said["disconnected"] == len(gone), f"the hook answered {said}"
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
        query = urlsplit(url).query
        code = dict(parse_qsl(query))["code"]
        self.callback(consent, query, code, where)
        return Redirect(consent, query, code)

    def callback(self, consent: Consent, query: str, code: str, where: str) -> None:
        browser = self.browser_of(consent, where)

        def get() -> httpx.Response:
            return self.send(browser, "GET", "/callback", params=_query_pairs(query))

        self.exchanged(consent, code, get)

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
        self.check_no_secret(answer, f"{method} {path}")
        return answer

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


def _issued(fake: FakeAmoCRM) -> tuple[set[str], set[str]]:
    """Every code, and every access and refresh token, the fake issued so far."""
    core = fake._core
    with core.lock:
        grants = core.grants
        return set(grants.codes), set(grants.access) | set(grants.refresh)


def _config_for(fake: FakeAmoCRM, state_secret: str) -> Config:
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
    )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _query(url: str) -> list[tuple[str, str]]:
    return _query_pairs(urlsplit(url).query)


def _query_pairs(query: str) -> list[tuple[str, str]]:
    return parse_qsl(query, keep_blank_values=True)


def machine_for(
    make_app: AppFactory, sign_in: SignIn, *, redirect_uri: str = DEFAULT_REDIRECT_URI
) -> type[BackendMachine]:
    """The ``BackendMachine`` over your hooks: ``machine_for(...).TestCase`` is a test class
    (give it ``.settings``), or subclass it to add rules."""
    hooks = {
        "make_app": staticmethod(make_app),
        "sign_in": staticmethod(sign_in),
        "redirect_uri": redirect_uri,
    }
    return type("YourBackend", (BackendMachine,), hooks)


#: What ``run_invariants`` runs unless given ``settings``: about 10 s on one core for a
#: backend like the examples'.
DEFAULT_SETTINGS = hypothesis_settings(
    max_examples=20,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def run_invariants(
    make_app: AppFactory,
    sign_in: SignIn,
    *,
    settings: hypothesis_settings | None = None,
    redirect_uri: str = DEFAULT_REDIRECT_URI,
) -> None:
    """Run the invariant machine against your app; raises (AssertionError, or what your app
    raised) with the shortest sequence of steps that breaks an invariant.

    Args:
        make_app: given a ``FakeSettings``, return your ASGI or WSGI app (a fresh one, with a
            fresh store, per call: each example starts from nothing).
        sign_in: given a ``Browser`` and a user id, sign the user in; the headers to send.
        settings: hypothesis settings (``max_examples``, ``stateful_step_count``); default
            ``DEFAULT_SETTINGS``.
        redirect_uri: where the app is reached and amoCRM redirects back; amo_oauth's routes
            are the siblings of its ``/callback``. The default's host is ``backend.example``
            (Django: add it to ``ALLOWED_HOSTS``).
    """
    machine = machine_for(make_app, sign_in, redirect_uri=redirect_uri)
    run_state_machine_as_test(machine, settings=settings or DEFAULT_SETTINGS)
