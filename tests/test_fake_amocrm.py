"""FakeAmoCRM: every endpoint, every exact error body, the knobs, the wrappers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

import amo_oauth.testing
from amo_oauth.testing import (
    FakeAccount,
    FakeAmoCRM,
    FakeClock,
    FakeIntegration,
    FakeResponse,
    RawJSON,
    RequestRecord,
)

START = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
TOKEN_URL = "https://test.amocrm.ru/oauth2/access_token"
ACCOUNT_URL = "https://test.amocrm.ru/api/v4/account"
LEADS_URL = "https://test.amocrm.ru/api/v4/leads"
OAUTH_TYPE = "https://developers.amocrm.ru/v3/errors/OAuthProblemJson"
BAD_TITLE = "Некорректный запрос"
BAD_DETAIL = "В запросе отсутствует ряд параметров или параметры невалидны"
REDIRECT = "https://backend.example/api/amo-crm/callback"


def oauth_problem(status: int, hint: str) -> dict[str, Any]:
    return {
        "hint": hint,
        "title": BAD_TITLE,
        "type": OAUTH_TYPE,
        "status": status,
        "detail": BAD_DETAIL,
    }


BAD_SECRET_BODY = {
    "title": "Некорректный клиент",
    "type": OAUTH_TYPE,
    "status": 401,
    "detail": "Авторизация клиента не прошла",
}
API_401_BODY = {
    "title": "Unauthorized",
    "type": "https://httpstatus.es/401",
    "status": 401,
    "detail": "Неверный логин или пароль",
}


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def fake(clock: FakeClock) -> FakeAmoCRM:
    return FakeAmoCRM(clock=clock, rate_limit=None)


@pytest.fixture
def http(fake: FakeAmoCRM) -> httpx.Client:
    return httpx.Client(transport=fake.transport())


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def code_body(fake: FakeAmoCRM, code: str, /, **overrides: str) -> dict[str, str]:
    body = {
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": fake.redirect_uri,
    }
    return {**body, **overrides}


def refresh_body(fake: FakeAmoCRM, token: str, /, **overrides: str) -> dict[str, str]:
    body = {
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "grant_type": "refresh_token",
        "refresh_token": token,
        "redirect_uri": fake.redirect_uri,
    }
    return {**body, **overrides}


def exchange(
    http: httpx.Client,
    fake: FakeAmoCRM,
    code: str | None = None,
    /,
    url: str = TOKEN_URL,
    **overrides: str,
) -> httpx.Response:
    return http.post(url, json=code_body(fake, code or fake.issue_code(), **overrides))


def refresh(http: httpx.Client, fake: FakeAmoCRM, token: str, **overrides: str) -> httpx.Response:
    return http.post(TOKEN_URL, json=refresh_body(fake, token, **overrides))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def jwt_part(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def connect(http: httpx.Client, fake: FakeAmoCRM) -> dict[str, Any]:
    response = exchange(http, fake)
    assert response.status_code == 200
    tokens: dict[str, Any] = response.json()
    return tokens


# -- public surface --------------------------------------------------------------------------


def test_all_is_sorted_and_exports_the_public_names() -> None:
    assert amo_oauth.testing.__all__ == sorted(amo_oauth.testing.__all__)
    assert {"FakeAmoCRM", "FakeClock", "FakeResponse", "RequestRecord", "ServedFake"} <= set(
        amo_oauth.testing.__all__
    )


def test_defaults_and_repr_without_secrets(fake: FakeAmoCRM, http: httpx.Client) -> None:
    tokens = connect(http, fake)
    assert (fake.client_id, fake.client_secret, fake.redirect_uri) == (
        "fake-client-id",
        "fake-client-secret",
        REDIRECT,
    )
    assert (fake.account_host, fake.consent_host, fake.api_domain, fake.account_id) == (
        "test.amocrm.ru",
        "www.amocrm.ru",
        "api-b.amocrm.ru",
        31415926,
    )
    text = repr(fake)
    assert text == (
        "FakeAmoCRM(account_host='test.amocrm.ru', account_id=31415926, client_id='fake-client-id')"
    )
    for secret in (fake.client_secret, tokens["access_token"], tokens["refresh_token"]):
        assert secret not in text
        assert secret not in repr(fake.requests)


def test_constructor_rejects_bad_knobs() -> None:
    with pytest.raises(ValueError, match="rate_limit"):
        FakeAmoCRM(rate_limit=0)
    with pytest.raises(ValueError, match="latency"):
        FakeAmoCRM(latency=-1)


# -- FakeClock -------------------------------------------------------------------------------


def test_fake_clock_advances_only_when_told() -> None:
    clock = FakeClock(START)
    assert clock() == START
    assert clock.advance(90) == START + timedelta(seconds=90)
    assert clock.advance(timedelta(minutes=1)) == START + timedelta(seconds=150)
    assert clock() == START + timedelta(seconds=150)
    with pytest.raises(ValueError, match="non-negative"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="naive"):
        FakeClock(datetime(2025, 1, 1))


def test_fake_clock_default_start_is_now_in_whole_seconds() -> None:
    now = datetime.now(UTC)
    start = FakeClock()()
    assert start.tzinfo is UTC
    assert start.microsecond == 0
    assert abs((start - now).total_seconds()) < 2


def test_fake_clock_is_thread_safe() -> None:
    clock = FakeClock(START)
    threads = [
        threading.Thread(target=lambda: [clock.advance(1) for _ in range(100)]) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clock() == START + timedelta(seconds=800)


def test_naive_clock_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        FakeAmoCRM(clock=lambda: datetime(2025, 1, 1))


# -- token endpoint: success -----------------------------------------------------------------


def test_code_exchange_answers_the_documented_shape(
    fake: FakeAmoCRM, http: httpx.Client, clock: FakeClock
) -> None:
    response = exchange(http, fake)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == [
        "token_type",
        "expires_in",
        "server_time",
        "access_token",
        "refresh_token",
    ]
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 86400
    assert body["server_time"] == int(START.timestamp())
    assert re.fullmatch(r"def50200[0-9a-f]{320}", body["refresh_token"])
    assert fake.token_calls == Counter({("authorization_code", "ok"): 1})


def test_access_token_is_a_jwt_with_the_documented_claims(
    fake: FakeAmoCRM, http: httpx.Client
) -> None:
    token = connect(http, fake)["access_token"]
    assert re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+", token)
    claims = jwt_part(token, 1)
    iat = int(START.timestamp())
    assert re.fullmatch(r"[0-9a-f]{80}", claims.pop("jti"))
    assert claims == {
        "aud": "fake-client-id",
        "iat": iat,
        "nbf": iat,
        "exp": iat + 86400,
        "sub": "2718281",
        "account_id": 31415926,
        "base_domain": "amocrm.ru",
        "api_domain": "api-b.amocrm.ru",
        "version": 2,
        "scopes": ["crm", "notifications"],
    }
    assert jwt_part(token, 0) == {"typ": "JWT", "alg": "RS256", "jti": jwt_part(token, 1)["jti"]}


def test_every_token_is_unique(fake: FakeAmoCRM, http: httpx.Client) -> None:
    first, second = connect(http, fake), connect(http, fake)
    assert first["access_token"] != second["access_token"]
    assert first["refresh_token"] != second["refresh_token"]


def test_form_encoded_body_is_accepted(fake: FakeAmoCRM, http: httpx.Client) -> None:
    response = http.post(TOKEN_URL, data=code_body(fake, fake.issue_code()))
    assert response.status_code == 200
    assert response.json()["token_type"] == "Bearer"


def test_kommo_domain(clock: FakeClock) -> None:
    fake = FakeAmoCRM(domain="kommo.com", subdomain="acme", clock=clock)
    http = httpx.Client(transport=fake.transport())
    tokens = exchange(http, fake, url="https://acme.kommo.com/oauth2/access_token").json()
    assert jwt_part(tokens["access_token"], 1)["api_domain"] == "api-b.kommo.com"
    account = http.get(
        "https://acme.kommo.com/api/v4/account", headers=bearer(tokens["access_token"])
    ).json()
    assert (account["subdomain"], account["country"], account["currency"]) == ("acme", "US", "USD")


# -- token endpoint: every exact error body ----------------------------------------------------

ERROR_CASES = [
    # (case id, request overrides, host, status, body, outcome slug)
    (
        "wrong_client_id",
        {"client_id": "other"},
        "test",
        400,
        oauth_problem(400, "Check the `client_id` parameter"),
        "bad_client_id",
    ),
    (
        "missing_client_id",
        {"client_id": ""},
        "test",
        400,
        oauth_problem(400, "Check the `client_id` parameter"),
        "missing_client_id",
    ),
    ("wrong_secret", {"client_secret": "nope"}, "test", 401, BAD_SECRET_BODY, "bad_secret"),
    (
        "missing_secret",
        {"client_secret": ""},
        "test",
        400,
        oauth_problem(400, "Check the `client_secret` parameter"),
        "missing_client_secret",
    ),
    (
        "wrong_redirect",
        {"redirect_uri": "https://evil.example/cb"},
        "test",
        400,
        oauth_problem(400, "Redirect URI is not associated with client"),
        "bad_redirect_uri",
    ),
    (
        "missing_redirect",
        {"redirect_uri": ""},
        "test",
        400,
        oauth_problem(400, "Check the `redirect_uri` parameter"),
        "missing_redirect_uri",
    ),
    (
        "garbage_code",
        {"code": "def50200garbage"},
        "test",
        400,
        oauth_problem(400, "Cannot decrypt the authorization code"),
        "code_garbage",
    ),
    (
        "missing_code",
        {"code": ""},
        "test",
        400,
        oauth_problem(400, "Check the `code` parameter"),
        "missing_code",
    ),
    ("www_host", {}, "www", 400, oauth_problem(400, "Invalid account"), "invalid_account"),
    ("other_subdomain", {}, "other", 400, oauth_problem(400, "Invalid account"), "invalid_account"),
    ("api_host", {}, "api-b", 400, oauth_problem(400, "Invalid account"), "invalid_account"),
]


@pytest.mark.parametrize(
    ("overrides", "sub", "status", "body", "outcome"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_token_errors_have_the_exact_documented_bodies(
    fake: FakeAmoCRM,
    http: httpx.Client,
    overrides: dict[str, str],
    sub: str,
    status: int,
    body: dict[str, Any],
    outcome: str,
) -> None:
    code = fake.issue_code()
    response = exchange(
        http, fake, code, url=f"https://{sub}.amocrm.ru/oauth2/access_token", **overrides
    )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == body
    assert next(iter(response.json())) == ("hint" if "hint" in body else "title")
    assert fake.token_calls == Counter({("authorization_code", outcome): 1})
    # A rejected request never consumes the code.
    assert exchange(http, fake, code).status_code == 200


def test_unknown_grant_type(fake: FakeAmoCRM, http: httpx.Client) -> None:
    response = http.post(TOKEN_URL, json=code_body(fake, "x", grant_type="password"))
    assert (response.status_code, response.json()) == (
        400,
        oauth_problem(400, "Check the `grant_type` parameter"),
    )
    assert fake.token_calls == Counter({("unknown", "bad_grant_type"): 1})


def test_non_string_parameters_count_as_missing(fake: FakeAmoCRM, http: httpx.Client) -> None:
    body: dict[str, Any] = code_body(fake, fake.issue_code())
    body["client_id"] = 12345
    response = http.post(TOKEN_URL, json=body)
    assert response.json() == oauth_problem(400, "Check the `client_id` parameter")


def test_token_endpoint_is_post_only(http: httpx.Client) -> None:
    response = http.get(TOKEN_URL)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_code_is_single_use(fake: FakeAmoCRM, http: httpx.Client) -> None:
    code = fake.issue_code()
    assert exchange(http, fake, code).status_code == 200
    again = exchange(http, fake, code)
    assert (again.status_code, again.json()) == (
        400,
        oauth_problem(400, "Authorization code has been revoked"),
    )
    assert fake.token_calls == Counter(
        {("authorization_code", "ok"): 1, ("authorization_code", "code_revoked"): 1}
    )
    assert (fake.codes_issued, fake.codes_exchanged) == (1, 1)


def test_code_expires_after_exactly_20_minutes(
    fake: FakeAmoCRM, http: httpx.Client, clock: FakeClock
) -> None:
    almost, expired = fake.issue_code(), fake.issue_code()
    clock.advance(timedelta(minutes=20) - timedelta(seconds=1))
    assert exchange(http, fake, almost).status_code == 200
    clock.advance(1)
    response = exchange(http, fake, expired)
    assert (response.status_code, response.json()) == (
        400,
        oauth_problem(400, "Authorization code has expired"),
    )
    assert fake.token_call_count(outcome="code_expired") == 1


# -- refresh ---------------------------------------------------------------------------------


def test_refresh_rotates_and_the_old_token_is_revoked(fake: FakeAmoCRM, http: httpx.Client) -> None:
    first = connect(http, fake)
    response = refresh(http, fake, first["refresh_token"])
    assert response.status_code == 200
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    reused = refresh(http, fake, first["refresh_token"])
    assert (reused.status_code, reused.headers["content-type"], reused.json()) == (
        401,
        "application/problem+json",
        oauth_problem(401, "Token has been revoked"),
    )
    assert refresh(http, fake, second["refresh_token"]).status_code == 200
    assert fake.token_calls == Counter(
        {
            ("authorization_code", "ok"): 1,
            ("refresh_token", "ok"): 2,
            ("refresh_token", "token_revoked"): 1,
        }
    )
    assert fake.token_call_count("refresh_token") == 3


def test_refresh_keeps_the_previous_access_token_valid_until_exp(
    fake: FakeAmoCRM, http: httpx.Client, clock: FakeClock
) -> None:
    first = connect(http, fake)
    clock.advance(timedelta(hours=23))
    refresh(http, fake, first["refresh_token"])
    assert http.get(ACCOUNT_URL, headers=bearer(first["access_token"])).status_code == 200
    clock.advance(timedelta(hours=1))
    assert http.get(ACCOUNT_URL, headers=bearer(first["access_token"])).status_code == 401


def test_refresh_token_lives_90_days(
    fake: FakeAmoCRM, http: httpx.Client, clock: FakeClock
) -> None:
    early, late = connect(http, fake), connect(http, fake)
    clock.advance(timedelta(days=90) - timedelta(seconds=1))
    assert refresh(http, fake, early["refresh_token"]).status_code == 200
    clock.advance(1)
    response = refresh(http, fake, late["refresh_token"])
    assert (response.status_code, response.json()) == (
        401,
        oauth_problem(401, "Token has been revoked"),
    )


def test_refresh_errors(fake: FakeAmoCRM, http: httpx.Client) -> None:
    token = connect(http, fake)["refresh_token"]
    garbage = refresh(http, fake, "def50200nothing")
    assert (garbage.status_code, garbage.json()) == (
        401,
        oauth_problem(401, "Cannot decrypt the refresh token"),
    )
    missing = refresh(http, fake, "")
    assert (missing.status_code, missing.json()) == (
        400,
        oauth_problem(400, "Check the `refresh_token` parameter"),
    )
    bad_secret = refresh(http, fake, token, client_secret="nope")
    assert (bad_secret.status_code, bad_secret.json()) == (401, BAD_SECRET_BODY)
    www = http.post("https://www.amocrm.ru/oauth2/access_token", json=refresh_body(fake, token))
    assert www.json() == oauth_problem(400, "Invalid account")
    assert refresh(http, fake, token).status_code == 200  # none of the above spent it
    assert fake.token_calls == Counter(
        {
            ("authorization_code", "ok"): 1,
            ("refresh_token", "refresh_garbage"): 1,
            ("refresh_token", "missing_refresh_token"): 1,
            ("refresh_token", "bad_secret"): 1,
            ("refresh_token", "invalid_account"): 1,
            ("refresh_token", "ok"): 1,
        }
    )


def test_revoke_refresh_tokens(fake: FakeAmoCRM, http: httpx.Client) -> None:
    tokens = [connect(http, fake)["refresh_token"] for _ in range(2)]
    assert fake.revoke_refresh_tokens() == 2
    assert fake.revoke_refresh_tokens() == 0
    for token in tokens:
        assert refresh(http, fake, token).json()["hint"] == "Token has been revoked"


# -- REST API --------------------------------------------------------------------------------


def test_account_endpoint(fake: FakeAmoCRM, http: httpx.Client) -> None:
    token = connect(http, fake)["access_token"]
    response = http.get(ACCOUNT_URL, headers=bearer(token))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/hal+json"
    body = response.json()
    assert {
        key: body[key]
        for key in ("id", "name", "subdomain", "current_user_id", "country", "currency")
    } == {
        "id": 31415926,
        "name": "Test account",
        "subdomain": "test",
        "current_user_id": 2718281,
        "country": "RU",
        "currency": "RUB",
    }
    assert body["_links"] == {"self": {"href": ACCOUNT_URL}}
    assert fake.api_calls == Counter({("/api/v4/account", "ok"): 1})


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic abc"},
        {"Authorization": ""},
    ],
)
def test_account_endpoint_rejects_missing_or_bad_tokens(
    http: httpx.Client, fake: FakeAmoCRM, headers: dict[str, str]
) -> None:
    response = http.get(ACCOUNT_URL, headers=headers)
    assert (response.status_code, response.headers["content-type"], response.json()) == (
        401,
        "application/problem+json",
        API_401_BODY,
    )
    assert fake.api_calls == Counter({("/api/v4/account", "unauthorized"): 1})


def test_access_token_expires_after_24_hours(
    fake: FakeAmoCRM, http: httpx.Client, clock: FakeClock
) -> None:
    token = connect(http, fake)["access_token"]
    clock.advance(timedelta(hours=24) - timedelta(seconds=1))
    assert fake.is_access_token_valid(token)
    assert http.get(ACCOUNT_URL, headers=bearer(token)).status_code == 200
    clock.advance(1)
    assert not fake.is_access_token_valid(token)
    assert http.get(ACCOUNT_URL, headers=bearer(token)).json() == API_401_BODY


def test_expire_access_tokens(fake: FakeAmoCRM, http: httpx.Client) -> None:
    token = connect(http, fake)["access_token"]
    assert fake.expire_access_tokens() == 1
    assert fake.expire_access_tokens() == 0
    assert http.get(ACCOUNT_URL, headers=bearer(token)).status_code == 401
    # The token itself still claims to be valid: only the server knows.
    assert jwt_part(token, 1)["exp"] == int(START.timestamp()) + 86400


def test_token_only_opens_its_own_account(fake: FakeAmoCRM, http: httpx.Client) -> None:
    token = connect(http, fake)["access_token"]
    response = http.get("https://other.amocrm.ru/api/v4/account", headers=bearer(token))
    assert response.status_code == 401


def test_api_is_get_only_and_unknown_paths_are_404(fake: FakeAmoCRM, http: httpx.Client) -> None:
    token = connect(http, fake)["access_token"]
    assert http.post(ACCOUNT_URL, headers=bearer(token)).status_code == 405
    missing = http.get("https://test.amocrm.ru/api/v4/nothing", headers=bearer(token))
    assert (missing.status_code, missing.json()["status"]) == (404, 404)


def test_leads_pagination(clock: FakeClock) -> None:
    fake = FakeAmoCRM(clock=clock, rate_limit=None, leads=7)
    http = httpx.Client(transport=fake.transport())
    token = connect(http, fake)["access_token"]
    pages = [
        http.get(LEADS_URL, params={"page": n, "limit": 3}, headers=bearer(token))
        for n in (1, 2, 3)
    ]
    assert [page.headers["content-type"] for page in pages] == ["application/hal+json"] * 3
    bodies = [page.json() for page in pages]
    assert [body["_page"] for body in bodies] == [1, 2, 3]
    assert [[lead["id"] for lead in body["_embedded"]["leads"]] for body in bodies] == [
        [1, 2, 3],
        [4, 5, 6],
        [7],
    ]
    assert bodies[0]["_links"] == {
        "self": {"href": f"{LEADS_URL}?page=1&limit=3"},
        "next": {"href": f"{LEADS_URL}?page=2&limit=3"},
    }
    assert bodies[2]["_links"] == {"self": {"href": f"{LEADS_URL}?page=3&limit=3"}}
    lead = bodies[0]["_embedded"]["leads"][1]
    assert (lead["name"], lead["price"], lead["_links"]) == (
        "Lead #2",
        2000,
        {"self": {"href": f"{LEADS_URL}/2"}},
    )
    beyond = http.get(LEADS_URL, params={"page": 4, "limit": 3}, headers=bearer(token))
    assert (beyond.status_code, beyond.content, beyond.headers.get("content-type")) == (
        204,
        b"",
        None,
    )


def test_leads_limits(fake: FakeAmoCRM, http: httpx.Client) -> None:
    token = connect(http, fake)["access_token"]
    default = http.get(LEADS_URL, headers=bearer(token)).json()
    assert default["_links"]["self"]["href"] == f"{LEADS_URL}?page=1&limit=50"
    assert len(default["_embedded"]["leads"]) == 3
    assert http.get(LEADS_URL, params={"limit": 250}, headers=bearer(token)).status_code == 200
    for params in ({"limit": 251}, {"limit": 0}, {"page": 0}, {"page": "x"}, {"page": "²"}):
        response = http.get(LEADS_URL, params=params, headers=bearer(token))
        assert (response.status_code, response.json()["status"]) == (400, 400), params
    assert fake.api_calls[("/api/v4/leads", "bad_request")] == 5


def test_no_leads_is_204(clock: FakeClock) -> None:
    fake = FakeAmoCRM(clock=clock, leads=0)
    http = httpx.Client(transport=fake.transport())
    response = http.get(LEADS_URL, headers=bearer(connect(http, fake)["access_token"]))
    assert (response.status_code, response.content) == (204, b"")
    assert fake.api_calls == Counter({("/api/v4/leads", "no_content"): 1})


def test_seeded_and_added_leads(clock: FakeClock) -> None:
    fake = FakeAmoCRM(clock=clock, leads=[{"id": 10, "name": "Big deal", "price": 5}])
    assert fake.add_leads(2) == [
        {
            "id": 11,
            "name": "Lead #11",
            "price": 11000,
            "responsible_user_id": 2718281,
            "status_id": 142,
            "pipeline_id": 1,
            "account_id": 31415926,
            "created_at": int(START.timestamp()),
            "updated_at": int(START.timestamp()),
        },
        {
            "id": 12,
            "name": "Lead #12",
            "price": 12000,
            "responsible_user_id": 2718281,
            "status_id": 142,
            "pipeline_id": 1,
            "account_id": 31415926,
            "created_at": int(START.timestamp()),
            "updated_at": int(START.timestamp()),
        },
    ]
    http = httpx.Client(transport=fake.transport())
    leads = http.get(LEADS_URL, headers=bearer(connect(http, fake)["access_token"])).json()
    assert [(lead["id"], lead["name"]) for lead in leads["_embedded"]["leads"]] == [
        (10, "Big deal"),
        (11, "Lead #11"),
        (12, "Lead #12"),
    ]


def test_rate_limit_429_with_sliding_window(clock: FakeClock) -> None:
    now = [100.0]
    fake = FakeAmoCRM(clock=clock, rate_limit=7, monotonic=lambda: now[0])
    http = httpx.Client(transport=fake.transport())
    token = connect(http, fake)["access_token"]
    statuses = [http.get(ACCOUNT_URL, headers=bearer(token)).status_code for _ in range(7)]
    assert statuses == [200] * 7
    now[0] += 0.5
    refused = http.get(ACCOUNT_URL, headers=bearer(token))
    assert (refused.status_code, refused.headers["content-type"]) == (
        429,
        "application/problem+json",
    )
    assert refused.json() == {
        "title": "Too Many Requests",
        "type": "https://httpstatus.es/429",
        "status": 429,
        "detail": "Too many requests per second",
        "retry_after": 300,
    }
    # The limit counts requests per account, authorized or not.
    assert http.get(LEADS_URL).status_code == 429
    now[0] += 0.5  # the first seven are now exactly one second old
    assert http.get(ACCOUNT_URL, headers=bearer(token)).status_code == 200
    assert fake.api_calls == Counter(
        {
            ("/api/v4/account", "ok"): 8,
            ("/api/v4/account", "rate_limited"): 1,
            ("/api/v4/leads", "rate_limited"): 1,
        }
    )
    # The token endpoint is not rate limited.
    assert exchange(http, fake).status_code == 200


def test_rate_limit_real_time_and_disabled(clock: FakeClock) -> None:
    limited = FakeAmoCRM(clock=clock)
    http = httpx.Client(transport=limited.transport())
    statuses = [http.get(ACCOUNT_URL).status_code for _ in range(8)]
    assert statuses == [401] * 7 + [429]
    unlimited = FakeAmoCRM(clock=clock, rate_limit=None)
    http = httpx.Client(transport=unlimited.transport())
    assert {http.get(ACCOUNT_URL).status_code for _ in range(30)} == {401}


# -- consent page and redirects ----------------------------------------------------------------


def test_authorize_builds_the_documented_redirect(fake: FakeAmoCRM) -> None:
    url = fake.authorize("st-1")
    assert url.startswith(REDIRECT + "?code=def50200")
    params = query_of(url)
    assert list(params) == ["code", "state", "referer", "client_id"]
    assert (params["state"], params["referer"], params["client_id"]) == (
        "st-1",
        "test.amocrm.ru",
        "fake-client-id",
    )
    assert list(query_of(fake.authorize())) == ["code", "referer", "client_id"]
    assert fake.codes_issued == 2


def test_authorize_from_widget_has_no_state(fake: FakeAmoCRM) -> None:
    params = query_of(fake.authorize(from_widget=True))
    assert list(params) == ["code", "referer", "client_id", "from_widget"]
    assert params["from_widget"] == "1"
    with pytest.raises(ValueError, match="no state"):
        fake.authorize("st", from_widget=True)


def test_deny_builds_the_documented_redirect(fake: FakeAmoCRM) -> None:
    denied = f"{REDIRECT}?error=access_denied&client_id=fake-client-id"
    assert fake.deny("st-1") == f"{denied}&state=st-1"
    assert fake.deny() == f"{REDIRECT}?error=access_denied&client_id=fake-client-id"


def test_redirect_uri_with_a_query(clock: FakeClock) -> None:
    fake = FakeAmoCRM(clock=clock, redirect_uri="https://app.example/cb?tenant=7")
    assert (
        fake.deny()
        == "https://app.example/cb?tenant=7&error=access_denied&client_id=fake-client-id"
    )


def test_codes_from_authorize_are_exchangeable(fake: FakeAmoCRM, http: httpx.Client) -> None:
    code = query_of(fake.authorize("s"))["code"]
    assert exchange(http, fake, code).status_code == 200


def test_consent_page_allow_and_deny(fake: FakeAmoCRM, http: httpx.Client) -> None:
    url = fake.authorization_url("st <1>", mode="popup")
    assert url == (
        "https://www.amocrm.ru/oauth?client_id=fake-client-id&state=st+%3C1%3E&mode=popup"
    )
    page = http.get(url)
    assert (page.status_code, page.headers["content-type"]) == (200, "text/html; charset=utf-8")
    html = page.text
    for needle in (
        "<main>",
        "<h1>",
        'id="allow"',
        'id="deny"',
        '<html lang="en">',
        'action="/oauth/allow"',
        'action="/oauth/deny"',
        'name="state" value="st &lt;1&gt;"',
        "Test account",
    ):
        assert needle in html
    allow = http.get(
        "https://www.amocrm.ru/oauth/allow",
        params={"client_id": fake.client_id, "state": "st <1>", "mode": "popup"},
    )
    assert allow.status_code == 302
    params = query_of(allow.headers["location"])
    assert (params["state"], params["referer"]) == ("st <1>", "test.amocrm.ru")
    assert exchange(http, fake, params["code"]).status_code == 200
    deny = http.get(
        "https://www.amocrm.ru/oauth/deny", params={"client_id": fake.client_id, "state": "s2"}
    )
    assert (deny.status_code, deny.headers["location"]) == (
        302,
        f"{REDIRECT}?error=access_denied&client_id=fake-client-id&state=s2",
    )


def test_consent_allow_accepts_a_posted_form(fake: FakeAmoCRM, http: httpx.Client) -> None:
    response = http.post(
        "https://www.amocrm.ru/oauth/allow", data={"client_id": fake.client_id, "state": "p"}
    )
    assert response.status_code == 302
    assert query_of(response.headers["location"])["state"] == "p"


def test_consent_page_rejects_unknown_client(fake: FakeAmoCRM, http: httpx.Client) -> None:
    for path in ("/oauth", "/oauth/allow", "/oauth/deny"):
        response = http.get(f"https://www.amocrm.ru{path}", params={"client_id": "other"})
        assert response.status_code == 400
        assert "<main>" in response.text
    assert fake.codes_issued == 0


def test_consent_page_is_not_on_the_account_host(http: httpx.Client, fake: FakeAmoCRM) -> None:
    response = http.get("https://test.amocrm.ru/oauth", params={"client_id": fake.client_id})
    assert response.status_code == 404


# -- disconnect hook -------------------------------------------------------------------------


def test_uninstall_signs_the_hook_and_revokes_everything(
    fake: FakeAmoCRM, http: httpx.Client
) -> None:
    tokens = connect(http, fake)
    pending = fake.issue_code()
    hook = fake.uninstall()
    expected = hmac.new(
        b"fake-client-secret", b"fake-client-id|31415926", hashlib.sha256
    ).hexdigest()
    assert hook == {
        "client_uuid": "fake-client-id",
        "account_id": "31415926",
        "signature": expected,
    }
    assert re.fullmatch(r"[0-9a-f]{64}", hook["signature"])
    assert FakeAmoCRM.HOOK_USER_AGENT == "amoService-oAuth-Code-Sender/1.0"
    assert http.get(ACCOUNT_URL, headers=bearer(tokens["access_token"])).json() == API_401_BODY
    revoked = refresh(http, fake, tokens["refresh_token"])
    assert (revoked.status_code, revoked.json()) == (
        401,
        oauth_problem(401, "Token has been revoked"),
    )
    assert exchange(http, fake, pending).json()["hint"] == "Authorization code has been revoked"
    # Reinstalling works: a fresh consent gives fresh, working tokens.
    again = connect(http, fake)
    assert http.get(ACCOUNT_URL, headers=bearer(again["access_token"])).status_code == 200


def test_uninstall_signature_depends_on_the_secret(clock: FakeClock) -> None:
    one = FakeAmoCRM(clock=clock, client_secret="a").uninstall()["signature"]
    two = FakeAmoCRM(clock=clock, client_secret="b").uninstall()["signature"]
    assert one != two


# -- fault knobs -----------------------------------------------------------------------------


def test_fail_next_500_and_html_do_not_consume_the_code(
    fake: FakeAmoCRM, http: httpx.Client
) -> None:
    code = fake.issue_code()
    fake.fail_next("500")
    fake.fail_next("html")
    error = exchange(http, fake, code)
    assert (error.status_code, error.headers["content-type"]) == (500, "text/html; charset=utf-8")
    html = exchange(http, fake, code)
    assert (html.status_code, html.headers["content-type"]) == (200, "text/html; charset=utf-8")
    with pytest.raises(json.JSONDecodeError):
        html.json()
    assert exchange(http, fake, code).status_code == 200
    assert fake.token_calls == Counter(
        {
            ("authorization_code", "injected_500"): 1,
            ("authorization_code", "injected_html"): 1,
            ("authorization_code", "ok"): 1,
        }
    )
    assert fake.faults_injected == Counter({"500": 1, "html": 1})


def test_fail_next_timeout_before_never_reaches_the_server(
    fake: FakeAmoCRM, http: httpx.Client
) -> None:
    code = fake.issue_code()
    fake.fail_next("timeout_before")
    with pytest.raises(httpx.ConnectTimeout):
        exchange(http, fake, code)
    assert exchange(http, fake, code).status_code == 200
    assert fake.token_call_count(outcome="injected_timeout_before") == 1
    assert fake.requests[0] == RequestRecord(
        "POST", "test.amocrm.ru", "/oauth2/access_token", None, "timeout_before"
    )


def test_fail_next_lost_answer_does_the_work(fake: FakeAmoCRM, http: httpx.Client) -> None:
    code = fake.issue_code()
    fake.fail_next("lost_answer")
    with pytest.raises(httpx.ReadTimeout):
        exchange(http, fake, code)
    assert exchange(http, fake, code).json()["hint"] == "Authorization code has been revoked"
    assert fake.token_calls == Counter(
        {("authorization_code", "ok"): 1, ("authorization_code", "code_revoked"): 1}
    )
    assert fake.requests[0].dropped == "lost_answer"


def test_lost_refresh_answer_rotates_the_token(fake: FakeAmoCRM, http: httpx.Client) -> None:
    token = connect(http, fake)["refresh_token"]
    fake.fail_next("lost_answer", grant="refresh_token")
    with pytest.raises(httpx.ReadTimeout):
        refresh(http, fake, token)
    assert refresh(http, fake, token).json()["hint"] == "Token has been revoked"


def test_fail_next_filters_by_grant_and_counts_times(fake: FakeAmoCRM, http: httpx.Client) -> None:
    tokens = connect(http, fake)
    fake.fail_next("500", times=2, grant="refresh_token")
    assert exchange(http, fake).status_code == 200  # a code exchange is not affected
    assert refresh(http, fake, tokens["refresh_token"]).status_code == 500
    assert refresh(http, fake, tokens["refresh_token"]).status_code == 500
    assert refresh(http, fake, tokens["refresh_token"]).status_code == 200
    assert fake.token_call_count("refresh_token", "injected_500") == 2


def test_fail_next_on_the_api(fake: FakeAmoCRM, http: httpx.Client) -> None:
    token = connect(http, fake)["access_token"]
    fake.fail_next("500", endpoint="api")
    fake.fail_next("timeout_before", endpoint="api")
    fake.fail_next("lost_answer", endpoint="api")
    assert http.get(ACCOUNT_URL, headers=bearer(token)).status_code == 500
    with pytest.raises(httpx.ConnectTimeout):
        http.get(ACCOUNT_URL, headers=bearer(token))
    with pytest.raises(httpx.ReadTimeout):
        http.get(ACCOUNT_URL, headers=bearer(token))
    assert http.get(ACCOUNT_URL, headers=bearer(token)).status_code == 200
    assert exchange(http, fake).status_code == 200  # token faults were not queued
    assert fake.api_calls == Counter(
        {
            ("/api/v4/account", "injected_500"): 1,
            ("/api/v4/account", "injected_timeout_before"): 1,
            ("/api/v4/account", "ok"): 2,
        }
    )


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("boom",), {}),
        (("500",), {"times": 0}),
        (("500",), {"grant": "password"}),
        (("500",), {"endpoint": "web"}),
        (("500",), {"endpoint": "api", "grant": "refresh_token"}),
    ],
)
def test_fail_next_rejects_bad_arguments(
    fake: FakeAmoCRM, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="bad"):
        fake.fail_next(*args, **kwargs)


def test_latency_sync(fake: FakeAmoCRM, http: httpx.Client) -> None:
    fake.latency = 0.05
    started = time.monotonic()
    assert exchange(http, fake).status_code == 200
    assert time.monotonic() - started >= 0.05
    assert fake.handle("POST", TOKEN_URL, {}, b"{}").delay == 0.05


def test_latency_async_does_not_block_the_event_loop(fake: FakeAmoCRM) -> None:
    fake.latency = 0.2

    async def main() -> tuple[list[int], float]:
        async with httpx.AsyncClient(transport=fake.async_transport()) as client:
            started = time.monotonic()
            responses = await asyncio.gather(
                *(client.post(TOKEN_URL, json=code_body(fake, fake.issue_code())) for _ in range(5))
            )
            return [r.status_code for r in responses], time.monotonic() - started

    statuses, elapsed = asyncio.run(main())
    assert statuses == [200] * 5
    assert 0.2 <= elapsed < 0.6  # five overlapping sleeps, not 1.0 s in a row


def test_async_transport_round_trip_and_faults(fake: FakeAmoCRM) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(transport=fake.async_transport()) as client:
            code = fake.issue_code()
            fake.fail_next("lost_answer")
            with pytest.raises(httpx.ReadTimeout):
                await client.post(TOKEN_URL, json=code_body(fake, code))
            again = await client.post(TOKEN_URL, json=code_body(fake, code))
            assert again.json()["hint"] == "Authorization code has been revoked"
            with pytest.raises(httpx.ConnectError):
                await client.get("https://evil.example/api/v4/account")

    asyncio.run(main())
    assert fake.codes_exchanged == 1


# -- observation -----------------------------------------------------------------------------


def test_request_log_has_no_secrets(fake: FakeAmoCRM, http: httpx.Client) -> None:
    code = fake.issue_code()
    tokens = exchange(http, fake, code).json()
    http.get(f"https://www.amocrm.ru/oauth?client_id={fake.client_id}&state=s")
    assert fake.requests == (
        RequestRecord("POST", "test.amocrm.ru", "/oauth2/access_token", 200),
        RequestRecord("GET", "www.amocrm.ru", "/oauth", 200),
    )
    logged = repr(fake.requests)
    for secret in (code, fake.client_secret, tokens["access_token"], tokens["refresh_token"]):
        assert secret not in logged


def test_counters_are_snapshots(fake: FakeAmoCRM, http: httpx.Client) -> None:
    before = fake.token_calls
    connect(http, fake)
    assert before == Counter()
    assert fake.token_call_count() == 1
    assert fake.token_call_count("refresh_token") == 0


def test_other_hosts_are_unreachable(fake: FakeAmoCRM, http: httpx.Client) -> None:
    with pytest.raises(httpx.ConnectError, match=r"evil\.example"):
        http.post("https://evil.example/oauth2/access_token", json={"client_secret": "x"})
    with pytest.raises(httpx.ConnectError):
        http.get("https://amocrm.ru.evil.example/oauth")
    assert fake.requests == ()
    assert fake.serves_host("TEST.amocrm.ru")
    assert fake.serves_host("amocrm.ru")
    assert not fake.serves_host("xamocrm.ru")


def test_handle_directly(fake: FakeAmoCRM) -> None:
    body = json.dumps(code_body(fake, fake.issue_code())).encode()
    answer = fake.handle("post", TOKEN_URL, {"Content-Type": "application/json"}, body)
    assert isinstance(answer, FakeResponse)
    assert (answer.status, answer.header("CONTENT-TYPE"), answer.dropped) == (
        200,
        "application/json",
        None,
    )
    assert answer.json()["token_type"] == "Bearer"
    assert answer.json()["access_token"] not in repr(answer)
    assert answer.header("x-missing") is None


# -- thread safety ---------------------------------------------------------------------------


@pytest.fixture
def eager_thread_switching() -> Iterator[None]:
    # Switch threads every microsecond instead of every 5 ms, so that check-then-act races
    # in the fake (if its lock were removed) show up instead of hiding behind the GIL.
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def run_in_threads(count: int, call: Any) -> list[Any]:
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def worker(index: int) -> None:
        barrier.wait()
        results[index] = call()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def slow_clock() -> datetime:
    # Sleeping inside the clock hands the GIL to other threads between "is this code spent?"
    # and "mark it spent", so these tests fail if the fake's lock is ever removed.
    time.sleep(0.0005)
    return START


@pytest.mark.usefixtures("eager_thread_switching")
def test_fifty_threads_one_code_exactly_one_success() -> None:
    fake = FakeAmoCRM(clock=slow_clock, rate_limit=None)
    http = httpx.Client(transport=fake.transport())
    code = fake.issue_code()
    statuses = run_in_threads(50, lambda: exchange(http, fake, code).status_code)
    assert sorted(Counter(statuses).items()) == [(200, 1), (400, 49)]
    assert fake.token_calls == Counter(
        {("authorization_code", "ok"): 1, ("authorization_code", "code_revoked"): 49}
    )
    assert len(fake.requests) == 50


@pytest.mark.usefixtures("eager_thread_switching")
def test_concurrent_refreshes_exactly_one_success() -> None:
    fake = FakeAmoCRM(clock=slow_clock, rate_limit=None)
    http = httpx.Client(transport=fake.transport())
    token = connect(http, fake)["refresh_token"]
    statuses = run_in_threads(20, lambda: refresh(http, fake, token).status_code)
    assert sorted(Counter(statuses).items()) == [(200, 1), (401, 19)]


# -- WSGI and the loopback server --------------------------------------------------------------


def test_wsgi_app(fake: FakeAmoCRM) -> None:
    http = httpx.Client(transport=httpx.WSGITransport(app=fake.wsgi_app))
    response = exchange(http, fake)
    assert response.status_code == 200
    account = http.get(ACCOUNT_URL, headers=bearer(response.json()["access_token"]))
    assert account.json()["id"] == 31415926
    assert fake.requests[-1] == RequestRecord("GET", "test.amocrm.ru", "/api/v4/account", 200)


def test_loopback_server_round_trip(fake: FakeAmoCRM) -> None:
    with fake.serve() as served:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", served.url)
        assert served.url == f"http://127.0.0.1:{served.port}"
        with httpx.Client(transport=served.transport()) as http:
            tokens = connect(http, fake)
            rotated = refresh(http, fake, tokens["refresh_token"]).json()
            account = http.get(ACCOUNT_URL, headers=bearer(rotated["access_token"]))
            assert (account.status_code, account.json()["subdomain"]) == (200, "test")
            # The original Host header reaches the server: www. is not the account host.
            www = exchange(http, fake, url="https://www.amocrm.ru/oauth2/access_token")
            assert www.json() == oauth_problem(400, "Invalid account")
            with pytest.raises(httpx.ConnectError):
                http.get("https://evil.example/")
    assert [(r.host, r.status) for r in fake.requests] == [
        ("test.amocrm.ru", 200),
        ("test.amocrm.ru", 200),
        ("test.amocrm.ru", 200),
        ("www.amocrm.ru", 400),
    ]


class FormReader(HTMLParser):
    """Collects each form's action and fields, keyed by its submit button's id."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: dict[str, tuple[str, dict[str, str]]] = {}
        self._action = ""
        self._fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {key: value or "" for key, value in attrs}
        if tag == "form":
            self._action, self._fields = found["action"], {}
        elif tag == "input":
            self._fields[found["name"]] = found["value"]
        elif tag == "button":
            self.forms[found["id"]] = (self._action, self._fields)


