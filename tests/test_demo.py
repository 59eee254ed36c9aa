"""``amo-oauth demo``: the README's first command, run as a user runs it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
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


def test_the_demo_needs_a_source_checkout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_demo, "example_path", lambda name: tmp_path / "examples" / name)
    assert _demo.run_demo() == 2
    err = capsys.readouterr().err
    assert "the demo runs from a source checkout" in err


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
        lines = []
        for line in demo.stdout:
            lines.append(line)
            if "/login?" in line:
                break
        start = lines[-1].strip()
        assert re.fullmatch(
            r"http://127\.0\.0\.1:\d+/login\?user=demo&next=%2Fapi%2Famo-crm%2Fconnect", start
        )
        backend = start.partition("/login")[0]
        # A person: the login link sets the cookie and goes on to amoCRM's consent page.
        with httpx.Client(follow_redirects=False) as browser:
            connect = browser.get(start)
            assert connect.status_code == 303
            consent = browser.get(backend + connect.headers["location"]).headers["location"]
            visit = MOBILE.land(browser, MOBILE.press(browser, consent, "Allow"))
        assert query_of(visit.deep_link)["success"] == "true"
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=20)
    finally:
        demo.kill()
        demo.wait()
    assert demo.returncode == 0
    assert "status: connection demo: exchanged -> connected (verified)" in rest
    assert "Stopped." in rest
    assert not SECRETS.search("".join(lines) + rest)
