"""``amo-oauth demo``: the seed's scenario, end to end over real HTTP, against FakeAmoCRM.

Two servers on 127.0.0.1: FakeAmoCRM (its consent page, token endpoint and API) and the FastAPI
example backend (``examples/fastapi_app.py``, on an SQLite file in a temporary directory). The
user signs in to the app, taps "Connect amoCRM", taps "Allow" in the in-app browser and "Return
to App". Then the OLD app posts the code again to exchange-code (the seed's 403) and the NEW app
reads ``success=true`` from the deep link (``examples/mobile_client.py`` plays both). Expected,
as in the seed: no 403, "Connected", the leads listed, and exactly one token-endpoint call.

``--serve`` keeps both servers running for a person with a browser, until Ctrl-C; there a
private integration's admin can also connect without the consent page, pasting a long-lived
token or the keys-tab code from the fake's "Keys and scopes" tab into the backend's ``/admin``,
and a second integration, in the site button's metadata mode, is served by the same routes
(``/connect?integration=site``): the fake's stand-in button makes a new integration for the
account, posts its keys to the backend's ``/secrets`` and redirects back.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import secrets
import shlex
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs
import httpx

from ._async_service import AsyncAmoOAuth
from ._config import Config
from ._results import ButtonMetadata
from .stores import SQLiteStore
from .testing import FakeAmoCRM

__all__ = [
    "example_path",
    "listening_socket",
    "load_example",
    "play_app",
    "run_demo",
    "serve_asgi",
]

USER = "demo"
PREFIX = "/api/amo-crm"
#: What the site button shows of the integration amoCRM (the fake) makes for each account.
BUTTON = ButtonMetadata("amo_oauth demo", "The demo's leads, through the site button")
LEADS = (
    {"name": "Website redesign", "price": 120000},
    {"name": "CRM rollout for 40 seats", "price": 480000},
    {"name": "Support contract 2025", "price": 96000},
)


#: What the demo needs beyond the core: the extra that installs it, and its modules.
EXTRA = "fastapi"
EXTRA_MODULES = ("fastapi", "uvicorn")


class DemoUnavailable(Exception):
    """The demo cannot run here (its examples are not installed, or FastAPI/uvicorn missing)."""


def _say(text: str = "") -> None:
    print(text, flush=True)


# -- loading the examples and serving them --------------------------------------------------------


def example_path(name: str) -> Path:
    """Where ``examples/{name}`` is for this installation of the package.

    A wheel ships the demo's examples inside the package, as ``amo_oauth/_examples/{name}``
    (pyproject.toml's force-include copies them there at build time); a source checkout (an
    editable install) has them in ``examples/`` beside ``src/``.
    """
    import amo_oauth

    package = Path(amo_oauth.__file__).resolve().parent
    shipped = package / "_examples" / name
    return shipped if shipped.is_file() else package.parents[1] / "examples" / name


def require_extra() -> None:
    """Import what the demo's backend runs on, or say which extra installs it.

    Raises:
        DemoUnavailable: FastAPI or uvicorn is not installed.
    """
    for module in EXTRA_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise DemoUnavailable(
                f"the demo needs the {EXTRA} extra ({', '.join(EXTRA_MODULES)}), not installed "
                f"here ({exc}): pip install 'amo_oauth[{EXTRA}]' (a wheel's or a checkout's "
                f"path takes the same [{EXTRA}] suffix)"
            ) from None


def load_example(name: str) -> ModuleType:
    """Import ``examples/{name}.py`` from where this installation keeps it (`example_path`).

    Raises:
        DemoUnavailable: the file is not there, or it imports something not installed.
    """
    path = example_path(f"{name}.py")
    if not path.is_file():
        raise DemoUnavailable(
            f"{name}.py is missing from this installation of amo_oauth (a wheel ships it "
            "inside the package, a source checkout in examples/): reinstall amo_oauth"
        )
    spec = importlib.util.spec_from_file_location(f"amo_oauth_example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic and dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:
        del sys.modules[spec.name]
        raise DemoUnavailable(f"{name}.py: {exc}: pip install 'amo_oauth[{EXTRA}]'") from None
    return module


def listening_socket() -> socket.socket:
    """A TCP socket listening on 127.0.0.1 on an ephemeral port.

    Bound first so the backend's URL (its redirect URI) is known before the app is built.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def wait_until(ready: Callable[[], bool], thread: threading.Thread, what: str) -> None:
    """Wait (up to 10 s) for ``ready()``; fail early when ``thread`` died."""
    deadline = time.monotonic() + 10
    while not ready():
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.01)