def test_loopback_consent_page_clicked_like_a_browser(fake: FakeAmoCRM) -> None:
    with fake.serve() as served, httpx.Client(trust_env=False) as browser:
        url = served.local_url(fake.authorization_url("s-9"))
        assert url == f"{served.url}/oauth?client_id=fake-client-id&state=s-9&mode=post_message"
        reader = FormReader()
        reader.feed(browser.get(url).text)
        assert set(reader.forms) == {"allow", "deny"}
        action, fields = reader.forms["allow"]
        allow = browser.get(f"{served.url}{action}", params=fields)
        assert allow.status_code == 302
        params = query_of(allow.headers["location"])
        assert (params["state"], params["referer"]) == ("s-9", "test.amocrm.ru")
        action, fields = reader.forms["deny"]
        deny = browser.get(f"{served.url}{action}", params=fields)
        assert deny.headers["location"] == fake.deny("s-9")
    assert fake.requests[0] == RequestRecord("GET", "127.0.0.1", "/oauth", 200)
    assert fake.codes_issued == 1


def test_loopback_lost_answer_closes_the_connection(fake: FakeAmoCRM) -> None:
    code = fake.issue_code()
    with fake.serve() as served, httpx.Client(transport=served.transport()) as http:
        fake.fail_next("lost_answer")
        with pytest.raises(httpx.RemoteProtocolError):
            exchange(http, fake, code)
        fake.fail_next("timeout_before")
        with pytest.raises(httpx.RemoteProtocolError):
            exchange(http, fake, code)
        assert exchange(http, fake, code).json()["hint"] == "Authorization code has been revoked"
    assert fake.token_calls == Counter(
        {
            ("authorization_code", "ok"): 1,
            ("authorization_code", "injected_timeout_before"): 1,
            ("authorization_code", "code_revoked"): 1,
        }
    )


