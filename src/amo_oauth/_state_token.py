"""The OAuth ``state``: signed, expiring, single-use, bound to one connection and one browser.

amoCRM has no PKCE, so ``state`` is what ties a redirect to the ``begin()`` that caused it.
A token is ``v2.<payload>.<mac>``: the payload (base64url JSON) signed with HMAC-SHA256 under
``Config.state_secret``, and accepted under it or any of ``Config.previous_state_secrets`` (a
rotation: a consent begun on a machine with the old secret completes on one with the new). It
carries no user identifier anyone but the backend can read:

- ``h``: a keyed hash of the connection id (HMAC under the state secret, its own context,
  16 bytes), so a callback checks a candidate id without the id being in the URL;
- ``b``: a keyed hash of the browser binding's secret (``_binding``), or ``""`` when
  ``begin()`` was told ``browser_binding=False`` (the app's own session then binds the
  browser); signed, so no caller can switch the check off later;
- ``n``: the nonce a callback consumes; ``i``, ``e``: issue and expiry times in milliseconds;
- ``v``: the version of the connection's record ``begin()`` read (0: none stored), which orders
  a re-authorization after the connection it replaces without comparing times that can tie
  (absent in states signed before it was added: their ``i`` decides);
- ``k``: a keyed hash of the integration's namespace (``Config.client_id``), so that of two
  integrations sharing a state secret neither accepts the other's state (``read_state`` with a
  ``namespace`` treats another namespace's state, or one without ``k``, as unsigned);
- ``c``: in the site button's metadata mode only, the connection itself (its id and whether it
  is a widget install), encrypted: amoCRM posts the new integration's credentials to
  ``secrets_uri`` server to server (protocol notes §7), with no cookie or session to name the
  connection, so the state must. AES-GCM (``cryptography``'s ``AESGCM``) under a key derived
  with HKDF-SHA256 from the secret that signs the state (its own context), a random 96-bit
  nonce, the state's nonce as associated data: unreadable without the secret, and bound to
  this state. States of fixed mode carry no ``c``.

States of the first format (``v1``, which showed the connection id and bound no browser) are
refused as ``bad_state``: they lived 30 minutes, so an upgrade costs at most one re-begin.

The keyed hashes are checked under the secret whose MAC matched (``StateClaims.signed_with``):
a state is made under one secret, all of it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import attrs

from ._connection_id import ConnectionId, Widget
from ._errors import CallbackRejected

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "MAX_CLOCK_SKEW",
    "StateClaims",
    "UnsignedState",
    "binding_hash",
    "id_hash",
    "issue_state",
    "issued_ahead",
    "open_connection",
    "read_state",
    "seal_connection",
    "signer_of",
]

#: How far apart the clocks of two machines serving one store may be for what is checked
#: without a store read (a signed state, a mobile ticket) to be judged alike on both: such a
#: value is accepted until this long after its signed expiry, and refused (``clock_skew``)
#: when issued further than this ahead of the checking machine's clock. Leases and the
#: ledger are judged by the store's clock (``Loaded.now``) and tolerate any skew. Five
#: minutes: at least the default ``lease_ttl`` (60 s), and what NTP keeps far below.
MAX_CLOCK_SKEW = timedelta(minutes=5)

_PREFIX = "v2"
# As long as a callback parameter may be (``_callback._MAX_VALUE``).
_MAX_TOKEN = 2048
# Domain separation: a MAC made for a state can never pass for any other signed value, and the
# two keyed hashes can never pass for each other or for a MAC.
_CONTEXT = b"amo_oauth.state.v2."
_ID_CONTEXT = b"amo_oauth.state.v2.id."
_BINDING_CONTEXT = b"amo_oauth.state.v2.binding."
_NAMESPACE_CONTEXT = b"amo_oauth.state.v2.namespace."
_CONNECTION_CONTEXT = b"amo_oauth.state.v2.connection."
_HASH_BYTES = 16
_SEAL_NONCE_BYTES = 12  # AES-GCM's 96-bit nonce (NIST SP 800-38D)
# How ``c`` names the kind of connection before its id (the record key's own letters).
_APP_USER, _WIDGET = "u", "w"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _moment(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, UTC)


def _mac(secret: bytes, payload: str) -> str:
    # ``hmac.digest``: the same HMAC-SHA256 in one C call (OpenSSL's), not two hash objects
    # built in Python; every callback, duplicates included, checks a state with it.
    return _b64(hmac.digest(secret, _CONTEXT + payload.encode("ascii"), "sha256"))


def _keyed(secret: bytes, context: bytes, value: str) -> str:
    digest = hmac.digest(secret, context + value.encode("utf-8"), "sha256")
    return _b64(digest[:_HASH_BYTES])


def id_hash(secret: bytes, connection_id: str) -> str:
    """The keyed hash of a connection id a state carries (``h``)."""
    return _keyed(secret, _ID_CONTEXT, connection_id)


def binding_hash(secret: bytes, binding_secret: str) -> str:
    """The keyed hash of a browser binding's secret a state carries (``b``)."""
    return _keyed(secret, _BINDING_CONTEXT, binding_secret)


