"""examples/django_app as its README runs it: ``manage.py runserver`` (WSGI, sync views) and
``uvicorn backend.asgi:application`` (ASGI, async views), each in a process of its own with the
example's own settings, against the FakeAmoCRM it serves itself; the mobile client plays the old
and the new app against it over loopback."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from amo_oauth._demo import example_path, load_example

pytestmark = pytest.mark.timeout(120)

MOBILE = load_example("mobile_client")
PROJECT = example_path("django_app")
COMMANDS = {
    "runserver": [sys.executable, "manage.py", "runserver", "{address}"],
    "uvicorn": [sys.executable, "-m", "uvicorn", "backend.asgi:application", "--port", "{port}"],
}  # fmt: skip


def free_port() -> int:
    # The server binds it itself, in another process: a port just released, not held.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def started(port: int, process: subprocess.Popen[bytes]) -> bool:
    """Whether the server accepts connections on ``port``; False when it exited first."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    assert process.poll() is not None, "the example did not listen within 60 s"
    return False


def stop(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C to its process group, then SIGKILL to whatever did not stop within a minute.

    How fast runserver's reloader and its child wind down is Django's, not what these tests
    check (on a loaded machine it took over 30 s): a slow stop is killed, not failed. What the
    server printed is still checked after (no traceback; uvicorn's lifespan shutdown)."""
    try:
        with contextlib.suppress(ProcessLookupError):  # the group is gone already
            os.killpg(process.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(params=sorted(COMMANDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The example, started as its README says: its URL, and the file of what it printed."""
    printed = tmp_path / "printed.txt"
    for _ in range(3):  # a port just released may be taken again before the server binds it
        port = free_port()
        argv = [
            arg.format(address=f"127.0.0.1:{port}", port=port) for arg in COMMANDS[request.param]
        ]
        env = {name: value for name, value in os.environ.items() if not name.startswith("AMO_")}
        env["AMO_REDIRECT_URI"] = f"http://127.0.0.1:{port}/api/amo-crm/callback"
        with printed.open("w") as out:
            # A session of its own: runserver's reloader serves from a child process, and
            # Ctrl-C to the group stops both; uvicorn then runs the lifespan's shutdown.
            process = subprocess.Popen(
                argv, cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            if not started(port, process):
                continue
            yield f"http://127.0.0.1:{port}", printed
        finally:
            stop(process)
        break
    else:
        pytest.fail(f"the example did not start:\n{printed.read_text()}")
    said = printed.read_text()
    assert "Traceback" not in said, said
    if request.param == "uvicorn":  # the lifespan closed the clients, in their event loop
        assert "Application shutdown complete." in said


def test_the_readmes_command_serves_the_seeds_scenario(
    backend: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, printed = backend
    for version in ("old", "new"):
        assert MOBILE.main(["--backend", url, "--version", version]) == 0
    out = capsys.readouterr().out
    assert out.count("The app shows: Connected: Test account") == 2
    assert "exchange-code: 200 (already_connected, duplicate=true)" in out
    assert " 403" not in out
    assert "  - Support contract 2025" in out  # the demo account's leads
    said = printed.read_text()
    assert f"{url}/login?next=%2Fapi%2Famo-crm%2Fconnect" in said  # where to start
    # The access log is on, and shows every secret of a query redacted.
    for name in ("code", "state", "ticket"):
        shown = set(re.findall(rf"[?&;]{name}=([^&;\s\"']*)", said))
        assert shown <= {"[redacted]"}, (name, shown)
    assert "callback?code=[redacted]" in said
