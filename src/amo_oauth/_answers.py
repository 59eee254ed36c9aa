"""What an answer from amoCRM means, as one table of data.

Pure: no I/O and no HTTP client here. ``_provider_reads`` reads an answer down to three facts,
``(grant or call, HTTP status or None, amoCRM's hint)``, and :func:`classify` maps them to an
:class:`Answer`: a :class:`Meaning` (what the flows should do) and a stable ``reason`` slug (what
the library reports). The rows come from the project's protocol notes (amocrm-protocol.md; the
``source`` column names the section) and are rendered for the docs by :func:`markdown_rows`.

The hint is the ``hint`` of amoCRM's problem+json body, else its RFC 6749 ``error`` code (e.g.
``invalid_grant``), else its ``title`` (the 401 "bad client" body has only a title); ``None``
means there was no readable problem body at all (HTML, empty, not JSON).
"""

from __future__ import annotations

import enum
import re
import string
from collections.abc import Iterable, Mapping
from typing import Final, Literal, get_args

import attrs

__all__ = [
    "ANY_HINT",
    "EXCHANGE_FAILURES",
    "GRANTS",
    "MAX_HINT",
    "NO_ANSWER",
    "REFRESH_REFUSALS",
    "ROWS",
    "SPENT_TOKEN_REASONS",
    "TOKEN_GRANTS",
    "UNREADABLE_ACCOUNT",
    "UNREADABLE_TOKENS",
    "UNUSABLE_ACCOUNT",
    "UNUSABLE_TOKENS",
    "Answer",
    "AnswerRow",
    "Grant",
    "Meaning",
    "Statuses",
    "classify",
    "clean_hint",
    "describe",
    "markdown_rows",
]

#: Which call an answer belongs to: the token endpoint's two grants (protocol §3),
#: ``GET /api/v4/account`` (§5), any other REST call (§9), the moved-account lookup (§5).
Grant = Literal["authorization_code", "refresh_token", "account", "api", "subdomain_lookup"]
GRANTS: Final[tuple[Grant, ...]] = get_args(Grant)
TOKEN_GRANTS: Final[frozenset[Grant]] = frozenset({"authorization_code", "refresh_token"})

#: The longest hint kept (characters); longer ones are cut, with an ellipsis.
MAX_HINT: Final = 200

# Hints this library itself puts on a ``ProviderError`` for a 200 it cannot use. An unreadable
# answer (not JSON, not an object, a field missing) is transient; an unusable one (fields present
# but outside the documented bounds) is a known outcome. A hint matches a row when it equals the
# row's hint or starts with it followed by ":" (the library appends the offending field's name).
UNREADABLE_TOKENS: Final = "not a token answer"
UNREADABLE_ACCOUNT: Final = "not an account answer"
UNUSABLE_TOKENS: Final = "unusable token answer"
UNUSABLE_ACCOUNT: Final = "unusable account answer"


class Meaning(enum.Enum):
    """What an answer means for the connection, whatever the call was."""

    TRANSIENT = "transient"
    """No definite answer (no answer, 5xx, 429, HTML, an unreadable 200): retry later; a code's
    fate is unknown, so it is never sent again."""
    CODE_SPENT = "code_spent"
    """The authorization code is revoked (used), expired or undecryptable: connect again."""
    REFRESH_REFUSED = "refresh_refused"
    """The refresh token is revoked or invalid for good: connect again."""
    CLIENT_MISCONFIGURED = "client_misconfigured"
    """Wrong client id, client secret or redirect URI: fix the configuration."""
    ACCOUNT_MOVED = "account_moved"
    """The account host is not (or no longer) the account's: look the account up again."""
    ACCOUNT_BLOCKED = "account_blocked"
    """403: the account or the client's IP is blocked (protocol §9); may be lifted, unlike a
    revoked token, so retrying much later may succeed."""
    PAYMENT_REQUIRED = "payment_required"
    """402: the account is not paid for (protocol §9)."""
    TOKEN_REJECTED = "token_rejected"
    """401 on an API call: the access token is invalid, expired or revoked (protocol §8, §9)."""
    UNUSABLE = "unusable"
    """A 200 whose values break the protocol's bounds (a token that cannot go in a header): the
    call's outcome is known (a code or refresh token was spent) but the answer is useless."""
    REJECTED = "rejected"
    """Any other definite refusal."""

    @property
    def transient(self) -> bool:
        """True when the same call may succeed later without anyone acting: ``TRANSIENT`` and
        ``ACCOUNT_BLOCKED`` (protocol §9: treat a 403 on the token endpoint as transient)."""
        return self in (Meaning.TRANSIENT, Meaning.ACCOUNT_BLOCKED)


@attrs.frozen
class Answer:
    """The classification of one answer: its meaning and the stable slug reported for it."""

    meaning: Meaning
    reason: str


