"""The lifecycle table: total, and a known code is a no-op whatever happened before."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from amo_oauth._errors import InvalidTransition
from amo_oauth._events import (
    EVENT_TYPES,
    CodeReceived,
    CredentialsReceived,
    Denied,
    Disconnect,
    Event,
    ExchangeFailed,
    ExchangeSucceeded,
    LeaseExpired,
    LongLivedEnded,
    LongLivedInstalled,
    ProviderDisconnected,
    RefreshClaimed,
    RefreshDeferred,
    RefreshDoubted,
    Refreshed,
    RefreshFailed,
    RefreshReleased,
    Verified,
    VerifyClaimed,
    VerifyDeferred,
    VerifyFailed,
)
from amo_oauth._hosts import AccountHost
from amo_oauth._lifecycle import MACHINE, TABLE, step
from amo_oauth._records import (
    MAX_CODE_DIGESTS,
    Account,
    ClientCredentials,
    ConnectionRecord,
    ConnectionStatus,
    ErrorInfo,
    Lease,
    SeenCode,
    TokenSet,
    code_digest,
)

from helpers import examples
from strategies import T0, any_event, digests, events, records

S = ConnectionStatus
HEX64 = re.compile(r"[0-9a-f]{64}")
HOST = AccountHost("acme.amocrm.ru")
LEASE = Lease("worker-1", "exchange", T0 + timedelta(minutes=1))
TOKENS = TokenSet("access-1", "refresh-1", T0 + timedelta(days=1), T0 + timedelta(days=90))
ERROR = ErrorInfo("code_rejected", "Authorization code has been revoked", T0)
ERROR_REFUSED = ErrorInfo("reauthorization_required", "Token has been revoked", T0)


def rules_for(status: ConnectionStatus, event_name: str) -> list:
    return [rule for rule in TABLE if rule.event == event_name and status in rule.sources]


def code(raw: str, state_issued_at=None) -> CodeReceived:
    return CodeReceived(code_digest(raw), HOST, LEASE, state_issued_at)


def run(record: ConnectionRecord, *events_: object) -> ConnectionRecord:
    for event in events_:
        record = step(record, event, T0).record
    return record


def connected_with(raw: str) -> ConnectionRecord:
    """The seed's first callback: code -> code_received -> exchanged -> connected."""
    account = Account(42, "acme", "Acme")
    return run(
        ConnectionRecord("user-42"),
        code(raw, T0),
        ExchangeSucceeded(TOKENS),
        Verified(account, T0 + timedelta(seconds=2)),
    )


# --- totality --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", list(S))
@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
def test_every_pair_ends_in_an_unguarded_rule(status, event_type):
    rules = rules_for(status, event_type.name)
    assert rules, f"no rule for {event_type.name} in {status}"
    *guarded, last = rules
    assert last.guard is None
    assert last.dest is not None or last.noop
    # A rule after an unguarded one could never fire.
    assert all(rule.guard is not None for rule in guarded)


def test_every_noop_names_its_reason_and_no_transition_does():
    for rule in TABLE:
        assert (rule.dest is None) == (rule.noop is not None), rule


def test_the_table_only_knows_the_event_types():
    assert {rule.event for rule in TABLE} == {t.name for t in EVENT_TYPES}
    assert set(MACHINE.events) == {t.name for t in EVENT_TYPES}


