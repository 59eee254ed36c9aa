"""Codes out of access logs (issue 20, item 2): the request line of amoCRM's redirect back carries
the code and state, and uvicorn, gunicorn, hypercorn, werkzeug and Django's runserver log it.

Unit tests give ``RedactingFilter`` each server's record shape (their arguments, not only the
message); live tests run each server in a process of its own, send it canary secrets, and read
everything it printed: the redacted request line is there, no canary is.
"""

from __future__ import annotations

import contextlib
import io
import logging
import logging.config
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.utils.log import ServerFormatter
from gunicorn.glogging import SafeAtoms  # type: ignore[import-untyped]
from uvicorn.logging import AccessFormatter

from amo_oauth import AmoOAuth, AsyncAmoOAuth, Config, MemoryStore
from amo_oauth.web import (
    ACCESS_LOGGERS,
    REDACTED,
    REDACTED_NAMES,
    ROUTES,
    AsyncHandlers,
    RedactingFilter,
    install_access_log_redaction,
    redact,
)

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
CANARY = "canary0secret"  # every secret in a unit test holds it
CALLBACK = "/api/amo-crm/callback"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"GET {CALLBACK}?code={CANARY}1&state={CANARY}2&referer=a.amocrm.ru HTTP/1.1",
            f"GET {CALLBACK}?code={REDACTED}&state={REDACTED}&referer=a.amocrm.ru HTTP/1.1",
        ),
        # a name percent-encoded (a query parser decodes it), in any case
        (f"%63ode={CANARY}&St%61TE={CANARY}", f"%63ode={REDACTED}&St%61TE={REDACTED}"),
        (f"c%6F%64%65={CANARY}", f"c%6F%64%65={REDACTED}"),
        # ``;`` separators and a repeated name
        (f"code={CANARY};code={CANARY}2;lang=en", f"code={REDACTED};code={REDACTED};lang=en"),
        # a whole URL (a Referer), a ticket, the hook's signature
        (
            f"http://app.test{CALLBACK}?state={CANARY}&code={CANARY}#x",
            f"http://app.test{CALLBACK}?state={REDACTED}&code={REDACTED}",
        ),
        (f"/api/amo-crm/connect?ticket={CANARY}", f"/api/amo-crm/connect?ticket={REDACTED}"),
        (f"account_id=1&signature={CANARY}", f"account_id=1&signature={REDACTED}"),
        # a callback URL carried, encoded, inside another parameter (a sign-in's ``next``)
        (f"/login?next={CALLBACK}%3Fcode%3D{CANARY}%26state%3D{CANARY}", None),
        # the binding cookie in a logged Cookie header; tokens and the secret in a URL
        (
            f"__Host-amo_oauth_binding={CANARY}; theme=dark; amo_oauth_binding={CANARY}",
            f"__Host-amo_oauth_binding={REDACTED}; theme=dark; amo_oauth_binding={REDACTED}",
        ),
        (f"access_token={CANARY}&refresh_token={CANARY}&client_secret={CANARY}", None),
        # a quote inside a value does not end it early (uvicorn's trace shows bytes reprs)
        (f"{{'query_string': b'code={CANARY}'x&state={CANARY}'}}", None),
    ],
)
def test_redact_hides_every_secret_value(text: str, expected: str | None) -> None:
    redacted = redact(text)
    assert CANARY not in redacted
    assert REDACTED in redacted
    if expected is not None:
        assert redacted == expected
    assert redact(redacted) == redacted  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        "GET /api/amo-crm/status HTTP/1.1",
        "xcode=1&codes=2&statement=3&error=access_denied&referer=a.amocrm.ru",
        "code=",
        "",
    ],
)
def test_redact_leaves_everything_else_alone(text: str) -> None:
    assert redact(text) is text


def test_every_query_parameter_of_the_routes_is_judged() -> None:
    """A route that starts reading a new query parameter decides here whether it is secret."""
    not_secret = {"referer", "client_id", "from_widget", "platform", "error", "lang", "format"}
    not_secret |= {"client_uuid", "account_id", "integration"}  # integration: a name of the app
    read = {str(parameter["name"]) for route in ROUTES for parameter in route.parameters}
    assert read - not_secret <= set(REDACTED_NAMES)
    assert {"code", "state", "ticket", "signature"} <= read - not_secret