@contextlib.contextmanager
def serve_asgi(
    app: Any, sock: socket.socket, *, log_level: str | None = None, access_log: bool = False
) -> Iterator[str]:
    """Run ``app`` under uvicorn on ``sock`` in a thread; yield its base URL; stop it after.

    The app's lifespan runs (startup, then shutdown when the block ends). ``log_level`` and
    ``access_log`` are uvicorn's (the leak canaries run it at ``trace`` with the access log).
    """
    import uvicorn

    # log_config=None: uvicorn leaves the process's logging alone (the demo prints its own).
    config = uvicorn.Config(
        app, lifespan="on", log_config=None, log_level=log_level, access_log=access_log
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True
    )
    thread.start()
    try:
        wait_until(lambda: server.started, thread, "uvicorn")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


# -- the stack: the fake amoCRM and the backend ---------------------------------------------------


@attrs.frozen
class Stack:
    """The running fake amoCRM and backend."""

    fake: FakeAmoCRM
    fake_url: str
    backend: str
    site_button: bool = False
    """Whether the second, metadata-mode integration is served (it needs the crypto extra)."""


def _has_crypto() -> bool:
    """The site button's metadata mode encrypts the connection into each state: without the
    crypto extra the demo serves the seed's integration alone."""
    return importlib.util.find_spec("cryptography") is not None


@contextlib.contextmanager
def _stack(db: Path) -> Iterator[Stack]:
    fastapi_app = load_example("fastapi_app")
    sock = listening_socket()
    backend = f"http://127.0.0.1:{sock.getsockname()[1]}"
    # A fresh secret per run: nothing worth hiding, and nothing that could leak from a real setup.
    fake = FakeAmoCRM(
        redirect_uri=f"{backend}{PREFIX}/callback",
        client_secret=secrets.token_urlsafe(24),
        leads=LEADS,
    )
    with fake.serve() as served:
        config = Config(
            client_id=fake.client_id,
            client_secret=fake.client_secret,
            redirect_uri=fake.redirect_uri,
            state_secret=secrets.token_bytes(32),
            authorize_url=f"{served.url}/oauth",
        )
        # One client for the token endpoint and the API, both routed to the fake over loopback;
        # the app closes it (and the services) on shutdown.
        http = httpx.AsyncClient(transport=served.async_transport())
        store = SQLiteStore(db)
        oauth = AsyncAmoOAuth(config, store=store, http=http)
        site = None
        if _has_crypto():
            # A product installed through amoCRM's site button in metadata mode, behind the
            # same routes: its client id only names its connections; each account's own
            # integration (its keys posted to /secrets by the fake's install) is in the record.
            site_config = Config(
                client_id="site-button",
                redirect_uri=fake.redirect_uri,
                secrets_uri=f"{backend}{PREFIX}/secrets",
                state_secret=secrets.token_bytes(32),
                authorize_url=f"{served.url}/oauth",
                button_script_url=f"{served.url}/auth/button.min.js",
            )
            site = AsyncAmoOAuth(site_config, store=store, http=http)
        app = fastapi_app.create_app(
            oauth,
            app_scheme="foryoure",
            api=http,
            site_button=site,
            button=BUTTON if site is not None else None,
        )
        with serve_asgi(app, sock) as url:
            yield Stack(fake, served.url, url, site_button=site is not None)


class _Transitions(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _say(f"   status: {record.getMessage()}")


@contextlib.contextmanager
def _transitions_printed() -> Iterator[None]:
    """Print the "amo_oauth" logger's INFO lines: one per status change."""
    logger = logging.getLogger("amo_oauth")
    handler, level = _Transitions(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def run_demo(*, serve: bool = False) -> int:
    """Run the seed's scenario (or, with ``serve``, keep serving); print what happens.

    Returns:
        0 when the result is the seed's expected one (or Ctrl-C ended ``serve``), 1 when not,
        2 when the demo cannot run here.
    """
    try:
        require_extra()
        mobile = load_example("mobile_client")
        with (
            tempfile.TemporaryDirectory() as tmp,
            _stack(Path(tmp) / "amo_oauth.db") as stack,
            _transitions_printed(),
        ):
            return _serve(stack) if serve else _scenario(stack, mobile)
    except DemoUnavailable as exc:
        print(f"amo-oauth demo: {exc}", file=sys.stderr)
        return 2


# -- the scenario ----------------------------------------------------------------------------------


def _token_calls(fake: FakeAmoCRM) -> str:
    calls = fake.token_calls
    detail = ", ".join(f"{grant} {outcome}: {n}" for (grant, outcome), n in sorted(calls.items()))
    return f"{sum(calls.values())} ({detail or 'none'})"


def _shown(deep_link: str) -> str:
    """The deep link with its state elided: single-use and spent, but no need to print it."""
    parts = urlsplit(deep_link)
    query = [(k, "..." if k == "state" else v) for k, v in parse_qsl(parts.query)]
    return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query, safe='.')}"


