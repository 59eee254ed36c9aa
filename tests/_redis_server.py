"""A throwaway ``redis-server`` for the tests: session-scoped, loopback only, password-protected.

Import the fixture into a test module (``from _redis_server import redis_url  # noqa: F401``).
It starts ``redis-server`` on a free port of 127.0.0.1 with no persistence, in a temporary
directory, requiring ``REDIS_PASSWORD`` (so that tests can check the password never leaks),
and yields its URL. Without the binary the tests skip, or fail when the environment sets
``AMO_OAUTH_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["REDIS_PASSWORD", "free_port", "redis_url"]

#: The server's password: random per session, so that a leak cannot match by accident.
REDIS_PASSWORD = "pw-" + secrets.token_hex(12)

#: Seconds the server gets to start accepting connections.
_START_TIMEOUT = 20.0


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _binary() -> str:
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(found, os.X_OK):
        message = "Redis not installed: apt-get install redis-server"
        if os.environ.get("AMO_OAUTH_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


def _answers(port: int) -> bool:
    """True once the server on ``port`` accepts connections and answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")  # refused without AUTH, but any reply means it is up
            return sock.recv(64) != b""
    except OSError:
        return False


def _start(binary: str, directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = (directory / "redis.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--requirepass",
            REDIS_PASSWORD,
            "--daemonize",
            "no",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=directory,
    )
    log.close()
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break  # exited: most likely the port was taken meanwhile
        if _answers(port):
            return process, port
        time.sleep(0.05)
    _stop(process)
    raise RuntimeError(f"redis-server did not start on port {port}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL (password included) of a ``redis-server`` running for this test session."""
    binary = _binary()
    directory = tmp_path_factory.mktemp("redis")
    for attempt in range(3):  # the free port may be taken before the server binds it
        try:
            process, port = _start(binary, directory)
            break
        except RuntimeError:
            if attempt == 2:
                log = (directory / "redis.log").read_text(errors="replace")
                pytest.fail(f"redis-server did not start:\n{log}")
    try:
        yield f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    finally:
        _stop(process)