def _record(name: str, msg: object, args: Any, **extra: Any) -> logging.LogRecord:
    return logging.getLogger(name).makeRecord(
        name, logging.INFO, __file__, 1, msg, args, None, extra=extra or None
    )


def _filtered(record: logging.LogRecord) -> logging.LogRecord:
    assert RedactingFilter().filter(record) is True  # never drops a line
    return record


def test_uvicorns_access_record_keeps_its_shape() -> None:
    # uvicorn's h11 and httptools protocols: (client, method, full_path, http_version, status)
    path = f"{CALLBACK}?code={CANARY}&state={CANARY}"
    args = ("127.0.0.1:5000", "GET", path, "1.1", 200)
    record = _filtered(_record("uvicorn.access", '%s - "%s %s HTTP/%s" %d', args))
    assert record.args == ("127.0.0.1:5000", "GET", f"{CALLBACK}?code={REDACTED}&state={REDACTED}",
                           "1.1", 200)  # fmt: skip
    line = AccessFormatter("%(client_addr)s %(request_line)s %(status_code)s").format(record)
    assert f"GET {CALLBACK}?code={REDACTED}&state={REDACTED} HTTP/1.1" in line
    assert CANARY not in line


def test_uvicorns_trace_record_of_the_asgi_scope() -> None:
    # uvicorn --log-level trace: "uvicorn.asgi" logs the scope, the raw query as bytes
    scope = {"type": "http", "path": CALLBACK, "query_string": f"code={CANARY}".encode()}
    record = _filtered(_record("uvicorn.asgi", "%s [%d] Started scope=%s", ("ASGI", 1, scope)))
    assert record.args[2]["query_string"] == f"code={REDACTED}".encode()  # type: ignore[index]
    assert scope["query_string"] == f"code={CANARY}".encode()  # the server's own dict untouched
    assert CANARY not in record.getMessage()


def test_werkzeugs_record_is_one_formatted_string() -> None:
    line = f'127.0.0.1 - - [07/Dec/2026 10:00:00] "GET {CALLBACK}?code={CANARY} HTTP/1.1" 400 -'
    record = _filtered(_record("werkzeug", line, ()))
    assert record.getMessage() == line.replace(CANARY, REDACTED)


def test_djangos_server_record_and_its_formatter() -> None:
    args = (f"GET {CALLBACK}?state={CANARY}&code={CANARY} HTTP/1.1", "400", "1234")
    record = _filtered(_record("django.server", '"%s" %s %s', args, status_code=400))
    line = ServerFormatter("[{server_time}] {message}", style="{").format(record)
    assert f"code={REDACTED}" in line
    assert CANARY not in line


class HypercornAtoms(dict[str, Any]):
    """hypercorn.logging.AccessLogAtoms's shape (hypercorn is not installed): built from the
    scope, missing atoms read "-", header atoms looked up lower-cased."""

    def __init__(self, request: dict[str, Any], response: dict[str, Any], took: float) -> None:
        super().__init__()
        for name, value in request["headers"]:
            self[f"{{{name.decode('latin1').lower()}}}i"] = value.decode("latin1")
        query = request["query_string"].decode()
        self.update(
            {"h": "127.0.0.1:5000", "R": f"GET {request['path']}?{query} HTTP/1.1", "q": query,
             "Uq": f"{request['path']}?{query}", "s": response["status"], "f": self["{Referer}i"]}
        )  # fmt: skip

    def __getitem__(self, key: str) -> Any:
        try:
            return super().__getitem__(key.lower() if key.startswith("{") else key)
        except KeyError:
            return "-"


def _atoms_line(logger_name: str, fmt: str, atoms: dict[str, Any]) -> str:
    logger, out = logging.getLogger(logger_name), io.StringIO()
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    saved = logger.filters[:], logger.level, logger.propagate
    logger.filters, logger.propagate = [RedactingFilter()], False
    logger.setLevel(logging.INFO)
    try:
        logger.info(fmt, atoms)
    finally:
        logger.removeHandler(handler)
        logger.filters, logger.level, logger.propagate = saved
    return out.getvalue()


