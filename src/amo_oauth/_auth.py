"""``httpx.Auth`` for one connection: a bearer token, on 401 one refresh and one retry, and
the API's pace (``_pace.py``): a slot per request, a pause after a 429 or 403."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from typing import cast

import attrs
import httpx

from ._errors import TokenScopeError
from ._pace import ApiPace, Pacer, Sending, Slot
from ._provider_reads import retry_after_in

__all__ = ["ConnectionAuth"]


@attrs.frozen
class _NeedToken:
    """Ask the driver for a token; ``stale`` is one amoCRM just refused."""

    stale: str | None


@attrs.frozen
class _Look:
    """Ask the driver whether the host is paused (it raises ``TryAgainLater`` if so), before a
    token is asked for: an expired token is not refreshed for a request that cannot go."""

    host: str


@attrs.frozen
class _Turn:
    """Ask the driver to wait for the host's slot (or raise ``TryAgainLater``)."""

    host: str


@attrs.frozen
class _Read:
    """Ask the driver to read an answer's body (to find its ``retry_after``)."""

    response: httpx.Response


@attrs.frozen
class _PushedBack:
    """amoCRM answered 429 or 403: the driver pauses the host, and answers whether to resend
    (after waiting for the pause's one resend) or raises ``TryAgainLater``."""

    host: str
    status: int
    retry_after: float | None
    may_resend: bool


_Item = _NeedToken | _Look | _Turn | _Read | _PushedBack | httpx.Request


def _on_account_host(url: httpx.URL, host: str) -> bool:
    """``https`` to exactly the connection's account host, on the default port."""
    return url.scheme == "https" and url.host == host and url.port in (None, 443)


def _attach(request: httpx.Request, granted: object) -> str:
    host, token = cast(tuple[str, str], granted)
    if not host or not _on_account_host(request.url, host):
        # Never the token to another host, nor in clear: refuse before anything is sent.
        raise TokenScopeError(
            f"refused to send the connection's token to {request.url.scheme}://"
            f"{request.url.host}: only https://{host or '<no account host>'} gets it"
        )
    request.headers["Authorization"] = f"Bearer {token}"
    return str(token)


def _answered_by(response: object, host: str, statuses: tuple[int, ...]) -> bool:
    """An answer of one of ``statuses`` from the account host itself (not after a redirect)."""
    return (
        isinstance(response, httpx.Response)
        and response.status_code in statuses
        and _on_account_host(response.url, host)
    )


def _flow(request: httpx.Request, paced: bool) -> Generator[_Item, object, None]:
    host = request.url.host
    if paced:
        yield _Look(host)  # a paused host: refused before a refresh is spent on it
    token = _attach(request, (yield _NeedToken(None)))
    response = yield from _send(request, paced)
    if _answered_by(response, host, (401,)):
        # The token was revoked or expired early: refresh once (single-flight) and retry once.
        _attach(request, (yield _NeedToken(token)))
        response = yield from _send(request, paced)
    resent = False
    while paced and _answered_by(response, host, (429, 403)):
        answer = cast(httpx.Response, response)
        yield _Read(answer)
        pushed = _PushedBack(host, answer.status_code, retry_after_in(answer), not resent)
        if (yield pushed) is None:  # a 403: returned as it came
            return
        resent = True
        response = yield request  # the driver waited for the resend's slot and rechecked it


def _send(request: httpx.Request, paced: bool) -> Generator[_Item, object, object]:
    if paced:
        yield _Turn(request.url.host)  # the driver waits for the slot, then checks the pause
    return (yield request)


