"""Issue 24 §3: hypothesis over every input the routes read and every answer amoCRM can give.

Driven in-process through ``Handlers`` (no server per example). Each suite keeps real pieces
(a signed state, a real code, the browser's binding, a validly signed hook) among arbitrary
ones, so examples reach past the first check. Invariants, for every input: no 5xx, no
unhandled exception, every refusal (and every error a page's deep link names) a documented
reason (docs/reasons.md), no secret in the answer, never two token calls with one code.

Budgets: ``examples(500)`` each (500 under the ``ci`` profile, 10,000 under ``full``:
``python3 tasks.py full``).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast
from urllib.parse import quote, urlencode

import attrs
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _fuzz_kit import DOCUMENTED, CountingTransport, check_answer
from amo_oauth import (
    AmoOAuth,
    ButtonMetadata,
    MemoryStore,
    ProviderError,
    ReauthorizationRequired,
    TryAgainLater,
)
from amo_oauth._callback import _MAX_VALUE as MAX_VALUE
from amo_oauth._hook import hook_signature
from amo_oauth._reasons import NOT_CONNECTED, RETRY_LATER
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.testing.faults import FaultyTransport
from amo_oauth.web import Handlers, Request, Response
from test_web import PREFIX, USER, user_from_header

from helpers import STATE_SECRET, config_for, examples, query_of, stored

pytestmark = pytest.mark.proof

T = TypeVar("T")

BUDGET = settings(
    max_examples=examples(500),
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # one service per test, shared by its examples
    ],
)
#: The binding cookie: the fake's redirect URI is https (``make_rig`` checks).
COOKIE = "__Host-amo_oauth_binding"

# -- the service under test ---------------------------------------------------------------------


@attrs.define
class Rig:
    """A service on the fake, its routes, and what counts the codes it sends."""

    fake: FakeAmoCRM
    clock: FakeClock
    oauth: AmoOAuth
    handlers: Handlers
    faults: FaultyTransport
    counting: CountingTransport
    users: Iterator[int] = attrs.field(factory=itertools.count)
    #: What a test keeps from one example to the next (a stale consent, a connected user).
    kept: dict[str, Any] = attrs.field(factory=dict)

    def send(self, request: Request, secrets: list[str]) -> tuple[Response, str | None]:
        response = self.handlers.handle(request)
        reason = check_answer(response.status, list(response.headers), response.body, secrets)
        self.counting.assert_once_each()
        return response, reason

    def secrets(self, *more: str) -> list[str]:
        """What no answer may show: the client secret, the state secret, every code sent, the
        tokens of the user most examples are about."""
        record = stored(self.oauth, USER)
        tokens = record.tokens if record is not None else None
        held = [tokens.access_token, tokens.refresh_token or ""] if tokens is not None else []
        return [self.fake.client_secret, STATE_SECRET, *self.counting.sent, *held, *more]

    def keep(self, name: str, make: Callable[[], T]) -> T:
        """What ``make`` made for this test's first example, made once."""
        if name not in self.kept:
            self.kept[name] = make()
        return cast(T, self.kept[name])

    def new_user(self) -> str:
        return f"fuzz-{next(self.users)}"


def make_rig(fake: FakeAmoCRM, clock: FakeClock, **config: Any) -> Rig:
    faults = FaultyTransport(fake.transport())
    counting = CountingTransport(faults)
    # No pace on the one account host all examples share: 7 calls a second would be the cost.
    settings_ = {"settle_timeout": 0.01, "api_rate": None, **config}
    oauth = AmoOAuth(
        config_for(fake, **settings_),
        store=MemoryStore(clock=clock),
        http=httpx.Client(transport=counting),
        clock=clock,
    )
    button = ButtonMetadata("Fuzz", "Fuzzed") if "secrets_uri" in config else None
    handlers = Handlers(oauth, connection_id=user_from_header, app_scheme="foryoure", button=button)
    assert handlers.cookie_name == COOKIE
    return Rig(fake, clock, oauth, handlers, faults, counting)


@pytest.fixture
def rig(fake: FakeAmoCRM, clock: FakeClock) -> Iterator[Rig]:
    made = make_rig(fake, clock)
    yield made
    made.oauth.close()


def consent(rig: Rig, user: str = USER) -> tuple[dict[str, str], str | None]:
    """Begin for ``user`` and press "Allow": the redirect's query and the browser's binding."""
    begun = rig.oauth.begin(user)
    return query_of(rig.fake.authorize(begun.state)), begun.binding


