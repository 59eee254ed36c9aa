"""What an application hears when a connection changes: the public lifecycle events.

A service calls the callbacks registered with ``on()`` right after the write that made the
change (docs/events.md). The events are derived here, from the record before and after one
write (``events_of_write``), so no flow decides them: the table decided the write, and the
difference between the two records says what changed. They carry names, hosts, reason slugs and
times, never a token, a code or a client secret.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from ._connection_id import ConnectionId
from ._reasons import Reason
from ._records import ConnectionRecord, ConnectionStatus

__all__ = [
    "AccountHostChanged",
    "Connected",
    "DisconnectedByProvider",
    "LifecycleEvent",
    "LongLivedTokenExpiring",
    "ReauthorizationNeeded",
    "events_of_write",
    "long_lived_expiring",
]


@attrs.frozen(kw_only=True)
class LifecycleEvent:
    """What every lifecycle event carries; ``on(LifecycleEvent, callback)`` hears them all.

    Attributes:
        connection_id: the connection's name, as the application passes it to calls: the app
            user's ``str``, or ``Widget(host)`` for a widget install.
        client_id: the integration's client id (``Config.client_id``): the namespace the
            connection's record lives in, which tells integrations sharing a store apart.
        at: when the change was written (aware, UTC; the store's clock).
    """

    connection_id: ConnectionId
    client_id: str
    at: datetime


@attrs.frozen(kw_only=True)
class Connected(LifecycleEvent):
    """The connection entered ``connected``: a consent's tokens were verified against the
    account (``GET /api/v4/account``), an admin's code or long-lived token was installed, or a
    connection in ``error`` got its refreshed pair after all.

    Attributes:
        host: the account host API calls go to (``x.amocrm.ru``, ``x.kommo.com``).
        account_id: amoCRM's id of the verified account (None when not known).
    """

    host: str | None
    account_id: int | None


@attrs.frozen(kw_only=True)
class ReauthorizationNeeded(LifecycleEvent):
    """A connection that was ``connected`` entered ``error``: it gives no token until a user
    consents again (``begin()``) or an admin installs a new code or long-lived token.
    ``ReauthorizationRequired`` is what calls raise meanwhile.

    Only a connection that was usable fires it: the table's ``refresh_failed`` (amoCRM refused
    the refresh token, or the account moved and its new host is unknown) and
    ``long_lived_ended`` (the long-lived token expired or was revoked). A consent that failed
    before it ever connected (a "Deny", a refused code, a widget install that failed) fires
    nothing, since the user at the browser saw that answer, and anyone can send a junk code.
    Nor does a connection already in ``error`` whose reason changes. An uninstall fires
    ``DisconnectedByProvider`` instead, never both.

    Attributes:
        reason: why, one slug of docs/reasons.md (``reauthorization_required``: amoCRM refused
            the refresh token; ``account_moved``, ``long_lived_token_expired``,
            ``long_lived_token_revoked``, ...). ``disconnected_by_provider`` is never one: that
            is ``DisconnectedByProvider``.
    """

    reason: str


@attrs.frozen(kw_only=True)
class DisconnectedByProvider(LifecycleEvent):
    """amoCRM's uninstall hook disconnected the connection: amoCRM refused its tokens after
    the account's admin uninstalled the integration (protocol notes §6). It is in ``error``
    with the reason ``disconnected_by_provider``; a new consent connects it again."""


@attrs.frozen(kw_only=True)
class AccountHostChanged(LifecycleEvent):
    """The account moved or was renamed: a refresh was refused on the old host, amoCRM's
    lookup named the new one (protocol notes §5), and the connection now calls it.

    Attributes:
        old_host: the account host before (``old.amocrm.ru``).
        new_host: the account host now (``new.kommo.com``).
    """

    old_host: str
    new_host: str


@attrs.frozen(kw_only=True)
class LongLivedTokenExpiring(LifecycleEvent):
    """``refresh_due`` found a long-lived token (protocol notes §8) that expires inside its
    window: nothing can renew it, so an admin must issue a new one before ``expires_at``.
    Emitted once per ``refresh_due`` run per connection, written nothing.

    Attributes:
        expires_at: when the token stops working (aware, UTC).
    """

    expires_at: datetime


def _connected(old: ConnectionRecord, new: ConnectionRecord) -> bool:
    if new.status is not ConnectionStatus.CONNECTED:
        return False
    if old.status is not ConnectionStatus.CONNECTED:
        return True
    # A connected connection re-made with a new token (an admin's long-lived token replaced):
    # a new connection version. The same token installed again re-makes nothing.
    remade = new.connected_version != old.connected_version
    return remade and _access_token(old) != _access_token(new)


def _access_token(record: ConnectionRecord) -> str | None:
    return record.tokens.access_token if record.tokens is not None else None


def _lost_reason(old: ConnectionRecord, new: ConnectionRecord) -> str | None:
    """The reason a usable connection became unusable in this write, else None.

    Only a ``connected`` record entering ``error`` counts (the table's ``refresh_failed`` and
    ``long_lived_ended``; its ``provider_disconnected`` is ``_uninstalled``): a consent that
    failed before it connected (a denial, a refused code, a forged widget install) took nothing
    from anyone, and a record already in ``error`` changing its reason lost nothing more.
    """
    lost = old.status is ConnectionStatus.CONNECTED and new.status is ConnectionStatus.ERROR
    if not lost or new.error is None:
        return None
    return str(new.error.reason)  # the slug's text, whatever enum it came as


def _uninstalled(old: ConnectionRecord, new: ConnectionRecord) -> bool:
    """The uninstall hook's write: the record now says ``disconnected_by_provider`` and did
    not before (the hook acts only on a record amoCRM refused the tokens of)."""
    reason = Reason.DISCONNECTED_BY_PROVIDER
    now_says = new.error is not None and new.error.reason == reason
    said = old.error is not None and old.error.reason == reason
    return new.status is ConnectionStatus.ERROR and now_says and not said


def _moved(old: ConnectionRecord, new: ConnectionRecord) -> bool:
    """The same connected account now answers on another host."""
    both_connected = old.status is new.status is ConnectionStatus.CONNECTED
    return both_connected and None not in (old.host, new.host) and old.host != new.host


def events_of_write(
    old: ConnectionRecord, new: ConnectionRecord, client_id: str, at: datetime
) -> tuple[LifecycleEvent, ...]:
    """What the application hears of one write that replaced ``old`` by ``new``.

    Args:
        old: the record the write's compare-and-set expected (version 0: none was stored).
        new: the record written.
        client_id: the integration's client id (``Config.client_id``).
        at: when (aware, UTC; the store's clock).

    Returns:
        The events, in the order they happened; empty for most writes (a lease, a back-off, a
        refreshed pair of a connection that stays where it was).
    """
    name = new.name
    events: list[LifecycleEvent] = []
    if _moved(old, new):
        assert old.host is not None and new.host is not None  # _moved checked both
        events.append(
            AccountHostChanged(
                connection_id=name,
                client_id=client_id,
                at=at,
                old_host=old.host,
                new_host=new.host,
            )
        )
    if _connected(old, new):
        account_id = new.account.id if new.account is not None else None
        events.append(
            Connected(
                connection_id=name, client_id=client_id, at=at, host=new.host, account_id=account_id
            )
        )
    if _uninstalled(old, new):
        events.append(DisconnectedByProvider(connection_id=name, client_id=client_id, at=at))
    else:
        reason = _lost_reason(old, new)
        if reason is not None:
            events.append(
                ReauthorizationNeeded(connection_id=name, client_id=client_id, at=at, reason=reason)
            )
    return tuple(events)


def long_lived_expiring(
    record: ConnectionRecord, client_id: str, at: datetime
) -> LongLivedTokenExpiring:
    """The event for a record whose long-lived token the sweep found expiring.

    Raises:
        ValueError: the record holds no token.
    """
    expires_at = record.tokens_or_raise().expires_at
    return LongLivedTokenExpiring(
        connection_id=record.name, client_id=client_id, at=at, expires_at=expires_at
    )