def test_loopback_async_transport(fake: FakeAmoCRM) -> None:
    async def main(served_transport: httpx.AsyncBaseTransport) -> list[int]:
        async with httpx.AsyncClient(transport=served_transport) as client:
            code = fake.issue_code()
            responses = await asyncio.gather(
                *(client.post(TOKEN_URL, json=code_body(fake, code)) for _ in range(5))
            )
            return sorted(r.status_code for r in responses)

    with fake.serve() as served:
        assert asyncio.run(main(served.async_transport())) == [200, 400, 400, 400, 400]


def test_server_stops_when_the_block_exits(fake: FakeAmoCRM) -> None:
    with fake.serve() as served:
        url = served.url
    with httpx.Client(trust_env=False) as client, pytest.raises(httpx.ConnectError):
        client.get(f"{url}/oauth", timeout=1)


# -- pytest plugin ---------------------------------------------------------------------------


def test_plugin_fixtures(amo_fake: FakeAmoCRM, amo_fake_clock: FakeClock) -> None:
    http = httpx.Client(transport=amo_fake.transport())
    code = amo_fake.issue_code()
    amo_fake_clock.advance(timedelta(minutes=20))
    assert exchange(http, amo_fake, code).json()["hint"] == "Authorization code has expired"
    assert amo_fake.rate_limit == 7


