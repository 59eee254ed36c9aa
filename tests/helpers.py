"""Helpers shared by the service tests (importable as ``helpers``: tests/ is on sys.path)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from hypothesis import settings

from amo_oauth import Config, ConnectionRecord, ConnectionStatus
from amo_oauth._records import record_key
from amo_oauth.testing import FakeAmoCRM

STATE_SECRET = "test-state-secret-0123456789abcdef"

#: ``max_examples`` of the ``ci`` hypothesis profile (hypothesis's own default): the profile
#: under which ``examples(full)`` is ``full``. The profiles are registered in conftest.py.
CI_EXAMPLES = 100
#: Issue 24's proof suites (fault, fuzz, leak, load) run bounded in CI and in full behind
#: ``python3 tasks.py full``, which sets ``AMO_OAUTH_PROOF=full`` (and the ``full`` hypothesis
#: profile). Sizes that are not hypothesis examples (stores in the kill matrix, requests in the
#: load run) read this.
PROOF_FULL = os.environ.get("AMO_OAUTH_PROOF", "ci").strip().lower() == "full"


def examples(full: int) -> int:
    """How many examples a property test whose full (CI) budget is ``full`` runs under the
    active hypothesis profile: ``full`` under ``ci``, the same fraction of it as the profile's
    ``max_examples`` is of ``CI_EXAMPLES`` otherwise (15% under ``dev``), and at least one."""
    return max(1, full * settings().max_examples // CI_EXAMPLES)


def config_for(fake: FakeAmoCRM, **overrides: object) -> Config:
    """A Config matching the fake's integration."""
    settings: dict[str, object] = {
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "redirect_uri": fake.redirect_uri,
        "state_secret": STATE_SECRET,
        "authorize_url": f"https://{fake.consent_host}/oauth",
        "settle_timeout": 5.0,
        # The suite makes thousands of exchanges a minute on one fake host; the bounds on
        # token calls are tested on their own (test_limits.py).
        "max_exchanges_per_connection": 1_000_000,
        "max_exchanges_per_host": 1_000_000,
        "max_exchanges_per_process": 1_000_000,
        "max_exchanges_per_source": 1_000_000,
        "max_widget_exchanges": 1_000_000,
        "max_widget_exchanges_per_host": 1_000_000,
    }
    settings.update(overrides)
    return Config(**settings)  # type: ignore[arg-type]


def query_of(url: str) -> dict[str, str]:
    """The query of a redirect URL, one value per name."""
    return dict(parse_qsl(urlsplit(url).query))


def stored(oauth: Any, connection_id: str) -> ConnectionRecord | None:
    """The record ``oauth`` keeps for ``connection_id``, read straight from its store."""
    record: ConnectionRecord | None = oauth.store.load(
        record_key(oauth.config.client_id, connection_id)
    ).record
    return record


def run_consent(oauth: Any, fake: FakeAmoCRM, connection_id: str, **authorize: Any) -> Any:
    """Begin, press "Allow" on the fake, and bring the redirect back in the same browser
    (its binding): the whole consent, for tests about what follows it."""
    begun = oauth.begin(connection_id)
    query = query_of(fake.authorize(begun.state, **authorize))
    return oauth.handle_callback(query, binding=begun.binding)


def consent(
    oauth: Any, fake: FakeAmoCRM, connection_id: str, **authorize: Any
) -> tuple[dict[str, str], str | None]:
    """Begin and press "Allow" on the fake: the redirect's query and the browser's binding."""
    begun = oauth.begin(connection_id)
    return query_of(fake.authorize(begun.state, **authorize)), begun.binding


class OffsetClock:
    """The real UTC time plus an offset that the test moves: worker processes get the offset,
    so every process and the served fake read one clock."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def following(clock: Any) -> Any:
    """A server store's ``clock_offset`` that makes its clock read ``clock`` (a test's
    ``FakeClock``): the store judges leases and the ledger, so it must see the test's time."""
    return lambda: clock() - datetime.now(UTC)


def assert_status_fits(record: ConnectionRecord) -> None:
    """The record's fields agree with its status (decoding alone guarantees only that the
    status is a ``ConnectionStatus``): ``connected`` holds a pair and the verified account,
    ``exchanged`` a pair, ``error`` its error; no other status carries an error."""
    status = record.status
    if status is ConnectionStatus.CONNECTED:
        assert record.tokens is not None and record.account is not None, status
    if status is ConnectionStatus.EXCHANGED:
        assert record.tokens is not None, status
    assert (record.error is not None) == (status is ConnectionStatus.ERROR), status


class PaceClock:
    """A manual monotonic clock for the API pacer's tests: a sleep (thread or task) moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)
