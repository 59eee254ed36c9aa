"""``Hub``: the one wake-up mechanism of every store, for the waiters of one process.

A waiter (a thread, or an asyncio task on any loop) waits for the record under a key to move
from the version it read. It registers a ``Watch`` on the key *first*, then reads the store,
then waits on the watch: a change that lands after the registration fires the watch, and a
change that landed before it is what the read sees. No order of events loses a wake-up, so no
waiter ever needs to poll (``Hub.wait`` and ``Hub.await_change`` are that sequence, written
once for every store).

Who fires watches:

- the store itself, after each commit of this process that changed a record: ``notify(key)``;
- for changes made elsewhere (another process, another machine), at most one poller per hub: a
  thread the hub starts when the first watch registers and that ends when the last one goes.
  It asks the store's ``Poller`` about the watched keys and the versions their waiters read,
  and fires the keys it names (SQLite: ``PRAGMA data_version``, then the versions of the
  watched keys; ``BaseStore``: a ``load`` per watched key). A store with a listener of its own
  (LISTEN, pub/sub) calls ``notify`` from it instead and gives no ``Poller``.

``Hub.before_register`` is a seam for tests: called with the key just before a waiter's
registration, to prove that a change (or a listener's loss) landing exactly there is still seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import ClassVar, Final

from ._common import wait_seconds
from ._forks import reset_in_child
from ._protocol import Loaded

__all__ = ["Hub", "LoadPoller", "Poller", "Watch"]

logger = logging.getLogger("amo_oauth.stores")

#: The poller's idle pause starts here (seconds) and doubles up to the hub's ``max_interval``.
_INTERVAL: Final = 0.01
_MAX_INTERVAL: Final = 0.1


class Poller:
    """How a hub's one poller thread learns of changes made outside this process.

    ``poll(watched)``: ``watched`` maps each watched key to the versions its waiters read; the
    answer is the keys to fire (their stored version is not what a waiter read). Raising fires
    every watch, so that each waiter reads the store itself and meets the failure there.
    ``idle()``: the thread is ending (nobody waits, or a fork is coming); release what ``poll``
    holds (a connection). Both run on the poller thread, never two at once.

    A poller may also *listen* (Postgres LISTEN, Redis pub/sub): ``poll`` then blocks on its
    connection for up to a short timeout and names the keys notified (give the hub
    ``interval=0``). Either way, the first ``poll`` after a start (or after ``idle``) must
    compare the watched versions with the stored ones once it is listening: a change made
    between a waiter's read and the poller's start reaches nobody otherwise.
    """

    def poll(self, watched: Mapping[str, frozenset[int]]) -> Iterable[str]:
        raise NotImplementedError

    def idle(self) -> None:
        """Nothing to release by default."""


class LoadPoller(Poller):
    """For a store with no change signal: one ``load`` per watched key and tick."""

    def __init__(self, load: Callable[[str], Loaded]) -> None:
        self._load = load

    def poll(self, watched: Mapping[str, frozenset[int]]) -> list[str]:
        return [key for key, read in watched.items() if read != {self._load(key).version}]


class Watch:
    """One waiter's registration on a key: fired once, by a notify or the poller.

    Made by ``Hub.watch``; a thread waits with ``wait``, a task with ``await_fired``.
    """

    __slots__ = ("_event", "_future", "_loop", "fired", "key", "version")

    def __init__(self, key: str, version: int, loop: asyncio.AbstractEventLoop | None) -> None:
        self.key = key
        self.version = version
        self.fired = False
        self._loop = loop
        self._event: threading.Event | None = None if loop else threading.Event()
        self._future: asyncio.Future[None] | None = loop.create_future() if loop else None

    def wait(self, timeout: float) -> bool:
        """Block until fired or ``timeout`` seconds passed; True when fired."""
        assert self._event is not None, "a task's watch is awaited, not waited on"
        return self._event.wait(wait_seconds(timeout))

    async def await_fired(self, timeout: float) -> bool:
        """Await until fired or ``timeout`` seconds passed; True when fired. Holds no thread."""
        assert self._future is not None, "a thread's watch is waited on, not awaited"
        done, _ = await asyncio.wait({self._future}, timeout=wait_seconds(timeout))
        return bool(done)

    def _fire(self) -> asyncio.AbstractEventLoop | None:
        """Mark fired; set a thread's event now. Returns the loop to resolve a task's future
        on (the caller batches them, one ``call_soon_threadsafe`` per loop)."""
        self.fired = True
        if self._event is not None:
            self._event.set()
            return None
        return self._loop

    def _resolve(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(None)


class Hub:
    """Per-key wake-ups for the waiters of one store (or one database file) in this process.

    Args:
        poller: how the one poller thread learns of changes made outside this process; None:
            there is nothing to poll (every change passes through ``notify``).
        interval: the poller's first pause, seconds; it doubles while nothing changes, up to
            ``max_interval``, and starts again after a change.
        name: names the poller thread (no secret: a path or a class name).
    """

    #: A seam for tests: called with the key just before a waiter's registration.
    before_register: ClassVar[Callable[[str], None] | None] = None

    def __init__(
        self,
        poller: Poller | None = None,
        *,
        interval: float = _INTERVAL,
        max_interval: float = _MAX_INTERVAL,
        name: str = "",
    ) -> None:
        self._poller = poller
        self._interval = interval
        self._max_interval = max(interval, max_interval)
        self._name = name
        self._lock = threading.Lock()
        self._watches: dict[str, set[Watch]] = {}
        self._thread: threading.Thread | None = None
        self._paused = False
        self._halt = threading.Event()  # set: the poller thread ends at once
        reset_in_child(self)

    def __repr__(self) -> str:
        return f"Hub({self._name!r}, waiting={self.waiting()})"

    # -- waiting ---------------------------------------------------------------------------

    def wait(
        self,
        key: str,
        version: int,
        timeout: float,
        read: Callable[[], int],
        *,
        registered: Callable[[], None] | None = None,
    ) -> None:
        """Block until the record under ``key`` may have moved from ``version``, or ``timeout``
        seconds passed. ``read`` returns the stored version (0: none) and raises what the
        store raises (``StoreError``); it is called once, after the registration, never in a
        loop. ``registered`` runs after the registration and before the read: a store with a
        listener of its own makes sure it listens there, so that a listener lost at any
        moment before (its ``notify_all`` reaching no watch yet) is replaced, and one lost
        after fires this watch."""
        with self.watch(key, version) as watch:
            if registered is not None:
                registered()
            if read() != version:
                return
            watch.wait(timeout)

    async def await_change(
        self,
        key: str,
        version: int,
        timeout: float,
        read: Callable[[], Awaitable[int]],
        *,
        registered: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``wait`` for a task: the watch is a future of the running loop, so no thread is
        held while waiting (``read`` may run in one)."""
        with self.watch(key, version, asyncio.get_running_loop()) as watch:
            if registered is not None:
                await registered()
            if (await read()) != version:
                return
            await watch.await_fired(timeout)

    @contextlib.contextmanager
    def watch(
        self, key: str, version: int, loop: asyncio.AbstractEventLoop | None = None
    ) -> Iterator[Watch]:
        """Register a watch on ``key`` for a waiter that read ``version`` (a task's when
        ``loop`` is given), unregistered on exit. Read the store *inside* the block."""
        hook = Hub.before_register
        if hook is not None:
            hook(key)
        watch = Watch(key, version, loop)
        with self._lock:
            self._watches.setdefault(key, set()).add(watch)
            self._start_poller()
        try:
            yield watch
        finally:
            self._forget(watch)

    def waiting(self, key: str | None = None) -> int:
        """How many watches are registered (on ``key``, or in all)."""
        with self._lock:
            if key is not None:
                return len(self._watches.get(key, ()))
            return sum(len(watches) for watches in self._watches.values())

    # -- firing ----------------------------------------------------------------------------

    def notify(self, key: str) -> None:
        """Fire every watch on ``key``: its record changed (or may have). From any thread."""
        with self._lock:
            watches = list(self._watches.get(key, ()))
        _fire(watches)

    def notify_all(self) -> None:
        """Fire every watch: anything may have changed (a store closing, a poll failing)."""
        with self._lock:
            watches = [watch for keyed in self._watches.values() for watch in keyed]
        _fire(watches)

    # -- the poller ------------------------------------------------------------------------

    def pause(self, timeout: float) -> None:
        """Before ``fork()``: end the poller thread (waiting up to ``timeout`` seconds) and let
        it release what it holds; none starts until ``resume``."""
        with self._lock:
            self._paused = True
            thread = self._thread
            self._halt.set()
        if thread is not None:
            thread.join(timeout)

    def resume(self) -> None:
        """After ``fork()``, in the parent: the poller runs again if anyone waits."""
        with self._lock:
            self._paused = False
            self._halt.clear()
            if self._watches:
                self._start_poller()

    def after_fork(self) -> None:
        """In a forked child (``_forks`` calls it for every hub): its threads are gone, so
        the registrations and the poller are forgotten and the locks replaced (a vanished
        thread may have held one)."""
        self._lock = threading.Lock()
        self._watches = {}
        self._thread = None
        self._paused = False
        self._halt = threading.Event()

    def _start_poller(self) -> None:
        """Under the lock: start the one poller if there is something to poll and none runs."""
        if self._poller is None or self._thread is not None or self._paused:
            return
        self._thread = threading.Thread(
            target=self._run_poller, name=f"amo_oauth poller {self._name}", daemon=True
        )
        self._thread.start()

    def _run_poller(self) -> None:
        assert self._poller is not None
        pause = self._interval
        while not self._halt.wait(pause):
            watched = self._watched()
            if not watched:
                if self._end_poller():
                    return
                continue  # a waiter came while the poller let go: poll on
            fired = self._poll_once(watched)
            pause = self._interval if fired else min(pause * 2, self._max_interval)
        self._poller.idle()  # paused for a fork
        with self._lock:
            self._thread = None

    def _end_poller(self) -> bool:
        """Nobody waits: release what the poller holds, then end unless someone came meanwhile
        (a waiter that registered while ``_thread`` was still set started no poller)."""
        assert self._poller is not None
        self._poller.idle()
        with self._lock:
            if self._watches and not self._paused:
                return False
            self._thread = None
            return True

    def _watched(self) -> dict[str, frozenset[int]]:
        """The watched keys and the versions their waiters read."""
        with self._lock:
            return {
                key: frozenset(watch.version for watch in watches)
                for key, watches in self._watches.items()
            }

    def _poll_once(self, watched: Mapping[str, frozenset[int]]) -> bool:
        assert self._poller is not None
        try:
            moved = list(self._poller.poll(watched))
        except Exception:  # each woken waiter reads the store and meets the failure itself
            logger.debug("store poll failed; waking every waiter", exc_info=True)
            self.notify_all()
            return True
        for key in moved:
            self.notify(key)
        return bool(moved)

    def _forget(self, watch: Watch) -> None:
        with self._lock:
            watches = self._watches.get(watch.key)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[watch.key]


def _fire(watches: Iterable[Watch]) -> None:
    """Fire ``watches``: threads at once, tasks with one callback per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Watch]] = {}
    for watch in watches:
        loop = watch._fire()
        if loop is not None:
            by_loop.setdefault(loop, []).append(watch)
    for loop, tasks in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody awaits there
            loop.call_soon_threadsafe(_resolve_all, tasks)


def _resolve_all(watches: list[Watch]) -> None:
    for watch in watches:
        watch._resolve()
