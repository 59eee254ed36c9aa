"""Leak canaries (issue 24 §4): no secret of a run shows anywhere a person or a log reads.

Each framework's example backend (FastAPI and Django's async views under uvicorn at ``trace``
with its access log on, Flask under werkzeug with its request log on, the Starlette example under
uvicorn) runs once per module against FakeAmoCRM over loopback HTTP, every logger at DEBUG and
below, the root logger keeping every record. The client secret and the state secret are canaries
the test chooses; the codes, access and refresh tokens are the ones the fake issued
(``FakeAmoCRM.issued``); the tickets, browser bindings and the disconnect hook's signature are
read where the backend handed them out. The scenario: connect (ticket, binding), "Allow", the
callback, its replay, the legacy exchange-code, status, leads (the example's route and
``auth()`` on a client), a refresh after the API's 401, a failing exchange, a 401 no refresh can
cure, the disconnect hook and the user's disconnect. ``amo-oauth demo`` runs in a subprocess
(``_leak_demo.py``) with logging at level 1 and uvicorn at ``trace`` with its access log.

Every test first asserts that each canary was used (the fake saw the secret, the code, each
token; the backend accepted each ticket and binding), so an absent canary means redacted, not
unused; then that none shows, in any of ``_leak_support.forms``, in any log record (message,
arguments, formatted line, traceback, extras), answer (status, headers, ``Location`` and
``Set-Cookie`` included, body: pages and deep links), cookie kept by the browser, ``repr``/``str``
of what the app holds (service, config, store, records, results, events) or exception (text,
chain, traceback).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from _leak_support import (
    Answers,
    Canary,
    Records,
    Text,
    exception_texts,
    findings,
    forms,
    record_texts,
    reprs,
)
from amo_oauth import AmoOAuth, AmoOAuthError, AsyncAmoOAuth, Config, LifecycleEvent, SQLiteStore
from amo_oauth._demo import listening_socket, load_example, serve_asgi
from amo_oauth.testing import FakeAmoCRM, ServedFake
from amo_oauth.web import ACCESS_LOGGERS, RedactingFilter
from amo_oauth.web._catalogue import BINDING_COOKIE
from e2e_support import FASTAPI, FLASK, MOBILE, PREFIX, query_of, serve_wsgi

pytestmark = pytest.mark.proof

TESTS = Path(__file__).resolve().parent
CLIENT_SECRET = "client-secret-canary-" + secrets.token_hex(16)
STATE_SECRET = "state-secret-canary-" + secrets.token_hex(16)
USER, OTHER = "ann", "bob"
STARLETTE_TOKENS = {f"app-session-{user}-{secrets.token_hex(8)}": user for user in (USER, OTHER)}
CONNECTED = "amoCRM is connected"
#: The loggers set to level 1 beside the root (some set their own level when first used).
LOGGERS = ("", "amo_oauth", "httpx", "httpcore", "werkzeug", "django", "uvicorn", "asyncio")


class LoopCatcher:
    """An ASGI app's wrapper that learns the server's event loop (the async service's)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)


@contextlib.contextmanager
def serve_uvicorn(app: LoopCatcher, sock: Any) -> Iterator[str]:
    """``app`` under uvicorn on ``sock`` in a thread, at ``trace`` with the access log on;
    ``log_config=None`` leaves the records to the root logger's handler."""
    with serve_asgi(app, sock, log_level="trace", access_log=True) as url:
        yield url


@attrs.define
class Run:
    """One framework's backend, its service and fake, and everything the run saw."""

    name: str
    fake: FakeAmoCRM
    served: ServedFake
    oauth: AmoOAuth | AsyncAmoOAuth
    store: Any  # the service's store (scanned for its records)
    backend: str
    loop: LoopCatcher | None  # None: a blocking service, called from the test's thread
    leads_route: bool
    answers: Answers
    texts: list[Text] = attrs.field(factory=list, repr=False)
    held: list[object] = attrs.field(factory=list, repr=False)
    tickets: list[str] = attrs.field(factory=list, repr=False)
    bindings: list[str] = attrs.field(factory=list, repr=False)
    signatures: list[str] = attrs.field(factory=list, repr=False)
    accepted: dict[str, bool] = attrs.Factory(dict)

    def call(self, make: Callable[[Any], Any]) -> Any:
        """``make(service)`` as the app would run it: awaited in the server's loop when the
        service is async, else on a thread of the app's (the records of the test's own thread,
        its clients', are not the app's and are not searched)."""
        if self.loop is None:
            with ThreadPoolExecutor(1, thread_name_prefix="app") as app:
                return app.submit(make, self.oauth).result()
        assert self.loop.loop is not None
        coroutine = _awaited(make(self.oauth))
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop.loop).result()

    def attempt(self, what: str, make: Callable[[Any], Any]) -> None:
        """A call expected to raise: its exception's texts are kept."""
        try:
            self.held.append(self.call(make))
        except AmoOAuthError as error:
            self.texts.extend(exception_texts(f"{self.name} {what}", error))
        else:
            raise AssertionError(f"{what}: no error")

    def canaries(self) -> list[Canary]:
        issued = self.fake.issued
        return [
            Canary("client_secret", CLIENT_SECRET),
            Canary("state_secret", STATE_SECRET),
            *(Canary("code", code) for code in issued.codes),
            *(Canary("access_token", token) for token in issued.access_tokens),
            *(Canary("refresh_token", token) for token in issued.refresh_tokens),
            *(Canary("ticket", ticket) for ticket in self.tickets),
            *(Canary("binding", binding) for binding in self.bindings),
            *(Canary("hook_signature", signature) for signature in self.signatures),
        ]


