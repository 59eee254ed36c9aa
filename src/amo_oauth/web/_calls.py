"""What a route asks of the service: one typed value per call.

A route yields a ``ServiceCall`` and is sent its result. ``Handlers`` answers it with
``call.run(oauth)`` on ``AmoOAuth``, ``AsyncHandlers`` with ``await call.arun(oauth)`` on
``AsyncAmoOAuth``: each call is written once here against both services' signatures, so mypy
checks its arguments and its result, and no route names a method by a string.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar

import attrs

from .._callback import QueryLike
from .._config import Config
from .._records import Connection
from .._results import (
    AuthorizationRequest,
    ButtonMetadata,
    CallbackResult,
    HookResult,
    SecretsResult,
    SiteButton,
)

if TYPE_CHECKING:  # the service imports the web layer's nothing; only types go this way
    from .._async_service import AsyncAmoOAuth
    from .._service import AmoOAuth

__all__ = [
    "Begin",
    "Disconnect",
    "ExchangeCode",
    "HandleCallback",
    "HandleDisconnectHook",
    "IssueTicket",
    "LedgerHolds",
    "MakeSiteButton",
    "ReceiveSecrets",
    "RedeemTicket",
    "ServiceCall",
    "ServiceConfig",
    "Status",
]

T = TypeVar("T")


class ServiceCall(Generic[T]):
    """One call of the service, answered with ``T``; ``run`` and ``arun`` make it on either."""

    def run(self, oauth: AmoOAuth) -> T:
        raise NotImplementedError

    async def arun(self, oauth: AsyncAmoOAuth) -> T:
        raise NotImplementedError


# Codes, states, tickets, bindings and queries are secrets: never in a repr.


@attrs.frozen
class Begin(ServiceCall[AuthorizationRequest]):
    connection_id: str
    binding: str | None = attrs.field(repr=False)

    def run(self, oauth: AmoOAuth) -> AuthorizationRequest:
        return oauth.begin(self.connection_id, binding=self.binding)

    async def arun(self, oauth: AsyncAmoOAuth) -> AuthorizationRequest:
        return await oauth.begin(self.connection_id, binding=self.binding)


@attrs.frozen
class MakeSiteButton(ServiceCall[SiteButton]):
    """``/connect`` in metadata mode: the site button instead of a redirect."""

    connection_id: str
    binding: str | None = attrs.field(repr=False)
    metadata: ButtonMetadata

    def run(self, oauth: AmoOAuth) -> SiteButton:
        return oauth.site_button(self.connection_id, binding=self.binding, metadata=self.metadata)

    async def arun(self, oauth: AsyncAmoOAuth) -> SiteButton:
        return await oauth.site_button(
            self.connection_id, binding=self.binding, metadata=self.metadata
        )


@attrs.frozen
class ReceiveSecrets(ServiceCall[SecretsResult]):
    """amoCRM's post to ``secrets_uri``; ``form`` holds the client secret."""

    form: QueryLike = attrs.field(repr=False)

    def run(self, oauth: AmoOAuth) -> SecretsResult:
        return oauth.receive_secrets(self.form)

    async def arun(self, oauth: AsyncAmoOAuth) -> SecretsResult:
        return await oauth.receive_secrets(self.form)


@attrs.frozen
class IssueTicket(ServiceCall[str]):
    connection_id: str

    def run(self, oauth: AmoOAuth) -> str:
        return oauth.issue_ticket(self.connection_id)

    async def arun(self, oauth: AsyncAmoOAuth) -> str:
        return await oauth.issue_ticket(self.connection_id)


@attrs.frozen
class RedeemTicket(ServiceCall[str]):
    ticket: str = attrs.field(repr=False)
    connection_id: str | None

    def run(self, oauth: AmoOAuth) -> str:
        return oauth.redeem_ticket(self.ticket, connection_id=self.connection_id)

    async def arun(self, oauth: AsyncAmoOAuth) -> str:
        return await oauth.redeem_ticket(self.ticket, connection_id=self.connection_id)


@attrs.frozen
class HandleCallback(ServiceCall[CallbackResult]):
    query: QueryLike = attrs.field(repr=False)
    connection_id: str | None
    binding: str | None = attrs.field(repr=False)
    source: str | None = attrs.field(default=None, repr=False)

    def run(self, oauth: AmoOAuth) -> CallbackResult:
        return oauth.handle_callback(
            self.query, connection_id=self.connection_id, binding=self.binding, source=self.source
        )

    async def arun(self, oauth: AsyncAmoOAuth) -> CallbackResult:
        return await oauth.handle_callback(
            self.query, connection_id=self.connection_id, binding=self.binding, source=self.source
        )


@attrs.frozen
class ExchangeCode(ServiceCall[CallbackResult]):
    """The legacy exchange; the web route answers known codes only (``exchange_new=False``)."""

    connection_id: str
    code: str = attrs.field(repr=False)
    referer: str | None
    state: str | None = attrs.field(repr=False)
    exchange_new: bool

    def run(self, oauth: AmoOAuth) -> CallbackResult:
        return oauth.exchange_code(
            self.connection_id,
            self.code,
            referer=self.referer,
            state=self.state,
            exchange_new=self.exchange_new,
        )

    async def arun(self, oauth: AsyncAmoOAuth) -> CallbackResult:
        return await oauth.exchange_code(
            self.connection_id,
            self.code,
            referer=self.referer,
            state=self.state,
            exchange_new=self.exchange_new,
        )


@attrs.frozen
class Status(ServiceCall[Connection]):
    connection_id: str

    def run(self, oauth: AmoOAuth) -> Connection:
        return oauth.status(self.connection_id)

    async def arun(self, oauth: AsyncAmoOAuth) -> Connection:
        return await oauth.status(self.connection_id)


@attrs.frozen
class Disconnect(ServiceCall[Connection]):
    connection_id: str

    def run(self, oauth: AmoOAuth) -> Connection:
        return oauth.disconnect(self.connection_id)

    async def arun(self, oauth: AsyncAmoOAuth) -> Connection:
        return await oauth.disconnect(self.connection_id)


@attrs.frozen
class HandleDisconnectHook(ServiceCall[HookResult]):
    query: QueryLike = attrs.field(repr=False)

    def run(self, oauth: AmoOAuth) -> HookResult:
        return oauth.handle_disconnect_hook(self.query)

    async def arun(self, oauth: AsyncAmoOAuth) -> HookResult:
        return await oauth.handle_disconnect_hook(self.query)


@attrs.frozen
class LedgerHolds(ServiceCall[bool]):
    """Does the ledger hold ``entry`` for this integration? (routing several integrations)"""

    entry: str = attrs.field(repr=False)  # a code's digest or a client id: kept out of logs

    def run(self, oauth: AmoOAuth) -> bool:
        return oauth.ledger_holds(self.entry)

    async def arun(self, oauth: AsyncAmoOAuth) -> bool:
        return await oauth.ledger_holds(self.entry)


@attrs.frozen
class ServiceConfig(ServiceCall[Config]):
    """The service's settings (of several integrations, the one chosen for the request)."""

    def run(self, oauth: AmoOAuth) -> Config:
        return oauth.config

    async def arun(self, oauth: AsyncAmoOAuth) -> Config:
        return oauth.config
