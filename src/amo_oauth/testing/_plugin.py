"""pytest plugin: fixtures for testing against FakeAmoCRM.

Registered through the `pytest11` entry point, so installing amo_oauth makes the fixtures
available in every test suite without a conftest import:

```python
def test_connects(amo_oauth_client, amo_fake):
    request = amo_oauth_client.begin("user-42")
    redirect = amo_fake.authorize(request.state)          # "Allow" pressed
    # The browser that started the consent brings its binding back (the web layer's cookie).
    result = amo_oauth_client.handle_callback(
        httpx.URL(redirect).params, binding=request.binding
    )
    assert result.outcome is Outcome.CONNECTED
```

Override any of them in your own conftest (e.g. `amo_fake` with other settings): the others
are built on top of it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest

from .._config import Config
from .._hosts import DEFAULT_DOMAINS
from .._service import AmoOAuth
from ..stores import MemoryStore
from ._clock import FakeClock
from ._fake import FakeAmoCRM


@pytest.fixture
def amo_fake_clock() -> FakeClock:
    """A FakeClock starting now (whole seconds); advance it to expire codes and tokens."""
    return FakeClock()


@pytest.fixture
def amo_fake(amo_fake_clock: FakeClock) -> FakeAmoCRM:
    """A FakeAmoCRM with default settings, driven by the `amo_fake_clock` fixture."""
    return FakeAmoCRM(clock=amo_fake_clock)


@pytest.fixture
def amo_config(amo_fake: FakeAmoCRM) -> Config:
    """A Config matching `amo_fake`'s integration, with a fresh random `state_secret`."""
    return Config(
        client_id=amo_fake.client_id,
        client_secret=amo_fake.client_secret,
        redirect_uri=amo_fake.redirect_uri,
        state_secret=secrets.token_bytes(32),
        authorize_url=f"https://{amo_fake.consent_host}/oauth",
        extra_domains=() if amo_fake.domain in DEFAULT_DOMAINS else (amo_fake.domain,),
    )


@pytest.fixture
def amo_oauth_client(
    amo_config: Config, amo_fake: FakeAmoCRM, amo_fake_clock: FakeClock
) -> Iterator[AmoOAuth]:
    """An `AmoOAuth` wired to `amo_fake`: a MemoryStore, the fake's in-process transport and
    `amo_fake_clock` (the store's clock too). Closed (store and http client) at teardown."""
    http = httpx.Client(transport=amo_fake.transport(), follow_redirects=False)
    # The store judges every lease and ledger expiry: it reads the same fake clock.
    store = MemoryStore(clock=amo_fake_clock)
    oauth = AmoOAuth(amo_config, store=store, http=http, clock=amo_fake_clock)
    try:
        yield oauth
    finally:
        oauth.close()
        http.close()