@attrs.frozen
class Statuses:
    """A set of HTTP statuses a row applies to; ``None`` in ``codes`` is "no answer at all"."""

    label: str
    codes: frozenset[int | None] = frozenset()
    every: bool = False

    def __contains__(self, status: object) -> bool:
        return self.every or status in self.codes


def _statuses(*codes: int) -> Statuses:
    return Statuses("/".join(map(str, codes)), frozenset(codes))


NO_ANSWER: Final = Statuses("no answer", frozenset({None}))
_SERVER: Final = Statuses("5xx", frozenset(range(500, 600)))
_ANY_STATUS: Final = Statuses("any", every=True)


class _AnyHint(enum.Enum):
    ANY = "any"


#: A row's hint that matches every hint, and no hint.
ANY_HINT: Final = _AnyHint.ANY


@attrs.frozen
class AnswerRow:
    """One line of the table: where it applies, what it means, and where the fact comes from.

    ``hint`` is an exact hint (compared case-insensitively, spaces and a final period ignored),
    ``None`` for "no readable problem body", or :data:`ANY_HINT`.
    """

    grants: frozenset[Grant]
    statuses: Statuses
    hint: str | _AnyHint | None
    meaning: Meaning
    reason: str
    source: str

    def matches(self, grant: Grant | None, status: int | None, hint: str | None) -> bool:
        """Whether this row decides ``(grant, status, hint)``; a ``None`` grant (a token-endpoint
        answer of unknown grant) matches only rows that hold for both token grants."""
        if grant is None:
            if not self.grants >= TOKEN_GRANTS:
                return False
        elif grant not in self.grants:
            return False
        if status not in self.statuses:
            return False
        if self.hint is ANY_HINT:
            return True
        if self.hint is None or hint is None:
            return self.hint is None and hint is None
        wanted, given = _normal(self.hint), _normal(hint)
        return given == wanted or given.startswith(wanted + ":")


def _normal(hint: str) -> str:
    return hint.strip().rstrip(".").casefold()


_ALL: Final = frozenset(GRANTS)
_TOKEN: Final = TOKEN_GRANTS
_CODE: Final[frozenset[Grant]] = frozenset({"authorization_code"})
_REFRESH: Final[frozenset[Grant]] = frozenset({"refresh_token"})
_API_CALLS: Final[frozenset[Grant]] = frozenset({"account", "api"})
_ACCOUNT: Final[frozenset[Grant]] = frozenset({"account"})
_LOOKUP: Final[frozenset[Grant]] = frozenset({"subdomain_lookup"})
_HINTED: Final = _statuses(400, 401)  # §4: "one fixture shows 401: match on `hint`"

_T, _M = Meaning.TRANSIENT, Meaning
# Short, so each row of the table below stays on one line.
_row = AnswerRow

