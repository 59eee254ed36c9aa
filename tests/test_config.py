"""``Config``: checked once at construction, secrets out of its repr."""

from __future__ import annotations

from datetime import timedelta

import pytest

from amo_oauth._config import Config

GOOD = {
    "client_id": "client-1",
    "client_secret": "client-SECRET-value",
    "redirect_uri": "https://app.example.com/api/amo-crm/callback",
    "state_secret": "state-SECRET-" + "x" * 19,
}


def config(**changes: object) -> Config:
    return Config(**{**GOOD, **changes})


def test_defaults():
    made = config()
    assert made.authorize_url == "https://www.amocrm.ru/oauth"
    assert made.mode == "post_message"
    assert made.extra_domains == ()
    assert made.allow_widget_installs is False
    assert made.state_ttl == timedelta(minutes=30)
    assert made.lease_ttl == timedelta(seconds=60)
    assert made.settle_timeout == 5.0
    assert made.refresh_margin == timedelta(minutes=5)
    assert made.http_timeout == 10.0


def test_the_state_secret_is_kept_as_bytes():
    assert config().state_secret == b"state-SECRET-" + b"x" * 19
    assert config(state_secret=b"b" * 32).state_secret == b"b" * 32


def test_the_repr_hides_both_secrets():
    shown = repr(config())
    assert "client-SECRET-value" not in shown
    assert "state-SECRET" not in shown
    assert "client-1" in shown


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("client_id", ""),
        ("client_id", "   "),
        ("client_secret", ""),
        ("client_id", None),
        ("redirect_uri", "http://app.example.com/callback"),
        ("redirect_uri", "ftp://app.example.com/callback"),
        ("redirect_uri", "/api/amo-crm/callback"),
        ("redirect_uri", "https://user@app.example.com/callback"),
        ("redirect_uri", "https://app.example.com/callback#frag"),
        ("redirect_uri", "https:///callback"),
        ("authorize_url", "http://www.amocrm.ru/oauth"),
        ("state_secret", "x" * 31),
        ("state_secret", b""),
        ("mode", "redirect"),
        ("mode", "POPUP"),
        ("state_ttl", timedelta(0)),
        ("lease_ttl", timedelta(seconds=-1)),
        ("refresh_margin", timedelta(0)),
        ("settle_timeout", 0),
        ("http_timeout", -1.0),
    ],
)
def test_bad_settings_are_refused(field, value):
    with pytest.raises((ValueError, TypeError), match=field):
        config(**{field: value})


@pytest.mark.parametrize(
    "uri",
    [
        "http://localhost:8000/cb",
        "http://127.0.0.1/cb",
        "http://[::1]:8000/cb",
        "https://a.b/c?x=1",
    ],
)
def test_http_is_allowed_on_loopback_only(uri):
    assert config(redirect_uri=uri).redirect_uri == uri


@pytest.mark.parametrize("domain", ["test", "Fake.test", "10.0.0.1", "fake.test:8000", "аmo.test"])
def test_a_bad_extra_domain_is_refused(domain):
    with pytest.raises(ValueError, match=r"^(not a plain domain name|an IP address)"):
        config(extra_domains=(domain,))


def test_a_good_extra_domain_is_kept():
    assert config(extra_domains=["fake.test"]).extra_domains == ("fake.test",)


def test_a_config_is_frozen():
    with pytest.raises(AttributeError):
        config().client_id = "other"  # type: ignore[misc]


def test_a_lease_must_outlast_an_exchange():
    with pytest.raises(ValueError, match="lease_ttl"):
        config(lease_ttl=timedelta(seconds=30), http_timeout=10.0)
    assert config(lease_ttl=timedelta(seconds=31), http_timeout=10.0).lease_ttl.seconds == 31


@pytest.mark.parametrize(
    ("field", "value", "error", "says"),
    [
        ("state_ttl", 600, TypeError, "timedelta"),
        ("refresh_margin", 300, TypeError, "timedelta"),
        ("settle_timeout", "5", TypeError, "number of seconds"),
        ("http_timeout", True, TypeError, "number of seconds"),
        ("settle_timeout", float("nan"), ValueError, "positive"),
        ("extra_domains", "example.com", TypeError, "tuple of domain names"),
        ("mode", "x", ValueError, "post_message, popup"),
    ],
)
def test_a_wrong_type_is_refused_with_a_clear_message(field, value, error, says):
    with pytest.raises(error, match=says) as refused:
        config(**{field: value})
    assert "Attribute(" not in str(refused.value)
