"""JWT-shaped access tokens and opaque secrets, as amoCRM hands them out."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def make_jwt(claims: dict[str, Any]) -> str:
    """Return `header.payload.signature`, base64url without padding.

    The header says RS256 like amoCRM's, but the signature is random bytes of RS256 size:
    clients cannot verify amoCRM's signature either, so nothing may depend on it. The fake
    recognises its own tokens by lookup, not by signature.
    """
    header = {"typ": "JWT", "alg": "RS256", "jti": claims["jti"]}
    parts = (json.dumps(header).encode(), json.dumps(claims).encode(), secrets.token_bytes(256))
    return ".".join(_b64url(part) for part in parts)


def opaque_secret() -> str:
    """An authorization code or refresh token: opaque, long, random.

    amoCRM's are league/oauth2-server's encrypted blobs ("def50200" + hex); the fake keeps
    the look so length limits in a store get exercised, and the randomness so they never repeat.
    """
    return "def50200" + secrets.token_hex(160)