# -- several accounts on distinct hosts (protocol §2, §3, §5) ----------------------------------

KOMMO_SECRET = "kommo-integration-secret"


def token_url(host: str) -> str:
    return f"https://{host}/oauth2/access_token"


def refresh_at(
    http: httpx.Client,
    fake: FakeAmoCRM,
    host: str,
    token: str,
    integration: FakeIntegration | None = None,
) -> httpx.Response:
    chosen = integration or fake.default_integration
    overrides = {
        "client_id": chosen.client_id,
        "client_secret": chosen.client_secret,
        "redirect_uri": chosen.redirect_uri,
    }
    return http.post(token_url(host), json=refresh_body(fake, token, **overrides))


def connect_at(
    http: httpx.Client, fake: FakeAmoCRM, account: FakeAccount, **overrides: str
) -> dict[str, Any]:
    code = fake.issue_code(account=account)
    response = exchange(http, fake, code, url=token_url(account.host), **overrides)
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


def account_at(http: httpx.Client, host: str, access_token: str) -> httpx.Response:
    return http.get(f"https://{host}/api/v4/account", headers=bearer(access_token))


@pytest.fixture
def three(fake: FakeAmoCRM) -> tuple[FakeAccount, FakeAccount, FakeAccount]:
    kommo = fake.add_account("acme", domain="kommo.com", account_id=777, name="Acme", leads=2)
    legacy = fake.add_account("old", domain="amocrm.com", api_domain="api-a.amocrm.com", leads=0)
    return fake.default_account, kommo, legacy


