"""amoCRM's redirect back: a grant, a denial, or a refusal with a stable reason; never a crash."""

from __future__ import annotations

from collections.abc import Iterator

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amo_oauth._callback import Denial, Grant, parse_callback
from amo_oauth._config import Config
from amo_oauth._errors import CallbackRejected
from amo_oauth._hosts import AccountHost
from amo_oauth._records import code_digest
from amo_oauth._state_token import issue_state

from helpers import examples
from strategies import T0

CONFIG = Config(
    client_id="client-1",
    client_secret="client-secret-1",
    redirect_uri="https://app.example.com/api/amo-crm/callback",
    state_secret=b"k" * 32,
)
WIDGETS = attrs.evolve(CONFIG, allow_widget_installs=True)
STATE, CLAIMS = issue_state(
    CONFIG.state_secret, "user-42", T0, CONFIG.state_ttl, namespace=CONFIG.client_id
)
FORGED, _ = issue_state(b"x" * 32, "user-42", T0, CONFIG.state_ttl, namespace=CONFIG.client_id)
CODE = "def50200-one-time-code"


def query(**params: object) -> dict[str, object]:
    base: dict[str, object] = {
        "code": CODE,
        "state": STATE,
        "referer": "acme.amocrm.ru",
        "client_id": "client-1",
    }
    base.update(params)
    return {key: value for key, value in base.items() if value is not None}


def reason(query_: object, config: Config = CONFIG) -> str:
    with pytest.raises(CallbackRejected) as caught:
        parse_callback(query_, config)
    return caught.value.reason


def test_a_redirect_with_a_code_is_a_grant():
    grant = parse_callback(query(), CONFIG)
    assert grant == Grant(CODE, AccountHost("acme.amocrm.ru"), CLAIMS)
    assert grant.code_digest == code_digest(CODE)
    assert grant.from_widget is False


def test_client_id_may_be_absent():
    assert isinstance(parse_callback(query(client_id=None), CONFIG), Grant)


def test_a_grant_repr_never_shows_the_code():
    assert CODE not in repr(parse_callback(query(), CONFIG))


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"code": None}, "missing_code"),
        ({"code": ""}, "missing_code"),
        ({"referer": None}, "missing_referer"),
        ({"referer": ""}, "missing_referer"),
        ({"state": None}, "bad_state"),
        ({"state": ""}, "bad_state"),
        ({"state": "v1." + STATE[3:]}, "bad_state"),
        ({"referer": "acme.amocrm.ru.evil.com"}, "foreign_host"),
        ({"referer": "evil.com"}, "foreign_host"),
        ({"referer": "acme.amocrm.ru:8443"}, "foreign_host"),
        ({"client_id": "client-2"}, "client_id_mismatch"),
        ({"client_id": "client-2", "code": None, "error": "access_denied"}, "client_id_mismatch"),
        ({"code": "x" * 2049}, "malformed"),
        ({"code": "a\x00b"}, "malformed"),
        ({"code": 1234}, "malformed"),
        ({"code": None, "state": None}, "bad_state"),
    ],
)
def test_each_rejection_has_its_reason(params, expected):
    assert reason(query(**params)) == expected


def test_a_code_with_a_state_no_accepted_secret_signed_is_an_unsigned_grant():
    # Signed under a secret removed since a rotation (or forged): the flow answers the code
    # only if the ledger holds it (the seed's replay), else bad_state.
    for state in (FORGED, STATE + "x"):
        grant = parse_callback(query(state=state), CONFIG)
        assert isinstance(grant, Grant)
        assert (grant.state, grant.state_unsigned, grant.from_widget) == (None, True, False)
    assert reason(query(state=FORGED, code=None, error="access_denied")) == "bad_state"
    assert reason(query(state=FORGED, code=None)) == "missing_code"


def test_a_value_of_exactly_the_limit_is_allowed():
    assert parse_callback(query(code="x" * 2048), CONFIG).code == "x" * 2048


def test_thirty_two_params_pass_and_thirty_three_do_not():
    padding = {f"p{n}": "v" for n in range(28)}
    assert isinstance(parse_callback(query(**padding), CONFIG), Grant)
    assert reason(query(**padding, extra="v")) == "malformed"


def test_a_repeated_name_in_pairs_is_malformed():
    pairs = [*query().items(), ("code", "other-code")]
    assert reason(pairs) == "malformed"


def test_pairs_with_single_names_are_a_grant():
    assert parse_callback(list(query().items()), CONFIG) == parse_callback(query(), CONFIG)


@pytest.mark.parametrize("value", [[CODE, "other-code"], [], (CODE, CODE)])
def test_several_values_for_one_name_are_malformed(value):
    assert reason(query(code=value)) == "malformed"


def test_one_item_lists_count_as_single_values():
    lists = {key: [value] for key, value in query().items()}
    assert parse_callback(lists, CONFIG) == parse_callback(query(), CONFIG)


def test_a_non_text_name_is_malformed():
    assert reason({**query(), 7: "x"}) == "malformed"


