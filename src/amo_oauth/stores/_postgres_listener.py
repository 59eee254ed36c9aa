"""``PostgresStore``'s one listening connection in this process: LISTEN on the store's channel.

Every record write sends ``pg_notify(channel, key)`` in its transaction, so the notification
leaves only with the commit, to every listener in every process. This one passes each key to the
store's hub (a payload too long for a key is empty: every watch fires).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from ._listening import ChannelListener
from ._postgres_pools import Conn, Connections

__all__ = ["Listener"]


class Listener(ChannelListener[Conn]):
    """A daemon thread on a connection of its own (not pooled: it is never given back), waiting
    in ``select`` on its socket and on a socket pair that ``close`` writes to."""

    def __init__(
        self,
        conns: Connections,
        listen: sql.Composed,
        changed: Callable[[str], None],
        lost: Callable[[], None],
    ) -> None:
        super().__init__("amo_oauth-pg-listener", conns.place.where, changed, lost)
        self._conns = conns
        self._listen = listen
        #: Written to by ``close`` to end the ``select``; made before the first thread starts.
        self._wake: tuple[socket.socket, socket.socket] | None = None

    def after_fork(self) -> None:
        """In a forked child: also a wake-up pair of its own. The inherited pair is the
        parent's too: a child's ``close`` writing to it would end the parent's listener, and
        every listener the parent started after it, since nobody reads the byte back out. The
        parent's LISTEN connection stayed with the parent's thread and is never touched here."""
        super().after_fork()
        if self._wake is not None:
            for end in self._wake:
                end.close()  # this process's descriptors only: the parent keeps its own
            self._wake = None

    def _prepare(self) -> None:
        if self._wake is None:
            self._wake = socket.socketpair()

    def _open(self) -> Conn:
        conn = psycopg.connect(self._conns.conninfo, **self._conns.kwargs)
        try:
            conn.execute(self._listen)
        except BaseException:
            conn.close()
            raise
        return conn

    def _serve(self, conn: Conn) -> None:
        assert self._wake is not None
        pgconn, wake = conn.pgconn, self._wake[1]
        # A selector, not select.select: that refuses a descriptor of 1024 or more, which a
        # busy server process reaches, and the listener would die on its first wait.
        with selectors.DefaultSelector() as selector:
            selector.register(conn.fileno(), selectors.EVENT_READ)
            selector.register(wake.fileno(), selectors.EVENT_READ)
            while not self.stopping.is_set():
                ready = {key.fd for key, _ in selector.select()}
                if wake.fileno() in ready:
                    return
                self._consume(pgconn)

    def _consume(self, pgconn: Any) -> None:
        """Pass each notification's key to the hub (an empty payload: every key)."""
        pgconn.consume_input()  # psycopg.Error when the connection is gone
        everyone = False
        keys: set[str] = set()
        while (notice := pgconn.notifies()) is not None:
            payload = notice.extra.decode("utf-8", "replace")
            if payload:
                keys.add(payload)
            else:
                everyone = True
        if everyone:
            self.lost()
        for key in keys:
            self.changed(key)

    def _interrupt(self) -> None:
        if self._wake is not None:
            with contextlib.suppress(OSError):
                self._wake[0].send(b"x")

    def _disconnect(self, conn: Conn) -> None:
        conn.close()

    def close(self, *, join: float | None = 5.0) -> None:
        super().close(join=join)
        if self._wake is not None:
            for end in self._wake:
                end.close()