def test_gunicorns_atoms_and_the_referer() -> None:
    referer = f"http://app.test{CALLBACK}?code={CANARY}&state={CANARY}"
    atoms = SafeAtoms(
        {"h": "127.0.0.1", "r": f"GET {CALLBACK}?code={CANARY} HTTP/1.1", "s": "400",
         "q": f"code={CANARY}", "U": CALLBACK, "f": referer, "{referer}i": referer}
    )  # fmt: skip
    fmt = '%(h)s "%(r)s" %(s)s "%(f)s" "%({Referer}i)s" %(q)s %(U)s %(b)s'
    line = _atoms_line("gunicorn.access", fmt, atoms)
    assert f'"GET {CALLBACK}?code={REDACTED} HTTP/1.1" 400' in line
    assert f"http://app.test{CALLBACK}?code={REDACTED}&state={REDACTED}" in line
    assert line.rstrip().endswith(f"code={REDACTED} {CALLBACK} -")  # SafeAtoms' "-" still works
    assert CANARY not in line


def test_hypercorns_loggers_and_atoms() -> None:
    assert {"hypercorn.access", "hypercorn.error"} <= set(ACCESS_LOGGERS)
    scope = {
        "path": CALLBACK,
        "query_string": f"code={CANARY}&state={CANARY}".encode(),
        "headers": [(b"Referer", f"http://app.test{CALLBACK}?code={CANARY}".encode())],
    }
    atoms = HypercornAtoms(scope, {"status": 400}, 0.1)
    line = _atoms_line("hypercorn.access", '"%(R)s" %(s)s "%({Referer}i)s" %(Uq)s %(b)s', atoms)
    assert f'"GET {CALLBACK}?code={REDACTED}&state={REDACTED} HTTP/1.1" 400' in line
    assert line.rstrip().endswith(" -")  # the atoms' class kept: a missing one reads "-"
    assert CANARY not in line


