"""docs/testing.md's "Your own backend against the fake", run as written.

Each recipe's blocks are marked ``<!-- recipe NAME: KIND -->``: ``fake`` (the ``amo-oauth fake``
command), ``myapp.py`` (the backend module, saved as that file; Django's recipe adds its
``settings.py``) and ``backend`` (the shell lines that start it, after the environment lines the
fake printed). The test saves the module in a
folder outside the repository, runs the fake and then the backend through a shell as a person
would (the docs' ports swapped for free ones, since other tests run beside this one), and clicks
through with an HTTP client in the browser's place. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2e_support import MOBILE, consent_url_the_script_opens, query_of, script_attributes
from fake_process import FakeProcess, free_port, running_fake

pytestmark = pytest.mark.timeout(180)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "testing.md"
_BLOCK = re.compile(
    r"^<!-- recipe (?P<recipe>\w+): (?P<kind>[\w.]+) -->\n```\w*\n(?P<body>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
#: The port each recipe's backend listens on in the docs.
DOCS_PORT = {"fastapi": 8000, "flask": 5000, "django": 8000}
RECIPES = list(DOCS_PORT)
#: The command that starts each recipe's server: the shell ``exec``s it, so that its pid is
#: the server's and Ctrl-C (SIGINT) reaches the server itself.
_SERVERS = ("uvicorn ", "flask ", "python -m django ")


def recipe(name: str) -> dict[str, str]:
    """The blocks of one recipe, by kind: ``fake``, ``backend`` and its Python files."""
    found = {
        match["kind"]: match["body"]
        for match in _BLOCK.finditer(DOCS.read_text(encoding="utf-8"))
        if match["recipe"] == name
    }
    files = {kind for kind in found if kind.endswith(".py")}
    optional = {SITE_BUTTON_FAKE} & set(found)
    assert set(found) == {"fake", "backend", *files, *optional}, f"docs/testing.md: recipe {name}"
    assert "myapp.py" in files, f"docs/testing.md: recipe {name}"
    return found


def python_files(blocks: dict[str, str]) -> dict[str, str]:
    return {kind: body for kind, body in blocks.items() if kind.endswith(".py")}


#: The block that starts the fake for the site button's metadata mode (FastAPI's recipe).
SITE_BUTTON_FAKE = "fake_site_button"


def _on_port(text: str, docs_port: int, port: int) -> str:
    return text.replace(f"127.0.0.1:{docs_port}", f"127.0.0.1:{port}").replace(
        f"--port {docs_port}", f"--port {port}"
    )


def _shell_env() -> dict[str, str]:
    """A shell with this venv's commands first on PATH, as an activated venv has them."""
    bin_dir = str(Path(sys.executable).parent)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AMO_", "PYTHONPATH", "DJANGO_SETTINGS_MODULE"))
    }
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"}


