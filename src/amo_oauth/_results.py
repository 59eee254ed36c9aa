"""What the service's calls return."""

from __future__ import annotations

import enum
from datetime import datetime

import attrs

from ._connection_id import ConnectionId
from ._records import Connection, ConnectionStatus
from ._site_button import check_button_text, check_logo, check_scopes

__all__ = [
    "AuthorizationRequest",
    "ButtonMetadata",
    "CallbackResult",
    "HookResult",
    "Outcome",
    "RefreshReport",
    "SecretsResult",
    "SiteButton",
    "SweepProgress",
]


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


# What a call that changed nothing reports, by the status it found.
_REPORTED: dict[ConnectionStatus, Outcome] = {
    ConnectionStatus.CONNECTED: Outcome.ALREADY_CONNECTED,
    ConnectionStatus.CODE_RECEIVED: Outcome.IN_PROGRESS,
    ConnectionStatus.EXCHANGED: Outcome.IN_PROGRESS,
    ConnectionStatus.ERROR: Outcome.FAILED,
    ConnectionStatus.DISCONNECTED: Outcome.FAILED,
}


@attrs.frozen
class CallbackResult:
    """The outcome of ``handle_callback`` or ``exchange_code``.

    Attributes:
        outcome: what happened.
        connection: the connection (and its status) after the call.
        duplicate: True when the code had been seen before and nothing was sent to amoCRM.
        refused: for ``Outcome.FAILED``, the reason slug amoCRM's answer (or its absence) gave
            the code: ``code_rejected``, ``exchange_interrupted`` (a 5xx or a timeout: the
            code's fate is unknown and it is never sent again), ... A connection that was
            connected before an admin's code (``connect_with_code``) stays connected with its
            tokens, so this is where the refusal is reported; otherwise
            ``connection.error`` says the same. None for any other outcome.
    """

    outcome: Outcome
    connection: Connection
    duplicate: bool = False
    refused: str | None = None

    @classmethod
    def report(cls, connection: Connection, *, duplicate: bool) -> CallbackResult:
        """The result of a call that changed nothing: the connection's current status."""
        return cls(_REPORTED[connection.status], connection, duplicate)


@attrs.frozen
class AuthorizationRequest:
    """Where to send the user: ``url`` is amoCRM's consent page carrying a fresh ``state``.

    ``binding`` is the browser binding the state is bound to (None when ``begin()`` was told
    ``browser_binding=False``): keep it in the browser that goes to ``url`` (the web layer sets
    it as an ``HttpOnly`` cookie) and pass it to ``handle_callback``. Opaque and secret.
    """

    url: str = attrs.field(repr=lambda url: repr(url.split("?", 1)[0] + "?..."))
    state: str = attrs.field(repr=False)
    expires_at: datetime
    binding: str | None = attrs.field(default=None, repr=False)


