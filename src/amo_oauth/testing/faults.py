"""Fault injection for tests: a store whose chosen operation fails, a transport whose chosen
request fails, hangs or is answered otherwise.

```python
from amo_oauth.testing.faults import FaultyStore, FaultyTransport

store = FaultyStore(SQLiteStore(path))
write = store.fail("compare_and_set", times=1)      # the next write raises StoreError
transport = FaultyTransport(fake.transport())
held = transport.hold(grant="refresh_token")        # the refresh answer waits in flight
...
held.wait_reached(); store.fail("load", times=None); held.release()
```

A fault targets one operation by its name (``"load"``, ``"compare_and_set"``, ``"claim"``,
... as ``Store`` names them; the ``a``-prefixed ``AsyncStore`` names and the flow operations'
class names, ``"Load"``, ``"CompareAndSet"``, ``"ClaimOp"``, name the same) or one request (the
token endpoint's grant type, or a path), and applies ``times`` times (None: until ``heal()``).
Faults are matched in the order they were added; each one counts how often it ``fired``.
Nothing here waits on a clock: a held request waits for ``release()`` (or ``heal()``).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Final
from urllib.parse import parse_qs

import attrs
import httpx

from .._errors import StoreError
from .._ops import STORE_METHODS
from .._records import ConnectionRecord
from ..stores._protocol import (
    AsyncStore,
    Claim,
    ClaimResult,
    DueCursor,
    Loaded,
    Store,
    StoreCheck,
)

__all__ = [
    "AsyncFaultyStore",
    "AsyncFaultyTransport",
    "FaultyStore",
    "FaultyTransport",
    "RequestFault",
    "StoreFault",
]

#: The flow operations' class names (``amo_oauth._ops``), by the store method each one calls.
_OP_NAMES: Final = {**STORE_METHODS, "Claim": "claim"}
_METHODS: Final = frozenset({*_OP_NAMES.values(), "scan", "check", "close"})


def operation_name(target: str | type) -> str:
    """The ``Store`` method a target names: a method name, its ``a``-prefixed twin, or a flow
    operation's class (or class name).

    Raises:
        ValueError: the target names no store operation.
    """
    name = target.__name__ if isinstance(target, type) else target
    name = _OP_NAMES.get(name, name)
    if name == "await_for_change":  # AsyncStore's name for wait_for_change
        return "wait_for_change"
    if name in _METHODS:
        return name
    if name.startswith("a") and name[1:] in _METHODS:
        return name[1:]
    raise ValueError(f"{target!r} names no store operation")


@attrs.define(eq=False)
class _Countdown:
    """How many more times a fault applies (None: until healed), and how often it fired."""

    times: int | None
    fired: int = 0
    healed: bool = False
    _lock: threading.Lock = attrs.field(factory=threading.Lock, repr=False)

    def take(self) -> bool:
        """Count one use when the fault still applies; False once used up or healed."""
        with self._lock:
            if self.healed or (self.times is not None and self.fired >= self.times):
                return False
            self.fired += 1
            return True

    def heal(self) -> None:
        with self._lock:
            self.healed = True

    @property
    def active(self) -> bool:
        with self._lock:
            return not self.healed and (self.times is None or self.fired < self.times)


@attrs.define(eq=False)
class StoreFault:
    """One scripted store fault: ``operation`` raises ``error`` (a ``StoreError`` by default)
    ``times`` times, or until ``heal()`` when ``times`` is None.

    Attributes:
        operation: the ``Store`` method name it targets.
        fired: how many calls it failed so far.
    """

    operation: str
    _countdown: _Countdown
    _error: Callable[[], BaseException]
    _when: Callable[[tuple[object, ...]], bool] | None = None

    @property
    def fired(self) -> int:
        return self._countdown.fired

    @property
    def active(self) -> bool:
        """True while it still fails calls."""
        return self._countdown.active

    def heal(self) -> None:
        """Stop failing calls from now on."""
        self._countdown.heal()

    def _applies(self, operation: str, args: tuple[object, ...]) -> bool:
        if operation != self.operation or not self._countdown.active:
            return False
        if self._when is not None and not self._when(args):
            return False
        return self._countdown.take()


class _StoreFaults:
    """The faults of one wrapped store, matched in the order they were added."""

    def __init__(self) -> None:
        self._faults: list[StoreFault] = []
        self._lock = threading.Lock()
        self.calls: dict[str, int] = {}

    def fail(
        self,
        target: str | type,
        times: int | None = 1,
        *,
        error: Callable[[], BaseException] | None = None,
        when: Callable[[tuple[object, ...]], bool] | None = None,
    ) -> StoreFault:
        """Make calls of ``target`` fail (see ``FaultyStore.fail``)."""
        if times is not None and times < 1:
            raise ValueError("times must be >= 1, or None for 'until healed'")
        fault = StoreFault(
            operation_name(target),
            _Countdown(times),
            error or (lambda: StoreError("injected store fault")),
            when,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def heal(self) -> None:
        """Heal every fault: calls go through from now on."""
        with self._lock:
            faults = list(self._faults)
        for fault in faults:
            fault.heal()

    def check(self, operation: str, args: tuple[object, ...]) -> None:
        """Raise the first fault's error that applies to this call; count the call."""
        with self._lock:
            self.calls[operation] = self.calls.get(operation, 0) + 1
            faults = list(self._faults)
        for fault in faults:
            if fault._applies(operation, args):
                raise fault._error()