# What each event does in each status, read off the design's diagram (no known code, no fresh
# state): a status is a transition, a slug a documented no-op.
D, CR, EX, C, E = S.DISCONNECTED, S.CODE_RECEIVED, S.EXCHANGED, S.CONNECTED, S.ERROR
IN_PROGRESS = "exchange_in_progress"
EXPECTED = {
    CodeReceived: (CR, IN_PROGRESS, IN_PROGRESS, "keep_connection", CR),
    Denied: (E, IN_PROGRESS, IN_PROGRESS, "keep_connection", E),
    ExchangeSucceeded: ("stale", EX, "stale", "stale", "stale"),
    ExchangeFailed: ("stale", E, "stale", "stale", "stale"),
    LeaseExpired: ("no_exchange", E, "verification_pending", "no_exchange", "no_exchange"),
    Verified: ("stale", "stale", C, "stale", "stale"),
    VerifyClaimed: (*["nothing_to_verify"] * 2, EX, *["nothing_to_verify"] * 2),
    VerifyDeferred: ("stale", "stale", EX, "stale", "stale"),
    VerifyFailed: ("stale", "stale", E, "stale", "stale"),
    RefreshClaimed: ("not_connected", IN_PROGRESS, IN_PROGRESS, C, "not_connected"),
    Refreshed: ("stale", "stale", "stale", C, "stale"),
    RefreshFailed: ("stale", "stale", "stale", E, "stale"),
    RefreshDoubted: ("stale", "stale", "stale", "first_send", "stale"),
    RefreshReleased: ("stale", "stale", "stale", C, "stale"),
    RefreshDeferred: ("stale", "stale", "stale", C, "stale"),
    Disconnect: ("already_disconnected", D, D, D, D),
    ProviderDisconnected: ("nothing_to_forget", E, E, E, "nothing_to_forget"),
    # An admin's verified long-lived token connects from anywhere (no live exchange lease here).
    LongLivedInstalled: (C, C, C, C, C),
    # The record holds no long-lived token "long-1": a newer one (or a pair) stands.
    LongLivedEnded: ("stale", "stale", "stale", "already_rotated", "stale"),
    # Credentials posted to secrets_uri wait beside whatever the connection is.
    CredentialsReceived: (D, CR, EX, C, E),
}
LONG_LIVED = TokenSet(
    "long-1", None, T0 + timedelta(days=30), T0 + timedelta(days=30), long_lived=True
)
EXAMPLES = {
    CodeReceived: code("new-code"),
    Denied: Denied(T0),
    ExchangeSucceeded: ExchangeSucceeded(TOKENS),
    ExchangeFailed: ExchangeFailed(ERROR),
    LeaseExpired: LeaseExpired(T0),
    Verified: Verified(Account(1, "acme", "Acme"), T0),
    VerifyClaimed: VerifyClaimed(LEASE),
    VerifyDeferred: VerifyDeferred(T0),
    VerifyFailed: VerifyFailed(ERROR),
    RefreshClaimed: RefreshClaimed(Lease("w", "refresh", T0), T0),
    Refreshed: Refreshed(TOKENS, "refresh-1"),
    RefreshFailed: RefreshFailed(ERROR, "refresh-1"),
    RefreshDoubted: RefreshDoubted("refresh-1", T0 + timedelta(minutes=2)),
    RefreshReleased: RefreshReleased(),
    RefreshDeferred: RefreshDeferred(T0, "unavailable"),
    Disconnect: Disconnect(),
    ProviderDisconnected: ProviderDisconnected(T0),
    LongLivedInstalled: LongLivedInstalled(LONG_LIVED, HOST, Account(1, "acme", "Acme"), T0),
    LongLivedEnded: LongLivedEnded("long-1", "long_lived_token_revoked", T0),
    CredentialsReceived: CredentialsReceived(
        code_digest("nonce-1"), ClientCredentials("client-a", "secret-a"), T0
    ),
}


def test_the_expected_matrix_covers_every_event_type():
    assert set(EXPECTED) == set(EVENT_TYPES) == set(EXAMPLES)


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
def test_each_pair_does_what_the_design_says(event_type):
    for status, expected in zip(S, EXPECTED[event_type], strict=True):
        record = ConnectionRecord("c", status=status, connected_at=T0)
        result = step(record, EXAMPLES[event_type], T0)
        if isinstance(expected, ConnectionStatus):
            assert (result.changed, result.record.status, result.noop) == (True, expected, None)
        else:
            assert (result.changed, result.record, result.noop) == (False, record, expected)


def test_a_step_logs_nothing_at_info_through_transitions(caplog: pytest.LogCaptureFixture):
    """An app logging at INFO sees the flows' one line per written step, not the machine's."""
    with caplog.at_level(logging.INFO):
        for event_type in EVENT_TYPES:
            for status in S:
                step(
                    ConnectionRecord("c", status=status, connected_at=T0), EXAMPLES[event_type], T0
                )
    assert [r.getMessage() for r in caplog.records if r.name.startswith("transitions")] == []


@settings(max_examples=examples(500))
@given(record=records, event=any_event, now=st.sampled_from([T0, T0 + timedelta(days=1)]))
def test_step_answers_any_record_and_event_by_the_table(record, event, now):
    result = step(record, event, now)
    rules = rules_for(record.status, event.name)
    if result.changed:
        assert result.record.status in {rule.dest for rule in rules}
        assert result.record.version == record.version + 1
        assert result.record.updated_at == now
        assert result.noop is None
    else:
        assert result.record is record
        assert result.noop in {rule.noop for rule in rules if rule.dest is None}


def test_an_event_type_the_table_does_not_know_is_refused():
    class Mystery(Event):
        name = "disconnect"  # borrowing a known trigger does not get it in

        def changes(self, record):
            return {"tokens": None}

    class SubDisconnect(Disconnect):
        pass

    for event in (Mystery(), SubDisconnect()):
        with pytest.raises(InvalidTransition, match=f"^unknown event {type(event).__name__}$"):
            step(ConnectionRecord("c", status=S.CONNECTED), event, T0)