def _scenario(stack: Stack, mobile: ModuleType) -> int:
    statuses: list[int] = []

    def hook(who: str) -> Callable[[httpx.Response], None]:
        show = mobile.trace(_say, who)

        def record(response: httpx.Response) -> None:
            statuses.append(response.status_code)
            show(response)

        return record

    _say("amo_oauth demo: the seed's scenario over real HTTP on 127.0.0.1")
    _say(f"   fake amoCRM  {stack.fake_url}  (consent page; token endpoint and API of "
         f"{stack.fake.account_host})")  # fmt: skip
    _say(f"   backend      {stack.backend}  (examples/fastapi_app.py, SQLite in a temp dir)")
    with (
        httpx.Client(event_hooks={"response": [hook("browser")]}) as browser,
        httpx.Client(base_url=stack.backend, event_hooks={"response": [hook("app")]}) as app,
    ):
        try:
            visit = _connect(stack, mobile, browser, app)
            old, new = _apps(mobile, app, visit)
        except (httpx.HTTPError, mobile.BrowserError) as exc:
            # Not the exception's text: httpx's names the URL, and the callback's has the code.
            _say(
                f"   FAILED: {type(exc).__name__}; token-endpoint calls: {_token_calls(stack.fake)}"
            )
            _say("Result: NOT as expected.")
            return 1
    return _verdict(stack, statuses, visit, old, new)


def _connect(stack: Stack, mobile: ModuleType, browser: httpx.Client, app: httpx.Client) -> Any:
    _say()
    _say('1. The user signs in to the app and taps "Connect amoCRM": the app asks its backend')
    _say("   for a one-minute ticket URL and opens it in the in-app browser, which gets the")
    _say("   browser-binding cookie there (the consent completes only in that browser).")
    token = mobile.sign_in(app, USER)
    consent = mobile.open_connect(browser, stack.backend, token)
    _say('2. On amoCRM\'s consent page the user taps "Allow"; amoCRM sends the browser back')
    _say("   to the backend's callback, which exchanges the code (once) and connects.")
    visit = mobile.land(browser, mobile.press(browser, consent, "Allow"))
    _say(f'   page: "{visit.title}"; its "Return to App" button opens')
    note = "  (no code in it)" if _code_free_success(visit) else ""
    _say(f"   {_shown(visit.deep_link)}{note}")
    _say(f"   token-endpoint calls so far: {_token_calls(stack.fake)}")
    return visit


def _apps(mobile: ModuleType, app: httpx.Client, visit: Any) -> tuple[Any, Any]:
    _say()
    _say("3. The OLD app (the seed's) posts the code it saw to exchange-code once more.")
    _say("   (The seed's backend answered 403 here and the app never showed 'Connected'.)")
    old = mobile.old_app(app, visit.callback_url)
    _say(f"   the app shows: {_indent(old)}")
    _say()
    _say("4. The NEW app reads success=true from the deep link, then the status and the leads.")
    new = mobile.new_app(app, visit.deep_link)
    _say(f"   the app shows: {_indent(new)}")
    return old, new


def _code_free_success(visit: Any) -> bool:
    query = dict(parse_qsl(urlsplit(visit.deep_link).query))
    return query.get("success") == "true" and "code" not in query


def _indent(screen: Any) -> str:
    return str(screen).replace("\n", "\n   ")


def _verdict(stack: Stack, statuses: list[int], visit: Any, old: Any, new: Any) -> int:
    calls = stack.fake.token_calls
    _say()
    _say(f"Token-endpoint calls: {_token_calls(stack.fake)}")
    _say("Expected (the seed): no 403, status 'Connected', the leads listed, one token call.")
    checks = {
        "a 403 was answered": 403 not in statuses,
        "a 5xx was answered": not any(status >= 500 for status in statuses),
        "the deep link is not success=true, or carries the code": _code_free_success(visit),
        "the old app does not show 'Connected' and the leads": old.connected and bool(old.leads),
        "the new app does not show 'Connected' and the leads": new.connected and bool(new.leads),
        "not exactly one token-endpoint call": calls == {("authorization_code", "ok"): 1},
    }
    failed = [problem for problem, ok in checks.items() if not ok]
    for problem in failed:
        _say(f"   FAILED: {problem}")
    _say("Result: as expected." if not failed else "Result: NOT as expected.")
    return 1 if failed else 0


