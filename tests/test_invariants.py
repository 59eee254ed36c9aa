"""The invariants of architecture §6, asserted after every step of arbitrary interleavings.

A hypothesis state machine drives one ``AmoOAuth`` (MemoryStore, FakeAmoCRM on a FakeClock,
in-process transport) through begin / callbacks (fresh, replayed, forged, expired, denied) /
the legacy exchange / clock jumps / access_token / disconnect / uninstall hooks (real and
forged) / refresh_due. Each rule predicts, from the store as it was before the call, what the
call must do (which exception, how many token calls, which outcome) and checks it; after every
step the invariants are checked on the store, the fake's counters and the captured logs.

Modelling notes:

* The machine's config has a tiny ``settle_timeout``: it is single-threaded, so nothing is
  ever in flight when a call would wait for it, and a wait only costs time.
* The FakeClock starts at the real time and only moves forward; the stores forget used states
  and claimed codes by the real clock, on expiries the service converts to real time (see
  ``test_a_clock_behind_real_time_does_not_make_the_store_forget``).
* ``churn`` reconnects CHURN times in one step: many codes on one record.

Below the machine: the seed's sequence step by step, and regression tests for the holes the
machine and its authors found (a code resent for another connection or after its digest was
dropped, a ledger that held codes per call, a store forgetting by the wrong clock).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import attrs
import httpx
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from amo_oauth import (
    AmoOAuth,
    CallbackRejected,
    CallbackResult,
    ConnectionRecord,
    ConnectionStatus,
    MemoryStore,
    Outcome,
    ProviderError,
    ReauthorizationRequired,
)
from amo_oauth._lifecycle import REJECTION_WINDOW
from amo_oauth._records import CODE_MEMORY, MAX_CODE_DIGESTS, code_digest, record_key
from amo_oauth._state_token import MAX_CLOCK_SKEW, issue_state
from amo_oauth.stores import BaseStore, Claim, ClaimResult, Loaded
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import STATE_SECRET, config_for, examples, query_of, run_consent

#: Reconnects in one ``churn`` step.
CHURN = 16

T = TypeVar("T")
S = ConnectionStatus
USERS = ("user-1", "user-2")
CODE_LIFETIME = timedelta(minutes=20)
EXCHANGING = (S.CODE_RECEIVED, S.EXCHANGED)

# What a call that changed nothing reports, by the status it found (architecture §2).
REPORTED = {
    S.CONNECTED: Outcome.ALREADY_CONNECTED,
    S.ERROR: Outcome.FAILED,
    S.DISCONNECTED: Outcome.FAILED,
}

MINUTES = st.integers(1, 59).map(lambda n: timedelta(minutes=n))
HOURS = st.integers(1, 48).map(lambda n: timedelta(hours=n))
DAYS = st.integers(1, 100).map(lambda n: timedelta(days=n))
# Mostly short jumps (states expire after 10 minutes, codes 20, access tokens 24 hours),
# sometimes long ones (refresh tokens die after 90 days).
DURATIONS = st.one_of(MINUTES, MINUTES, HOURS, HOURS, DAYS)


class RecordingStore(BaseStore):
    """A MemoryStore that remembers every record it wrote (so every refresh token it held).

    Its ``claim`` is ``BaseStore``'s, made of the calls below, so claims are recorded too.
    """

    def __init__(self, clock: FakeClock) -> None:
        self.inner = MemoryStore(clock=clock)  # the store's clock judges leases and the ledger
        self.written: list[tuple[int | None, ConnectionRecord]] = []

    def load(self, connection_id: str) -> Loaded:
        return self.inner.load(connection_id)

    def compare_and_set(self, record: ConnectionRecord, expected_version: int | None) -> bool:
        won = self.inner.compare_and_set(record, expected_version)
        if won:
            self.written.append((expected_version, record))
        return won

    def delete(self, connection_id: str, expected_version: int) -> bool:
        raise AssertionError("the service never deletes a record stored under a namespaced key")

    def holder_of(self, key: str) -> str | None:
        return self.inner.holder_of(key)

    def consume_state(self, nonce: str, expires_at: datetime, holder: str = "") -> bool:
        return self.inner.consume_state(nonce, expires_at, holder)

    def find_by_account(self, account_id: int) -> list[ConnectionRecord]:
        return self.inner.find_by_account(account_id)

    def scan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        return self.inner.scan(after, limit)

    def close(self) -> None:
        self.inner.close()


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@attrs.frozen
class Begun:
    """A state handed out by ``begin()``."""

    cid: str
    state: str = attrs.field(repr=False)
    issued_at: datetime
    expires_at: datetime
    #: The binding of the browser that began it, which brings every redirect of it back.
    binding: str | None = attrs.field(default=None, repr=False)
    #: The record version begin() read: it orders the consent after a connection.
    seen_version: int = 0


@attrs.frozen
class Sent:
    """A redirect query handed to ``handle_callback`` (kept for replays)."""

    begun: Begun
    query: dict[str, str] = attrs.field(repr=False)


@attrs.frozen
class Expect:
    kind: str  # duplicate | reject | exchange | keep
    reason: str | None = None
    consume: tuple[str, str] | None = None  # (state, holder) the call consumes


def attempt(call: Callable[[], T]) -> tuple[T | None, CallbackRejected | None]:
    """Call; a CallbackRejected is returned rather than raised."""
    try:
        return call(), None
    except CallbackRejected as rejected:
        return None, rejected


def flip_last(text: str) -> str:
    return text[:-1] + ("A" if text[-1] != "A" else "B")


class OAuthMachine(RuleBasedStateMachine):
    states = Bundle("states")
    sent = Bundle("sent")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.fake = FakeAmoCRM(clock=self.clock, rate_limit=None)
        # The API's pace off: the machine's consents come faster than amoCRM's 7 a second on
        # one host, on a fake clock, and the pace has its own tests (test_pace.py).
        self.config = config_for(self.fake, settle_timeout=0.001, api_rate=None)
        self.store = RecordingStore(self.clock)
        self.http = httpx.Client(transport=self.fake.transport())
        self.oauth = AmoOAuth(self.config, store=self.store, http=self.http, clock=self.clock)
        self.logs = LogCapture()
        self.logger = logging.getLogger("amo_oauth")
        self.old_level = self.logger.level
        self.logger.addHandler(self.logs)
        self.logger.setLevel(logging.INFO)
        # What the test has done, to predict and to check against.
        self.codes: dict[str, tuple[datetime, int]] = {}  # code -> (issued at, uninstall epoch)
        self.submitted: set[str] = set()  # codes handed to the service
        self.holders: dict[str, str] = {}  # state -> the holder that consumed it
        # Codes an exchange was started for, and when (the code ledger, which remembers each
        # for CODE_MEMORY on the store's clock: the fake clock here).
        self.claimed: dict[str, datetime] = {}
        self.epoch = 0  # uninstalls so far
        self.revoked: set[str] = set()  # tokens an uninstall revoked at the fake
        self.dead_access: set[str] = set()  # access tokens revoked or expired early
        self.hooks: list[dict[str, str]] = []
        self.last: dict[str, ConnectionRecord | None] = dict.fromkeys(USERS)
        self.checked_writes = 0
        self.checked_logs = 0
        self.checked_requests = 0
        self.churned = False
        self.secrets_from = 0
        self.known_tokens: set[str] = set()
        self.secret_set = {self.fake.client_secret, STATE_SECRET}
        # Invariants 1 and 2 are checked on what a step could have sent (codes it used,
        # refresh tokens held before it or written during it) and on the fake's totals.
        self.touched: set[str] = set()
        self.sent_codes: set[str] = set()
        self.held_refresh: set[str] = set()
        self.new_refresh: set[str] = set()
        self.spent_refresh: set[str] = set()
        self.counts: dict[str, int] = {}

    def teardown(self) -> None:
        self.logger.removeHandler(self.logs)
        self.logger.setLevel(self.old_level)
        self.oauth.close()
        self.http.close()

    # -- helpers ----------------------------------------------------------------------------

    def note(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        if currently_in_test_context():
            event(what)  # shown by --hypothesis-show-statistics

    def in_ledger(self, code: str) -> bool:
        """Does the store's code ledger still hold ``code``? For CODE_MEMORY after its claim."""
        claimed = self.claimed.get(code)
        return claimed is not None and self.clock() <= claimed + CODE_MEMORY

    def record(self, cid: str) -> ConnectionRecord:
        key = record_key(self.config.client_id, cid)
        return self.store.load(key).record or ConnectionRecord(cid)

    def snapshot(self) -> tuple[ConnectionRecord | None, ...]:
        return tuple(
            self.store.load(record_key(self.config.client_id, cid)).record for cid in USERS
        )

    def secrets(self) -> set[str]:
        """client_secret, state_secret, every code issued, every token the store held."""
        for _, record in self.store.written[self.secrets_from :]:
            if record.tokens is not None:
                tokens = {record.tokens.access_token, record.tokens.refresh_token} - {None}
                self.known_tokens |= tokens
                self.secret_set |= tokens
                if record.tokens.refresh_token is not None:  # a long-lived token has none
                    self.new_refresh.add(record.tokens.refresh_token)
        self.secrets_from = len(self.store.written)
        return self.secret_set

    def check_clean(self, *objects: object) -> None:
        """Invariant 6: no secret in the repr or str of anything handed back."""
        texts = []
        for obj in objects:
            texts += [repr(obj), str(obj)]
            if isinstance(obj, BaseException):
                texts += [repr(arg) for arg in obj.args]
        self.check_no_secret_in("\n".join(texts), "a returned object or exception")

    def check_no_secret_in(self, text: str, where: str) -> None:
        leaked = [secret for secret in self.secrets() if secret in text]
        assert not leaked, f"a secret leaked into {where}: {text!r}"

    def signed_hook(self, account_id: int | None = None) -> dict[str, str]:
        """The disconnect hook amoCRM would sign for ``account_id`` (the fake's by default)."""
        account = str(self.fake.account_id if account_id is None else account_id)
        message = f"{self.fake.client_id}|{account}".encode()
        signature = hmac.new(self.fake.client_secret.encode(), message, hashlib.sha256)
        return {
            "client_uuid": self.fake.client_id,
            "account_id": account,
            "signature": signature.hexdigest(),
        }

    def issued(self, code: str) -> str:
        self.codes[code] = (self.clock(), self.epoch)
        self.secret_set.add(code)
        return code

    def new_code(self) -> str:
        return self.issued(self.fake.issue_code())

    def redirect(self, state: str | None) -> dict[str, str]:
        query = query_of(self.fake.authorize(state))
        self.issued(query["code"])
        return query

    def fake_accepts_code(self, code: str) -> bool:
        issued, epoch = self.codes[code]
        return (
            epoch == self.epoch
            and self.clock() < issued + CODE_LIFETIME
            and self.fake.token_calls_for(code) == 0
        )

    def expect_grant(self, cid: str, code: str, begun: Begun | None, host: str | None) -> Expect:
        """What handle_callback / exchange_code must do, by architecture §2."""
        record = self.record(cid)
        digest = code_digest(code)
        if record.knows_code(digest):
            return Expect("duplicate")
        consume = None
        if begun is not None:
            if self.clock() >= begun.expires_at + MAX_CLOCK_SKEW:
                return Expect("reject", "expired_state")
            holder = self.holders.get(begun.state, digest)
            if holder == "denied":
                return Expect("reject", "reused_state")
            if holder != digest:  # another code of the same consent: reported, not sent
                return Expect("duplicate")
            consume = (begun.state, digest)
        if host is None and record.host is None:
            return Expect("reject", "missing_referer", consume)
        # Ordered by versions, which cannot tie (issue 18, item 5): a consent begun after the
        # connection was made, even in its millisecond, is a re-authorization.
        fresh = (
            begun is not None
            and record.connected_version is not None
            and begun.seen_version >= record.connected_version
        )
        if begun is None and record.status is S.CONNECTED and not self.in_ledger(code):
            return Expect("reject", "new_code_refused")  # no consent ties it to this user
        if not (
            record.status in (S.DISCONNECTED, S.ERROR) or (record.status is S.CONNECTED and fresh)
        ):
            return Expect("keep", consume=consume)
        if self.in_ledger(code):
            # Sent before: for another connection, or before this record let its digest go.
            return Expect("duplicate", consume=consume)
        if begun is None:  # no consent ties a new code to this user: never exchanged
            return Expect("reject", "new_code_refused")
        return Expect("exchange", consume=consume)

    def run_grant(
        self,
        cid: str,
        code: str,
        begun: Begun | None,
        host: str | None,
        call: Callable[[], Any],
    ) -> None:
        expect = self.expect_grant(cid, code, begun, host)
        evicted = expect.kind == "duplicate" and not self.record(cid).knows_code(code_digest(code))
        before = self.snapshot()
        calls = self.fake.token_call_count()
        was_sent = self.fake.token_calls_for(code) > 0
        accepts = self.fake_accepts_code(code)
        self.submitted.add(code)
        self.touched.add(code)
        self.note(f"grant: {expect.kind} {expect.reason or ''}".strip())
        if evicted:
            self.note("grant: duplicate known only to the code ledger")
        result, rejected = attempt(call)
        if rejected is not None:
            self.check_clean(rejected)
            assert (expect.kind, expect.reason) == ("reject", rejected.reason), rejected
            # Invariant 7: an expired, reused or forged state changes nothing.
            assert self.snapshot() == before
            assert self.fake.token_call_count() == calls
            return
        self.check_clean(result)
        assert expect.kind != "reject", f"expected CallbackRejected({expect.reason})"
        assert isinstance(result, CallbackResult)
        # The state is used up by the claim that exchanges its code, in the same atomic write;
        # a refusal or a report writes nothing, the state included.
        if expect.consume is not None and expect.kind == "exchange":
            self.holders.setdefault(*expect.consume)
        record = self.record(cid)
        if expect.kind in ("duplicate", "keep"):
            assert self.snapshot() == before
            assert self.fake.token_call_count() == calls
            assert result.duplicate is (expect.kind == "duplicate")
            assert result.outcome is REPORTED[record.status]
            assert result.connection == record.public()
            return
        # An exchange: exactly one token call, for this code, sent for the first time.
        assert not was_sent
        self.claimed[code] = self.clock()
        assert self.fake.token_call_count() == calls + 1
        assert self.fake.token_calls_for(code) == 1
        assert record.knows_code(code_digest(code))
        assert result.duplicate is False
        assert result.connection == record.public()
        if accepts:
            assert result.outcome is Outcome.CONNECTED
            assert record.status is S.CONNECTED
            assert record.tokens is not None
            assert self.fake.is_access_token_valid(record.tokens.access_token)
        else:
            assert result.outcome is Outcome.FAILED
            assert record.status is S.ERROR
            assert record.error is not None and record.error.reason == "code_rejected"

    def run_denial(self, begun: Begun, query: dict[str, str]) -> None:
        before = self.snapshot()
        calls = self.fake.token_call_count()
        reason = None
        if self.clock() >= begun.expires_at + MAX_CLOCK_SKEW:
            reason = "expired_state"
        elif self.holders.get(begun.state, "denied") != "denied":
            reason = "reused_state"
        self.note(f"denial: {reason or 'denied'}")
        record = self.record(begun.cid)
        result, rejected = attempt(lambda: self.oauth.handle_callback(query, binding=begun.binding))
        assert self.fake.token_call_count() == calls
        if rejected is not None:
            self.check_clean(rejected)
            assert rejected.reason == reason
            assert self.snapshot() == before
            return
        self.check_clean(result)
        assert reason is None, f"expected CallbackRejected({reason})"
        assert result is not None
        self.holders.setdefault(begun.state, "denied")
        assert result.outcome is Outcome.DENIED
        after = self.record(begun.cid)
        if record.status is S.CONNECTED:
            assert after == record  # a denial never drops a working connection
        else:
            assert after.status is S.ERROR
            assert after.error is not None and after.error.reason == "access_denied"
            assert after.tokens is None

    # -- rules: authorization ---------------------------------------------------------------

    @rule(target=states, cid=st.sampled_from(USERS))
    def begin(self, cid: str) -> Begun:
        seen = self.record(cid).version
        request = self.oauth.begin(cid)
        self.check_clean(request)
        issued = request.expires_at - self.config.state_ttl
        return Begun(cid, request.state, issued, request.expires_at, request.binding, seen)

    @rule(target=sent, cid=st.sampled_from(USERS))
    def connect(self, cid: str) -> Sent:
        """begin(), "Allow" at once, the redirect: a fresh code with a fresh state."""
        return self.callback_fresh_code(self.begin(cid))

    @rule(target=sent, begun=states)
    def callback_fresh_code(self, begun: Begun) -> Sent:
        """amoCRM's redirect with a new code for a state begin() gave (maybe expired, used)."""
        query = self.redirect(begun.state)
        code = query["code"]
        self.run_grant(
            begun.cid,
            code,
            begun,
            query["referer"],
            lambda: self.oauth.handle_callback(query, binding=begun.binding),
        )
        return Sent(begun, query)

    @rule(target=sent, cid=st.sampled_from(USERS), late=st.integers(0, 600))
    def callback_with_expired_state(self, cid: str, late: int) -> Sent:
        request = self.oauth.begin(cid)
        issued = request.expires_at - self.config.state_ttl
        begun = Begun(cid, request.state, issued, request.expires_at, request.binding)
        # Past the state's expiry plus MAX_CLOCK_SKEW (its signer may run behind).
        self.clock.advance(self.config.state_ttl + MAX_CLOCK_SKEW + timedelta(seconds=late))
        query = self.redirect(begun.state)
        self.run_grant(
            cid,
            query["code"],
            begun,
            query["referer"],
            lambda: self.oauth.handle_callback(query, binding=begun.binding),
        )
        return Sent(begun, query)

    @rule(sent=sent)
    def callback_replayed(self, sent: Sent) -> None:
        """The same redirect again (the seed's double delivery, a reload, a retry)."""
        if "error" in sent.query:
            self.run_denial(sent.begun, sent.query)
            return
        code = sent.query["code"]
        self.run_grant(
            sent.begun.cid,
            code,
            sent.begun,
            sent.query["referer"],
            lambda: self.oauth.handle_callback(sent.query, binding=sent.begun.binding),
        )

    @rule(target=sent, begun=states)
    def callback_denied(self, begun: Begun) -> Sent:
        query = query_of(self.fake.deny(begun.state))
        self.run_denial(begun, query)
        return Sent(begun, query)

    @rule(
        begun=states,
        how=st.sampled_from(["flip_mac", "splice", "other_secret", "garbage", "missing"]),
        known_code=st.booleans(),
        data=st.data(),
    )
    def callback_forged_state(
        self, begun: Begun, how: str, known_code: bool, data: st.DataObject
    ) -> None:
        """Invariant 7: a forged state never exchanges a code and changes nothing. It is
        refused ``bad_state``, except that a state of the right form whose MAC no accepted
        secret matches (as after a secret's removal, issue 19 #2) still lets a code the code
        ledger holds be answered as a duplicate, for the connection that exchanged it."""
        if how == "flip_mac":
            state: str | None = flip_last(begun.state)
        elif how == "splice":
            other = self.oauth.begin(begun.cid).state
            state = ".".join([*other.split(".")[:2], begun.state.split(".")[2]])
        elif how == "other_secret":
            state, _ = issue_state(
                b"x" * 32,
                begun.cid,
                self.clock(),
                self.config.state_ttl,
                namespace=self.config.client_id,
            )
        elif how == "garbage":
            state = "v1.e30." + "A" * 43
        else:
            state = None
        query = self.redirect(state)
        if known_code and self.submitted:
            query["code"] = data.draw(st.sampled_from(sorted(self.submitted)))
        self.touched.add(query["code"])
        before, calls = self.snapshot(), self.fake.token_call_count()
        holder = self.store.holder_of(f"code:{code_digest(query['code'])}")
        replayed = how in ("flip_mac", "splice", "other_secret") and holder is not None
        self.note(f"forged state: {how}{' (a known code: the replay)' if replayed else ''}")
        result, rejected = attempt(lambda: self.oauth.handle_callback(query))
        if replayed:
            assert result is not None and result.duplicate, rejected
            self.check_clean(result)
            cid = next(c for c in USERS if record_key(self.config.client_id, c) == holder)
            assert result.connection == self.record(cid).public()
        else:
            assert rejected is not None and rejected.reason == "bad_state", result
            self.check_clean(rejected)
        assert self.snapshot() == before
        assert self.fake.token_call_count() == calls

    @rule(sent=sent, referer=st.booleans())
    def legacy_same_code(self, sent: Sent, referer: bool) -> None:
        """The old app posts the code it got (the seed's second exchange)."""
        if "code" not in sent.query:
            return
        cid = sent.begun.cid
        code = sent.query["code"]
        host = self.fake.account_host if referer else None
        self.run_grant(
            cid, code, None, host, lambda: self.oauth.exchange_code(cid, code, referer=host)
        )

    @rule(sent=sent, cid=st.sampled_from(USERS))
    def legacy_code_of_any_connection(self, sent: Sent, cid: str) -> None:
        """A code posted for a connection it may not belong to (ids keyed differently, or an
        attacker replaying it): still sent at most once, store-wide."""
        if "code" not in sent.query:
            return
        code, host = sent.query["code"], self.fake.account_host
        self.run_grant(
            cid, code, None, host, lambda: self.oauth.exchange_code(cid, code, referer=host)
        )

    @precondition(lambda self: not self.churned)  # once is enough, and it is not cheap
    @rule(cid=st.sampled_from(USERS))
    def churn(self, cid: str) -> None:
        """Reconnect CHURN times in a row: many codes on one record, and every replay of an
        earlier one must still be a no-op."""
        self.note("churn")
        self.churned = True
        calls = self.fake.token_call_count()
        for _ in range(CHURN):
            assert self.oauth.disconnect(cid).status is S.DISCONNECTED
            request = self.oauth.begin(cid)
            query = self.redirect(request.state)
            code = query["code"]
            self.submitted.add(code)
            self.touched.add(code)
            self.claimed[code] = self.clock()
            result = self.oauth.handle_callback(query, binding=request.binding)
            assert result.outcome is Outcome.CONNECTED
        assert self.fake.token_call_count() == calls + CHURN

    @rule(cid=st.sampled_from(USERS), referer=st.booleans())
    def legacy_new_code(self, cid: str, referer: bool) -> None:
        code = self.new_code()
        host = self.fake.account_host if referer else None
        self.run_grant(
            cid, code, None, host, lambda: self.oauth.exchange_code(cid, code, referer=host)
        )

    # -- rules: time and tokens -------------------------------------------------------------

    @rule(by=DURATIONS)
    def advance_clock(self, by: timedelta) -> None:
        self.clock.advance(by)

    @rule(cid=st.sampled_from(USERS))
    def access_token(self, cid: str) -> None:
        record = self.record(cid)
        calls = self.fake.token_call_count()
        tokens = record.tokens
        if record.status is not S.CONNECTED or tokens is None:
            self.note("access_token: not connected")
            with pytest.raises(ReauthorizationRequired) as needed:
                self.oauth.access_token(cid)
            self.check_clean(needed.value)
            assert self.record(cid) == record
            assert self.fake.token_call_count() == calls
            return
        if tokens.long_lived:
            self.long_lived_access_token(cid, record, tokens)
            assert self.fake.token_call_count() == calls  # never refreshed
            return
        if tokens.is_fresh(self.clock(), self.config.refresh_margin):
            self.note("access_token: fresh")
            assert self.oauth.access_token(cid) == tokens.access_token
            assert self.record(cid) == record
            assert self.fake.token_call_count() == calls
            if tokens.access_token not in self.dead_access:
                assert self.fake.is_access_token_valid(tokens.access_token)
            return
        # A refresh: the refresh token is spent exactly once.
        alive = (
            tokens.refresh_token not in self.revoked and self.clock() < tokens.refresh_expires_at
        )
        self.note(f"access_token: refresh {'ok' if alive else 'revoked'}")
        assert self.fake.token_calls_for(tokens.refresh_token) == 0
        if alive:
            token = self.oauth.access_token(cid)
            after = self.record(cid)
            assert after.status is S.CONNECTED and after.tokens is not None
            assert token == after.tokens.access_token != tokens.access_token
            assert after.tokens.refresh_token != tokens.refresh_token
            assert self.fake.is_access_token_valid(token)
        else:
            with pytest.raises(ReauthorizationRequired) as needed:
                self.oauth.access_token(cid)
            self.check_clean(needed.value)
            after = self.record(cid)
            assert after.status is S.ERROR and after.tokens is None
            assert after.error is not None
            assert after.error.reason == "reauthorization_required"
        assert self.fake.token_call_count() == calls + 1
        assert self.fake.token_calls_for(tokens.refresh_token) == 1

    def long_lived_access_token(self, cid: str, record: ConnectionRecord, tokens: Any) -> None:
        """A long-lived token is served to its exp, then the connection is in error."""
        if self.clock() < tokens.expires_at:
            self.note("access_token: long-lived served")
            assert self.oauth.access_token(cid) == tokens.access_token
            assert self.record(cid) == record
            return
        self.note("access_token: long-lived expired")
        with pytest.raises(ReauthorizationRequired) as needed:
            self.oauth.access_token(cid)
        self.check_clean(needed.value)
        assert needed.value.reason == "long_lived_token_expired"
        self.check_long_lived_ended(cid, "long_lived_token_expired")

    def check_long_lived_ended(self, cid: str, reason: str) -> None:
        after = self.record(cid)
        assert after.status is S.ERROR and after.tokens is None
        assert after.error is not None and after.error.reason == reason
        assert after.error.hint == "ask your amoCRM admin for a new token"

    def long_lived_api_call(self, cid: str, api: httpx.Client, url: str, tokens: Any) -> None:
        """Through auth(): served while valid; its exp or amoCRM's 401 ends the connection."""
        if self.clock() >= tokens.expires_at:
            self.note("api: long-lived expired")
            with pytest.raises(ReauthorizationRequired) as needed:
                api.get(url)
            assert needed.value.reason == "long_lived_token_expired"
            self.check_long_lived_ended(cid, "long_lived_token_expired")
        elif tokens.access_token in self.dead_access:
            self.note("api: long-lived refused")
            with pytest.raises(ReauthorizationRequired) as needed:
                api.get(url)
            assert needed.value.reason == "long_lived_token_revoked"
            self.check_long_lived_ended(cid, "long_lived_token_revoked")
        else:
            self.note("api: long-lived works")
            assert api.get(url).status_code == 200

    @rule(cid=st.sampled_from(USERS), days=st.integers(1, 400))
    def connect_long_lived(self, cid: str, days: int) -> None:
        """An admin's long-lived token replaces whatever the connection held; no token call."""
        token = self.fake.issue_long_lived_token(lifetime=timedelta(days=days))
        self.secret_set.add(token)
        before = self.record(cid)
        calls = self.fake.token_call_count()
        self.note(f"long-lived: over {before.status.value}")
        connection = self.oauth.connect_long_lived(cid, token, self.fake.account_host)
        self.check_clean(connection)
        after = self.record(cid)
        assert connection == after.public() and connection.is_connected
        assert after.tokens is not None and after.tokens.long_lived
        assert after.tokens.access_token == token and after.tokens.refresh_token is None
        assert after.version == before.version + 1
        assert after.seen_codes == before.seen_codes  # replayed codes stay no-ops
        assert self.fake.token_call_count() == calls

    @precondition(lambda self: any(self.record(cid).tokens is not None for cid in USERS))
    @rule(cid=st.sampled_from(USERS))
    def admin_revokes_long_lived(self, cid: str) -> None:
        """The admin revokes the connection's long-lived token in the tab: only a 401 tells."""
        tokens = self.record(cid).tokens
        if tokens is None or not tokens.long_lived:
            return
        self.fake.revoke_long_lived_token(tokens.access_token)
        self.dead_access.add(tokens.access_token)

    @rule(cid=st.sampled_from(USERS))
    def connect_with_keys_tab_code(self, cid: str) -> None:
        """An admin pastes the tab's code, twice: one token call, then a duplicate."""
        code = self.issued(self.fake.issue_keys_tab_code())
        self.submitted.add(code)
        self.touched.add(code)
        self.claimed[code] = self.clock()
        self.note("keys-tab code")
        first = self.oauth.connect_with_code(cid, code, self.fake.account_host)
        again = self.oauth.connect_with_code(cid, code, self.fake.account_host)
        self.check_clean(first, again)
        assert first.outcome is Outcome.CONNECTED and not first.duplicate
        assert (again.outcome, again.duplicate) == (Outcome.ALREADY_CONNECTED, True)
        assert self.fake.token_calls_for(code) == 1
        other = USERS[(USERS.index(cid) + 1) % len(USERS)]
        before = self.snapshot()
        with pytest.raises(CallbackRejected) as refused:
            self.oauth.connect_with_code(other, code, self.fake.account_host)
        assert refused.value.reason == "code_used_elsewhere"
        assert self.snapshot() == before

    @rule(cid=st.sampled_from(USERS))
    def api_call(self, cid: str) -> None:
        """A request through ``oauth.auth()``: on a 401 it refreshes once and retries once."""
        record = self.record(cid)
        tokens = record.tokens
        calls = self.fake.token_call_count()
        url = f"https://{self.fake.account_host}/api/v4/account"
        with httpx.Client(transport=self.fake.transport(), auth=self.oauth.auth(cid)) as api:
            if record.status is not S.CONNECTED or tokens is None:
                self.note("api: not connected")
                with pytest.raises(ReauthorizationRequired):
                    api.get(url)
                assert self.record(cid) == record
                assert self.fake.token_call_count() == calls
                return
            if tokens.long_lived:
                self.long_lived_api_call(cid, api, url, tokens)
                assert self.fake.token_call_count() == calls  # never refreshed
                return
            fresh = tokens.is_fresh(self.clock(), self.config.refresh_margin)
            if fresh and tokens.access_token not in self.dead_access:
                self.note("api: token works")
                assert api.get(url).status_code == 200
                assert self.record(cid) == record
                assert self.fake.token_call_count() == calls
                return
            recent = tokens.issued_at is None or self.clock() - tokens.issued_at < REJECTION_WINDOW
            if fresh and tokens.after_rejection and recent:
                # This pair was itself made for a 401 a moment ago: a 401 again gets no second
                # refresh; the caller hears it and the pair is kept.
                self.note("api: 401 again right after a refresh for a 401")
                with pytest.raises(ProviderError) as refused:
                    api.get(url)
                assert refused.value.status == 401
                assert self.record(cid) == record
                assert self.fake.token_call_count() == calls
                return
            # Expired by its clock (refreshed first) or refused with a 401 (refreshed after):
            # either way exactly one refresh.
            alive = (
                tokens.refresh_token not in self.revoked
                and self.clock() < tokens.refresh_expires_at
            )
            self.note(f"api: {'expired' if not fresh else '401'}, refresh {alive=}")
            if alive:
                response = api.get(url)
                assert response.status_code == 200
                after = self.record(cid)
                assert after.tokens is not None
                assert after.tokens.refresh_token != tokens.refresh_token
                assert response.request.headers["authorization"] == (
                    f"Bearer {after.tokens.access_token}"
                )
            else:
                with pytest.raises(ReauthorizationRequired) as needed:
                    api.get(url)
                self.check_clean(needed.value)
                after = self.record(cid)
                assert after.status is S.ERROR and after.tokens is None
        assert self.fake.token_call_count() == calls + 1
        assert self.fake.token_calls_for(tokens.refresh_token) == 1

    @rule()
    def access_tokens_expire_early(self) -> None:
        """amoCRM stops honouring the access tokens before their ``exp``; only a 401 tells."""
        self.fake.expire_access_tokens()
        self.secrets()
        self.dead_access |= self.known_tokens

    @rule(cid=st.sampled_from(USERS), api=st.booleans(), extra=MINUTES)
    def next_day(self, cid: str, api: bool, extra: timedelta) -> None:
        """A day later the token is used again: the common path to a refresh."""
        self.clock.advance(timedelta(days=1) + extra)
        if api:
            self.api_call(cid)
        else:
            self.access_token(cid)

    @rule(within=st.sampled_from([timedelta(days=d) for d in (1, 7, 30, 89, 91, 120)]))
    def refresh_due(self, within: timedelta) -> None:
        before = self.clock() + within
        due = {
            cid: record.tokens
            for cid in USERS
            if (record := self.record(cid)).status is S.CONNECTED
            and record.tokens is not None
            and record.tokens.refresh_expires_at < before
            and not record.tokens.long_lived
        }
        long_lived = {
            cid: record.tokens.expires_at
            for cid in USERS
            if (record := self.record(cid)).status is S.CONNECTED
            and record.tokens is not None
            and record.tokens.long_lived
            and record.tokens.expires_at < before
        }
        expiring = {cid for cid, exp in long_lived.items() if self.clock() < exp}
        calls = self.fake.token_call_count()
        report = self.oauth.refresh_due(within)
        self.check_clean(report)
        self.note(f"refresh_due: {len(due)} due")
        # Long-lived tokens are reported (or, past their exp, failed), never refreshed.
        assert set(report.expiring_long_lived) == expiring
        for cid in set(long_lived) - expiring:
            assert (cid, "long_lived_token_expired") in report.failed
            assert cid in report.needs_reauthorization
        assert set(report.refreshed) | {cid for cid, _ in report.failed} == set(due) | (
            set(long_lived) - expiring
        )
        assert self.fake.token_call_count() == calls + len(due)
        for cid, tokens in due.items():
            assert self.fake.token_calls_for(tokens.refresh_token) == 1
            alive = (
                tokens.refresh_token not in self.revoked
                and self.clock() < tokens.refresh_expires_at
            )
            if alive:
                assert cid in report.refreshed
                assert self.record(cid).status is S.CONNECTED
            else:
                assert (cid, "reauthorization_required") in report.failed

    # -- rules: disconnects -----------------------------------------------------------------

    @rule(cid=st.sampled_from(USERS))
    def disconnect(self, cid: str) -> None:
        record = self.record(cid)
        calls = self.fake.token_call_count()
        self.note(f"disconnect: from {record.status.value}")
        connection = self.oauth.disconnect(cid)
        self.check_clean(connection)
        after = self.record(cid)
        assert connection == after.public()
        assert after.status is S.DISCONNECTED
        assert after.tokens is None and after.account is None
        assert after.seen_codes == record.seen_codes  # replays stay no-ops
        if record.status is S.DISCONNECTED:
            assert after == record
        assert self.fake.token_call_count() == calls

    @rule(deliver=st.booleans())
    def uninstall(self, deliver: bool) -> None:
        """The integration is uninstalled at amoCRM; its hook arrives now or later."""
        self.revoked |= self.secrets()
        self.dead_access |= self.revoked
        self.epoch += 1
        self.hooks.append(self.fake.uninstall())
        if deliver:
            self.deliver_hook(len(self.hooks) - 1)

    @precondition(lambda self: bool(self.hooks))
    @rule(index=st.integers(0, 10))
    def deliver_hook(self, index: int) -> None:
        """An uninstall's hook arrives (late, or once more)."""
        hook = self.hooks[index % len(self.hooks)]
        # amoCRM is asked once per account an interval (paced hooks: test_hook_pace.py).
        self.clock.advance(self.config.hook_check_interval)
        before = {cid: self.record(cid) for cid in USERS}
        calls = self.fake.token_call_count()
        affected = self.oauth.handle_disconnect_hook(hook)
        self.check_clean(affected)
        self.note(f"hook: {sum(c.status is S.CONNECTED for c in before.values())} connected before")
        ours = {
            cid
            for cid, record in before.items()
            if record.account is not None and record.account.id == self.fake.account_id
        }
        assert {connection.connection_id for connection in affected} == ours
        for cid in USERS:
            after = self.record(cid)
            tokens = before[cid].tokens
            # amoCRM still accepting either token means this hook is an old one replayed.
            replayed = tokens is not None and (
                self.fake.is_access_token_valid(tokens.access_token)
                or (
                    tokens.refresh_token is not None
                    and self.fake.is_refresh_token_valid(tokens.refresh_token)
                )
            )
            refused = before[cid].status is S.ERROR and before[cid].refused_refresh is not None
            if cid in ours and refused:
                # In error after a refused refresh: the hook lands, so no late refresh answer
                # can bring the uninstalled integration back.
                assert after.status is S.ERROR and after.refused_refresh is None
                assert after.error is not None
                assert after.error.reason == "disconnected_by_provider"
            elif cid not in ours or before[cid].status is S.ERROR or replayed:
                assert after == before[cid]
            else:
                assert after.status is S.ERROR and after.tokens is None
                assert after.error is not None
                assert after.error.reason == "disconnected_by_provider"
        assert self.fake.token_call_count() == calls

    @rule(
        how=st.sampled_from(
            ["flip", "other_client", "other_account", "other_secret", "missing", "foreign"]
        )
    )
    def forged_hook(self, how: str) -> None:
        """Invariant 7: a forged hook changes nothing (a hook for another account neither)."""
        account = str(self.fake.account_id)
        hook = self.signed_hook()
        good = hook["signature"]
        if how == "flip":
            hook["signature"] = flip_last(good).lower()
        elif how == "other_client":
            hook["client_uuid"] = "another-client"
        elif how == "other_account":
            hook["account_id"] = "271828"
        elif how == "other_secret":
            hook["signature"] = hmac.new(
                b"wrong", f"{self.fake.client_id}|{account}".encode(), hashlib.sha256
            ).hexdigest()
        elif how == "missing":
            del hook["signature"]
        else:  # correctly signed, but for an account we have no connection to
            hook = self.signed_hook(271828)
        before = self.snapshot()
        self.note(f"forged hook: {how}")
        if how == "foreign":
            assert self.oauth.handle_disconnect_hook(hook) == ()
        else:
            with pytest.raises(CallbackRejected) as rejected:
                self.oauth.handle_disconnect_hook(hook)
            self.check_clean(rejected.value)
            assert rejected.value.reason == ("malformed" if how == "missing" else "bad_signature")
        assert self.snapshot() == before

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def invariants_hold(self) -> None:
        self.check_all()

    def check_all(self) -> None:
        fake = self.fake
        # 1. At most one token call per authorization code. The total equals the number of
        #    distinct codes sent: a second call for any code, even one not used in this step,
        #    breaks the equality.
        for code in self.touched:
            times = fake.token_calls_for(code)
            assert times <= 1, f"a code was sent {times} times"
            if times:
                self.sent_codes.add(code)
        self.touched.clear()
        assert self.sent_codes <= self.submitted
        code_calls = fake.token_call_count("authorization_code")
        assert code_calls == len(self.sent_codes), (
            f"{code_calls} calls, {len(self.sent_codes)} codes"
        )
        # 2. Each refresh token the store ever held is sent at most once; again the total
        #    equals the number of distinct refresh tokens spent.
        self.secrets()
        for token in self.held_refresh | self.new_refresh:
            times = fake.token_calls_for(token)
            assert times <= 1, f"a refresh token was sent {times} times"
            if times:
                self.spent_refresh.add(token)
        refresh_calls = fake.token_call_count("refresh_token")
        assert refresh_calls == len(self.spent_refresh), (
            f"{refresh_calls} refresh calls, {len(self.spent_refresh)} refresh tokens spent"
        )
        self.new_refresh.clear()
        self.held_refresh = {
            record.tokens.refresh_token
            for cid in USERS
            if (record := self.record(cid)).tokens is not None
            and record.tokens.refresh_token is not None
        }
        # 6. Secrets went only to the account host.
        requests = fake.requests[self.checked_requests :]
        self.checked_requests += len(requests)
        assert {r.host for r in requests if r.path == "/oauth2/access_token"} <= {fake.account_host}
        for cid in USERS:
            stored = self.store.load(record_key(self.config.client_id, cid)).record
            record = stored or ConnectionRecord(cid)
            # 3. connected => verified tokens and an account; disconnected => no tokens.
            if record.status is S.CONNECTED:
                assert record.tokens is not None and record.account is not None
                assert record.host == fake.account_host
                assert record.account.id == fake.account_id
            if record.status is S.DISCONNECTED:
                assert record.tokens is None and record.account is None
            # 8. Between calls nothing is left half-done: no exchange, no live lease.
            assert record.status not in EXCHANGING
            assert record.live_lease(self.clock()) is None
            seen = self.oauth.status(cid)
            tokens = record.tokens
            if (
                record.status is S.CONNECTED
                and tokens is not None
                and tokens.long_lived
                and tokens.expires_at <= self.clock()
            ):
                # A status read ends a long-lived token past its exp, as access_token would.
                ended = self.store.load(record_key(self.config.client_id, cid)).record
                assert ended is not None and ended.error is not None
                assert ended.error.reason == "long_lived_token_expired"
                record = ended
            assert seen == record.public()
            # 5. The version never goes back, and moves with every change.
            last = self.last[cid]
            if last is not None:
                assert stored is not None and stored.version >= last.version
                if stored != last:
                    assert stored.version > last.version
            self.last[cid] = stored
        # 5. Every write moved the version forward, per connection.
        newest: dict[str, int] = {}
        for expected, record in self.store.written[self.checked_writes :]:
            previous = newest.get(record.connection_id, expected or 0)
            assert record.version > previous
            newest[record.connection_id] = record.version
        self.checked_writes = len(self.store.written)
        # 6. Nothing secret in the logs (messages, arguments, extras).
        entries = self.logs.records[self.checked_logs :]
        self.checked_logs = len(self.logs.records)
        logged = "\n".join(entry.getMessage() + repr(vars(entry)) for entry in entries)
        self.check_no_secret_in(logged, "the logs")
        self.check_clean(self.oauth, self.fake)