class FaultyStore:
    """A blocking ``Store`` that passes every call to ``inner``, except those a fault targets.

    Args:
        inner: the store to wrap (any ``Store``; it keeps working for calls not failed).

    Attributes:
        inner: the wrapped store.
        calls: how many calls each operation got (failed ones included), by method name.
    """

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self._faults = _StoreFaults()
        self.calls = self._faults.calls

    def fail(
        self,
        target: str | type,
        times: int | None = 1,
        *,
        error: Callable[[], BaseException] | None = None,
        when: Callable[[tuple[object, ...]], bool] | None = None,
    ) -> StoreFault:
        """Make the next ``times`` calls of one operation raise.

        Args:
            target: ``"load"``, ``"compare_and_set"``, ``"claim"``, ... (``Store``'s names;
                ``"aload"`` and the flow operations' ``"Load"``, ``"CompareAndSet"``,
                ``"ClaimOp"`` name the same), or a flow operation's class.
            times: how many calls fail, >= 1; None: every call until ``heal()``.
            error: makes the exception to raise; a ``StoreError`` by default.
            when: only calls whose positional arguments it accepts fail (and count).

        Returns:
            The ``StoreFault``, to heal it or read how often it ``fired``.

        Raises:
            ValueError: the target names no operation, or ``times`` < 1.
        """
        return self._faults.fail(target, times, error=error, when=when)

    def heal(self) -> None:
        """Heal every fault of this store."""
        self._faults.heal()

    def _check(self, operation: str, *args: object) -> None:
        self._faults.check(operation, args)

    def load(self, key: str) -> Loaded:
        self._check("load", key)
        return self.inner.load(key)

    def compare_and_set(self, record: ConnectionRecord, expected_version: int | None) -> bool:
        self._check("compare_and_set", record, expected_version)
        return self.inner.compare_and_set(record, expected_version)

    def delete(self, key: str, expected_version: int) -> bool:
        self._check("delete", key, expected_version)
        return self.inner.delete(key, expected_version)

    def consume_state(self, nonce: str, expires_at: datetime, holder: str | None = None) -> bool:
        self._check("consume_state", nonce, expires_at, holder)
        return self.inner.consume_state(nonce, expires_at, holder)

    def find_by_account(self, account_id: int) -> list[ConnectionRecord]:
        self._check("find_by_account", account_id)
        return self.inner.find_by_account(account_id)

    def holder_of(self, key: str) -> str | None:
        self._check("holder_of", key)
        return self.inner.holder_of(key)

    def claim(self, claim: Claim) -> ClaimResult:
        self._check("claim", claim)
        return self.inner.claim(claim)

    def wait_for_change(self, key: str, version: int, timeout: float) -> None:
        self._check("wait_for_change", key, version, timeout)
        self.inner.wait_for_change(key, version, timeout)

    def due_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        self._check("due_page", before, limit, after)
        return self.inner.due_page(before, limit, after)

    def scan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        self._check("scan", after, limit)
        return self.inner.scan(after, limit)

    def check(self) -> StoreCheck:
        self._check("check")
        return self.inner.check()

    def close(self) -> None:
        self._check("close")
        self.inner.close()

    def __repr__(self) -> str:
        return f"FaultyStore({self.inner!r})"