@pytest.mark.parametrize("logger_name", ACCESS_LOGGERS)
@pytest.mark.parametrize(
    ("template", "args", "expected"),
    [
        ("callback code=%s state=%s", (f"{CANARY}1", f"{CANARY}2"),
         f"callback code={REDACTED} state={REDACTED}"),
        ("state=%d", (5,), f"state={REDACTED}"),
        ("%s=%s", ("code", CANARY), f"code={REDACTED}"),
        ("ticket=%(t)s for %(u)s", {"t": CANARY, "u": "ann"}, f"ticket={REDACTED} for ann"),
        ("request %s", (f"{CALLBACK}?code={CANARY}",), f"request {CALLBACK}?code={REDACTED}"),
        ("100%% of %s", ("ann",), "100% of ann"),
    ],
)  # fmt: skip
def test_an_apps_templated_line_is_logged_redacted_and_whole(
    logger_name: str,
    template: str,
    args: Any,
    expected: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Review of issue 20.2: the template was redacted apart from its arguments, so
    ``"code=%s", code`` lost the line and logging printed the raw arguments to stderr."""
    logger, out = logging.getLogger(logger_name), io.StringIO()
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    saved = logger.filters[:], logger.level, logger.propagate
    logger.filters, logger.propagate = [RedactingFilter()], False
    logger.setLevel(logging.INFO)
    try:
        logger.info(template, *(args if isinstance(args, tuple) else (args,)))
    finally:
        logger.removeHandler(handler)
        logger.filters, logger.level, logger.propagate = saved
    assert out.getvalue() == f"{expected}\n"
    assert capsys.readouterr().err == ""  # no "--- Logging error ---", no raw arguments


class Exploding:
    def __str__(self) -> str:
        raise RuntimeError(f"code={CANARY}")


class ShowsAUrl:
    def __str__(self) -> str:
        return f"{CALLBACK}?code={CANARY}"


def test_a_record_the_filter_cannot_read_is_kept_and_shows_nothing() -> None:
    record = _filtered(_record("uvicorn.error", f"request %s?code={CANARY}", (Exploding(),)))
    assert CANARY not in logging.Formatter().format(record)
    assert "withheld" in record.getMessage()


def test_objects_tracebacks_and_stacks_are_redacted() -> None:
    record = _record("gunicorn.error", ShowsAUrl(), ())
    try:
        raise ValueError(f"bad request line GET {CALLBACK}?code={CANARY}")
    except ValueError:
        record.exc_info = sys.exc_info()
    record.stack_info = f"Stack (most recent call last):\n  url={CALLBACK}?code={CANARY}"
    line = logging.Formatter().format(_filtered(record))
    assert f"code={REDACTED}" in line
    assert "ValueError" in line
    assert CANARY not in line


def test_installing_twice_is_installing_once() -> None:
    names = ("amo_oauth.tests.access_log_one", "amo_oauth.tests.access_log_two")
    for _ in range(2):
        install_access_log_redaction(names)
    for name in names:
        filters = logging.getLogger(name).filters
        assert sum(isinstance(each, RedactingFilter) for each in filters) == 1
        filters.clear()
    record = _record("werkzeug", f"GET /?code={CANARY}", ())
    once = _filtered(record).getMessage()
    assert _filtered(record).getMessage() == once


@pytest.fixture
def no_redaction() -> Iterator[None]:
    """The access loggers without a RedactingFilter for the test; as they were after it."""
    loggers = [logging.getLogger(name) for name in ACCESS_LOGGERS]
    saved = [logger.filters[:] for logger in loggers]
    for logger in loggers:
        logger.filters = [f for f in logger.filters if not isinstance(f, RedactingFilter)]
    yield
    for logger, filters in zip(loggers, saved, strict=True):
        logger.filters = filters


def _redacting() -> list[bool]:
    return [
        any(isinstance(f, RedactingFilter) for f in logging.getLogger(name).filters)
        for name in ACCESS_LOGGERS
    ]


def _config() -> Config:
    return Config(
        client_id="c",
        client_secret="s" * 32,
        redirect_uri="https://app.example.com/api/amo-crm/callback",
        state_secret="x" * 32,
    )


def _mount(adapter: str, **options: Any) -> None:
    if adapter == "fastapi":
        from amo_oauth.fastapi import router

        router(AsyncAmoOAuth(_config(), store=MemoryStore()), connection_id=lambda r: None,
               app_scheme="myapp", **options)  # fmt: skip
    elif adapter == "flask":
        from amo_oauth.flask import blueprint

        blueprint(AmoOAuth(_config(), store=MemoryStore()), connection_id=lambda r: None,
                  app_scheme="myapp", **options)  # fmt: skip
    else:
        import django_settings

        django_settings.setup()
        from amo_oauth.django import urls

        urls(AmoOAuth(_config(), store=MemoryStore()), app_scheme="myapp", **options)


@pytest.mark.usefixtures("no_redaction")
@pytest.mark.parametrize("adapter", ["fastapi", "flask", "django"])
def test_each_adapter_installs_the_filter_unless_told_not_to(adapter: str) -> None:
    _mount(adapter, redact_access_logs=False)
    assert not any(_redacting())
    _mount(adapter)
    assert all(_redacting())
    _mount(adapter)
    assert all(
        sum(isinstance(f, RedactingFilter) for f in logging.getLogger(name).filters) == 1
        for name in ACCESS_LOGGERS
    )


@pytest.mark.usefixtures("no_redaction")
def test_the_web_layer_installs_it_unless_told_not_to() -> None:
    """The handlers install it (one place for every adapter), so a backend on the web layer
    alone (the Starlette example) has it too."""
    from test_starlette_example import load_example

    web_layer_only = AsyncAmoOAuth(_config(), store=MemoryStore())
    kept = AsyncHandlers(
        web_layer_only, connection_id=lambda r: None, app_scheme="myapp", redact_access_logs=False
    )
    assert kept.prefix and not any(_redacting())
    load_example().create_app(AsyncAmoOAuth(_config(), store=MemoryStore()), {})
    assert all(_redacting())


@pytest.mark.usefixtures("no_redaction")
def test_a_logging_configuration_applied_later_keeps_the_filter() -> None:
    """uvicorn's log config and Django's LOGGING run dictConfig, maybe after the adapter."""
    install_access_log_redaction()
    logger = logging.getLogger("uvicorn.access")
    saved = logger.handlers[:], logger.level, logger.propagate
    try:
        logging.config.dictConfig(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "handlers": {"nowhere": {"class": "logging.NullHandler"}},
                "loggers": {"uvicorn.access": {"handlers": ["nowhere"], "level": "INFO"}},
            }
        )
        assert all(_redacting())
    finally:
        logger.handlers, logger.level, logger.propagate = saved


# --- live: each server in a process of its own, everything it prints read back ---

_PYTHON = sys.executable
_GUNICORN_FORMAT = '%(h)s "%(r)s" %(s)s "%(f)s" "%({referer}i)s" %(q)s %(U)s'
SERVERS = {
    "uvicorn-info": [_PYTHON, "-m", "uvicorn", "--factory", "_access_log_apps:fastapi_app",
                     "--host", "127.0.0.1", "--port", "{port}", "--log-level", "info"],
    "uvicorn-trace": [_PYTHON, "-m", "uvicorn", "--factory", "_access_log_apps:fastapi_app",
                      "--host", "127.0.0.1", "--port", "{port}", "--log-level", "trace"],
    "gunicorn-debug": [_PYTHON, "-m", "gunicorn", "--bind", "127.0.0.1:{port}", "--workers", "1",
                       "--worker-class", "sync", "--access-logfile", "-", "--error-logfile", "-",
                       "--log-level", "debug", "--no-control-socket",
                       "--access-logformat", _GUNICORN_FORMAT,
                       "_access_log_apps:flask_app()"],
    "werkzeug": [_PYTHON, "_access_log_apps.py", "werkzeug", "{port}"],
    "runserver": [_PYTHON, "_access_log_apps.py", "runserver", "{port}"],
}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:  # the server binds it itself: a port just released
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def _served(server: str, printed: Path) -> Iterator[str]:
    """``server`` started on a free port, all it prints going to ``printed``; its URL."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}
    for _ in range(3):  # a port just released may be taken again before the server binds it
        port = _free_port()
        argv = [arg.replace("{port}", str(port)) for arg in SERVERS[server]]
        with printed.open("w") as out:
            process = subprocess.Popen(
                argv, cwd=TESTS, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            if _listening(port, process):
                yield f"http://127.0.0.1:{port}"
                return
        finally:
            _stop(process)
    pytest.fail(f"{server} did not start:\n{printed.read_text()}")


def _wait_for(printed: Path, text: str) -> None:
    """Until ``text`` was printed: a server writes its access line after the answer."""
    deadline = time.monotonic() + 60
    while text not in printed.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_a_real_server_logs_the_callback_redacted(server: str, tmp_path: Path) -> None:
    canaries = [f"canary{index}x{secrets.token_hex(6)}" for index in range(8)]
    code, state, encoded, repeated, ticket, signature, in_referer, semicolon = canaries
    printed = tmp_path / "printed.txt"
    with _served(server, printed) as url, httpx.Client(base_url=url, timeout=60) as client:
        client.get(f"{CALLBACK}?code={code}&state={state}&referer=example.amocrm.ru")
        client.get(f"{CALLBACK}?%63ode={encoded}&code={repeated};state={semicolon}")
        client.get(
            f"/api/amo-crm/connect?ticket={ticket}",
            headers={"Referer": f"{url}{CALLBACK}?code={in_referer}&state={state}"},
        )
        client.get(f"/api/amo-crm/disconnect-hook?client_uuid=c&account_id=1&signature={signature}")
        # One more request, and its line: a server handles a connection's requests in order
        # and logs each before it reads the next, so every line above is written by then
        # (the hook's path alone was not enough: gunicorn's debug line names it first).
        sentinel = f"sentinel{secrets.token_hex(6)}"
        client.get(f"/api/amo-crm/status?{sentinel}=1")
        _wait_for(printed, sentinel)
    said = printed.read_text()
    assert f"{CALLBACK}?code={REDACTED}&state={REDACTED}&referer=example.amocrm.ru" in said, said
    assert f"ticket={REDACTED}" in said
    assert f"signature={REDACTED}" in said
    if server.startswith("gunicorn"):
        assert f"?code={REDACTED}&state={REDACTED}" in said.split("/connect", 1)[1]  # Referer
    if server == "uvicorn-trace":
        assert f"'query_string': b'code={REDACTED}&state={REDACTED}&referer=" in said
    leaked = [canary for canary in canaries if canary in said]
    assert not leaked, said
