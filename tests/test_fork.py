"""A forked child is never stuck on a lock that one of the parent's other threads held at the
fork, and forgets the parent's waiters and listener threads (stores/_forks.py)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from amo_oauth import MemoryStore
from amo_oauth.stores import Hub
from amo_oauth.stores._listening import ChannelListener
from amo_oauth.testing._contract import make_record

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")

#: Seconds a child may take before it counts as stuck: far above the few milliseconds a child
#: needs, so only a lock that is never released reaches it, however loaded the machine.
STUCK = 60.0


def _exit_code(pid: int) -> int | None:
    """The child's exit code, or None when it was still running after ``STUCK`` seconds (it is
    killed then)."""
    deadline = time.monotonic() + STUCK
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def _in_child(work: Callable[[], None]) -> int:
    """Fork; the child runs ``work()`` and exits 0 (1 on any exception), never returning into
    pytest. Returns the child's pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    return pid


@pytest.fixture
def busy_store() -> Iterator[MemoryStore]:
    """A MemoryStore whose lock two threads take and release all the time, and on whose hub a
    third thread waits: a fork lands while one of them holds a lock, sooner or later."""
    store = MemoryStore()
    assert store.compare_and_set(make_record(), None)
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            store.load("c1")

    def wait() -> None:
        while not stop.is_set():
            store.hub.wait("c1", 1, 0.001, lambda: 1)

    threads = [threading.Thread(target=job, daemon=True) for job in (hammer, hammer, wait)]
    for thread in threads:
        thread.start()
    yield store
    stop.set()
    for thread in threads:
        thread.join()
    store.close()


def test_a_child_forked_while_threads_use_a_memory_store_can_use_it(
    busy_store: MemoryStore,
) -> None:
    def child() -> None:
        loaded = busy_store.load("c1")
        assert loaded.record is not None
        assert busy_store.hub.waiting() == 0  # the parent's waiter is not the child's
        busy_store.hub.wait("c1", loaded.record.version, 0.01, lambda: 1)

    for _ in range(40):
        code = _exit_code(_in_child(child))
        assert code is not None, "a child stuck on a lock held at the fork"
        assert code == 0


def test_a_hub_in_a_child_forgets_the_parents_watches_and_poller() -> None:
    hub = Hub(name="fork")
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with hub._lock:  # held at the fork by a thread the child does not have
            held.set()
            release.wait()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    held.wait()
    try:

        def child() -> None:
            hub.notify("c1")  # takes the lock a vanished thread held at the fork
            assert hub.waiting() == 0

        assert _exit_code(_in_child(child)) == 0
    finally:
        release.set()
        holder.join()


def test_a_listener_in_a_child_starts_its_own_thread() -> None:
    class Idle(ChannelListener[None]):
        def _open(self) -> None:
            return None

        def _serve(self, conn: None) -> None:
            self.stopping.wait()

        def _disconnect(self, conn: None) -> None:
            pass

        def _interrupt(self) -> None:
            pass

    listener = Idle("fork listener", "test", lambda key: None, lambda: None)
    listener.ensure(STUCK)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with listener._cond:
            held.set()
            release.wait()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    held.wait()
    try:

        def child() -> None:
            assert not listener.ready  # the parent's thread is not the child's
            listener.ensure(STUCK)
            assert listener.ready

        assert _exit_code(_in_child(child)) == 0
    finally:
        release.set()
        holder.join()
        listener.close()
