"""The exception tree.

::

    AmoOAuthError
     +-- CallbackRejected(reason)     a redirect, hook or legacy call the library refuses
     +-- ReauthorizationRequired      no usable tokens: the user must connect again
     +-- ProviderError(status, hint)  amoCRM answered with an error, or did not answer
     |    +-- TryAgainLater(reason, retry_after)  nothing is wrong for good: call again later
     +-- TokenScopeError              auth() would have sent a token off its account host
     +-- InvalidTransition            an event the lifecycle table does not know
     +-- StoreError                   a store could not read or write a record
          +-- UnreadableRecord        a stored record is corrupt (its version, if intact)
          +-- UndecryptableRecord     the store's encryption key does not open a record

Messages never contain secrets: no client_secret, code, token or state value is ever
formatted into an exception.
"""

from __future__ import annotations

from typing import Final

from ._connection_id import ConnectionId
from ._reasons import NOT_CONNECTED, REJECTIONS, RETRY_LATER

__all__ = [
    "REJECTION_REASONS",
    "AmoOAuthError",
    "CallbackRejected",
    "InvalidTransition",
    "ProviderError",
    "ReauthorizationRequired",
    "StoreError",
    "TokenScopeError",
    "TryAgainLater",
    "UndecryptableRecord",
    "UnreadableRecord",
]

#: Every reason a ``CallbackRejected`` can carry; the web layer answers ``{"error": reason}``.
REJECTION_REASONS: Final = frozenset(str(reason) for reason in REJECTIONS)


class AmoOAuthError(Exception):
    """The base of every error the library raises."""


class CallbackRejected(AmoOAuthError):
    """The request was refused before anything changed.

    Args:
        reason: one of ``REJECTION_REASONS``, stable and safe to show to a client.
        retry_after: seconds (whole, rounded up) after which the same request would be
            admitted, when the refusal is about time: ``rate_limited`` carries when the full
            exchange window frees a try (the web routes send it as ``Retry-After``); None
            for every other refusal.

    Raises:
        ValueError: ``reason`` is not one of ``REJECTION_REASONS``, or ``retry_after`` < 0.
    """

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        if reason not in REJECTION_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        if retry_after is not None and retry_after < 0:
            raise ValueError("retry_after must be >= 0 seconds")
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class ReauthorizationRequired(AmoOAuthError):
    """The connection has no usable tokens; the user has to go through ``begin()`` again.

    Args:
        connection_id: what names the connection: the app user's id, or ``Widget(host)`` for
            a widget install (``amo_oauth.Widget``).
        reason: the connection's error reason, or ``disconnected`` / ``exchange_pending`` /
            ``foreign_host`` (one of ``_reasons.NOT_CONNECTED``).
    """

    def __init__(self, connection_id: ConnectionId, reason: str) -> None:
        if reason not in NOT_CONNECTED:
            raise ValueError(f"unknown reauthorization reason {reason!r}")
        super().__init__(f"connection {connection_id!r} needs re-authorization: {reason}")
        self.connection_id = connection_id
        self.reason = reason


