"""The integration's "Keys and scopes" tab (protocol §8), as a page a person opens in a browser:
each visit issues what an admin would copy from it, a long-lived token and an authorization code,
with buttons that revoke that token or end it now (the API then answers 401 for it).

Served at `/keys?client_id=...` on the consent host (or the loopback server addressed directly);
`FakeAmoCRM.issue_long_lived_token` and `issue_keys_tab_code` issue the same without a browser.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final
from urllib.parse import urlencode

import attrs

from . import _pages
from ._accounts import FakeIntegration
from ._core import Core
from ._grants import Grants
from ._types import FakeResponse
from ._wire import Request, html_answer, not_found

#: What the tab's long-lived token lives when the page issues one (the admin's pick, §8).
PAGE_TOKEN_LIFETIME: Final = timedelta(days=365)
#: The page shows secrets: no cache keeps it, no other site frames it.
_HEADERS: Final = (
    ("cache-control", "no-store"),
    ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
)


class KeysTab:
    """`GET /keys` of one fake, and its buttons' `POST /keys` (the caller holds the lock)."""

    def __init__(self, core: Core) -> None:
        self._core = core

    def page(self, request: Request) -> FakeResponse:
        """The tab for the integration named by `client_id` and the default account: a fresh
        long-lived token (a year) and a fresh keys-tab code (20 minutes, single use)."""
        directory = self._core.directory
        if directory.serves_host(request.host) and request.host not in {
            f"www.{domain}" for domain in directory.domains
        }:
            return not_found()  # an account or API host: the tab is amoCRM's UI, not its API
        if request.method not in ("GET", "POST"):
            return html_answer(405, _pages.message_page("405", "Method not allowed."))
        client_id = request.query.get("client_id", "")
        integration = directory.integrations.get(client_id)
        if integration is None:
            page = _pages.message_page("400 Bad Request", "Unknown integration: check client_id.")
            return html_answer(400, page)
        if request.method == "POST":
            return self._act(request, integration)
        account = directory.account(None)
        grants = self._core.grants
        token = grants.new_long_lived(account, integration, PAGE_TOKEN_LIFETIME)
        code = grants.new_code(account, integration)
        action = f"/keys?{urlencode({'client_id': client_id})}"
        content = _pages.keys_page(account.name, account.host, token, code, action)
        return _secret_page(html_answer(200, content))

    def _act(self, request: Request, integration: FakeIntegration) -> FakeResponse:
        """A button of the tab: revoke a long-lived token of this integration, or end it now
        (the API answers 401 for it from then on, as amoCRM does)."""
        fields = request.form()
        act = _ACTS.get(fields.get("do", ""))
        token = fields.get("token", "")
        issued = self._core.grants.access.get(token)
        if act is None or issued is None or issued.integration is not integration:
            page = _pages.message_page("400 Bad Request", "No such token of this integration.")
            return html_answer(400, page)
        ends, done = act
        ends(self._core.grants, token)
        return _secret_page(html_answer(200, _pages.message_page("Keys and scopes", done)))


#: The tab's buttons: the grants' method each calls, and what the page then says.
_ACTS: Final = {
    "revoke": (Grants.revoke_access, "The token is revoked: the API refuses it from now on."),
    "expire": (Grants.expire_token, "The token has expired: the API refuses it from now on."),
}


def _secret_page(answer: FakeResponse) -> FakeResponse:
    return attrs.evolve(answer, headers=(*answer.headers, *_HEADERS))