async def _awaited(made: Awaitable[Any]) -> Any:
    return await made


def _config(fake: FakeAmoCRM, served: ServedFake) -> Config:
    return Config(
        client_id=fake.client_id,
        client_secret=CLIENT_SECRET,
        redirect_uri=fake.redirect_uri,
        state_secret=STATE_SECRET,
        authorize_url=f"{served.url}/oauth",
    )


def _fake(sock: Any) -> FakeAmoCRM:
    port = sock.getsockname()[1]
    return FakeAmoCRM(
        client_secret=CLIENT_SECRET, redirect_uri=f"http://127.0.0.1:{port}{PREFIX}/callback"
    )


@contextlib.contextmanager
def _async_stack(name: str, db: Path, make_app: MakeApp) -> Iterator[Run]:
    sock = listening_socket()
    fake = _fake(sock)
    with fake.serve() as served, contextlib.ExitStack() as held:
        http = httpx.AsyncClient(transport=served.async_transport())
        store = SQLiteStore(db)
        oauth = AsyncAmoOAuth(_config(fake, served), store=store, http=http)
        app = LoopCatcher(make_app(oauth, http, held))
        with serve_uvicorn(app, sock) as backend:
            leads = name != "starlette"
            yield Run(name, fake, served, oauth, store, backend, app, leads, Answers(backend))


MakeApp = Callable[[AsyncAmoOAuth, httpx.AsyncClient, contextlib.ExitStack], Any]
"""An ASGI app of the service and the API client; what it needs while it runs goes on the
stack (Django's URL configuration)."""


def _fastapi(oauth: AsyncAmoOAuth, http: httpx.AsyncClient, held: contextlib.ExitStack) -> Any:
    return FASTAPI.create_app(oauth, api=http)


def _starlette(oauth: AsyncAmoOAuth, http: httpx.AsyncClient, held: contextlib.ExitStack) -> Any:
    return load_example("starlette_app").create_app(oauth, STARLETTE_TOKENS, app_scheme="foryoure")


def _django_routes(oauth: Any, http: Any, held: contextlib.ExitStack) -> None:
    """The Django example's views over ``oauth`` (async or blocking), Django's CSRF on."""
    import django_settings

    django_settings.setup()
    if str(example := TESTS.parent / "examples" / "django_app") not in sys.path:
        sys.path.insert(0, str(example))
    from backend.views import routes
    from django.test import override_settings

    held.enter_context(
        override_settings(ROOT_URLCONF=django_settings.urlconf(*routes(oauth, http)))
    )


def _django_asgi(oauth: AsyncAmoOAuth, http: httpx.AsyncClient, held: contextlib.ExitStack) -> Any:
    _django_routes(oauth, http, held)  # first: it puts the example's project on sys.path
    from backend.amo import with_lifespan
    from django.core.handlers.asgi import ASGIHandler

    async def close() -> None:
        await oauth.aclose()
        await http.aclose()

    return with_lifespan(ASGIHandler(), on_shutdown=close)


