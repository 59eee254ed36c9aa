"""A throwaway ``redis-server`` for the tests: session-scoped, loopback only, password-protected.

Import the fixture into a test module (``from _redis_server import redis_url  # noqa: F401``).
It starts ``redis-server`` on a free port of 127.0.0.1 with no persistence, in a temporary
directory, requiring ``REDIS_PASSWORD`` (so that tests can check the password never leaks),
and yields its URL. Without the binary the tests skip, or fail when the environment sets
``AMO_OAUTH_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

__all__ = ["REDIS_PASSWORD", "RedisProcess", "free_port", "own_redis", "redis_url"]

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


#: Persistence options: none for the session's server; for a server a test kills, an
#: append-only file written before each reply (so an acknowledged write survives SIGKILL).
_EPHEMERAL: Final = ("--save", "", "--appendonly", "no")
_DURABLE: Final = ("--save", "", "--appendonly", "yes", "--appendfsync", "always")


def _start(
    binary: str, directory: Path, port: int | None = None, persistence: tuple[str, ...] = _EPHEMERAL
) -> tuple[subprocess.Popen[bytes], int]:
    port = port or free_port()
    log = (directory / "redis.log").open("ab")
    process = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            *persistence,
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


class RedisProcess:
    """A server of one's own, to kill and to start again on the same directory and port."""

    def __init__(self, binary: str, directory: Path) -> None:
        self._binary = binary
        self._directory = directory
        self._process, self.port = _start(binary, directory, persistence=_DURABLE)
        self.url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return self._process.pid

    def kill(self) -> None:
        """SIGKILL the server: no shutdown, no last write."""
        self._process.kill()
        self._process.wait(timeout=10)

    def restart(self) -> None:
        """Start again on the same port, reading the append-only file back."""
        self._process, _ = _start(self._binary, self._directory, self.port, _DURABLE)

    def stop(self) -> None:
        _stop(self._process)


@contextlib.contextmanager
def own_redis(directory: Path) -> Iterator[RedisProcess]:
    """A durable server for one test that kills it, in ``directory``."""
    binary = _binary()
    for attempt in range(3):  # the free port may be taken before the server binds it
        try:
            server = RedisProcess(binary, directory)
            break
        except RuntimeError:
            if attempt == 2:
                log = (directory / "redis.log").read_text(errors="replace")
                pytest.fail(f"redis-server did not start:\n{log}")
    try:
        yield server
    finally:
        server.stop()
