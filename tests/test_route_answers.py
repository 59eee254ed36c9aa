"""Every route answers only what its catalogue entry declares (issue 20 #8).

Each route is walked with every refusal its service call documents (the ``Raises`` of
``AmoOAuth.redeem_ticket``, ``handle_callback``, ``exchange_code`` and
``handle_disconnect_hook``), every outage the dispatch maps, and the refusals the web layer
makes itself; the status each gets must be one the route publishes (FastAPI's OpenAPI). The
legacy route, whose callers are the seed's mobile apps, answers every refusal 400 with its
reason, never 403.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator

import pytest

from amo_oauth import (
    AmoOAuth,
    CallbackRejected,
    ProviderError,
    StoreError,
    TryAgainLater,
    web,
)
from amo_oauth._driving import drive
from amo_oauth._reasons import RETRY_LATER, Reason
from amo_oauth.testing import FakeAmoCRM
from amo_oauth.web import Handlers, Request, Route
from amo_oauth.web._integrations import UseIntegration
from amo_oauth.web._routes import Identify
from test_web import PREFIX, post_code, sender, user_from_header

R = Reason


def documented(method: Callable[..., object]) -> set[Reason]:
    """The slugs a service method's docstring names under ``CallbackRejected:``."""
    raises = (method.__doc__ or "").partition("CallbackRejected:")[2]
    raises = re.split(r"\n\s*\w+(Error|Rejected|Required|Later):", raises)[0]
    return {Reason(slug) for slug in re.findall(r"``(\w+)``", raises) if slug in SLUGS}


SLUGS = {reason.value for reason in Reason}
#: What ``redeem_ticket`` documents, and the clock check it makes besides.
TICKET_REFUSALS = documented(AmoOAuth.redeem_ticket) | {R.CLOCK_SKEW}
#: What ``handle_callback`` documents, and besides: another integration's redirect
#: (``parse_callback``) and a state from a clock too far ahead.
CALLBACK_REFUSALS = documented(AmoOAuth.handle_callback) | {R.CLIENT_ID_MISMATCH, R.CLOCK_SKEW}
#: ``exchange_code``: "as ``handle_callback``, and ``new_code_refused``".
EXCHANGE_REFUSALS = CALLBACK_REFUSALS | documented(AmoOAuth.exchange_code)
HOOK_REFUSALS = documented(AmoOAuth.handle_disconnect_hook)


def test_the_documented_refusals_are_read() -> None:
    """The docstrings above are read as meant (a reworded one must not empty a set)."""
    assert {R.BAD_TICKET, R.EXPIRED_TICKET, R.USED_TICKET, R.WRONG_BROWSER} <= TICKET_REFUSALS
    assert {R.WRONG_BROWSER, R.RATE_LIMITED, R.BAD_STATE, R.MALFORMED} <= CALLBACK_REFUSALS
    assert {R.NEW_CODE_REFUSED, R.WRONG_BROWSER} <= EXCHANGE_REFUSALS
    assert {R.BAD_SIGNATURE, R.MALFORMED} == HOOK_REFUSALS


OUTAGES: list[Exception] = [
    StoreError("the store is down"),
    ProviderError(None, "amoCRM could not be reached", transient=True),
    *(TryAgainLater(reason, "later", retry_after=1.5) for reason in sorted(RETRY_LATER)),
]

JSON_BODY = {"content-type": "application/json"}
CODE_BODY = json.dumps({"code": "a-code"}).encode()


def request_for(route: Route, query: str = "", **headers: str) -> Request:
    body = CODE_BODY if route.name == "exchange_code" else b""
    more = JSON_BODY if route.name == "exchange_code" else {}
    return Request(route.method, PREFIX + route.path, query, {**more, **headers}, body)


def answered(handlers: Handlers, request: Request, failure: Exception, user: str | None) -> int:
    """The status ``request`` gets when its first service call raises ``failure``."""

    def perform(item: object) -> object:
        if isinstance(item, Identify):
            return user
        if isinstance(item, UseIntegration):  # one service: the only integration
            return None
        raise failure

    return drive(handlers.serve(request), perform).status