def _flask(oauth: AmoOAuth, http: httpx.Client, held: contextlib.ExitStack) -> Any:
    return FLASK.create_app(oauth, api=http)


def _django_wsgi(oauth: AmoOAuth, http: httpx.Client, held: contextlib.ExitStack) -> Any:
    from django.core.handlers.wsgi import WSGIHandler

    _django_routes(oauth, http, held)
    return WSGIHandler()


@contextlib.contextmanager
def _wsgi_stack(name: str, db: Path, make_app: Callable[..., Any]) -> Iterator[Run]:
    """``make_app(oauth, http, held)`` under werkzeug, its request log on."""
    from werkzeug.serving import WSGIRequestHandler

    sock = listening_socket()
    fake = _fake(sock)
    with (
        fake.serve() as served,
        httpx.Client(transport=served.transport()) as http,
        AmoOAuth(_config(fake, served), store=SQLiteStore(db), http=http) as oauth,
        contextlib.ExitStack() as held,
    ):
        app = make_app(oauth, http, held)
        with serve_wsgi(app, sock, WSGIRequestHandler) as backend:
            yield Run(name, fake, served, oauth, oauth.store, backend, None, True, Answers(backend))


STACKS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "fastapi": (_async_stack, _fastapi),
    "flask": (_wsgi_stack, _flask),
    "django-asgi": (_async_stack, _django_asgi),
    "django-wsgi": (_wsgi_stack, _django_wsgi),
    "starlette": (_async_stack, _starlette),
}


@contextlib.contextmanager
def _stack(name: str, db: Path) -> Iterator[Run]:
    serve, make_app = STACKS[name]
    with serve(name, db, make_app) as run:
        yield run


def _route_of(logger: logging.Logger) -> tuple[bool, bool]:
    """Whether ``logger`` passes its records up (``propagate``) and whether it is ``disabled``."""
    return logger.propagate, logger.disabled


def _set_route(logger: logging.Logger, route: tuple[bool, bool]) -> None:
    logger.propagate, logger.disabled = route


@contextlib.contextmanager
def _everything_logged() -> Iterator[Records]:
    """Every logger at level 1 (DEBUG and uvicorn's trace), every record kept; and no access-log
    filter left over from another framework's run (each adapter must install its own)."""
    records = Records(ignored_thread=threading.get_ident())
    root = logging.getLogger()
    # pytest's own handlers would print what they kept on a failure: secrets, if one leaked.
    others = list(root.handlers)
    for other in others:
        root.removeHandler(other)
    names = {*LOGGERS, *logging.root.manager.loggerDict}
    levels = {name: logging.getLogger(name).level for name in names}
    filters = {name: list(logging.getLogger(name).filters) for name in ACCESS_LOGGERS}
    for name in ACCESS_LOGGERS:
        for present in filters[name]:
            if isinstance(present, RedactingFilter):
                logging.getLogger(name).removeFilter(present)
    # Another test in this process may have run a server with its own logging config
    # (uvicorn's keeps its access log off the root; a dictConfig disables the loggers it does
    # not name): every record must reach the root here.
    routes = {name: _route_of(logging.getLogger(name)) for name in names if name}
    for name in names:
        logging.getLogger(name).setLevel(1)
    for name in routes:
        _set_route(logging.getLogger(name), (True, False))
    root.addHandler(records)
    try:
        yield records
    finally:
        for name, route in routes.items():
            _set_route(logging.getLogger(name), route)
        root.removeHandler(records)
        for other in others:
            root.addHandler(other)
        root.setLevel(levels[""])
        for name in logging.root.manager.loggerDict:  # those made during the run: as made
            logging.getLogger(name).setLevel(levels.get(name, logging.NOTSET))
        for name, kept in filters.items():
            logging.getLogger(name).filters[:] = kept


# -- the scenario -------------------------------------------------------------------------------


