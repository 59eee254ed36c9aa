"""amoCRM's token endpoint and account check, as requests to build and answers to read.

No I/O happens here: the service sends the requests through its httpx client (never following
redirects) and hands the answers back. Every error body of the protocol maps to a ``reason`` slug
from one table; anything unexpected (5xx, HTML, a timeout) is *transient*, which for a code means
"outcome unknown": the code is never sent again.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Final

import httpx

from ._config import Config
from ._errors import ProviderError
from ._hosts import AccountHost
from ._records import Account, TokenSet

__all__ = [
    "REFRESH_TOKEN_LIFETIME",
    "account_request",
    "code_request",
    "error_from_exception",
    "read_account",
    "read_tokens",
    "reason_of",
    "refresh_request",
]

#: amoCRM revokes a refresh token three months after it was issued.
REFRESH_TOKEN_LIFETIME: Final = timedelta(days=90)

# amoCRM's ``hint`` texts (amocrm-protocol.md §4) and the slug the library reports for each.
_HINT_REASONS: Final = {
    "Authorization code has been revoked": "code_revoked",
    "Authorization code has expired": "code_expired",
    "Cannot decrypt the authorization code": "code_invalid",
    "Check the `client_id` parameter": "bad_client_id",
    "Check the `client_secret` parameter": "bad_client_secret",
    "Redirect URI is not associated with client": "bad_redirect_uri",
    "Invalid account": "invalid_account",
    "Token has been revoked": "token_revoked",
}
_PROBLEM_TYPES: Final = ("application/problem+json", "application/json")


def _token_request(config: Config, host: AccountHost, grant: dict[str, str]) -> httpx.Request:
    body = {
        "client_id": config.client_id,
        "client_secret": config.client_secret,
        "redirect_uri": config.redirect_uri,
        **grant,
    }
    return httpx.Request(
        "POST",
        host.token_url,
        json=body,
        headers={"Accept": "application/json"},
        extensions={"timeout": httpx.Timeout(config.http_timeout).as_dict()},
    )


def code_request(config: Config, host: AccountHost, code: str) -> httpx.Request:
    """``POST https://{host}/oauth2/access_token`` for the authorization_code grant."""
    return _token_request(config, host, {"grant_type": "authorization_code", "code": code})


def refresh_request(config: Config, host: AccountHost, refresh_token: str) -> httpx.Request:
    """``POST https://{host}/oauth2/access_token`` for the refresh_token grant."""
    grant = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return _token_request(config, host, grant)


def account_request(config: Config, host: AccountHost, access_token: str) -> httpx.Request:
    """``GET https://{host}/api/v4/account``: the check that new tokens work."""
    return httpx.Request(
        "GET",
        host.url("/api/v4/account"),
        headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
        extensions={"timeout": httpx.Timeout(config.http_timeout).as_dict()},
    )


def _json(response: httpx.Response) -> Any:
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    if content_type not in (*_PROBLEM_TYPES, "application/hal+json"):
        return None
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def _error(response: httpx.Response) -> ProviderError:
    body = _json(response)
    if response.status_code >= 500 or response.status_code == 429 or not isinstance(body, dict):
        return ProviderError(response.status_code, f"HTTP {response.status_code}", transient=True)
    hint = body.get("hint") or body.get("title") or f"HTTP {response.status_code}"
    return ProviderError(response.status_code, str(hint)[:200])


def reason_of(error: ProviderError) -> str:
    """The stable slug for an amoCRM error: ``code_revoked``, ``token_revoked``, ..."""
    if error.transient:
        return "unavailable"
    if error.hint in _HINT_REASONS:
        return _HINT_REASONS[error.hint]
    return "bad_client" if error.status == 401 else "rejected"


def error_from_exception(exc: httpx.HTTPError) -> ProviderError:
    """A transport failure as a transient ``ProviderError``; its message holds no URL or body."""
    return ProviderError(None, type(exc).__name__, transient=True)


def read_tokens(response: httpx.Response, now: datetime) -> TokenSet:
    """The token pair from a 200 answer.

    Raises:
        ProviderError: an error answer, or a 200 that is not a token answer (transient).
    """
    body = _json(response)
    if response.status_code != 200:
        raise _error(response)
    try:
        return TokenSet(
            access_token=_text(body["access_token"]),
            refresh_token=_text(body["refresh_token"]),
            expires_at=now + timedelta(seconds=int(body["expires_in"])),
            refresh_expires_at=now + REFRESH_TOKEN_LIFETIME,
            token_type=str(body.get("token_type", "Bearer")),
        )
    except (KeyError, TypeError, ValueError):
        raise ProviderError(200, "not a token answer", transient=True) from None


def read_account(response: httpx.Response) -> Account:
    """The account from ``GET /api/v4/account``.

    Raises:
        ProviderError: an error answer or an unreadable account.
    """
    body = _json(response)
    if response.status_code != 200:
        raise _error(response)
    try:
        return Account(int(body["id"]), _text(body["subdomain"]), str(body.get("name", "")))
    except (KeyError, TypeError, ValueError):
        raise ProviderError(200, "not an account answer", transient=True) from None


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value