def _cipher(secret: bytes) -> AESGCM:
    """AES-256-GCM keyed by HKDF-SHA256 of ``secret`` with the connection's own context: a key
    apart from every MAC and keyed hash made under the same secret. ``cryptography`` is
    imported here, not at the top: only metadata mode needs it (``Config`` checks it is there)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_CONNECTION_CONTEXT)
    return AESGCM(key.derive(secret))


def seal_connection(secret: bytes, connection: ConnectionId, nonce: str) -> str:
    """``connection`` encrypted for a state signed with ``secret`` whose nonce is ``nonce``
    (the associated data: the sealed value opens only inside that state)."""
    kind, name = (
        (_WIDGET, connection.host) if isinstance(connection, Widget) else (_APP_USER, connection)
    )
    iv = secrets.token_bytes(_SEAL_NONCE_BYTES)
    sealed = _cipher(secret).encrypt(iv, f"{kind}:{name}".encode(), nonce.encode("ascii"))
    return _b64(iv + sealed)


def open_connection(secret: bytes, sealed: str, nonce: str) -> ConnectionId:
    """The connection ``seal_connection`` encrypted.

    Raises:
        CallbackRejected: ``bad_state`` when ``sealed`` does not open under ``secret`` and
            ``nonce``, or opens to something that names no connection.
    """
    from cryptography.exceptions import InvalidTag

    try:
        raw = _unb64(sealed)
        opened = _cipher(secret).decrypt(
            raw[:_SEAL_NONCE_BYTES], raw[_SEAL_NONCE_BYTES:], nonce.encode("ascii")
        )
        kind, _, name = opened.decode("utf-8").partition(":")
        if kind == _WIDGET:
            return Widget(name)
        if kind == _APP_USER and name:
            return name
    except (InvalidTag, binascii.Error, ValueError, UnicodeError):
        pass
    raise CallbackRejected("bad_state")


def _same(expected: str, candidate: str) -> bool:
    return hmac.compare_digest(expected.encode("ascii"), candidate.encode("ascii"))


def signer_of(keys: Sequence[bytes], mac: str, mac_for: Callable[[bytes], str]) -> bytes | None:
    """The secret among ``keys`` under which ``mac_for`` gives ``mac``, or None.

    Every secret is tried, each compared in constant time, so the time taken says nothing of
    which one signed; ``Config`` allows few (``MAX_PREVIOUS_STATE_SECRETS`` besides the current).
    """
    given = mac.encode("ascii", "replace")
    signer = None
    for secret in keys:
        if hmac.compare_digest(mac_for(secret).encode("ascii"), given) and signer is None:
            signer = secret
    return signer


class UnsignedState(CallbackRejected):
    """``bad_state`` for a token of a state's form that none of the accepted secrets signed:
    made under a secret removed since (or forged). Its claims are unknown; a caller may still
    answer a code the code ledger holds (the seed's replay), never exchange a new one."""

    def __init__(self) -> None:
        super().__init__("bad_state")


@attrs.frozen
class StateClaims:
    """What a verified state says. Its MAC was checked; its expiry and use were not.

    Attributes:
        id_hash: the keyed hash of the connection id it was issued to.
        binding_hash: the keyed hash of its browser binding's secret; "" when unbound.
        nonce: what a callback consumes, once.
        issued_at, expires_at: its lifetime.
        seen_version: the record version ``begin()`` read; None for a state without one.
        signed_with: the secret that signed it (never shown): its keyed hashes are checked
            under it.
        sealed_connection: ``c``, the connection encrypted (metadata mode); "" when the
            state carries none (fixed mode). Read by ``connection()``.
    """

    id_hash: str = attrs.field(repr=False)
    binding_hash: str = attrs.field(repr=False)
    nonce: str = attrs.field(repr=False)
    issued_at: datetime
    expires_at: datetime
    seen_version: int | None = None
    signed_with: bytes = attrs.field(kw_only=True, repr=False, eq=False)
    sealed_connection: str = attrs.field(default="", kw_only=True, repr=False)

    @property
    def bound(self) -> bool:
        """True when a browser binding must come back with a new code."""
        return self.binding_hash != ""

    def names(self, connection_id: str | None) -> bool:
        """Was this state issued to ``connection_id``? (constant-time)"""
        if connection_id is None:
            return False
        return _same(self.id_hash, id_hash(self.signed_with, connection_id))

    def binds(self, binding_secret: str | None) -> bool:
        """Is ``binding_secret`` the one this state was bound to? False for an unbound state."""
        if not self.bound or binding_secret is None:
            return False
        return _same(self.binding_hash, binding_hash(self.signed_with, binding_secret))

    def connection(self) -> ConnectionId:
        """The connection a metadata-mode state carries (``c``), decrypted under the secret
        that signed it.

        Raises:
            CallbackRejected: ``bad_state`` for a state that carries none (fixed mode) or one
                that does not open.
        """
        if not self.sealed_connection:
            raise CallbackRejected("bad_state")
        return open_connection(self.signed_with, self.sealed_connection, self.nonce)

    @property
    def accepted_until(self) -> datetime:
        """When a new code stops being accepted with this state: its signed expiry plus
        ``MAX_CLOCK_SKEW``, since the machine that signed it may run behind this one."""
        return self.expires_at + MAX_CLOCK_SKEW

    def is_expired(self, now: datetime) -> bool:
        """Past ``accepted_until`` on ``now`` (aware, UTC; the store's clock)."""
        return now >= self.accepted_until


def issued_ahead(issued_at: datetime, now: datetime) -> bool:
    """Was a value issued more than ``MAX_CLOCK_SKEW`` after ``now``? Then the clock of the
    machine that signed it runs too far ahead of this one's to judge its expiry."""
    return issued_at - now > MAX_CLOCK_SKEW


def issue_state(
    secret: bytes,
    connection_id: str,
    now: datetime,
    ttl: timedelta,
    binding_secret: str | None = None,
    seen_version: int = 0,
    *,
    carry_connection: bool = False,
    namespace: str,
) -> tuple[str, StateClaims]:
    """Make a fresh state token for ``connection_id``, valid for ``ttl`` from ``now`` (aware,
    UTC; the store's clock), bound to the browser holding ``binding_secret`` (None: unbound,
    the caller's explicit choice), naming the record version ``begin()`` read, (with
    ``carry_connection``: metadata mode) carrying the connection encrypted (``c``), and
    naming the integration ``namespace`` (``Config.client_id``, as a keyed hash: ``k``)."""
    issued, expires = _millis(now), _millis(now + ttl)
    nonce = secrets.token_urlsafe(16)
    hashed_id = id_hash(secret, connection_id)
    hashed_binding = "" if binding_secret is None else binding_hash(secret, binding_secret)
    sealed = seal_connection(secret, connection_id, nonce) if carry_connection else ""
    body: dict[str, object] = {
        "h": hashed_id,
        "b": hashed_binding,
        "n": nonce,
        "i": issued,
        "e": expires,
        "v": seen_version,
    }
    body["k"] = _keyed(secret, _NAMESPACE_CONTEXT, namespace)
    if sealed:
        body["c"] = sealed
    payload = _b64(json.dumps(body, separators=(",", ":")).encode("ascii"))
    token = f"{_PREFIX}.{payload}.{_mac(secret, payload)}"
    if len(token) > _MAX_TOKEN:
        # Only a long id of wide characters sealed into ``c`` gets here: a redirect could not
        # bring such a state back (``read_state`` refuses it), so none is issued.
        raise ValueError("connection_id is too long to be carried in a state")
    claims = StateClaims(
        hashed_id,
        hashed_binding,
        nonce,
        _moment(issued),
        _moment(expires),
        seen_version,
        signed_with=secret,
        sealed_connection=sealed,
    )
    return token, claims


def read_state(keys: Sequence[bytes], token: str, namespace: str | None = None) -> StateClaims:
    """Check a state's signature under each of ``keys`` (the current one and the previous
    ones, ``Config.accepted_state_secrets``) and return its claims.

    Args:
        keys: the accepted secrets.
        token: the state as it came back.
        namespace: the reading integration's ``Config.client_id``: a state that names another
            one (``k``) is not this integration's, whoever shares its secret.

    Raises:
        UnsignedState: ``bad_state`` for a token of a state's form none of ``keys`` signed,
            or one signed for another integration's ``namespace``.
        CallbackRejected: ``bad_state`` for anything malformed or of the first format (``v1``).
    """
    # A state is ASCII; anything else would not even encode for the MAC check.
    ok = isinstance(token, str) and len(token) <= _MAX_TOKEN and token.isascii()
    parts = token.split(".") if ok else []
    if len(parts) != 3 or parts[0] != _PREFIX:
        raise CallbackRejected("bad_state")
    payload, mac = parts[1], parts[2]
    secret = signer_of(keys, mac, lambda key: _mac(key, payload))
    if secret is None:
        raise UnsignedState
    try:
        body = json.loads(_unb64(payload))
        hashed_id, hashed_binding = body["h"], body["b"]
        if not isinstance(hashed_id, str) or not isinstance(hashed_binding, str):
            raise TypeError
        hashed_id.encode("ascii")
        hashed_binding.encode("ascii")
        seen = body.get("v")
        if seen is not None and (not isinstance(seen, int) or isinstance(seen, bool) or seen < 0):
            raise TypeError
        sealed = body.get("c", "")
        if not isinstance(sealed, str):
            raise TypeError
        sealed.encode("ascii")
        claims = StateClaims(
            hashed_id,
            hashed_binding,
            str(body["n"]),
            _moment(body["i"]),
            _moment(body["e"]),
            seen,
            signed_with=secret,
            sealed_connection=sealed,
        )
    except (binascii.Error, ValueError, KeyError, TypeError, OverflowError):
        # Only a holder of the secret could sign this; still, refuse rather than crash.
        raise CallbackRejected("bad_state") from None
    if not _names_namespace(secret, body.get("k"), namespace):
        raise UnsignedState
    return claims


def _names_namespace(secret: bytes, named: object, namespace: str | None) -> bool:
    """Whether a state's ``k`` allows ``namespace``: a reader that names none allows any;
    else the state must name it (keyed hashes compared in constant time)."""
    if namespace is None:
        return True
    return (
        isinstance(named, str)
        and named.isascii()
        and _same(_keyed(secret, _NAMESPACE_CONTEXT, namespace), named)
    )