def test_accounts_on_three_domains(
    fake: FakeAmoCRM, http: httpx.Client, three: tuple[FakeAccount, FakeAccount, FakeAccount]
) -> None:
    default, kommo, legacy = three
    assert (default.host, kommo.host, legacy.host) == (
        "test.amocrm.ru",
        "acme.kommo.com",
        "old.amocrm.com",
    )
    assert legacy.id == fake.account_id + 1  # one more than the largest id so far
    assert fake.accounts == three
    assert fake.domains == {"amocrm.ru", "kommo.com", "amocrm.com"}
    assert all(fake.serves_host(f"x.{domain}") for domain in fake.domains)
    assert repr(kommo) == "FakeAccount(id=777, host='acme.kommo.com')"
    for account, country, leads in ((default, "RU", 3), (kommo, "US", 2), (legacy, "RU", 0)):
        query = query_of(fake.authorize("s", account=account))
        assert query["referer"] == account.host
        response = exchange(http, fake, query["code"], url=token_url(account.host))
        assert response.status_code == 200
        claims = jwt_part(response.json()["access_token"], 1)
        assert (claims["account_id"], claims["base_domain"]) == (account.id, account.domain)
        assert claims["api_domain"] == account.api_domain
        access = response.json()["access_token"]
        payload = account_at(http, account.host, access).json()
        assert (payload["id"], payload["name"], payload["country"]) == (
            account.id,
            account.name,
            country,
        )
        got = http.get(f"https://{account.host}/api/v4/leads", headers=bearer(access))
        if leads:
            found = got.json()["_embedded"]["leads"]
            assert [lead["account_id"] for lead in found] == [account.id] * leads
        else:
            assert got.status_code == 204
    assert legacy.api_domain == "api-a.amocrm.com"
    assert fake.token_call_count("authorization_code", "ok", account=kommo) == 1


