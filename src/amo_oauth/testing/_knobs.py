"""The fake's settable knobs, as the parts that read them on every request see them."""

from __future__ import annotations

from typing import Protocol


class Knobs(Protocol):
    """What a test may change on a running fake: `FakeAmoCRM`'s attributes of these names.

    The parts hold the fake itself under this narrow type, so a knob set on the fake applies
    to the next request.
    """

    rate_limit: int | None
    """API requests per second per account, or None for no limit."""
    latency: float
    """Seconds added before every token/API answer is delivered."""
    refresh_grace: bool
    """A used refresh token keeps working until its successor is first used (Kommo)."""
    api_domain_claim: bool
    """New access tokens carry the `api_domain` claim."""
    rotate_refresh_tokens: bool
    """A refresh answers a new refresh token; False: none, and the one sent keeps working."""
    send_expires_in: bool
    """Token answers carry `expires_in`; False: they omit it (the JWT's `exp` still says)."""