# -- serving for a person -------------------------------------------------------------------------


def _serve(stack: Stack) -> int:
    start = f"{stack.backend}/login?{urlencode({'next': PREFIX + '/connect'})}"
    _say("amo_oauth demo --serve: FakeAmoCRM and examples/fastapi_app.py on 127.0.0.1")
    _say(f"   fake amoCRM  {stack.fake_url}")
    _say(f"   backend      {stack.backend}")
    _say()
    _say(f"Open this in a browser, sign in as '{USER}' (or any name) and connect amoCRM:")
    _say(f"   {start}")
    _say('Press "Allow" (or "Deny") on the consent page; the backend shows "Return to App"')
    _say("(its foryoure:// link is for the mobile app: a desktop browser will not open it).")
    _say(f"Then, in the same browser: {stack.backend}{PREFIX}/status")
    _say(f"                       and {stack.backend}{PREFIX}/leads")
    _say(f"The backend's API, documented: {stack.backend}/docs")
    _say("Or play the mobile app against it, old or new, from another terminal:")
    for version in ("old", "new"):
        _say(f"   {_command('demo-app', '--backend', stack.backend, '--version', version)}")
    _say("A private integration's admin, without the consent page: open amoCRM's")
    keys = f"{stack.fake_url}/keys?{urlencode({'client_id': stack.fake.client_id})}"
    _say(f'"Keys and scopes" tab at {keys}')
    _say("(each visit issues a long-lived token and a keys-tab code), sign in as 'admin' at")
    _say(f"   {stack.backend}/login?{urlencode({'next': '/admin'})}")
    _say(f"and paste either one with the host {stack.fake.account_host}.")
    if not stack.site_button:
        _say("(The site button's metadata mode needs the crypto extra to be shown here:")
        _say(" pip install 'amo_oauth[crypto]'.)")
        _say("Ctrl-C stops.")
        return _until_ctrl_c()
    _say("A product installed through amoCRM's site button (metadata mode), same routes:")
    site = f"{PREFIX}/connect?{urlencode({'integration': 'site'})}"
    _say(f"   {stack.backend}/login?{urlencode({'next': site})}")
    _say('press the button, then "Allow": the fake makes a new integration for the account,')
    _say(f"posts its keys to {stack.backend}{PREFIX}/secrets and redirects back; then")
    _say(f"   {stack.backend}{PREFIX}/leads?integration=site")
    _say("Ctrl-C stops.")
    return _until_ctrl_c()


def _until_ctrl_c() -> int:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        _say("\nStopped.")
    return 0


def _command(*args: str) -> str:
    """A command line for the ``amo-oauth`` command run by this very Python, which works as
    printed whether or not the command's script is on PATH (``tasks.py demo`` runs the one in
    ``.venv/bin``, and a person's shell may not have that directory on PATH)."""
    return shlex.join([sys.executable, "-m", "amo_oauth", *args])


# -- the mobile app alone, against a running backend ----------------------------------------------


def play_app(backend: str, version: str, *, user: str = USER, press: str = "Allow") -> int:
    """Play the mobile app (``examples/mobile_client.py``), ``old`` or ``new``, against the
    backend at ``backend`` (e.g. the one ``amo-oauth demo --serve`` runs): sign in, connect in
    the in-app browser, return to the app; print each call and what the app shows.

    Returns:
        0 when the app shows the account connected, 1 when not, 2 when it cannot run here.
    """
    try:
        mobile = load_example("mobile_client")
    except DemoUnavailable as exc:
        print(f"amo-oauth demo-app: {exc}", file=sys.stderr)
        return 2
    try:
        screen = mobile.play(backend.rstrip("/"), version, user, press)
    except httpx.ConnectError:
        print(f"amo-oauth demo-app: nothing answers at {backend}: is it running?", file=sys.stderr)
        return 1
    except (httpx.HTTPError, mobile.BrowserError) as exc:
        # The type only: httpx's text names the URL, and a callback URL carries the code.
        print(f"amo-oauth demo-app: {type(exc).__name__} talking to {backend}", file=sys.stderr)
        return 1
    _say(f"The app shows: {_indent(screen)}")
    return 0 if screen.connected else 1
