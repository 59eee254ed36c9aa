"""What every store keeps of a record: its indexed columns and its encoded body, made in one place.

A store never picks fields out of a record itself: it asks ``RecordCodec.row`` for a ``Row``
(the key, the version, and the few fields its indexes need, in clear) and keeps ``Row.data``
(the whole record, encoded) beside them. Encryption at rest plugs in here, once, for every store.
"""

from __future__ import annotations

import json
from typing import Protocol

import attrs

from .._codec import record_from_json, record_to_json
from .._errors import StoreError, UndecryptableRecord, UnreadableRecord
from .._records import ConnectionRecord, ConnectionStatus

__all__ = ["Encryption", "RecordCodec", "Row"]

#: The key under which an encrypted field is stored in a record's body.
_SEALED = "sealed"
#: The fields of a record's body that hold secrets, each stored encrypted when the store has
#: ``encryption``: the token pair, and a site-button connection's own integration credentials
#: and those posted to ``secrets_uri`` for a consent (their client secrets).
_SECRET_FIELDS = ("tokens", "credentials", "pending_credentials")


@attrs.frozen
class Row:
    """A record as a store keeps it. ``data`` holds secrets; it never appears in a repr."""

    key: str
    version: int
    status: str
    #: The verified account, for ``find_by_account``; None until verified.
    account_id: int | None
    #: POSIX seconds when the refresh token expires, for the sweep; None when not connected.
    refresh_due: float | None
    data: str = attrs.field(repr=False)


#: The row is fine; the store's encryption key does not open it.
_KeyError = UndecryptableRecord


class Encryption(Protocol):
    """What encrypts tokens at rest: ``cryptography``'s ``Fernet`` and ``MultiFernet`` fit as
    they are (``MultiFernet([new, old])`` encrypts with the newest key and decrypts with any)."""

    def encrypt(self, data: bytes) -> bytes:
        """The ciphertext of ``data``."""
        ...

    def decrypt(self, token: bytes) -> bytes:
        """The plaintext of ``token``; raises when the key does not fit."""
        ...


class RecordCodec:
    """Turns records into ``Row``s and stored bodies back into records.

    With ``encryption``, the token pair (access and refresh token, their times) and the
    integration credentials a site-button connection holds (``credentials``,
    ``pending_credentials``) are stored encrypted; everything else stays in clear so the
    indexes work. Rows written without
    encryption are still read (re-saving them encrypts them).
    """

    def __init__(self, encryption: Encryption | None = None) -> None:
        self._encryption = encryption

    def __repr__(self) -> str:
        sealed = "" if self._encryption is None else "encryption=..."
        return f"RecordCodec({sealed})"

    def row(self, record: ConnectionRecord) -> Row:
        """The row to store for ``record``."""
        connected = record.status is ConnectionStatus.CONNECTED and record.tokens is not None
        return Row(
            key=record.key,
            version=record.version,
            status=record.status.value,
            account_id=record.account.id if record.account is not None else None,
            refresh_due=record.tokens.refresh_expires_at.timestamp()
            if connected and record.tokens is not None
            else None,
            data=self.encode(record),
        )

    def encode(self, record: ConnectionRecord) -> str:
        """The record's stored body (text)."""
        text = record_to_json(record)
        if self._encryption is None:
            return text
        body = json.loads(text)
        held = [field for field in _SECRET_FIELDS if body.get(field)]  # None and () stay
        if not held:
            return text
        for field in held:
            plain = json.dumps(body[field], separators=(",", ":")).encode("utf-8")
            body[field] = {_SEALED: self._encryption.encrypt(plain).decode("ascii")}
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)

    def _unseal(self, data: str | bytes) -> str | bytes:
        """The body with its secret fields decrypted, when they were stored encrypted."""
        if _SEALED.encode() not in (data if isinstance(data, bytes) else data.encode("utf-8")):
            return data
        try:
            body = json.loads(data)
            sealed = {
                field: str(body[field][_SEALED])
                for field in _SECRET_FIELDS
                if isinstance(body.get(field), dict) and _SEALED in body[field]
            }
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return data  # not a sealed body after all: the decoder says what is wrong
        if not sealed:
            return data
        if self._encryption is None:
            raise _KeyError("the record's secrets are encrypted: give the store its encryption")
        try:
            for field, token in sealed.items():
                body[field] = json.loads(self._encryption.decrypt(token.encode("ascii")))
        except Exception:  # any cipher's "does not fit": never the garbage it would yield
            raise _KeyError("cannot decrypt a record's secrets: wrong key?") from None
        return json.dumps(body)

    def decode_row(self, key: object, version: object, data: object) -> ConnectionRecord:
        """The record a row holds, checked against the row's own key and version columns.

        Raises:
            UnreadableRecord: the body is unreadable or disagrees with its columns; it carries
                the version column when that is an intact integer, so the row can still be
                overwritten by compare-and-set.
        """
        intact = version if type(version) is int else None
        try:
            record = self.decode(data)
        except _KeyError as error:
            # A key problem, not a corrupt row: never overwritten as one. The key column is
            # named, so a job visiting every row (rotate-key) can count it and go on.
            if error.key is not None or not isinstance(key, str):
                raise
            raise _KeyError(str(error), key) from None
        except StoreError:
            raise UnreadableRecord(intact) from None
        # A body that disagrees with its own columns was not written by this library.
        if record.key != key or record.version != version:
            raise UnreadableRecord(intact)
        return record

    def decode(self, data: object) -> ConnectionRecord:
        """The record a stored body holds.

        ``data`` is typed ``object`` on purpose: it comes from a database column, which may
        hold anything (an integer, a NULL) whatever the schema says.

        Raises:
            StoreError: the body is not a record this library wrote (corrupt, of the wrong
                type, or of an unknown format); the message names no content.
        """
        if not isinstance(data, str | bytes):
            raise StoreError("the store holds a record it cannot read")
        data = self._unseal(data)
        try:
            return record_from_json(data)
        except (ValueError, RecursionError) as exc:
            # record_from_json raises only ValueError; RecursionError stays caught in case a
            # body is nested deeply enough to overflow on the way into the json module.
            raise StoreError("the store holds a record it cannot read") from exc