def _clients(run: Run, user: str) -> tuple[httpx.Client, httpx.Client]:
    """The app (signed in as ``user``) and its in-app browser, both recording every answer."""
    app = httpx.Client(
        base_url=run.backend, event_hooks={"response": [run.answers.hook(f"app({user})")]}
    )
    browser = httpx.Client(event_hooks={"response": [run.answers.hook(f"browser({user})")]})
    if run.name == "starlette":
        token = next(token for token, who in STARLETTE_TOKENS.items() if who == user)
        app.headers["authorization"] = f"Bearer {token}"
    else:
        MOBILE.sign_in(app, user)
    return app, browser


def _connect(run: Run, app: httpx.Client, browser: httpx.Client) -> Any:
    """ "Connect amoCRM" (the ticket URL, opened in the browser: the binding), then "Allow"."""
    answer = app.get(f"{PREFIX}/connect", headers={"accept": "application/json"})
    ticket_url = answer.json()["url"]
    run.tickets.append(query_of(ticket_url)["ticket"])
    opened = browser.get(ticket_url)
    run.accepted["ticket"] = opened.status_code == 302
    run.bindings.extend(
        cookie.value or ""
        for cookie in browser.cookies.jar
        if cookie.name.endswith(BINDING_COOKIE) and cookie.value not in run.bindings
    )
    return MOBILE.land(browser, MOBILE.press(browser, opened.headers["location"], "Allow"))


def scenario(run: Run) -> None:
    """The seed's scenario and the other main paths, over HTTP and on the service."""
    app, browser = _clients(run, USER)
    with contextlib.closing(app), contextlib.closing(browser):
        visit = _connect(run, app, browser)
        run.accepted["binding and state"] = visit.title == CONNECTED
        MOBILE.land(browser, visit.callback_url)  # a reload of the callback page: a replay
        sent = query_of(visit.callback_url)
        legacy = app.post(f"{PREFIX}/exchange-code", json=sent)  # the seed's old app
        run.accepted["legacy exchange-code"] = legacy.status_code == 200
        app.get(f"{PREFIX}/status")
        if run.leads_route:
            MOBILE.new_app(app, visit.deep_link)  # status, then the leads
            run.fake.expire_access_tokens()  # the API's 401: the route's auth refreshes
            run.accepted["leads after a refresh"] = app.get(f"{PREFIX}/leads").status_code == 200
        _on_the_service(run)
        _a_failing_exchange(run)
        run.fake.expire_access_tokens()
        run.fake.revoke_refresh_tokens()  # a 401 no refresh cures: a new consent is needed
        if run.leads_route:
            app.get(f"{PREFIX}/leads")
        run.attempt("auth() after revocation", _leads_call(run))
        # The keep-alive sweep sends the last refresh token, which a refusal right after a
        # refresh left unsent ("refused again": no second refresh): it is revoked too.
        run.held.append(run.call(lambda oauth: oauth.refresh_due(within=timedelta(days=100))))
        _the_hook(run)
        app.post(f"{PREFIX}/disconnect")
        run.held.append(run.call(lambda oauth: oauth.status(USER)))
        # The cookies the browser keeps (the binding's own cookie is its place, if still set).
        run.held.extend(c for c in browser.cookies.jar if not c.name.endswith(BINDING_COOKIE))


def _on_the_service(run: Run) -> None:
    """What the app holds: results, ``auth()`` on its own client (a refresh after a 401),
    events; and the errors of a used ticket and of a code the token endpoint fails."""
    events: list[LifecycleEvent] = []
    run.oauth.on(LifecycleEvent, events.append)
    run.held.append(run.call(lambda oauth: oauth.status(USER)))
    if not run.leads_route:  # else the route refreshed already (a second 401 right after a
        run.fake.expire_access_tokens()  # refresh is "refused again": no more refreshes)
    run.held.extend(_leads_through_auth(run))
    run.attempt("used ticket", lambda oauth: oauth.redeem_ticket(run.tickets[0]))
    code = run.fake.issue_keys_tab_code()
    run.fake.fail_next("500", grant="authorization_code")
    host = run.fake.account_host
    failed = run.call(lambda oauth: oauth.connect_with_code("admin", code, host))
    run.accepted["a failing keys-tab code is refused"] = failed.refused is not None
    run.held.append(failed)
    run.held.extend(events)


