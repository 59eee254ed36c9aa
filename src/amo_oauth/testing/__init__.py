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
"""

from ._accounts import FakeAccount, FakeIntegration
from ._clock import Clock, FakeClock
from ._fake import FakeAmoCRM, LeadsSpec
from ._server import ServedFake
from ._transport import AsyncLoopbackTransport, LoopbackTransport
from ._types import FakeResponse, FaultKind, RawJSON, RequestRecord

__all__ = [
    "AsyncLoopbackTransport",
    "Clock",
    "FakeAccount",
    "FakeAmoCRM",
    "FakeClock",
    "FakeIntegration",
    "FakeResponse",
    "FaultKind",
    "LeadsSpec",
    "LoopbackTransport",
    "RawJSON",
    "RequestRecord",
    "ServedFake",
]
