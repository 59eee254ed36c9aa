"""``Hub``: the one wake-up mechanism of every store, on its own (stores use it in
test_stores.py, test_wakeups.py and the contract)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Mapping

import pytest

from amo_oauth.stores._hub import Hub, Poller

#: Only a hung hub reaches it; nothing here measures time.
HANG = 30.0


def test_a_change_between_the_read_and_the_wait_is_not_lost() -> None:
    """The waiter registers, then reads: a notify landing after the read and before the wait
    finds the watch registered and fires it, so the wait returns at once."""
    hub = Hub()
    stored = [1]

    def read() -> int:
        version = stored[0]
        stored[0] = 2  # the change lands right after the read ...
        hub.notify("k")  # ... and its notify before the waiter waits
        return version

    done = threading.Thread(target=hub.wait, args=("k", 1, 3600, read), daemon=True)
    done.start()
    done.join(HANG)
    assert not done.is_alive(), "the notify between the read and the wait was lost"


def test_a_change_before_the_registration_is_seen_by_the_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub = Hub()
    stored = [1]

    def change_first(key: str) -> None:  # the pause between the caller's read and registering
        stored[0] = 2
        hub.notify(key)  # nobody is registered yet: this wakes no one

    monkeypatch.setattr(Hub, "before_register", staticmethod(change_first))
    done = threading.Thread(target=hub.wait, args=("k", 1, 3600, lambda: stored[0]), daemon=True)
    done.start()
    done.join(HANG)
    assert not done.is_alive(), "the wait missed a change made before it registered"


def test_notify_fires_only_the_watches_on_its_key() -> None:
    hub = Hub()
    with hub.watch("a", 1) as a, hub.watch("b", 1) as b:
        hub.notify("a")
        assert a.wait(HANG)
        assert not b.fired
        assert hub.waiting("a") == hub.waiting("b") == 1
        hub.notify_all()
        assert b.wait(HANG)
    assert hub.waiting() == 0


def test_a_thousand_threads_and_a_thousand_tasks_wake_on_one_notify() -> None:
    hub = Hub()
    registered = threading.Barrier(1001)
    woken: list[bool] = []

    def thread_waiter() -> None:
        with hub.watch("k", 1) as watch:
            registered.wait(HANG)
            woken.append(watch.wait(HANG))

    threads = [threading.Thread(target=thread_waiter, daemon=True) for _ in range(1000)]
    for thread in threads:
        thread.start()
    registered.wait(HANG)

    async def tasks() -> list[bool]:
        loop = asyncio.get_running_loop()
        watches = [hub.watch("k", 1, loop) for _ in range(1000)]
        entered = [watch.__enter__() for watch in watches]
        notifier = threading.Thread(target=hub.notify, args=("k",))
        notifier.start()  # from another thread: through the loop's call_soon_threadsafe
        fired = await asyncio.gather(*(watch.await_fired(HANG) for watch in entered))
        for watch in watches:
            watch.__exit__(None, None, None)
        notifier.join()
        return list(fired)

    assert asyncio.run(tasks()) == [True] * 1000
    for thread in threads:
        thread.join(HANG)
    assert woken == [True] * 1000
    assert hub.waiting() == 0


class _Recording(Poller):
    def __init__(self) -> None:
        self.threads: set[int] = set()
        self.idled = threading.Event()
        self.moved: set[str] = set()

    def poll(self, watched: Mapping[str, frozenset[int]]) -> Iterable[str]:
        self.threads.add(threading.get_ident())
        return [key for key in watched if key in self.moved]

    def idle(self) -> None:
        self.idled.set()


@pytest.fixture
def recording() -> _Recording:
    return _Recording()


def test_one_poller_runs_only_while_someone_waits(recording: _Recording) -> None:
    hub = Hub(recording, interval=0.001, max_interval=0.002)
    assert not recording.threads  # nobody waits: nothing runs
    results: list[bool] = []

    def waiter() -> None:
        with hub.watch("k", 1) as watch:
            results.append(watch.wait(HANG))

    waiters = [threading.Thread(target=waiter) for _ in range(50)]
    for thread in waiters:
        thread.start()
    recording.moved.add("k")  # the poller finds the change and fires the key
    for thread in waiters:
        thread.join(HANG)
    assert results == [True] * 50
    assert recording.idled.wait(HANG), "the poller did not end once nobody waited"
    assert len(recording.threads) <= 2  # one at a time (a second only after the first ended)


def test_a_failing_poll_wakes_everyone() -> None:
    class Failing(Poller):
        def poll(self, watched: Mapping[str, frozenset[int]]) -> Iterable[str]:
            raise OSError("the database is gone")

    hub = Hub(Failing(), interval=0.001)
    with hub.watch("k", 1) as watch:
        assert watch.wait(HANG)


def test_pause_ends_the_poller_and_resume_starts_it_again(recording: _Recording) -> None:
    hub = Hub(recording, interval=0.001, max_interval=0.002)
    with hub.watch("k", 1) as watch:
        hub.pause(HANG)
        assert recording.idled.is_set()
        recording.threads.clear()
        hub.resume()
        recording.moved.add("k")
        assert watch.wait(HANG)
        assert recording.threads


# -- ChannelListener: a listener lost at once fails its waiter fast --------------------------


def test_a_listener_lost_at_once_fails_ensure_fast_not_by_timeout() -> None:
    import asyncio

    from amo_oauth import StoreError
    from amo_oauth.stores._listening import ChannelListener

    lost = threading.Event()

    class DiesAtOnce(ChannelListener[object]):
        """Listens, then is lost before its waiter can look: the thread holds the (reentrant)
        lock from its start to its end, so the waiter wakes only once it has ended."""

        def _open(self) -> object:
            self._cond.acquire()
            return object()

        def _ended(self) -> None:
            super()._ended()
            self._cond.release()

        def _serve(self, conn: object) -> None:
            raise OSError("connection reset")

        def _disconnect(self, conn: object) -> None:
            pass

    listener = DiesAtOnce("t", "test server", lambda key: None, lost.set)
    # A timeout far longer than the test: only the thread's own report ends the wait.
    with pytest.raises(StoreError, match="connection was lost"):
        listener.ensure(3600)
    assert lost.wait(30)

    async def main() -> None:
        with pytest.raises(StoreError, match="connection was lost"):
            await asyncio.wait_for(listener.aensure(3600), 30)

    asyncio.run(main())
    listener.close()
