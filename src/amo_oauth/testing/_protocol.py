"""amoCRM protocol facts as data: lifetimes, error bodies, content types.

Everything here follows the public amoCRM/Kommo docs and SDKs as collected in the project's
protocol notes. Nothing was checked against a live account. Entries marked [I] are inferred
(league/oauth2-server, whose hints amoCRM returns, answers that way): the fake has to answer
*something* for those requests.
"""

from __future__ import annotations

import json
import secrets
from datetime import timedelta
from typing import Any, Final

import attrs

from ._types import RawJSON

CODE_LIFETIME: Final = timedelta(minutes=20)
ACCESS_LIFETIME: Final = timedelta(hours=24)
# "3 months": the fake uses 90 days, the shortest reading, so tests err on the safe side.
REFRESH_LIFETIME: Final = timedelta(days=90)
#: A long-lived token's lifetime, as the admin picks it in "Keys and scopes" (§8).
LONG_LIVED_MIN: Final = timedelta(days=1)
LONG_LIVED_MAX: Final = timedelta(days=5 * 366)

PROBLEM_TYPE: Final = "https://developers.amocrm.ru/v3/errors/OAuthProblemJson"
PROBLEM_JSON: Final = "application/problem+json"
JSON: Final = "application/json"
HAL_JSON: Final = "application/hal+json"
HTML: Final = "text/html; charset=utf-8"

GRANTS: Final = ("authorization_code", "refresh_token")
SCOPES: Final = ("crm", "notifications")
JWT_VERSION: Final = 2
LEADS_MAX_LIMIT: Final = 250
LEADS_DEFAULT_LIMIT: Final = 50
RETRY_AFTER: Final = 300
HOOK_USER_AGENT: Final = "amoService-oAuth-Code-Sender/1.0"

_BAD_REQUEST_TITLE: Final = "Некорректный запрос"
_BAD_REQUEST_DETAIL: Final = "В запросе отсутствует ряд параметров или параметры невалидны"


@attrs.frozen
class Problem:
    """One token-endpoint error: HTTP status and the body amoCRM sends for it."""

    status: int
    hint: str | None
    title: str = _BAD_REQUEST_TITLE
    detail: str = _BAD_REQUEST_DETAIL

    def body(self) -> dict[str, Any]:
        """The JSON body, keys in amoCRM's order (hint first, when there is one)."""
        head: dict[str, Any] = {} if self.hint is None else {"hint": self.hint}
        return head | {
            "title": self.title,
            "type": PROBLEM_TYPE,
            "status": self.status,
            "detail": self.detail,
        }


def _check(name: str, status: int = 400) -> Problem:
    # league/oauth2-server's invalidRequest(): the hint names the offending parameter.
    return Problem(status, f"Check the `{name}` parameter")


# Outcome slug -> answer. The slugs are also the `outcome` half of FakeAmoCRM.token_calls keys.
TOKEN_PROBLEMS: Final[dict[str, Problem]] = {
    "invalid_account": Problem(400, "Invalid account"),
    "bad_grant_type": _check("grant_type"),  # [I]
    "missing_client_id": _check("client_id"),
    "bad_client_id": _check("client_id"),
    "missing_client_secret": _check("client_secret"),
    "bad_secret": Problem(
        401, None, title="Некорректный клиент", detail="Авторизация клиента не прошла"
    ),
    "missing_redirect_uri": _check("redirect_uri"),  # [I] the fake insists on redirect_uri
    "bad_redirect_uri": Problem(400, "Redirect URI is not associated with client"),
    "missing_code": _check("code"),  # [I]
    "code_garbage": Problem(400, "Cannot decrypt the authorization code"),
    "code_expired": Problem(400, "Authorization code has expired"),
    "code_revoked": Problem(400, "Authorization code has been revoked"),
    "missing_refresh_token": _check("refresh_token"),  # [I]
    "refresh_garbage": Problem(401, "Cannot decrypt the refresh token"),  # [I]
    "token_revoked": Problem(401, "Token has been revoked"),
    # [I] league/oauth2-server's hints for a secret redeemed by another client (§3: codes and
    # tokens are issued to one client_id; the notes list no amoCRM fixture for this case).
    "code_wrong_client": Problem(400, "Authorization code was not issued to this client"),
    "refresh_wrong_client": Problem(401, "Token is not linked to client"),
}

# The REST API's own problem bodies (type https://httpstatus.es/<status>).
API_UNAUTHORIZED: Final[dict[str, Any]] = {
    "title": "Unauthorized",
    "type": "https://httpstatus.es/401",
    "status": 401,
    "detail": "Неверный логин или пароль",
}
API_TOO_MANY: Final[dict[str, Any]] = {
    "title": "Too Many Requests",
    "type": "https://httpstatus.es/429",
    "status": 429,
    "detail": "Too many requests per second",  # [I] the facts leave the detail text open
    "retry_after": RETRY_AFTER,
}
API_BAD_REQUEST: Final[dict[str, Any]] = {  # [I] e.g. limit > 250
    "title": "Bad Request",
    "type": "https://httpstatus.es/400",
    "status": 400,
    "detail": "Request validation failed",
}
API_NOT_FOUND: Final[dict[str, Any]] = {
    "title": "Not Found",
    "type": "https://httpstatus.es/404",
    "status": 404,
    "detail": "Not Found",
}
API_METHOD_NOT_ALLOWED: Final[dict[str, Any]] = {
    "title": "Method Not Allowed",
    "type": "https://httpstatus.es/405",
    "status": 405,
    "detail": "Method Not Allowed",
}


API_FORBIDDEN: Final[dict[str, Any]] = {  # [I] §9 says "403 on every request", not the body
    "title": "Forbidden",
    "type": "https://httpstatus.es/403",
    "status": 403,
    "detail": "Account is blocked",
}
API_PAYMENT_REQUIRED: Final[dict[str, Any]] = {  # [I] §9 gives the status only
    "title": "Payment Required",
    "type": "https://httpstatus.es/402",
    "status": 402,
    "detail": "Account is not paid",
}

LOOKUP_PATH: Final = "/oauth2/account/current/subdomain"
"""§5: `GET https://{api_domain}/oauth2/account/current/subdomain` with `X-Refresh-Token`."""


def dump_json(payload: object) -> bytes:
    """Serialize like PHP's json_encode: compact, non-ASCII escaped.

    `RawJSON` values (at any depth) are inserted verbatim; the body is then UTF-8.
    """
    raw: dict[str, str] = {}

    def swap(value: object) -> object:
        if isinstance(value, RawJSON):
            marker = f"@@raw-{secrets.token_hex(8)}@@"
            raw[f'"{marker}"'] = value.text
            return marker
        if isinstance(value, dict):
            return {key: swap(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [swap(item) for item in value]
        return value

    text = json.dumps(swap(payload), separators=(",", ":"))
    for marker, verbatim in raw.items():
        text = text.replace(marker, verbatim)
    return text.encode("utf-8")
