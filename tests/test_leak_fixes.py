"""Regressions for the leaks a review found: each test drives the shape the reviewer's script did.

1. Django's ``django.request`` log of the routes' 4xx/5xx answers carried the request, whose repr
   has the query (the unused code and state, a ticket).
2. ``clean_hint`` cut the provider's hint before redacting it: half a client secret survived.
3. A malformed store URL's password survived in the StoreError's ``__context__``.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.core import mail
from django.test import AsyncClient, Client, override_settings
from django.urls import include, path
from django.utils.log import AdminEmailHandler

import django_settings
from _leak_support import Canary, findings, record_texts
from amo_oauth import AmoOAuth, AsyncAmoOAuth, MemoryStore, StoreError
from amo_oauth.django import urls
from amo_oauth.stores import store_from_url
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.web._catalogue import BINDING_COOKIE

from helpers import config_for

django_settings.setup()

CALLBACK = "/api/amo-crm/callback"


class DownStore(MemoryStore):
    """A store that is down (every load fails) once ``down`` is set."""

    down = False

    def load(self, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            raise StoreError("store unreachable (test)")
        return super().load(*args, **kwargs)


class Kept(logging.Handler):
    """The records ``django.request`` emits during a test."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[Kept]:
    handler, logger = Kept(), logging.getLogger("django.request")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def store() -> DownStore:
    return DownStore()


@pytest.fixture(params=["sync", "async"])
def service(
    request: pytest.FixtureRequest, fake: FakeAmoCRM, clock: FakeClock, store: DownStore
) -> Iterator[AmoOAuth | AsyncAmoOAuth]:
    """``AmoOAuth`` under the sync views, ``AsyncAmoOAuth`` under the async ones."""
    if request.param == "sync":
        with AmoOAuth(
            config_for(fake),
            store=store,
            http=httpx.Client(transport=fake.transport()),
            clock=clock,
        ) as oauth:
            yield oauth
        return
    transport = fake.async_transport()
    aoauth = AsyncAmoOAuth(
        config_for(fake), store=store, http=httpx.AsyncClient(transport=transport), clock=clock
    )
    yield aoauth
    asyncio.run(aoauth.aclose())


def _get(service: AmoOAuth | AsyncAmoOAuth, url: str, cookies: dict[str, str]) -> int:
    """GET ``url`` through the views for ``service``; the answer's status."""
    patterns = urls(service, connection_id=lambda request: "ann", app_scheme="foryoure")
    with override_settings(ROOT_URLCONF=django_settings.urlconf(path("", include(patterns)))):
        if isinstance(service, AmoOAuth):
            client = Client()
            for name, value in cookies.items():
                client.cookies[name] = value
            return int(client.get(url).status_code)
        aclient = AsyncClient()
        for name, value in cookies.items():
            aclient.cookies[name] = value
        return int(asyncio.run(aclient.get(url)).status_code)


def _begin(service: AmoOAuth | AsyncAmoOAuth) -> tuple[str, str]:
    """A consent's state and its browser binding."""
    if isinstance(service, AmoOAuth):
        begun = service.begin("ann")
    else:
        begun = asyncio.run(service.begin("ann"))
    assert begun.binding is not None  # begun with browser binding (the default)
    return begun.state, begun.binding


def _ticket(service: AmoOAuth | AsyncAmoOAuth) -> str:
    if isinstance(service, AmoOAuth):
        return service.issue_ticket("ann")
    return asyncio.run(service.issue_ticket("ann"))


CASES = ["forged state", "another browser", "store down"]
EXPECTED = {
    "forged state": (400, "WARNING", "Bad Request"),
    "another browser": (403, "WARNING", "Forbidden"),
    "store down": (503, "ERROR", "Service Unavailable"),
}


