"""The REST API slice the fake serves, and the account lookup.

`GET /api/v4/account` and `GET /api/v4/leads` on an account host, behind amoCRM's gate (a
moved or renamed host, a blocked or unpaid account, 7 requests per second, the bearer token;
protocol §5, §8, §9), and `GET /oauth2/account/current/subdomain` on a shared API host (§5).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from . import _protocol as P
from ._accounts import FakeAccount, is_api_host
from ._core import Core
from ._types import FakeResponse
from ._wire import Request, digest, json_answer, not_found, problem

Produce = Callable[[Request, FakeAccount], FakeResponse]
"""What one API path answers once the gate let the request through."""

# Country and currency shown by /api/v4/account, by the account's domain.
_LOCALES: Final = {"kommo.com": ("US", "USD", "$")}
_DEFAULT_LOCALE: Final = ("RU", "RUB", "₽")
_OUTCOMES: Final = {200: "ok", 204: "no_content"}


class Api:
    """The API paths and the lookup of one fake; each method answers one path (lock held)."""

    def __init__(self, core: Core) -> None:
        self._core = core

    def account(self, request: Request) -> FakeResponse:
        """`GET /api/v4/account`."""
        return self._api(request, _account_payload)

    def leads(self, request: Request) -> FakeResponse:
        """`GET /api/v4/leads?page=&limit=`: the account's leads, a page at a time."""
        return self._api(request, _leads_page)

    def lookup(self, request: Request) -> FakeResponse:
        """`GET /oauth2/account/current/subdomain` with `X-Refresh-Token` (§5)."""
        if not any(is_api_host(request.host, domain) for domain in self._core.directory.domains):
            return not_found()

        def note(outcome: str) -> None:
            self._core.tally.lookup_log[(request.host, outcome)] += 1

        return self._core.answer("lookup", None, request, lambda: self._lookup(request), note)

    def _api(self, request: Request, produce: Produce) -> FakeResponse:
        account = self._core.directory.account_at(request.host)
        account_id = None if account is None else account.id

        def note(outcome: str) -> None:
            self._core.tally.api_log[(request.path, outcome, account_id)] += 1
            bearer = _bearer(request)
            if bearer:
                self._core.tally.bearer_presented[digest(bearer)] += 1

        def work() -> tuple[str, FakeResponse]:
            outcome, answer = self._gate(request, account)
            if answer is None and account is not None:
                answer = produce(request, account)
                outcome = _OUTCOMES.get(answer.status, "bad_request")
            return outcome, answer or not_found()

        return self._core.answer("api", None, request, work, note)

    def _gate(
        self, request: Request, account: FakeAccount | None
    ) -> tuple[str, FakeResponse | None]:
        if request.method != "GET":
            return "method_not_allowed", problem(405, P.API_METHOD_NOT_ALLOWED)
        if account is None:
            if self._core.directory.moved_from(request.host):
                return "not_found", not_found()
            return "unauthorized", problem(401, P.API_UNAUTHORIZED)
        if account.blocked:
            return "blocked", problem(403, P.API_FORBIDDEN)
        if not self._within_rate_limit(account):
            return "rate_limited", problem(429, P.API_TOO_MANY)
        record = self._core.grants.live_access(_bearer(request))
        if record is None or record.account is not account:
            return "unauthorized", problem(401, P.API_UNAUTHORIZED)
        self._core.grants.first_use(record)
        if not account.paid:
            return "payment_required", problem(402, P.API_PAYMENT_REQUIRED)
        return "ok", None

    def _within_rate_limit(self, account: FakeAccount) -> bool:
        limit = self._core.knobs.rate_limit
        if limit is None:
            return True
        now = self._core.monotonic()
        window = account.window
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= limit:
            return False  # refused requests do not count, so a client that backs off recovers
        window.append(now)
        return True

    def _lookup(self, request: Request) -> tuple[str, FakeResponse]:
        if request.method != "GET":
            return "method_not_allowed", problem(405, P.API_METHOD_NOT_ALLOWED)
        tally = self._core.tally
        if "authorization" in request.headers:
            tally.lookup_authorization += 1
        token = request.headers.get("x-refresh-token", "").strip()
        if token:
            tally.lookup_presented[digest(token)] += 1
        record = self._core.grants.live_refresh(token) if token else None
        if record is None:
            return "unauthorized", problem(401, P.API_UNAUTHORIZED)
        account = record.account
        if account.blocked:
            return "blocked", problem(403, P.API_FORBIDDEN)
        payload = {
            "id": account.id,
            "subdomain": account.subdomain,
            "domain": account.host,  # [I] §5: the SDK treats it like `referer`, a full host
            "top_level_domain": account.domain.rpartition(".")[2],
        }
        return "ok", json_answer(200, payload)


def _bearer(request: Request) -> str:
    # Only a bearer token can be an access token; anything else matches none.
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _account_payload(request: Request, account: FakeAccount) -> FakeResponse:
    country, currency, symbol = _LOCALES.get(account.domain, _DEFAULT_LOCALE)
    payload = {
        "id": account.id,
        "name": account.name,
        "subdomain": account.subdomain,
        "current_user_id": account.user_id,
        "country": country,
        "currency": currency,
        "currency_symbol": symbol,
        "customers_mode": "disabled",
        "is_unsorted_on": True,
        "is_loss_reason_enabled": True,
        "is_helpbot_enabled": False,
        "is_technical_account": False,
        "contact_name_display_order": 1,
        "_links": {"self": {"href": f"https://{account.host}/api/v4/account"}},
    }
    return json_answer(200, payload, P.HAL_JSON)


def _leads_page(request: Request, account: FakeAccount) -> FakeResponse:
    page = _positive_int(request.query.get("page"), 1)
    limit = _positive_int(request.query.get("limit"), P.LEADS_DEFAULT_LIMIT)
    if page is None or limit is None or limit > P.LEADS_MAX_LIMIT:
        return problem(400, P.API_BAD_REQUEST)
    chunk = account.leads[(page - 1) * limit : page * limit]
    if not chunk:
        return FakeResponse(204)  # amoCRM's "nothing here": no body at all
    base = f"https://{account.host}/api/v4/leads"
    links = {"self": {"href": f"{base}?page={page}&limit={limit}"}}
    if page * limit < len(account.leads):
        links["next"] = {"href": f"{base}?page={page + 1}&limit={limit}"}
    leads = [lead | {"_links": {"self": {"href": f"{base}/{lead['id']}"}}} for lead in chunk]
    payload = {"_page": page, "_links": links, "_embedded": {"leads": leads}}
    return json_answer(200, payload, P.HAL_JSON)


def _positive_int(text: str | None, default: int) -> int | None:
    if text is None:
        return default
    # isascii(): str.isdigit() also accepts digits like "²" that int() refuses.
    return int(text) if text.isascii() and text.isdigit() and int(text) > 0 else None


def new_lead(account: FakeAccount, fields: Mapping[str, Any], now: int) -> dict[str, Any]:
    """A lead for `account`: `fields`, the missing ones filled in (the next id, "Lead #<id>",
    price id*1000, ...), created and updated at `now` (Unix seconds)."""
    lead_id = fields.get("id", max((lead["id"] for lead in account.leads), default=0) + 1)
    defaults = {
        "id": lead_id,
        "name": f"Lead #{lead_id}",
        "price": lead_id * 1000,
        "responsible_user_id": account.user_id,
        "status_id": 142,
        "pipeline_id": 1,
        "account_id": account.id,
        "created_at": now,
        "updated_at": now,
    }
    return defaults | dict(fields)
