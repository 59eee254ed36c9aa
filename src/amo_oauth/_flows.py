"""The service's logic, written once as generators of I/O operations (``_ops.py``).

``Flows`` is what ``AmoOAuth`` (blocking) and ``AsyncAmoOAuth`` (awaiting) drive, the way
httpx's auth flows serve both clients. It is made of three parts, one job each:

- ``_flow_records.Records``: load, step-and-write, wait (the record primitives);
- ``_flow_codes.CodeFlows``: begin, callbacks, the legacy exchange, status, disconnects;
- ``_flow_tokens.TokenFlows``: access tokens and the keep-alive sweep.
"""

from __future__ import annotations

from ._flow_codes import CodeFlows
from ._flow_tokens import TokenFlows

__all__ = ["Flows"]


class Flows(CodeFlows, TokenFlows):
    """The logic behind every public method of ``AmoOAuth`` and ``AsyncAmoOAuth``."""
