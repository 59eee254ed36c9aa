"""The account-host allowlist: secrets only ever go to ``<one label>.<allowed domain>``."""

from __future__ import annotations

import string

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amo_oauth._hosts import DEFAULT_DOMAINS, AccountHost, check_domain

from helpers import examples

LABEL_CHARS = frozenset(string.ascii_lowercase + string.digits + "-")


def is_account_host(name: object, domains: tuple[str, ...] = DEFAULT_DOMAINS) -> bool:
    """The oracle: exactly one lower-case ASCII label (not punycode), a dot, an allowed domain."""
    if not isinstance(name, str):
        return False
    labels = [name.removesuffix("." + domain) for domain in domains if name.endswith("." + domain)]
    return any(
        1 <= len(label) <= 63
        and set(label) <= LABEL_CHARS
        and label[0] != "-"
        and label[-1] != "-"
        and label != "www"
        and not label.startswith("xn--")
        for label in labels
    )


@pytest.mark.parametrize(
    "name",
    ["test.amocrm.ru", "x.kommo.com", "a-b1.amocrm.com", "7.amocrm.ru", "a" * 63 + ".kommo.com"],
)
def test_plain_account_hosts_are_accepted(name):
    host = AccountHost.accept(name)
    assert host is not None
    assert host.name == name
    assert host.token_url == f"https://{name}/oauth2/access_token"


REJECTED = {
    "port": "x.amocrm.ru:443",
    "userinfo": "u@x.amocrm.ru",
    "userinfo and port": "u:p@x.amocrm.ru:8443",
    "path": "x.amocrm.ru/oauth2",
    "query": "x.amocrm.ru?a=b",
    "fragment": "x.amocrm.ru#f",
    "scheme": "https://x.amocrm.ru",
    "backslash": "x.amocrm.ru\\evil.com",
    "ipv4": "127.0.0.1",
    "ipv6": "[::1]",
    "trailing dot": "x.amocrm.ru.",
    "leading dot": ".amocrm.ru",
    "empty label": "x..amocrm.ru",
    "domain as prefix": "amocrm.ru.evil.com",
    "host as prefix": "x.amocrm.ru.evil.com",
    "look-alike domain": "x.amocrm.ru-evil.com",
    "bare domain": "amocrm.ru",
    "www": "www.amocrm.ru",
    "two labels deep": "a.b.amocrm.ru",
    "upper case label": "Test.amocrm.ru",
    "upper case domain": "test.AMOCRM.RU",
    "cyrillic a in the domain": "test.аmocrm.ru",
    "punycode of the look-alike": "test.xn--mocrm-3ve.ru",
    "cyrillic label": "тест.amocrm.ru",
    "punycode label": "xn--80a.amocrm.ru",
    "invalid punycode label": "xn--a.amocrm.ru",
    "fullwidth dot": "x．amocrm.ru",
    "ideographic dot": "x。amocrm.ru",
    "roman numeral look-alike": "ⅹ.amocrm.ru",
    "leading hyphen": "-x.amocrm.ru",
    "trailing hyphen": "x-.amocrm.ru",
    "underscore": "x_y.amocrm.ru",
    "leading space": " x.amocrm.ru",
    "trailing newline": "x.amocrm.ru\n",
    "inner tab": "x\t.amocrm.ru",
    "nul byte": "x\x00.amocrm.ru",
    "empty": "",
    "label too long": "a" * 64 + ".amocrm.ru",
    "very long": "a" * 5000 + ".amocrm.ru",
    "percent-encoded dot": "x%2eamocrm.ru",
}


@pytest.mark.parametrize("name", REJECTED.values(), ids=REJECTED.keys())
def test_anything_else_is_refused(name):
    assert AccountHost.accept(name) is None
    with pytest.raises(ValueError, match=r"^host is not an allowed amoCRM account host$"):
        AccountHost(name)


@pytest.mark.parametrize("name", [None, b"x.amocrm.ru", 42, ["x.amocrm.ru"]])
def test_a_non_string_is_refused(name):
    assert AccountHost.accept(name) is None


def test_the_oracle_agrees_with_the_examples():
    assert not any(is_account_host(name) for name in REJECTED.values())
    assert is_account_host("a-b1.amocrm.com")


valid_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True).filter(
    lambda text: text != "www" and not text.startswith("xn--")
)
label = st.text(alphabet="abcxyz019-_.@:/ AЅаⅹ．\x00\n", max_size=8) | st.sampled_from(
    ["www", "a" * 63, "a" * 64, "xn--80a", "xn--a", "-", "api-b"]
)
separator = st.sampled_from([".", "", "..", "@", ":", "/", "．", "%2e", " "])
domain = st.sampled_from([*DEFAULT_DOMAINS, "AMOCRM.RU", "amocrm.ru.", "аmocrm.ru", "amocrm", "ru"])
suffix = st.sampled_from(["", ".", ".evil.com", ":443", "/x", "?a=b", "#", " ", "\n", "\x00"])
prefix = st.sampled_from(["", "u@", "https://", ".", " ", "a."])
hostile = st.builds(lambda *parts: "".join(parts), prefix, label, separator, domain, suffix)
# Near misses: a label, good or bad, a dot and a domain, good or bad.
plausible = st.builds(lambda *parts: ".".join(parts), valid_label | label, domain)
names = st.text() | hostile | plausible


