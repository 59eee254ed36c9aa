"""A served FakeAmoCRM accepts a backend's burst of connections: its listening socket's backlog
is not socketserver's 5. Found by the load run (tests/test_load.py): 100 clients made the
example open many connections to the fake at once while the fake's process was busy; the
kernel dropped those beyond the backlog, and the exchanges they carried failed with ReadError
(``exchange_interrupted``), a fault the fake never meant to inject."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from amo_oauth.testing import FakeAmoCRM

#: Connections one load run's backend may open to the fake at once (httpx's pool: 100).
BURST = 100


def _listen_backlog(port: int) -> int:
    """The listening socket's backlog as the kernel holds it: ``ss``'s Send-Q of a LISTEN row."""
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("ss (iproute2) is not installed")
    rows = subprocess.run(
        [ss, "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    listening = [row.split() for row in rows if row.startswith("LISTEN")]
    assert len(listening) == 1, rows
    return int(listening[0][2])


def test_the_served_fake_listens_with_room_for_a_burst() -> None:
    with FakeAmoCRM().serve() as served:
        assert _listen_backlog(served.port) >= BURST
