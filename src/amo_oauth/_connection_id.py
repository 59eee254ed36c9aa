"""What names a connection: an app user's own id (a ``str``), or ``Widget(host)`` for a widget
install.

A widget or marketplace install (``from_widget=1``) has no app user behind it: amoCRM names only
the account, so the connection is named after the account host. ``Widget`` is that name as a
value of its own type, so no string an app uses for its users (an account host, a record key,
anything with ``:``) can ever name a widget install, and a widget install is reached only by
asking for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeAlias

import attrs

from ._hosts import AccountHost

__all__ = [
    "MAX_CONNECTION_ID",
    "ConnectionId",
    "Widget",
    "check_app_user_id",
    "check_connection_id",
    "resolve_connection_id",
]

#: The longest connection id an application may use (a widget install's account host fits).
MAX_CONNECTION_ID = 255


def check_connection_id(connection_id: object) -> str:
    """``connection_id`` itself when it is an application key: non-empty printable text of at
    most 255 characters.

    Raises:
        ValueError: anything else.
    """
    if not isinstance(connection_id, str) or not 0 < len(connection_id) <= MAX_CONNECTION_ID:
        raise ValueError("connection_id must be a non-empty string of at most 255 characters")
    if not connection_id.isprintable():
        raise ValueError("connection_id must be printable")
    return connection_id


def _host_name(value: object) -> str:
    """``value`` as amoCRM sends a host in ``referer``: lower case, no trailing dot.

    Raises:
        ValueError: not text, or not one account label under a plain domain
            (``sub.amocrm.ru``); which domains are allowed is the service's allowlist.
    """
    if not isinstance(value, str):
        raise ValueError("Widget needs an account host such as 'example.amocrm.ru'")
    name = value.strip().lower().removesuffix(".")
    _, _, domain = name.partition(".")
    # The shape of an account host, judged by the allowlist's own rules with the host's domain
    # allowed: the service checks its configured domains when the value is used.
    if AccountHost.accept(name, (domain,)) is None:
        raise ValueError("Widget needs an account host such as 'example.amocrm.ru'")
    return name


@attrs.frozen
class Widget:
    """The connection a widget or marketplace install made, named by its account host.

    Pass it wherever a connection id is taken (``status``, ``access_token``, ``auth``,
    ``disconnect``); ``CallbackResult.connection.widget`` is this value after an install. It
    never equals an app user's id, whatever that id is.

    Args:
        host: the account host, e.g. ``"example.amocrm.ru"``; compared in lower case, without
            a trailing dot.

    Raises:
        ValueError: ``host`` is not one account label under a plain domain. A domain outside
            the service's allowlist (``DEFAULT_DOMAINS`` plus ``Config.extra_domains``) is
            refused when the value is used.
    """

    host: str = attrs.field(converter=_host_name)


#: What names a connection: the application's own key (a user or tenant id), or ``Widget``.
ConnectionId: TypeAlias = str | Widget


def resolve_connection_id(connection_id: object, extra_domains: Iterable[str]) -> tuple[str, bool]:
    """``(the record's connection id, is a widget install)`` for a connection id: the one way
    from what a caller passes to what ``record_key`` takes.

    Raises:
        ValueError: a ``str`` that is empty, over 255 characters or unprintable; a ``Widget``
            whose host is not under an allowed domain; anything else.
    """
    if isinstance(connection_id, Widget):
        if AccountHost.accept(connection_id.host, extra_domains) is None:
            # The host is an account's public name, not a secret: naming it tells the caller
            # which value to fix, and where the allowlist is widened.
            raise ValueError(
                f"Widget host {connection_id.host!r} is not an allowed amoCRM account host "
                "(the allowed domains are DEFAULT_DOMAINS plus Config.extra_domains)"
            )
        return connection_id.host, True
    return check_connection_id(connection_id), False


def check_app_user_id(connection_id: object) -> str:
    """``connection_id`` when it is an app user's id (what ``begin``, tickets and the legacy
    exchange take: a consent is always begun by an app user).

    Raises:
        ValueError: a ``Widget`` (amoCRM's install makes that connection, not a consent the
            app begins), or a ``str`` that ``check_connection_id`` refuses.
    """
    if isinstance(connection_id, Widget):
        raise ValueError(
            "a Widget names a widget install, made by amoCRM: status, access_token, auth and "
            "disconnect take one; a consent is begun for an app user's id"
        )
    return check_connection_id(connection_id)
