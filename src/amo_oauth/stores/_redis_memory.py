"""Whether a Redis server may evict ``RedisStore``'s keys: its memory policy, read from ``INFO``.

Under ``maxmemory`` pressure Redis deletes keys by its ``maxmemory-policy``. The ``volatile-*``
policies delete keys that carry a TTL: the ledger of state nonces and codes, so a reload of the
callback page answers ``wrong_browser`` instead of ``already_connected`` and a state may pass
twice. The ``allkeys-*`` policies delete any key: records, so connections vanish. Only
``noeviction`` (writes fail instead) or ``maxmemory 0`` (no limit: nothing is ever evicted,
whatever the policy) keeps every key (https://redis.io/docs/latest/develop/reference/eviction/).

The store reads ``INFO memory`` once, on its first call (``MemoryGate``), and on every
``check()``. A policy that may evict is refused unless the store was told to allow it
(``allow_eviction``); a server that does not tell (``INFO`` renamed, denied by an ACL, or
without the fields, as some managed services answer) is warned about on the ``amo_oauth.stores``
logger, never refused.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Mapping
from typing import Final

import attrs

from .._errors import StoreError
from ._forks import reset_in_child

__all__ = ["OPT_IN", "Eviction", "MemoryGate", "MemoryVerdict", "judge"]

logger = logging.getLogger("amo_oauth.stores")

#: The one policy under which Redis never evicts.
SAFE_POLICY: Final = "noeviction"
#: How a store is told to accept a policy that may evict, as a refusal names it.
OPT_IN: Final = "RedisStore(..., allow_eviction=True) or ?allow_eviction=true on the store URL"


class Eviction(enum.Enum):
    """What the server's memory settings mean for the store's keys."""

    #: ``noeviction``, or ``maxmemory 0``: every key stays.
    NEVER = "never"
    #: A policy that evicts, under a memory limit: keys may vanish.
    POSSIBLE = "possible"
    #: The server did not tell (``INFO`` refused, or a field missing).
    UNTOLD = "untold"


@attrs.frozen
class MemoryVerdict:
    """What ``INFO memory`` said, and what it means."""

    eviction: Eviction
    policy: str | None = None
    maxmemory: int | None = None

    def sentence(self, where: str) -> str:
        """What an operator should know, in one sentence; empty when nothing may be evicted."""
        if self.eviction is Eviction.NEVER:
            return ""
        if self.eviction is Eviction.UNTOLD:
            return (
                f"Redis store at {where} could not read the server's maxmemory-policy and"
                " maxmemory (INFO memory refused or incomplete): make sure the policy is"
                " noeviction or maxmemory is 0, or keys may be evicted"
            )
        victims = (
            "keys with a TTL: the ledger of states and codes"
            if str(self.policy).startswith("volatile-")
            else "any key, connection records included"
        )
        return (
            f"Redis store at {where} may lose keys: maxmemory-policy {self.policy} with"
            f" maxmemory {self.maxmemory} bytes evicts {victims}; set maxmemory-policy"
            " noeviction (or maxmemory 0)"
        )

    def refused(self, allowed: bool) -> bool:
        """True when the store must not be used: a policy that may evict, not allowed."""
        return self.eviction is Eviction.POSSIBLE and not allowed


def judge(info: Mapping[str, object] | None) -> MemoryVerdict:
    """What the ``INFO memory`` section ``info`` (None: the server refused it) means."""
    if info is None:
        return MemoryVerdict(Eviction.UNTOLD)
    policy = info.get("maxmemory_policy")
    limit = info.get("maxmemory")
    maxmemory = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
    policy = policy if isinstance(policy, str) and policy else None
    if maxmemory == 0 or policy == SAFE_POLICY:
        return MemoryVerdict(Eviction.NEVER, policy, maxmemory)
    if policy is None or maxmemory is None:
        return MemoryVerdict(Eviction.UNTOLD, policy, maxmemory)
    return MemoryVerdict(Eviction.POSSIBLE, policy, maxmemory)


class MemoryGate:
    """The check a store makes before its first call: refuse a server that may evict its keys
    (unless ``allowed``), warn once where it may or cannot tell, then let every call through.

    A refusal is not remembered: the next call reads ``INFO`` again, so a server whose policy
    was corrected is used without a restart.
    """

    def __init__(self, where: str, allowed: bool) -> None:
        self.where = where
        self.allowed = allowed
        self.passed = False
        self._lock = threading.Lock()
        reset_in_child(self)

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (a thread the child does not have may have held
        it); whether the server passed stays known."""
        self._lock = threading.Lock()

    def admit(self, verdict: MemoryVerdict) -> None:
        """Let the store be used after ``verdict``, or raise.

        Raises:
            StoreError: the policy may evict the store's keys and eviction is not allowed.
        """
        sentence = verdict.sentence(self.where)
        if verdict.refused(self.allowed):
            raise StoreError(f"{sentence}; or accept the risk with {OPT_IN}")
        with self._lock:
            if self.passed:
                return
            self.passed = True
        if verdict.eviction is Eviction.POSSIBLE:
            logger.warning("%s (used: eviction allowed)", sentence)
        elif sentence:
            logger.warning("%s", sentence)
