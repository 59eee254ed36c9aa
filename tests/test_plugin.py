"""The pytest plugin's fixtures, used the way a user's own test suite uses them."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
from datetime import timedelta

import httpx
import pytest

from amo_oauth import AmoOAuth, Config, ConnectionStatus, MemoryStore, Outcome
from amo_oauth.testing import FakeAmoCRM, FakeClock

CLIENTS = []


def test_connects_refreshes_and_lists_leads(amo_oauth_client, amo_fake, amo_fake_clock):
    CLIENTS.append(amo_oauth_client)
    request = amo_oauth_client.begin("user-42")
    redirect = amo_fake.authorize(request.state)
    result = amo_oauth_client.handle_callback(httpx.URL(redirect).params, binding=request.binding)
    assert result.outcome is Outcome.CONNECTED
    assert result.connection.account.id == amo_fake.account_id
    assert amo_fake.token_calls == {("authorization_code", "ok"): 1}
    first = amo_oauth_client.access_token("user-42")
    amo_fake_clock.advance(timedelta(hours=24))
    second = amo_oauth_client.access_token("user-42")
    assert second != first and amo_fake.is_access_token_valid(second)
    assert amo_fake.token_call_count("refresh_token", "ok") == 1
    with httpx.Client(transport=amo_fake.transport(), auth=amo_oauth_client.auth("user-42")) as api:
        leads = api.get(f"https://{amo_fake.account_host}/api/v4/leads").json()
    assert len(leads["_embedded"]["leads"]) == 3


def test_the_client_was_closed_at_teardown():
    (client,) = CLIENTS
    with pytest.raises(Exception, match="closed"):
        client.status("user-42")


def test_config_matches_the_fake(amo_config, amo_fake, amo_oauth_client):
    assert isinstance(amo_config, Config)
    assert isinstance(amo_oauth_client, AmoOAuth)
    assert amo_oauth_client.config is amo_config
    assert isinstance(amo_oauth_client.store, MemoryStore)
    assert (amo_config.client_id, amo_config.client_secret, amo_config.redirect_uri) == (
        amo_fake.client_id, amo_fake.client_secret, amo_fake.redirect_uri,
    )
    assert amo_config.authorize_url == "https://www.amocrm.ru/oauth"
    assert len(amo_config.state_secret) >= 32
    assert amo_oauth_client.status("nobody").status is ConnectionStatus.DISCONNECTED

"""

KOMMO_CONFTEST = """
import pytest
from amo_oauth.testing import FakeAmoCRM


@pytest.fixture
def amo_fake(amo_fake_clock):
    return FakeAmoCRM(clock=amo_fake_clock, domain="kommo.com", subdomain="shop")
"""

KOMMO_TESTS = """
import httpx
from amo_oauth import Outcome


def test_an_overridden_fake_carries_through(amo_oauth_client, amo_config, amo_fake):
    assert amo_config.authorize_url == "https://www.kommo.com/oauth"
    request = amo_oauth_client.begin("u")
    redirect = amo_fake.authorize(request.state)
    result = amo_oauth_client.handle_callback(httpx.URL(redirect).params, binding=request.binding)
    assert result.outcome is Outcome.CONNECTED
    assert result.connection.account.subdomain == "shop"
"""


def test_fixtures_work_in_a_users_test_file(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_overriding_amo_fake_rewires_config_and_client(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(KOMMO_CONFTEST)
    pytester.makepyfile(test_kommo=KOMMO_TESTS)
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_failing_user_test_is_reported_as_failing(pytester: pytest.Pytester) -> None:
    # The fixtures must not swallow a user's failure (e.g. in teardown).
    pytester.makepyfile(
        test_bad="""
        from urllib.parse import parse_qsl, urlsplit

        def test_double_exchange_is_caught(amo_oauth_client, amo_fake):
            begun = amo_oauth_client.begin("u")
            query = dict(parse_qsl(urlsplit(amo_fake.authorize(begun.state)).query))
            for _ in range(2):
                amo_oauth_client.handle_callback(query, binding=begun.binding)
            assert amo_fake.token_calls_for(query["code"]) == 2
        """
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*assert 1 == 2*"])
