"""amoCRM / Kommo OAuth 2.0 for backends, correct by construction.

The connection lifecycle is an explicit state machine
(disconnected -> code_received -> exchanged -> connected / error): a code is exchanged at most
once however often it arrives, and refresh tokens are spent single-flight across processes.
"""

from typing import TYPE_CHECKING

from ._auth import ConnectionAuth
from ._config import Config
from ._errors import (
    AmoOAuthError,
    CallbackRejected,
    InvalidTransition,
    ProviderError,
    ReauthorizationRequired,
    StoreError,
)
from ._records import (
    Account,
    Connection,
    ConnectionRecord,
    ConnectionState,
    ErrorInfo,
    Lease,
    SeenCode,
    TokenSet,
)
from ._results import AuthorizationRequest, CallbackResult, Outcome, RefreshReport
from ._service import AmoOAuth, AsyncAmoOAuth
from .stores import MemoryStore, SQLiteStore, Store

if TYPE_CHECKING:
    from .stores.redis import RedisStore

__version__ = "0.1.0"

__all__ = [
    "Account",
    "AmoOAuth",
    "AmoOAuthError",
    "AsyncAmoOAuth",
    "AuthorizationRequest",
    "CallbackRejected",
    "CallbackResult",
    "Config",
    "Connection",
    "ConnectionAuth",
    "ConnectionRecord",
    "ConnectionState",
    "ErrorInfo",
    "InvalidTransition",
    "Lease",
    "MemoryStore",
    "Outcome",
    "ProviderError",
    "ReauthorizationRequired",
    "RedisStore",
    "RefreshReport",
    "SQLiteStore",
    "SeenCode",
    "Store",
    "StoreError",
    "TokenSet",
    "__version__",
]


def __getattr__(name: str) -> object:
    """``RedisStore``, imported when first asked for (it needs the ``redis`` extra).

    Raises:
        ImportError: ``RedisStore`` without the ``redis`` package.
        AttributeError: any other unknown name.
    """
    if name == "RedisStore":
        from . import stores

        return stores.RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