class ConnectionAuth(httpx.Auth):
    """Authenticates requests to amoCRM's API as one connection, at the API's pace.

    The bearer token goes only to ``https`` requests to the connection's own account host,
    re-read with every token (after an account move the old host is refused); anything else
    raises ``TokenScopeError`` before sending. A 401 refreshes (once, single-flight) only when it
    comes from that host.

    Paced (``Config.api_rate``, docs/api-pace.md): each request waits for its slot of the
    ``(client id, host)`` schedule, at most ``Config.api_max_wait`` seconds. A 429 from the
    host pauses the host for its ``retry_after`` and is resent once, by one caller, when the
    pause ends within ``api_max_wait``. A request already waiting for its slot when a pause
    begins looks at the pause again when its turn comes, and is refused without sending when
    the pause covers its slot; a 403 pauses the host for ``BLOCKED_PAUSE`` (60 s) and
    is returned as it came. The request body is read before the first send, so a resend sends
    it whole.

    A request to a paused host is refused before its token is read, so an expired token is
    not refreshed for a request that could not be sent (the token endpoint is not paced).

    Raises (on a request):
        TryAgainLater: ``api_paused`` (the host is paused, or a pause began while the request
            waited for its slot: nothing was sent; or a 429 answered
            this request and it could not be resent: ``status`` 429) or ``api_busy`` (its slot
            is more than ``api_max_wait`` away: nothing was sent), with ``retry_after``.

    Made by ``AmoOAuth.auth()`` (for ``httpx.Client``) or ``AsyncAmoOAuth.auth()`` (for
    ``httpx.AsyncClient``); using it with the other kind of client raises ``RuntimeError``.
    """

    requires_request_body = True

    def __init__(
        self,
        token: Callable[[str | None], tuple[str, str]] | None = None,
        async_token: Callable[[str | None], Awaitable[tuple[str, str]]] | None = None,
        pace: ApiPace | None = None,
    ) -> None:
        self._token = token
        self._async_token = async_token
        self._pace = pace

    def __repr__(self) -> str:
        return "ConnectionAuth()"

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        if self._token is None:
            raise RuntimeError("this auth comes from AsyncAmoOAuth: use it with httpx.AsyncClient")
        request.read()  # what requires_request_body asks: a resend then sends the body whole
        flow = _flow(request, self._paced)
        item = next(flow)
        sent_at = 0.0
        sending: Sending | None = None
        try:
            while True:
                if isinstance(item, httpx.Request):
                    sent_at = self._now()
                    try:
                        reply: object = yield item
                    finally:  # answered or failed: its place in the window ages from now
                        self._leave(sending)
                        sending = None
                elif isinstance(item, _NeedToken):
                    reply = self._token(item.stale)
                elif isinstance(item, _Read):
                    reply = item.response.read()
                elif isinstance(item, _Look):
                    self._look(item.host)
                    reply = None
                else:
                    reply = slot = self._slot(item, sent_at)
                    sending = self._pacer().wait_for(slot)  # and looks at the pause again after it
                item = flow.send(reply)
        except StopIteration:
            return
        finally:
            self._leave(sending)
            flow.close()

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self._async_token is None:
            raise RuntimeError("this auth comes from AmoOAuth: use it with httpx.Client")
        await request.aread()  # as in sync_auth_flow
        flow = _flow(request, self._paced)
        item = next(flow)
        sent_at = 0.0
        sending: Sending | None = None
        try:
            while True:
                if isinstance(item, httpx.Request):
                    sent_at = self._now()
                    try:
                        reply: object = yield item
                    finally:  # answered or failed: its place in the window ages from now
                        self._leave(sending)
                        sending = None
                elif isinstance(item, _NeedToken):
                    reply = await self._async_token(item.stale)
                elif isinstance(item, _Read):
                    reply = await item.response.aread()
                elif isinstance(item, _Look):
                    self._look(item.host)
                    reply = None
                else:
                    reply = slot = self._slot(item, sent_at)
                    sending = await self._pacer().await_for(slot)  # as in sync_auth_flow
                item = flow.send(reply)
        except StopIteration:
            return
        finally:
            self._leave(sending)
            flow.close()

    @property
    def _paced(self) -> bool:
        return self._pace is not None and self._pace.rate is not None

    def _now(self) -> float:
        return self._pace.pacer.clock() if self._pace is not None else 0.0

    def _pacer(self) -> Pacer:
        assert self._pace is not None  # only a paced flow yields a turn or a push-back
        return self._pace.pacer

    def _leave(self, sending: Sending | None) -> None:
        """A paced request's answer (or failure) is in (``Pacer.leave``)."""
        if sending is not None:
            self._pacer().leave(sending)

    def _look(self, host: str) -> None:
        """Refuse a request to a paused host before its token is asked for.

        Raises:
            TryAgainLater: ``api_paused``, with what is left of the pause as ``retry_after``.
        """
        pace = self._pace
        assert pace is not None  # only a paced flow looks
        pace.refuse_if_paused(host)

    def _slot(self, item: _Turn | _PushedBack, sent_at: float) -> Slot | None:
        """The slot to wait for: a request's, or the one resend's after a 429; None: no resend
        (a 403 is returned as it came).

        Raises:
            TryAgainLater: the host is paused or busy, or a 429 that is not resent.
        """
        pace = self._pace
        assert pace is not None  # only a paced flow yields a turn or a push-back
        if isinstance(item, _Turn):
            return pace.turn(item.host)
        resent = not item.may_resend
        pace.answered(item.host, item.status, item.retry_after, sent_at, resent=resent)
        if item.status != 429:
            return None
        return pace.resend_turn(item.host, first=item.may_resend)
