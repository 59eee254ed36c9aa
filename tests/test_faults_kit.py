"""The public fault-injection kit (``amo_oauth.testing.faults``): its store and transports."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from amo_oauth import ConnectionRecord, MemoryStore, StoreError
from amo_oauth._ops import ClaimOp, CompareAndSet, Load
from amo_oauth.testing.faults import (
    AsyncFaultyStore,
    AsyncFaultyTransport,
    FaultyStore,
    FaultyTransport,
    grant_of,
    operation_name,
)


def test_a_target_is_named_by_method_async_twin_or_flow_operation() -> None:
    assert operation_name("compare_and_set") == "compare_and_set"
    assert operation_name("acompare_and_set") == "compare_and_set"
    assert operation_name(CompareAndSet) == "compare_and_set"
    assert operation_name("ClaimOp") == operation_name(ClaimOp) == "claim"
    assert operation_name(Load) == "load"
    assert operation_name("await_for_change") == "wait_for_change"
    with pytest.raises(ValueError, match="names no store operation"):
        operation_name("drop_everything")


def test_a_store_fault_fails_n_calls_of_one_operation_then_passes() -> None:
    store = FaultyStore(MemoryStore())
    fault = store.fail(CompareAndSet, times=2)
    record = ConnectionRecord("c1", version=1)
    for _ in range(2):
        with pytest.raises(StoreError):
            store.compare_and_set(record, None)
    assert store.load(record.key).record is None  # other operations pass, nothing was written
    assert store.compare_and_set(record, None)
    assert fault.fired == 2 and not fault.active
    assert store.calls["compare_and_set"] == 3


def test_a_store_fault_until_healed_and_with_a_filter() -> None:
    store = FaultyStore(MemoryStore())
    fault = store.fail("load", times=None, when=lambda args: args[0] == "u:x:down")
    with pytest.raises(StoreError):
        store.load("u:x:down")
    assert store.load("u:x:up").record is None
    with pytest.raises(StoreError):
        store.load("u:x:down")
    fault.heal()
    assert store.load("u:x:down").record is None
    assert fault.fired == 2
    with pytest.raises(ValueError, match="times"):
        store.fail("load", times=0)


def test_a_store_fault_raises_the_given_error() -> None:
    store = FaultyStore(MemoryStore())
    store.fail("holder_of", error=lambda: TimeoutError("slow"))
    with pytest.raises(TimeoutError):
        store.holder_of("code:x")


def test_the_async_store_fails_the_same_way() -> None:
    async def scenario() -> None:
        store = AsyncFaultyStore(MemoryStore())
        store.fail("aload")
        with pytest.raises(StoreError):
            await store.aload("k")
        assert (await store.aload("k")).record is None
        store.fail(CompareAndSet, times=None)
        with pytest.raises(StoreError):
            await store.acompare_and_set(ConnectionRecord("c", version=1), None)
        store.heal()
        assert await store.acompare_and_set(ConnectionRecord("c", version=1), None)

    asyncio.run(scenario())


def _token_request(grant: str) -> httpx.Request:
    return httpx.Request(
        "POST", "https://x.amocrm.ru/oauth2/access_token", json={"grant_type": grant}
    )


def test_grant_of_reads_json_and_form_bodies() -> None:
    assert grant_of(_token_request("refresh_token")) == "refresh_token"
    form = httpx.Request("POST", "https://h/t", data={"grant_type": "authorization_code"})
    assert grant_of(form) == "authorization_code"
    assert grant_of(httpx.Request("GET", "https://h/api/v4/account")) is None


def test_a_request_fault_fails_answers_only_its_grant() -> None:
    transport = FaultyTransport(httpx.MockTransport(lambda request: httpx.Response(200)))
    failed = transport.fail(grant="refresh_token", times=1)
    transport.answer(lambda: httpx.Response(401), path="/api/v4/account", times=None)
    with httpx.Client(transport=transport) as http:
        with pytest.raises(httpx.ConnectError):
            http.send(_token_request("refresh_token"))
        assert http.send(_token_request("refresh_token")).status_code == 200
        assert http.send(_token_request("authorization_code")).status_code == 200
        assert http.get("https://x.amocrm.ru/api/v4/account").status_code == 401
        assert http.get("https://x.amocrm.ru/api/v4/account").status_code == 401
    assert failed.fired == 1


def test_a_held_answer_waits_in_flight_until_released() -> None:
    served: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        served.append(1)
        return httpx.Response(200)

    transport = FaultyTransport(httpx.MockTransport(answer))
    held = transport.hold(path="/x")
    results: list[int] = []
    with httpx.Client(transport=transport) as http:
        worker = threading.Thread(
            target=lambda: results.append(http.get("https://h/x").status_code)
        )
        worker.start()
        assert held.wait_reached()
        assert served == [1] and results == []  # the server acted; the caller has not heard
        held.release()
        worker.join()
    assert results == [200]


def test_a_hung_request_is_not_sent_until_released_async() -> None:
    async def scenario() -> None:
        served: list[int] = []

        async def answer(request: httpx.Request) -> httpx.Response:
            served.append(1)
            return httpx.Response(204)

        transport = AsyncFaultyTransport(httpx.MockTransport(answer))
        hung = transport.hang(path="/x")
        async with httpx.AsyncClient(transport=transport) as http:
            sent = asyncio.ensure_future(http.get("https://h/x"))
            await asyncio.to_thread(hung.wait_reached)
            assert served == []
            hung.release()
            assert (await sent).status_code == 204
        assert served == [1]

    asyncio.run(scenario())
