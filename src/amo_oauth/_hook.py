"""amoCRM's disconnect hook: sent when the integration is uninstalled from an account.

``GET {disconnect url}?client_uuid=...&account_id=...&signature=...`` where ``signature`` is the
lower-case hex HMAC-SHA256 of ``"{client_id}|{account_id}"`` keyed with the client secret.
"""

from __future__ import annotations

import hashlib
import hmac

from ._callback import QueryLike, single_values
from ._config import Config
from ._errors import CallbackRejected

__all__ = ["hook_signature", "verify_disconnect_hook"]


def hook_signature(client_id: str, client_secret: str, account_id: int | str) -> str:
    """The signature amoCRM puts on a disconnect hook for ``account_id``."""
    message = f"{client_id}|{account_id}".encode()
    return hmac.new(client_secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify_disconnect_hook(query: QueryLike, config: Config) -> int:
    """Check a disconnect hook and return the account it is about.

    Raises:
        CallbackRejected: ``malformed`` for missing or ill-formed parameters, ``bad_signature``
            for another integration's or a forged hook.
    """
    params = single_values(query)
    account_id, client_uuid = params.get("account_id", ""), params.get("client_uuid", "")
    signature = params.get("signature", "")
    if not (account_id.isascii() and account_id.isdigit()) or not client_uuid or not signature:
        raise CallbackRejected("malformed")
    credentials = config.credentials
    if credentials is None:  # metadata mode: each connection's own secret signs (not yet)
        raise CallbackRejected("bad_signature")
    expected = hook_signature(credentials.client_id, credentials.client_secret, account_id)
    # Both comparisons always run, in constant time, so timing tells nothing about which failed.
    same_client = hmac.compare_digest(client_uuid.encode(), config.client_id.encode())
    same_mac = hmac.compare_digest(signature.encode(), expected.encode())
    if not (same_client and same_mac):
        raise CallbackRejected("bad_signature")
    return int(account_id)
