"""``RedisStore``'s one subscription in this process, to the change channel.

Every write PUBLISHes the record key on one channel. The store subscribes once per process (a
daemon thread, for blocking and awaiting waiters alike) and passes each key to its hub; a waiter
never subscribes itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final, cast

import redis

from ._listening import ChannelListener

__all__ = ["LISTEN_POLL", "Listener"]

#: Seconds the thread blocks for a message before looking whether it should stop.
LISTEN_POLL: Final = 0.2


class Listener(ChannelListener[Any]):
    """A daemon thread on a pub/sub connection of the blocking client's pool."""

    def __init__(
        self,
        client: redis.Redis,
        channel: str,
        where: str,
        timeout: float,
        changed: Callable[[str], None],
        lost: Callable[[], None],
    ) -> None:
        super().__init__("amo_oauth-redis-listener", f"Redis store at {where}", changed, lost)
        self._client = client
        self._channel = channel
        self._timeout = timeout

    def _open(self) -> Any:
        # redis-py annotates PubSub from 8.2 on only: held as Any, it type-checks alike at the
        # floor and at the lock (tasks.py checks both).
        pubsub: Any = cast("Callable[[], Any]", self._client.pubsub)()
        try:
            pubsub.subscribe(self._channel)
            self._confirmed(pubsub)
        except BaseException:
            pubsub.close()
            raise
        return pubsub

    def _confirmed(self, pubsub: Any) -> None:
        """Read until the server confirms the subscription: from then on, every PUBLISH on the
        channel reaches this connection. A server that never confirms is given up after the
        store's timeout."""
        deadline = time.monotonic() + self._timeout
        while not self.stopping.is_set() and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=LISTEN_POLL)
            if message is not None and message["type"] == "subscribe":
                return
        raise redis.TimeoutError("no confirmation of the subscription")

    def _serve(self, pubsub: Any) -> None:
        while not self.stopping.is_set():
            message = pubsub.get_message(timeout=LISTEN_POLL)
            if message is not None and message["type"] == "message":
                self.changed(message["data"])

    def _disconnect(self, pubsub: Any) -> None:
        pubsub.close()
