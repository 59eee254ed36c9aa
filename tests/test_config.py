"""``Config``: checked once at construction, secrets out of its repr."""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

import amo_oauth
from amo_oauth import AmoOAuth, AsyncAmoOAuth, MemoryStore
from amo_oauth._config import Config
from amo_oauth._integrations_file import parse_integrations
from amo_oauth._setting_errors import SETTING_ERRORS
from amo_oauth.web import AsyncHandlers, Handlers, Integrations

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


@pytest.mark.parametrize(
    ("domain", "says"),
    [
        ("test", "not a plain domain name: 'test'"),
        ("Fake.test", "not a plain domain name"),
        ("fake.test:8000", "not a plain domain name"),
        ("аmo.test", "not a plain domain name"),
        ("10.0.0.1", "an IP address is not a domain: '10.0.0.1'"),
    ],
)
def test_a_bad_extra_domain_is_refused(domain, says):
    with pytest.raises(ValueError, match=f"^extra_domains: {says}"):
        config(extra_domains=(domain,))


def test_an_extra_domain_that_is_not_text_is_refused():
    with pytest.raises(TypeError, match="extra_domains must hold domain names as strings, not int"):
        config(extra_domains=(5,))


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


# -- messages that say what is wrong (issue 16, item 3) ------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("redirect_uri", "https://app.example.com/callback#frag", "must not have a #fragment"),
        ("redirect_uri", "https://app.example.com/callback#", "must not have a #fragment"),
        ("redirect_uri", "https://user:pw@app.example.com/cb", "must not carry a user name"),
        ("redirect_uri", "https://user@app.example.com/cb", "must not carry a user name"),
        ("redirect_uri", "http://app.example.com/cb", "app.example.com is not loopback"),
        ("redirect_uri", "/api/amo-crm/callback", "must start with https://"),
        ("redirect_uri", "ftp://app.example.com/cb", "must start with https://"),
        ("redirect_uri", "https:///callback", "has no host"),
        ("redirect_uri", "https://[::1/cb", "is not a valid URL"),
        ("redirect_uri", "https://app.example.com:http/cb", "is not a valid URL"),
        ("authorize_url", "https://www.amocrm.ru/oauth#x", "must not have a #fragment"),
        ("authorize_url", "https://me:pw@www.amocrm.ru/oauth", "must not carry a user name"),
        ("authorize_url", "http://www.amocrm.ru/oauth", "www.amocrm.ru is not loopback"),
    ],
)
def test_a_url_names_its_actual_problem(field, value, says):
    """Issue 16: an https redirect URI with a fragment or user:pw@ was refused as "must be an
    https URL (http only on loopback)"; each problem now has its own message."""
    with pytest.raises(ValueError, match=f"^{field} ") as refused:
        config(**{field: value})
    assert says in str(refused.value)
    assert "pw" not in str(refused.value).replace("user:pw@", "")  # never the URL's password
    assert value not in str(refused.value)


def test_a_url_that_is_not_text_is_a_type_error():
    with pytest.raises(TypeError, match="redirect_uri must be a URL string, not NoneType"):
        config(redirect_uri=None)


def test_the_state_secret_may_not_be_the_client_secret():
    secret = "the-integrations-client-secret-of-64-characters-" + "x" * 16
    with pytest.raises(ValueError, match="state_secret must not be the client_secret") as refused:
        config(client_secret=secret, state_secret=secret)
    assert secret not in str(refused.value)
    with pytest.raises(ValueError, match="must not be the client_secret"):
        config(client_secret=secret, state_secret=secret.encode())
    assert config(client_secret=secret, state_secret=secret + "!").client_secret == secret


@pytest.mark.parametrize("value", [32, None, 3.5])
def test_a_state_secret_of_another_type_is_refused(value):
    """``bytes(32)`` would have been 32 zero bytes, accepted as a secret."""
    with pytest.raises(TypeError, match="state_secret must be str or bytes"):
        config(state_secret=value)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("max_exchanges_per_host", "5", "must be a number of code exchanges, not str"),
        ("max_exchanges_per_process", 0, "must be a positive, finite number"),
        ("http_timeout", timedelta(seconds=5), "must be a number of seconds, not timedelta"),
        ("exchange_window", 60, "must be a datetime.timedelta, not int"),
        ("ticket_ttl", timedelta(minutes=11), "at most 0:10:00"),
        ("secrets_wait", 60.5, "at most 60 seconds"),
    ],
)
def test_numbers_say_what_kind_they_want(field, value, says):
    with pytest.raises((TypeError, ValueError), match=f"^{field} ") as refused:
        config(**{field: value})
    assert says in str(refused.value)