def connected(rig: Rig, user: str) -> dict[str, str]:
    """A connection made through the callback route: its redirect's query."""
    query, binding = consent(rig, user)
    request = Request("GET", f"{PREFIX}/callback", query, [("cookie", f"{COOKIE}={binding}")])
    rig.send(request, rig.secrets())
    assert rig.oauth.status(user).is_connected
    return query


# -- arbitrary text, bytes and percent-encoding ----------------------------------------------------

texts = st.text(max_size=40)
#: Values a filter may trip on: controls, surrogate-free unicode, percent signs, huge.
wild_values = st.one_of(
    texts,
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.sampled_from(["", "%", "%zz", "%ff", "%00", "\x00", "a" * 5_000, "../..", "\u202e"]),
    st.integers().map(str),
)


def percent_bytes(raw: bytes) -> str:
    """Bytes as a query value: every byte percent-encoded (so invalid UTF-8 arrives as sent)."""
    return "".join(f"%{byte:02X}" for byte in raw)


cookie_headers = st.one_of(
    st.none(),
    st.just("{binding}"),
    st.just(f"{COOKIE}={{binding}}; {COOKIE}={{binding}}"),  # sent twice: read as none
    st.just(f"\xa0{COOKIE}={{binding}}"),  # a near name a sibling subdomain can plant
    st.just(f'{COOKIE}="{{binding}}"'),
    texts.map(lambda value: f"{COOKIE}={value}"),
    st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=60),
)


def cookie_of(template: str | None, binding: str | None) -> list[tuple[str, str]]:
    if template is None:
        return []
    if template == "{binding}":
        template = f"{COOKIE}={{binding}}"
    return [("cookie", template.replace("{binding}", binding or ""))]


# -- 1. the callback's raw query ------------------------------------------------------------------

CALLBACK_KEYS = [
    "code",
    "state",
    "referer",
    "client_id",
    "from_widget",
    "error",
    "lang",
    "platform",
]


@BUDGET
@given(
    fresh=st.booleans(),
    shape=st.none() | st.binary(max_size=60),
    extra=st.lists(st.tuples(st.sampled_from(CALLBACK_KEYS) | texts, wild_values), max_size=3),
    whole=st.none() | st.none() | st.binary(max_size=200),
    cookie=cookie_headers,
    user=st.none() | st.sampled_from([USER, "someone-else"]) | texts,
)
def test_the_callback_query(
    rig: Rig,
    fresh: bool,
    shape: bytes | None,
    extra: list[tuple[str, str]],
    whole: bytes | None,
    cookie: str | None,
    user: str | None,
) -> None:
    """A real signed state and a real code (mutated by ``shape``, with ``extra`` pairs: huge,
    unicode, repeated names), in the browser that began (or not); or arbitrary bytes for the
    whole query."""
    query, binding = consent(rig) if fresh else rig.keep("stale", lambda: consent(rig))
    raw = _callback_query(query, shape) + (("&" + urlencode(extra)).encode() if extra else b"")
    raw = raw if whole is None else whole
    headers = cookie_of(cookie, binding) + ([("x-user", user)] if user is not None else [])
    before = rig.counting.exchanges()
    secrets = rig.secrets(query["code"], binding or "")
    rig.send(Request("GET", f"{PREFIX}/callback", raw, headers), secrets)
    assert rig.counting.exchanges() - before <= 1


def _callback_query(query: dict[str, str], shape: bytes | None) -> bytes:
    """The real redirect's query (``shape`` None), or it mutated by ``shape``'s bytes: a
    deterministic mutation, so hypothesis shrinks the bytes and the example replays."""
    if shape is None:
        return urlencode(query).encode()
    return _mutate(query, shape)


def _mutate(query: dict[str, str], shape: bytes) -> bytes:
    """Drop, repeat or garble the real pairs as ``shape``'s bytes say; junk after them."""
    pairs = list(query.items())
    out: list[str] = []
    for index, (key, value) in enumerate(pairs):
        op = shape[index] % 6 if index < len(shape) else 0
        if op == 1:
            continue  # dropped
        if op == 2:
            out.append(f"{key}={quote(value)}")  # repeated, the same value
        if op == 3:
            value = value[: len(value) // 2]  # cut short
        if op == 4:
            value = value + percent_bytes(shape[index:])  # bytes, maybe not UTF-8
        if op == 5:
            key = key.upper()
        out.append(f"{quote(key)}={value if op == 4 else quote(value)}")
    junk = shape[len(pairs) :]
    return "&".join(out).encode() + (b"&" + junk if junk else b"")


# -- 2. the legacy exchange-code body -------------------------------------------------------------


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts, _containers, max_leaves=6
)


OTHER_MEDIA = [
    "application/json; charset=latin-1",
    "application/problem+json",
    "text/plain",
    "multipart/form-data; boundary=x",
]


