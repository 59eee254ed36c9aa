"""The consent page on `www.{domain}` (protocol §1, §2) and the redirects it answers with.

A browser in an end-to-end test presses "Allow" or "Deny"; `FakeAmoCRM.authorize` and `deny`
build the same redirects without one.
"""

from __future__ import annotations

from urllib.parse import urlencode

from . import _pages
from ._accounts import FakeAccount, FakeIntegration
from ._core import Core
from ._types import FakeResponse
from ._wire import Request, html_answer, not_found, redirect

Checked = tuple[FakeResponse | None, dict[str, str], FakeIntegration | None]
"""A consent request checked: the refusal if any, its parameters, and the integration named."""


class Consent:
    """`/oauth`, `/oauth/allow` and `/oauth/deny` of one fake (the caller holds the lock)."""

    def __init__(self, core: Core) -> None:
        self._core = core

    def page(self, request: Request) -> FakeResponse:
        """The consent page, with "Allow" and "Deny": the default account grants access, or,
        when the fake has several, the one the user picks (amoCRM lists the user's accounts)."""
        error, params, _ = self._check(request)
        if error is not None:
            return error
        fields: dict[str, str] = {
            key: params[key] for key in ("client_id", "state", "mode") if key in params
        }
        accounts = self._core.directory.accounts
        choices = (
            [(str(a.id), f"{a.name} ({a.host})") for a in accounts] if len(accounts) > 1 else []
        )
        account = self._core.directory.account(None)
        return html_answer(200, _pages.consent_page(account.name, account.host, fields, choices))

    def allow(self, request: Request) -> FakeResponse:
        """ "Allow" pressed: a redirect with a fresh code for the account picked (the default
        one unless the page offered a choice)."""
        error, params, integration = self._check(request)
        if error is not None or integration is None:
            return error or not_found()
        account = self._picked(params.get("account"))
        if account is None:
            return html_answer(400, _pages.message_page("400 Bad Request", "Unknown account."))
        code = self._core.grants.new_code(account, integration)
        return redirect(success_url(code, account, integration, params.get("state")))

    def _picked(self, chosen: str | None) -> FakeAccount | None:
        """The account named by the page's choice (an id), the default one when none."""
        if chosen is None:
            return self._core.directory.account(None)
        try:
            return self._core.directory.account(int(chosen))
        except (ValueError, KeyError):
            return None

    def deny(self, request: Request) -> FakeResponse:
        """ "Deny" pressed: a redirect saying `access_denied`."""
        error, params, integration = self._check(request)
        if error is not None or integration is None:
            return error or not_found()
        return redirect(denied_url(integration, params.get("state")))

    def _check(self, request: Request) -> Checked:
        if not self._is_consent_host(request.host):
            return not_found(), {}, None
        params = request.query | (request.form() if request.method == "POST" else {})
        if request.method not in ("GET", "POST"):
            return html_answer(405, _pages.message_page("405", "Method not allowed.")), params, None
        integration = self._core.directory.integrations.get(params.get("client_id", ""))
        if integration is None:
            page = _pages.message_page("400 Bad Request", "Unknown integration: check client_id.")
            return html_answer(400, page), params, None
        return None, params, integration

    def _is_consent_host(self, host: str) -> bool:
        # www.{domain}, or the loopback server addressed directly (a browser in an e2e test).
        directory = self._core.directory
        return host in {f"www.{d}" for d in directory.domains} or not directory.serves_host(host)


def authorization_url(consent_host: str, client_id: str, state: str | None, mode: str) -> str:
    """The consent page URL for `client_id`, carrying `state` when given."""
    params = [("client_id", client_id)]
    params += [] if state is None else [("state", state)]
    return f"https://{consent_host}/oauth?" + urlencode([*params, ("mode", mode)])


def success_url(
    code: str,
    account: FakeAccount,
    integration: FakeIntegration,
    state: str | None,
    from_widget: bool = False,
) -> str:
    """The redirect after "Allow" (§2): the code, the state, the account host as `referer`."""
    params = [("code", code)]
    params += [] if state is None else [("state", state)]
    params += [("referer", account.host), ("client_id", integration.client_id)]
    params += [("from_widget", "1")] if from_widget else []
    return _redirect_url(integration, params)


def denied_url(integration: FakeIntegration, state: str | None) -> str:
    """The redirect after "Deny" (§2)."""
    params = [("error", "access_denied"), ("client_id", integration.client_id)]
    return _redirect_url(integration, params + ([] if state is None else [("state", state)]))


def _redirect_url(integration: FakeIntegration, params: list[tuple[str, str]]) -> str:
    separator = "&" if "?" in integration.redirect_uri else "?"
    return integration.redirect_uri + separator + urlencode(params)
