"""amo_oauth.testing.invariants: the invariant machine users run against their own backends.

It runs here against every example backend (FastAPI and Starlette over ASGI, Flask over
WSGI on a MemoryStore and on an SQLite file, Django's views over WSGI and ASGI), each with its
own sign-in, as a user's test would; against deliberately broken backends, each of which it
must catch (one exchanging every callback's code itself, one answering 403 to a replay, and
one per other invariant); its driver is tested on small apps of its own; and
``import amo_oauth.testing`` with its pytest plugin must not need hypothesis.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.test import override_settings
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.vendor.pretty import pretty

import django_settings
from amo_oauth import AmoOAuth, AsyncAmoOAuth, MemoryStore, SQLiteStore
from amo_oauth._demo import example_path, load_example
from amo_oauth.testing import FakeAmoCRM
from amo_oauth.testing._app_driver import AppDriver
from amo_oauth.testing.invariants import (
    DEFAULT_SETTINGS,
    SIGNED_OUT,
    WIDGET,
    BackendMachine,
    Browser,
    Consent,
    FakeSettings,
    HookQuery,
    denials,
    forged_states,
    machine_for,
    redirects,
    replays,
    run_invariants,
    second_codes,
    widget_installs,
)

from helpers import examples

django_settings.setup()
sys.path.insert(0, str(example_path("django_app")))  # the example's project package: backend
from backend.amo import with_lifespan  # noqa: E402
from backend.views import routes  # noqa: E402

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

#: The CI budget: under a minute for the example backends on a loaded two-core machine
#: (about 30 s unloaded): 50 examples of up to 30 steps each.
CI_BUDGET = 50
BUDGET = settings(
    max_examples=examples(CI_BUDGET),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
#: For the broken backends: stop at the first failure (no shrinking), one failure reported.
FIND_ONLY = settings(
    BUDGET,
    max_examples=200,
    phases=(Phase.generate,),
    report_multiple_bugs=False,
    derandomize=True,  # the same examples every run: found in every run, or in none
    database=None,
)


def bearer_sign_in(browser: Browser, user: str) -> Mapping[str, str]:
    """The examples' app sign-in: POST /login {"user": ...} -> a bearer token."""
    answer = browser.request("POST", "/login", json={"user": user})
    assert answer.status_code == 200, answer.text
    return {"authorization": f"Bearer {answer.json()['token']}"}


def fastapi_app(amo: FakeSettings) -> Any:
    # The app's lifespan closes the service and the client at shutdown.
    http = amo.async_http()
    oauth = AsyncAmoOAuth(amo.config, store=MemoryStore(), http=http)
    return load_example("fastapi_app").create_app(oauth, api=http)


def flask_app(amo: FakeSettings) -> Any:
    http = amo.http()
    oauth = amo.closes(AmoOAuth(amo.config, store=MemoryStore(), http=http))
    return load_example("flask_app").create_app(oauth, api=http)


class Folder:
    """A temporary directory that ``FakeSettings.closes`` removes when the example ends."""

    def __init__(self) -> None:
        self._made = tempfile.TemporaryDirectory(prefix="amo-invariants-")
        self.path = Path(self._made.name)

    def close(self) -> None:
        self._made.cleanup()


def flask_sqlite_app(amo: FakeSettings) -> Any:
    """The Flask example over the store it ships with: an SQLite file, new per example."""
    folder = amo.closes(Folder())
    http = amo.http()
    store = SQLiteStore(folder.path / "amo_oauth.db")
    oauth = amo.closes(AmoOAuth(amo.config, store=store, http=http))
    return load_example("flask_app").create_app(oauth, api=http)


STARLETTE_TOKENS = {f"token-of-{user}": user for user in ("user-1", "user-2")}


def starlette_app(amo: FakeSettings) -> Any:
    oauth = AsyncAmoOAuth(amo.config, store=MemoryStore(), http=amo.async_http())
    return load_example("starlette_app").create_app(oauth, STARLETTE_TOKENS)


def starlette_sign_in(browser: Browser, user: str) -> Mapping[str, str]:
    return {"authorization": f"Bearer token-of-{user}"}  # the example's fixed tokens


