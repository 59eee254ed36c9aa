"""amoCRM's token endpoint, account check and account lookup, as requests described in data.

Pure: what to send, never how. ``_provider`` turns a :class:`Call` into an httpx request and
sends it; a test can read a call without any HTTP client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

import attrs

from ._config import Config
from ._hosts import AccountHost
from ._records import ClientCredentials

__all__ = ["LOOKUP_PATH", "Call", "account_call", "code_call", "lookup_call", "refresh_call"]

#: Where the shared API hosts answer "where does this account live now" (protocol §5).
LOOKUP_PATH: Final = "/oauth2/account/current/subdomain"
_ACCEPT_JSON: Final = {"Accept": "application/json"}


@attrs.frozen
class Call:
    """One request to amoCRM: method, URL, headers, a JSON body (or none), and how long the
    whole call may take (``Config.http_timeout``).

    The headers and the body carry secrets (the client secret, a code, a token): they are kept
    out of the repr.
    """

    method: Literal["GET", "POST"]
    url: str
    headers: Mapping[str, str] = attrs.field(repr=False)
    json: Mapping[str, str] | None = attrs.field(repr=False)
    timeout: float


def _token_call(
    config: Config, credentials: ClientCredentials, host: AccountHost, grant: dict[str, str]
) -> Call:
    body = {
        "client_id": credentials.client_id,
        "client_secret": credentials.client_secret,
        "redirect_uri": config.redirect_uri,
        **grant,
    }
    return Call("POST", host.token_url, {**_ACCEPT_JSON}, body, config.http_timeout)


def code_call(config: Config, credentials: ClientCredentials, host: AccountHost, code: str) -> Call:
    """``POST https://{host}/oauth2/access_token`` for the authorization_code grant, with the
    connection's integration's ``credentials``."""
    grant = {"grant_type": "authorization_code", "code": code}
    return _token_call(config, credentials, host, grant)


def refresh_call(
    config: Config, credentials: ClientCredentials, host: AccountHost, refresh_token: str
) -> Call:
    """``POST https://{host}/oauth2/access_token`` for the refresh_token grant, with the
    connection's integration's ``credentials``."""
    grant = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return _token_call(config, credentials, host, grant)


def lookup_call(config: Config, api_host: AccountHost, refresh_token: str) -> Call:
    """``GET https://{api_domain}/oauth2/account/current/subdomain`` with ``X-Refresh-Token``
    only (no ``Authorization``): where the account lives now (protocol notes §5)."""
    headers = {"X-Refresh-Token": refresh_token, **_ACCEPT_JSON}
    return Call("GET", api_host.url(LOOKUP_PATH), headers, None, config.http_timeout)


def account_call(config: Config, host: AccountHost, access_token: str) -> Call:
    """``GET https://{host}/api/v4/account``: the check that new tokens work."""
    headers = {"Authorization": f"Bearer {access_token}", **_ACCEPT_JSON}
    return Call("GET", host.url("/api/v4/account"), headers, None, config.http_timeout)
