"""Every optional import names the extra that brings it: ``pip install 'amo_oauth[<extra>]'``,
not a bare ``No module named ...``. Each case runs in a fresh interpreter where the module is
missing (``sys.modules[name] = None`` makes its import fail as an absent one does)."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: (the missing module, what the user runs, the extra that brings the module)
CASES = [
    ("redis", "from amo_oauth.stores.redis import RedisStore", "redis"),
    ("redis", "from amo_oauth.stores import RedisStore", "redis"),
    ("redis", "from amo_oauth import RedisStore", "redis"),
    ("redis", "amo_oauth.store_from_url('redis://127.0.0.1:6379/0')", "redis"),
    ("psycopg", "from amo_oauth.stores.postgres import PostgresStore", "postgres"),
    ("psycopg_pool", "from amo_oauth import PostgresStore", "postgres"),
    ("psycopg", "amo_oauth.store_from_url('postgresql://h/db')", "postgres"),
    ("fastapi", "import amo_oauth.fastapi", "fastapi"),
    ("starlette", "import amo_oauth.fastapi", "fastapi"),
    ("flask", "import amo_oauth.flask", "flask"),
    ("django", "import amo_oauth.django", "django"),
    ("hypothesis", "from amo_oauth.testing import StoreContract", "testing"),
    ("pytest", "from amo_oauth.testing import StoreContract", "testing"),
    ("hypothesis", "import amo_oauth.testing.invariants", "testing"),
    ("cryptography", "amo_oauth.cli._keys_from_env(required=True)", "crypto"),
]

PROBE = """\
import os, sys
sys.modules[{missing!r}] = None
os.environ["AMO_OAUTH_KEYS"] = "a-key"
import amo_oauth, amo_oauth.cli
try:
    exec({statement!r})
except (ImportError, SystemExit) as exc:
    print(type(exc).__name__, exc)
else:
    print("imported")
"""


@pytest.mark.parametrize(
    ("missing", "statement", "extra"), CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES]
)
def test_a_missing_extra_says_which_to_install(missing: str, statement: str, extra: str) -> None:
    probe = PROBE.format(missing=missing, statement=statement)
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    said = done.stdout.strip()
    assert f"pip install 'amo_oauth[{extra}]'" in said, said
    assert f"needs the {extra} extra" in said, said