@st.composite
def code_bodies(draw: st.DrawFn, real: dict[str, str]) -> tuple[str, bytes]:
    """A content type and a body: the real fields, or some of them, with wrong types,
    repeated names, arbitrary bytes, as JSON, a form or anything else."""
    fields: dict[str, Any] = {
        key: real[key] for key in ("code", "state", "referer") if draw(st.integers(0, 4)) > 0
    }
    for key in draw(st.lists(st.sampled_from(["code", "state", "referer"]) | texts, max_size=2)):
        fields[key] = draw(json_values | wild_values)
    kind = draw(
        st.sampled_from(["json", "json", "form", "form", "json-twice", "form-twice", "bytes"])
    )
    if kind == "json":
        body = json.dumps(fields).encode()
    elif kind == "json-twice":  # a repeated member: json.loads would keep the last one
        first = json.dumps(draw(texts))
        body = ('{"code": ' + first + ", " + json.dumps(fields)[1:]).encode()
    elif kind == "form":
        body = urlencode({key: str(value) for key, value in fields.items()}).encode()
    elif kind == "form-twice":
        body = (urlencode(fields) + "&code=" + quote(draw(texts))).encode()
    else:
        body = draw(st.binary(max_size=80))
    # Mostly the type that matches the body, so most examples reach the route's logic.
    matching = (
        "application/json" if kind.startswith("json") else "application/x-www-form-urlencoded"
    )
    media = draw(st.sampled_from([matching] * 6 + OTHER_MEDIA) | texts)
    return media, body


@BUDGET
@given(data=st.data(), length=st.none() | st.integers(-1, 10**9).map(str) | texts)
def test_the_legacy_exchange_code_body(rig: Rig, data: st.DataObject, length: str | None) -> None:
    """The route answers known codes only: whatever the body, it never sends a code."""
    real = rig.keep("real", lambda: connected(rig, USER))
    fresh, _ = consent(rig)  # a code the route must refuse (new_code_refused), never send
    source = data.draw(st.sampled_from([real, fresh]))
    media, body = data.draw(code_bodies(source))
    headers = [("x-user", USER), ("content-type", media)]
    if length is not None:  # a Content-Length that lies: the handlers read the body given
        headers.append(("content-length", length))
    before = rig.counting.exchanges()
    rig.send(Request("POST", f"{PREFIX}/exchange-code", b"", headers, body), rig.secrets())
    assert rig.counting.exchanges() == before


# -- 3. amoCRM's disconnect hook ------------------------------------------------------------------

HOOK_KEYS = ["account_id", "client_uuid", "signature"]


@BUDGET
@given(
    shape=st.none() | st.binary(max_size=40),
    extra=st.lists(st.tuples(st.sampled_from(HOOK_KEYS) | texts, wild_values), max_size=3),
)
def test_the_disconnect_hook_query(
    rig: Rig, shape: bytes | None, extra: list[tuple[str, str]]
) -> None:
    """Exactly the signed pairs are answered 200, whatever else comes with them (no name
    twice); anything else is refused, and only a 200 disconnects."""
    user = rig.keep("hooked", rig.new_user)
    if not rig.oauth.status(user).is_connected:
        connected(rig, user)
    fake = rig.fake
    hook = {"client_uuid": fake.client_id, "account_id": str(fake.account_id)}
    hook["signature"] = hook_signature(fake.client_id, fake.client_secret, fake.account_id)
    raw = urlencode(hook).encode() if shape is None else _mutate(hook, shape)
    raw += ("&" + urlencode(extra)).encode() if extra else b""
    request = Request("GET", f"{PREFIX}/disconnect-hook", raw)
    response, _ = rig.send(request, rig.secrets())
    answer = json.loads(response.body)
    if response.status == 200:
        assert answer["reason"] is None or answer["reason"] in DOCUMENTED
    names = [name for name, _ in request.query]
    signed = sorted(pair for pair in request.query if pair[0] in HOOK_KEYS)
    # Each name once (which of two values would be meant?), no value over the bound or with
    # a NUL in it (single_values), and the three exactly as signed.
    plain = all(len(value) <= MAX_VALUE and "\x00" not in value for _, value in request.query)
    exact = signed == sorted(hook.items()) and len(set(names)) == len(names) and plain
    if response.status != 414:  # a query larger than the routes read is refused first
        assert (response.status == 200) == exact, response.status
    disconnected = not rig.oauth.status(user).is_connected
    assert disconnected == (response.status == 200 and answer["disconnected"] > 0)


# -- 4. amoCRM's post to secrets_uri (metadata mode) -----------------------------------------------

