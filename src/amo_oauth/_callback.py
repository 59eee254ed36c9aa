"""Parse and validate amoCRM's redirect back: a raw query becomes a grant, a denial or a refusal.

Only shape is checked here: what the parameters say and whether the state's signature holds.
Whether the code was seen before, or the state is still unused, depends on the stored record
and is decided by the service with the table in ``_lifecycle.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final, Protocol

import attrs

from ._errors import CallbackRejected
from ._hosts import AccountHost
from ._records import code_digest
from ._state_token import StateClaims, UnsignedState, read_state

__all__ = ["CallbackSettings", "Denial", "Grant", "QueryLike", "parse_callback", "single_values"]

#: A query as frameworks hand it over: a mapping (of str, or of one-item lists) or pairs.
QueryLike = Mapping[str, object] | Iterable[tuple[str, object]]

_MAX_VALUE: Final = 2048
_MAX_PARAMS: Final = 32
_ERROR_SLUG = re.compile(r"[a-z_]{1,64}")


class CallbackSettings(Protocol):
    """What parsing a redirect needs to know; ``Config`` is one (kept structural so that this
    pure module depends on nothing but the other pure ones)."""

    @property
    def client_id(self) -> str: ...
    @property
    def accepted_state_secrets(self) -> tuple[bytes, ...]: ...
    @property
    def extra_domains(self) -> tuple[str, ...]: ...
    @property
    def allow_widget_installs(self) -> bool: ...
    @property
    def metadata_mode(self) -> bool: ...


@attrs.frozen
class Grant:
    """A redirect that brought a code. The code never appears in a repr.

    ``state`` is None for a widget install (no state), and for a state that none of the
    accepted secrets signed (``state_unsigned``: made under a secret removed since, or
    forged), with which only a code the code ledger holds is answered.
    """

    code: str = attrs.field(repr=False)
    host: AccountHost
    state: StateClaims | None
    from_widget: bool = False
    state_unsigned: bool = False
    #: Metadata mode (protocol notes §7): the redirect's ``client_id`` (§2), the integration
    #: amoCRM made for this install, which the flow matches with the credentials posted to
    #: ``secrets_uri`` for the state; None when it came without one, and in fixed mode (there
    #: it was checked equal to ``Config.client_id`` already).
    client_id: str | None = None

    @property
    def code_digest(self) -> str:
        return code_digest(self.code)


@attrs.frozen
class Denial:
    """A redirect that brought ``error`` instead of a code."""

    reason: str
    state: StateClaims


def _pairs(query: QueryLike) -> Iterable[tuple[str, object]]:
    if isinstance(query, str | bytes) or query is None:
        # A raw query string is the framework's to parse (and a None is no query at all).
        raise TypeError("query must be a mapping or (name, value) pairs, not a string or None")
    if isinstance(query, Mapping):
        # Multi-dicts (werkzeug, starlette) iterate keys once; ask them for every value.
        getlist = getattr(query, "getlist", None)
        if callable(getlist):
            return [(key, value) for key in query for value in getlist(key)]
        return query.items()
    return query


def single_values(query: QueryLike) -> dict[str, str]:
    """The query as one text value per name.

    Raises:
        CallbackRejected: ``malformed`` for repeated names, non-text or oversized values.
    """
    values: dict[str, str] = {}
    for pair in _pairs(query):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise CallbackRejected("malformed")
        key, raw = pair
        value = raw[0] if isinstance(raw, list | tuple) and len(raw) == 1 else raw
        if not isinstance(key, str) or not isinstance(value, str) or key in values:
            raise CallbackRejected("malformed")
        if len(value) > _MAX_VALUE or len(values) >= _MAX_PARAMS or "\x00" in value:
            raise CallbackRejected("malformed")
        values[key] = value
    return values


def _state(params: Mapping[str, str], config: CallbackSettings) -> StateClaims:
    token = params.get("state")
    if not token:
        raise CallbackRejected("bad_state")
    # Bound to this integration (``client_id``): one sharing the state secret reads it unsigned.
    return read_state(config.accepted_state_secrets, token, config.client_id)


def _host(params: Mapping[str, str], config: CallbackSettings) -> AccountHost:
    referer = params.get("referer")
    if not referer:
        raise CallbackRejected("missing_referer")
    host = AccountHost.accept(referer, config.extra_domains)
    if host is None:
        raise CallbackRejected("foreign_host")
    return host


def parse_callback(query: QueryLike, config: CallbackSettings) -> Grant | Denial:
    """Turn the redirect's query into a ``Grant`` or a ``Denial``. A code whose state has a
    state's form but no accepted signature is a ``Grant`` with ``state_unsigned``; a denial
    with one is ``bad_state``.

    In metadata mode (``metadata_mode``) the redirect's ``client_id`` is not compared with
    ``client_id`` here: it is carried on the ``Grant`` for the flow to match.

    Raises:
        CallbackRejected: ``malformed``, ``client_id_mismatch``, ``bad_state``,
            ``missing_code``, ``missing_referer``, ``foreign_host`` or
            ``widget_installs_disabled``; nothing has changed.
    """
    params = single_values(query)
    # amoCRM names the integration the consent was for (protocol notes §2: the redirect
    # carries ``client_id``); another integration's redirect, e.g. to a shared redirect URI, or a
    # backend configured with the wrong client id, is not this one's to answer. In metadata
    # mode (§7) it is the connection's own integration, never ``Config.client_id`` (which is
    # never sent): the flow compares it with the credentials posted for the state.
    client_id = params.get("client_id")
    if not config.metadata_mode and client_id not in (None, config.client_id):
        raise CallbackRejected("client_id_mismatch")
    if "error" in params:
        reason = params["error"]
        if not _ERROR_SLUG.fullmatch(reason):
            raise CallbackRejected("malformed")
        return Denial(reason, _state(params, config))
    widget = params.get("from_widget") == "1" and "state" not in params
    if widget and not config.allow_widget_installs:
        raise CallbackRejected("widget_installs_disabled")
    unsigned = False
    try:
        state = None if widget else _state(params, config)
    except UnsignedState:  # the flow answers its code only if the ledger holds it
        state, unsigned = None, True
    code = params.get("code")
    if not code:
        raise CallbackRejected("missing_code")
    host = _host(params, config)
    own = client_id if config.metadata_mode else None
    return Grant(code, host, state, from_widget=widget, state_unsigned=unsigned, client_id=own)
