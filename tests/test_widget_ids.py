"""Widget installs are reached by ``Widget(host)``, and an id is only an id (issue 19, item 5).

A widget install answered CONNECTED, yet ``status(account_host)`` said disconnected and
``access_token(account_host)`` raised: nothing public named the install. ``Widget(host)`` does,
on every call that takes a connection id, and no string can: an app user id equal to the
install's host, to its record key or to another user's record key names a connection of its
own, on every store (before, a key-shaped id made every store's load raise a StoreError).
"""

from __future__ import annotations

import asyncio
import json
import pickle
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from _pg_server import postgres_url  # noqa: F401
from _redis_server import redis_url  # noqa: F401
from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    ConnectionRecord,
    ConnectionStatus,
    MemoryStore,
    Outcome,
    ReauthorizationRequired,
    SQLiteStore,
    Store,
    Widget,
)
from amo_oauth._records import record_key
from amo_oauth.cli import main
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.web import Handlers
from test_web import PREFIX, CookieJar, deep_link, sender

from helpers import config_for, following, query_of, run_consent

LEADS = "/api/v4/leads"


def _unique(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:16]


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    kind = request.param
    if kind == "memory":
        yield MemoryStore(clock=clock)
    elif kind == "sqlite":
        yield SQLiteStore(tmp_path / "widgets.db", clock=clock)
    elif kind == "postgres":
        pytest.importorskip("psycopg")
        from amo_oauth.stores import PostgresStore

        url = request.getfixturevalue("postgres_url")
        pg = PostgresStore(url, table=_unique("w_"), clock_offset=following(clock))
        pg.migrate()
        yield pg
    else:
        pytest.importorskip("redis")
        from amo_oauth.stores import RedisStore

        url, prefix = request.getfixturevalue("redis_url"), _unique("widgets-") + ":"
        redis = RedisStore(url, prefix=prefix, clock_offset=following(clock))
        redis.migrate()
        yield redis


def _installed(oauth: AmoOAuth, fake: FakeAmoCRM) -> Widget:
    """A widget install through the callback; the Widget its answer names."""
    result = oauth.handle_callback(query_of(fake.authorize(from_widget=True)))
    assert result.outcome is Outcome.CONNECTED
    assert result.connection.widget == Widget(fake.account_host)
    assert result.connection.connection_id == fake.account_host
    assert result.connection.widget is not None
    return result.connection.widget


def _widget_record(oauth: AmoOAuth, host: str) -> ConnectionRecord | None:
    return oauth.store.load(record_key(oauth.config.client_id, host, widget=True)).record


def test_a_widget_install_is_reached_by_its_widget_on_every_store(
    make_oauth: Callable[..., AmoOAuth], store: Store, fake: FakeAmoCRM
) -> None:
    """The issue's example: status, access_token, auth and disconnect of the install."""
    oauth = make_oauth(store=store, allow_widget_installs=True)
    widget = _installed(oauth, fake)
    status = oauth.status(Widget(fake.account_host.upper()))  # a host is case-insensitive
    assert (status.status, status.widget, status.host) == (
        ConnectionStatus.CONNECTED,
        widget,
        fake.account_host,
    )
    token = oauth.access_token(widget)
    assert fake.is_access_token_valid(token)
    with httpx.Client(transport=fake.transport(), auth=oauth.auth(widget)) as api:
        assert api.get(f"https://{fake.account_host}{LEADS}").status_code == 200
    assert oauth.disconnect(widget).status is ConnectionStatus.DISCONNECTED
    assert oauth.status(widget).status is ConnectionStatus.DISCONNECTED
    with pytest.raises(ReauthorizationRequired):
        oauth.access_token(widget)