def test_code_at_another_accounts_host_is_invalid_account_and_kept(
    fake: FakeAmoCRM, http: httpx.Client, three: tuple[FakeAccount, FakeAccount, FakeAccount]
) -> None:
    default, kommo, _ = three
    code = fake.issue_code(account=kommo)
    wrong = exchange(http, fake, code, url=token_url(default.host))
    assert (wrong.status_code, wrong.json()) == (400, oauth_problem(400, "Invalid account"))
    assert fake.token_call_count(outcome="invalid_account", account=default) == 1
    assert exchange(http, fake, code, url=token_url(kommo.host)).status_code == 200


def test_tokens_open_only_their_own_account(
    fake: FakeAmoCRM, http: httpx.Client, three: tuple[FakeAccount, FakeAccount, FakeAccount]
) -> None:
    default, kommo, _ = three
    tokens = connect_at(http, fake, kommo)
    assert account_at(http, default.host, tokens["access_token"]).status_code == 401
    assert fake.api_call_count(outcome="unauthorized", account=default) == 1
    wrong = refresh_at(http, fake, default.host, tokens["refresh_token"])
    assert (wrong.status_code, wrong.json()["hint"]) == (400, "Invalid account")
    assert refresh_at(http, fake, kommo.host, tokens["refresh_token"]).status_code == 200
    assert fake.refresh_sends(tokens["refresh_token"]) == 2
    assert fake.refresh_sends(tokens["refresh_token"], host=default.host) == 1


def test_add_account_and_lookups_refuse_bad_input(fake: FakeAmoCRM) -> None:
    with pytest.raises(ValueError, match="already lives"):
        fake.add_account("test")
    with pytest.raises(ValueError, match="taken"):
        fake.add_account("other", account_id=fake.account_id)
    for bad in ("", "a.b", "-x", "has space"):
        with pytest.raises(ValueError, match="subdomain"):
            fake.add_account(bad)
    with pytest.raises(ValueError, match="domain"):
        fake.add_account("x", domain="localhost")
    with pytest.raises(KeyError):
        fake.account(12345)
    with pytest.raises(KeyError):
        fake.authorize(account=12345)
    assert fake.account(fake.account_id) is fake.default_account
    assert len(fake.accounts) == 1


# -- rename, move and the account lookup (protocol §5) ---------------------------------------

LOOKUP = "/oauth2/account/current/subdomain"


def lookup(http: httpx.Client, api_host: str, refresh_token: str, **headers: str) -> httpx.Response:
    return http.get(
        f"https://{api_host}{LOOKUP}", headers={"X-Refresh-Token": refresh_token, **headers}
    )


def test_rename_account(fake: FakeAmoCRM, http: httpx.Client) -> None:
    tokens = connect(http, fake)
    handle = fake.rename_account(fake.default_account, "renamed")
    assert handle is fake.default_account
    assert (fake.account_host, handle.host) == ("renamed.amocrm.ru", "renamed.amocrm.ru")
    old = refresh_at(http, fake, "test.amocrm.ru", tokens["refresh_token"])
    assert (old.status_code, old.json()) == (400, oauth_problem(400, "Invalid account"))
    assert account_at(http, "test.amocrm.ru", tokens["access_token"]).status_code == 401
    assert account_at(http, "renamed.amocrm.ru", tokens["access_token"]).json()["subdomain"] == (
        "renamed"
    )
    new = refresh_at(http, fake, "renamed.amocrm.ru", tokens["refresh_token"])
    assert new.status_code == 200
    assert fake.refresh_sends(tokens["refresh_token"], host="renamed.amocrm.ru") == 1
    with pytest.raises(ValueError, match="already lives"):
        fake.rename_account(None, "renamed")


def test_move_account_and_look_it_up(fake: FakeAmoCRM, http: httpx.Client) -> None:
    tokens = connect(http, fake)
    old_api_domain = jwt_part(tokens["access_token"], 1)["api_domain"]
    assert old_api_domain == "api-b.amocrm.ru"
    fake.move_account(None, domain="kommo.com", subdomain="moved")
    assert (fake.account_host, fake.api_domain) == ("moved.kommo.com", "api-b.kommo.com")
    old = refresh_at(http, fake, "test.amocrm.ru", tokens["refresh_token"])
    assert (old.status_code, old.json()["status"]) == (404, 404)
    assert fake.token_call_count(outcome="account_moved") == 1
    assert account_at(http, "test.amocrm.ru", tokens["access_token"]).status_code == 404
    assert fake.api_call_count(outcome="not_found") == 1
    # The lookup on the old token's api_domain, with only X-Refresh-Token, finds the new host.
    found = lookup(http, old_api_domain, tokens["refresh_token"])
    assert found.status_code == 200
    assert found.json() == {
        "id": fake.account_id,
        "subdomain": "moved",
        "domain": "moved.kommo.com",
        "top_level_domain": "com",
    }
    assert account_at(http, "moved.kommo.com", tokens["access_token"]).status_code == 200
    fresh = refresh_at(http, fake, found.json()["domain"], tokens["refresh_token"])
    assert fresh.status_code == 200
    assert jwt_part(fresh.json()["access_token"], 1)["api_domain"] == "api-b.kommo.com"
    assert fake.lookup_calls == Counter({("api-b.amocrm.ru", "ok"): 1})
    assert fake.lookup_calls_for(tokens["refresh_token"]) == 1
    assert fake.lookups_with_authorization == 0


