"""What amoCRM posts to ``secrets_uri``: a new integration's credentials and the consent's state.

In the site button's metadata mode (protocol notes §7) amoCRM makes a new integration for each
installing account and posts its ``client_id``, ``client_secret`` and the button's ``state``
to ``secrets_uri``, server to server, before the code redirect. amoCRM documents neither the
body's encoding nor any signature: the web layer accepts a form or JSON body and hands over its
fields; the signed ``state`` is the only authority (``CodeFlows.receive_secrets`` checks it).
Only shape is checked here.
"""

from __future__ import annotations

from typing import Final

import attrs

from ._callback import QueryLike, _pairs, single_values
from ._errors import CallbackRejected
from ._reasons import Reason
from ._records import ClientCredentials

__all__ = [
    "MAX_CLIENT_ID",
    "MAX_CLIENT_SECRET",
    "SECRETS_FIELDS",
    "SecretsPost",
    "read_secrets_post",
]

#: The fields read from the post; any other is ignored.
SECRETS_FIELDS: Final = ("client_id", "client_secret", "state")
#: The longest client id accepted (amoCRM's are UUIDs: 36 characters).
MAX_CLIENT_ID: Final = 255
#: The longest client secret accepted (amoCRM's are 64 characters).
MAX_CLIENT_SECRET: Final = 2048


@attrs.frozen
class SecretsPost:
    """A post to ``secrets_uri`` of the right shape. Neither secret appears in a repr."""

    credentials: ClientCredentials
    state: str = attrs.field(repr=False)


def _field_pairs(form: QueryLike) -> list[tuple[str, object]]:
    """The form's (name, value) pairs named in ``SECRETS_FIELDS``, every repetition kept."""
    return [
        (pair[0], pair[1])
        for pair in _pairs(form)
        if isinstance(pair, tuple | list) and len(pair) == 2 and pair[0] in SECRETS_FIELDS
    ]


def read_secrets_post(form: QueryLike) -> SecretsPost:
    """The three fields of a post to ``secrets_uri`` (a mapping, a multi-dict, or pairs).

    Raises:
        CallbackRejected: ``malformed`` for a field missing, repeated, not text or too long; a
            ``client_id`` that is not printable ASCII of at most ``MAX_CLIENT_ID``; a
            ``client_secret`` that is not printable text of at most ``MAX_CLIENT_SECRET``.
        TypeError: ``form`` is a string or None (the framework's to parse).
    """
    values = single_values(_field_pairs(form))
    client_id = values.get("client_id", "")
    client_secret = values.get("client_secret", "")
    state = values.get("state", "")
    id_ok = 0 < len(client_id) <= MAX_CLIENT_ID and client_id.isascii() and client_id.isprintable()
    secret_ok = 0 < len(client_secret) <= MAX_CLIENT_SECRET and client_secret.isprintable()
    if not (id_ok and secret_ok and state):
        raise CallbackRejected(Reason.MALFORMED)
    return SecretsPost(ClientCredentials(client_id, client_secret), state)