# --- the duplicate-code rule, under any sequence of events ----------------------------------

CODES = ("code-a", "code-b", "code-c", "code-d", "code-e", "code-f")
_per_type = events(st.sampled_from(CODES))
# Codes are what this property is about: draw them four times as often as any other event.
sequence_events = st.one_of(*[_per_type[CodeReceived]] * 4, *_per_type.values())
# Random events rarely line up into a whole connection, so a quarter of the draws are the
# happy path (claim, exchange, verify) and a code after it; the sequences are still arbitrary.
_code = _per_type[CodeReceived]
happy_path = st.tuples(_code, _per_type[ExchangeSucceeded], _per_type[Verified], _code)
sequences = st.lists(
    st.one_of(happy_path, *[sequence_events.map(lambda event: (event,))] * 3),
    min_size=5,
    max_size=40,
).map(lambda chunks: [event for chunk in chunks for event in chunk])
# Codes seen two days ago, from an earlier life of the connection.
start_records = st.lists(digests, max_size=MAX_CODE_DIGESTS, unique=True).map(
    lambda known: ConnectionRecord(
        "user-42", seen_codes=tuple(SeenCode(d, T0 - timedelta(days=2)) for d in known)
    )
)


def digests_of(record: ConnectionRecord) -> tuple[str, ...]:
    return tuple(seen.digest for seen in record.seen_codes)


def check_shape(record: ConnectionRecord) -> None:
    if record.status is S.DISCONNECTED:
        assert record.tokens is None
    if record.status is S.CONNECTED:
        assert record.tokens is not None
        assert record.account is not None
    if record.status is S.ERROR:
        assert record.tokens is None
        assert record.error is not None
    known = digests_of(record)
    assert len(known) <= MAX_CODE_DIGESTS
    assert len(set(known)) == len(known)
    assert all(HEX64.fullmatch(digest) for digest in known)
    assert not set(known) & set(CODES)


# Found by this property on an earlier table: a verification failure whose reason read like a
# refused refresh let a late "refreshed" reach connected with no account (invariant 3).
PINNED = [
    code("code-a"),
    ExchangeSucceeded(TOKENS),
    VerifyFailed(ErrorInfo("reauthorization_required", None, T0)),
    Refreshed(TOKENS, "refresh-1"),
]


@settings(max_examples=examples(500))
@given(record=start_records, sequence=sequences)
@example(record=ConnectionRecord("user-42"), sequence=PINNED)
def test_a_known_code_never_changes_the_record(record, sequence):
    claimed: list[str] = []
    for event in sequence:
        result = step(record, event, T0)
        new = result.record
        if isinstance(event, CodeReceived):
            if record.knows_code(event.code_digest):
                assert (result.changed, result.noop) == (False, "duplicate_code")
            if result.changed:
                # A re-authorization: the state was begun after the connection was made, by
                # version where both carry one (they cannot tie), else by time.
                if event.state_seen_version is not None and record.connected_version is not None:
                    begun_after = event.state_seen_version >= record.connected_version
                else:
                    begun_after = (
                        event.state_issued_at is not None
                        and record.connected_at is not None
                        and event.state_issued_at > record.connected_at
                    )
                fresh = record.status is S.CONNECTED and begun_after
                # An admin's keys-tab code re-authorizes a connected connection (issue 21),
                # which stays connected (its tokens served) until the new pair is in hand.
                admin = record.status is S.CONNECTED and event.from_admin and not fresh
                assert record.status in (S.DISCONNECTED, S.ERROR) or fresh or admin
                assert new.status is (S.CONNECTED if admin else S.CODE_RECEIVED)
                assert new.seen_codes[-1] == SeenCode(event.code_digest, T0)
                claimed.append(event.code_digest)
        if result.changed:
            assert new.version == record.version + 1
            assert result.noop is None
        else:
            assert new is record
            assert result.noop
        check_shape(new)
        record = new
    # Invariant 1 at the table's level: each code is claimed for exchange at most once.
    assert len(claimed) == len(set(claimed))


# --- concrete sequences -----------------------------------------------------------------------


def test_the_seed_replay_is_a_no_op_that_reports_connected():
    connected = connected_with("X")
    assert connected.status is S.CONNECTED
    assert connected.version == 3

    replay = step(connected, code("X", T0), T0 + timedelta(minutes=1))

    assert (replay.changed, replay.noop) == (False, "duplicate_code")
    assert replay.record is connected


