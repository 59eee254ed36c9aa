"""The consent page on `www.{domain}` (protocol §1, §2) and the redirects it answers with;
the site button's script and its metadata-mode install (§7), served on the same host.

A browser in an end-to-end test presses "Allow" or "Deny"; `FakeAmoCRM.authorize`, `deny` and
`install_site_button` build the same redirects without one.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

import attrs

from . import _pages
from . import _protocol as P
from ._accounts import FakeAccount, FakeIntegration
from ._core import Core
from ._site_button import (
    BUTTON_SCRIPT,
    JAVASCRIPT,
    METADATA_FIELDS,
    SCOPES_PARAMETER,
    SiteButtonInstall,
    uri_problem,
)
from ._types import FakeResponse
from ._wire import Request, html_answer, not_found, problem, redirect

Checked = tuple[FakeResponse | None, dict[str, str], FakeIntegration | None]
"""A consent request checked: the refusal if any, its parameters, and the integration named."""
Installer = Callable[[FakeAccount, str, str, str], SiteButtonInstall]
"""A metadata-mode install for (account, redirect_uri, secrets_uri, state), posting the
credentials as the fake is set up to (`FakeAmoCRM.secrets_transport`)."""


class Consent:
    """`/oauth`, `/oauth/allow`, `/oauth/deny`, the button script and `/oauth/install` of one
    fake (the caller holds the lock, except for `install`, which takes it itself)."""

    def __init__(self, core: Core, installer: Installer) -> None:
        self._core = core
        self._installer = installer

    def script(self, request: Request) -> FakeResponse:
        """The stand-in for amoCRM's button script (§7), on the consent host."""
        if not self._is_consent_host(request.host):
            return not_found()
        if request.method not in ("GET", "HEAD"):
            answer = problem(405, P.API_METHOD_NOT_ALLOWED)
            return attrs.evolve(answer, headers=(*answer.headers, ("allow", "GET, HEAD")))
        return FakeResponse(200, (("content-type", JAVASCRIPT),), BUTTON_SCRIPT)

    def page(self, request: Request) -> FakeResponse:
        """The consent page, with "Allow" and "Deny": the default account grants access, or,
        when the fake has several, the one the user picks (amoCRM lists the user's accounts).
        A site button in metadata mode (no `client_id`, a `secrets_uri`) gets the install
        page instead."""
        if _is_metadata_mode(request):
            return self._install_page(request)
        error, params, _ = self._check(request)
        if error is not None:
            return error
        fields: dict[str, str] = {
            key: params[key] for key in ("client_id", "state", "mode") if key in params
        }
        account = self._core.directory.account(None)
        page = _pages.consent_page(account.name, account.host, fields, self._choices())
        return html_answer(200, page)

    def _choices(self) -> list[tuple[str, str]]:
        accounts = self._core.directory.accounts
        return [(str(a.id), f"{a.name} ({a.host})") for a in accounts] if len(accounts) > 1 else []

    def _install_page(self, request: Request) -> FakeResponse:
        """A metadata-mode button's consent page: "Allow" installs a NEW integration."""
        refusal = self._metadata_refusal(request)
        if refusal is not None:
            return refusal
        carried = [(k, v) for k, v in request.query_pairs if k != "account"]
        scopes = [v for k, v in request.query_pairs if k == SCOPES_PARAMETER]
        query = request.query
        page = _pages.install_page(
            query["name"], query["description"], scopes, carried, self._choices()
        )
        return html_answer(200, page)

    def install(self, request: Request) -> FakeResponse:
        """ "Allow" pressed on a metadata-mode page: the install (a NEW integration, its
        credentials posted to `secrets_uri`), then a redirect with its code; a page saying
        so when `secrets_uri` did not answer 200 (amoCRM's popup stops there, §7).

        Called WITHOUT the fake's lock: the post to `secrets_uri` must not hold it."""
        with self._core.lock:
            refusal = self._metadata_refusal(request)
            account = self._picked(request.query.get("account"))
        if refusal is not None:
            return refusal
        if account is None:
            return html_answer(400, _pages.message_page("400 Bad Request", "Unknown account."))
        query = request.query
        try:
            done = self._installer(
                account, query["redirect_uri"], query["secrets_uri"], query["state"]
            )
        except ValueError as error:
            return html_answer(400, _pages.message_page("400 Bad Request", str(error)))
        if done.redirect_url is None:
            said = done.posts[-1].status or done.posts[-1].error
            message = f"The integration's secrets_uri answered {said}, not 200."
            return html_answer(502, _pages.message_page("Installation failed", message))
        return redirect(done.redirect_url)

    def _metadata_refusal(self, request: Request) -> FakeResponse | None:
        """Why a metadata-mode button's request is refused (a 400 page, or 404 off the
        consent host), or None: every field §7 requires, both URLs https, a state."""
        if not self._is_consent_host(request.host):
            return not_found()
        if request.method not in ("GET", "POST"):
            return html_answer(405, _pages.message_page("405", "Method not allowed."))
        query = request.query
        missing = [f for f in (*METADATA_FIELDS, SCOPES_PARAMETER, "state") if not query.get(f)]
        problems = [f"missing {', '.join(missing)}"] if missing else []
        problems += [
            found
            for name in ("redirect_uri", "secrets_uri")
            if name in query and (found := uri_problem(name, query[name])) is not None
        ]
        if not problems:
            return None
        return html_answer(400, _pages.message_page("400 Bad Request", "; ".join(problems)))

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


def _is_metadata_mode(request: Request) -> bool:
    # §7: a button without a client id, naming where the new integration's secrets go.
    return not request.query.get("client_id") and "secrets_uri" in request.query


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


def install_url(code: str, account: FakeAccount, integration: FakeIntegration, state: str) -> str:
    """The redirect after a metadata-mode install (§2, §7): a success redirect naming the NEW
    integration's client id, plus `platform` ([I] 1 = amocrm.ru, 2 = kommo.com; nothing
    public explains it: a client must rely on nothing in it)."""
    platform = "2" if account.domain == "kommo.com" else "1"
    params = [("code", code), ("state", state), ("referer", account.host)]
    params += [("client_id", integration.client_id), ("platform", platform)]
    return _redirect_url(integration, params)


def denied_url(integration: FakeIntegration, state: str | None) -> str:
    """The redirect after "Deny" (§2)."""
    params = [("error", "access_denied"), ("client_id", integration.client_id)]
    return _redirect_url(integration, params + ([] if state is None else [("state", state)]))


def _redirect_url(integration: FakeIntegration, params: list[tuple[str, str]]) -> str:
    separator = "&" if "?" in integration.redirect_uri else "?"
    return integration.redirect_uri + separator + urlencode(params)
