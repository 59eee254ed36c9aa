"""Every reason slug the library reports, as one closed set.

A slug says why a connection is in ``error`` (``ErrorInfo.reason``), why a request was refused
(``CallbackRejected.reason``, the web layer's ``{"error": reason}``), or why a connection has
no usable token (``ReauthorizationRequired.reason``). The table, the flows, the web layer and
the docs all use these; constructing an error with a slug outside its set raises ``ValueError``
(a test also checks every slug written in the source against this module).
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "CONNECTION_ERRORS",
    "HOOK_OUTCOMES",
    "NOT_CONNECTED",
    "REJECTIONS",
    "RETRY_LATER",
    "WEB_REFUSALS",
    "Reason",
]


class Reason(enum.StrEnum):
    """Every slug, by name. Values are the stable strings clients see."""

    # Why a connection is in ``error`` (``ErrorInfo.reason``).
    ACCESS_DENIED = "access_denied"
    CONSENT_FAILED = "consent_failed"
    CODE_REJECTED = "code_rejected"
    CLIENT_MISCONFIGURED = "client_misconfigured"
    EXCHANGE_INTERRUPTED = "exchange_interrupted"
    VERIFY_FAILED = "verify_failed"
    REAUTHORIZATION_REQUIRED = "reauthorization_required"
    DISCONNECTED_BY_PROVIDER = "disconnected_by_provider"
    ACCOUNT_MOVED = "account_moved"
    LONG_LIVED_TOKEN_EXPIRED = "long_lived_token_expired"
    LONG_LIVED_TOKEN_REVOKED = "long_lived_token_revoked"
    # Why a request was refused before anything changed (``CallbackRejected.reason``).
    MISSING_CODE = "missing_code"
    MISSING_REFERER = "missing_referer"
    BAD_STATE = "bad_state"
    EXPIRED_STATE = "expired_state"
    CLOCK_SKEW = "clock_skew"
    REUSED_STATE = "reused_state"
    FOREIGN_HOST = "foreign_host"
    MALFORMED = "malformed"
    CLIENT_ID_MISMATCH = "client_id_mismatch"
    BAD_SIGNATURE = "bad_signature"
    WIDGET_INSTALLS_DISABLED = "widget_installs_disabled"
    NEW_CODE_REFUSED = "new_code_refused"
    RATE_LIMITED = "rate_limited"
    WRONG_BROWSER = "wrong_browser"
    BAD_TICKET = "bad_ticket"
    EXPIRED_TICKET = "expired_ticket"
    USED_TICKET = "used_ticket"
    TOKEN_REFUSED = "token_refused"
    CODE_USED_ELSEWHERE = "code_used_elsewhere"
    CREDENTIALS_MISSING = "credentials_missing"
    # Why a connection has no token to give, besides its error reason (``ReauthorizationRequired``).
    DISCONNECTED = "disconnected"
    EXCHANGE_PENDING = "exchange_pending"
    TOKEN_EXPIRED = "token_expired"
    # Why a caller should try again later (``TryAgainLater.reason``); nothing is wrong for good.
    REFRESH_IN_PROGRESS = "refresh_in_progress"
    KEPT_PAIR_PENDING = "kept_pair_pending"
    VERIFICATION_DEFERRED = "verification_deferred"
    REFRESH_BACKOFF = "refresh_backoff"
    EXCHANGE_IN_PROGRESS = "exchange_in_progress"
    API_PAUSED = "api_paused"
    API_BUSY = "api_busy"
    # Why a disconnect hook disconnected nothing (``HookResult.reason``).
    HOOK_PACED = "hook_paced"
    HOOK_REPLAYED = "hook_replayed"
    NOTHING_TO_FORGET = "nothing_to_forget"
    # The web layer's own refusals.
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNAUTHENTICATED = "unauthenticated"
    BAD_CONNECTION_ID = "bad_connection_id"
    CROSS_SITE_REQUEST = "cross_site_request"
    UNKNOWN_INTEGRATION = "unknown_integration"
    QUERY_TOO_LARGE = "query_too_large"
    BODY_TOO_LARGE = "body_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    STORE_UNAVAILABLE = "store_unavailable"
    PROVIDER_UNAVAILABLE = "provider_unavailable"


R = Reason

#: ``ErrorInfo.reason``: why a connection is in ``error``.
CONNECTION_ERRORS: Final = frozenset(
    {
        R.ACCESS_DENIED,
        R.CONSENT_FAILED,
        R.CODE_REJECTED,
        R.CLIENT_MISCONFIGURED,
        R.EXCHANGE_INTERRUPTED,
        R.VERIFY_FAILED,
        R.REAUTHORIZATION_REQUIRED,
        R.DISCONNECTED_BY_PROVIDER,
        R.ACCOUNT_MOVED,
        R.LONG_LIVED_TOKEN_EXPIRED,
        R.LONG_LIVED_TOKEN_REVOKED,
    }
)
#: ``CallbackRejected.reason``: a redirect, hook or legacy call refused before anything changed.
REJECTIONS: Final = frozenset(
    {
        R.MISSING_CODE,
        R.MISSING_REFERER,
        R.BAD_STATE,
        R.EXPIRED_STATE,
        R.CLOCK_SKEW,
        R.REUSED_STATE,
        R.FOREIGN_HOST,
        R.MALFORMED,
        R.CLIENT_ID_MISMATCH,
        R.BAD_SIGNATURE,
        R.WIDGET_INSTALLS_DISABLED,
        R.NEW_CODE_REFUSED,
        R.RATE_LIMITED,
        R.WRONG_BROWSER,
        R.BAD_TICKET,
        R.EXPIRED_TICKET,
        R.USED_TICKET,
        R.TOKEN_REFUSED,
        R.CODE_USED_ELSEWHERE,
        R.CREDENTIALS_MISSING,
        # connect_long_lived with a token whose ``exp`` has passed: refused before sending.
        R.LONG_LIVED_TOKEN_EXPIRED,
    }
)
#: ``ReauthorizationRequired.reason``: a connection error, or why there is none to report.
NOT_CONNECTED: Final = CONNECTION_ERRORS | {
    R.DISCONNECTED,
    R.EXCHANGE_PENDING,
    R.FOREIGN_HOST,
    R.TOKEN_EXPIRED,
    # Metadata mode: a connection that never received its integration's credentials.
    R.CREDENTIALS_MISSING,
}
#: ``TryAgainLater.reason``: why the same call may succeed later (``retry_after`` says when).
RETRY_LATER: Final = frozenset(
    {
        R.REFRESH_IN_PROGRESS,
        R.KEPT_PAIR_PENDING,
        R.VERIFICATION_DEFERRED,
        R.REFRESH_BACKOFF,
        R.EXCHANGE_IN_PROGRESS,
        R.API_PAUSED,
        R.API_BUSY,
    }
)
#: ``HookResult.reason``: why a signed disconnect hook disconnected nothing.
HOOK_OUTCOMES: Final = frozenset(
    {R.HOOK_PACED, R.HOOK_REPLAYED, R.NOTHING_TO_FORGET, R.PROVIDER_UNAVAILABLE}
)
#: The web layer's ``{"error": reason}``: rejections, connection errors, and its own refusals.
WEB_REFUSALS: Final = (
    REJECTIONS
    | CONNECTION_ERRORS
    | RETRY_LATER
    | {
        R.NOT_FOUND,
        R.METHOD_NOT_ALLOWED,
        R.UNAUTHENTICATED,
        R.BAD_CONNECTION_ID,
        R.CROSS_SITE_REQUEST,
        R.UNKNOWN_INTEGRATION,
        R.QUERY_TOO_LARGE,
        R.BODY_TOO_LARGE,
        R.UNSUPPORTED_MEDIA_TYPE,
        R.STORE_UNAVAILABLE,
        R.PROVIDER_UNAVAILABLE,
    }
)
