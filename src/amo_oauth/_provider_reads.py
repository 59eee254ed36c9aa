"""amoCRM's answers read: the token pair, the account, the account's new host, and what an
error answer means.

Pure: no HTTP client here. An answer is anything with ``status_code``, ``headers`` and
``content`` (:class:`Reply`; an ``httpx.Response`` read in full is one). What an error answer
means comes from one table (``_answers.ROWS``); anything unexpected (5xx, HTML, a timeout) is
*transient*, which for a code means "outcome unknown": the code is never sent again.

Every field of a 200 is checked against documented bounds (the ``MIN_``/``MAX_`` constants). An
``expires_in`` out of bounds is clamped into them and reported with one WARNING on the
``amo_oauth`` logger (field name and bounds only): it is never a reason to throw a pair away.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

from ._answers import (
    UNREADABLE_ACCOUNT,
    UNREADABLE_TOKENS,
    UNUSABLE_ACCOUNT,
    UNUSABLE_TOKENS,
    Answer,
    Grant,
    Meaning,
    classify,
    clean_hint,
)
from ._errors import ProviderError, TryAgainLater
from ._hosts import AccountHost
from ._records import Account, TokenSet

__all__ = [
    "DEFAULT_EXPIRES_IN",
    "MAX_ACCOUNT_ID",
    "MAX_ACCOUNT_NAME",
    "MAX_EXPIRES_IN",
    "MAX_RETRY_AFTER",
    "MAX_TOKEN_LENGTH",
    "MIN_EXPIRES_IN",
    "REFRESH_TOKEN_LIFETIME",
    "Reply",
    "answered",
    "api_domain_of",
    "check_account_host",
    "error_of",
    "lifetime_hint",
    "long_lived_expiry",
    "maybe_spent",
    "meaning_of",
    "read_account",
    "read_lookup",
    "read_tokens",
    "reason_of",
    "retry_after_in",
    "surely_unsent",
]

#: amoCRM revokes a refresh token three months after it was issued.
REFRESH_TOKEN_LIFETIME: Final = timedelta(days=90)

#: Bounds of ``expires_in`` (seconds): amoCRM sends 86400 (protocol §3); long-lived tokens live
#: at most 5 years (§8). A value outside 1 s .. 10 years (3650 days) is clamped into them.
MIN_EXPIRES_IN: Final = 1
MAX_EXPIRES_IN: Final = 3650 * 86400
#: The access token's lifetime (seconds) when an answer gives no ``expires_in`` (RFC 6749 §5.1
#: makes it optional) and its JWT ``exp`` gives no usable hint: amoCRM's 24 hours (§3).
DEFAULT_EXPIRES_IN: Final = 86400
#: The longest token accepted (characters). Access tokens are JWTs of 1-2 KB and refresh tokens
#: under 1 KB (§3); 8192 is the usual limit of one HTTP header line (nginx's default buffer), and
#: both tokens travel in headers (``Authorization``, ``X-Refresh-Token``, §5).
MAX_TOKEN_LENGTH: Final = 8192
#: The longest wait (seconds) taken from an answer's ``retry_after`` or ``Retry-After``: protocol
#: notes §9 show 300 s; a larger number (a damaged body, ``1e300``) is cut to a day here, where
#: it is read, so that no caller turns it into a duration that overflows or holds for good.
MAX_RETRY_AFTER: Final = 86400.0
#: Account ids are positive 63-bit integers (a signed BIGINT in any store).
MAX_ACCOUNT_ID: Final = 2**63 - 1
#: Account names are cut at this many characters (display only).
MAX_ACCOUNT_NAME: Final = 255

_PROBLEM_TYPES: Final = ("application/problem+json", "application/json")
# Visible ASCII, no space: what an HTTP header value and a bearer token can carry.
_TOKEN_TEXT: Final = re.compile(r"[\x21-\x7e]+")
# One DNS label (RFC 1123), lower case: how amoCRM names an account's host (§5).
_SUBDOMAIN: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC_TEXT: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")

logger = logging.getLogger("amo_oauth")


class Reply(Protocol):
    """An answer as reading needs it; an ``httpx.Response`` read in full is one."""

    @property
    def status_code(self) -> int:
        """The HTTP status."""
        ...

    @property
    def headers(self) -> Mapping[str, str]:
        """The headers, looked up by lower-case name (httpx's are case-insensitive)."""
        ...

    @property
    def content(self) -> bytes:
        """The whole body."""
        ...


def _jwt_claims(access_token: str) -> dict[str, Any]:
    """The claims of an access token (a JWT), read without verifying its signature (clients
    cannot): hints only, never trusted for security (protocol notes §3). Empty when
    unreadable."""
    parts = access_token.split(".")
    if len(parts) != 3 or len(parts[1]) > 16_384:
        return {}
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return {}
    return claims if isinstance(claims, dict) else {}


def api_domain_of(access_token: str) -> str | None:
    """The ``api_domain`` claim of an amoCRM access token (a JWT), read without verifying its
    signature (clients cannot): a hint for the account lookup only (protocol notes §3, §5).
    None for tokens issued before the claim existed (about 2024-08-21) or anything unreadable."""
    domain = _jwt_claims(access_token).get("api_domain")
    return domain if isinstance(domain, str) and domain else None


def long_lived_expiry(token: str) -> datetime | None:
    """When an admin's long-lived token expires: its JWT ``exp`` claim (seconds since the
    epoch, UTC), read without verifying the signature (clients cannot; protocol notes §8: the
    claim only schedules, amoCRM's 401 decides). None when ``token`` cannot go in a header, is
    not a JWT, or has no finite numeric ``exp`` that a ``datetime`` holds."""
    if len(token) > MAX_TOKEN_LENGTH or not _TOKEN_TEXT.fullmatch(token):
        return None
    exp = _jwt_claims(token).get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return None
    try:
        return datetime.fromtimestamp(exp, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def lifetime_hint(access_token: str, now: datetime) -> int:
    """Seconds an access token lives from ``now`` (aware, UTC) when its answer has no
    ``expires_in``: its JWT ``exp`` claim as a hint (protocol notes §3, §8), when that is a
    number of seconds since the epoch that lies ``MIN_EXPIRES_IN .. MAX_EXPIRES_IN`` ahead;
    else ``DEFAULT_EXPIRES_IN`` (a day, amoCRM's access-token lifetime). Never used over an
    explicit ``expires_in``."""
    exp = _jwt_claims(access_token).get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return DEFAULT_EXPIRES_IN
    seconds = math.floor(exp - now.timestamp())
    return seconds if MIN_EXPIRES_IN <= seconds <= MAX_EXPIRES_IN else DEFAULT_EXPIRES_IN


def read_lookup(response: Reply, extra_domains: tuple[str, ...]) -> AccountHost | None:
    """The account's current host from the lookup's answer, or None when it names a host the
    allowlist refuses (no secret goes there).

    ``domain`` is taken as the full host when it starts with the subdomain, else as the base
    domain under which ``subdomain`` lives (the notes call its form inferred: accept both).

    Raises:
        ProviderError: any status but 200, or an unreadable answer.
    """
    body = _json(response)
    if response.status_code != 200:
        raise error_of(response, "subdomain_lookup")
    subdomain = body.get("subdomain") if isinstance(body, dict) else None
    domain = body.get("domain") if isinstance(body, dict) else None
    if not isinstance(subdomain, str) or not isinstance(domain, str):
        raise ProviderError(200, "not a subdomain answer", transient=True)
    name = domain if domain.startswith(f"{subdomain}.") else f"{subdomain}.{domain}"
    return AccountHost.accept(name.lower(), extra_domains)


def _json(response: Reply) -> Any:
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in (*_PROBLEM_TYPES, "application/hal+json"):
        return None
    try:
        return json.loads(response.content)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, too many digits, deep nesting
        return None


def _hint_of(body: object, redact: tuple[str, ...] = ()) -> str | None:
    """amoCRM's ``hint``, else the RFC 6749 ``error`` code, else the ``title``; cleaned, with
    every string of ``redact`` (what the request sent) cut out."""
    if not isinstance(body, dict):
        return None
    for key in ("hint", "error", "title"):
        hint = clean_hint(body.get(key), redact=redact)
        if hint is not None:
            return hint
    return None


#: Fields of a request body (``_provider_calls``) and headers that carry a secret.
_SECRET_FIELDS: Final = ("client_secret", "code", "refresh_token")
_SECRET_HEADERS: Final = ("x-refresh-token",)


def _sent_secrets(response: Reply) -> tuple[str, ...]:
    """The secrets the request behind ``response`` sent (the client secret, a code, a token
    in its body or headers), so that an answer echoing them never quotes them. Empty for a
    reply that does not carry its request (an ``httpx.Response`` does, as ``request``)."""
    try:  # httpx raises RuntimeError for a response built without a request
        request = getattr(response, "request", None)
        headers = getattr(request, "headers", None)
        content = getattr(request, "content", None)
    except RuntimeError:
        return ()
    found: list[object] = []
    if isinstance(headers, Mapping):
        found += [headers.get(name) for name in _SECRET_HEADERS]
        bearer = headers.get("authorization")
        found.append(bearer.removeprefix("Bearer ") if isinstance(bearer, str) else None)
    body = _json_object(content)
    found += [body.get(key) for key in _SECRET_FIELDS]
    return tuple(value for value in found if isinstance(value, str) and value)


def _json_object(content: object) -> dict[str, Any]:
    """``content`` (bytes) read as a JSON object; empty when it is none."""
    if not isinstance(content, bytes) or not content:
        return {}
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        return {}
    return body if isinstance(body, dict) else {}


def _retry_after_of(body: object, headers: Mapping[str, str]) -> float | None:
    """Seconds amoCRM asks a client to wait: its 429 body's ``retry_after`` (protocol notes
    §9; a number, or a numeric string such as ``"300"``), else an HTTP ``Retry-After`` of
    whole seconds (RFC 9110 §10.2.3); cut to ``MAX_RETRY_AFTER``. None when neither is a
    number >= 0."""
    given: object = body.get("retry_after") if isinstance(body, dict) else None
    if given is None:
        text = headers.get("retry-after", "").strip()
        given = text if text.isascii() and text.isdigit() else None
    return _wait_seconds(given)


def _wait_seconds(given: object) -> float | None:
    """``given`` (a number or a numeric string) as seconds in ``0 .. MAX_RETRY_AFTER``; None
    for anything else, a negative number or NaN. Cut before it becomes a float, so that no
    integer of hundreds of digits overflows."""
    if isinstance(given, str):
        text = given.strip()
        # Plain digits of any length (a header's) are a number; other forms are matched only
        # when short, since the pattern backtracks on long near-misses.
        numeric = (text.isascii() and text.isdigit()) or (
            len(text) <= 64 and _NUMERIC_TEXT.fullmatch(text) is not None
        )
        given = float(text) if numeric else None
    if isinstance(given, bool) or not isinstance(given, int | float):
        return None
    seconds = float(max(min(given, MAX_RETRY_AFTER), -1.0))
    return None if math.isnan(seconds) or seconds < 0 else seconds


def retry_after_in(response: Reply) -> float | None:
    """Seconds an answer asks a client to wait (a 429's ``retry_after`` or ``Retry-After``);
    None when it says nothing readable. ``response`` must be read in full."""
    return _retry_after_of(_json(response), response.headers)


def error_of(response: Reply, grant: Grant | None) -> ProviderError:
    """The ``ProviderError`` a failed answer of the ``grant`` call means (its hint cleaned of
    what the request sent): what ``read_tokens`` raises for it."""
    status = response.status_code
    body = _json(response)
    hint = _hint_of(body, _sent_secrets(response))
    answer = classify(grant, status, hint)
    shown = hint if hint is not None else f"HTTP {status}"
    return ProviderError(
        status,
        shown,
        transient=answer.meaning.transient,
        retry_after=_retry_after_of(body, response.headers),
    )


def meaning_of(error: ProviderError, grant: Grant | None = None) -> Answer:
    """The classification of a ``ProviderError`` raised by this module or by the flows.

    Looks ``(grant, error.status, error.hint)`` up in ``_answers.ROWS`` (a hint of the form
    ``HTTP <status>`` means there was no problem body); an error marked ``transient`` is
    :attr:`Meaning.TRANSIENT` (reason ``unavailable``) unless its row is itself transient
    (e.g. ``account_blocked``). ``grant`` ``None``: a token-endpoint answer of unknown grant.
    """
    hint = None if error.hint == f"HTTP {error.status}" else error.hint
    answer = classify(grant, error.status, hint)
    if error.transient and not answer.meaning.transient:
        return Answer(Meaning.TRANSIENT, "unavailable")
    return answer


def reason_of(error: ProviderError, grant: Grant | None = None) -> str:
    """The stable slug for an amoCRM error: ``code_revoked``, ``token_revoked``, ...

    ``meaning_of(error, grant).reason``; see ``_answers.ROWS`` for every slug.
    """
    return meaning_of(error, grant).reason


#: Transport failures that happen before a request's first byte leaves: nothing was sent. The
#: hints are the httpx exception class names ``_provider.error_from_exception`` records.
_UNSENT: Final = frozenset({"ConnectError", "ConnectTimeout", "UnsupportedProtocol"})


def surely_unsent(error: ProviderError) -> bool:
    """True when the failed call's request surely never reached amoCRM (the connection was
    refused or never made, or the API's pace refused to send it: a ``TryAgainLater`` from a
    send is always the pacer's), so a refresh token in it was not spent."""
    if isinstance(error, TryAgainLater):
        return True
    return error.status is None and error.hint in _UNSENT


def answered(error: ProviderError) -> bool:
    """True when amoCRM answered the failed call (any HTTP status); False when no answer came
    (a timeout, a refused connection)."""
    return error.status is not None


def maybe_spent(error: ProviderError) -> bool:
    """True when a failed refresh may have spent its refresh token: no answer came (a read
    timeout, a lost answer), so amoCRM may have rotated the pair. Any answer (a 5xx, a 429, a
    blocked account's 403) and a request that never left count as unspent."""
    return error.status is None and not surely_unsent(error)


def _unusable(hint: str, field: str) -> ProviderError:
    return ProviderError(200, f"{hint}: {field}")


def read_tokens(
    response: Reply, now: datetime, *, grant: Grant | None = None, sent: str | None = None
) -> TokenSet:
    """The token pair from a 200 answer of the token endpoint (protocol §3, RFC 6749 §5.1).

    Args:
        response: the answer, read in full.
        now: the current time (UTC, timezone-aware; the store's clock):
            ``expires_at = now + expires_in``.
        grant: ``authorization_code`` or ``refresh_token`` when known, to classify errors.
        sent: the refresh token the request sent, kept when the answer has none (RFC 6749
            §6: the server did not rotate it). None for a code exchange.

    Fields: ``access_token`` (required) and ``refresh_token`` must be visible ASCII of 1 to
    ``MAX_TOKEN_LENGTH`` characters; a missing (or null) ``refresh_token`` keeps ``sent``, or
    gives a token that cannot be renewed (``TokenSet.refresh_token`` None); ``token_type``
    "Bearer" (any case) or absent; ``expires_in`` a number of seconds (a numeric string is
    accepted), clamped into ``MIN_EXPIRES_IN .. MAX_EXPIRES_IN`` with one WARNING on the
    ``amo_oauth`` logger; a missing (or null) one is ``lifetime_hint`` (the JWT's ``exp``,
    else ``DEFAULT_EXPIRES_IN``). A valid token amoCRM gave is never thrown away for a field
    the spec makes optional.

    Raises:
        ProviderError: the only exception raised, for any body. An error answer (classified by
            ``_answers.ROWS``); a 200 that is not a token answer (not a JSON object, a field
            missing: transient, ``unavailable``); a 200 whose fields break the bounds above
            (hint ``unusable token answer: <field>``, NOT transient, reason
            ``unusable_answer``): the outcome is known, the code or refresh token was spent
            but the pair cannot be used, and sending the same request again cannot help.
    """
    if response.status_code != 200:
        raise error_of(response, grant)
    body = _json(response)
    if not isinstance(body, dict) or "access_token" not in body:
        raise ProviderError(200, UNREADABLE_TOKENS, transient=True)
    access_token = _token(body["access_token"], "access_token")
    answered = body.get("refresh_token")
    refresh_token = sent if answered is None else _token(answered, "refresh_token")
    token_type = body.get("token_type")
    if token_type is not None and (
        not isinstance(token_type, str) or token_type.lower() != "bearer"
    ):
        raise _unusable(UNUSABLE_TOKENS, "token_type")
    given = body.get("expires_in")
    seconds = lifetime_hint(access_token, now) if given is None else _expires_in(given)
    return TokenSet(
        access_token=access_token,
        refresh_token=refresh_token,
        expires_at=now + timedelta(seconds=seconds),
        refresh_expires_at=now + REFRESH_TOKEN_LIFETIME,
        token_type="Bearer",
        issued_at=now,
    )


def _token(value: object, field: str) -> str:
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_TOKEN_LENGTH
        or not _TOKEN_TEXT.fullmatch(value)
    ):
        raise _unusable(UNUSABLE_TOKENS, field)
    return value


def _expires_in(value: object) -> int:
    """``expires_in`` as whole seconds within bounds; only a non-number is unusable."""
    number: int | float
    notes = []
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _unusable(UNUSABLE_TOKENS, "expires_in")
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 64 or not _NUMERIC_TEXT.fullmatch(text):
            raise _unusable(UNUSABLE_TOKENS, "expires_in")
        number = int(text) if text.lstrip("+-").isdigit() else float(text)
        notes.append("was a numeric string")
    else:
        number = value
    if isinstance(number, float) and math.isnan(number):
        seconds, notes = MIN_EXPIRES_IN, [*notes, "was not a number (NaN)"]
    elif number < MIN_EXPIRES_IN:
        seconds, notes = MIN_EXPIRES_IN, [*notes, "was below the bounds"]
    elif number > MAX_EXPIRES_IN:
        seconds, notes = MAX_EXPIRES_IN, [*notes, "was above the bounds"]
    else:
        seconds = math.floor(number)
    if notes:
        logger.warning(
            "amoCRM's token answer: expires_in %s; clamped into %d..%d seconds",
            " and ".join(notes),
            MIN_EXPIRES_IN,
            MAX_EXPIRES_IN,
            extra={"amo_field": "expires_in"},
        )
    return seconds


def check_account_host(account: Account, host: AccountHost) -> Account:
    """``account`` itself when its subdomain is the first label of ``host``, the ``referer`` the
    code came with: the answer has no domain field, and a code from one account must not
    connect another (defence in depth, RFC 9700 §4.7.1).

    Raises:
        ProviderError: a mismatch, as an unusable account answer (not transient).
    """
    if host.name.split(".", 1)[0] != account.subdomain:
        raise _unusable(UNUSABLE_ACCOUNT, "subdomain, not the one of the code's host")
    return account


def read_account(response: Reply) -> Account:
    """The account from ``GET /api/v4/account`` (protocol §5).

    Fields: ``id`` an int in 1 .. ``MAX_ACCOUNT_ID`` (not a bool, float or string);
    ``subdomain`` one lower-case DNS label (letters, digits, inner hyphens, 1-63 characters);
    ``name`` a string (cut at ``MAX_ACCOUNT_NAME`` characters) or absent/null ("").

    Raises:
        ProviderError: the only exception raised, for any body. An error answer (classified by
            ``_answers.ROWS`` as the ``account`` call); a 200 that is not an account answer
            (transient, ``unavailable``); a 200 whose fields break the bounds above (hint
            ``unusable account answer: <field>``, not transient, reason ``unusable_account``).
    """
    if response.status_code != 200:
        raise error_of(response, "account")
    body = _json(response)
    if not isinstance(body, dict) or not {"id", "subdomain"} <= set(body):
        raise ProviderError(200, UNREADABLE_ACCOUNT, transient=True)
    account_id = body["id"]
    if type(account_id) is not int or not 0 < account_id <= MAX_ACCOUNT_ID:
        raise _unusable(UNUSABLE_ACCOUNT, "id")
    subdomain = body["subdomain"]
    if not isinstance(subdomain, str) or not _SUBDOMAIN.fullmatch(subdomain):
        raise _unusable(UNUSABLE_ACCOUNT, "subdomain")
    name = body.get("name")
    if name is None:
        name = ""
    elif not isinstance(name, str):
        raise _unusable(UNUSABLE_ACCOUNT, "name")
    return Account(account_id, subdomain, name[:MAX_ACCOUNT_NAME])