#: The table, first matching row wins. Sources: sections of amocrm-protocol.md; RFC 6749 §5.2
#: for ``invalid_grant``; "library" for hints this library writes itself.
ROWS: Final[tuple[AnswerRow, ...]] = (
    _row(_ALL, NO_ANSWER, ANY_HINT, _T, "unavailable", "§4 (timeouts, network)"),
    _row(_ALL, _SERVER, ANY_HINT, _T, "unavailable", "§4"),
    _row(_ALL, _statuses(429), ANY_HINT, _T, "unavailable", "§9"),
    _row(_ALL, _statuses(403), ANY_HINT, _M.ACCOUNT_BLOCKED, "account_blocked", "§9"),
    _row(_ALL, _statuses(402), ANY_HINT, _M.PAYMENT_REQUIRED, "payment_required", "§9"),
    _row(_TOKEN, _statuses(200), UNUSABLE_TOKENS, _M.UNUSABLE, "unusable_answer", "library, §3"),
    _row(_ACCOUNT, _statuses(200), UNUSABLE_ACCOUNT, _M.UNUSABLE, "unusable_account", "library"),
    _row(_ALL, _statuses(200), ANY_HINT, _T, "unavailable", "library (an unreadable 200)"),
    _row(_TOKEN, _statuses(404), ANY_HINT, _M.ACCOUNT_MOVED, "account_not_found", "§5 (SDK)"),
    _row(
        _TOKEN,
        _HINTED,
        "Authorization code has been revoked",
        _M.CODE_SPENT,
        "code_revoked",
        "§4",
    ),
    _row(_TOKEN, _HINTED, "Authorization code has expired", _M.CODE_SPENT, "code_expired", "§4"),
    _row(
        _TOKEN,
        _HINTED,
        "Cannot decrypt the authorization code",
        _M.CODE_SPENT,
        "code_invalid",
        "§4",
    ),
    _row(
        _TOKEN,
        _HINTED,
        "Check the `client_id` parameter",
        _M.CLIENT_MISCONFIGURED,
        "bad_client_id",
        "§4",
    ),
    _row(
        _TOKEN,
        _HINTED,
        "Check the `client_secret` parameter",
        _M.CLIENT_MISCONFIGURED,
        "bad_client_secret",
        "§4",
    ),
    _row(
        _TOKEN,
        _HINTED,
        "Redirect URI is not associated with client",
        _M.CLIENT_MISCONFIGURED,
        "bad_redirect_uri",
        "§4",
    ),
    _row(_TOKEN, _HINTED, "Invalid account", _M.ACCOUNT_MOVED, "invalid_account", "§4"),
    _row(_TOKEN, _HINTED, "Token has been revoked", _M.REFRESH_REFUSED, "token_revoked", "§4"),
    # A code or refresh token issued to another integration (the OAuth server's wording, [I]):
    # nothing to retry with this client; the code is useless to us, the token refused for good.
    _row(
        _TOKEN,
        _HINTED,
        "Authorization code was not issued to this client",
        _M.CODE_SPENT,
        "code_wrong_client",
        "[I] (the fake's code_wrong_client)",
    ),
    _row(
        _TOKEN,
        _HINTED,
        "Token is not linked to client",
        _M.REFRESH_REFUSED,
        "token_wrong_client",
        "[I] (the fake's refresh_wrong_client)",
    ),
    _row(
        _TOKEN,
        _HINTED,
        "Cannot decrypt the refresh token",
        _M.REFRESH_REFUSED,
        "token_invalid",
        "§4 [I] (the fake's refresh_garbage)",
    ),
    _row(_CODE, _HINTED, "invalid_grant", _M.CODE_SPENT, "code_invalid", "RFC 6749 §5.2 [I]"),
    _row(_REFRESH, _HINTED, "invalid_grant", _M.REFRESH_REFUSED, "token_invalid", "RFC 6749 §5.2"),
    _row(_TOKEN, _HINTED, None, _T, "unavailable", "§4 (HTML: ambiguous)"),
    _row(_TOKEN, _statuses(401), ANY_HINT, _M.CLIENT_MISCONFIGURED, "bad_client", "§4"),
    _row(_API_CALLS, _statuses(401), ANY_HINT, _M.TOKEN_REJECTED, "token_rejected", "§8, §9"),
    _row(_ACCOUNT, _statuses(404), ANY_HINT, _M.ACCOUNT_MOVED, "account_not_found", "§5"),
    _row(_LOOKUP, _statuses(401), ANY_HINT, _M.REFRESH_REFUSED, "token_invalid", "§5"),
    _row(_LOOKUP, _ANY_STATUS, ANY_HINT, _M.REJECTED, "lookup_failed", "§5 (any status but 200)"),
    _row(_ALL, _ANY_STATUS, None, _T, "unavailable", "§4 (HTML, empty bodies)"),
    _row(_ALL, _ANY_STATUS, ANY_HINT, _M.REJECTED, "rejected", "§4"),
)


def classify(grant: Grant | None, status: int | None, hint: str | None) -> Answer:
    """What amoCRM's answer to ``grant`` means: the first row of :data:`ROWS` that matches.

    Args:
        grant: the call answered (see :data:`Grant`); ``None`` for a token-endpoint answer whose
            grant is unknown (only rows holding for both grants apply).
        status: the HTTP status, or ``None`` when no answer arrived (timeout, network).
        hint: amoCRM's hint (else ``error``, else ``title``); ``None`` without a readable
            problem body. Matched case-insensitively, ignoring surrounding spaces and a final ".".

    Never raises: the last rows match everything.
    """
    for row in ROWS:
        if row.matches(grant, status, hint):
            return Answer(row.meaning, row.reason)
    raise AssertionError("the last row of ROWS matches every answer")  # pragma: no cover


# Runs of token-like characters this long are treated as secrets (codes, JWTs and refresh
# tokens are hundreds of characters; no amoCRM hint has a word this long).
_SECRET_LIKE: Final = re.compile(r"[A-Za-z0-9._~+/=-]{32,}")


_REDACTED: Final = "[redacted]"
# The shortest piece of a known secret cut off at an edge that still counts as a leak
# (characters): shorter, an ordinary word would match a secret's first letters too often.
_EDGE: Final = 8
# The characters of _SECRET_LIKE: a run of them at a cut may be the first part of a secret.
_TOKEN_CHARS: Final = string.ascii_letters + string.digits + "._~+/=-"