@pytest.mark.parametrize("case", CASES)
def test_the_request_log_of_a_refused_callback_has_no_code_or_state(
    case: str, service: AmoOAuth | AsyncAmoOAuth, fake: FakeAmoCRM, store: DownStore, kept: Kept
) -> None:
    # Checked failing before the fix (views returning _to_django(...) as they were): every case
    # found the code and the state in "log django.request:<level> extra request".
    code, (state, binding) = fake.issue_keys_tab_code(), _begin(service)
    if case == "forged state":
        state = "forged-state-" + "q" * 40
    cookies = {} if case == "another browser" else {BINDING_COOKIE: binding}
    store.down = case == "store down"
    url = f"{CALLBACK}?code={code}&state={state}&referer={fake.account_host}"
    status = _get(service, url, cookies)
    (record,) = kept.records  # Django's own line is skipped: one record, not two
    reason = record.getMessage().removesuffix(f": {CALLBACK}")
    assert (status, record.levelname, reason) == EXPECTED[case]
    assert record.status_code == status  # type: ignore[attr-defined]
    texts = [text for record in kept.records for text in record_texts(record)]
    assert findings([Canary("code", code), Canary("state", state)], texts) == []


def test_the_request_log_of_a_ticket_answered_503_has_no_ticket(
    service: AmoOAuth | AsyncAmoOAuth, store: DownStore, kept: Kept
) -> None:
    ticket = _ticket(service)
    store.down = True
    assert _get(service, f"/api/amo-crm/connect?ticket={ticket}", {}) == 503
    assert [(r.levelname, r.getMessage()) for r in kept.records] == [
        ("ERROR", "Service Unavailable: /api/amo-crm/connect")
    ]
    texts = [text for record in kept.records for text in record_texts(record)]
    assert findings([Canary("ticket", ticket)], texts) == []


def test_admin_email_handler_still_mails_the_record_without_a_request(
    service: AmoOAuth | AsyncAmoOAuth, store: DownStore
) -> None:
    # AdminEmailHandler reads record.request inside a try: without one it still sends the mail.
    handler, logger = AdminEmailHandler(), logging.getLogger("django.request")
    logger.addHandler(handler)
    settings = {"ADMINS": [("ops", "ops@app.example")]}
    settings["EMAIL_BACKEND"] = "django.core.mail.backends.locmem.EmailBackend"  # type: ignore[assignment]
    try:
        with override_settings(**settings):
            mail.outbox = []
            ticket = _ticket(service)
            store.down = True
            assert _get(service, f"/api/amo-crm/connect?ticket={ticket}", {}) == 503
            sent = list(mail.outbox)
    finally:
        logger.removeHandler(handler)
    assert [m.subject for m in sent] == [
        "[Django] ERROR: Service Unavailable: /api/amo-crm/connect"
    ]
    shown = ticket in sent[0].body  # a bool: a failure must not print the ticket
    assert not shown


# -- 2. a provider hint that echoes the client secret past the cut -------------------------------

TOKEN_SECRET = "Zq8CLIENTsecretCANARY0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"[:64]
PUNCTUATED_SECRET = "Pw9canary!Xyz#" + "k7" * 20  # not one token-like run: the edge check's case


def _shown(secret: str, text: str) -> int:
    """The longest first or last part of ``secret`` in ``text`` (characters)."""
    sizes = [n for n in range(1, len(secret) + 1) if secret[:n] in text or secret[-n:] in text]
    return max(sizes, default=0)


def _echoing_hint(filler_runs: int, tail: int, secret: str) -> str:
    # As the reviewer's hint_straddle.py: 60-character runs (each redacted down to 10 characters)
    # then the request echoed as JSON, so the secret sits near a cut once redaction shrank the text.
    filler = " ".join(["x" * 60] * filler_runs) + " " + "y" * tail
    return f'{filler} {{"client_secret": "{secret}", "code": "def502"}}'


@pytest.mark.parametrize("secret", [TOKEN_SECRET, PUNCTUATED_SECRET], ids=["token", "punctuated"])
def test_a_hint_cut_through_the_client_secret_keeps_none_of_it(secret: str) -> None:
    # Checked failing before the fix (cut at limit * 4, then redacted): "token" showed the
    # secret's first 31 characters, as the script did.
    from amo_oauth._answers import MAX_HINT, clean_hint

    for filler_runs in range(10, 16):
        for tail in range(0, 61, 3):
            hint = clean_hint(_echoing_hint(filler_runs, tail, secret), redact=[secret])
            assert hint is not None
            assert len(hint) <= MAX_HINT
            shown = _shown(secret, hint)  # a number: a failure must not print the secret
            assert shown < 8, (filler_runs, tail)


