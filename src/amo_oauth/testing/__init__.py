"""Test kit: a faithful fake amoCRM server and pytest fixtures.

```python
from amo_oauth.testing import FakeAmoCRM, FakeClock

clock = FakeClock()
fake = FakeAmoCRM(clock=clock)
http = httpx.Client(transport=fake.transport())       # in-process, no sockets
redirect = fake.authorize(state="...")                 # "Allow" pressed, no browser
with fake.serve() as served:                           # real HTTP on 127.0.0.1
    http = httpx.Client(transport=served.transport())
    # in another process, from just the URL and the domain:
    http = httpx.Client(transport=LoopbackTransport.to(served.url, domain=fake.domain))
```

The fake reproduces the amoCRM protocol as the project documents it (collected from public
docs and SDKs); it was not checked against a live account.

``StoreContract`` is the store conformance suite, a pytest test class to subclass with one
``store`` fixture (see ``docs/testing.md``). It needs ``pytest`` and ``hypothesis``, so it is
imported only when first named: ``import amo_oauth.testing`` does not need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._accounts import FakeAccount, FakeIntegration
from ._clock import Clock, FakeClock
from ._directory import LeadsSpec
from ._fake import FakeAmoCRM
from ._loopback import AsyncLoopbackTransport, LoopbackTransport
from ._server import ServedFake
from ._site_button import SecretsPost, SiteButtonInstall
from ._types import FakeResponse, FaultKind, Issued, RawJSON, RequestRecord

if TYPE_CHECKING:
    from ._contract import StoreContract

__all__ = [
    "AsyncLoopbackTransport",
    "Clock",
    "FakeAccount",
    "FakeAmoCRM",
    "FakeClock",
    "FakeIntegration",
    "FakeResponse",
    "FaultKind",
    "Issued",
    "LeadsSpec",
    "LoopbackTransport",
    "RawJSON",
    "RequestRecord",
    "SecretsPost",
    "ServedFake",
    "SiteButtonInstall",
    "StoreContract",
]


def __getattr__(name: str) -> object:
    # StoreContract imports pytest and hypothesis: load it on first use only.
    if name == "StoreContract":
        from ._contract import StoreContract

        return StoreContract
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