def clean_hint(text: object, *, limit: int = MAX_HINT, redact: Iterable[str] = ()) -> str | None:
    """``text`` made safe for a message, a log line or an exception: ``None`` unless a string;
    control characters become spaces, every string of ``redact`` and every run of 32 or more
    token-like characters becomes ``[redacted]``, and the result is cut at ``limit`` characters
    (ending in an ellipsis). ``None`` when nothing is left.

    Redaction comes before every cut, and a cut never leaves a piece of 8 or more characters
    of a ``redact`` string at an edge: a secret the cut split is still redacted."""
    if not isinstance(text, str):
        return None
    secrets = [secret for secret in redact if secret]
    # Only a bounded window of a long text is read (the result is at most ``limit`` long).
    window = limit * 4 + max((len(secret) for secret in secrets), default=0)
    cleaned = "".join(char if char.isprintable() else " " for char in text[:window])
    for secret in secrets:
        cleaned = cleaned.replace(secret, _REDACTED)
    if len(text) > window:  # the window's end may have split a secret, or a token
        cleaned = _edges_redacted(cleaned, secrets)
        if (kept := cleaned.rstrip(_TOKEN_CHARS)) != cleaned:
            cleaned = kept + _REDACTED
    cleaned = _SECRET_LIKE.sub(_REDACTED, cleaned).strip()
    if len(cleaned) > limit:
        cleaned = _edges_redacted(cleaned[: limit - 1], secrets) + "…"
    return cleaned or None


def _edges_redacted(text: str, secrets: Iterable[str]) -> str:
    """``text`` with a known secret's first (at the end) or last (at the start) 8 or more
    characters replaced: what a cut through the secret leaves."""
    for secret in secrets:
        for size in range(len(secret) - 1, _EDGE - 1, -1):
            if text.endswith(secret[:size]):
                text = text[:-size] + _REDACTED
                break
        for size in range(len(secret) - 1, _EDGE - 1, -1):
            if text.startswith(secret[-size:]):
                text = _REDACTED + text[size:]
                break
    return text


#: The longest hint :func:`describe` quotes (characters).
_DESCRIBED_HINT: Final = 120


def describe(
    answer: Answer,
    hint: str | None,
    *,
    status: int | None = None,
    redact: Iterable[str] = (),
) -> str:
    """One line for the WARNING the flows log on a failed exchange or refresh, e.g.
    ``code_revoked (code_spent, HTTP 400): amoCRM says "Authorization code has been revoked"``.

    The hint is passed through :func:`clean_hint` (cut at 120 characters, control characters
    removed, ``redact`` strings and long token-like runs replaced): no code, token or secret
    can appear, even if amoCRM echoed one.
    """
    where = "no answer" if status is None else f"HTTP {status}"
    line = f"{answer.reason} ({answer.meaning.value}, {where})"
    quoted = clean_hint(hint, limit=_DESCRIBED_HINT, redact=redact)
    if quoted is not None:
        # Without an answer the hint is the transport's (e.g. "ConnectError"), not amoCRM's.
        speaker = "the transport says" if status is None else "amoCRM says"
        line += f': {speaker} "{quoted}"'
    return line


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _code(text: str) -> str:
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def markdown_rows(*, header: bool = True) -> list[str]:
    """The table as Markdown lines: grant, status, hint, meaning, reason, next connection status,
    source.

    The "next connection status" column is left empty for the flows' documentation to fill in.
    """
    lines = []
    if header:
        lines += [
            "| grant | status | hint | meaning | reason | next connection status | source |",
            "|---|---|---|---|---|---|---|",
        ]
    for row in ROWS:
        grants = "any" if row.grants == _ALL else ", ".join(g for g in GRANTS if g in row.grants)
        if row.hint is ANY_HINT:
            hint = "any"
        elif row.hint is None:
            hint = "(no problem body)"
        else:
            hint = _code(row.hint)
        cells = (grants, row.statuses.label, hint, f"`{row.meaning.name}`", f"`{row.reason}`")
        lines.append("| " + " | ".join(_cell(c) for c in (*cells, "", row.source)) + " |")
    return lines


#: Why an exchange failed, by what amoCRM's answer means: the code's fate unknown (never sent
#: again), the integration misconfigured (fix it, then connect again), or the code refused.
EXCHANGE_FAILURES: Final[Mapping[Meaning, str]] = {
    Meaning.TRANSIENT: "exchange_interrupted",
    Meaning.ACCOUNT_BLOCKED: "exchange_interrupted",
    Meaning.CLIENT_MISCONFIGURED: "client_misconfigured",
}
#: What a refused refresh means: only these drop the connection (the refresh token is refused
#: for good and is never sent again); anything else keeps the pair for a later try.
REFRESH_REFUSALS: Final = frozenset({Meaning.REFRESH_REFUSED})
#: The refusals (``Answer.reason``) a refresh token already rotated by an earlier send gets
#: ("Token has been revoked", ``invalid_grant``): sent again after a lapsed lease, such a
#: refusal is no verdict on the connection while the earlier sender may keep the new pair.
SPENT_TOKEN_REASONS: Final = frozenset({"token_revoked", "token_invalid"})
