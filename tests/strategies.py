"""Hypothesis strategies for the pure core (importable as ``strategies``: tests/ is on sys.path)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import strategies as st

from amo_oauth._events import (
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
from amo_oauth._reasons import Reason
from amo_oauth._records import (
    Account,
    Backoff,
    ClientCredentials,
    ConnectionRecord,
    ConnectionStatus,
    ErrorInfo,
    Lease,
    PendingCredentials,
    SeenCode,
    TokenSet,
    code_digest,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)

#: Moments a few minutes apart, so that "issued after connected" and its opposite (and
#: equality) all come up often.
moments = st.integers(min_value=0, max_value=120).map(lambda m: T0 + timedelta(minutes=m))

#: Any aware datetime, in UTC or at a fixed offset (what the codec must round-trip).
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
aware_datetimes = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=offsets
)

hosts = st.sampled_from(["acme.amocrm.ru", "b2b.kommo.com", "old-1.amocrm.com"]).map(AccountHost)
digests = st.binary(min_size=1, max_size=16).map(lambda raw: code_digest(raw.hex()))
words = st.text(min_size=1, max_size=20)

#: Few refresh tokens, so that "the pair this refresh spent" and "the stored pair" often match.
refresh_tokens = st.sampled_from(["refresh-1", "refresh-2", "refresh-3"])

token_sets = st.builds(
    TokenSet,
    access_token=words,
    refresh_token=refresh_tokens,
    expires_at=aware_datetimes,
    refresh_expires_at=aware_datetimes,
    token_type=st.sampled_from(["Bearer", "bearer"]),
    issued_at=st.none() | aware_datetimes,
    refresh_sends=st.integers(min_value=0, max_value=3),
    after_rejection=st.booleans(),
)
#: Few long-lived tokens, so that "the token that ended" and "the stored token" often match.
long_lived_tokens = st.sampled_from(["long-1", "long-2"])
#: An admin's long-lived token (protocol §8): no refresh token, never refreshed.
long_lived_sets = st.builds(
    lambda token, expires_at, issued_at: TokenSet(
        token, None, expires_at, expires_at, issued_at=issued_at, long_lived=True
    ),
    long_lived_tokens,
    aware_datetimes,
    st.none() | aware_datetimes,
)
accounts = st.builds(
    Account, id=st.integers(min_value=1, max_value=2**53), subdomain=words, name=st.text()
)
error_infos = st.builds(
    ErrorInfo,
    reason=st.sampled_from(["code_rejected", "verify_failed", "reauthorization_required"]),
    hint=st.none() | st.text(max_size=40),
    at=aware_datetimes,
)


#: A few integrations' credentials (a retried site-button install makes a new one) and the
#: digests of a few consents' state nonces, so that the same ones come up often.
client_credentials = st.builds(
    ClientCredentials,
    client_id=st.sampled_from(["client-a", "client-b"]),
    client_secret=st.sampled_from(["secret-a", "secret-b"]),
)
state_digests = st.sampled_from(["nonce-1", "nonce-2", "nonce-3"]).map(code_digest)


def leases(purpose: str) -> st.SearchStrategy[Lease]:
    return st.builds(Lease, owner=words, purpose=st.just(purpose), expires_at=aware_datetimes)


#: Any record, consistent or not: the table must give every one of them an answer.
records = st.builds(
    ConnectionRecord,
    connection_id=words,
    status=st.sampled_from(ConnectionStatus),
    version=st.integers(min_value=0, max_value=2**31),
    host=st.none() | st.just("acme.amocrm.ru"),
    tokens=st.none() | token_sets | long_lived_sets,
    account=st.none() | accounts,
    error=st.none() | error_infos,
    seen_codes=st.lists(st.builds(SeenCode, digests, aware_datetimes), max_size=16).map(tuple),
    lease=st.none() | leases("exchange") | leases("refresh"),
    connected_at=st.none() | moments,
    updated_at=st.none() | aware_datetimes,
    integration=st.none() | st.just("client-1"),
    widget=st.booleans(),
    refused_refresh=st.none() | refresh_tokens.map(code_digest),
    verify_after=st.none() | moments,
    verify_attempts=st.integers(min_value=0, max_value=5),
    kept_pair_until=st.none() | moments,
    backoff=st.none()
    | st.builds(
        Backoff,
        until=moments,
        attempts=st.integers(min_value=1, max_value=9),
        cause=st.sampled_from(["unavailable", "account_blocked"]),
    ),
    credentials=st.none() | client_credentials,
    pending_credentials=st.lists(
        st.builds(PendingCredentials, state_digests, client_credentials, moments), max_size=4
    ).map(tuple),
)


def code_received(codes: st.SearchStrategy[str]) -> st.SearchStrategy[CodeReceived]:
    return st.builds(
        CodeReceived,
        code_digest=codes.map(code_digest),
        host=st.none() | hosts,
        lease=leases("exchange"),
        state_issued_at=st.none() | moments,
        code_holder=st.none() | words,
        state_expires_at=st.none() | moments,
        state_holder=st.none() | words,
        state_seen_version=st.none() | st.integers(min_value=0, max_value=20),
        may_claim=st.booleans(),
        browser_matches=st.booleans(),
        caller_owns=st.booleans(),
        from_admin=st.booleans(),
        needs_credentials=st.booleans(),
        credentials=st.none() | client_credentials,
        state_digest=st.none() | state_digests,
    )


def events(codes: st.SearchStrategy[str]) -> dict[type[Event], st.SearchStrategy[Event]]:
    """One strategy per event type; codes for ``CodeReceived`` are drawn from ``codes``."""
    return {
        CodeReceived: code_received(codes),
        Denied: st.builds(Denied, at=moments, reason=st.sampled_from(["access_denied", "x"])),
        ExchangeSucceeded: st.builds(
            ExchangeSucceeded,
            tokens=token_sets,
            code_digest=st.none() | codes.map(code_digest),
            released=st.booleans(),
        ),
        ExchangeFailed: st.builds(ExchangeFailed, error=error_infos),
        LeaseExpired: st.builds(
            LeaseExpired,
            at=moments,
            grace=st.sampled_from([timedelta(0), timedelta(minutes=2)]),
        ),
        Verified: st.builds(Verified, account=accounts, at=moments),
        VerifyFailed: st.builds(VerifyFailed, error=error_infos),
        VerifyClaimed: st.builds(VerifyClaimed, lease=leases("exchange")),
        VerifyDeferred: st.builds(VerifyDeferred, retry_at=moments),
        RefreshClaimed: st.builds(
            RefreshClaimed,
            lease=leases("refresh"),
            at=moments,
            margin=st.sampled_from([timedelta(0), timedelta(minutes=5)]),
            stale=st.none() | words,
            refresh_before=st.none() | moments,
        ),
        Refreshed: st.builds(Refreshed, tokens=token_sets, spent_refresh_token=refresh_tokens),
        RefreshFailed: st.builds(
            RefreshFailed, error=error_infos, spent_refresh_token=refresh_tokens
        ),
        RefreshDoubted: st.builds(
            RefreshDoubted, spent_refresh_token=refresh_tokens, until=moments
        ),
        RefreshReleased: st.just(RefreshReleased()),
        RefreshDeferred: st.builds(
            RefreshDeferred,
            until=moments,
            cause=st.sampled_from(["unavailable", "account_blocked"]),
            sent=st.booleans(),
        ),
        Disconnect: st.just(Disconnect()),
        ProviderDisconnected: st.builds(ProviderDisconnected, at=moments),
        LongLivedInstalled: st.builds(
            LongLivedInstalled, tokens=long_lived_sets, host=hosts, account=accounts, at=moments
        ),
        LongLivedEnded: st.builds(
            LongLivedEnded,
            access_token=long_lived_tokens,
            reason=st.sampled_from(
                [Reason.LONG_LIVED_TOKEN_EXPIRED, Reason.LONG_LIVED_TOKEN_REVOKED]
            ),
            at=moments,
        ),
        CredentialsReceived: st.builds(
            CredentialsReceived,
            state_digest=state_digests,
            credentials=client_credentials,
            at=moments,
            state_holder=st.none() | st.just("denied") | digests,
        ),
    }


any_code = st.text(min_size=1, max_size=40)
any_event = st.one_of(*events(any_code).values())
