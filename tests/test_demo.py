"""``amo-oauth demo``: the README's first command, run as a user runs it."""

from __future__ import annotations

import html
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from amo_oauth import _demo
from e2e_support import MOBILE, query_of

pytestmark = pytest.mark.timeout(60)

DEMO = [sys.executable, "-u", "-m", "amo_oauth.cli", "demo"]
# What must never be printed: the fake's codes and refresh tokens ("def50200" + hex), its
# JWT-shaped access tokens, and the client secret.
SECRETS = re.compile(r"def50200[0-9a-f]{16}|eyJ[\w-]{10,}|client_secret|fake-client-secret")


def test_the_demo_runs_the_seeds_scenario() -> None:
    done = subprocess.run(DEMO, capture_output=True, text=True, timeout=60, check=False)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    for line in [
        "app -> POST /login: 200",
        "browser -> GET /api/amo-crm/connect: 302",
        "browser -> GET /oauth/allow: 302",
        "status: connection demo: disconnected -> code_received (code_received)",
        "status: connection demo: exchanged -> connected (verified)",
        "browser -> GET /api/amo-crm/callback: 200",
        "foryoure://amo-crm/callback?success=true&state=...  (no code in it)",
        "app -> POST /api/amo-crm/exchange-code: 200 (already_connected, duplicate=true)",
        "app -> GET /api/amo-crm/status: 200 (connected)",
        "app -> GET /api/amo-crm/leads: 200 (3 leads)",
        "the app shows: Connected: Test account",
        "Token-endpoint calls: 1 (authorization_code ok: 1)",
        "Result: as expected.",
    ]:
        assert line in out
    assert out.count("the app shows: Connected: Test account") == 2  # the old and the new app
    assert out.count("- Website redesign") == 2
    assert ": 403" not in out
    assert not SECRETS.search(out + done.stderr)
    assert done.stderr == ""


def test_the_demo_fails_when_the_result_is_not_the_seeds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_demo, "LEADS", ())  # an account without leads: nothing gets listed
    assert _demo.run_demo() == 1
    out = capsys.readouterr().out
    assert "FAILED: the old app does not show 'Connected' and the leads" in out
    assert "FAILED: the new app does not show 'Connected' and the leads" in out
    assert "Result: NOT as expected." in out


def test_the_demo_says_when_its_examples_are_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_demo, "example_path", lambda name: tmp_path / "examples" / name)
    assert _demo.run_demo() == 2
    err = capsys.readouterr().err
    assert "mobile_client.py is missing from this installation of amo_oauth" in err


