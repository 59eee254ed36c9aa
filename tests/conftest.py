"""Hypothesis profiles, then shared fixtures: a service wired to FakeAmoCRM through an
in-process transport."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import httpx
import pytest
from hypothesis import HealthCheck, settings

from amo_oauth import AmoOAuth, MemoryStore, Store
from amo_oauth._flow_codes import CodeFlows
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import CI_EXAMPLES, config_for, examples

# -- hypothesis profiles: the one place that decides how much the property tests run ----------
# ``max_examples`` is what a test with no count of its own runs; ``examples(full)`` (helpers.py)
# scales each test's full budget by it: ``ci`` runs every budget in full (the state machine
# 500 x 100 steps), ``dev``, the local default, 15% of it. Neither has a deadline or the
# too-slow health check: both time single examples, and a loaded machine fails them, not a bug.
_untimed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", _untimed, max_examples=CI_EXAMPLES, print_blob=True)
settings.register_profile("dev", _untimed, max_examples=CI_EXAMPLES * 15 // 100)


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if _ci() else "dev")
settings.load_profile(PROFILE)


def pytest_report_header() -> str:
    return (
        f"hypothesis profile: {PROFILE} (examples(500) runs {examples(500)}; "
        "set HYPOTHESIS_PROFILE=ci|dev to choose)"
    )


# -- one browser for the lifecycle tests -----------------------------------------------------
# A new code is exchanged only in the browser that started its consent (the binding begin()
# returns). The lifecycle tests written before that (exactly-once, races, refreshes, faults)
# are about what follows a consent, not about which browser brings it back: in them, one
# browser starts and finishes every consent, so the binding begin() made for a state comes
# back with that state unless the test passes its own (binding=...). The modules below see no
# such help: they test the binding itself, through the service, the web layer, the adapters,
# a real browser, the plugin, the demo and the documented snippets. (test_web.py keeps the
# help for its many callbacks that build a state with begin(); its senders keep cookies, and
# the adapters' tests run its seed scenario with their frameworks' cookie jars and no help.)
REAL_BROWSER_MODULES = frozenset(
    {
        "test_browser_binding",
        "test_e2e",
        "test_fastapi_adapter",
        "test_flask_adapter",
        "test_starlette_example",
        "test_browser",
        "test_plugin",
        "test_demo",
        "test_docs",
    }
)


def _state_of(query: object) -> str | None:
    try:
        if isinstance(query, dict) or hasattr(query, "get"):
            value = query.get("state")  # type: ignore[attr-defined]
        else:
            value = next((v for k, v in query if k == "state"), None)  # type: ignore[attr-defined]
    except Exception:
        return None
    value = value[0] if isinstance(value, list | tuple) and value else value
    return value if isinstance(value, str) else None


@pytest.fixture(autouse=True)
def same_browser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one browser of the lifecycle tests (see above); a no-op in REAL_BROWSER_MODULES."""
    if (
        os.environ.get("NO_SAME_BROWSER")
        or request.module.__name__.rsplit(".", 1)[-1] in REAL_BROWSER_MODULES
    ):
        return
    bindings: dict[str, str] = {}
    begin, callback, exchange = CodeFlows.begin, CodeFlows.handle_callback, CodeFlows.exchange_code

    def remembering_begin(self, connection_id, binding=None, browser_binding=True):  # type: ignore[no-untyped-def]
        begun = begin(self, connection_id, binding, browser_binding)
        if begun.binding is not None:
            bindings[begun.state] = begun.binding
        return begun

    def same_browser_callback(self, query, signed_in=None, binding=None):  # type: ignore[no-untyped-def]
        if binding is None:
            binding = bindings.get(_state_of(query) or "")
        return callback(self, query, signed_in, binding)

    def same_browser_exchange(  # type: ignore[no-untyped-def]
        self, connection_id, code, referer=None, state=None, exchange_new=True, binding=None
    ):
        if binding is None and state:
            binding = bindings.get(state)
        return exchange(self, connection_id, code, referer, state, exchange_new, binding)

    monkeypatch.setattr(CodeFlows, "begin", remembering_begin)
    monkeypatch.setattr(CodeFlows, "handle_callback", same_browser_callback)
    monkeypatch.setattr(CodeFlows, "exchange_code", same_browser_exchange)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> FakeAmoCRM:
    return FakeAmoCRM(clock=clock, rate_limit=None)


@pytest.fixture
def make_oauth(fake: FakeAmoCRM, clock: FakeClock) -> Iterator[Callable[..., AmoOAuth]]:
    """Build an AmoOAuth on the fake; keyword arguments override Config fields."""
    made: list[AmoOAuth] = []

    def make(store: Store | None = None, **overrides: object) -> AmoOAuth:
        oauth = AmoOAuth(
            config_for(fake, **overrides),
            store=store if store is not None else MemoryStore(),
            http=httpx.Client(transport=fake.transport()),
            clock=clock,
        )
        made.append(oauth)
        return oauth

    yield make
    for oauth in made:
        oauth.close()


@pytest.fixture
def oauth(make_oauth: Callable[..., AmoOAuth]) -> AmoOAuth:
    return make_oauth()