def test_the_stored_hint_and_status_keep_no_piece_of_the_client_secret(fake: FakeAmoCRM) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        hint = _echoing_hint(12, 17, TOKEN_SECRET)  # the script's 749-character filler
        return httpx.Response(400, json={"hint": hint})

    config = config_for(fake, client_secret=TOKEN_SECRET)
    http = httpx.Client(transport=httpx.MockTransport(refuse))
    with AmoOAuth(config, store=MemoryStore(), http=http) as oauth:
        result = oauth.connect_with_code("admin", "def502" + "c" * 400, fake.account_host)
        status = oauth.status("admin")
    in_result, in_status = _shown(TOKEN_SECRET, repr(result)), _shown(TOKEN_SECRET, repr(status))
    assert max(in_result, in_status) < 8
    redacted = "[redacted]" in repr(status)
    assert redacted  # the hint was stored, and the secret redacted in it


# -- 3. a malformed store URL: the password nowhere in the error's chain -------------------------

PASSWORD = "Pw9canaryXyz"
#: Malformed URLs the drivers refuse, each with the part the message must name.
MALFORMED = {
    "pg-space": (f"postgresql://u:{PASSWORD} x@127.0.0.1:1/db", "space in the user name"),
    "pg-bad-escape": (f"postgresql://u:{PASSWORD}%zz@127.0.0.1:1/db", "'%' in the user name"),
    "pg-unclosed-bracket": (f"postgresql://u:{PASSWORD}@[::1:1/db", "'[' without its ']'"),
    "pg-capital-scheme": (f"Postgresql://u:{PASSWORD}@127.0.0.1:1/db", "scheme"),
    "redis-hash": (f"redis://:{PASSWORD}#x@127.0.0.1:1/0", "'#' as %23"),
    "redis-question-mark": (f"redis://:{PASSWORD}?x@127.0.0.1:1/0", "'#' as %23"),
}


def _chain_texts(error: BaseException) -> list[str]:
    """Every link of ``error``'s chain (``__cause__`` and ``__context__``, suppressed or not)
    as shown, and the formatted traceback."""
    texts, seen, links = [], set(), [error]
    while links:
        link = links.pop()
        if id(link) in seen:
            continue
        seen.add(id(link))
        texts.append(f"{link!s} {link!r} {link.args!r}")
        links += [chained for chained in (link.__cause__, link.__context__) if chained]
    return [*texts, "".join(traceback.format_exception(error))]


def _any_piece(secret: str, texts: list[str], size: int = 5) -> bool:
    """Whether any ``size``-character piece of ``secret`` shows in ``texts`` (a bool, so that
    a failing assertion does not print the piece)."""
    pieces = [secret[i : i + size] for i in range(len(secret) - size + 1)]
    return any(piece in text for piece in pieces for text in texts)


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_store_url_keeps_its_password_out_of_the_error_chain(name: str) -> None:
    # Checked failing before the fix (raise ... from None inside the except block): each URL's
    # ValueError held the driver's error, password quoted, as __context__.
    url, part = MALFORMED[name]
    with pytest.raises(ValueError, match="not a") as caught:
        store_from_url(url)
    texts = _chain_texts(caught.value)
    assert not _any_piece(PASSWORD, texts)
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert part in str(caught.value)  # what to fix, without the value


def _first_load(store: Any, waited: bool) -> None:
    """A store's first load: the blocking pool's connect, or the awaited pool's."""
    if waited:
        asyncio.run(store.aload("c1"))
    else:
        store.load("c1")


@pytest.mark.parametrize("waited", [False, True], ids=["blocking", "awaited"])
def test_an_unreachable_postgres_server_error_chains_no_libpq_error(
    waited: bool, refusing_port: int
) -> None:
    # Checked failing before the fix (raise self._unreachable(exc) from exc): __cause__ was
    # psycopg's OperationalError, libpq's whole message unmasked.
    from amo_oauth.stores.postgres import PostgresStore

    store = PostgresStore(
        f"postgresql://u:{PASSWORD}@127.0.0.1:{refusing_port}/db", min_size=0, timeout=2.0
    )
    try:
        with pytest.raises(StoreError, match="could not connect: OperationalError") as caught:
            _first_load(store, waited)
    finally:
        store.close()
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    texts = _chain_texts(caught.value)
    assert not _any_piece(PASSWORD, texts)
