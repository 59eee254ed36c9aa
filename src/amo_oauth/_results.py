"""What the service's calls return."""

from __future__ import annotations

import enum
from datetime import datetime

import attrs

from ._records import Connection, ConnectionState

__all__ = ["AuthorizationRequest", "CallbackResult", "Outcome", "RefreshReport"]


class Outcome(enum.StrEnum):
    """How a callback or a legacy code exchange ended."""

    CONNECTED = "connected"
    """This call exchanged the code and verified the tokens."""
    ALREADY_CONNECTED = "already_connected"
    """The code was seen before (or the connection is kept): nothing was sent to amoCRM."""
    IN_PROGRESS = "in_progress"
    """Another worker holds the exchange and had not finished within the wait."""
    DENIED = "denied"
    """The user pressed "Deny" (``error=access_denied``)."""
    FAILED = "failed"
    """The exchange or the verification failed (see ``connection.error``), or a code seen
    before came back to a connection that is disconnected or in error."""


# What a call that changed nothing reports, by the state it found.
_REPORTED: dict[ConnectionState, Outcome] = {
    ConnectionState.CONNECTED: Outcome.ALREADY_CONNECTED,
    ConnectionState.CODE_RECEIVED: Outcome.IN_PROGRESS,
    ConnectionState.EXCHANGED: Outcome.IN_PROGRESS,
    ConnectionState.ERROR: Outcome.FAILED,
    ConnectionState.DISCONNECTED: Outcome.FAILED,
}


@attrs.frozen
class CallbackResult:
    """The outcome of ``handle_callback`` or ``exchange_code``.

    Attributes:
        outcome: what happened.
        connection: the connection's state after the call.
        duplicate: True when the code had been seen before and nothing was sent to amoCRM.
    """

    outcome: Outcome
    connection: Connection
    duplicate: bool = False

    @classmethod
    def report(cls, connection: Connection, *, duplicate: bool) -> CallbackResult:
        """The result of a call that changed nothing: the connection's current state."""
        return cls(_REPORTED[connection.state], connection, duplicate)


@attrs.frozen
class AuthorizationRequest:
    """Where to send the user: ``url`` is amoCRM's consent page carrying a fresh ``state``.

    ``binding`` is the browser binding the state is bound to (None when ``begin()`` was told
    ``browser_binding=False``): keep it in the browser that goes to ``url`` (the web layer sets
    it as an ``HttpOnly`` cookie) and pass it to ``handle_callback``. Opaque and secret.
    """

    url: str
    state: str = attrs.field(repr=False)
    expires_at: datetime
    binding: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class RefreshReport:
    """What ``refresh_due`` did: connections refreshed, and those that failed with why."""

    refreshed: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