class MultiDict(dict):
    """A werkzeug/starlette-like multi-dict: iterates names once, ``getlist`` gives all values."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs

    def getlist(self, key: str) -> list[str]:
        return [value for name, value in self.pairs if name == key]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name for name, _ in self.pairs))


def test_a_multi_dict_is_asked_for_every_value():
    single = MultiDict(list(query().items()))
    assert isinstance(parse_callback(single, CONFIG), Grant)
    repeated = MultiDict([*query().items(), ("code", "other-code")])
    assert reason(repeated) == "malformed"


def test_a_denial_with_a_valid_state():
    denial = parse_callback(query(code=None, referer=None, error="access_denied"), CONFIG)
    assert denial == Denial("access_denied", CLAIMS)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"error": "access_denied", "state": None}, "bad_state"),
        ({"error": "access_denied", "state": FORGED}, "bad_state"),
        ({"error": "Access Denied"}, "malformed"),
        ({"error": ""}, "malformed"),
        ({"error": "a" * 65}, "malformed"),
        ({"error": "<script>"}, "malformed"),
    ],
)
def test_a_denial_needs_a_valid_state_and_a_slug(params, expected):
    assert reason(query(code=None, **params)) == expected


def test_a_widget_install_is_refused_by_default():
    install = query(state=None, from_widget="1")
    assert reason(install) == "widget_installs_disabled"


def test_a_widget_install_is_a_grant_without_state_when_allowed():
    grant = parse_callback(query(state=None, from_widget="1"), WIDGETS)
    assert grant == Grant(CODE, AccountHost("acme.amocrm.ru"), None, from_widget=True)


@pytest.mark.parametrize(
    ("params", "expected"),
    [({"code": None}, "missing_code"), ({"referer": "evil.com"}, "foreign_host")],
)
def test_an_allowed_widget_install_is_still_checked(params, expected):
    assert reason(query(state=None, from_widget="1", **params), WIDGETS) == expected


def test_from_widget_with_a_state_is_an_ordinary_redirect():
    grant = parse_callback(query(from_widget="1"), CONFIG)
    assert (grant.from_widget, grant.state) == (False, CLAIMS)
    assert parse_callback(query(from_widget="1", state=FORGED), WIDGETS).state_unsigned


def test_without_from_widget_a_missing_state_is_bad_even_when_widgets_are_allowed():
    assert reason(query(state=None), WIDGETS) == "bad_state"


NAMES = st.sampled_from(["code", "state", "referer", "client_id", "error", "from_widget"])
VALUES = st.one_of(
    st.text(),
    st.sampled_from([STATE, FORGED, "acme.amocrm.ru", "client-1", "1", "access_denied", ""]),
    st.integers(min_value=2040, max_value=2060).map(lambda size: "c" * size),
)
junk_queries = st.dictionaries(NAMES | st.text(max_size=10), VALUES, max_size=40)
# Near misses: a good redirect (or denial) with some names dropped and a few others set.
near_misses = st.builds(
    lambda base, dropped, changes: {
        **{key: value for key, value in base.items() if key not in dropped},
        **changes,
    },
    st.sampled_from([query(), query(code=None, referer=None, error="access_denied")]),
    st.sets(NAMES, max_size=2),
    st.dictionaries(NAMES | st.text(max_size=10), VALUES, max_size=3),
)
queries = junk_queries | near_misses


REJECTIONS = {
    "client_id_mismatch",
    "missing_code",
    "missing_referer",
    "bad_state",
    "foreign_host",
    "malformed",
    "widget_installs_disabled",
}


def outcome(query_: object, config: Config) -> Grant | Denial | str:
    """What parsing gives: the grant or denial, or the rejection's reason."""
    try:
        return parse_callback(query_, config)
    except CallbackRejected as rejection:
        return rejection.reason


@settings(max_examples=examples(500))
@given(query_=queries, config=st.sampled_from([CONFIG, WIDGETS]))
def test_any_text_query_is_parsed_or_rejected_never_crashed_on(query_, config):
    parsed = outcome(query_, config)
    if isinstance(parsed, Grant):
        assert parsed.code == query_["code"]
        assert parsed.host.name == query_["referer"]
        signed = not (parsed.from_widget or parsed.state_unsigned)
        assert parsed.state == (CLAIMS if signed else None)
        assert parsed.state_unsigned >= (query_.get("state") == FORGED)
        assert not (parsed.state_unsigned and query_["state"] == STATE)
    elif isinstance(parsed, Denial):
        assert (parsed.reason, parsed.state) == (query_["error"], CLAIMS)
    else:
        assert parsed in REJECTIONS


junk = st.one_of(st.none(), st.integers(), st.binary(), st.lists(st.text(), max_size=3), st.text())


@settings(max_examples=examples(500))
@given(pairs=st.lists(st.tuples(NAMES | st.text(max_size=5) | st.integers(), junk), max_size=8))
def test_any_pairs_of_anything_are_parsed_or_rejected(pairs):
    parsed = outcome(pairs, WIDGETS)
    assert isinstance(parsed, Grant | Denial) or parsed in REJECTIONS