def test_lookup_refuses_anything_but_a_live_refresh_token(
    fake: FakeAmoCRM, http: httpx.Client
) -> None:
    tokens = connect(http, fake)
    assert lookup(http, "api-b.amocrm.ru", "def50200garbage").status_code == 401
    no_header = http.get(f"https://api-b.amocrm.ru{LOOKUP}")
    assert (no_header.status_code, no_header.json()) == (401, API_401_BODY)
    # The access token in Authorization is not a refresh token: refused, and counted.
    with_auth = http.get(f"https://api-b.amocrm.ru{LOOKUP}", headers=bearer(tokens["access_token"]))
    assert with_auth.status_code == 401
    assert fake.lookups_with_authorization == 1
    assert http.post(f"https://api-b.amocrm.ru{LOOKUP}").status_code == 405
    assert http.get(f"https://test.amocrm.ru{LOOKUP}").status_code == 404  # not an API host
    assert lookup(http, "api-g.amocrm.ru", tokens["refresh_token"]).status_code == 200
    refresh(http, fake, tokens["refresh_token"])  # spends it
    assert lookup(http, "api-b.amocrm.ru", tokens["refresh_token"]).status_code == 401
    assert fake.lookup_calls[("api-b.amocrm.ru", "unauthorized")] == 4
    assert fake.lookup_calls[("api-g.amocrm.ru", "ok")] == 1


def test_tokens_without_the_api_domain_claim(clock: FakeClock) -> None:
    fake = FakeAmoCRM(clock=clock, api_domain_claim=False)
    http = httpx.Client(transport=fake.transport())
    claims = jwt_part(connect(http, fake)["access_token"], 1)
    assert "api_domain" not in claims
    assert claims["base_domain"] == "amocrm.ru"
    fake.api_domain_claim = True
    assert jwt_part(connect(http, fake)["access_token"], 1)["api_domain"] == "api-b.amocrm.ru"


# -- several integrations (protocol §3, §4, §6) ----------------------------------------------


@pytest.fixture
def second(fake: FakeAmoCRM) -> FakeIntegration:
    return fake.add_integration("kommo-client", KOMMO_SECRET, "https://other.example/cb")


def creds(integration: FakeIntegration) -> dict[str, str]:
    return {
        "client_id": integration.client_id,
        "client_secret": integration.client_secret,
        "redirect_uri": integration.redirect_uri,
    }


def test_code_of_one_integration_is_refused_with_anothers_credentials(
    fake: FakeAmoCRM, http: httpx.Client, second: FakeIntegration
) -> None:
    query = query_of(fake.authorize("s", integration=second))
    assert query["client_id"] == "kommo-client"
    assert fake.authorize(integration="kommo-client").startswith("https://other.example/cb?code=")
    refused = exchange(http, fake, query["code"])  # the default integration's credentials
    assert (refused.status_code, refused.json()) == (
        400,
        oauth_problem(400, "Authorization code was not issued to this client"),
    )
    ok = exchange(http, fake, query["code"], **creds(second))
    assert ok.status_code == 200
    assert jwt_part(ok.json()["access_token"], 1)["aud"] == "kommo-client"
    assert fake.token_call_count(outcome="ok", integration=second) == 1
    assert fake.token_call_count(outcome="ok", integration=fake.default_integration) == 0
    assert fake.token_call_count(outcome="code_wrong_client", integration=fake.client_id) == 1
    # A refresh token is tied to its integration too.
    wrong = refresh(http, fake, ok.json()["refresh_token"])
    assert (wrong.status_code, wrong.json()["hint"]) == (401, "Token is not linked to client")
    assert refresh(http, fake, ok.json()["refresh_token"], **creds(second)).status_code == 200


def test_secrets_are_per_integration(
    fake: FakeAmoCRM, http: httpx.Client, second: FakeIntegration
) -> None:
    code = fake.issue_code(integration=second)
    mixed = exchange(http, fake, code, client_id=second.client_id)  # the default's secret
    assert (mixed.status_code, mixed.json()) == (401, BAD_SECRET_BODY)
    redirect = exchange(http, fake, code, **{**creds(second), "redirect_uri": REDIRECT})
    assert redirect.json()["hint"] == "Redirect URI is not associated with client"
    assert KOMMO_SECRET not in repr(second)
    assert fake.integrations == (fake.default_integration, second)
    with pytest.raises(ValueError, match="already registered"):
        fake.add_integration("kommo-client", "x", "https://x.example/")
    with pytest.raises(ValueError, match="empty"):
        fake.add_integration("x", "", "https://x.example/")
    with pytest.raises(KeyError):
        fake.integration(FakeIntegration("kommo-client", "wrong", "https://other.example/cb"))


def test_uninstall_and_hook_signature_per_integration(
    fake: FakeAmoCRM, http: httpx.Client, second: FakeIntegration
) -> None:
    mine = connect(http, fake)
    theirs = exchange(http, fake, fake.issue_code(integration=second), **creds(second)).json()
    hook = fake.uninstall(integration=second)
    expected = hmac.new(
        KOMMO_SECRET.encode(), f"kommo-client|{fake.account_id}".encode(), hashlib.sha256
    ).hexdigest()
    assert hook == {
        "client_uuid": "kommo-client",
        "account_id": str(fake.account_id),
        "signature": expected,
    }
    assert not fake.is_access_token_valid(theirs["access_token"])
    assert not fake.is_refresh_token_valid(theirs["refresh_token"])
    assert fake.is_access_token_valid(mine["access_token"])  # the other integration stays
    assert fake.is_refresh_token_valid(mine["refresh_token"])
    assert fake.hook_query()["signature"] != expected


def test_consent_page_knows_every_integration(
    fake: FakeAmoCRM, http: httpx.Client, second: FakeIntegration
) -> None:
    url = fake.authorization_url("st", integration=second)
    assert query_of(url)["client_id"] == "kommo-client"
    allow = http.get(url.replace("/oauth?", "/oauth/allow?"))
    location = allow.headers["location"]
    assert location.startswith("https://other.example/cb?code=")
    assert query_of(location)["referer"] == fake.account_host
    deny = http.get(url.replace("/oauth?", "/oauth/deny?")).headers["location"]
    assert deny == fake.deny("st", integration=second)
    assert deny.startswith("https://other.example/cb?error=access_denied&client_id=kommo-client")


# -- Kommo's grace on an old refresh token (protocol §3) -------------------------------------


def test_strict_refresh_revokes_the_old_token_at_once(fake: FakeAmoCRM, http: httpx.Client) -> None:
    assert fake.refresh_grace is False
    first = connect(http, fake)["refresh_token"]
    assert refresh(http, fake, first).status_code == 200
    again = refresh(http, fake, first)
    assert (again.status_code, again.json()) == (401, oauth_problem(401, "Token has been revoked"))


@pytest.mark.parametrize("use", ["access", "refresh"])
def test_grace_keeps_the_old_refresh_token_until_a_new_token_is_used(
    clock: FakeClock, use: str
) -> None:
    fake = FakeAmoCRM(clock=clock, rate_limit=None, refresh_grace=True)
    http = httpx.Client(transport=fake.transport())
    old = connect(http, fake)["refresh_token"]
    lost = refresh(http, fake, old).json()  # say this answer was lost
    retried = refresh(http, fake, old)  # the old token still works
    assert retried.status_code == 200
    # The pair issued before is replaced by the retry's pair.
    assert not fake.is_refresh_token_valid(lost["refresh_token"])
    assert fake.is_refresh_token_valid(old)
    new = retried.json()
    if use == "access":
        assert account_at(http, fake.account_host, new["access_token"]).status_code == 200
    else:
        assert refresh(http, fake, new["refresh_token"]).status_code == 200
    revoked = refresh(http, fake, old)
    assert (revoked.status_code, revoked.json()["hint"]) == (401, "Token has been revoked")
    assert fake.refresh_sends(old) == 3


def test_grace_new_refresh_token_also_gets_grace(clock: FakeClock) -> None:
    fake = FakeAmoCRM(clock=clock, rate_limit=None, refresh_grace=True)
    http = httpx.Client(transport=fake.transport())
    first = connect(http, fake)["refresh_token"]
    second = refresh(http, fake, first).json()["refresh_token"]
    third = refresh(http, fake, second).json()
    assert not fake.is_refresh_token_valid(first)  # ended when `second` was used
    assert fake.is_refresh_token_valid(second)  # until `third`'s tokens are used
    assert account_at(http, fake.account_host, third["access_token"]).status_code == 200
    assert not fake.is_refresh_token_valid(second)


# -- blocked and unpaid accounts (protocol §9) -----------------------------------------------

FORBIDDEN_BODY = {
    "title": "Forbidden",
    "type": "https://httpstatus.es/403",
    "status": 403,
    "detail": "Account is blocked",
}


def test_blocked_account_answers_403_everywhere_and_consumes_nothing(
    fake: FakeAmoCRM, http: httpx.Client, three: tuple[FakeAccount, FakeAccount, FakeAccount]
) -> None:
    _, kommo, _ = three
    tokens = connect_at(http, fake, kommo)
    other = connect(http, fake)
    code = fake.issue_code(account=kommo)
    fake.block_account(kommo)
    assert kommo.blocked
    answers = [
        account_at(http, kommo.host, tokens["access_token"]),
        http.get(f"https://{kommo.host}/api/v4/leads"),  # no token at all: still 403
        refresh_at(http, fake, kommo.host, tokens["refresh_token"]),
        exchange(http, fake, code, url=token_url(kommo.host)),
        lookup(http, kommo.api_domain, tokens["refresh_token"]),
    ]
    for answer in answers:
        assert answer.status_code == 403
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json() == FORBIDDEN_BODY
    assert account_at(http, fake.account_host, other["access_token"]).status_code == 200
    assert fake.token_call_count(outcome="blocked", account=kommo) == 2
    assert fake.api_call_count(outcome="blocked", account=kommo) == 2
    fake.unblock_account(kommo)
    assert account_at(http, kommo.host, tokens["access_token"]).status_code == 200
    assert refresh_at(http, fake, kommo.host, tokens["refresh_token"]).status_code == 200
    assert exchange(http, fake, code, url=token_url(kommo.host)).status_code == 200


