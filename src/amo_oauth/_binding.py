"""The browser binding and the mobile ticket: two opaque values, made and read here only.

A **binding** ties a consent to the browser that started it (amoCRM has no PKCE, so the signed
``state`` is all that ties a code to a user, and RFC 9700 §4.7.1 wants it bound to the user
agent). It is ``<secret>.<base64url(connection id)>``: a random secret, whose keyed hash the
state carries, and the connection id, which the state no longer shows. The web layer keeps it
in an ``HttpOnly`` cookie; a caller of the service treats it as an opaque string.

A **ticket** lets a mobile app, which has a session with its backend but whose in-app browser
has none, start a consent in that browser: ``t1.<payload>.<mac>``, signed like a state under
its own context, naming the connection, a nonce and an expiry about a minute away. Its MAC
also covers the integration's namespace (``Config.client_id``, as a state's ``k`` names it):
of several integrations sharing a state secret, only the one that issued a ticket accepts it,
so it is redeemed once, not once per integration's store. It is
single-use: redeeming it consumes ``ticket:<nonce>`` in the store. Like a state, it is signed
under ``Config.state_secret`` and accepted under any of ``Config.accepted_state_secrets`` (a
rotation). A binding is not signed: the state's keyed hash of its secret is what is checked.

Both are secrets: they never appear in a repr, a log line or an exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import attrs

from ._errors import CallbackRejected
from ._reasons import Reason
from ._records import check_connection_id
from ._state_token import MAX_CLOCK_SKEW, signer_of

__all__ = [
    "Binding",
    "TicketClaims",
    "binding_for",
    "issue_ticket",
    "parse_binding",
    "read_ticket",
    "ticket_expires_at",
    "ticket_nonce_key",
]

_SECRET: Final = re.compile(r"[A-Za-z0-9_-]{32,128}")
_MAX_BINDING: Final = 1024
_TICKET_PREFIX: Final = "t1"
_MAX_TICKET: Final = 2048
# Domain separation: a ticket's MAC can never pass for a state's, or the other way round.
_TICKET_CONTEXT: Final = b"amo_oauth.ticket.v1."


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@attrs.frozen
class Binding:
    """A parsed binding: its secret (never shown) and the connection it was made for."""

    secret: str = attrs.field(repr=False)
    connection_id: str = attrs.field(repr=False)
    token: str = attrs.field(repr=False)


def parse_binding(token: object) -> Binding | None:
    """The binding in ``token``, or None when it is absent or malformed (treated as absent)."""
    if not isinstance(token, str) or len(token) > _MAX_BINDING or not token.isascii():
        return None
    secret, dot, encoded = token.partition(".")
    if not dot or not _SECRET.fullmatch(secret):
        return None
    try:
        connection_id = check_connection_id(_unb64(encoded).decode("utf-8"))
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    if _b64(connection_id.encode("utf-8")) != encoded:
        # Only the form this module writes: a decoder that skips stray characters or padding
        # would otherwise let the browser's own bytes travel back out in Set-Cookie.
        return None
    return Binding(secret, connection_id, token)


def binding_for(connection_id: str, current: str | None = None) -> Binding:
    """``current`` when it is a binding made for ``connection_id`` (a second ``/connect`` in the
    same browser keeps its binding), else a fresh one."""
    kept = parse_binding(current)
    if kept is not None and kept.connection_id == connection_id:
        return kept
    secret = secrets.token_urlsafe(32)
    token = f"{secret}.{_b64(connection_id.encode('utf-8'))}"
    return Binding(secret, connection_id, token)


@attrs.frozen
class TicketClaims:
    """What a verified ticket says. Its MAC was checked; its expiry and use were not."""

    connection_id: str = attrs.field(repr=False)
    nonce: str = attrs.field(repr=False)
    expires_at: datetime

    def is_expired(self, now: datetime) -> bool:
        """Past its signed expiry plus ``MAX_CLOCK_SKEW`` on ``now`` (aware, UTC; the store's
        clock): the machine that issued it may run behind this one."""
        return now >= self.expires_at + MAX_CLOCK_SKEW


def ticket_nonce_key(claims: TicketClaims) -> str:
    """The store key a redeemed ticket consumes (apart from every state nonce)."""
    return f"ticket:{claims.nonce}"


def _ticket_mac(secret: bytes, namespace: str, payload: str) -> str:
    # The namespace enters as its fixed-length digest: no two (namespace, payload) pairs give
    # the same MAC input.
    named = hashlib.sha256(namespace.encode("utf-8")).digest()
    mac = hmac.new(secret, _TICKET_CONTEXT + named + payload.encode("ascii"), hashlib.sha256)
    return _b64(mac.digest())


def issue_ticket(
    secret: bytes, connection_id: str, now: datetime, ttl: timedelta, namespace: str
) -> str:
    """A fresh single-use ticket for ``connection_id``, valid for ``ttl`` from ``now``, that
    only the integration ``namespace`` (``Config.client_id``) accepts."""
    expires = int((now + ttl).timestamp() * 1000)
    body = {"c": connection_id, "n": secrets.token_urlsafe(16), "e": expires}
    payload = _b64(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    return f"{_TICKET_PREFIX}.{payload}.{_ticket_mac(secret, namespace, payload)}"


def ticket_expires_at(ticket: str) -> datetime:
    """When a ticket this process just issued expires (UTC), read without its secret: for the
    answer that hands the ticket out, never to accept one (``read_ticket`` does that)."""
    body = json.loads(_unb64(ticket.split(".")[1]))
    return datetime.fromtimestamp(body["e"] / 1000, UTC)


def read_ticket(keys: Sequence[bytes], token: object, namespace: str) -> TicketClaims:
    """Check a ticket's signature under each of ``keys`` (the current secret and the previous
    ones, ``Config.accepted_state_secrets``) for the integration ``namespace``, and return its
    claims.

    Raises:
        CallbackRejected: ``bad_ticket`` for anything malformed, signed by none of ``keys``,
            or issued by another integration (another ``namespace``).
    """
    ok = isinstance(token, str) and len(token) <= _MAX_TICKET and token.isascii()
    parts = token.split(".") if ok and isinstance(token, str) else []
    if len(parts) != 3 or parts[0] != _TICKET_PREFIX:
        raise CallbackRejected(Reason.BAD_TICKET)
    payload, mac = parts[1], parts[2]
    if signer_of(keys, mac, lambda key: _ticket_mac(key, namespace, payload)) is None:
        raise CallbackRejected(Reason.BAD_TICKET)
    try:
        body = json.loads(_unb64(payload))
        expires_at = datetime.fromtimestamp(body["e"] / 1000, UTC)
        claims = TicketClaims(check_connection_id(str(body["c"])), str(body["n"]), expires_at)
    except (binascii.Error, ValueError, KeyError, TypeError, OverflowError):
        raise CallbackRejected(Reason.BAD_TICKET) from None
    return claims