class AsyncFaultyStore:
    """``FaultyStore`` for an ``AsyncStore``: the same faults, on the awaited operations.

    Args:
        inner: the store to wrap (any ``AsyncStore``).
    """

    def __init__(self, inner: AsyncStore) -> None:
        self.inner = inner
        self._faults = _StoreFaults()
        self.calls = self._faults.calls

    def fail(
        self,
        target: str | type,
        times: int | None = 1,
        *,
        error: Callable[[], BaseException] | None = None,
        when: Callable[[tuple[object, ...]], bool] | None = None,
    ) -> StoreFault:
        """See ``FaultyStore.fail``."""
        return self._faults.fail(target, times, error=error, when=when)

    def heal(self) -> None:
        """Heal every fault of this store."""
        self._faults.heal()

    def _check(self, operation: str, *args: object) -> None:
        self._faults.check(operation, args)

    async def aload(self, key: str) -> Loaded:
        self._check("load", key)
        return await self.inner.aload(key)

    async def acompare_and_set(
        self, record: ConnectionRecord, expected_version: int | None
    ) -> bool:
        self._check("compare_and_set", record, expected_version)
        return await self.inner.acompare_and_set(record, expected_version)

    async def adelete(self, key: str, expected_version: int) -> bool:
        self._check("delete", key, expected_version)
        return await self.inner.adelete(key, expected_version)

    async def aconsume_state(
        self, nonce: str, expires_at: datetime, holder: str | None = None
    ) -> bool:
        self._check("consume_state", nonce, expires_at, holder)
        return await self.inner.aconsume_state(nonce, expires_at, holder)

    async def afind_by_account(self, account_id: int) -> list[ConnectionRecord]:
        self._check("find_by_account", account_id)
        return await self.inner.afind_by_account(account_id)

    async def aholder_of(self, key: str) -> str | None:
        self._check("holder_of", key)
        return await self.inner.aholder_of(key)

    async def aclaim(self, claim: Claim) -> ClaimResult:
        self._check("claim", claim)
        return await self.inner.aclaim(claim)

    async def await_for_change(self, key: str, version: int, timeout: float) -> None:
        self._check("wait_for_change", key, version, timeout)
        await self.inner.await_for_change(key, version, timeout)

    async def adue_page(
        self, before: datetime, limit: int, after: DueCursor | None = None
    ) -> list[ConnectionRecord]:
        self._check("due_page", before, limit, after)
        return await self.inner.adue_page(before, limit, after)

    async def ascan(self, after: str | None, limit: int) -> list[ConnectionRecord]:
        self._check("scan", after, limit)
        return await self.inner.ascan(after, limit)

    async def acheck(self) -> StoreCheck:
        self._check("check")
        return await self.inner.acheck()

    async def aclose(self) -> None:
        self._check("close")
        await self.inner.aclose()

    def __repr__(self) -> str:
        return f"AsyncFaultyStore({self.inner!r})"


# -- requests --------------------------------------------------------------------------------


def grant_of(request: httpx.Request) -> str | None:
    """The ``grant_type`` a token-endpoint request carries (JSON or form body), else None."""
    body = request.content
    try:
        payload = json.loads(body)
    except ValueError:
        values = parse_qs(body.decode("latin-1")).get("grant_type")
        return values[0] if values else None
    grant = payload.get("grant_type") if isinstance(payload, dict) else None
    return grant if isinstance(grant, str) else None


@attrs.define(eq=False)
class RequestFault:
    """One scripted request fault. What it does to a matching request:

    - ``error``: raise it instead of sending (nothing reaches the server);
    - ``answer``: answer it instead of sending;
    - ``hang``: wait for ``release()`` before sending;
    - ``hold``: send, then wait for ``release()`` before handing the answer back (an answer in
      flight: the server has acted on it).

    Attributes:
        fired: how many requests it matched so far.
    """

    grant: str | None
    path: str | None
    _countdown: _Countdown
    error: Callable[[], BaseException] | None = None
    answer: Callable[[], httpx.Response] | None = None
    hang: bool = False
    hold: bool = False
    _reached: threading.Event = attrs.field(factory=threading.Event, repr=False)
    _released: threading.Event = attrs.field(factory=threading.Event, repr=False)

    @property
    def fired(self) -> int:
        return self._countdown.fired

    def release(self) -> None:
        """Let every hung or held request go on (and those that match later)."""
        self._released.set()

    def heal(self) -> None:
        """Stop matching requests, and let those waiting go on."""
        self._countdown.heal()
        self._released.set()

    def wait_reached(self, timeout: float = 30.0) -> bool:
        """Wait until a matching request is hung or held (its answer in hand, for ``hold``);
        True when one is, False after ``timeout`` seconds (a bound, never a pass condition)."""
        return self._reached.wait(timeout)

    def _matches(self, request: httpx.Request) -> bool:
        if self.path is not None and request.url.path != self.path:
            return False
        if self.grant is not None and grant_of(request) != self.grant:
            return False
        return self._countdown.take()