def _leads_through_auth(run: Run) -> list[object]:
    """The leads on the app's own client with ``auth()`` (without a leads route: a 401, a
    refresh, the leads)."""
    auth, answer = run.call(_leads_call(run))
    run.accepted["leads through auth()"] = answer.status_code == 200
    return [auth, answer]


def _leads_call(run: Run) -> Callable[[Any], Any]:
    """GET the leads on a client of the app's with ``auth()``: the service's call."""
    url = f"https://{run.fake.account_host}/api/v4/leads"

    def blocking(oauth: AmoOAuth) -> tuple[object, httpx.Response]:
        auth = oauth.auth(USER)
        with httpx.Client(transport=run.served.transport(), auth=auth) as client:
            return auth, client.get(url)

    async def non_blocking(oauth: AsyncAmoOAuth) -> tuple[object, httpx.Response]:
        auth = oauth.auth(USER)
        async with httpx.AsyncClient(transport=run.served.async_transport(), auth=auth) as client:
            return auth, await client.get(url)

    return blocking if run.loop is None else non_blocking


def _a_failing_exchange(run: Run) -> None:
    """Another user's consent whose exchange amoCRM answers 500."""
    app, browser = _clients(run, OTHER)
    with contextlib.closing(app), contextlib.closing(browser):
        run.fake.fail_next("500", grant="authorization_code")
        visit = _connect(run, app, browser)
        run.accepted["a failing exchange shows no success"] = visit.title != CONNECTED
        app.get(f"{PREFIX}/status")


def _the_hook(run: Run) -> None:
    """amoCRM's disconnect hook (the integration uninstalled), as amoCRM sends it."""
    hook = run.fake.uninstall()
    run.signatures.append(hook["signature"])
    headers = {"user-agent": FakeAmoCRM.HOOK_USER_AGENT}
    hooks = {"response": [run.answers.hook("amocrm")]}
    with httpx.Client(base_url=run.backend, event_hooks=hooks) as amocrm:
        answer = amocrm.get(f"{PREFIX}/disconnect-hook", params=hook, headers=headers)
    run.accepted["the hook"] = answer.status_code < 300


# -- the evidence -------------------------------------------------------------------------------


@attrs.frozen
class Evidence:
    """A finished run: its canaries, what used them, and every text to search."""

    name: str
    canaries: list[Canary] = attrs.field(repr=False)
    used: dict[str, bool] = attrs.field(repr=False)
    texts: list[Text] = attrs.field(repr=False)


def _used(run: Run) -> dict[str, bool]:
    """Each canary's use, as the fake and the backend saw it."""
    fake, issued = run.fake, run.fake.issued
    used = {f"backend accepted: {what}": ok for what, ok in run.accepted.items()}
    used["client_secret (the fake accepted token calls)"] = (
        fake.token_call_count("authorization_code", "ok") >= 1
        and fake.token_call_count("refresh_token", "ok") >= 1
    )
    used["every code sent"] = all(fake.token_calls_for(code) >= 1 for code in issued.codes)
    used["every refresh token sent"] = all(
        fake.refresh_sends(token) >= 1 for token in issued.refresh_tokens
    )
    used["every access token used on the API"] = all(
        fake.api_calls_with(token) >= 1 for token in issued.access_tokens
    )
    used["tickets, bindings, signature read"] = bool(
        run.tickets and run.bindings and run.signatures
    )
    return used


def _logged(records: Records) -> dict[str, bool]:
    """That the server really logged: its request line of the callback (redacted) and, under
    uvicorn, a trace record; so a quiet log is not taken for a clean one."""
    lines = [(record.name, record.levelno, record.getMessage()) for record in records.records]
    return {
        "the server logged the callback's request line": any(
            name in ACCESS_LOGGERS and f"{PREFIX}/callback?" in line for name, _, line in lines
        ),
        # Every logger is at DEBUG: some record below INFO shows the capture takes them (the
        # library itself logs little at DEBUG since its table stopped firing ``transitions``'
        # debug lines; the HTTP clients' and servers' records prove the level, and are searched).
        "a DEBUG record reached the capture": any(level <= logging.DEBUG for _, level, _ in lines),
    }