def service_refusals(route: Route) -> Iterator[tuple[Request, set[Reason]]]:
    """Each way a route reaches the service, with the refusals that call documents."""
    if route.name == "connect":
        yield request_for(route), set()  # begin() refuses nothing: only outages
        yield request_for(route, "ticket=t1.x.y"), TICKET_REFUSALS
    elif route.name == "callback":
        yield request_for(route, "code=c&state=s&referer=x.amocrm.ru"), CALLBACK_REFUSALS
    elif route.name == "exchange_code":
        yield request_for(route), EXCHANGE_REFUSALS
    elif route.name == "disconnect_hook":
        yield request_for(route, "client_uuid=c&account_id=1&signature=s"), HOOK_REFUSALS
    else:  # status, disconnect: the service refuses nothing there
        yield request_for(route), set()


@pytest.fixture
def handlers(oauth: AmoOAuth) -> Handlers:
    return Handlers(oauth, connection_id=user_from_header, app_scheme="foryoure")


def declared(route: Route) -> set[int]:
    return {status for status, _ in route.responses}


@pytest.mark.parametrize("route", web.ROUTES, ids=lambda route: route.name)
def test_every_refusal_of_the_service_is_a_declared_answer(
    handlers: Handlers, route: Route
) -> None:
    for request, reasons in service_refusals(route):
        failures = [*(CallbackRejected(reason) for reason in sorted(reasons)), *OUTAGES]
        for failure in failures:
            status = answered(handlers, request, failure, "user-42")
            what = f"{route.name} {request.param('ticket') and 'ticket'} {failure!r}"
            assert status in declared(route), what
            if route.legacy and isinstance(failure, CallbackRejected):
                assert status == 400, what


@pytest.mark.parametrize("route", web.ROUTES, ids=lambda route: route.name)
def test_the_web_layers_own_refusals_are_declared_answers(handlers: Handlers, route: Route) -> None:
    never_called = AssertionError("the service must not be called")
    ask_id = route.name in ("connect", "exchange_code", "status", "disconnect")
    cases = [
        (request_for(route, "x=" + "a" * 9000), "user-42"),  # 414
        (Request(route.method, PREFIX + route.path, body=b"x" * 17_000), "user-42"),  # 413
    ]
    if ask_id:
        cases += [(request_for(route), None), (request_for(route), "\x00")]  # 401, 400
    if route.method == "POST":
        cases.append((request_for(route, origin="https://evil.example"), "user-42"))  # 400
    if route.name == "exchange_code":
        post = Request("POST", PREFIX + route.path, body=b"x", headers={"content-type": "a/b"})
        cases.append((post, "user-42"))  # 415
    for request, user in cases:
        status = answered(handlers, request, never_called, user)
        assert status in declared(route), (route.name, status)


def test_no_route_declares_a_status_twice() -> None:
    """FastAPI keeps one description per status: a second one would vanish from OpenAPI."""
    for route in web.ROUTES:
        statuses = [status for status, _ in route.responses]
        assert len(statuses) == len(set(statuses)), route.name


def test_only_the_legacy_route_is_legacy_and_it_declares_no_403() -> None:
    assert [route.name for route in web.ROUTES if route.legacy] == ["exchange_code"]
    legacy = next(route for route in web.ROUTES if route.legacy)
    assert 403 not in declared(legacy)


def test_a_ticket_of_another_user_is_still_403_on_connect(handlers: Handlers) -> None:
    """The legacy mapping stays on the legacy route: elsewhere ``wrong_browser`` is 403."""
    connect = next(route for route in web.ROUTES if route.name == "connect")
    request = request_for(connect, "ticket=t1.x.y")
    assert answered(handlers, request, CallbackRejected(R.WRONG_BROWSER), "user-42") == 403


def test_the_legacy_route_answers_wrong_browser_400(
    handlers: Handlers, oauth: AmoOAuth, fake: FakeAmoCRM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's example: ``exchange_code`` refuses a new code with a bound state and no
    binding (``wrong_browser``); the legacy route says so with a 400, through the real
    service (made to claim new codes, as ``exchange_new=True`` does)."""
    send = sender(handlers)
    began = oauth.begin("user-42")
    real = AmoOAuth.exchange_code

    def claiming(self: AmoOAuth, *args: object, **kwargs: object) -> object:
        kwargs["exchange_new"] = True
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(AmoOAuth, "exchange_code", claiming)
    fields = {"code": fake.issue_code(), "state": began.state, "referer": fake.account_host}
    answer = post_code(send, fields)
    assert (answer.status, answer.json()) == (400, {"error": "wrong_browser"})
    assert fake.token_call_count() == 0
