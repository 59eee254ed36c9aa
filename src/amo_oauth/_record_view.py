"""What a flow may read of a record: ``RecordView``, a read-only view without its lifecycle.

The table (``_lifecycle``) decides on a record's ``status``, ``lease``, ``tokens`` and
``error``; the code, token and verification flows act on its answer. They hold a
``RecordView``, which has none of those four (nor anything that hands them out), so mypy rejects
a flow that reads one, to branch on it or otherwise. A view gives what a flow sends or reports:
who the record is, the host it talks to, the pair's values to send, and the public
``Connection``.

Only ``_flow_records.Records`` opens a view (``record_of``): it steps records through the table
and writes them (``tests/test_decisions.py`` checks that no other flow does).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import attrs

from ._connection_id import ConnectionId
from ._provider_reads import MAX_RETRY_AFTER as _MAX_RETRY_AFTER_SECONDS
from ._records import ClientCredentials, Connection, ConnectionRecord, PendingCredentials

__all__ = [
    "MAX_RETRY_AFTER",
    "RecordView",
    "backoff_until",
    "held_back_hint",
    "lapsed_lease",
    "record_of",
    "retry_after_of",
    "seconds_to_wait",
]

#: The longest ``retry_after`` taken from amoCRM's 429 (protocol notes §9 show 300 s): a larger
#: number in a damaged body must not hold a connection back for good (``_provider_reads`` cuts
#: it where it is read; cut here too, before it becomes a ``timedelta``, which overflows).
MAX_RETRY_AFTER = timedelta(seconds=_MAX_RETRY_AFTER_SECONDS)
#: Doublings past which the interval is surely at its cap (and 2**n stays a small number).
_MAX_DOUBLINGS = 32


@attrs.frozen
class RecordView:
    """A record as a flow sees it: no ``status``, ``lease``, ``tokens`` or ``error``."""

    _record: ConnectionRecord

    @property
    def connection_id(self) -> str:
        return self._record.connection_id

    @property
    def name(self) -> ConnectionId:
        """What names the connection to callers: the app user's id, or ``Widget(host)``."""
        return self._record.name

    @property
    def key(self) -> str:
        """The key the record is stored under."""
        return self._record.key

    @property
    def version(self) -> int:
        """The version read (0: never stored); a write is a compare-and-set on it."""
        return self._record.version

    @property
    def widget(self) -> bool:
        return self._record.widget

    @property
    def integration(self) -> str | None:
        """The client id the record belongs to (None: stored before keys had a namespace)."""
        return self._record.integration

    @property
    def host(self) -> str | None:
        """The account host the connection's calls go to, when known."""
        return self._record.host

    @property
    def credentials(self) -> ClientCredentials | None:
        """The connection's own integration (a site-button install), None: ``Config``'s."""
        return self._record.credentials

    @property
    def pending_credentials(self) -> tuple[PendingCredentials, ...]:
        """Credentials posted to ``secrets_uri`` for consents whose code is not claimed yet."""
        return self._record.pending_credentials

    @property
    def verify_attempts(self) -> int:
        """Verifications that failed for a moment so far (the backoff grows with them)."""
        return self._record.verify_attempts

    def access_token(self) -> str:
        """The access token, to send: for a record the table says holds a pair."""
        return self._record.tokens_or_raise().access_token

    def refresh_token(self) -> str:
        """The refresh token, to send: for a record the table says holds a pair. "" for a token
        amoCRM gave without one: the table never lets such a record claim a refresh
        (``no_refresh_token``), and anything else sent with it is refused, changing nothing."""
        return self._record.tokens_or_raise().refresh_token or ""

    def api_credentials(self) -> tuple[str, str, str]:
        """``(account host, access token, refresh token)``; three empty strings when the record
        holds no pair (no host passes the allowlist then, so nothing is sent), and an empty
        refresh token for a token that cannot be renewed."""
        host, access, refresh = self._record.api_credentials() or ("", "", "")
        return host, access, refresh or ""

    def not_connected_reason(self) -> str:
        """Why the record gives no token (``ReauthorizationRequired``'s reason)."""
        return self._record.not_connected_reason()

    def public(self) -> Connection:
        """The public ``Connection``, to report: no token, no code digest, no lease."""
        return self._record.public()