class ProviderError(AmoOAuthError):
    """amoCRM answered with an error, or the call failed on the way.

    The message says which: ``amoCRM answered 429: Too Many Requests`` for an answer, ``no
    answer from amoCRM: ConnectTimeout`` when none came.

    Args:
        status: the HTTP status, or ``None`` when no answer arrived.
        hint: amoCRM's ``hint`` (or ``title``) from the problem+json body, or the transport's
            failure (an httpx exception's name) when no answer arrived; never a secret.
        transient: True when retrying later may succeed (5xx, HTML, timeouts, 429, 403).
        retry_after: seconds (>= 0) after which the call may succeed, when known: amoCRM's own
            ``retry_after`` on a 429 (protocol notes §9), or, for a refresh amoCRM pushed
            back on, how long the connection's refresh is held back (``refresh_backoff``);
            else None.
    """

    def __init__(
        self,
        status: int | None,
        hint: str,
        *,
        transient: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(self._describe(status, hint))
        self.status = status
        self.hint = hint
        self.transient = transient
        self.retry_after = retry_after

    def _describe(self, status: int | None, hint: str) -> str:
        """The message: who answered what, or that nothing came back."""
        if status is None:
            return f"no answer from amoCRM: {hint}"
        return f"amoCRM answered {status}: {hint}"


class TryAgainLater(ProviderError):
    """The call may succeed later; nothing is wrong for good, and nobody needs to re-authorize.

    A ``ProviderError`` (always ``transient``) so that code catching ``ProviderError`` for
    transient failures keeps working; catch this class to read ``reason`` and
    ``retry_after``. Its message names the reason first, and amoCRM only when amoCRM's answer
    is the cause: ``try again later (refresh_in_progress): a refresh by another worker is
    still running``; ``try again later (refresh_backoff): amoCRM answered 429: Too Many
    Requests``.

    Args:
        reason: a stable slug, one of ``_reasons.RETRY_LATER``:
            ``refresh_in_progress`` (another worker's refresh outlasted ``settle_timeout``),
            ``kept_pair_pending`` (amoCRM refused a refresh token that another process may
            have rotated and still keeps in memory: its pair may land within
            ``Config.kept_pair_grace``), ``verification_deferred`` (a new connection's
            verification failed for a moment and is retried), ``refresh_backoff`` (amoCRM
            pushed back on the connection's refresh: a 429, a blocked account's 403, a 5xx;
            no refresh is sent until the back-off kept in the record lapses), ``api_paused``
            (``auth()``: amoCRM answered the host 429 or 403, nothing is sent to it until the
            pause ends) or ``api_busy`` (``auth()``: the host's slot is further away than
            ``Config.api_max_wait``; docs/api-pace.md).
        hint: a sentence for the log; never a secret.
        retry_after: seconds after which a retry makes sense, when known; else None.
        status: the HTTP status of amoCRM's answer when that answer is the cause (the call
            whose refresh amoCRM answered 429 / 403 / 5xx); ``None`` for a wait of the
            library's own (another worker's refresh, a back-off already in the record) and
            for a refresh held back because amoCRM could not be reached (a refused or
            timed-out connect: nothing was sent).

    Raises:
        ValueError: ``reason`` is not one of ``RETRY_LATER``, or ``retry_after`` < 0.
    """

    def __init__(
        self,
        reason: str,
        hint: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        if reason not in RETRY_LATER:
            raise ValueError(f"unknown retry reason {reason!r}")
        if retry_after is not None and retry_after < 0:
            raise ValueError("retry_after must be >= 0 seconds")
        self.reason = reason
        super().__init__(status, hint, transient=True, retry_after=retry_after)

    def _describe(self, status: int | None, hint: str) -> str:
        if status is None:  # a wait of the library's own: amoCRM was not asked
            return f"try again later ({self.reason}): {hint}"
        return f"try again later ({self.reason}): amoCRM answered {status}: {hint}"


class TokenScopeError(AmoOAuthError):
    """``auth()`` refused to attach a connection's bearer token to a request that is not
    ``https`` to that connection's own account host (nothing was sent)."""


class InvalidTransition(AmoOAuthError):
    """An event that the lifecycle table does not define was fired."""


class StoreError(AmoOAuthError):
    """A store failed to load or write a record."""


class UnreadableRecord(StoreError):
    """A stored record that cannot be read (corrupt, or written by something else).

    ``version`` is the row's own version column when the store keeps one and it is intact, so
    that ``disconnect()`` can still overwrite the row by compare-and-set; None otherwise. The
    message names no content.
    """

    def __init__(self, version: int | None = None) -> None:
        super().__init__("the store holds a record it cannot read")
        self.version = version


class UndecryptableRecord(StoreError):
    """A stored record whose tokens the store's encryption does not open (a wrong or missing
    key), or whose tokens are encrypted while the store was given no encryption. The row is
    intact: it is never overwritten as a corrupt one.

    ``key`` is the record's key (``ConnectionRecord.key``, not a secret) when the store knows
    it at that point, else None. The message names no content.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key
