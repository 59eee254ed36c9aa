"""Budgets one source cannot spend for another (issue 20, item 4).

Code exchanges count against their source (the signed-in user, else the client's address);
a source whose exchanges fail may fill only half of each shared bound, so an honest user's
first callback goes through while others flood; widget installs are bounded per account host
and in total, far below the process's bound; a replay of a code the ledger holds never counts
and is never refused; forwarded headers count only where the app opts in; every adapter hands
the web layer the peer's address.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from urllib.parse import urlencode

import attrs
import flask
import httpx
import pytest
from django.test import AsyncClient, Client, override_settings
from fastapi import FastAPI
from fastapi.testclient import TestClient

from amo_oauth import AmoOAuth, AsyncAmoOAuth, Config, MemoryStore, Widget
from amo_oauth._limits import Attempt, Bounds, ExchangeLimiter, Slot
from amo_oauth.django import urls
from amo_oauth.fastapi import router
from amo_oauth.flask import blueprint
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.web import Handlers, Request, Response
from amo_oauth.web._reading import address_network, client_address
from test_django import project

from helpers import config_for, query_of

PREFIX = "/api/amo-crm"
#: Config's own bounds (helpers.config_for lifts them for the rest of the suite).
DEFAULT_BOUNDS = {
    field.name: field.default
    for field in attrs.fields(Config)
    if field.name.startswith(("max_exchanges_", "max_widget_exchanges"))
}
ATTACKER = "203.0.113.66"
AMOCRM = "185.25.0.10"  # where genuine widget installs come from


def handlers_for(oauth: AmoOAuth) -> Handlers:
    return Handlers(oauth, connection_id=lambda r: r.header("x-user"), app_scheme="app")


def callback(
    handlers: Handlers,
    query: dict[str, str],
    *,
    peer: str | None = None,
    user: str | None = None,
    binding: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    sent = dict(headers or {})
    if user is not None:
        sent["x-user"] = user
    if binding is not None:
        sent["cookie"] = f"{handlers.cookie_name}={binding}"
    request = Request("GET", f"{PREFIX}/callback", urlencode(query), sent, peer=peer)
    return handlers.handle(request)


def junk_consent(oauth: AmoOAuth, fake: FakeAmoCRM, user: str, n: int) -> tuple[dict, str | None]:
    """A consent of ``user`` whose redirect carries a junk code for the user's own account."""
    begun = oauth.begin(user)
    query = query_of(fake.authorize(begun.state))
    return {**query, "code": f"junk-{user}-{n}", "referer": f"{user}.amocrm.ru"}, begun.binding


def junk_install(fake: FakeAmoCRM, n: int) -> dict[str, str]:
    install = query_of(fake.authorize(from_widget=True))
    return {**install, "code": f"junk-{n}", "referer": f"shop{n}.amocrm.ru"}