SECRETS_URI = "https://backend.example/api/amo-crm/secrets"


@pytest.fixture
def site(fake: FakeAmoCRM, clock: FakeClock) -> Iterator[Rig]:
    made = make_rig(fake, clock, client_id="site", client_secret=None, secrets_uri=SECRETS_URI)
    yield made
    made.oauth.close()


def button_state(rig: Rig, user: str) -> str:
    page = rig.handlers.handle(Request("GET", f"{PREFIX}/connect", headers={"x-user": user}))
    found = re.search(r'data-state="([^"]+)"', page.text)
    assert page.status == 200 and found is not None, page.status
    return found.group(1)


@BUDGET
@given(data=st.data())
def test_the_secrets_post(site: Rig, data: st.DataObject) -> None:
    """Every refusal is 403 (or 413/414/415 for the body itself) with a documented reason; the
    posted secret is never shown."""
    state = button_state(site, site.new_user())
    secret = "posted-secret-" + "x" * 20
    real = {"client_id": "per-account-id", "client_secret": secret, "state": state}
    media, body = data.draw(_secrets_bodies(real))
    headers = [("content-type", media), *data.draw(_browser_headers)]
    request = Request("POST", f"{PREFIX}/secrets", b"", headers, body)
    response, _ = site.send(request, site.secrets(secret))
    assert response.status in (200, 403, 413, 414, 415), response.status


@st.composite
def _secrets_bodies(draw: st.DrawFn, real: dict[str, str]) -> tuple[str, bytes]:
    media, body = draw(code_bodies({"code": "", "state": real["state"], "referer": ""}))
    if draw(st.booleans()):  # the real three fields, some replaced, as JSON or a form
        fields: dict[str, Any] = dict(real)
        for key in draw(st.lists(st.sampled_from(list(real)), max_size=2)):
            fields[key] = draw(json_values | wild_values)
        as_json = draw(st.booleans())
        media = "application/json" if as_json else "application/x-www-form-urlencoded"
        body = json.dumps(fields).encode() if as_json else urlencode(fields).encode()
    return media, body


# -- 5. cookies and headers, on every route --------------------------------------------------------

ORIGINS = [
    "https://backend.example",
    "https://evil.example",
    "null",
    "",
    "https://backend.example:443",
]
_browser_headers = st.lists(
    st.tuples(
        st.sampled_from(
            ["origin", "referer", "sec-fetch-site", "accept", "accept-language", "content-length",
             "x-forwarded-for", "forwarded", "host", "cookie"]
        ),
        st.sampled_from([*ORIGINS, "same-origin", "cross-site", "none", "application/json",
                         "https://evil.example/page", "https://backend.example/x"])
        | st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=40),
    ),
    max_size=5,
)  # fmt: skip


@BUDGET
@given(
    route=st.sampled_from(["connect", "callback", "exchange-code", "status", "disconnect"]),
    headers=_browser_headers,
    cookie=cookie_headers,
)
def test_cookies_and_headers(
    rig: Rig, route: str, headers: list[tuple[str, str]], cookie: str | None
) -> None:
    """A browser POST from another site never gets through."""
    query, binding = consent(rig)
    method = "POST" if route in ("exchange-code", "disconnect") else "GET"
    body = json.dumps(query).encode() if route == "exchange-code" else b""
    sent = [("x-user", USER), ("content-type", "application/json"), *headers]
    sent += cookie_of(cookie, binding)
    raw = urlencode(query) if route == "callback" else ""
    request = Request(method, f"{PREFIX}/{route}", raw, sent, body)
    # /connect in the browser that began keeps (and sets again) its binding, by design.
    shown_binding = "" if route == "connect" else binding or ""
    response, reason = rig.send(request, rig.secrets(query["code"], shown_binding))
    if method == "POST" and _foreign(request):
        assert response.status >= 400 and reason == "cross_site_request", response.status


def _foreign(request: Request) -> bool:
    """A cross-site browser POST by its first Origin and Sec-Fetch-Site (as browsers send)."""
    origin, site = request.header("origin"), request.header("sec-fetch-site")
    return (
        origin is not None
        and origin.lower() != "https://backend.example"
        and site
        not in (
            "same-origin",
            "none",
        )
    )


# -- 6. every answer amoCRM can give ---------------------------------------------------------------

STATUSES = [200, 201, 204, 301, 400, 401, 403, 404, 429, 500, 502, 503, 504]