def django_app(amo: FakeSettings) -> WSGIApp:
    """The example's sync views under Django's WSGI handler (its CSRF middleware on)."""
    http = amo.http()
    oauth = amo.closes(AmoOAuth(amo.config, store=MemoryStore(), http=http))
    urlconf = django_settings.urlconf(*routes(oauth, http))
    handler = WSGIHandler()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        with override_settings(ROOT_URLCONF=urlconf, ALLOWED_HOSTS=["backend.example"]):
            return handler(environ, start_response)

    return app


def django_asgi_app(amo: FakeSettings) -> Any:
    """The example's async views under Django's ASGI handler, with the example's lifespan
    (Django's handler refuses one), which closes the service and its client."""
    http = amo.async_http()
    oauth = AsyncAmoOAuth(amo.config, store=MemoryStore(), http=http)
    urlconf = django_settings.urlconf(*routes(oauth, http))
    handler = ASGIHandler()

    async def close() -> None:
        await oauth.aclose()
        await http.aclose()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        with override_settings(ROOT_URLCONF=urlconf, ALLOWED_HOSTS=["backend.example"]):
            await handler(scope, receive, send)

    return with_lifespan(app, on_shutdown=close)


BACKENDS = {
    "fastapi": (fastapi_app, bearer_sign_in),
    "flask": (flask_app, bearer_sign_in),
    "starlette": (starlette_app, starlette_sign_in),
    "django": (django_app, bearer_sign_in),
    # The same views as "django", awaited; Django's ASGI handler is three times slower per
    # step (a thread hop for each sync part), so it gets a third of the examples.
    "django-asgi": (django_asgi_app, bearer_sign_in),
    # The store the examples ship with, beside the MemoryStore above.
    "flask-sqlite": (flask_sqlite_app, bearer_sign_in),
}
EXAMPLES = {"django-asgi": 15, "flask-sqlite": 15}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_each_example_backend_keeps_the_invariants(backend: str) -> None:
    make_app, sign_in = BACKENDS[backend]
    budget = settings(BUDGET, max_examples=examples(EXAMPLES.get(backend, CI_BUDGET)))
    run_invariants(make_app, sign_in, settings=budget)


# -- the machine can fail ---------------------------------------------------------------------


def _code_of(environ: Mapping[str, Any]) -> str | None:
    if not str(environ.get("PATH_INFO", "")).endswith("/callback"):
        return None
    return parse_qs(str(environ.get("QUERY_STRING", ""))).get("code", [None])[0]


def _exchange(amo: FakeSettings, code: str) -> None:
    """Send ``code`` to the fake's token endpoint as a backend of its own would."""
    fake = amo.fake
    fields = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "redirect_uri": fake.redirect_uri,
    }
    amo.http().post(f"https://{fake.account_host}/oauth2/access_token", data=fields)


