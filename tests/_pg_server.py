"""A throwaway PostgreSQL server for the tests: ``postgres_url``, one per test session.

It runs Debian's (or any) ``initdb`` and ``pg_ctl`` in a temporary directory, listening on a free
port of 127.0.0.1 only, with a socket directory of its own. PostgreSQL refuses to run as root:
when the tests run as root, the server runs as the unprivileged ``postgres`` user (which the
Debian package creates) through ``runuser``. The database belongs to a role with a password, so
that the tests can check that the password never shows.

Without the binaries the tests skip (``apt-get install postgresql``), or fail when
``AMO_OAUTH_REQUIRE_SERVICES=1`` says the services must be there.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = [
    "PASSWORD_MARK",
    "PostgresProcess",
    "find_bin_dir",
    "own_postgres",
    "postgres_url",
    "throwaway_postgres",
]

#: Every generated password starts with this, so that a test can look for it in any text.
PASSWORD_MARK = "pw-Secr3t-"
_USER = "amo_test"
_DATABASE = "amo_test"


def find_bin_dir() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: the newest of Debian's
    ``/usr/lib/postgresql/<version>/bin``, else the one on PATH; None when there is none."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found.sort(key=lambda p: _version_key(p.parent.name), reverse=True)
    for candidate in found:
        if (candidate / "pg_ctl").exists():
            return candidate
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    return None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _missing(why: str) -> NoReturn:
    if os.environ.get("AMO_OAUTH_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{why} (AMO_OAUTH_REQUIRE_SERVICES=1)")
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _Server:
    """One server in ``root``, run as ``user`` (None: as this process's user)."""

    def __init__(self, bin_dir: Path, root: Path, user: str | None, durable: bool = False) -> None:
        self.bin_dir = bin_dir
        #: Commits reach the OS before they are acknowledged (``synchronous_commit=on``), so a
        #: SIGKILLed server loses nothing it acknowledged; fsync stays off (the OS survives).
        self.durable = durable
        self.root = root
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.log = root / "server.log"
        self.user = user
        self.port = 0

    def _cmd(self, tool: str, *args: str) -> list[str]:
        argv = [str(self.bin_dir / tool), *args]
        return ["runuser", "-u", self.user, "--", *argv] if self.user else argv

    def _run(self, tool: str, *args: str) -> None:
        completed = subprocess.run(
            self._cmd(tool, *args), capture_output=True, text=True, timeout=120, check=False
        )
        if completed.returncode:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{tool} failed ({completed.returncode}): {completed.stderr[-2000:]}\n{log}"
            )

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )

    def start(self) -> None:
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-p {self.port}",
                f"-k {self.sockets}",
                "-c fsync=off",
                f"-c synchronous_commit={'on' if self.durable else 'off'}",
                "-c full_page_writes=off",
                "-c max_connections=300",
            ]
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def postmaster_pid(self) -> int:
        """The running postmaster's pid, from the first line of ``postmaster.pid``."""
        return int((self.data / "postmaster.pid").read_text().split()[0])


def _admin(server: _Server, statement: str) -> None:
    """Run one statement as the superuser, over the server's own socket directory."""
    import psycopg

    with psycopg.connect(
        host=str(server.sockets),
        port=server.port,
        user="postgres",
        dbname="postgres",
        autocommit=True,
    ) as conn:
        conn.execute(statement.encode())


@contextlib.contextmanager
def _running(durable: bool) -> Iterator[tuple[_Server, str]]:
    """A fresh server and the URL of its database, stopped and deleted at the end."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        _missing("PostgreSQL not installed: apt-get install postgresql")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _missing("psycopg not installed: pip install 'amo_oauth[postgres]'")
    user: str | None = None
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            _missing("PostgreSQL refuses to run as root, and there is no 'postgres' user")
        user = "postgres"
    root = Path(tempfile.mkdtemp(prefix="amo_oauth_pg_"))
    server = _Server(bin_dir, root, user, durable)
    try:
        server.sockets.mkdir()
        if user is not None:
            for path in (root, server.sockets):
                os.chown(path, account.pw_uid, account.pw_gid)
        server.init()
        for attempt in range(3):  # a free port may be taken before the server binds it
            server.port = _free_port()
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        password = PASSWORD_MARK + secrets.token_hex(8)
        _admin(server, f"CREATE ROLE {_USER} LOGIN PASSWORD '{password}'")
        _admin(server, f"CREATE DATABASE {_DATABASE} OWNER {_USER}")
        yield server, f"postgresql://{_USER}:{password}@127.0.0.1:{server.port}/{_DATABASE}"
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql://amo_test:<password>@127.0.0.1:<port>/amo_test`` of a fresh server, stopped
    and deleted at the end of the session. The password starts with ``PASSWORD_MARK``."""
    with _running(durable=False) as (_, url):
        yield url


class PostgresProcess:
    """A server of one's own, to kill and to start again on the same data directory."""

    def __init__(self, server: _Server, url: str) -> None:
        self._server = server
        self.url = url

    def kill(self) -> None:
        """SIGKILL the postmaster, as the OOM killer would; its backends notice and exit on
        their own (any still there after 10 s are killed too, so that a restart can start)."""
        pid = self._server.postmaster_pid()
        children = _children(pid)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and any(_alive(child) for child in children):
            time.sleep(0.05)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)

    def restart(self) -> None:
        """Start the server again on the same data directory and port (it recovers first)."""
        self._server.start()

    @property
    def data(self) -> Path:
        """The server's data directory (``pg_relation_filepath`` names files under it)."""
        return self._server.data

    def admin(self, statement: str) -> None:
        """Run one statement as the superuser (e.g. ``CHECKPOINT``)."""
        _admin(self._server, statement)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found.extend(int(child) for child in task.read_text().split())
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@contextlib.contextmanager
def own_postgres() -> Iterator[PostgresProcess]:
    """A server for one test that kills it: commits are acknowledged only once written."""
    with _running(durable=True) as (server, url):
        yield PostgresProcess(server, url)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A fresh server's URL outside pytest (``benchmarks/load.py``); stopped and deleted after.
    Without the binaries it raises pytest's skip (or fail) exception, with the reason."""
    with _running(durable=False) as (_, url):
        yield url