@settings(max_examples=examples(500))
@given(name=names)
def test_only_one_label_under_an_allowed_domain_is_ever_accepted(name):
    host = AccountHost.accept(name)
    assert (host is not None) == is_account_host(name)
    if host is not None:
        assert host.name == name
        assert host.token_url == f"https://{name}/oauth2/access_token"
        assert httpx.URL(host.token_url).host == name


@settings(max_examples=examples(500))
@given(label=valid_label, domain=st.sampled_from(DEFAULT_DOMAINS))
def test_every_plain_label_under_an_allowed_domain_is_accepted(label, domain):
    host = AccountHost.accept(f"{label}.{domain}")
    assert host is not None
    assert host.token_url == f"https://{label}.{domain}/oauth2/access_token"


def test_extra_domains_add_and_never_remove():
    extra = ("fake.test", "amo.example.org")
    assert AccountHost.accept("acme.fake.test", extra) is not None
    assert AccountHost.accept("acme.amo.example.org", extra) is not None
    for domain in DEFAULT_DOMAINS:
        assert AccountHost.accept(f"acme.{domain}", extra) is not None
    assert AccountHost.accept("acme.fake.test") is None
    assert AccountHost.accept("a.b.fake.test", extra) is None
    assert AccountHost.accept("fake.test", extra) is None


@settings(max_examples=examples(500))
@given(name=names, extra=st.sampled_from([("fake.test",), ("x.amocrm.ru",)]))
def test_extra_domains_accept_exactly_what_the_oracle_does(name, extra):
    accepted = AccountHost.accept(name, extra) is not None
    assert accepted == is_account_host(name, (*DEFAULT_DOMAINS, *extra))


@pytest.mark.parametrize(
    "bad", ["test", "", ".test", "fake..test", "Fake.test", "10.0.0.1", "f ake.test", "аmo.test"]
)
def test_a_bad_extra_domain_raises(bad):
    with pytest.raises(ValueError, match=r"^(not a plain domain name|an IP address)"):
        check_domain(bad)
    with pytest.raises(ValueError, match=r"^(not a plain domain name|an IP address)"):
        AccountHost("acme.amocrm.ru", (bad,))


def test_a_good_extra_domain_is_returned_as_is():
    assert check_domain("fake.test") == "fake.test"


def test_url_builds_on_the_host_only():
    host = AccountHost("acme.amocrm.ru")
    assert host.url("/api/v4/account") == "https://acme.amocrm.ru/api/v4/account"


@pytest.mark.parametrize("path", ["api/v4/account", "//evil.com/x", "", "https://evil.com/"])
def test_url_refuses_relative_and_protocol_relative_paths(path):
    with pytest.raises(ValueError, match=r"^path must be absolute and on this host$"):
        AccountHost("acme.amocrm.ru").url(path)


@settings(max_examples=examples(500))
@given(path=st.text(alphabet="/\\@:?#.evilcom %\t", max_size=12))
def test_no_path_moves_the_request_to_another_host(path):
    host = AccountHost("acme.amocrm.ru")
    try:
        url = host.url(path)
    except ValueError:
        assert not path.startswith("/") or path.startswith("//")
        return
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return  # httpx would not send it anywhere
    assert parsed.host == "acme.amocrm.ru"
    assert parsed.port is None


def test_hosts_compare_and_show_by_name_only():
    extra = ("fake.test",)
    assert AccountHost("acme.fake.test", extra) == AccountHost("acme.fake.test", (*extra, "x.test"))
    assert repr(AccountHost("acme.fake.test", extra)) == "AccountHost(name='acme.fake.test')"


@pytest.mark.parametrize(
    "typed",
    [
        "test.amocrm.ru",
        "TEST.AMOCRM.RU",
        "https://test.amocrm.ru/",
        "https://Test.amoCRM.ru",
        "http://test.amocrm.ru/",
        "  test.amocrm.ru/  ",
    ],
)
def test_a_typed_host_in_any_case_with_a_scheme_or_a_slash_is_accepted(typed: str) -> None:
    host = AccountHost.typed(typed)
    assert host is not None and host.name == "test.amocrm.ru"


@pytest.mark.parametrize(
    "typed",
    [
        "https://test.amocrm.ru/leads",
        "https://test.amocrm.ru:8443/",
        "https://user@test.amocrm.ru/",
        "https://test.amocrm.ru/?x=1",
        "https://test.amocrm.ru//",
        "https://https://test.amocrm.ru",
        "ftp://test.amocrm.ru",
        "https://evil.example.com/",
        "https://test.amocrm.ru.evil.com/",
        "\u212a.amocrm.ru",  # the Kelvin sign lower-cases to an ASCII "k"
        "",
    ],
)
def test_a_typed_host_with_anything_more_is_refused(typed: str) -> None:
    assert AccountHost.typed(typed) is None
