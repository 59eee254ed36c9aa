"""Token answers the OAuth spec allows (issue 18, item 4): a refresh answer without
``refresh_token`` keeps the one sent (RFC 6749 §6); an answer without ``expires_in`` takes the
JWT's ``exp`` as a hint, else a day; a code answer without a refresh token gives a token that
works until it expires. A valid token amoCRM gave is never thrown away."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from amo_oauth import AmoOAuth, AsyncAmoOAuth, MemoryStore, ReauthorizationRequired
from amo_oauth._provider_reads import DEFAULT_EXPIRES_IN, read_tokens
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import config_for, query_of, run_consent

USER = "user-answers"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def jwt(claims: dict[str, object]) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def answer(**fields: object) -> httpx.Response:
    return httpx.Response(200, json=fields)


# -- reading one answer ---------------------------------------------------------------------


def test_a_refresh_answer_without_refresh_token_keeps_the_one_sent() -> None:
    tokens = read_tokens(answer(access_token="a1", expires_in=60), NOW, sent="r0")
    assert tokens.refresh_token == "r0"
    assert tokens.expires_at == NOW + timedelta(seconds=60)


def test_a_code_answer_without_refresh_token_cannot_be_renewed() -> None:
    tokens = read_tokens(answer(access_token="a1", expires_in=60, refresh_token=None), NOW)
    assert tokens.refresh_token is None


def test_without_expires_in_the_jwt_exp_is_a_hint() -> None:
    token = jwt({"exp": int((NOW + timedelta(hours=3)).timestamp())})
    tokens = read_tokens(answer(access_token=token, refresh_token="r"), NOW)
    assert tokens.expires_at == NOW + timedelta(hours=3)


@pytest.mark.parametrize(
    "exp", [None, "soon", 0, float("nan"), True, 10**12, int(NOW.timestamp()) - 5]
)
def test_without_expires_in_or_a_usable_exp_a_day(exp: object) -> None:
    token = jwt({} if exp is None else {"exp": exp}) if exp != float("nan") else "not-a-jwt"
    tokens = read_tokens(answer(access_token=token, refresh_token="r"), NOW)
    assert tokens.expires_at == NOW + timedelta(seconds=DEFAULT_EXPIRES_IN)


def test_an_explicit_expires_in_wins_over_the_jwt_exp() -> None:
    token = jwt({"exp": int((NOW + DAY).timestamp())})
    tokens = read_tokens(answer(access_token=token, refresh_token="r", expires_in=60), NOW)
    assert tokens.expires_at == NOW + timedelta(seconds=60)


# -- on the service ---------------------------------------------------------------------------


def _service(fake: FakeAmoCRM, clock: FakeClock, transport: httpx.BaseTransport) -> AmoOAuth:
    return AmoOAuth(
        config_for(fake),
        store=MemoryStore(clock=clock),
        http=httpx.Client(transport=transport),
        clock=clock,
    )


def test_refreshes_without_a_new_refresh_token_keep_every_access_token() -> None:
    clock = FakeClock()
    fake = FakeAmoCRM(clock=clock, rate_limit=None, rotate_refresh_tokens=False)
    oauth = _service(fake, clock, fake.transport())
    run_consent(oauth, fake, USER)
    tokens = set()
    for _ in range(3):  # three days, three refreshes with the one refresh token
        clock.advance(DAY)
        tokens.add(oauth.access_token(USER))
        assert oauth.status(USER).status == "connected"
    assert len(tokens) == 3
    assert fake.token_call_count("refresh_token") == 3
    oauth.close()


def test_refreshes_without_a_new_refresh_token_async() -> None:
    async def main() -> None:
        clock = FakeClock()
        fake = FakeAmoCRM(clock=clock, rate_limit=None, rotate_refresh_tokens=False)
        oauth = AsyncAmoOAuth(
            config_for(fake),
            store=MemoryStore(clock=clock),
            http=httpx.AsyncClient(transport=fake.async_transport()),
            clock=clock,
        )
        begun = await oauth.begin(USER)
        await oauth.handle_callback(query_of(fake.authorize(begun.state)), binding=begun.binding)
        tokens = set()
        for _ in range(3):
            clock.advance(DAY)
            tokens.add(await oauth.access_token(USER))
        assert len(tokens) == 3
        assert (await oauth.status(USER)).status == "connected"
        await oauth.aclose()

    asyncio.run(main())


def test_a_code_answer_without_expires_in_connects() -> None:
    clock = FakeClock()
    fake = FakeAmoCRM(clock=clock, rate_limit=None, send_expires_in=False)
    oauth = _service(fake, clock, fake.transport())
    result = run_consent(oauth, fake, USER)
    assert result.connection.status == "connected"
    # The fake's JWT says a day (its exp): the hint, not an invented lifetime.
    assert result.connection.expires_at == clock() + DAY
    clock.advance(DAY)
    assert oauth.access_token(USER)  # refreshed, also without expires_in
    assert fake.token_call_count("refresh_token") == 1
    oauth.close()


def test_a_code_answer_without_expires_in_connects_async() -> None:
    async def main() -> None:
        clock = FakeClock()
        fake = FakeAmoCRM(clock=clock, rate_limit=None, send_expires_in=False)
        oauth = AsyncAmoOAuth(
            config_for(fake),
            store=MemoryStore(clock=clock),
            http=httpx.AsyncClient(transport=fake.async_transport()),
            clock=clock,
        )
        begun = await oauth.begin(USER)
        query = query_of(fake.authorize(begun.state))
        result = await oauth.handle_callback(query, binding=begun.binding)
        assert result.connection.status == "connected"
        assert result.connection.expires_at == clock() + DAY
        await oauth.aclose()

    asyncio.run(main())


class NoRefreshToken(httpx.BaseTransport):
    """The fake's answers to a code, without their refresh token (RFC 6749 §5.1: optional)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if not request.url.path.endswith("/oauth2/access_token") or response.status_code != 200:
            return response
        response.read()
        body = json.loads(response.content)
        body.pop("refresh_token", None)
        return httpx.Response(200, json=body)


def test_a_token_without_a_refresh_token_works_until_it_expires() -> None:
    clock = FakeClock()
    fake = FakeAmoCRM(clock=clock, rate_limit=None)
    oauth = _service(fake, clock, NoRefreshToken(fake.transport()))
    assert run_consent(oauth, fake, USER).connection.status == "connected"
    assert oauth.access_token(USER)
    clock.advance(DAY)
    with pytest.raises(ReauthorizationRequired) as needed:
        oauth.access_token(USER)
    assert needed.value.reason == "token_expired"
    assert fake.token_call_count("refresh_token") == 0  # nothing to send
    oauth.close()