def test_a_short_lease_says_what_to_change():
    with pytest.raises(ValueError, match=r"more than three http_timeouts \(30 s\)") as refused:
        config(lease_ttl=timedelta(seconds=30), http_timeout=10.0)
    assert "raise lease_ttl or lower http_timeout" in str(refused.value)


# -- every message is on docs/configuration.md --------------------------------------------------

SRC = Path(amo_oauth.__file__).parent
#: The modules whose ``ValueError`` / ``TypeError`` are configuration errors: Config's checks
#: and the web layer's construction checks (app_scheme, prefix, default_language, limits).
CHECKED = (
    "_config.py",
    "_setting_errors.py",
    "_integrations_file.py",
    "web/_page.py",
    "web/_routes.py",
    "web/_integrations.py",
)
PAGE = SRC.parents[1] / "docs" / "configuration.md"


def _raised(path: Path) -> list[tuple[int, ast.expr | None]]:
    """(line, message argument) of every ``raise ValueError(...)`` / ``TypeError(...)``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            name = getattr(node.exc.func, "id", None)
            if name in ("ValueError", "TypeError"):
                found.append((node.lineno, node.exc.args[0] if node.exc.args else None))
    return found


def _draws_from_the_table(message: ast.expr | None) -> bool:
    return (
        isinstance(message, ast.Call)
        and getattr(message.func, "id", None) == "setting_error"
        and len(message.args) == 1
    )


def test_every_configuration_check_draws_its_message_from_the_table():
    raised = [(path, *entry) for path in CHECKED for entry in _raised(SRC / path)]
    assert len(raised) > 15  # the scan finds the checks at all
    strays = [(path, line) for path, line, message in raised if not _draws_from_the_table(message)]
    assert strays == [], "write the message into _setting_errors.SETTING_ERRORS"
    written = {
        node.value
        for path in CHECKED
        for node in ast.walk(ast.parse((SRC / path).read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    unused = set(SETTING_ERRORS) - written
    assert unused == set(), "a message no check raises"


def _as_listed(template: str) -> str:
    """A message as the page shows it: each placeholder as ``<name>``."""
    return re.sub(r"\{(\w+)\}", r"<\1>", template)


def test_every_configuration_message_is_on_the_page():
    page = PAGE.read_text(encoding="utf-8")
    missing = [key for key, text in SETTING_ERRORS.items() if f"`{_as_listed(text)}`" not in page]
    assert missing == []


def _sync_service() -> AmoOAuth:
    return AmoOAuth(config(), store=MemoryStore())


def _async_service() -> AsyncAmoOAuth:
    return AsyncAmoOAuth(config(), store=MemoryStore())


def _without_cryptography(make: Callable[[], object]) -> object:
    """``make()`` where ``cryptography`` cannot be imported (as where it is not installed)."""
    with mock.patch.dict(sys.modules, {"cryptography": None}):
        return make()


def _handlers(**options: object) -> Handlers:
    settings: dict[str, Any] = {"connection_id": lambda request: None, "app_scheme": "myapp"}
    return Handlers(object(), **{**settings, **options})  # type: ignore[arg-type]


#: One way to make each message, by key: every message is reachable and fills in.
TRIGGERS: dict[str, Callable[[], object]] = {
    "empty_text": lambda: config(client_id=" "),
    "not_utf8": lambda: config(client_secret="secret-\udcff-client"),
    "secret_not_utf8": lambda: config(previous_state_secrets=["old-\udcff-".ljust(40, "o")]),
    "url_type": lambda: config(redirect_uri=b"https://app.example.com/cb"),
    "url_invalid": lambda: config(redirect_uri="https://app.example.com:99999/cb"),
    "url_scheme": lambda: config(authorize_url="www.amocrm.ru/oauth"),
    "url_http": lambda: config(redirect_uri="http://app.example.com/cb"),
    "url_no_host": lambda: config(redirect_uri="https://:443/cb"),
    "url_userinfo": lambda: config(redirect_uri="https://a:b@app.example.com/cb"),
    "url_fragment": lambda: config(redirect_uri="https://app.example.com/cb#top"),
    "state_secret_type": lambda: config(state_secret=32),
    "state_secret_short": lambda: config(state_secret="short"),
    "state_secret_is_client_secret": lambda: config(client_secret="s" * 40, state_secret="s" * 40),
    "client_secret_missing": lambda: config(client_secret=None),
    "client_secret_with_secrets_uri": lambda: config(secrets_uri="https://app.example.com/s"),
    "url_unsendable": lambda: config(
        client_secret=None, secrets_uri="https://app.example.com/s?tenant=a&sig=b"
    ),
    "secrets_uri_needs_crypto": lambda: _without_cryptography(
        lambda: config(client_secret=None, secrets_uri="https://app.example.com/s")
    ),
    "previous_state_secrets_type": lambda: config(previous_state_secrets="o" * 32),
    "previous_state_secret_type": lambda: config(previous_state_secrets=[32]),
    "previous_state_secret_short": lambda: config(previous_state_secrets=["old"]),
    "previous_state_secrets_many": lambda: config(
        previous_state_secrets=[f"old-secret-{n}-".ljust(32, "o") for n in range(4)]
    ),
    "previous_state_secrets_repeated": lambda: config(
        previous_state_secrets=["o" * 40, ("o" * 40).encode()]
    ),
    "previous_state_secret_is_client_secret": lambda: config(
        client_secret="c" * 40, previous_state_secrets=["c" * 40]
    ),
    "previous_state_secret_is_current": lambda: config(
        state_secret="n" * 32, previous_state_secrets=[b"n" * 32]
    ),
    "mode": lambda: config(mode="redirect"),
    "forwarded_header": lambda: config(forwarded_header="X-Real-IP"),
    "trusted_proxies": lambda: config(trusted_proxies=-1),
    "domains_type": lambda: config(extra_domains="fake.test"),
    "domain_type": lambda: config(extra_domains=[None]),
    "domain_not_plain": lambda: config(extra_domains=["localhost"]),
    "domain_ip": lambda: config(extra_domains=["127.0.0.1"]),
    "duration_type": lambda: config(state_ttl=1800),
    "seconds_type": lambda: config(settle_timeout="5"),
    "count_type": lambda: config(max_exchanges_per_connection=None),
    "not_positive": lambda: config(refresh_margin=timedelta(0)),
    "ticket_ttl_long": lambda: config(ticket_ttl=timedelta(hours=1)),
    "secrets_wait_long": lambda: config(secrets_wait=1e10),
    "lease_short": lambda: config(http_timeout=30.0),
    "fraction_type": lambda: config(refresh_backoff_jitter="0.1"),
    "fraction_range": lambda: config(refresh_backoff_jitter=1.5),
    "backoff_long": lambda: config(refresh_backoff_initial=timedelta(days=3_000_000)),
    "backoff_order": lambda: config(
        refresh_backoff_initial=timedelta(minutes=10), refresh_backoff_max=timedelta(minutes=5)
    ),
    "api_rate_type": lambda: config(api_rate="7"),
    "api_rate_range": lambda: config(api_rate=-7),
    "api_max_wait": lambda: config(api_max_wait=-1),
    "app_scheme_type": lambda: _handlers(app_scheme=None),
    "sync_service": lambda: Handlers(
        _async_service(), connection_id=lambda r: None, app_scheme="a"
    ),
    "async_service": lambda: AsyncHandlers(
        _sync_service(), connection_id=lambda r: None, app_scheme="a"
    ),
    "app_scheme_empty": lambda: _handlers(app_scheme=""),
    "app_scheme_separator": lambda: _handlers(app_scheme="myapp://"),
    "app_scheme_syntax": lambda: _handlers(app_scheme="my_app"),
    "app_scheme_web": lambda: _handlers(app_scheme="HTTPS"),
    "app_scheme_browser": lambda: _handlers(app_scheme="javascript"),
    "prefix": lambda: _handlers(prefix="api"),
    "prefix_query": lambda: _handlers(prefix="/api?x=1"),
    "default_language": lambda: _handlers(default_language="de"),
    "limits": lambda: _handlers(max_body=0),
    "allowed_origin": lambda: _handlers(allowed_origins=["app.example"]),
    "allowed_origins_type": lambda: _handlers(allowed_origins="https://app.example"),
    "button_missing": lambda: Handlers(
        AmoOAuth(
            config(client_secret=None, secrets_uri="https://app.example.com/api/amo-crm/secrets"),
            store=MemoryStore(),
        ),
        connection_id=lambda r: None,
        app_scheme="a",
    ),
    "integrations_toml": lambda: parse_integrations("store = \n"),
    "integrations_none": lambda: parse_integrations('store = "sqlite:///a.db"'),
    "integrations_name": lambda: parse_integrations("[integrations.'a b']"),
    "integrations_table": lambda: parse_integrations("[integrations]\na = 1"),
    "integrations_unknown_key": lambda: parse_integrations(_integration("colour = 'blue'")),
    "integrations_secret": lambda: parse_integrations(_integration("client_secret = 'x'")),
    "integrations_type": lambda: parse_integrations(_integration("lease_ttl = '60'")),
    "integrations_seconds": lambda: parse_integrations(_integration("lease_ttl = nan")),
    "integrations_required": lambda: parse_integrations("[integrations.a]\nclient_id = 'a'"),
    "integrations_client_secret": lambda: parse_integrations(
        _integration("secrets_uri = 'https://app.example/s'")
    ),
    "integrations_env_name": lambda: parse_integrations(_integration("store_env = 'a b'")),
    "integrations_env_missing": lambda: (
        parse_integrations(_integration()).integrations[0].config({})
    ),
    "integrations_store_both": lambda: parse_integrations(
        _integration("store = 'sqlite:///a.db'", "store_env = 'A'")
    ),
    "integrations_store_password": lambda: parse_integrations(
        _integration("store = 'redis://:pw@cache.example/0'")
    ),
    "integrations_store_unparseable": lambda: parse_integrations(
        _integration("store = 'redis://:pw@[cache/0'")
    ),
    "integrations_client_id_twice": lambda: parse_integrations(
        _integration() + "\n" + _integration().replace("[integrations.a]", "[integrations.b]")
    ),
    "integrations_config": lambda: (
        parse_integrations(_integration("mode = 'redirect'")).integrations[0].config({})
    ),
    "integrations_unknown": lambda: parse_integrations(_integration()).named("b"),
    "web_integrations_type": lambda: Integrations([_sync_service()]),  # type: ignore[arg-type]
    "web_integrations_plain": lambda: Handlers(
        {"amocrm": _sync_service()},  # type: ignore[arg-type]
        connection_id=lambda r: None,
        app_scheme="a",
    ),
    "web_integrations_empty": lambda: Integrations({}),
    "web_integration_name": lambda: Integrations({"Kommo CRM": _sync_service()}),
    "web_integration_default": lambda: Integrations({"kommo": _sync_service()}, default="amocrm"),
    "web_integration_namespace": lambda: Integrations({"a": _sync_service(), "b": _sync_service()}),
    "web_integration_shared": lambda: Integrations(
        {
            "a": _sync_service(),
            "b": AmoOAuth(
                config(client_id="another", redirect_uri="https://other.example/cb"),
                store=MemoryStore(),
            ),
        }
    ),
}


def _integration(*lines: str) -> str:
    """An integrations file of one integration, ``a``: what it requires, then ``lines``."""
    required = [
        "[integrations.a]",
        "client_id = 'client-a'",
        "client_secret_env = 'AMO_A_SECRET'",
        "redirect_uri = 'https://app.example/cb'",
        "state_secret_env = 'AMO_STATE_SECRET'",
    ]
    return "\n".join([*required, *lines])


def test_every_message_is_raised_by_its_check():
    assert set(TRIGGERS) == set(SETTING_ERRORS)
    for key, trigger in TRIGGERS.items():
        with pytest.raises((TypeError, ValueError)) as refused:
            trigger()
        pattern = ".+".join(map(re.escape, re.split(r"\{\w+\}", SETTING_ERRORS[key])))
        assert re.fullmatch(pattern, str(refused.value)), (key, str(refused.value))


@pytest.mark.parametrize("field", ["client_id", "client_secret", "state_secret"])
def test_an_undecodable_secret_is_refused_without_showing_it(field: str) -> None:
    value = "TOPSECRET-value-" + "x" * 32 + "\udcff"
    with pytest.raises(ValueError, match=f"{field} is not valid text") as refused:
        config(**{field: value})
    assert "TOPSECRET" not in repr(refused.value) and "TOPSECRET" not in str(refused.value)
    assert refused.value.__cause__ is None and refused.value.__suppress_context__