def test_unpaid_account_answers_402_on_the_api_only(fake: FakeAmoCRM, http: httpx.Client) -> None:
    tokens = connect(http, fake)
    fake.set_paid(False)
    assert not fake.default_account.paid
    unpaid = http.get(ACCOUNT_URL, headers=bearer(tokens["access_token"]))
    assert (unpaid.status_code, unpaid.json()["status"]) == (402, 402)
    assert http.get(ACCOUNT_URL).status_code == 401  # no token: 401 comes first
    fresh = refresh(http, fake, tokens["refresh_token"])
    assert fresh.status_code == 200  # OAuth still works
    assert fake.api_calls[("/api/v4/account", "payment_required")] == 1
    fake.set_paid(True)
    assert http.get(ACCOUNT_URL, headers=bearer(fresh.json()["access_token"])).status_code == 200


# -- scripted faults for verification (fail_next) --------------------------------------------


def test_account_endpoint_scripted_500_429_403_then_normal(
    fake: FakeAmoCRM, http: httpx.Client
) -> None:
    access = connect(http, fake)["access_token"]
    for kind in ("500", "429", "403_html"):
        fake.fail_next(kind, endpoint="api", path="/api/v4/account")
    leads = http.get(LEADS_URL, headers=bearer(access))
    assert leads.status_code == 200  # another path: untouched
    first, second, third, fourth = (http.get(ACCOUNT_URL, headers=bearer(access)) for _ in range(4))
    assert first.status_code == 500
    assert (second.status_code, second.headers["content-type"]) == (
        429,
        "application/problem+json",
    )
    assert second.json() == {
        "title": "Too Many Requests",
        "type": "https://httpstatus.es/429",
        "status": 429,
        "detail": "Too many requests per second",
        "retry_after": 300,
    }
    assert (third.status_code, third.headers["content-type"]) == (403, "text/html")
    assert b"<center><h1>403 Forbidden</h1></center>" in third.content
    assert b"nginx" in third.content
    assert fourth.status_code == 200
    assert fake.faults_injected == Counter({"500": 1, "429": 1, "403_html": 1})
    assert fake.api_calls[("/api/v4/account", "injected_429")] == 1


def test_faults_can_target_one_account_and_the_lookup(
    fake: FakeAmoCRM, http: httpx.Client, three: tuple[FakeAccount, FakeAccount, FakeAccount]
) -> None:
    _, kommo, _ = three
    tokens = connect_at(http, fake, kommo)
    mine = connect(http, fake)
    fake.fail_next("500", endpoint="api", account=kommo)
    fake.fail_next("429", grant="refresh_token", account=kommo)
    fake.fail_next("timeout_before", endpoint="lookup")
    assert account_at(http, fake.account_host, mine["access_token"]).status_code == 200
    assert account_at(http, kommo.host, tokens["access_token"]).status_code == 500
    assert refresh(http, fake, mine["refresh_token"]).status_code == 200
    assert refresh_at(http, fake, kommo.host, tokens["refresh_token"]).status_code == 429
    assert fake.is_refresh_token_valid(tokens["refresh_token"])  # nothing processed
    with pytest.raises(httpx.ConnectTimeout):
        lookup(http, kommo.api_domain, tokens["refresh_token"])
    assert lookup(http, kommo.api_domain, tokens["refresh_token"]).status_code == 200
    assert fake.token_call_count("refresh_token", "injected_429", account=kommo) == 1


def test_override_the_next_token_answer_with_out_of_range_values(
    fake: FakeAmoCRM, http: httpx.Client
) -> None:
    fake.fail_next(
        "override",
        grant="authorization_code",
        fields={"expires_in": RawJSON("1e400"), "access_token": "токен-ÿ"},
    )
    code = fake.issue_code()
    answer = exchange(http, fake, code)
    assert answer.status_code == 200
    assert b'"expires_in":1e400' in answer.content
    parsed = json.loads(answer.content)
    assert parsed["expires_in"] == float("inf")
    assert parsed["access_token"] == "токен-ÿ"
    assert fake.is_refresh_token_valid(parsed["refresh_token"])  # the real work was done
    assert exchange(http, fake, code).json()["hint"] == "Authorization code has been revoked"
    fake.fail_next("override", fields={"expires_in": RawJSON("1e13")})
    assert b'"expires_in":1e13' in exchange(http, fake).content
    assert exchange(http, fake).json()["expires_in"] == 86400  # once only


def test_override_the_account_id(fake: FakeAmoCRM, http: httpx.Client) -> None:
    access = connect(http, fake)["access_token"]
    fake.fail_next("override", endpoint="api", path="/api/v4/account", fields={"id": 2**70})
    huge = http.get(ACCOUNT_URL, headers=bearer(access))
    assert b'"id":1180591620717411303424' in huge.content
    assert huge.json()["name"] == fake.account_name
    assert http.get(ACCOUNT_URL, headers=bearer(access)).json()["id"] == fake.account_id


def test_fail_next_checks_the_new_arguments(fake: FakeAmoCRM) -> None:
    with pytest.raises(ValueError, match="fields"):
        fake.fail_next("override")
    with pytest.raises(ValueError, match="fields"):
        fake.fail_next("500", fields={"a": 1})
    with pytest.raises(ValueError, match="slow_body"):
        fake.fail_next("slow_body", chunk_size=0)
    with pytest.raises(ValueError, match="slow_body"):
        fake.fail_next("slow_body", every=-1)
    with pytest.raises(ValueError, match="grant"):
        fake.fail_next("500", grant="refresh_token", endpoint="lookup")
    with pytest.raises(KeyError):
        fake.fail_next("500", account=999)


def test_slow_body_trickles_over_loopback(fake: FakeAmoCRM) -> None:
    with fake.serve() as served, httpx.Client(transport=served.transport()) as http:
        access = connect(http, fake)["access_token"]
        size = len(http.get(ACCOUNT_URL, headers=bearer(access)).content)
        fake.fail_next("slow_body", endpoint="api", chunk_size=-(-size // 3), every=0.15)
        arrivals: list[float] = []
        started = time.monotonic()
        # A read timeout longer than one gap but shorter than the total never fires:
        # only a total-time bound catches a trickle.
        with http.stream(
            "GET", ACCOUNT_URL, headers=bearer(access), timeout=httpx.Timeout(5, read=0.4)
        ) as streamed:
            assert streamed.status_code == 200
            headers_after = time.monotonic() - started
            body = b""
            for chunk in streamed.iter_raw():
                arrivals.append(time.monotonic() - started)
                body += chunk
        assert json.loads(body)["id"] == fake.account_id
        assert headers_after < 0.1
        assert len(arrivals) == 3
        assert arrivals[-1] >= 0.44
        assert http.get(ACCOUNT_URL, headers=bearer(access)).status_code == 200


def test_slow_body_in_process_arrives_whole(fake: FakeAmoCRM, http: httpx.Client) -> None:
    access = connect(http, fake)["access_token"]
    fake.fail_next("slow_body", endpoint="api", chunk_size=1, every=10.0)
    started = time.monotonic()
    answer = http.get(ACCOUNT_URL, headers=bearer(access))
    assert answer.json()["id"] == fake.account_id
    assert time.monotonic() - started < 1.0
    assert fake.faults_injected["slow_body"] == 1


# -- what it issued, and each access token's API calls (the leak canaries read them) --------------


def test_issued_lists_every_code_and_token_in_order(http: httpx.Client, fake: FakeAmoCRM) -> None:
    assert fake.issued == ((), (), ())
    code, unused = fake.issue_code(), fake.issue_code()
    first = exchange(http, fake, code).json()
    second = refresh(http, fake, first["refresh_token"]).json()
    issued = fake.issued
    assert issued.codes == (code, unused)  # spent or not
    assert issued.access_tokens == (first["access_token"], second["access_token"])
    assert issued.refresh_tokens == (first["refresh_token"], second["refresh_token"])
    assert "def50200" not in repr(fake)  # the reading is explicit: nothing shows them


def test_api_calls_with_counts_each_bearer_whatever_the_answer(
    http: httpx.Client, fake: FakeAmoCRM
) -> None:
    token = exchange(http, fake).json()["access_token"]
    assert fake.api_calls_with(token) == 0
    assert http.get(ACCOUNT_URL, headers=bearer(token)).status_code == 200
    fake.expire_access_tokens()
    assert http.get(LEADS_URL, headers=bearer(token)).status_code == 401
    assert fake.api_calls_with(token) == 2
    assert fake.api_calls_with(token + "x") == 0
    http.get(ACCOUNT_URL, headers={"Authorization": f"Basic {token}"})  # not a bearer token
    assert fake.api_calls_with(token) == 2