def _button_text(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    check_button_text(attribute.name, value)


def _button_scopes(_: object, __: attrs.Attribute[tuple[str, ...]], value: object) -> None:
    check_scopes(value)


def _button_logo(_: object, __: attrs.Attribute[str | None], value: object) -> None:
    check_logo(value)


@attrs.frozen
class ButtonMetadata:
    """What amoCRM's site button shows, in metadata mode, for the integration it makes for each
    installing account (protocol notes §7: ``data-name``, ``data-description``, ``data-logo``,
    ``data-scopes``).

    Attributes:
        name: the integration's name as the account will see it.
        description: what it does.
        scopes: amoCRM's scope names, e.g. ``("crm", "notifications")`` (sent comma-separated).
        logo: an https URL of its logo, or None.

    Raises:
        ValueError: when made, not when the button is rendered (so ``/connect`` cannot fail
            on it): an empty name or description; scopes that are not a tuple of names of
            ``[a-z_]``; a logo that is not an https URL; a name, description or logo holding
            ``&``, ``#``, ``%``, ``+`` or a control character, which amoCRM's button script
            would put into the consent URL unencoded (docs/site-button.md). The message names
            the field and the character.
    """

    name: str = attrs.field(validator=_button_text)
    description: str = attrs.field(validator=_button_text)
    scopes: tuple[str, ...] = attrs.field(default=("crm",), validator=_button_scopes)
    logo: str | None = attrs.field(default=None, validator=_button_logo)


@attrs.frozen
class SiteButton:
    """amoCRM's site button for one consent: ``html`` is the ``<script>`` element to put on the
    page (every attribute escaped), carrying a fresh ``state`` bound to the browser.

    ``binding`` is kept in the browser as for ``begin()`` (the web layer sets its cookie).
    """

    html: str = attrs.field(repr=False)
    state: str = attrs.field(repr=False)
    expires_at: datetime
    binding: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class SecretsResult:
    """What a post to ``secrets_uri`` did (site button, metadata mode; protocol notes §7).

    Attributes:
        connection: the connection the consent's state names (public view: no secret).
        stored: True when the credentials were stored (first post, or a retried install's
            new integration replacing them before the code was claimed); False when nothing
            changed (the same credentials again, or the consent's code was claimed already).
    """

    connection: Connection
    stored: bool


@attrs.frozen
class RefreshReport:
    """What ``refresh_due`` did: connections refreshed, and those that failed with why.

    Each connection is named as calls name it: an app user's id (``str``), or ``Widget(host)``
    for a widget install, so an app user whose id is an account host and a widget install on
    that host are two entries that never compare equal.

    Attributes:
        refreshed: connection ids whose refresh token now outlasts the window (refreshed by
            this run, or meanwhile by another worker or machine).
        failed: ``(connection id, reason)`` for each connection that could not be refreshed;
            the reason is a ``ReauthorizationRequired`` reason, a provider reason slug (e.g.
            ``unavailable``: tried again on the next run) or an error class name
            (``StoreError``). A connection whose refreshes amoCRM pushed back on is tried no
            sooner than its back-off allows: ``refresh_backoff`` while it lasts (nothing is
            sent), the answer's own slug (``unavailable``, ``account_blocked``...) when a try
            is made.
        needs_reauthorization: the connection ids of ``failed`` that stay unusable until the
            user consents again (their reason came with ``ReauthorizationRequired``).
        skipped: due records left alone: another integration's (another client id), or
            disconnected by their user while the run went on.
        remaining: due records not handled because the run's ``limit`` was reached (0 without
            a limit): a later run handles them, soonest expiry first.
        expiring_long_lived: connection ids holding a long-lived token (``connect_long_lived``)
            that expires inside the window: nothing can refresh one (protocol notes §8), so
            they are reported here, neither refreshed nor failed; ask the amoCRM admin for new
            tokens. One that has expired already is in ``failed`` and
            ``needs_reauthorization`` (``long_lived_token_expired``).
    """

    refreshed: tuple[ConnectionId, ...] = ()
    failed: tuple[tuple[ConnectionId, str], ...] = ()
    needs_reauthorization: tuple[ConnectionId, ...] = ()
    skipped: int = 0
    remaining: int = 0
    expiring_long_lived: tuple[ConnectionId, ...] = ()

    @property
    def failed_by_reason(self) -> dict[str, int]:
        """How many connections failed for each reason, most frequent first (then by name)."""
        counts: dict[str, int] = {}
        for _, reason in self.failed:
            counts[reason] = counts.get(reason, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


@attrs.frozen
class SweepProgress:
    """Where a ``refresh_due`` run is: passed to its ``progress`` callback after each
    connection.

    Attributes:
        done: connections handled so far (refreshed, failed or skipped).
        refreshed: of those, refreshed.
        failed: of those, failed.
        skipped: of those, another integration's or disconnected meanwhile.
    """

    done: int
    refreshed: int
    failed: int
    skipped: int = 0


class HookResult(tuple[Connection, ...]):
    """What ``handle_disconnect_hook`` did. The tuple holds every connection of this
    integration on the hook's account, as it is after the hook (the same tuple as before
    this class: ``(gone,) = oauth.handle_disconnect_hook(query)`` still works).

    Attributes:
        disconnected: the connections this call put in ``error``
            (``disconnected_by_provider``).
        checked: whether amoCRM's API was asked (``GET /api/v4/account``, or the account
            lookup) whether the tokens still work.
        reason: why nothing was disconnected (``hook_paced``, ``hook_replayed``,
            ``nothing_to_forget``, ``provider_unavailable``; docs/reasons.md), or None.
    """

    disconnected: tuple[Connection, ...]
    checked: bool
    reason: str | None

    def __new__(
        cls,
        connections: tuple[Connection, ...] = (),
        *,
        disconnected: tuple[Connection, ...] = (),
        checked: bool = False,
        reason: str | None = None,
    ) -> HookResult:
        result = super().__new__(cls, connections)
        result.disconnected, result.checked, result.reason = disconnected, checked, reason
        return result

    def __repr__(self) -> str:
        return (
            f"HookResult({tuple(self)!r}, disconnected={self.disconnected!r}, "
            f"checked={self.checked!r}, reason={self.reason!r})"
        )