@pytest.mark.parametrize("module", ["fastapi", "uvicorn"])
def test_the_demo_without_its_extra_exits_2_naming_it(
    module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what an install without the extra has
    assert _demo.run_demo() == 2
    out, err = capsys.readouterr()
    assert "the demo needs the fastapi extra (fastapi, uvicorn)" in err
    assert "pip install 'amo_oauth[fastapi]'" in err
    assert out == ""  # nothing started


def test_the_examples_come_from_inside_the_package_when_it_ships_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import amo_oauth

    package = tmp_path / "site-packages" / "amo_oauth"
    (package / "_examples").mkdir(parents=True)
    monkeypatch.setattr(amo_oauth, "__file__", str(package / "__init__.py"))
    # A checkout (an editable install): the package has no _examples, the checkout has them.
    assert _demo.example_path("fastapi_app.py") == tmp_path / "examples" / "fastapi_app.py"
    # A wheel: they ship inside the package (pyproject.toml's force-include).
    (package / "_examples" / "fastapi_app.py").write_text("")
    assert _demo.example_path("fastapi_app.py") == package / "_examples" / "fastapi_app.py"


def test_demo_app_says_when_nothing_answers(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        backend = f"http://127.0.0.1:{unused.getsockname()[1]}"
        assert _demo.play_app(backend, "new") == 1
    assert f"nothing answers at {backend}: is it running?" in capsys.readouterr().err


def test_serve_keeps_running_for_a_person_until_ctrl_c() -> None:
    # A shell without job control starts background jobs with SIGINT ignored, and Python keeps
    # an inherited SIG_IGN: give the demo the default disposition a person's terminal gives it.
    demo = subprocess.Popen(
        [*DEMO, "--serve"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert demo.stdout is not None
    try:
        # The whole guide first: the transitions the visits below print come after it.
        lines = []
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C stops."):
                break
        start = next(line for line in lines if "/login?" in line).strip()
        assert re.fullmatch(
            r"http://127\.0\.0\.1:\d+/login\?next=%2Fapi%2Famo-crm%2Fconnect", start
        )
        backend = start.partition("/login")[0]
        # A person: the link opens the sign-in form, whose post sets the cookie and goes on
        # to amoCRM's consent page.
        with httpx.Client(follow_redirects=False) as browser:
            then = MOBILE.sign_in_browser(browser, backend, "demo", "/api/amo-crm/connect")
            consent = browser.get(backend + then).headers["location"]
            visit = MOBILE.land(browser, MOBILE.press(browser, consent, "Allow"))
        assert query_of(visit.deep_link)["success"] == "true"
        guide = iter(lines)
        _the_printed_app_commands_work(guide, backend)
        _the_printed_admin_path_works(guide, backend)
        _the_printed_site_button_path_works(guide, backend)
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=20)
    finally:
        demo.kill()
        demo.wait()
    assert demo.returncode == 0
    assert "status: connection demo: exchanged -> connected (verified)" in rest
    assert "Stopped." in rest
    assert not SECRETS.search("".join(lines) + rest)


def _the_printed_app_commands_work(stdout: Iterator[str], backend: str) -> None:
    """The commands ``--serve`` prints for a person work as printed, from anywhere."""
    for line in stdout:
        if line.startswith("Or play the mobile app"):
            break
    commands = [next(stdout).strip(), next(stdout).strip()]
    assert [shlex.split(command)[-4:] for command in commands] == [
        ["--backend", backend, "--version", version] for version in ("old", "new")
    ]
    for command in commands:
        played = subprocess.run(
            shlex.split(command), capture_output=True, text=True, timeout=60, check=False
        )
        assert played.returncode == 0, played.stdout + played.stderr
        assert "The app shows: Connected: Test account" in played.stdout
        assert not SECRETS.search(played.stdout + played.stderr)


def _the_printed_admin_path_works(stdout: Iterator[str], backend: str) -> None:
    """The private integration's path ``--serve`` prints: the fake's "Keys and scopes" tab,
    then the backend's ``/admin`` form, where the tab's long-lived token connects."""
    printed = "".join(next(stdout) for _ in range(5))
    tab = re.search(r"tab at (http://127\.0\.0\.1:\d+/keys\?client_id=\S+)", printed)
    host = re.search(r"with the host (\S+)\.", printed)
    assert tab is not None and host is not None and f"{backend}/login?next=%2Fadmin" in printed
    with httpx.Client(follow_redirects=False) as browser:
        page = browser.get(tab.group(1)).text
        token = re.search(r'id="long-lived-token"[^>]*>([^<]+)<', page)
        assert token is not None
        MOBILE.sign_in_browser(browser, backend, "admin", "/admin")
        pasted = browser.post(
            f"{backend}/admin/long-lived",
            data={"token": token.group(1), "host": host.group(1)},
            headers={"origin": backend},
        )
        assert pasted.status_code == 200 and "Connected until" in pasted.text
        assert browser.get(f"{backend}/api/amo-crm/status").json()["status"] == "connected"


def _the_printed_site_button_path_works(stdout: Iterator[str], backend: str) -> None:
    """The site button's path ``--serve`` prints (metadata mode, the same routes): the button
    page, the fake's install (a new integration, its keys posted to the backend's /secrets),
    the redirect back into the same browser, then the leads through that integration."""
    printed = "".join(next(stdout) for _ in range(6))
    start = re.search(r"(http://127\.0\.0\.1:\d+/login\?next=\S+integration%3Dsite)", printed)
    assert start is not None and f"{backend}/api/amo-crm/secrets" in printed
    with httpx.Client(follow_redirects=False) as browser:
        then = MOBILE.sign_in_browser(
            browser, backend, "shop", "/api/amo-crm/connect?integration=site"
        )
        page = browser.get(backend + then)
        assert page.status_code == 200, page.text
        script = re.search(r"<script [^>]*class=\"amocrm_oauth\"[^>]*>", page.text)
        assert script is not None
        attributes = dict(re.findall(r'data-([a-z_-]+)="([^"]*)"', script.group(0)))
        source = re.search(r'src="([^"]+)"', script.group(0))
        assert source is not None and "client-id" not in attributes
        fake = source.group(1).partition("/auth/")[0]
        params = [
            *((key, html.unescape(attributes[key])) for key in ("name", "description")),
            *((key, html.unescape(attributes[key])) for key in ("redirect_uri", "secrets_uri")),
            *(("scopes[]", scope) for scope in attributes["scopes"].split(",")),
            ("state", html.unescape(attributes["state"])),
            ("mode", attributes.get("mode", "popup")),
        ]
        # "Allow" on the fake's install page: the post to /secrets, then the redirect back.
        installed = browser.get(f"{fake}/oauth/install", params=params)
        assert installed.status_code in (302, 303), installed.text
        landed = browser.get(installed.headers["location"])
        assert "success=true" in landed.text, landed.text
        status = browser.get(f"{backend}/api/amo-crm/status", params={"integration": "site"})
        assert status.json()["status"] == "connected"
        leads = browser.get(f"{backend}/api/amo-crm/leads", params={"integration": "site"})
        assert leads.status_code == 200 and leads.json(), leads.text
