"""The service's logic, written once as generators of I/O operations (``_ops.py``).

``Flows`` is what ``AmoOAuth`` (blocking) and ``AsyncAmoOAuth`` (awaiting) drive, the way
httpx's auth flows serve both clients. It holds its parts, one job each, by composition:

- ``records``, a ``_flow_records.Records``: load, step-and-write, wait (the record primitives);
- a ``_flow_verify.Verification`` over it: verifying a stored pair, now or later;
- ``codes``, a ``_flow_codes.CodeFlows``: begin, mobile tickets, callbacks, the legacy
  exchange;
- ``connections``, a ``_flow_connections.ConnectionFlows``: status, disconnects, the uninstall
  hook;
- ``tokens``, a ``_flow_tokens.TokenFlows``: access tokens and the keep-alive sweep.

They share the one ``Verification`` and, through it, the one ``Records``: its rotated pairs kept
in memory are the whole service's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from ._config import Config
from ._flow_codes import CodeFlows
from ._flow_connections import ConnectionFlows
from ._flow_records import Records
from ._flow_tokens import TokenFlows
from ._flow_verify import Verification

__all__ = ["Flows"]


class Flows:
    """The logic behind every public method of ``AmoOAuth`` and ``AsyncAmoOAuth``, in parts."""

    def __init__(
        self,
        config: Config,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.records = Records(config, clock, monotonic)
        verification = Verification(self.records)
        self.codes = CodeFlows(verification)
        self.connections = ConnectionFlows(verification)
        self.tokens = TokenFlows(verification)