def answering(
    status: str,
    body: bytes,
    when: Callable[[Mapping[str, Any]], bool],
    inner: Callable[[FakeSettings], WSGIApp] = flask_app,
    content_type: str = "text/plain",
) -> Callable[[FakeSettings], WSGIApp]:
    """A backend (``inner``'s) that answers ``status`` with ``body`` to every request ``when``
    accepts (its WSGI environ) and passes the others on."""

    def make_app(amo: FakeSettings) -> WSGIApp:
        app = inner(amo)

        def broken(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            if when(environ):
                start_response(status, [("content-type", content_type)])
                return [body]
            return app(environ, start_response)

        return broken

    return make_app


def exchanging_every_callback(amo: FakeSettings) -> WSGIApp:
    """A backend that sends every callback's code to amoCRM itself, seen before or not."""
    app = flask_app(amo)

    def broken(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        code = _code_of(environ)
        if code is not None:
            _exchange(amo, code)
        return app(environ, start_response)

    return broken


def forbidding_replays(amo: FakeSettings) -> WSGIApp:
    """A backend that answers 403 to a callback whose code it saw before."""
    app, seen = flask_app(amo), set[str]()

    def broken(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        code = _code_of(environ)
        if code is not None and code in seen:
            start_response("403 Forbidden", [("content-type", "text/plain")])
            return [b"seen before"]
        if code is not None:
            seen.add(code)
        return app(environ, start_response)

    return broken


def test_it_catches_a_backend_that_exchanges_on_every_callback() -> None:
    """Caught as a code sent twice, a forged state's code sent, or (a code it sent from the
    wrong browser, which the library then refused) tokens issued that /status does not show."""
    caught = (
        "reached amoCRM's token endpoint 2 times|a code with a forged state was sent"
        "|/status says connected=False, expected True"
    )
    with pytest.raises(AssertionError, match=caught):
        run_invariants(exchanging_every_callback, bearer_sign_in, settings=FIND_ONLY)


def test_it_catches_a_backend_that_answers_403_to_a_replay() -> None:
    with pytest.raises(AssertionError, match=r"replayed code .* was answered 403"):
        run_invariants(forbidding_replays, bearer_sign_in, settings=FIND_ONLY)


def test_it_catches_a_status_that_does_not_follow_the_connection() -> None:
    """A backend whose /disconnect answers 200 and forgets nothing."""
    make_app = answering(
        "200 OK",
        b"{}",
        lambda environ: str(environ.get("PATH_INFO", "")).endswith("/disconnect"),
        content_type="application/json",
    )
    with pytest.raises(AssertionError, match="/status says connected=True, expected False"):
        run_invariants(make_app, bearer_sign_in, settings=FIND_ONLY)


def test_it_catches_a_secret_in_an_answer() -> None:
    """A backend that puts the code in a response header (a debugging leftover)."""

    def make_app(amo: FakeSettings) -> WSGIApp:
        app = flask_app(amo)

        def broken(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            code = _code_of(environ)

            def start(status: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
                return start_response(status, [*headers, ("x-debug-code", code or "")], *rest)

            return app(environ, start)

        return broken

    with pytest.raises(AssertionError, match="/callback's answer holds a code"):
        run_invariants(make_app, bearer_sign_in, settings=FIND_ONLY)


def test_it_catches_a_5xx() -> None:
    with pytest.raises(AssertionError, match="GET /callback answered 500"):
        run_invariants(answering_500(to="error=access_denied"), bearer_sign_in, settings=FIND_ONLY)


def exchanging_on_the_third_arrival(amo: FakeSettings) -> WSGIApp:
    """A backend that sends a code to amoCRM itself the 3rd time its redirect arrives (the 2nd
    replay): a default run must catch it, not a big budget only."""
    app = flask_app(amo)
    arrivals: dict[str, int] = {}

    def broken(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        code = _code_of(environ)
        if code is not None:
            arrivals[code] = arrivals.get(code, 0) + 1
            if arrivals[code] == 3:
                _exchange(amo, code)
        return app(environ, start_response)

    return broken


#: The default budget, stopping at the first failure (what is found, not how it shrinks).
DEFAULT_FIND_ONLY = settings(DEFAULT_SETTINGS, phases=(Phase.generate,), database=None)


#: Caught as the code sent twice; as the replay after it answered 403 (the library saw the
#: code spent by someone else; the step's checks come before the invariants); or, when the
#: library had refused the code, as tokens issued that /status does not show (a user's) or
#: that the hook finds the library never held (a widget install's, which has no /status).
SENT_TWICE = (
    "reached amoCRM's token endpoint 2 times|a replayed code .* was answered 403"
    "|/status says connected=False, expected True"
    "|the hook disconnected more connections than held revoked tokens"
)


def test_the_default_budget_catches_an_exchange_on_the_third_arrival() -> None:
    """Twenty default runs (random seeds, as a user's), each must catch it: before the rules
    replayed a redirect several times in a row, about one run in four missed it."""
    for _ in range(20):
        with pytest.raises(AssertionError, match=SENT_TWICE):
            run_invariants(
                exchanging_on_the_third_arrival, bearer_sign_in, settings=DEFAULT_FIND_ONLY
            )


def _reinstalled_before_the_hook(make_app: Callable[[FakeSettings], Any]) -> BackendMachine:
    """CI's failure, as explicit steps: a widget install; an uninstall; two new widget codes
    (one redirected into user-1's browser) before the hook; the first of them arriving twice
    more (its 3rd arrival). The connection still holds the uninstalled tokens: amo_oauth
    keeps a connected connection on a widget code with no consent (protocol notes §2)."""
    machine = machine_for(make_app, bearer_sign_in)()
    widget = Consent(WIDGET, SIGNED_OUT, None)
    machine.arrive(widget, machine.fake.authorize(from_widget=True), "own")
    machine.uninstall()
    again = machine.arrive(widget, machine.fake.authorize(from_widget=True), "user-1")
    machine.arrive(widget, machine.fake.authorize(from_widget=True), "own")
    for _ in range(2):
        machine.callback(again, SIGNED_OUT)
    return machine


def _genuine_hook(machine: BackendMachine) -> None:
    fake = machine.fake
    machine.hook(HookQuery(fake.hook_query(), genuine=True, account_id=fake.account_id))


def test_the_hook_ends_a_widget_install_whose_tokens_an_uninstall_revoked() -> None:
    """The library's side: new widget codes after the uninstall did not replace the revoked
    tokens, so the hook disconnects the install, and the model expects exactly that."""
    machine = _reinstalled_before_the_hook(flask_app)
    try:
        assert machine.revoked == {WIDGET}
        _genuine_hook(machine)
        assert machine.connected[WIDGET] is False
        assert machine.revoked == set()
    finally:
        machine.teardown()


def test_the_hook_names_a_widget_code_the_app_sent_itself() -> None:
    """The kit's side: the broken backend sends the refused code on its 3rd arrival; no step
    check sees it (sent once, no /status for a widget install), the hook's count does."""
    machine = _reinstalled_before_the_hook(exchanging_on_the_third_arrival)
    try:
        machine.each_code_is_sent_at_most_once()
        assert machine.revoked == set()  # the model took those tokens as the install's
        with pytest.raises(AssertionError, match=SENT_TWICE):
            _genuine_hook(machine)
    finally:
        machine.teardown()


def answering_500(*, to: str, also_forbidding_replays: bool = False) -> Callable[..., WSGIApp]:
    """A backend answering 500 to requests whose query holds ``to`` (and, if asked, 403 to a
    replayed callback too)."""

    return answering(
        "500 Internal Server Error",
        b"oops",
        lambda environ: to in str(environ.get("QUERY_STRING", "")),
        forbidding_replays if also_forbidding_replays else flask_app,
    )


def test_it_catches_a_5xx_to_widget_installs() -> None:
    with pytest.raises(AssertionError, match="GET /callback answered 500"):
        run_invariants(answering_500(to="from_widget=1"), bearer_sign_in, settings=FIND_ONLY)


def test_no_widget_installs_are_sent_when_the_app_refuses_them() -> None:
    """``widget_installs=False``: the config refuses them and the machine sends none."""
    configs: list[bool] = []

    def make_app(amo: FakeSettings) -> WSGIApp:
        configs.append(amo.config.allow_widget_installs)
        return answering_500(to="from_widget=1")(amo)

    few = settings(FIND_ONLY, max_examples=20)
    run_invariants(make_app, bearer_sign_in, settings=few, widget_installs=False)
    assert set(configs) == {False}


def test_several_failures_raise_one_assertion_error_naming_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under ``report_multiple_bugs=True`` hypothesis raises an ExceptionGroup; the user is
    promised an AssertionError: the first, the others in its notes. (The group is made here:
    whether hypothesis finds two distinct bugs within a shrink bound depends on the load.)"""
    from amo_oauth.testing import invariants

    def two_bugs(machine: object, settings: object) -> None:
        raise BaseExceptionGroup(
            "two", [AssertionError("a 5xx"), AssertionError("a 403 for a replay")]
        )

    monkeypatch.setattr(invariants, "run_state_machine_as_test", two_bugs)
    with pytest.raises(AssertionError, match="a 5xx") as failed:
        run_invariants(flask_app, bearer_sign_in)
    notes = "\n".join(getattr(failed.value, "__notes__", []))
    assert "also failing: AssertionError: a 403 for a replay" in notes, notes


def test_the_default_settings_report_one_failure() -> None:
    assert DEFAULT_SETTINGS.report_multiple_bugs is False


def test_shrinking_is_bounded_while_it_runs() -> None:
    """Hypothesis reads its shrink bound (300 s, no setting) when it starts shrinking; the
    run lowers it to ``shrink_seconds`` and puts it back."""
    from hypothesis.internal.conjecture import engine

    seen: list[float] = []

    def make_app(amo: FakeSettings) -> WSGIApp:
        seen.append(engine.MAX_SHRINKING_SECONDS)
        return flask_app(amo)

    before = engine.MAX_SHRINKING_SECONDS
    run_invariants(
        make_app, bearer_sign_in, settings=settings(BUDGET, max_examples=1), shrink_seconds=7
    )
    assert set(seen) == {7}
    assert before == engine.MAX_SHRINKING_SECONDS


@given(data=st.data())
@settings(max_examples=5, database=None)
def test_a_failure_shows_no_code_or_state(data: st.DataObject) -> None:
    """The steps of a failure print the values drawn: redirect URLs and forged states show
    only their kind."""
    fake = FakeAmoCRM()
    url = data.draw(redirects(fake, "the-state"))
    drawn = [url, data.draw(replays(url)), data.draw(second_codes(fake, url))]
    drawn += [data.draw(denials(fake, "the-state")), data.draw(widget_installs(fake))]
    drawn += [data.draw(forged_states("the-state"))]
    shown = [pretty(value) for value in drawn]
    assert not [said for said in shown if "code=" in said or "the-state" in said], shown


@given(data=st.data())
@settings(max_examples=5, database=None)
def test_the_strategies_compose_in_a_users_own_test(data: st.DataObject) -> None:
    """What the testing guide shows: a redirect, its replays, a second code, a denial."""
    fake = FakeAmoCRM()
    url = data.draw(redirects(fake, "s"))
    again = parse_qs(data.draw(second_codes(fake, url)).partition("?")[2])
    assert again["state"] == ["s"]
    assert again["code"] != parse_qs(url.partition("?")[2])["code"]
    assert set(data.draw(replays(url))) == {url}
    assert "error=access_denied" in data.draw(denials(fake, "s"))
    widget = parse_qs(data.draw(widget_installs(fake)).partition("?")[2])
    assert widget["from_widget"] == ["1"]
    assert "state" not in widget


# -- hypothesis stays out of the runtime --------------------------------------------------------

WITHOUT_HYPOTHESIS = """\
import sys
sys.modules["hypothesis"] = None  # as if it were not installed: its import fails
import amo_oauth.testing, amo_oauth.testing._plugin, amo_oauth.testing.faults
from amo_oauth.testing import FakeAmoCRM
FakeAmoCRM().authorize("state")
assert "amo_oauth.testing.invariants" not in sys.modules
try:
    import amo_oauth.testing.invariants
except ImportError as exc:
    print(exc)
"""

LOADED = """\
import sys
import amo_oauth.testing, amo_oauth.testing._plugin
print(sorted(name for name in sys.modules if name.partition(".")[0] == "hypothesis"))
"""


def python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.strip()


def test_the_kit_and_its_plugin_work_without_hypothesis() -> None:
    said = python(WITHOUT_HYPOTHESIS)
    assert "needs the testing extra: pip install 'amo_oauth[testing]'" in said, said


def test_the_plugin_does_not_import_hypothesis() -> None:
    assert python(LOADED) == "[]"


def test_the_testing_extra_brings_what_the_kit_needs() -> None:
    """The extra the install hint names is the one that brings hypothesis (and pytest)."""
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    testing = pyproject["project"]["optional-dependencies"]["testing"]
    assert {re.split(r"[<>=\[ ]", need)[0] for need in testing} >= {"hypothesis", "pytest"}


def mounted_elsewhere(amo: FakeSettings) -> Any:
    """A Flask app with amo_oauth's routes under /v2/amo."""
    from flask import Flask

    from amo_oauth.flask import blueprint

    oauth = amo.closes(AmoOAuth(amo.config, store=MemoryStore(), http=amo.http()))
    app = Flask("elsewhere")
    users = {f"t-{user}": user for user in amo.users}

    def user_of(request: Any) -> str | None:
        scheme, _, token = (request.header("authorization") or "").partition(" ")
        return users.get(token) if scheme == "Bearer" else None

    app.register_blueprint(
        blueprint(oauth, connection_id=user_of, app_scheme="app", prefix="/v2/amo")
    )
    return app


def token_sign_in(browser: Browser, user: str) -> Mapping[str, str]:
    return {"authorization": f"Bearer t-{user}"}


def test_a_backend_under_another_prefix() -> None:
    """The routes are found as siblings of the redirect URI's /callback."""
    few = settings(BUDGET, max_examples=5)
    run_invariants(
        mounted_elsewhere,
        token_sign_in,
        settings=few,
        redirect_uri="https://app.example/v2/amo/callback",
    )


def test_routes_not_found_name_the_redirect_uri_to_pass() -> None:
    """The prefix forgotten: the 404 says where the machine looked and what to pass."""
    told = r"answered 404: .* pass run_invariants\(\.\.\., redirect_uri=\.\.\.\)"
    with pytest.raises(AssertionError, match=told):
        run_invariants(mounted_elsewhere, token_sign_in, settings=FIND_ONLY)


# -- the driver: ASGI with and without a lifespan, WSGI, a cookie jar per browser ---------------

Scope = dict[str, Any]


def asgi_app(said: list[str], *, lifespan: str | None) -> Callable[..., Any]:
    """An ASGI app that notes what it was asked; ``lifespan``: None (it refuses the scope, as
    Django's handler does), "complete" or "failed"."""

    async def app(scope: Scope, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            if lifespan is None:
                raise ValueError("no lifespan here")
            while True:
                phase = (await receive())["type"].rpartition(".")[2]
                said.append(phase)
                await send({"type": f"lifespan.{phase}.{lifespan}"})
                if phase == "shutdown":
                    return
        said.append(scope["path"])
        cookie = dict(scope["headers"]).get(b"cookie", b"")
        headers = [(b"set-cookie", b"seen=yes; Path=/; Secure")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": cookie})

    return app


@pytest.mark.parametrize("lifespan", [None, "complete"])
def test_an_asgi_app_is_served_with_its_lifespan_if_it_has_one(lifespan: str | None) -> None:
    said: list[str] = []
    driver = AppDriver(asgi_app(said, lifespan=lifespan), "https://backend.example")
    first, other = driver.browser(), driver.browser()
    assert first.request("GET", "/a").text == ""
    assert first.request("GET", "/b").text == "seen=yes"  # its own jar keeps the cookie
    assert other.request("GET", "/c").text == ""  # another browser's jar is empty
    driver.close()
    expected = ["/a", "/b", "/c"]
    assert said == (["startup", *expected, "shutdown"] if lifespan else expected)


def test_a_failed_startup_is_raised() -> None:
    """Raised, not hung: the app still waits for messages, and its task is cancelled."""
    with pytest.raises(RuntimeError, match="lifespan startup failed"):
        AppDriver(asgi_app([], lifespan="failed"), "https://backend.example")


def test_a_wsgi_app_gets_a_cookie_jar_per_browser() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("set-cookie", "seen=yes; Path=/; Secure")])
        return [str(environ.get("HTTP_COOKIE", "")).encode()]

    driver = AppDriver(app, "https://backend.example")
    first, other = driver.browser(), driver.browser()
    assert [first.request("GET", "/").text for _ in range(2)] == ["", "seen=yes"]
    assert other.request("GET", "/").text == ""
    driver.close()


def test_a_failing_sign_in_is_reported_and_the_app_shut_down() -> None:
    said: list[str] = []

    def make_app(amo: FakeSettings) -> Any:
        return asgi_app(said, lifespan="complete")

    def sign_in(browser: Browser, user: str) -> Mapping[str, str]:
        raise LookupError("no such sign-in")

    with pytest.raises(LookupError, match="no such sign-in"):
        run_invariants(make_app, sign_in, settings=settings(FIND_ONLY, max_examples=1))
    assert said[0] == "startup" and said[-1] == "shutdown"
