"""amoCRM's disconnect hook: sent when the integration is uninstalled from an account.

``GET {disconnect url}?client_uuid=...&account_id=...&signature=...`` where ``signature`` is the
lower-case hex HMAC-SHA256 of ``"{client_id}|{account_id}"`` keyed with the client secret
(protocol notes §6). In the site button's metadata mode (§7) ``client_uuid`` is the client id
of the integration amoCRM made for that account, and its secret signs.
"""

from __future__ import annotations

import hashlib
import hmac

import attrs

from ._callback import QueryLike, single_values
from ._errors import CallbackRejected
from ._records import ClientCredentials

__all__ = ["DisconnectHook", "hook_signature", "read_disconnect_hook"]


def hook_signature(client_id: str, client_secret: str, account_id: int | str) -> str:
    """The signature amoCRM puts on a disconnect hook for ``account_id``."""
    message = f"{client_id}|{account_id}".encode()
    return hmac.new(client_secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


@attrs.frozen
class DisconnectHook:
    """A disconnect hook's parameters, well formed, its signature not checked yet.

    ``account`` is the ``account_id`` as it came (ASCII digits): what the signature signs.
    """

    account: str
    client_uuid: str
    signature: str = attrs.field(repr=False)

    @property
    def account_id(self) -> int:
        """The account the hook is about."""
        return int(self.account)

    def signed_by(self, credentials: ClientCredentials) -> bool:
        """Did the integration ``credentials`` name send this hook? Its client id and the
        signature under its secret are both compared, always, in constant time, so timing
        tells nothing about which failed."""
        expected = hook_signature(credentials.client_id, credentials.client_secret, self.account)
        same_client = hmac.compare_digest(self.client_uuid.encode(), credentials.client_id.encode())
        same_mac = hmac.compare_digest(self.signature.encode(), expected.encode())
        return same_client and same_mac


def read_disconnect_hook(query: QueryLike) -> DisconnectHook:
    """The hook's parameters, signature unchecked (``DisconnectHook.signed_by`` checks it).

    Raises:
        CallbackRejected: ``malformed`` for missing, repeated or ill-formed parameters.
    """
    params = single_values(query)
    account_id, client_uuid = params.get("account_id", ""), params.get("client_uuid", "")
    signature = params.get("signature", "")
    if not (account_id.isascii() and account_id.isdigit()) or not client_uuid or not signature:
        raise CallbackRejected("malformed")
    return DisconnectHook(account_id, client_uuid, signature)
