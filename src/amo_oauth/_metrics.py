"""Counters and histograms through OpenTelemetry's metrics API (the ``otel`` extra).

The service's driver (``_perform``) measures what it performs: token calls, store operations
and their latency, waits for another worker. ``Records``, the one part that sees decisions,
reports the decision-level counts (refresh outcomes, lapsed leases taken over) and the code flow
a duplicate answered, through the same ``Metrics`` object it holds. Without opentelemetry
installed, or for a ``Records`` no service wired, every call is a no-op (``SILENT``).

Attributes are closed sets only (a grant, a result, an answer's reason slug, a store
operation's name, a lease's purpose): never a connection id, account id, host, client id or
secret, so an exporter's cardinality stays bounded (docs/metrics.md lists them all).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, cast

import attrs
import httpx

from ._answers import Grant
from ._errors import ProviderError, StoreError
from ._events import (
    LeaseExpired,
    RefreshClaimed,
    RefreshDeferred,
    RefreshDoubted,
    Refreshed,
    RefreshFailed,
    RefreshReleased,
    VerifyClaimed,
)
from ._ops import STORE_METHODS, StoreOp, WaitForChange
from ._provider import meaning_of
from ._provider_reads import error_of, surely_unsent

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram, MeterProvider

__all__ = ["INSTRUMENTS", "SILENT", "Instrument", "Metrics", "Recorder", "TokenCall", "metrics_for"]

#: The meter's name (the instrumentation scope) every instrument is made under.
METER_NAME: Final = "amo_oauth"
#: The grants whose calls ``amo_oauth.token_calls`` counts (protocol §3, §4).
GRANTS: Final = frozenset({"authorization_code", "refresh_token"})
#: ``amo_oauth.token_calls``'s result for a request that never reached amoCRM: not a call
#: amoCRM saw, so it is kept apart from those that were sent, and has no duration.
UNSENT: Final = "unsent"
#: The refresh outcomes ``amo_oauth.refreshes`` counts, by the event written.
REFRESH_OUTCOMES: Final = {
    Refreshed.name: "refreshed",
    RefreshFailed.name: "refused",
    RefreshDeferred.name: "deferred",
    RefreshReleased.name: "released",
    RefreshDoubted.name: "doubted",
}
#: The events that take a connection over from its lease holder (``_events``).
TAKE_OVERS: Final = frozenset({LeaseExpired.name, RefreshClaimed.name, VerifyClaimed.name})
#: The instruments' names (``INSTRUMENTS`` below: kind, unit, description).
TOKEN_CALLS: Final = "amo_oauth.token_calls"
TOKEN_DURATION: Final = "amo_oauth.token_call.duration"
DUPLICATES: Final = "amo_oauth.duplicates"
REFRESHES: Final = "amo_oauth.refreshes"
LEASE_EXPIRIES: Final = "amo_oauth.lease_expiries"
STORE_ERRORS: Final = "amo_oauth.store.errors"
STORE_DURATION: Final = "amo_oauth.store.duration"
WAITS: Final = "amo_oauth.waits"
WAIT_DURATION: Final = "amo_oauth.wait.duration"


@attrs.frozen
class Instrument:
    """One instrument ``Metrics`` makes: its name, kind, unit (UCUM: ``s`` for seconds, a
    ``{...}`` annotation for a count) and description. docs/metrics.md lists the same."""

    name: str
    kind: Literal["counter", "histogram"]
    unit: str
    description: str


#: Every instrument, made in this order by each ``Metrics``.
INSTRUMENTS: Final = (
    Instrument(
        TOKEN_CALLS,
        "counter",
        "{call}",
        "Calls to amoCRM's token endpoint, answered or not; result unsent: never reached it",
    ),
    Instrument(TOKEN_DURATION, "histogram", "s", "How long a token call took, sent to answered"),
    Instrument(
        DUPLICATES, "counter", "{callback}", "Callbacks answered as duplicates, nothing sent"
    ),
    Instrument(REFRESHES, "counter", "{refresh}", "Refreshes concluded, by outcome"),
    Instrument(
        LEASE_EXPIRIES, "counter", "{lease}", "A presumed-dead worker's lapsed lease taken over"
    ),
    Instrument(STORE_ERRORS, "counter", "{error}", "Store operations that raised StoreError"),
    Instrument(
        STORE_DURATION, "histogram", "s", "How long a store operation took (waits excluded)"
    ),
    Instrument(WAITS, "counter", "{wait}", "Waits for another worker's change to a connection"),
    Instrument(WAIT_DURATION, "histogram", "s", "How long a wait for another worker lasted"),
)


def operation_of(op: StoreOp[Any]) -> str:
    """The store method ``op`` calls (``load``, ``claim``...): a closed set."""
    return STORE_METHODS.get(type(op).__name__, "other")


def grant_of(request: httpx.Request) -> Grant | None:
    """The grant of a token-endpoint request (``authorization_code`` or ``refresh_token``),
    read from its JSON body (``_provider_calls``); None for any other request."""
    if request.method != "POST" or not request.url.path.endswith("/oauth2/access_token"):
        return None
    try:
        grant = json.loads(request.content).get("grant_type")
    except (ValueError, AttributeError):
        return None
    return cast(Grant, grant) if grant in GRANTS else None


class TokenCall:
    """One token call in flight: its grant and start; ``answered`` / ``failed`` records it."""

    def __init__(self, metrics: Metrics, grant: Grant) -> None:
        self._metrics = metrics
        self._grant: Grant = grant
        self._started = time.perf_counter()

    def answered(self, response: httpx.Response) -> None:
        """amoCRM answered: ``ok`` for a 2xx, else what the answer means (``_answers``)."""
        if response.is_success:
            self._metrics._token_answered(self._grant, "ok", None, self._started)
        else:
            self.failed(error_of(response, self._grant))

    def failed(self, error: ProviderError) -> None:
        """No usable answer: ``unsent`` when the request surely never reached amoCRM (the
        provider's own judgement, ``surely_unsent``: a refused connection, a connect timeout),
        else ``transient`` or ``refused``; each with the answer's reason slug."""
        answer = meaning_of(error, self._grant)
        if surely_unsent(error):
            result = UNSENT
        else:
            result = "transient" if answer.meaning.transient else "refused"
        self._metrics._token_answered(self._grant, result, answer.reason, self._started)


class Recorder(Protocol):
    """What the driver and ``Records`` measure through: ``Metrics`` or the no-op ``SILENT``."""

    def store_call(self, op: StoreOp[Any]) -> AbstractContextManager[None]:
        """Around one store operation."""
        ...

    def token_call(
        self, request: httpx.Request
    ) -> AbstractContextManager[Callable[[httpx.Response], None]]:
        """Around sending ``request``; the callable yielded takes its answer."""
        ...

    def duplicate_answered(self) -> None:
        """A callback answered as a duplicate."""
        ...

    def written(self, event_name: str, lapsed: str | None) -> None:
        """A transition written (``lapsed``: the purpose of a lapsed lease it wrote over)."""
        ...


class Metrics:
    """The instruments of one service, made from ``meter_provider`` (the global one when None).

    Every method is safe to call from any thread and never raises for an exporter's sake.
    """

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        from opentelemetry.metrics import get_meter

        from . import __version__

        meter = get_meter(METER_NAME, __version__, meter_provider=meter_provider)
        self._counters: dict[str, Counter] = {
            made.name: meter.create_counter(made.name, made.unit, made.description)
            for made in INSTRUMENTS
            if made.kind == "counter"
        }
        self._histograms: dict[str, Histogram] = {
            made.name: meter.create_histogram(made.name, made.unit, made.description)
            for made in INSTRUMENTS
            if made.kind == "histogram"
        }

    # -- what the driver performs ------------------------------------------------------------

    @contextlib.contextmanager
    def store_call(self, op: StoreOp[Any]) -> Iterator[None]:
        """Time a store operation (a ``WaitForChange`` counts as a wait); count a
        ``StoreError`` it raises."""
        operation = operation_of(op)
        started = time.perf_counter()
        try:
            yield
        except StoreError:
            self._counters[STORE_ERRORS].add(1, {"operation": operation})
            raise
        finally:
            seconds = time.perf_counter() - started
            if isinstance(op, WaitForChange):
                self._counters[WAITS].add(1)
                self._histograms[WAIT_DURATION].record(seconds)
            else:
                self._histograms[STORE_DURATION].record(seconds, {"operation": operation})

    @contextlib.contextmanager
    def token_call(self, request: httpx.Request) -> Iterator[Callable[[httpx.Response], None]]:
        """Around sending ``request``: give its answer to the callable this yields; a
        ``ProviderError`` raised (no complete answer) counts as ``unsent``, ``transient`` or
        ``refused`` (``TokenCall.failed``). Requests other
        than token calls count nothing."""
        grant = grant_of(request)
        if grant is None:
            yield _ignore
            return
        call = TokenCall(self, grant)
        try:
            yield call.answered
        except ProviderError as error:
            call.failed(error)
            raise

    def _token_answered(
        self, grant: Grant, result: str, reason: str | None, started: float
    ) -> None:
        attributes = {"grant": grant, "result": result}
        if reason is not None:
            attributes["reason"] = reason
        self._counters[TOKEN_CALLS].add(1, attributes)
        if result != UNSENT:  # nothing went out, so there is no round trip to time
            self._histograms[TOKEN_DURATION].record(time.perf_counter() - started, {"grant": grant})

    # -- what the decisions say --------------------------------------------------------------

    def duplicate_answered(self) -> None:
        """A callback answered from what the store holds: its code was claimed already."""
        self._counters[DUPLICATES].add(1)

    def written(self, event_name: str, lapsed: str | None) -> None:
        """A transition written for ``event_name`` over a record whose lease had lapsed
        (``lapsed``: its purpose) or not (None): a refresh's conclusion counts, and so does a
        take-over of a presumed-dead worker's lease (a conclusion the holder writes late
        after its own lease lapsed does not)."""
        outcome = REFRESH_OUTCOMES.get(event_name)
        if outcome is not None:
            self._counters[REFRESHES].add(1, {"outcome": outcome})
        if lapsed is not None and event_name in TAKE_OVERS:
            self._counters[LEASE_EXPIRIES].add(1, {"purpose": lapsed})


class _Silent:
    """Metrics without opentelemetry, or before a service wires its own: nothing at all (one
    shared context manager per call, no meter, nothing imported)."""

    def store_call(self, op: StoreOp[Any]) -> AbstractContextManager[None]:
        return _NOTHING

    def token_call(
        self, request: httpx.Request
    ) -> AbstractContextManager[Callable[[httpx.Response], None]]:
        return _IGNORING

    def duplicate_answered(self) -> None:
        pass

    def written(self, event_name: str, lapsed: str | None) -> None:
        pass


def _ignore(response: httpx.Response) -> None:
    pass


_NOTHING: Final = contextlib.nullcontext()
_IGNORING: Final = contextlib.nullcontext(_ignore)
#: The no-op metrics: what ``Records`` holds until a service gives it its own.
SILENT: Final[Recorder] = _Silent()


def metrics_for(meter_provider: MeterProvider | None) -> Recorder:
    """The service's metrics: from ``meter_provider`` (None: OpenTelemetry's global provider,
    which is a no-op until the application sets one), or ``SILENT`` when opentelemetry is not
    installed (the ``otel`` extra)."""
    try:
        return Metrics(meter_provider)
    except ImportError:
        return SILENT