class _RequestFaults:
    def __init__(self) -> None:
        self._faults: list[RequestFault] = []
        self._lock = threading.Lock()

    def add(
        self,
        grant: str | None,
        path: str | None,
        times: int | None,
        **what: object,
    ) -> RequestFault:
        if times is not None and times < 1:
            raise ValueError("times must be >= 1, or None for 'until healed'")
        fault = RequestFault(grant, path, _Countdown(times), **what)  # type: ignore[arg-type]
        with self._lock:
            self._faults.append(fault)
        return fault

    def match(self, request: httpx.Request) -> RequestFault | None:
        with self._lock:
            faults = list(self._faults)
        for fault in faults:
            if fault._matches(request):
                return fault
        return None

    def heal(self) -> None:
        with self._lock:
            faults = list(self._faults)
        for fault in faults:
            fault.heal()


class _Scripting:
    """The ways to script a request fault, shared by the blocking and the async transport."""

    _faults: _RequestFaults

    def fail(
        self,
        *,
        grant: str | None = None,
        path: str | None = None,
        times: int | None = 1,
        error: Callable[[], BaseException] | None = None,
    ) -> RequestFault:
        """Make matching requests raise ``error`` (an ``httpx.ConnectError`` by default)
        instead of being sent.

        Args:
            grant: only token-endpoint requests of this ``grant_type`` (``"refresh_token"``,
                ``"authorization_code"``); None: any.
            path: only requests to this URL path (``"/api/v4/account"``); None: any.
            times: how many requests, >= 1; None: until ``heal()``.
            error: makes the exception to raise.

        Raises:
            ValueError: ``times`` < 1.
        """
        made = error or (lambda: httpx.ConnectError("injected request fault"))
        return self._faults.add(grant, path, times, error=made)

    def answer(
        self,
        response: Callable[[], httpx.Response],
        *,
        grant: str | None = None,
        path: str | None = None,
        times: int | None = 1,
    ) -> RequestFault:
        """Answer matching requests with ``response()`` instead of sending them (see ``fail``
        for the filters)."""
        return self._faults.add(grant, path, times, answer=response)

    def hang(
        self, *, grant: str | None = None, path: str | None = None, times: int | None = 1
    ) -> RequestFault:
        """Hold matching requests back until the fault's ``release()``, then send them."""
        return self._faults.add(grant, path, times, hang=True)

    def hold(
        self, *, grant: str | None = None, path: str | None = None, times: int | None = 1
    ) -> RequestFault:
        """Send matching requests, then hold their answers until the fault's ``release()``:
        the server has acted, the caller has not heard yet."""
        return self._faults.add(grant, path, times, hold=True)

    def heal(self) -> None:
        """Heal every request fault, and let waiting requests go on."""
        self._faults.heal()


class FaultyTransport(_Scripting, httpx.BaseTransport):
    """An ``httpx`` transport passing requests to ``inner``, except those a fault targets.

    Args:
        inner: the transport to wrap (``FakeAmoCRM().transport()``, a ``LoopbackTransport``).
    """

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self._faults = _RequestFaults()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        fault = self._faults.match(request)
        if fault is None:
            return self.inner.handle_request(request)
        if fault.error is not None:
            raise fault.error()
        if fault.answer is not None:
            return fault.answer()
        if fault.hang:
            fault._reached.set()
            fault._released.wait()
        response = self.inner.handle_request(request)
        if fault.hold:
            response.read()
            fault._reached.set()
            fault._released.wait()
        return response

    def close(self) -> None:
        self.heal()
        self.inner.close()


class AsyncFaultyTransport(_Scripting, httpx.AsyncBaseTransport):
    """``FaultyTransport`` for an ``httpx.AsyncClient``; a hung or held request waits without
    blocking the event loop.

    Args:
        inner: the async transport to wrap.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self._faults = _RequestFaults()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        fault = self._faults.match(request)
        if fault is None:
            return await self.inner.handle_async_request(request)
        if fault.error is not None:
            raise fault.error()
        if fault.answer is not None:
            return fault.answer()
        if fault.hang:
            await _released(fault)
        response = await self.inner.handle_async_request(request)
        if fault.hold:
            await response.aread()
            await _released(fault)
        return response

    async def aclose(self) -> None:
        self.heal()
        await self.inner.aclose()


async def _released(fault: RequestFault) -> None:
    fault._reached.set()
    # A worker thread waits, so the loop keeps running (the test may release from it).
    await asyncio.to_thread(fault._released.wait)