def test_32_flooding_accounts_leave_an_honest_users_first_callback_its_exchange(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """Issue 20.4: one attacker with 32 free accounts x 10 junk callbacks (300 exchanges)
    made an honest user's first callback rate_limited."""
    oauth = make_oauth(**DEFAULT_BOUNDS)
    handlers = handlers_for(oauth)
    statuses = []
    for account in range(32):
        user = f"attacker-{account}"
        for n in range(10):
            query, binding = junk_consent(oauth, fake, user, n)
            statuses.append(callback(handlers, query, peer=ATTACKER, user=user, binding=binding))
    sent = fake.token_call_count("authorization_code")
    # Each account's first junk code is its only clean one; the rest share half the process.
    assert sent <= 32 + 300 // 2
    assert [answer.status for answer in statuses].count(429) == 320 - sent
    begun = oauth.begin("honest")
    query = query_of(fake.authorize(begun.state))
    answer = callback(handlers, query, peer="198.51.100.7", user="honest", binding=begun.binding)
    assert answer.status == 200 and oauth.status("honest").is_connected


def test_160_junk_widget_installs_from_one_address_make_10_token_calls(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """Issue 20.4: 160 anonymous installs with junk codes on 160 hosts made 150 token calls
    carrying the client secret, and a real widget install then got 429 for 10 minutes."""
    oauth = make_oauth(allow_widget_installs=True, **DEFAULT_BOUNDS)
    handlers = handlers_for(oauth)
    answers = [callback(handlers, junk_install(fake, n), peer=ATTACKER) for n in range(160)]
    assert fake.token_call_count("authorization_code") == 10  # max_exchanges_per_source
    assert [answer.status for answer in answers].count(429) == 150
    genuine = query_of(fake.authorize(from_widget=True))  # from amoCRM's servers
    assert callback(handlers, genuine, peer=AMOCRM).status == 200
    assert fake.token_call_count("authorization_code", "ok") == 1


def test_160_junk_widget_installs_from_160_addresses_are_bounded_in_total(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """Every install from its own address: installs are told apart by nothing, so they are
    bounded in total (max_widget_exchanges, 30: a tenth of the process's bound). A genuine one
    in the same window is refused, with nothing written: the same redirect works after it."""
    oauth = make_oauth(
        allow_widget_installs=True, **DEFAULT_BOUNDS, exchange_window=timedelta(seconds=1)
    )
    handlers = handlers_for(oauth)
    for n in range(160):
        callback(handlers, junk_install(fake, n), peer=f"10.0.{n // 250}.{n % 250}")
    assert fake.token_call_count("authorization_code") == 30
    genuine = query_of(fake.authorize(from_widget=True))
    assert callback(handlers, genuine, peer=AMOCRM).status == 429
    time.sleep(1.05)
    assert callback(handlers, genuine, peer=AMOCRM).status == 200
    # The app's own users were never short of an exchange meanwhile.
    begun = oauth.begin("ann")
    query = query_of(fake.authorize(begun.state))
    assert callback(handlers, query, user="ann", binding=begun.binding).status == 200


def test_one_host_takes_few_widget_installs_from_one_address(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make_oauth(allow_widget_installs=True, **DEFAULT_BOUNDS)
    handlers = handlers_for(oauth)
    for n in range(20):
        install = {**junk_install(fake, n), "referer": "shop.amocrm.ru"}
        callback(handlers, install, peer=ATTACKER)
    assert fake.token_call_count("authorization_code") == 3  # max_widget_exchanges_per_host


def test_junk_installs_on_one_host_from_many_addresses_are_bounded_in_total(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make_oauth(allow_widget_installs=True, **DEFAULT_BOUNDS)
    handlers = handlers_for(oauth)
    for n in range(40):
        install = {**junk_install(fake, n), "referer": "shop.amocrm.ru"}
        callback(handlers, install, peer=f"10.1.0.{n}")
    assert fake.token_call_count("authorization_code") == 30  # max_widget_exchanges


@pytest.mark.parametrize("junk", [3, 12])
def test_junk_installs_naming_a_host_leave_its_genuine_install_its_exchange(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, junk: int
) -> None:
    """The last review: three junk installs naming the victim's host, each from its own
    address, filled the host's widget bound (3) and its genuine install got 429 for 10
    minutes (twelve would fill its connection's, 10). Both are per (host, source)."""
    oauth = make_oauth(allow_widget_installs=True, **DEFAULT_BOUNDS)
    handlers = handlers_for(oauth)
    genuine = query_of(fake.authorize(from_widget=True))
    for n in range(junk):
        junk = {**genuine, "code": f"junk-{n}"}
        callback(handlers, junk, peer=f"203.0.113.{n + 1}")
    assert fake.token_call_count("authorization_code", "ok") == 0
    assert callback(handlers, genuine, peer=AMOCRM).status == 200
    assert oauth.status(Widget(genuine["referer"])).is_connected


def test_a_successful_exchange_does_not_count_against_its_source(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """An address that brings many genuine installs (amoCRM's servers) is not its own
    attacker: only what fails counts against a source."""
    oauth = make_oauth(
        allow_widget_installs=True, **{**DEFAULT_BOUNDS, "max_exchanges_per_source": 2}
    )
    handlers = handlers_for(oauth)
    for _ in range(6):
        genuine = query_of(fake.authorize(from_widget=True))
        assert callback(handlers, genuine, peer=AMOCRM).status == 200
    answers = [callback(handlers, junk_install(fake, n), peer=AMOCRM).status for n in range(3)]
    assert answers == [200, 200, 429]  # junk counts: a failed exchange answers its page


def test_an_office_behind_one_address_is_many_sources(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """A callback whose binding matches its state counts against that consent's user, not
    the address: colleagues behind one NAT (no session in their in-app browsers) each keep
    their own budget, however often one of them fails."""
    oauth = make_oauth(**{**DEFAULT_BOUNDS, "max_exchanges_per_source": 2})
    handlers = handlers_for(oauth)
    for n in range(3):
        query, binding = junk_consent(oauth, fake, "clumsy", n)
        callback(handlers, query, peer="192.0.2.1", binding=binding)
    for n in range(4):
        begun = oauth.begin(f"colleague-{n}")
        query = query_of(fake.authorize(begun.state))
        assert callback(handlers, query, peer="192.0.2.1", binding=begun.binding).status == 200
    query, binding = junk_consent(oauth, fake, "clumsy", 9)
    assert callback(handlers, query, peer="192.0.2.1", binding=binding).status == 429


def test_a_replay_of_a_ledger_code_is_never_refused_while_budgets_are_spent(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make_oauth(
        max_exchanges_per_connection=1, max_exchanges_per_process=4, max_exchanges_per_source=1
    )  # the widget bounds play no part
    handlers = handlers_for(oauth)
    begun = oauth.begin("ann")
    good = query_of(fake.authorize(begun.state))
    assert callback(handlers, good, peer=ATTACKER, binding=begun.binding).status == 200
    for n in range(10):  # every budget spent: the process's suspect share, ann's connection's
        query, binding = junk_consent(oauth, fake, f"user-{n % 2}", n)
        callback(handlers, query, peer=ATTACKER, binding=binding)
    query, binding = junk_consent(oauth, fake, "ann", 99)
    assert callback(handlers, query, peer=ATTACKER, binding=binding).status == 429
    calls = fake.token_call_count()
    for peer in (ATTACKER, "198.51.100.1", None):
        for binding in (begun.binding, None):
            answer = callback(handlers, good, peer=peer, binding=binding)
            assert answer.status == 200 and "error=" not in answer.text
    assert fake.token_call_count() == calls


def test_forwarded_headers_count_only_where_the_app_opts_in(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """A client writes any X-Forwarded-For it likes: by default it is ignored, so one peer
    stays one source however it rotates the header."""
    oauth = make_oauth(allow_widget_installs=True, **DEFAULT_BOUNDS)
    handlers = handlers_for(oauth)
    for n in range(40):
        spoofed = {"x-forwarded-for": f"10.9.{n}.1", "forwarded": f"for=10.8.{n}.1"}
        callback(handlers, junk_install(fake, n), peer=ATTACKER, headers=spoofed)
    assert fake.token_call_count("authorization_code") == 10  # one source: the peer


@pytest.mark.parametrize(
    ("proxies", "header", "lines", "expected"),
    [
        (0, "x-forwarded-for", ["1.1.1.1"], "10.0.0.1"),  # not opted in: the peer
        (1, "x-forwarded-for", ["6.6.6.6, 1.1.1.1"], "1.1.1.1"),  # what our proxy appended
        (2, "x-forwarded-for", ["6.6.6.6, 1.1.1.1", "172.16.0.9"], "1.1.1.1"),
        (2, "x-forwarded-for", ["1.1.1.1"], "10.0.0.1"),  # fewer entries than proxies
        (1, "forwarded", ['for=6.6.6.6, for="[2001:DB8::1]:4711";proto=https'], "2001:db8::1"),
        (1, "forwarded", ["for=192.0.2.60:8080;by=203.0.113.43"], "192.0.2.60"),
        (1, "forwarded", ["for=_hidden"], "_hidden"),
        (1, "x-forwarded-for", [], "10.0.0.1"),
    ],
)
def test_the_client_address(proxies: int, header: str, lines: list[str], expected: str) -> None:
    headers = [(header, line) for line in lines] + [("x-forwarded-for", "9.9.9.9")] * (
        header == "forwarded"
    )
    request = Request("GET", "/", headers=headers, peer="10.0.0.1")
    assert client_address(request, proxies, header) == expected


def test_a_trusted_proxy_makes_each_client_its_own_source(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """Behind one proxy (trusted_proxies=1), callers are told apart by the address it writes:
    a flood from one client leaves another client's widget install its exchange."""
    oauth = make_oauth(allow_widget_installs=True, trusted_proxies=1, **DEFAULT_BOUNDS)
    handlers = handlers_for(oauth)
    via_proxy = {"x-forwarded-for": f"1.2.3.4, {ATTACKER}"}
    for n in range(40):
        callback(handlers, junk_install(fake, n), peer="10.0.0.2", headers=via_proxy)
    assert fake.token_call_count("authorization_code") == 10
    genuine = query_of(fake.authorize(from_widget=True))
    answer = callback(handlers, genuine, peer="10.0.0.2", headers={"x-forwarded-for": AMOCRM})
    assert answer.status == 200


# -- every adapter fills the peer address ------------------------------------------------------


@pytest.fixture
def async_oauth(fake: FakeAmoCRM, clock: FakeClock) -> Iterator[AsyncAmoOAuth]:
    oauth = AsyncAmoOAuth(
        config_for(fake),
        store=MemoryStore(),
        http=httpx.AsyncClient(transport=fake.async_transport()),
        clock=clock,
    )
    yield oauth
    asyncio.run(oauth.aclose())


def peer_seen(seen: list[str | None]) -> Callable[[Request], None]:
    def identify(request: Request) -> None:
        seen.append(request.peer)

    return identify


def test_fastapi_fills_the_peer(async_oauth: AsyncAmoOAuth) -> None:
    seen: list[str | None] = []
    app = FastAPI()
    app.include_router(router(async_oauth, connection_id=peer_seen(seen), app_scheme="app"))
    with TestClient(app, client=("192.0.2.31", 50000)) as client:
        assert client.get(f"{PREFIX}/status").status_code == 401
    assert seen == ["192.0.2.31"]


def test_flask_fills_the_peer(oauth: AmoOAuth) -> None:
    seen: list[str | None] = []
    app = flask.Flask(__name__)
    app.register_blueprint(blueprint(oauth, connection_id=peer_seen(seen), app_scheme="app"))
    client = app.test_client()
    response = client.get(f"{PREFIX}/status", environ_base={"REMOTE_ADDR": "192.0.2.32"})
    assert response.status_code == 401
    assert seen == ["192.0.2.32"]


def test_django_fills_the_peer(oauth: AmoOAuth, async_oauth: AsyncAmoOAuth) -> None:
    seen: list[str | None] = []
    for service in (oauth, async_oauth):
        patterns = urls(service, connection_id=peer_seen(seen), app_scheme="app")
        with override_settings(ROOT_URLCONF=project(patterns)):
            if service is oauth:
                answer = Client(REMOTE_ADDR="192.0.2.33").get(f"{PREFIX}/status")
            else:
                # The ASGI scope's client, which Django's AsyncClient sets to loopback.
                answer = asyncio.run(AsyncClient().get(f"{PREFIX}/status"))  # type: ignore[arg-type]
        assert answer.status_code == 401
    assert seen == ["192.0.2.33", "127.0.0.1"]


def test_a_flood_from_many_addresses_leaves_no_memory_behind() -> None:
    """Every address is a window of its own: windows emptied by time are forgotten, so a
    flood from a million IPv6 addresses cannot grow the process without bound."""
    now = [0.0]
    bounds = Bounds(connection=5, host=10**9, process=10**9, source=5, widgets=1, widget_host=1)
    limiter = ExchangeLimiter(bounds, window=1.0, clock=lambda: now[0])
    most = 0
    for n in range(50_000):
        now[0] = n / 1000  # 1,000 attempts a second, each from its own address
        slot = limiter.admit(Attempt(f"u:{n}", "shop.amocrm.ru", f"addr:2001:db8::{n:x}"))
        assert slot is not None
        limiter.claimed(slot, exchanged=True)
        most = max(most, len(limiter._seen))
    assert most <= 2 * 10_000 + 4 * 1_000  # the prune threshold, plus a window's live keys


# -- the review's drains (issue 20.4, second round) ---------------------------------------------


def test_32_accounts_one_junk_each_aimed_at_the_victims_host_leave_its_user_his_exchange(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """32 accounts each sent one junk callback (a clean first try) naming the victim's account
    host: the host's window (30) filled and the victim's first callback was refused. A failed
    try now moves to the suspect share; the clean share holds only tries in flight."""
    oauth = make_oauth(**DEFAULT_BOUNDS)
    handlers = handlers_for(oauth)
    begun = oauth.begin("honest")
    honest = query_of(fake.authorize(begun.state))
    for account in range(32):
        user = f"attacker-{account}"
        query, binding = junk_consent(oauth, fake, user, 0)
        query["referer"] = honest["referer"]
        callback(handlers, query, peer=ATTACKER, user=user, binding=binding)
    assert fake.token_call_count("authorization_code") == 32
    answer = callback(handlers, honest, peer="198.51.100.7", user="honest", binding=begun.binding)
    assert answer.status == 200 and oauth.status("honest").is_connected


def test_dropping_the_session_and_rotating_ipv6_addresses_gains_nothing(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """Without his session cookie, from a fresh address of his /64 each time: the binding
    that matches each state makes its user the source, so 32 accounts x 10 junk callbacks
    make the same token calls as with the session, and the honest first callback goes."""
    oauth = make_oauth(**DEFAULT_BOUNDS)
    handlers = handlers_for(oauth)
    for account in range(32):
        for n in range(10):
            query, binding = junk_consent(oauth, fake, f"attacker-{account}", n)
            peer = f"2001:db8:66::{account * 10 + n:x}"
            callback(handlers, query, peer=peer, binding=binding)
    # The process's suspect share (150) is full after 15 accounts; each later account still
    # has its one clean first try (17 more): the session's absence and the addresses changed
    # nothing (the reviewer counted 300).
    assert fake.token_call_count("authorization_code") == 300 // 2 + 17
    begun = oauth.begin("honest")
    query = query_of(fake.authorize(begun.state))
    answer = callback(handlers, query, peer="198.51.100.7", user="honest", binding=begun.binding)
    assert answer.status == 200


def test_junk_through_a_shared_proxy_leaves_an_in_app_browsers_callback_its_exchange(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """trusted_proxies=0 behind a reverse proxy: every peer is the proxy. 12 junk callbacks
    through it made the next mobile callback (a binding, no session) 429 for the window."""
    oauth = make_oauth(**DEFAULT_BOUNDS)
    handlers = handlers_for(oauth)
    proxy = "10.0.0.2"
    for n in range(12):
        query, binding = junk_consent(oauth, fake, "attacker", n)
        callback(handlers, query, peer=proxy, binding=binding)
    assert fake.token_call_count("authorization_code") == 10  # the attacker's own bound
    begun = oauth.begin("mobile-user")  # as redeem_ticket begins it: a binding, no session
    query = query_of(fake.authorize(begun.state))
    answer = callback(handlers, query, peer=proxy, binding=begun.binding)
    assert answer.status == 200 and oauth.status("mobile-user").is_connected


def test_junk_widget_installs_from_one_ipv6_network_are_one_source(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """Sources keyed per /128 gave unlimited clean tries: a /64 is one customer's."""
    oauth = make_oauth(allow_widget_installs=True, **DEFAULT_BOUNDS)
    handlers = handlers_for(oauth)
    for n in range(40):
        callback(handlers, junk_install(fake, n), peer=f"2001:db8:66:1:{n:x}::1")
    assert fake.token_call_count("authorization_code") == 10  # max_exchanges_per_source


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("2001:db8:66:1:abcd::1", "2001:db8:66:1::/64"),
        ("2001:DB8:66:1::2", "2001:db8:66:1::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # an IPv4 client on a dual-stack socket
        ("192.0.2.7", "192.0.2.7"),
        ("_hidden", "_hidden"),  # RFC 7239 obfuscated node
    ],
)
def test_an_address_source_is_its_network(address: str, network: str) -> None:
    assert address_network(address) == network


def test_an_honest_first_try_finds_room_unless_the_clean_share_is_in_flight() -> None:
    """Failures from ever more sources fill the suspect share and never the clean one; only
    clean tries still in flight (a burst of honest first callbacks) can fill that."""
    bounds = Bounds(connection=99, host=4, process=99, source=9, widgets=1, widget_host=1)
    limiter = ExchangeLimiter(bounds, window=600.0, clock=lambda: 0.0)

    def first_try(n: int) -> Slot | None:
        return limiter.admit(Attempt(f"u:{n}", "shop.amocrm.ru", f"user:{n}"))

    for n in range(50):  # 50 sources, one junk code each
        slot = first_try(n)
        assert slot is not None
        limiter.claimed(slot, exchanged=True)
        limiter.failed(slot)
    assert limiter.admit(Attempt("u:0", "shop.amocrm.ru", "user:0")) is None  # suspect now
    in_flight = [first_try(100 + n) for n in range(2)]  # the clean share: 4 - 4 // 2
    assert all(slot is not None for slot in in_flight)
    assert first_try(200) is None
    for slot in in_flight:
        assert slot is not None
        limiter.claimed(slot, exchanged=True)
        limiter.released(slot)  # a success leaves the clean share
    assert first_try(201) is not None


# -- the last review: amoCRM's own failure is not the source's (issue 20.4) ---------------------


@pytest.mark.parametrize("attacker_accounts", [0, 1, 2])
def test_an_honest_retry_after_amocrms_500_connects_while_junk_names_the_host(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, attacker_accounts: int
) -> None:
    """The honest user's first callback met amoCRM's 500, which made the user's own source
    suspect; two attacker accounts' junk naming the host then filled the host's suspect half
    and every retry got 429 for 10 minutes. A transient failure is amoCRM's, not the
    source's: the retry is clean."""
    oauth = make_oauth(**DEFAULT_BOUNDS)
    handlers = handlers_for(oauth)
    begun = oauth.begin("honest")
    first = query_of(fake.authorize(begun.state))
    fake.fail_next("500", grant="authorization_code")
    callback(handlers, first, peer="198.51.100.7", user="honest", binding=begun.binding)
    assert not oauth.status("honest").is_connected
    for account in range(attacker_accounts):
        user = f"attacker-{account}"
        for n in range(10):
            query, binding = junk_consent(oauth, fake, user, n)
            query["referer"] = first["referer"]
            callback(handlers, query, peer=ATTACKER, user=user, binding=binding)
    begun = oauth.begin("honest")
    retry = query_of(fake.authorize(begun.state))
    answer = callback(handlers, retry, peer="198.51.100.7", user="honest", binding=begun.binding)
    assert answer.status == 200 and oauth.status("honest").is_connected
