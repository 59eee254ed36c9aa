"""The OAuth ``state``: signed, expiring, single-use, bound to one connection.

amoCRM has no PKCE, so ``state`` is what ties a redirect to the ``begin()`` that caused it.
A token is ``v1.<payload>.<mac>``: the payload (base64url JSON: connection id, nonce, issue and
expiry times in milliseconds) signed with HMAC-SHA256 under ``Config.state_secret``. It is signed,
not encrypted: the connection id is visible to whoever sees the URL, and nothing else is in it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from datetime import UTC, datetime, timedelta

import attrs

from ._errors import CallbackRejected

__all__ = ["StateClaims", "issue_state", "read_state"]

_PREFIX = "v1"
# As long as a callback parameter may be (``_callback._MAX_VALUE``): a state ``begin()`` issues
# for any connection id the service accepts (255 characters) must fit, and verify.
_MAX_TOKEN = 2048
# Domain separation: a MAC made for a state can never pass for any other signed value.
_CONTEXT = b"amo_oauth.state.v1."


@attrs.frozen
class StateClaims:
    """What a verified state says. Its MAC was checked; its expiry and use were not."""

    connection_id: str
    nonce: str = attrs.field(repr=False)
    issued_at: datetime
    expires_at: datetime

    def is_expired(self, now: datetime) -> bool:
        return now >= self.expires_at


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _moment(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, UTC)


def _mac(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, _CONTEXT + payload.encode("ascii"), hashlib.sha256).digest())


def issue_state(
    secret: bytes, connection_id: str, now: datetime, ttl: timedelta
) -> tuple[str, StateClaims]:
    """Make a fresh state token for ``connection_id``, valid for ``ttl`` from ``now``."""
    issued, expires = _millis(now), _millis(now + ttl)
    nonce = secrets.token_urlsafe(16)
    body = {"c": connection_id, "n": nonce, "i": issued, "e": expires}
    # UTF-8, not \u escapes: a non-ASCII connection id costs 2-4 bytes a character, not 6-12.
    payload = _b64(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    token = f"{_PREFIX}.{payload}.{_mac(secret, payload)}"
    if len(token) > _MAX_TOKEN:
        # read_state would refuse it: fail here rather than hand out a state that never verifies.
        raise ValueError("connection_id is too long for a state")
    return token, StateClaims(connection_id, nonce, _moment(issued), _moment(expires))


def read_state(secret: bytes, token: str) -> StateClaims:
    """Check a state's signature and return its claims.

    Raises:
        CallbackRejected: ``bad_state`` for anything malformed or not signed with ``secret``.
    """
    # A state is ASCII; anything else would not even encode for the MAC check.
    parts = token.split(".") if len(token) <= _MAX_TOKEN and token.isascii() else []
    if len(parts) != 3 or parts[0] != _PREFIX:
        raise CallbackRejected("bad_state")
    payload, mac = parts[1], parts[2]
    if not hmac.compare_digest(_mac(secret, payload).encode(), mac.encode("ascii", "replace")):
        raise CallbackRejected("bad_state")
    try:
        body = json.loads(_unb64(payload))
        claims = StateClaims(str(body["c"]), str(body["n"]), _moment(body["i"]), _moment(body["e"]))
    except (binascii.Error, ValueError, KeyError, TypeError, OverflowError):
        # Only a holder of the secret could sign this; still, refuse rather than crash.
        raise CallbackRejected("bad_state") from None
    return claims
