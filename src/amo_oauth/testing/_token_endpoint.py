"""The token endpoint, `POST https://{account host}/oauth2/access_token` (protocol §3, §4).

Both grants, checked in the order league/oauth2-server checks in, answered with amoCRM's exact
error bodies; every call is counted by (grant, outcome, account, client) and every code or
refresh token sent by its digest.
"""

from __future__ import annotations

import hmac
from typing import Final

import attrs

from . import _protocol as P
from ._accounts import FakeAccount, FakeIntegration
from ._core import Core
from ._grants import Redeemed
from ._types import FakeResponse
from ._wire import Request, json_answer, not_found, problem, token_problem

# The body parameter that carries each grant's single-use secret.
_GRANT_PARAMETER: Final = {"authorization_code": "code", "refresh_token": "refresh_token"}


class TokenEndpoint:
    """`POST /oauth2/access_token` on any account host of one fake."""

    def __init__(self, core: Core) -> None:
        self._core = core

    def __call__(self, request: Request) -> FakeResponse:
        """Answer one token call (the caller holds the lock)."""
        if request.method != "POST":
            answer = problem(405, P.API_METHOD_NOT_ALLOWED)
            return attrs.evolve(answer, headers=(*answer.headers, ("allow", "POST")))
        params = request.form()
        grant = params.get("grant_type", "")
        grant = grant if grant in P.GRANTS else "unknown"
        presented = params.get(_GRANT_PARAMETER.get(grant, ""), "")
        if presented:
            self._core.tally.note_sent(grant, presented, request.host)
        account = self._core.directory.account_at(request.host)
        integration = self._core.directory.integrations.get(params.get("client_id", ""))
        key = (
            None if account is None else account.id,
            None if integration is None else integration.client_id,
        )

        def note(outcome: str) -> None:
            self._core.tally.token_log[(grant, outcome, *key)] += 1

        return self._core.answer(
            "token",
            grant,
            request,
            lambda: self._answer(request.host, account, grant, params),
            note,
        )

    def _answer(
        self, host: str, account: FakeAccount | None, grant: str, params: dict[str, str]
    ) -> tuple[str, FakeResponse]:
        outcome, tokens = self._outcome(host, account, grant, params)
        if tokens is not None:
            return outcome, json_answer(200, tokens)
        if outcome == "account_moved":
            return outcome, not_found()
        if outcome == "blocked":
            return outcome, problem(403, P.API_FORBIDDEN)
        return outcome, token_problem(outcome)

    def _outcome(
        self, host: str, account: FakeAccount | None, grant: str, params: dict[str, str]
    ) -> Redeemed:
        if account is None:
            moved = self._core.directory.moved_from(host)
            return ("account_moved" if moved else "invalid_account"), None
        if account.blocked:
            return "blocked", None
        if grant == "unknown":
            return "bad_grant_type", None
        outcome, integration = self._check_client(params)
        if integration is None:
            return outcome, None
        grants = self._core.grants
        if grant == "authorization_code":
            return grants.redeem_code(params.get("code", ""), account, integration)
        return grants.redeem_refresh(params.get("refresh_token", ""), account, integration)

    def _check_client(self, params: dict[str, str]) -> tuple[str, FakeIntegration | None]:
        # The order league/oauth2-server validates in: client id, secret, redirect URI.
        client_id = params.get("client_id", "")
        secret = params.get("client_secret", "")
        redirect_uri = params.get("redirect_uri", "")
        integration = self._core.directory.integrations.get(client_id)
        if integration is None:
            return ("bad_client_id" if client_id else "missing_client_id"), None
        if not secret:
            return "missing_client_secret", None
        if not hmac.compare_digest(secret.encode(), integration.client_secret.encode()):
            return "bad_secret", None
        if redirect_uri != integration.redirect_uri:
            return ("bad_redirect_uri" if redirect_uri else "missing_redirect_uri"), None
        return "ok", integration
