"""The OAuth state: signed, expiring, single-use; nothing else ever verifies."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amo_oauth._errors import CallbackRejected
from amo_oauth._events import CodeReceived
from amo_oauth._hosts import AccountHost
from amo_oauth._lifecycle import step
from amo_oauth._records import ConnectionRecord, Lease, code_digest
from amo_oauth._state_token import (
    UnsignedState,
    _b64,
    _mac,
    binding_hash,
    id_hash,
    issue_state,
    read_state,
)

from helpers import examples
from strategies import T0, aware_datetimes

SECRET = b"s" * 32
TTL = timedelta(minutes=10)
MS = timedelta(milliseconds=1)
secrets_ = st.binary(min_size=32, max_size=64)
connection_ids = st.text(min_size=1, max_size=255)


def rejected(secret: bytes, token: str) -> str:
    with pytest.raises(CallbackRejected) as caught:
        read_state([secret], token)
    return caught.value.reason


def payload_of(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@settings(max_examples=examples(500))
@given(secret=secrets_, connection_id=connection_ids, now=aware_datetimes)
def test_a_state_reads_back_as_issued(secret, connection_id, now):
    token, claims = issue_state(secret, connection_id, now, TTL, namespace="client-1")
    assert token.isascii()
    assert token.startswith("v2.")
    assert read_state([secret], token) == claims
    assert claims.names(connection_id)
    assert not claims.names(connection_id + "x")
    assert not claims.bound
    assert now - MS < claims.issued_at <= now
    assert claims.expires_at - claims.issued_at in (TTL - MS, TTL, TTL + MS)


def test_the_payload_holds_only_keyed_hashes_the_nonce_and_times():
    token, claims = issue_state(SECRET, "user-42", T0, TTL, "binding-secret", namespace="client-1")
    assert payload_of(token) == {
        "h": id_hash(SECRET, "user-42"),
        "b": binding_hash(SECRET, "binding-secret"),
        "n": claims.nonce,
        "i": int(T0.timestamp() * 1000),
        "e": int((T0 + TTL).timestamp() * 1000),
        "v": 0,  # the record version begin() read (none here)
        "k": payload_of(token)["k"],  # the integration's keyed hash (checked below)
    }
    assert read_state([SECRET], token, "client-1") == claims
    with pytest.raises(UnsignedState):  # another integration sharing the secret
        read_state([SECRET], token, "client-2")


def test_two_states_for_one_connection_have_different_nonces():
    first, second = (
        issue_state(SECRET, "user-42", T0, TTL, namespace="client-1")[1] for _ in range(2)
    )
    assert first.nonce != second.nonce
    assert len(first.nonce) >= 16


def test_the_token_holds_no_secret_and_the_claims_no_nonce_in_repr():
    token, claims = issue_state(SECRET, "user-42", T0, TTL, namespace="client-1")
    assert SECRET.decode() not in token
    assert _b64(SECRET) not in token
    assert SECRET.decode() not in json.dumps(payload_of(token))
    assert claims.nonce not in repr(claims)
    assert claims.id_hash not in repr(claims)


@pytest.mark.parametrize("connection_id", ["user-42", "alice.smith@corp.example", "Алиса"])
def test_the_state_names_no_connection_id(connection_id):
    token, claims = issue_state(
        SECRET, connection_id, T0, TTL, "binding-secret", namespace="client-1"
    )
    decoded = base64.urlsafe_b64decode(token.split(".")[1] + "==").decode()
    assert connection_id not in decoded
    assert connection_id not in token
    assert "binding-secret" not in decoded
    # The id and binding hashes are keyed and separated: neither passes for the other.
    assert claims.names(connection_id)
    assert claims.binds("binding-secret")
    assert not claims.binds(connection_id)
    assert id_hash(SECRET, "x") != binding_hash(SECRET, "x")
    assert id_hash(b"t" * 32, connection_id) != id_hash(SECRET, connection_id)


def test_an_unbound_state_binds_no_browser():
    _, claims = issue_state(SECRET, "user-42", T0, TTL, namespace="client-1")
    assert not claims.bound
    assert not claims.binds("")
    assert not claims.binds(None)


def test_a_first_format_state_is_refused():
    # v1 states showed the connection id and bound no browser: refused after the upgrade.
    body = json.dumps({"c": "user-42", "n": "nonce", "i": 1, "e": 2**41}).encode()
    payload = _b64(body)
    v1_mac = _b64(
        hmac.new(SECRET, b"amo_oauth.state.v1." + payload.encode(), hashlib.sha256).digest()
    )
    assert rejected(SECRET, f"v1.{payload}.{v1_mac}") == "bad_state"


@settings(max_examples=examples(500))
@given(data=st.data(), connection_id=connection_ids)
def test_any_single_character_tampering_is_refused(data, connection_id):
    token, _ = issue_state(SECRET, connection_id, T0, TTL, namespace="client-1")
    index = data.draw(st.integers(min_value=0, max_value=len(token) - 1), label="index")
    replacement = data.draw(
        st.characters(codec="utf-8").filter(lambda char: char != token[index]), label="char"
    )
    forged = token[:index] + replacement + token[index + 1 :]
    assert rejected(SECRET, forged) == "bad_state"


@settings(max_examples=examples(500))
@given(secret=secrets_, other=secrets_, connection_id=connection_ids)
def test_another_secret_never_verifies(secret, other, connection_id):
    token, _ = issue_state(secret, connection_id, T0, TTL, namespace="client-1")
    if other != secret:
        assert rejected(other, token) == "bad_state"


@settings(max_examples=examples(500))
@given(data=st.data(), connection_id=connection_ids)
def test_truncated_or_extended_tokens_are_refused(data, connection_id):
    token, _ = issue_state(SECRET, connection_id, T0, TTL, namespace="client-1")
    cut = data.draw(st.integers(min_value=0, max_value=len(token) - 1), label="cut")
    assert rejected(SECRET, token[:cut]) == "bad_state"
    assert rejected(SECRET, token + data.draw(st.text(min_size=1), label="tail")) == "bad_state"


@settings(max_examples=examples(500))
@given(token=st.text(max_size=3000))
def test_any_text_is_refused_without_crashing(token):
    assert rejected(SECRET, token) == "bad_state"


def sign(payload: str) -> str:
    return f"v2.{payload}.{_mac(SECRET, payload)}"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'"text"',
        b'{"h": "u", "b": "", "n": "x", "i": 1}',
        b'{"h": "u", "b": "", "n": "x", "i": "a", "e": 1}',
        b'{"h": "u", "b": "", "n": "x", "i": 1, "e": 1e300}',
        b'{"h": 1, "b": "", "n": "x", "i": 1, "e": 1}',
        b'{"h": "u", "b": null, "n": "x", "i": 1, "e": 1}',
        b'{"c": "u", "n": "x", "i": 1, "e": 1}',
        b"\xff\xfe",
    ],
)
def test_a_signed_but_malformed_payload_is_refused(body):
    assert rejected(SECRET, sign(_b64(body))) == "bad_state"


def test_a_mac_without_the_domain_separation_prefix_is_refused():
    token, _ = issue_state(SECRET, "user-42", T0, TTL, namespace="client-1")
    payload = token.split(".")[1]
    bare = _b64(hmac.new(SECRET, payload.encode(), hashlib.sha256).digest())
    assert rejected(SECRET, f"v2.{payload}.{bare}") == "bad_state"


@pytest.mark.parametrize("prefix", ["v1", "V2", "", "v2 ", "v3"])
def test_another_version_prefix_is_refused(prefix):
    token, _ = issue_state(SECRET, "user-42", T0, TTL, namespace="client-1")
    assert rejected(SECRET, prefix + token.removeprefix("v2")) == "bad_state"


@pytest.mark.parametrize("connection_id", ["u" * 255, "я" * 255, "😀" * 255])
def test_any_id_the_service_accepts_makes_a_state_that_verifies(connection_id):
    # Was a bug: \u-escaped JSON made a 200-character Cyrillic id's state too long to read back.
    token, claims = issue_state(SECRET, connection_id, T0, TTL, namespace="client-1")
    assert read_state([SECRET], token) == claims
    assert len(token) < 240  # the state's size no longer depends on the id's


def test_a_non_ascii_token_is_refused_not_crashed_on():
    # Was a bug: UnicodeEncodeError escaped from the MAC check.
    assert rejected(SECRET, "v2.é.mac") == "bad_state"


# --- expiry and single use: rules of the lifecycle table, fed by what the store holds -------


def code_with(claims, raw: str, used_with: str | None) -> CodeReceived:
    lease = Lease("w", "exchange", claims.expires_at + TTL)
    return CodeReceived(
        code_digest(raw),
        AccountHost("acme.amocrm.ru"),
        lease,
        claims.issued_at,
        state_expires_at=claims.expires_at,
        state_holder=used_with,
    )


def test_a_state_is_used_once_then_its_other_codes_are_duplicates_of_that_consent():
    _, claims = issue_state(SECRET, "user-42", T0, TTL, namespace="client-1")
    fresh = ConnectionRecord("user-42")
    assert step(fresh, code_with(claims, "code-1", None), T0).changed
    assert step(fresh, code_with(claims, "code-1", code_digest("code-1")), T0).changed
    again = step(fresh, code_with(claims, "code-2", code_digest("code-1")), T0)
    assert (again.changed, again.noop) == (False, "duplicate_consent")


def test_a_state_expires_exactly_at_expires_at():
    _, claims = issue_state(SECRET, "user-42", T0, TTL, namespace="client-1")
    fresh = ConnectionRecord("user-42")
    just_before = claims.expires_at - timedelta(microseconds=1)
    assert step(fresh, code_with(claims, "c", None), just_before).changed
    late = step(fresh, code_with(claims, "c", None), claims.expires_at)
    assert (late.changed, late.noop) == (False, "expired_state")


@settings(max_examples=examples(500))
@given(
    issued=aware_datetimes,
    later=st.timedeltas(min_value=timedelta(0), max_value=timedelta(minutes=30)),
    codes=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=6),
)
def test_use_follows_expiry_and_the_first_code(issued, later, codes):
    _, claims = issue_state(SECRET, "user-42", issued, TTL, namespace="client-1")
    now = claims.issued_at + later
    first = code_digest(codes[0])
    for raw in codes:
        result = step(ConnectionRecord("user-42"), code_with(claims, raw, first), now)
        if now >= claims.expires_at:
            assert result.noop == "expired_state"
        elif raw == codes[0]:
            assert result.changed
        else:
            assert result.noop == "duplicate_consent"


def test_a_state_that_brought_a_denial_refuses_any_code():
    _, claims = issue_state(SECRET, "user-42", T0, TTL, namespace="client-1")
    refused = step(ConnectionRecord("user-42"), code_with(claims, "c", "denied"), T0)
    assert (refused.changed, refused.noop) == (False, "reused_state")