@st.composite
def provider_answers(draw: st.DrawFn, good: dict[str, Any]) -> Callable[[], httpx.Response]:
    """A token or account answer: the good one with fields changed or dropped, any JSON, any
    bytes; under any status and content type."""
    # 200 often (a third at least): a success's body is where most reading happens.
    status = draw(st.just(200) | st.sampled_from(STATUSES) | st.integers(100, 599))
    kind = draw(st.sampled_from(["good", "changed", "json", "bytes"]))
    body: bytes
    if kind in ("good", "changed"):
        fields = dict(good)
        if kind == "changed":
            for key in draw(st.lists(st.sampled_from(list(good)) | texts, max_size=3)):
                if draw(st.booleans()):
                    fields.pop(key, None)
                else:
                    fields[key] = draw(json_values)
        body = json.dumps(fields).encode()
    elif kind == "json":
        body = json.dumps(draw(json_values)).encode()
    else:
        body = draw(st.binary(max_size=200))
    media = draw(st.sampled_from(["application/json", "application/problem+json", "text/html"]))
    headers = {"content-type": media}
    if draw(st.booleans()):
        headers["retry-after"] = draw(st.sampled_from(["1", "-5", "soon", "99999999999"]))
    return lambda: httpx.Response(status, headers=headers, content=body)


ACCESS = "fuzz-access-token-0123456789"
REFRESH = "fuzz-refresh-token-0123456789"
TOKEN_GOOD = {
    "token_type": "Bearer",
    "expires_in": 86400,
    "access_token": ACCESS,
    "refresh_token": REFRESH,
}


@BUDGET
@given(data=st.data(), target=st.sampled_from(["token", "account"]))
def test_provider_answers_to_the_exchange(rig: Rig, data: st.DataObject, target: str) -> None:
    """Whatever the token or account endpoint answers, the callback page is no 5xx with a
    documented reason, and a replay of the redirect never sends the code again."""
    user = rig.new_user()
    query, binding = consent(rig, user)
    if target == "token":
        rig.faults.answer(data.draw(provider_answers(TOKEN_GOOD)), grant="authorization_code")
    else:
        good = {"id": rig.fake.account_id, "name": "A", "subdomain": "test"}
        rig.faults.answer(data.draw(provider_answers(good)), path="/api/v4/account")
    headers = [("cookie", f"{COOKIE}={binding}"), ("x-user", user)]
    secrets = rig.secrets(query["code"], binding or "", ACCESS, REFRESH)
    for _ in range(2):  # the redirect, then its replay (a reload, the app's deep link)
        rig.send(Request("GET", f"{PREFIX}/callback", urlencode(query), headers), secrets)
    rig.faults.heal()
    assert rig.counting.sent[query["code"]] == 1


@BUDGET
@given(data=st.data())
def test_provider_answers_to_the_refresh(rig: Rig, data: st.DataObject) -> None:
    """Whatever the refresh answers: a token, or a documented error whose text shows no
    secret; and the routes still answer the connection's status."""
    user = rig.new_user()
    connected(rig, user)
    record = stored(rig.oauth, user)
    assert record is not None and record.tokens is not None
    rig.clock.advance(record.tokens.expires_at - rig.clock())
    rig.clock.advance(60)
    rig.faults.answer(data.draw(provider_answers(TOKEN_GOOD)), grant="refresh_token")
    secrets = rig.secrets(record.tokens.access_token, record.tokens.refresh_token or "")
    secrets += [ACCESS, REFRESH]
    failure: BaseException | None = None
    try:
        rig.oauth.access_token(user)
    except ProviderError as error:  # TryAgainLater is one
        failure = error
    except ReauthorizationRequired as error:
        failure = error
    if failure is not None:
        _check_failure(failure, secrets)
    rig.faults.heal()
    rig.send(Request("GET", f"{PREFIX}/status", headers={"x-user": user}), secrets)


def _check_failure(error: BaseException, secrets: list[str]) -> None:
    """A failed ``access_token()``: a documented reason, and no secret in what it shows."""
    if isinstance(error, ReauthorizationRequired):
        assert error.reason in NOT_CONNECTED and error.reason in DOCUMENTED
    if isinstance(error, TryAgainLater):
        assert error.reason in RETRY_LATER and error.reason in DOCUMENTED
    _no_secret_in(error, secrets)


def _no_secret_in(error: BaseException, secrets: list[str]) -> None:
    shown = f"{error}{error!r}{getattr(error, 'hint', '')}"
    assert not [secret for secret in secrets if secret and secret in shown]


def test_the_reasons_checked_are_documented() -> None:
    """The fuzzers' reason check has teeth: the documented set is the closed set, less none
    the routes give."""
    assert {"bad_state", "wrong_browser", "new_code_refused", "malformed"} <= DOCUMENTED
    assert "not_a_reason" not in DOCUMENTED