@pytest.fixture(scope="module", params=sorted(STACKS))
def evidence(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Evidence:
    """One framework's run, once per module."""
    db = tmp_path_factory.mktemp(request.param) / "amo_oauth.db"
    with _everything_logged() as records:
        with _stack(request.param, db) as run:
            scenario(run)
            run.texts.extend(reprs(f"{run.name} held", run.oauth, run.oauth.config, run.store))
            run.texts.extend(reprs(f"{run.name} record", *run.store.scan(None, 100)))
            run.texts.extend(reprs(f"{run.name} held", *run.held))
        texts = [*records.texts(), *run.answers.texts, *run.texts]
    return Evidence(run.name, run.canaries(), _used(run) | _logged(records), texts)


def test_no_canary_shows_anywhere(evidence: Evidence) -> None:
    unused = [what for what, ok in evidence.used.items() if not ok]
    assert not unused, f"{evidence.name}: a canary was not used, its absence would prove nothing"
    assert {canary.kind for canary in evidence.canaries} >= KINDS
    leaks = findings(evidence.canaries, evidence.texts)
    assert not leaks, f"{evidence.name} leaked:\n" + "\n".join(leaks)


KINDS = {
    "client_secret",
    "state_secret",
    "code",
    "access_token",
    "refresh_token",
    "ticket",
    "binding",
    "hook_signature",
}


# -- the demo, in a subprocess ------------------------------------------------------------------


def test_the_demo_prints_no_canary(tmp_path: Path) -> None:
    """``amo-oauth demo`` with every logger at level 1 to stderr and uvicorn at ``trace`` with
    its access log: neither stdout nor stderr shows a secret of the run."""
    found = tmp_path / "canaries.json"
    done = subprocess.run(
        [sys.executable, "-u", str(TESTS / "_leak_demo.py"), str(found)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, "the demo failed (its output holds secrets: not shown)"
    report = json.loads(found.read_text())
    unused = [what for what, ok in report["used"].items() if not ok]
    assert not unused, f"the demo: a canary was not used: {unused}"
    assert "uvicorn.access" in done.stderr and "TRACE" in done.stderr  # the logs really ran
    canaries = [Canary(kind, value) for kind, value in report["canaries"]]
    assert {canary.kind for canary in canaries} >= {
        "client_secret",
        "code",
        "access_token",
        "ticket",
        "binding",
    }
    texts = [Text("demo stdout", done.stdout), Text("demo stderr", done.stderr)]
    state_secret = bytes.fromhex(report["state_secret_hex"])
    leaks = findings(canaries, texts)
    leaks += [f"state_secret in {t.sink}" for t in texts if _shows(state_secret, t.text)]
    assert not leaks, "the demo leaked:\n" + "\n".join(leaks)


def _shows(secret: bytes, text: str) -> bool:
    return any(form in text for form in forms(secret))


# -- the finder itself --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "planted",
    ["as is", "url-encoded", "json", "base64", "in an argument", "in a traceback", "in extra"],
)
def test_the_finder_finds_a_planted_canary(planted: str) -> None:
    """Each form the finder claims to catch, planted once: found, and named without its value."""
    value = "planted/canary+" + secrets.token_hex(12)
    shapes: dict[str, Callable[[], list[Text]]] = {
        "as is": lambda: [Text("page", f"<p>{value}</p>")],
        "url-encoded": lambda: [Text("location", "https://x/?a=" + _quoted(value))],
        "json": lambda: [Text("body", json.dumps({"v": value}))],
        "base64": lambda: [Text("header", "Basic " + _b64("id:" + value))],
        "in an argument": lambda: list(record_texts(_record("got %s", value))),
        "in a traceback": lambda: list(exception_texts("call", _chained(value))),
        "in extra": lambda: list(record_texts(_record("plain", None, leaked=value))),
    }
    texts = shapes[planted]()
    leaks = findings([Canary("code", value)], texts)
    assert leaks and all(value not in leak for leak in leaks)
    assert not findings([Canary("code", value + "x")], texts) or planted == "base64"


def _quoted(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def _b64(value: str) -> str:
    import base64

    return base64.b64encode(value.encode()).decode()


def _record(msg: str, arg: object, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "t", "msg": msg, "args": (arg,) if arg else ()})
    for name, value in extra.items():
        setattr(record, name, value)
    return record


def _chained(value: str) -> BaseException:
    try:
        try:
            raise KeyError(value)
        except KeyError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        return outer
