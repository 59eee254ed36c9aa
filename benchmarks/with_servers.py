"""Run a command with throwaway PostgreSQL and Redis servers, their URLs in the environment
variables the benchmarks read (``AMO_OAUTH_BENCH_POSTGRES_URL``, ``AMO_OAUTH_BENCH_REDIS_URL``).

    python benchmarks/with_servers.py python3 tasks.py bench [--quick] [--json PATH]

The servers are the test suite's (``tests/_pg_server.py``, ``tests/_redis_server.py``: on
loopback, a free port, a temporary directory, a random password; not durable), stopped and
deleted when the command ends. The URLs carry the passwords: they go to the command's
environment only, never to its output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/
from tests import _pg_server, _redis_server


def main() -> int:
    command = sys.argv[1:]
    if not command or command[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 2
    with (
        tempfile.TemporaryDirectory(prefix="amo_oauth-bench-redis-") as folder,
        _pg_server._running(durable=False) as (_, postgres),
    ):
        redis, port = _redis_server._start(_redis_server._binary(), Path(folder))
        try:
            url = f"redis://:{_redis_server.REDIS_PASSWORD}@127.0.0.1:{port}/0"
            env = dict(
                os.environ,
                AMO_OAUTH_BENCH_POSTGRES_URL=postgres,
                AMO_OAUTH_BENCH_REDIS_URL=url,
            )
            # The command is the caller's own argv, run as given (no shell).
            return subprocess.run(command, env=env, check=False).returncode  # noqa: S603
        finally:
            _redis_server._stop(redis)


if __name__ == "__main__":
    sys.exit(main())
