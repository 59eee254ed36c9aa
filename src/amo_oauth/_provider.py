"""amoCRM's requests sent over httpx: built from ``_provider_calls``, bounded as a whole, and
answered for ``_provider_reads`` to read.

The service sends through its httpx client (never following redirects), each call bounded from
its first byte to its last by :func:`send_within` / :func:`asend_within`. What to send and how
to read the answer are pure and live apart (``_provider_calls``, ``_provider_reads``, as
oauthlib keeps the protocol apart from HTTP); the flows import them from here, beside the
httpx requests they send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from ._config import Config
from ._errors import ProviderError
from ._hosts import AccountHost
from ._provider_calls import Call, account_call, code_call, lookup_call, refresh_call
from ._provider_reads import (
    MAX_ACCOUNT_ID,
    MAX_ACCOUNT_NAME,
    MAX_EXPIRES_IN,
    MAX_TOKEN_LENGTH,
    MIN_EXPIRES_IN,
    REFRESH_TOKEN_LIFETIME,
    answered,
    api_domain_of,
    check_account_host,
    long_lived_expiry,
    maybe_spent,
    meaning_of,
    read_account,
    read_lookup,
    read_tokens,
    reason_of,
    surely_unsent,
)
from ._records import ClientCredentials

# The pure names are re-exported: the flows, the service and the sweep import them from here.
__all__ = [
    "MAX_ACCOUNT_ID",
    "MAX_ACCOUNT_NAME",
    "MAX_EXPIRES_IN",
    "MAX_TOKEN_LENGTH",
    "MIN_EXPIRES_IN",
    "REFRESH_TOKEN_LIFETIME",
    "account_request",
    "answered",
    "api_domain_of",
    "asend_within",
    "check_account_host",
    "code_request",
    "error_from_exception",
    "long_lived_expiry",
    "lookup_request",
    "maybe_spent",
    "meaning_of",
    "read_account",
    "read_lookup",
    "read_tokens",
    "reason_of",
    "refresh_request",
    "send_within",
    "surely_unsent",
]


def _as_httpx(call: Call) -> httpx.Request:
    """``call`` as an httpx request, each operation bounded by ``call.timeout``."""
    return httpx.Request(
        call.method,
        call.url,
        json=None if call.json is None else dict(call.json),
        headers=dict(call.headers),
        extensions={"timeout": httpx.Timeout(call.timeout).as_dict()},
    )


def code_request(
    config: Config, credentials: ClientCredentials, host: AccountHost, code: str
) -> httpx.Request:
    """:func:`_provider_calls.code_call` as an httpx request."""
    return _as_httpx(code_call(config, credentials, host, code))


def refresh_request(
    config: Config, credentials: ClientCredentials, host: AccountHost, refresh_token: str
) -> httpx.Request:
    """:func:`_provider_calls.refresh_call` as an httpx request."""
    return _as_httpx(refresh_call(config, credentials, host, refresh_token))


def lookup_request(config: Config, api_host: AccountHost, refresh_token: str) -> httpx.Request:
    """:func:`_provider_calls.lookup_call` as an httpx request."""
    return _as_httpx(lookup_call(config, api_host, refresh_token))


def account_request(config: Config, host: AccountHost, access_token: str) -> httpx.Request:
    """:func:`_provider_calls.account_call` as an httpx request."""
    return _as_httpx(account_call(config, host, access_token))


def error_from_exception(exc: httpx.HTTPError) -> ProviderError:
    """A transport failure as a transient ``ProviderError``; its message holds no URL or body."""
    return ProviderError(None, type(exc).__name__, transient=True)


# -- the whole call within http_timeout -------------------------------------------------------


class _Remaining(dict[str, float]):
    """httpx's per-operation timeouts (connect, write, read, pool), each worth the time left
    until ``deadline`` at the moment httpcore looks it up (it does so as each operation starts)."""

    def __init__(self, deadline: float, clock: Callable[[], float]) -> None:
        self._deadline = deadline
        self._clock = clock
        left = self._left()
        super().__init__(connect=left, write=left, read=left, pool=left)

    def _left(self) -> float:
        return max(self._deadline - self._clock(), 0.001)

    def get(self, key: str, default: Any = None) -> Any:
        return self._left() if key in self else default

    def __getitem__(self, key: str) -> float:
        super().__getitem__(key)
        return self._left()


def _too_slow(seconds: float) -> ProviderError:
    return ProviderError(None, f"no complete answer within {seconds:g} s", transient=True)


def _bound(request: httpx.Request, seconds: float, clock: Callable[[], float]) -> float:
    if not seconds > 0:
        raise ValueError("seconds must be positive")
    deadline = clock() + seconds
    request.extensions = {**request.extensions, "timeout": _Remaining(deadline, clock)}
    return deadline


def send_within(
    client: httpx.Client,
    request: httpx.Request,
    seconds: float,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> httpx.Response:
    """Send ``request`` and read the whole answer within ``seconds`` (from now to the last
    byte), never following redirects.

    httpx's timeouts bound each operation, not the call: a body trickling in a byte at a time
    never trips them. Here every operation's timeout is the time left until the deadline (read
    from ``clock``, monotonic seconds) when it starts, and the deadline is checked between body
    chunks, so the call ends at the deadline (plus the scheduling of one chunk).

    Returns:
        The answer, read in full.

    Raises:
        ProviderError: transient, status ``None``: the deadline passed (hint
            ``no complete answer within <seconds> s``) or the transport failed (hint: the
            exception's class name). Raised outside any handler: no exception chain leads back
            to the request and its secrets.
        ValueError: ``seconds`` is not positive.
    """
    deadline = _bound(request, seconds, clock)
    failure: ProviderError | None = None
    try:
        response = client.send(request, stream=True, follow_redirects=False)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing left: say which
        failure = error_from_exception(exc)
    except httpx.TimeoutException:
        failure = _too_slow(seconds)
    except httpx.HTTPError as exc:
        failure = error_from_exception(exc)
    if failure is not None:
        raise failure
    raw: list[bytes] = []
    try:
        if response.is_stream_consumed:  # an in-process transport answered with its body read
            raw.append(response.content)
        else:
            for chunk in response.iter_raw():
                raw.append(chunk)
                if clock() >= deadline:
                    failure = _too_slow(seconds)
                    break
    except httpx.TimeoutException:
        failure = _too_slow(seconds)
    except httpx.HTTPError as exc:
        failure = error_from_exception(exc)
    finally:
        response.close()
    if failure is not None:
        raise failure
    return httpx.Response(
        response.status_code, headers=response.headers, content=b"".join(raw), request=request
    )


async def asend_within(
    client: httpx.AsyncClient,
    request: httpx.Request,
    seconds: float,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> httpx.Response:
    """``send_within`` for asyncio: the whole call runs under ``asyncio.timeout(seconds)``, and
    each operation's own timeout is the time left, as in :func:`send_within`.

    Raises:
        ProviderError: transient, status ``None``, as for :func:`send_within`.
        ValueError: ``seconds`` is not positive.
    """
    _bound(request, seconds, clock)
    failure: ProviderError
    try:
        async with asyncio.timeout(seconds):
            return await client.send(request, follow_redirects=False)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing left: say which
        failure = error_from_exception(exc)
    except (TimeoutError, httpx.TimeoutException):
        failure = _too_slow(seconds)
    except httpx.HTTPError as exc:
        failure = error_from_exception(exc)
    raise failure