@contextlib.contextmanager
def backend(fake: FakeProcess, lines: str, folder: Path, port: int) -> Iterator[list[str]]:
    """The backend started by the fake's environment lines then ``lines``, in a shell, in
    ``folder``; yields once it listens on ``port``, then what it printed (after stopping it)."""
    script = "\n".join([*fake.env_lines, lines])
    for server in _SERVERS:  # the shell's pid becomes the server's
        script = script.replace(f"\n{server}", f"\nexec {server}")
    assert script.count("\nexec ") == 1, script
    process = subprocess.Popen(
        ["/bin/sh", "-c", script],
        cwd=folder,
        env=_shell_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        _wait_listening(port, process)
        yield output
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            output.append(process.communicate(timeout=20)[0])
        except subprocess.TimeoutExpired:
            process.kill()
            output.append(process.communicate()[0])


def _wait_listening(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"the backend exited ({process.returncode}):\n{out}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/amo-crm/status", timeout=1)
        except httpx.TransportError:
            time.sleep(0.1)
        else:
            return
    raise AssertionError(f"the backend did not listen on {port}")


def click_through(base: str) -> None:
    """Section 3 of the recipe, with httpx for the browser."""
    with httpx.Client(follow_redirects=False, timeout=10) as mallorys_page:
        _no_sign_in_from_another_site(mallorys_page, base)
    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        signed_in = sign_in(browser, base, "ann", origin=base)
        assert signed_in.status_code == 303
        connect = browser.get(base + signed_in.headers["location"])
        assert connect.status_code == 302  # to the fake's consent page
        consent = connect.headers["location"]
        assert consent.startswith("http://127.0.0.1:") and "/oauth?" in consent
        callback = MOBILE.press(browser, consent, "Allow")
        assert callback.startswith(f"{base}/api/amo-crm/callback?")
        page = browser.get(callback)
        assert page.status_code == 200 and "myapp://amo-crm/callback?success=true" in page.text
        again = browser.get(callback)  # a reload: the same page, no second token call
        assert again.status_code == 200
        status = browser.get(f"{base}/api/amo-crm/status").json()
        assert status["connected"] is True and status["account"]["subdomain"] == "test"
        leads = browser.get(f"{base}/leads")
        assert leads.json() == ["Lead #1", "Lead #2", "Lead #3"]
        _a_planted_session_signs_nobody_in(browser, base)
    assert "code" in query_of(callback)


def sign_in(browser: httpx.Client, base: str, user: str, origin: str) -> httpx.Response:
    """The recipe's sign-in page, then its form posted with ``Origin: origin`` (and Django's
    CSRF token when the page holds one), as a browser on that origin's page posts it."""
    page = browser.get(f"{base}/login")
    assert page.status_code == 200
    form = {"user": user}
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    if token:
        form["csrfmiddlewaretoken"] = token[1]
    return browser.post(f"{base}/login", data=form, headers={"origin": origin})


def _no_sign_in_from_another_site(browser: httpx.Client, base: str) -> None:
    """Login CSRF: the recipe's sign-in takes neither a link nor another site's form."""
    assert browser.get(f"{base}/login", params={"user": "mallory"}).status_code == 200
    assert browser.get(f"{base}/api/amo-crm/connect").status_code == 401
    assert sign_in(browser, base, "mallory", origin="http://evil.example").status_code == 403
    assert browser.get(f"{base}/api/amo-crm/connect").status_code == 401


def _a_planted_session_signs_nobody_in(browser: httpx.Client, base: str) -> None:
    """Mallory's own session cookie, planted beside the user's (a sibling subdomain can:
    ``Domain=``, or a near name), is no session: the framework's parser alone would pick one."""
    with httpx.Client(follow_redirects=False, timeout=10) as mallorys:
        assert sign_in(mallorys, base, "mallory", origin=base).status_code == 303
        (name,) = [name for name in mallorys.cookies if "session" in name]
        planted = mallorys.cookies[name].encode()
    own = f"{name}={browser.cookies[name]}".encode()
    for sent, signed_in in (
        (own, True),  # the control: her cookie alone is her session
        (own + b"; " + name.encode() + b"=" + planted, False),
        (name.encode() + b"=" + planted + b"; " + own, False),
        (own + b"; \xa0" + name.encode() + b"=" + planted, False),
    ):
        with httpx.Client(timeout=10) as client:  # no jar: exactly these bytes
            status = client.get(f"{base}/api/amo-crm/status", headers={"cookie": sent})
            leads = client.get(f"{base}/leads", headers={"cookie": sent})
        answered = (status.status_code, leads.status_code)
        assert answered == ((200, 200) if signed_in else (401, 401)), (sent, answered)


@pytest.mark.parametrize("name", RECIPES)
def test_the_recipe_connects_a_backend_outside_the_repository(
    name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    blocks = recipe(name)
    folder = tmp_path_factory.mktemp(f"my-{name}-backend")  # outside the repository
    for file, body in python_files(blocks).items():
        (folder / file).write_text(body, encoding="utf-8")
    port = free_port()
    command = shlex.split(_on_port(blocks["fake"], DOCS_PORT[name], port))
    assert command[:2] == ["amo-oauth", "fake"]
    with running_fake(*command[2:], "--port", "0", cwd=folder) as fake:
        lines = _on_port(blocks["backend"], DOCS_PORT[name], port)
        with backend(fake, lines, folder, port) as said:
            click_through(f"http://127.0.0.1:{port}")
        log, err = fake.interrupt()
    assert fake.process.returncode == 130, err
    assert log.count("POST test.amocrm.ru/oauth2/access_token: 200") == 1  # reloads: none
    assert "GET test.amocrm.ru/api/v4/leads: 200" in log
    # The access log is on and redacted by default: the callback's line is logged, its code and
    # state never reach the backend's output.
    printed = "".join(said)
    assert "code=[redacted]" in printed, printed
    assert re.search(r"(code|state)=(?!\[redacted\])", printed) is None, printed


@pytest.mark.parametrize("name", RECIPES)
def test_the_recipe_type_checks(name: str, tmp_path: Path) -> None:
    # Copied into a user's project, the files pass the checks this project's code passes.
    files = python_files(recipe(name))
    for file, body in files.items():
        (tmp_path / file).write_text(body, encoding="utf-8")
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", os.devnull, *sorted(files)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_fastapi_recipe_installs_through_the_site_button_in_metadata_mode(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The same myapp.py with ``amo-oauth fake --site-button``'s lines: the connect page shows
    the fake's button; "Allow" installs a new integration, whose credentials the fake posts to
    the backend's secrets route before the redirect."""
    blocks = recipe("fastapi")
    folder = tmp_path_factory.mktemp("my-button-backend")
    for file, body in python_files(blocks).items():
        (folder / file).write_text(body, encoding="utf-8")
    port, base = free_port(), ""
    command = shlex.split(_on_port(blocks[SITE_BUTTON_FAKE], DOCS_PORT["fastapi"], port))
    assert command[:3] == ["amo-oauth", "fake", "--site-button"]
    with running_fake(*command[2:], "--port", "0", cwd=folder) as fake:
        assert "AMO_CLIENT_SECRET" not in fake.env
        lines = _on_port(blocks["backend"], DOCS_PORT["fastapi"], port)
        with backend(fake, lines, folder, port):
            base = f"http://127.0.0.1:{port}"
            _install_through_the_button(base, fake.env["AMO_BUTTON_SCRIPT_URL"])
        log, err = fake.interrupt()
    assert fake.process.returncode == 130, err
    assert log.count("POST test.amocrm.ru/oauth2/access_token: 200") == 1
    assert "GET test.amocrm.ru/api/v4/leads: 200" in log


def _install_through_the_button(base: str, script_url: str) -> None:
    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        signed_in = sign_in(browser, base, "ann", origin=base)
        assert signed_in.status_code == 303
        page = browser.get(base + signed_in.headers["location"])
        assert page.status_code == 200
        attributes = script_attributes(page.text)
        assert attributes["src"] == script_url
        callback = MOBILE.press(browser, consent_url_the_script_opens(attributes), "Allow")
        assert callback.startswith(f"{base}/api/amo-crm/callback?")
        landed = browser.get(callback)
        assert landed.status_code == 200, landed.text
        assert "myapp://amo-crm/callback?success=true" in landed.text
        status = browser.get(f"{base}/api/amo-crm/status").json()
        assert status["connected"] is True and status["account"]["subdomain"] == "test"
        assert browser.get(f"{base}/leads").json() == ["Lead #1", "Lead #2", "Lead #3"]
