"""A burst of threads on one SQLite connection with the library's default patience.

Issue 24 §1 saw a 1,000-thread SQLite burst leave most callers with an error. The suite's other
crowds (``test_wakeups.py``) raise ``settle_timeout`` so that no caller gives up while the test
holds the winner; these keep the default (5 s) and a 20 ms token endpoint, as an application
would run: 200 threads deliver the same redirect, or ask for an expired token, at once. Exactly
one token call, and every caller gets the final answer: none an error, none IN_PROGRESS.

No timing is asserted; the burst itself takes well under a second on an idle machine.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from amo_oauth import AmoOAuth, Outcome, SQLiteStore
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import config_for, query_of

CALLERS = 200
USER = "burst-user"


@pytest.fixture
def oauth(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[AmoOAuth, FakeAmoCRM]]:
    fake = FakeAmoCRM(clock=clock, rate_limit=None, latency=0.02)
    store = SQLiteStore(tmp_path / "burst.db", clock=clock)  # leases judged on the test's clock
    config = config_for(fake)
    assert config.settle_timeout == 5.0  # the default: what an application's callers get
    http = httpx.Client(transport=fake.transport())
    with AmoOAuth(config, store=store, http=http, clock=clock) as service:
        yield service, fake


def at_once(call: Callable[[], object]) -> list[object]:
    """``call`` from ``CALLERS`` threads released together; each answer, or the error."""
    barrier = threading.Barrier(CALLERS)

    def one(_: int) -> object:
        barrier.wait()
        try:
            return call()
        except Exception as exc:  # counted by the test
            return exc

    with ThreadPoolExecutor(max_workers=CALLERS) as pool:
        return list(pool.map(one, range(CALLERS)))


def errors_of(answers: list[object]) -> Counter[str]:
    return Counter(type(a).__name__ for a in answers if isinstance(a, Exception))


def test_threads_deliver_one_redirect_at_once(
    oauth: tuple[AmoOAuth, FakeAmoCRM],
) -> None:
    service, fake = oauth
    begun = service.begin(USER)
    query = query_of(fake.authorize(begun.state))
    answers = at_once(lambda: service.handle_callback(query, binding=begun.binding).outcome)
    assert errors_of(answers) == Counter()
    outcomes = Counter(answers)
    assert outcomes == {Outcome.CONNECTED: 1, Outcome.ALREADY_CONNECTED: CALLERS - 1}
    assert fake.token_call_count("authorization_code") == 1


def test_threads_want_an_expired_token_at_once(
    oauth: tuple[AmoOAuth, FakeAmoCRM], clock: FakeClock
) -> None:
    service, fake = oauth
    begun = service.begin(USER)
    service.handle_callback(query_of(fake.authorize(begun.state)), binding=begun.binding)
    clock.advance(timedelta(hours=25))
    answers = at_once(lambda: service.access_token(USER))
    assert errors_of(answers) == Counter()
    assert len(set(answers)) == 1
    token = answers[0]
    assert isinstance(token, str) and fake.is_access_token_valid(token)
    assert fake.token_call_count("refresh_token") == 1
