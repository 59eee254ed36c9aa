"""Records and events: validated on construction, secrets out of reprs, a lossless codec."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings

from amo_oauth._codec import record_from_json, record_to_json
from amo_oauth._events import (
    CodeReceived,
    Denied,
    Disconnect,
    LeaseExpired,
    ProviderDisconnected,
    RefreshClaimed,
    Verified,
)
from amo_oauth._hosts import AccountHost
from amo_oauth._records import (
    Account,
    ConnectionRecord,
    ConnectionStatus,
    ErrorInfo,
    Lease,
    SeenCode,
    TokenSet,
    code_digest,
)

from helpers import examples
from strategies import T0, records

NAIVE = datetime(2030, 1, 1)
HOST = AccountHost("acme.amocrm.ru")
EXCHANGE = Lease("worker-1", "exchange", T0)
TOKENS = TokenSet("access-SECRET-1", "refresh-SECRET-2", T0, T0 + timedelta(days=90))
ACCOUNT = Account(42, "acme", "Acme")


def test_token_reprs_hide_the_tokens():
    for shown in (repr(TOKENS), str(TOKENS), repr(ConnectionRecord("c", tokens=TOKENS))):
        assert "access-SECRET-1" not in shown
        assert "refresh-SECRET-2" not in shown


def test_an_authorization_requests_repr_shows_neither_its_state_nor_its_binding():
    """The URL carries the state (it must: the browser takes it to amoCRM); its repr did too."""
    from amo_oauth import AuthorizationRequest

    begun = AuthorizationRequest(
        "https://www.amocrm.ru/oauth?client_id=c&state=STATE-SECRET&mode=post_message",
        "STATE-SECRET",
        T0,
        "BINDING-SECRET",
    )
    shown = repr(begun)
    assert "STATE-SECRET" not in shown and "BINDING-SECRET" not in shown
    assert "https://www.amocrm.ru/oauth?..." in shown


def test_the_public_view_holds_no_secret_and_no_digest():
    record = ConnectionRecord(
        "c",
        status=ConnectionStatus.CONNECTED,
        version=3,
        host="acme.amocrm.ru",
        tokens=TOKENS,
        account=ACCOUNT,
        seen_codes=(SeenCode(code_digest("code-1"), T0),),
        lease=EXCHANGE,
    )
    public = record.public()
    assert (public.connection_id, public.status, public.account) == ("c", record.status, ACCOUNT)
    assert (public.expires_at, public.error, public.version) == (T0, None, 3)
    assert public.is_connected
    assert code_digest("code-1") not in repr(public)
    assert "SECRET" not in repr(public)


@pytest.mark.parametrize(
    "make",
    [
        lambda: TokenSet("a", "r", NAIVE, T0),
        lambda: TokenSet("a", "r", T0, NAIVE),
        lambda: ErrorInfo("code_rejected", None, NAIVE),
        lambda: Lease("w", "exchange", NAIVE),
        lambda: ConnectionRecord("c", connected_at=NAIVE),
        lambda: ConnectionRecord("c", updated_at=NAIVE),
        lambda: Denied(NAIVE),
        lambda: LeaseExpired(NAIVE),
        lambda: Verified(ACCOUNT, NAIVE),
        lambda: ProviderDisconnected(NAIVE),
        lambda: CodeReceived(code_digest("c"), HOST, EXCHANGE, NAIVE),
    ],
    ids=[
        "tokens.expires_at",
        "tokens.refresh_expires_at",
        "error.at",
        "lease.expires_at",
        "record.connected_at",
        "record.updated_at",
        "denied.at",
        "lease_expired.at",
        "verified.at",
        "provider_disconnected.at",
        "code_received.state_issued_at",
    ],
)
def test_naive_datetimes_are_refused_on_construction(make):
    with pytest.raises(ValueError, match="must be timezone-aware"):
        make()


@pytest.mark.parametrize(
    "digest",
    [
        "def50200-raw-code",
        code_digest("c").upper(),
        code_digest("c")[:-1],
        code_digest("c") + "0",
        code_digest("c") + "\n",
        "",
    ],
)
def test_code_received_takes_only_a_sha256_digest(digest):
    with pytest.raises(ValueError, match="never a raw code"):
        CodeReceived(digest, HOST, EXCHANGE)


def test_leases_are_checked_for_their_purpose():
    with pytest.raises(ValueError, match="'purpose' must be in"):
        Lease("w", "other", T0)
    with pytest.raises(ValueError, match="lease must be a exchange lease"):
        CodeReceived(code_digest("c"), HOST, Lease("w", "refresh", T0))
    with pytest.raises(ValueError, match="lease must be a refresh lease"):
        RefreshClaimed(EXCHANGE, T0)


def test_a_record_needs_a_connection_id():
    with pytest.raises(ValueError, match="connection_id"):
        ConnectionRecord("")


def test_code_digest_is_the_sha256_hex_of_the_utf8_code():
    assert code_digest("код") == hashlib.sha256("код".encode()).hexdigest()


def test_with_code_keeps_each_code_once():
    seen = tuple(SeenCode(code_digest(str(n)), T0) for n in range(3))
    record = ConnectionRecord("c", seen_codes=seen)
    assert record.with_code(seen[0].digest, T0) == seen
    added = record.with_code(code_digest("new"), T0)
    assert added == (*seen, SeenCode(code_digest("new"), T0))


def test_leases_and_tokens_know_when_they_end():
    record = ConnectionRecord("c", lease=EXCHANGE)
    assert record.live_lease(T0 - timedelta(microseconds=1)) == EXCHANGE
    assert record.live_lease(T0) is None
    assert TOKENS.is_fresh(T0 - timedelta(minutes=6), timedelta(minutes=5))
    assert not TOKENS.is_fresh(T0 - timedelta(minutes=5), timedelta(minutes=5))


def test_a_code_claim_sets_host_digest_and_lease_and_clears_the_error():
    record = ConnectionRecord("c", error=ErrorInfo("code_rejected", None, T0))
    changes = CodeReceived(code_digest("c"), HOST, EXCHANGE).changes(record, T0)
    assert changes == {
        "host": "acme.amocrm.ru",
        "seen_codes": (SeenCode(code_digest("c"), T0),),
        "lease": EXCHANGE,
        "error": None,
    }


def test_disconnect_forgets_everything_but_the_seen_codes():
    changes = Disconnect().changes(ConnectionRecord("c"), T0)
    assert "seen_codes" not in changes
    assert changes == dict.fromkeys(
        (
            "tokens",
            "account",
            "error",
            "lease",
            "host",
            "connected_at",
            "refused_refresh",
            "kept_pair_until",
            "backoff",
        ),
        None,
    )


# --- the codec ---------------------------------------------------------------------------------


@settings(max_examples=examples(500))
@given(record=records)
def test_the_codec_round_trips_every_record(record):
    text = record_to_json(record)
    assert record_from_json(text) == record
    assert record_from_json(text.encode("utf-8")) == record
    assert record_to_json(record_from_json(text)) == text


def test_the_codec_writes_a_versioned_plain_json_document():
    record = ConnectionRecord("c", tokens=TOKENS, account=ACCOUNT, lease=EXCHANGE)
    body = json.loads(record_to_json(record))
    assert body["format"] == 2
    assert body["status"] == "disconnected"
    assert "state" not in body
    assert body["tokens"]["refresh_token"] == "refresh-SECRET-2"
    lease = {"owner": "worker-1", "purpose": "exchange", "expires_at": "2030-01-01T00:00:00+00:00"}
    assert body["lease"] == lease


def test_the_codec_refuses_an_unknown_format():
    body = json.loads(record_to_json(ConnectionRecord("c")))
    with pytest.raises(ValueError, match="unknown record format"):
        record_from_json(json.dumps({**body, "format": 3}))
    # Format 1 named the status "state": refused, never read as a record without one.
    old = {**{k: v for k, v in body.items() if k != "status"}, "format": 1, "state": "connected"}
    with pytest.raises(ValueError, match="unknown record format"):
        record_from_json(json.dumps(old))