OAuthMachine.TestCase.settings = settings(
    max_examples=examples(500),
    stateful_step_count=100,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestOAuthInvariants = OAuthMachine.TestCase


# -- the seed's sequence, step by step ---------------------------------------------------------


@pytest.fixture
def machine() -> Iterator[OAuthMachine]:
    made = OAuthMachine()
    yield made
    made.teardown()


def test_seed_sequence_through_the_machine(machine: OAuthMachine) -> None:
    """begin -> Allow -> callback -> the same redirect again -> the legacy exchange of the same
    code -> access_token after a day: one code call, one refresh call, invariants all along."""
    begun = machine.begin(cid="user-1")
    machine.check_all()
    sent = machine.callback_fresh_code(begun)
    machine.check_all()
    machine.callback_replayed(sent)
    machine.check_all()
    machine.legacy_same_code(sent, referer=False)
    machine.check_all()
    machine.access_token(cid="user-1")
    machine.advance_clock(timedelta(hours=24))
    machine.access_token(cid="user-1")
    machine.check_all()
    assert machine.fake.token_calls == {
        ("authorization_code", "ok"): 1,
        ("refresh_token", "ok"): 1,
    }
    assert machine.fake.token_calls_for(sent.query["code"]) == 1
    assert machine.counts == {
        "grant: exchange": 1,
        "grant: duplicate": 2,
        "access_token: fresh": 1,
        "access_token: refresh ok": 1,
    }


def test_uninstall_without_the_hook_then_expiry(machine: OAuthMachine) -> None:
    """The hook is lost: the next refresh finds the refresh token revoked -> reauthorize."""
    sent = machine.callback_fresh_code(machine.begin(cid="user-2"))
    machine.uninstall(deliver=False)
    machine.check_all()
    machine.advance_clock(timedelta(hours=25))
    machine.access_token(cid="user-2")
    machine.check_all()
    machine.deliver_hook(0)  # late: the connection is already in error
    machine.callback_replayed(sent)
    machine.check_all()
    assert machine.record("user-2").error is not None
    assert machine.counts["access_token: refresh revoked"] == 1
    assert machine.fake.token_call_count("refresh_token", "token_revoked") == 1


# -- once core bugs, found by the machine: a code is sent at most once, store-wide -------------


def test_code_exchanged_for_one_connection_is_never_sent_for_another(
    machine: OAuthMachine,
) -> None:
    """The code digests live on each record; a code the callback exchanged for "user-1" that
    the legacy endpoint then receives for "user-2" (the app keys connections differently, or an
    attacker replays it) must not reach amoCRM again."""
    oauth, fake = machine.oauth, machine.fake
    query_begun = oauth.begin("user-1")
    query = query_of(fake.authorize(query_begun.state))
    assert oauth.handle_callback(query, binding=query_begun.binding).outcome is Outcome.CONNECTED
    result = oauth.exchange_code("user-2", query["code"], referer=fake.account_host)
    sent = fake.token_calls_for(query["code"])
    assert sent == 1, (
        f"the code went to the token endpoint {sent} times; "
        f"user-2 is now {result.connection.status.value} ({result.connection.error})"
    )
    assert (result.outcome, result.duplicate) == (Outcome.FAILED, True)
    assert oauth.status("user-2").version == 0


def test_a_code_stays_known_after_many_newer_codes(machine: OAuthMachine) -> None:
    """A record keeps its newest MAX_CODE_DIGESTS codes: after that many newer codes minus one,
    the seed's replayed redirect (same code, same state, within the state's 10 minutes) is
    still a duplicate, not a second exchange from ``disconnected``."""
    oauth, fake = machine.oauth, machine.fake
    first_begun = oauth.begin("user-1")
    first = query_of(fake.authorize(first_begun.state))
    assert oauth.handle_callback(first, binding=first_begun.binding).outcome is Outcome.CONNECTED
    for _ in range(MAX_CODE_DIGESTS - 1):
        oauth.disconnect("user-1")
        run_consent(oauth, fake, "user-1")
    oauth.disconnect("user-1")
    assert machine.record("user-1").knows_code(code_digest(first["code"]))
    replay = oauth.handle_callback(first)
    sent = fake.token_calls_for(first["code"])
    assert sent == 1, (
        f"the replayed code went to the token endpoint {sent} times; "
        f"the replay answered {replay.outcome.value}, duplicate={replay.duplicate}, "
        f"error={replay.connection.error}"
    )
    assert (replay.outcome, replay.duplicate) == (Outcome.FAILED, True)


# -- regressions: bugs the machine and the examples below found, now fixed ---------------------


def test_a_code_claimed_for_another_connection_is_reported_without_waiting(
    fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """A code the ledger holds for another connection is answered at once: no worker is held
    for ``settle_timeout`` by a request that changes nothing."""
    with AmoOAuth(
        config_for(fake, settle_timeout=1.0),
        store=MemoryStore(clock=clock),
        http=httpx.Client(transport=fake.transport()),
        clock=clock,
    ) as oauth:
        query_begun = oauth.begin("user-1")
        query = query_of(fake.authorize(query_begun.state))
        assert (
            oauth.handle_callback(query, binding=query_begun.binding).outcome is Outcome.CONNECTED
        )
        started = time.monotonic()
        result = oauth.exchange_code("user-2", query["code"], referer=fake.account_host)
        waited = time.monotonic() - started
    assert result.duplicate is True
    assert fake.token_calls_for(query["code"]) == 1
    assert waited < 0.3, f"a duplicate with nothing in flight waited {waited:.2f} s"


class InterleavingStore(MemoryStore):
    """A MemoryStore that runs ``before_write`` once, just before the next compare-and-set:
    another worker's whole call, slipped in between a load and a write."""

    def __init__(self) -> None:
        super().__init__()
        self.before_write: Callable[[], object] | None = None

    def _slip_in(self) -> None:
        hook, self.before_write = self.before_write, None
        if hook is not None:
            hook()

    def compare_and_set(self, record: ConnectionRecord, expected_version: int | None) -> bool:
        self._slip_in()
        return super().compare_and_set(record, expected_version)

    def claim(self, claim: Claim) -> ClaimResult:
        self._slip_in()
        return super().claim(claim)


def test_a_code_that_lost_a_race_unsent_is_exchanged_later(
    fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """Two codes race on one connection (two tabs, or the legacy app and the redirect): B
    loses the record's compare-and-set to A and reports ALREADY_CONNECTED without sending b.
    b was never sent and is still valid: after a disconnect it must be exchanged, not refused
    as a duplicate (the ledger holds codes per connection, not per call)."""
    store = InterleavingStore()
    http = httpx.Client(transport=fake.transport())
    config = config_for(fake, settle_timeout=0.05)
    worker_a = AmoOAuth(config, store=store, http=http, clock=clock)
    worker_b = AmoOAuth(config, store=store, http=http, clock=clock)
    # Two consents (two tabs), each with its own state and code.
    begun_a, begun_b = worker_a.begin("user-1"), worker_b.begin("user-1")  # two browser tabs
    tab_a = query_of(fake.authorize(begun_a.state))
    tab_b = query_of(fake.authorize(begun_b.state))
    code_b = tab_b["code"]
    store.before_write = lambda: worker_a.handle_callback(tab_a, binding=begun_a.binding)
    raced = worker_b.handle_callback(tab_b, binding=begun_b.binding)
    assert (raced.outcome, fake.token_calls_for(code_b)) == (Outcome.ALREADY_CONNECTED, 0)
    worker_b.disconnect("user-1")
    retry = worker_b.handle_callback(tab_b, binding=begun_b.binding)
    assert retry.outcome is Outcome.CONNECTED, (
        f"code b, never sent, was refused: {retry.outcome.value}, duplicate={retry.duplicate}, "
        f"sent {fake.token_calls_for(code_b)} times; the connection is "
        f"{retry.connection.status.value}"
    )


def test_a_clock_behind_real_time_does_not_make_the_store_forget(
    fake: FakeAmoCRM,
) -> None:
    """Stores prune used nonces (states and the code ledger) by real time; the service hands
    them real-time expiries, so a clock behind real time (a test's ``FakeClock(2020)``) does
    not get a consumed state accepted again or a code sent twice."""
    behind = FakeClock(datetime(2020, 1, 1, tzinfo=UTC))
    past = FakeAmoCRM(clock=behind, rate_limit=None)
    with AmoOAuth(
        config_for(past, settle_timeout=0.05),
        store=MemoryStore(),
        http=httpx.Client(transport=past.transport()),
        clock=behind,
    ) as oauth:
        query_begun = oauth.begin("user-1")
        query = query_of(past.authorize(query_begun.state))
        assert (
            oauth.handle_callback(query, binding=query_begun.binding).outcome is Outcome.CONNECTED
        )
        oauth.exchange_code("user-2", query["code"], referer=past.account_host)
        sent = past.token_calls_for(query["code"])
        oauth.disconnect("user-1")
        reused = query_of(past.authorize(query["state"]))  # a new code, the used state
        accepted, rejected = attempt(lambda: oauth.handle_callback(reused))
        second_sent = past.token_calls_for(reused["code"])
    # The used state is remembered: its new code is a duplicate of that consent, not sent.
    assert rejected is None and accepted is not None
    assert (sent, second_sent, accepted.duplicate) == (1, 0, True), (
        f"the code was sent {sent} times; the used state with a new code gave "
        f"{accepted.outcome.value}, sent {second_sent} times"
    )