def test_a_widget_install_is_reached_by_its_widget_on_the_async_service(
    store: Store, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    async def main() -> None:
        config = config_for(fake, allow_widget_installs=True)
        http = httpx.AsyncClient(transport=fake.async_transport())
        async with AsyncAmoOAuth(config, store=store, http=http, clock=clock) as oauth:
            query = query_of(fake.authorize(from_widget=True))
            result = await oauth.handle_callback(query)
            widget = Widget(fake.account_host)
            assert (result.outcome, result.connection.widget) == (Outcome.CONNECTED, widget)
            assert (await oauth.status(widget)).status is ConnectionStatus.CONNECTED
            assert fake.is_access_token_valid(await oauth.access_token(widget))
            async with httpx.AsyncClient(
                transport=fake.async_transport(), auth=oauth.auth(widget)
            ) as api:
                assert (await api.get(f"https://{fake.account_host}{LEADS}")).status_code == 200
            assert (await oauth.disconnect(widget)).status is ConnectionStatus.DISCONNECTED
            assert (await oauth.status(fake.account_host)).version == 0  # an app user's
            key = record_key(config.client_id, fake.account_host, widget=True)
            assert (await oauth.status(key)).version == 0  # only an id, no StoreError
            with pytest.raises(ValueError, match="allowed"):
                oauth.auth(Widget("sub.example.org"))  # at once, not at the first request
            with pytest.raises(ReauthorizationRequired):
                await oauth.access_token(widget)
        await http.aclose()

    asyncio.run(main())


def _key_shaped_ids(oauth: AmoOAuth, host: str) -> tuple[str, ...]:
    client = oauth.config.client_id
    return (
        host,  # the install's own name
        record_key(client, host, widget=True),  # the install's record key
        record_key(client, "user-1"),  # another app user's record key
        f"u:{client}:",
        "w:other-client:x.amocrm.ru",
        "a:b:c",
        ":",
        "u:*",  # what a glob or LIKE pattern would read otherwise
        "%:_",
    )


def test_no_app_user_id_reaches_a_widget_install_or_another_users_record(
    make_oauth: Callable[..., AmoOAuth], store: Store, fake: FakeAmoCRM
) -> None:
    """An id equal to a record's key is only an id: a disconnected connection of its own, on
    every store, never a StoreError, never another connection's status or tokens."""
    oauth = make_oauth(store=store, allow_widget_installs=True)
    widget = _installed(oauth, fake)
    run_consent(oauth, fake, "user-1")
    installed, user = (
        _widget_record(oauth, fake.account_host),
        oauth.store.load(record_key(oauth.config.client_id, "user-1")).record,
    )
    for connection_id in _key_shaped_ids(oauth, fake.account_host):
        status = oauth.status(connection_id)
        assert (status.status, status.version, status.widget) == (
            ConnectionStatus.DISCONNECTED,
            0,
            None,
        ), connection_id
        with pytest.raises(ReauthorizationRequired) as refused:
            oauth.access_token(connection_id)
        assert refused.value.reason == "disconnected"
        assert oauth.disconnect(connection_id).status is ConnectionStatus.DISCONNECTED
    # The install and the user are untouched, and still reached by their own names.
    assert _widget_record(oauth, fake.account_host) == installed
    assert oauth.store.load(record_key(oauth.config.client_id, "user-1")).record == user
    assert oauth.status(widget).status is ConnectionStatus.CONNECTED
    assert oauth.status("user-1").status is ConnectionStatus.CONNECTED


def test_an_app_user_whose_id_has_colons_connects_beside_the_install(
    make_oauth: Callable[..., AmoOAuth], store: Store, fake: FakeAmoCRM
) -> None:
    oauth = make_oauth(store=store, allow_widget_installs=True)
    widget = _installed(oauth, fake)
    impostor = record_key(oauth.config.client_id, fake.account_host, widget=True)
    result = run_consent(oauth, fake, impostor)
    assert (result.outcome, result.connection.widget) == (Outcome.CONNECTED, None)
    assert oauth.access_token(impostor) != oauth.access_token(widget)
    oauth.disconnect(impostor)
    assert oauth.status(widget).status is ConnectionStatus.CONNECTED


def test_a_widget_is_a_host_under_an_allowed_domain(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    assert Widget(" Sub.AmoCRM.ru. ") == Widget("sub.amocrm.ru")
    assert Widget("sub.amocrm.ru").host == "sub.amocrm.ru"
    for bad in ("", "localhost", "https://sub.amocrm.ru", "sub.amocrm.ru/x", "www.amocrm.ru", 7):
        with pytest.raises(ValueError, match="account host"):
            Widget(bad)  # type: ignore[arg-type]
    oauth = make_oauth(allow_widget_installs=True)
    foreign = Widget("sub.example.org")  # a host's shape, outside the allowlist
    for call in (oauth.status, oauth.access_token, oauth.auth, oauth.disconnect):
        with pytest.raises(ValueError, match="allowed"):
            call(foreign)
    assert len(oauth.store.scan(None, 10)) == 0
    extra = make_oauth(allow_widget_installs=True, extra_domains=("example.org",))
    assert extra.status(foreign).status is ConnectionStatus.DISCONNECTED  # allowed there


def test_a_consent_is_begun_for_an_app_user_never_for_a_widget(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make_oauth(allow_widget_installs=True)
    widget = Widget(fake.account_host)
    with pytest.raises(ValueError, match="Widget"):
        oauth.begin(widget)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Widget"):
        oauth.issue_ticket(widget)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Widget"):
        oauth.exchange_code(widget, fake.issue_code())  # type: ignore[arg-type]
    assert fake.token_call_count() == 0


def test_a_legacy_widget_record_is_reached_by_its_widget(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """A widget install stored under its bare host, before keys had a namespace, moves under
    the widget key when its Widget asks for it."""
    store = MemoryStore()
    legacy = ConnectionRecord(fake.account_host, version=3, host=fake.account_host)
    assert store.compare_and_set(legacy, None)
    oauth = make_oauth(store=store)
    status = oauth.status(Widget(fake.account_host))
    assert (status.version, status.widget) == (4, Widget(fake.account_host))
    assert store.load(fake.account_host).record is None
    assert _widget_record(oauth, fake.account_host) is not None


def test_the_cli_shows_a_widget_install_only_when_asked_with_widget(
    tmp_path: Path, fake: FakeAmoCRM, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "amo.db"
    config = config_for(fake, allow_widget_installs=True)
    http = httpx.Client(transport=fake.transport())
    with AmoOAuth(config, store=SQLiteStore(db), http=http, clock=clock) as oauth:
        _installed(oauth, fake)
        key = record_key(oauth.config.client_id, fake.account_host, widget=True)
    base = ["--db", str(db), "--client-id", fake.client_id]
    assert main(["status", fake.account_host, "--widget", *base]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "connected"
    assert main(["status", key, *base]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {"connection_id": key, "status": "disconnected"}
    # The host as an app user's id: no such user, and a hint that the install is there.
    assert main(["status", fake.account_host, *base]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["status"], "add --widget" in shown["hint"]) == ("disconnected", True)
    assert main(["status", "not a host", "--widget", *base]) == 2
    assert "account host" in capsys.readouterr().err


def test_the_cli_refuses_a_widget_host_outside_the_allowlist_as_python_does(
    tmp_path: Path, fake: FakeAmoCRM, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reviewer's example: ``status nope.example.com --widget`` said disconnected, exit 0,
    where ``status(Widget(...))`` raises ValueError. Both now refuse, naming the host and
    ``Config.extra_domains``; an extra domain lets the host in, as in Python."""
    db = tmp_path / "amo.db"
    config = config_for(fake)
    refused = r"'nope\.example\.com'.*Config\.extra_domains"
    with (
        AmoOAuth(config, store=SQLiteStore(db), clock=clock) as oauth,
        pytest.raises(ValueError, match=refused),
    ):
        oauth.status(Widget("nope.example.com"))
    assert main(["migrate", "--store", f"sqlite:///{db}"]) == 0
    capsys.readouterr()
    base = ["--db", str(db), "--client-id", fake.client_id]
    assert main(["status", "nope.example.com", "--widget", *base]) == 2
    _, err = capsys.readouterr()
    assert "'nope.example.com' is not an allowed" in err and "Config.extra_domains" in err
    argv = ["status", "nope.example.com", "--widget", "--extra-domain", "example.com", *base]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "disconnected"
    # An app user's id shaped like a host with no install behind it gets no hint.
    assert main(["status", fake.account_host, *base]) == 0
    assert "hint" not in json.loads(capsys.readouterr().out)


def test_a_widget_install_leaves_the_binding_of_a_user_named_like_its_host(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    """The callback page clears a browser's binding once that browser's connection is made: a
    widget install landing in the browser of an app user whose id is the install's host is not
    that user's connection, so the user's consent in progress keeps its binding."""
    oauth = make_oauth(allow_widget_installs=True)
    handlers = Handlers(
        oauth, connection_id=lambda request: request.header("x-user"), app_scheme="myapp"
    )
    jar = CookieJar()
    browser = sender(handlers, jar)
    browser("GET", f"{PREFIX}/connect", headers={"x-user": fake.account_host})
    bound = dict(jar.cookies)
    assert bound
    install = urlsplit(fake.authorize(from_widget=True)).query
    page = browser("GET", f"{PREFIX}/callback", query=install)
    assert page.status == 200 and deep_link(page)[1]["success"] == "true"
    assert jar.cookies == bound


def test_disconnect_of_a_widget_overwrites_its_corrupt_row(
    tmp_path: Path, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """A disconnect replaces an unreadable row by a fresh record under the same key: for an
    install, the widget key (never the app user's key of the same name)."""
    db = tmp_path / "amo.db"
    config = config_for(fake, allow_widget_installs=True)
    http = httpx.Client(transport=fake.transport())
    with AmoOAuth(config, store=SQLiteStore(db), http=http, clock=clock) as oauth:
        widget = _installed(oauth, fake)
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE amo_connections SET data = ?", ("[]",))
        conn.close()
        disconnected = oauth.disconnect(widget)
        assert (disconnected.status, disconnected.version, disconnected.widget) == (
            ConnectionStatus.DISCONNECTED,
            4,
            widget,
        )
        assert oauth.status(widget) == disconnected
        assert oauth.status(fake.account_host).version == 0


def test_the_uninstall_hook_names_the_widget_it_disconnected(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make_oauth(allow_widget_installs=True)
    widget = _installed(oauth, fake)
    run_consent(oauth, fake, fake.account_host)  # an app user named like the host, same account
    ended = oauth.handle_disconnect_hook(fake.uninstall())
    assert sorted((c.connection_id, c.widget is not None) for c in ended) == [
        (fake.account_host, False),
        (fake.account_host, True),
    ]
    assert not any(c.is_connected for c in ended)
    assert {c.widget for c in ended} == {None, widget}


def test_a_widget_survives_pickling_inside_a_connection(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make_oauth(allow_widget_installs=True)
    connection = oauth.status(_installed(oauth, fake))
    assert pickle.loads(pickle.dumps(connection)) == connection
    assert repr(connection.widget) == f"Widget(host='{fake.account_host}')"