def test_the_known_code_stays_a_no_op_even_with_a_fresh_state():
    connected = connected_with("X")
    replay = step(connected, code("X", T0 + timedelta(minutes=5)), T0)
    assert (replay.changed, replay.noop) == (False, "duplicate_code")


def test_a_new_code_with_an_old_state_keeps_the_connection():
    connected = connected_with("X")
    result = step(connected, code("Y", connected.connected_at), T0)
    assert (result.changed, result.noop) == (False, "keep_connection")


def test_a_new_code_with_a_state_issued_after_connecting_reauthorizes():
    connected = connected_with("X")
    result = step(connected, code("Y", connected.connected_at + timedelta(milliseconds=1)), T0)
    assert result.changed
    assert result.record.status is S.CODE_RECEIVED
    assert digests_of(result.record) == (code_digest("X"), code_digest("Y"))


def test_a_duplicate_while_exchanging_is_a_duplicate_and_a_new_code_waits():
    claimed = step(ConnectionRecord("c"), code("X"), T0).record
    assert step(claimed, code("X"), T0).noop == "duplicate_code"
    assert step(claimed, code("Y"), T0).noop == "exchange_in_progress"


def test_an_interrupted_exchange_becomes_an_error_and_a_new_code_may_follow():
    claimed = step(ConnectionRecord("c"), code("X"), T0).record
    assert step(claimed, LeaseExpired(T0), T0).noop == "lease_live"
    failed = step(claimed, LeaseExpired(T0), LEASE.expires_at).record
    assert failed.status is S.ERROR
    assert failed.error == ErrorInfo("exchange_interrupted", None, T0)
    assert (failed.lease, failed.tokens) == (None, None)
    assert step(failed, code("X"), T0).noop == "duplicate_code"
    retried = step(failed, code("Y"), T0).record
    assert (retried.status, retried.error) == (S.CODE_RECEIVED, None)


def test_a_disconnect_forgets_tokens_but_not_the_codes():
    disconnected = step(connected_with("X"), Disconnect(), T0).record
    assert disconnected.status is S.DISCONNECTED
    assert (disconnected.tokens, disconnected.account, disconnected.host) == (None, None, None)
    assert step(disconnected, code("X"), T0).noop == "duplicate_code"


def test_the_record_remembers_many_codes():
    record = ConnectionRecord("c")
    raws = [f"code-{n}" for n in range(20)]
    for raw in raws:
        record = run(record, code(raw), ExchangeFailed(ERROR))
    assert digests_of(record) == tuple(code_digest(raw) for raw in raws)
    assert record.version == 2 * len(raws)


def test_the_record_remembers_only_the_newest_codes():
    seen = tuple(SeenCode(code_digest(f"c-{n}"), T0) for n in range(MAX_CODE_DIGESTS))
    record = step(ConnectionRecord("c", seen_codes=seen), code("one-more"), T0).record
    assert record.seen_codes == (*seen[1:], SeenCode(code_digest("one-more"), T0))


def test_a_claim_keeps_the_digest_never_the_raw_code():
    claimed = step(ConnectionRecord("c"), code("raw-code-1"), T0).record
    assert digests_of(claimed) == (code_digest("raw-code-1"),)
    assert "raw-code-1" not in repr(claimed)


def test_a_late_refresh_answer_revives_only_the_connection_that_refused_its_token():
    connected = connected_with("X")
    refused = step(connected, RefreshFailed(ERROR_REFUSED, "refresh-1"), T0).record
    assert (refused.status, refused.refused_refresh) == (S.ERROR, code_digest("refresh-1"))
    other = step(refused, Refreshed(TOKENS, "refresh-2"), T0)
    assert (other.changed, other.noop) == (False, "stale")
    revived = step(refused, Refreshed(TOKENS, "refresh-1"), T0).record
    assert (revived.status, revived.refused_refresh, revived.error) == (S.CONNECTED, None, None)
    assert revived.account == connected.account


def test_a_verification_failure_is_never_revived_by_a_refresh():
    claimed = run(ConnectionRecord("c"), code("X"), ExchangeSucceeded(TOKENS))
    failed = step(claimed, VerifyFailed(ErrorInfo("reauthorization_required", None, T0)), T0)
    late = step(failed.record, Refreshed(TOKENS, "refresh-1"), T0)
    assert (late.changed, late.noop) == (False, "stale")


def test_an_unknown_error_reason_is_refused():
    with pytest.raises(ValueError, match="reason"):
        ErrorInfo("made_up_reason", None, T0)