def record_of(view: RecordView) -> ConnectionRecord:
    """The record behind ``view``: for ``_flow_records.Records`` alone, which steps records
    through the table and writes them."""
    return view._record


def seconds_to_wait(record: ConnectionRecord, now: datetime, left: float, slack: float) -> float:
    """How long a waiter for another worker waits for ``record`` to change: ``left`` seconds
    at most, and no longer than until the live lease lapses (plus ``slack``), since a load then
    expires it. Decided here, on the lease, so that the flows never look at one."""
    lease_left = record.lease_seconds_left(now)
    return left if lease_left is None else min(left, lease_left + slack)


def lapsed_lease(record: ConnectionRecord, now: datetime) -> str | None:
    """The purpose (``exchange``, ``refresh``) of ``record``'s lease when it has lapsed at
    ``now`` (its worker presumed dead); None for a live lease or none. For the metrics of a
    take-over, judged here so that ``Records`` never looks at a lease."""
    lease = record.lease
    return lease.purpose if lease is not None and not lease.is_live(now) else None


def backoff_until(
    record: ConnectionRecord,
    now: datetime,
    *,
    initial: timedelta,
    maximum: timedelta,
    jitter: float,
    retry_after: float | None = None,
) -> datetime:
    """When (UTC) the next refresh of ``record`` may be tried, amoCRM having pushed back on
    this one at ``now``: ``initial`` for the first such answer in a row, doubling with each
    next one up to ``maximum``; never sooner than amoCRM's ``retry_after`` (seconds, from a
    429's body; at most ``MAX_RETRY_AFTER``); then lengthened by ``jitter`` (a fraction, drawn
    by the caller in [0, Config.refresh_backoff_jitter]), so back-offs begun together spread.
    Decided here, on the record's back-off, so that the flows never look at it."""
    done = record.backoff.attempts if record.backoff is not None else 0
    # In float seconds until the cap is taken: a week doubled 32 times overflows a timedelta.
    doubled = initial.total_seconds() * 2.0 ** min(done, _MAX_DOUBLINGS)
    seconds = min(doubled, maximum.total_seconds())
    if retry_after is not None and retry_after >= 0:  # NaN and negatives: no floor
        seconds = max(seconds, min(retry_after, _MAX_RETRY_AFTER_SECONDS))
    return now + timedelta(seconds=seconds * (1 + jitter))


def held_back_hint(record: ConnectionRecord) -> str:
    """A sentence for ``TryAgainLater`` while ``record``'s refresh is held back: amoCRM's
    answer that began it (its reason slug) and how many in a row. No secret."""
    backoff = record.backoff
    if backoff is None:
        return "the refresh is held back"
    return (
        f"amoCRM pushed back on the last refresh ({backoff.cause}, {backoff.attempts} in a"
        " row); no refresh is sent until the back-off lapses"
    )


def retry_after_of(record: ConnectionRecord, now: datetime, grace: timedelta) -> float | None:
    """Seconds (>= 0) until the first of what holds ``record`` up lapses at ``now`` (UTC): its
    live lease, a lapsed exchange lease's ``grace``, a kept pair's wait, a deferred
    verification's next try; None when nothing does. Decided here, so that the flows never
    look at a lease."""
    ends = [
        end
        for end in (
            record.lease.expires_at if record.lease is not None else None,
            record.lease.expires_at + grace
            if record.lease is not None and record.lease.purpose == "exchange"
            else None,
            record.kept_pair_until,
            record.verify_after,
            record.backoff.until if record.backoff is not None else None,
        )
        if end is not None and end > now
    ]
    if not ends:
        return None
    return max((min(ends) - now).total_seconds(), 0.0)
