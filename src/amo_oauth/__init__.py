"""amoCRM / Kommo OAuth 2.0 for backends, correct by construction.

The connection lifecycle is an explicit state machine
(disconnected -> code_received -> exchanged -> connected / error): a code is exchanged at most
once however often it arrives, and refresh tokens are spent single-flight across processes.

``PostgresStore`` and ``RedisStore`` are imported on first access: they need the ``postgres``
and ``redis`` extras.
"""

from typing import TYPE_CHECKING

from ._async_service import AsyncAmoOAuth
from ._auth import ConnectionAuth
from ._config import Config
from ._connection_id import ConnectionId, Widget
from ._errors import (
    AmoOAuthError,
    CallbackRejected,
    InvalidTransition,
    ProviderError,
    ReauthorizationRequired,
    StoreError,
    TokenScopeError,
    TryAgainLater,
    UndecryptableRecord,
    UnreadableRecord,
)
from ._lifecycle_events import (
    AccountHostChanged,
    Connected,
    DisconnectedByProvider,
    LifecycleEvent,
    LongLivedTokenExpiring,
    ReauthorizationNeeded,
)
from ._public import present_as
from ._records import (
    Account,
    Connection,
    ConnectionRecord,
    ConnectionStatus,
    ErrorInfo,
    Lease,
    SeenCode,
    TokenSet,
)
from ._results import (
    AuthorizationRequest,
    ButtonMetadata,
    CallbackResult,
    HookResult,
    Outcome,
    RefreshReport,
    SecretsResult,
    SiteButton,
    SweepProgress,
)
from ._service import AmoOAuth
from ._state_token import MAX_CLOCK_SKEW
from .stores import AsyncStore, MemoryStore, SQLiteStore, Store, store_from_url

if TYPE_CHECKING:
    from .stores.postgres import PostgresStore
    from .stores.redis import RedisStore

__version__ = "0.1.0"

# Plain code-point order (a test keeps it), which puts the one constant among the classes.
__all__ = [  # noqa: RUF022
    "Account",
    "AccountHostChanged",
    "AmoOAuth",
    "AmoOAuthError",
    "AsyncAmoOAuth",
    "AsyncStore",
    "AuthorizationRequest",
    "ButtonMetadata",
    "CallbackRejected",
    "CallbackResult",
    "Config",
    "Connected",
    "Connection",
    "ConnectionAuth",
    "ConnectionId",
    "ConnectionRecord",
    "ConnectionStatus",
    "DisconnectedByProvider",
    "ErrorInfo",
    "HookResult",
    "InvalidTransition",
    "Lease",
    "LifecycleEvent",
    "LongLivedTokenExpiring",
    "MAX_CLOCK_SKEW",
    "MemoryStore",
    "Outcome",
    "PostgresStore",
    "ProviderError",
    "ReauthorizationNeeded",
    "ReauthorizationRequired",
    "RedisStore",
    "RefreshReport",
    "SQLiteStore",
    "SecretsResult",
    "SeenCode",
    "SiteButton",
    "Store",
    "StoreError",
    "SweepProgress",
    "TokenScopeError",
    "TokenSet",
    "TryAgainLater",
    "UndecryptableRecord",
    "UnreadableRecord",
    "Widget",
    "__version__",
    "store_from_url",
]

# Reprs and tracebacks say amo_oauth.CallbackRejected, not amo_oauth._errors.CallbackRejected.
present_as(__name__, globals(), __all__)


def __getattr__(name: str) -> object:
    """Import ``PostgresStore`` or ``RedisStore`` when first asked for (they need the
    ``postgres`` and ``redis`` extras).

    Raises:
        ImportError: the store's extra is not installed.
        AttributeError: any other unknown name.
    """
    if name in ("PostgresStore", "RedisStore"):
        from . import stores

        return getattr(stores, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
