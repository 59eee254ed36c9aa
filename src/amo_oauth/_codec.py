"""Records to JSON and back: the one format every store keeps.

Plain JSON, so that a Postgres ``jsonb`` column, a Redis string or an SQLite ``TEXT`` hold the same
thing, and a record written by one version of the library can be read by the next.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ._records import (
    Account,
    Backoff,
    ClientCredentials,
    ConnectionRecord,
    ConnectionStatus,
    ErrorInfo,
    Lease,
    PendingCredentials,
    SeenCode,
    TokenSet,
)

__all__ = ["FORMAT", "record_from_json", "record_to_json"]

#: 2 named the lifecycle value ``status`` (1 called it ``state``); a body of another format is
#: refused, never guessed at.
FORMAT = 2


def _time(moment: datetime | None) -> str | None:
    # Kept in UTC: every offset round-trips, and text order is time order.
    return moment.astimezone(UTC).isoformat() if moment else None


def _tokens(tokens: TokenSet | None) -> dict[str, Any] | None:
    if tokens is None:
        return None
    return {
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token,
        "expires_at": _time(tokens.expires_at),
        "refresh_expires_at": _time(tokens.refresh_expires_at),
        "token_type": tokens.token_type,
        "issued_at": _time(tokens.issued_at),
        "refresh_sends": tokens.refresh_sends,
        "after_rejection": tokens.after_rejection,
        # Written only when set: every other pair's row stays as it was.
        **({"long_lived": True} if tokens.long_lived else {}),
    }


def record_to_json(record: ConnectionRecord) -> str:
    """Serialize a record, secrets included: stores must treat the text as secret."""
    body = {
        "format": FORMAT,
        "connection_id": record.connection_id,
        "status": record.status.value,
        "version": record.version,
        "host": record.host,
        "tokens": _tokens(record.tokens),
        "account": _account(record.account),
        "error": _error(record.error),
        "seen_codes": [[seen.digest, _time(seen.at)] for seen in record.seen_codes],
        "lease": _lease(record.lease),
        "connected_at": _time(record.connected_at),
        "connected_version": record.connected_version,
        "updated_at": _time(record.updated_at),
        "integration": record.integration,
        "widget": record.widget,
        "refused_refresh": record.refused_refresh,
        "verify_after": _time(record.verify_after),
        "verify_attempts": record.verify_attempts,
        "kept_pair_until": _time(record.kept_pair_until),
        "backoff": _backoff(record.backoff),
        "credentials": _credentials(record.credentials),
        "pending_credentials": [
            [pending.state_digest, _credentials(pending.credentials), _time(pending.at)]
            for pending in record.pending_credentials
        ],
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _credentials(credentials: ClientCredentials | None) -> dict[str, Any] | None:
    if credentials is None:
        return None
    return {"client_id": credentials.client_id, "client_secret": credentials.client_secret}


def _account(account: Account | None) -> dict[str, Any] | None:
    if account is None:
        return None
    return {"id": account.id, "subdomain": account.subdomain, "name": account.name}


def _error(error: ErrorInfo | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {"reason": error.reason, "hint": error.hint, "at": _time(error.at)}


def _lease(lease: Lease | None) -> dict[str, Any] | None:
    if lease is None:
        return None
    return {"owner": lease.owner, "purpose": lease.purpose, "expires_at": _time(lease.expires_at)}


def _backoff(backoff: Backoff | None) -> dict[str, Any] | None:
    if backoff is None:
        return None
    return {"until": _time(backoff.until), "attempts": backoff.attempts, "cause": backoff.cause}


def record_from_json(text: str | bytes) -> ConnectionRecord:
    """Read a record written by ``record_to_json``, checking every field's type.

    Integers must be ints (not bools, not text), text must be text, times must be ISO 8601
    with an offset. A stored body is data from disk: nothing in it may surface as anything but
    ``ValueError`` (a TypeError, KeyError or RecursionError from a malformed body included).

    Raises:
        ValueError: the text is not a record of a known format; the message names no content.
    """
    try:
        body = json.loads(text)
    except RecursionError:  # json's own depth guard, for [[[[...]]]] nested beyond the stack
        raise ValueError("record nested too deeply") from None
    fields = _Fields(_obj(body, "record"))
    found = fields.raw("format")
    if type(found) is not int or found != FORMAT:  # neither True nor 1.0
        raise ValueError("unknown record format")
    try:
        return _record(fields)
    except (TypeError, KeyError) as exc:  # an attrs validator's complaint, say
        raise ValueError("malformed record") from exc


def _record(body: _Fields) -> ConnectionRecord:
    seen = body.items("seen_codes")
    return ConnectionRecord(
        connection_id=body.text("connection_id"),
        status=ConnectionStatus(body.text("status")),
        version=body.integer("version"),
        host=body.optional_text("host"),
        tokens=_read_tokens(body.optional_obj("tokens")),
        account=_read_account(body.optional_obj("account")),
        error=_read_error(body.optional_obj("error")),
        seen_codes=tuple(_read_seen(item) for item in seen),
        lease=_read_lease(body.optional_obj("lease")),
        connected_at=body.optional_time("connected_at"),
        # Absent in records connected before it was kept.
        connected_version=body.optional_integer("connected_version"),
        updated_at=body.optional_time("updated_at"),
        # Absent in records written before keys had a namespace.
        integration=body.optional_text("integration", missing_ok=True),
        widget=body.flag("widget", default=False),
        refused_refresh=body.optional_text("refused_refresh", missing_ok=True),
        verify_after=body.optional_time("verify_after", missing_ok=True),
        verify_attempts=body.integer("verify_attempts", default=0),
        # Absent in records written before kept pairs were awaited.
        kept_pair_until=body.optional_time("kept_pair_until", missing_ok=True),
        # Absent in records written before refreshes backed off.
        backoff=_read_backoff(body.optional_obj("backoff", missing_ok=True)),
        # Both absent in records written before site-button installs kept their integration.
        credentials=_read_credentials(body.optional_obj("credentials", missing_ok=True)),
        pending_credentials=tuple(
            _read_pending(item) for item in body.items("pending_credentials", missing_ok=True)
        ),
    )


def _read_tokens(tokens: _Fields | None) -> TokenSet | None:
    if tokens is None:
        return None
    return TokenSet(
        access_token=tokens.text("access_token"),
        # None: a token that cannot be renewed (``TokenSet``).
        refresh_token=tokens.optional_text("refresh_token"),
        expires_at=tokens.time("expires_at"),
        refresh_expires_at=tokens.time("refresh_expires_at"),
        token_type=tokens.text("token_type"),
        # Absent in pairs stored before these were kept.
        issued_at=tokens.optional_time("issued_at", missing_ok=True),
        refresh_sends=tokens.integer("refresh_sends", default=0),
        after_rejection=tokens.flag("after_rejection", default=False),
        long_lived=tokens.flag("long_lived", default=False),
    )


def _read_account(account: _Fields | None) -> Account | None:
    if account is None:
        return None
    return Account(account.integer("id"), account.text("subdomain"), account.text("name"))


def _read_error(error: _Fields | None) -> ErrorInfo | None:
    if error is None:
        return None
    return ErrorInfo(error.text("reason"), error.optional_text("hint"), error.time("at"))


def _read_lease(lease: _Fields | None) -> Lease | None:
    if lease is None:
        return None
    return Lease(lease.text("owner"), lease.text("purpose"), lease.time("expires_at"))


def _read_backoff(backoff: _Fields | None) -> Backoff | None:
    if backoff is None:
        return None
    return Backoff(backoff.time("until"), backoff.integer("attempts"), backoff.text("cause"))


def _read_credentials(credentials: _Fields | None) -> ClientCredentials | None:
    if credentials is None:
        return None
    return ClientCredentials(credentials.text("client_id"), credentials.text("client_secret"))


def _read_pending(item: object) -> PendingCredentials:
    if not isinstance(item, list) or len(item) != 3:
        raise ValueError("malformed pending credentials")
    digest, credentials, at = item
    fields = _Fields(_obj(credentials, "pending_credentials"))
    read = ClientCredentials(fields.text("client_id"), fields.text("client_secret"))
    return PendingCredentials(
        _check_text(digest, "pending_credentials"), read, _read_time(at, "pending_credentials")
    )


def _read_seen(item: object) -> SeenCode:
    if not isinstance(item, list) or len(item) != 2:
        raise ValueError("malformed seen code")
    digest, at = item
    return SeenCode(_check_text(digest, "seen code"), _read_time(at, "seen code"))


def _obj(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{name} is not an object")
    return value


def _check_text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} is not text")
    return value


def _read_time(value: object, name: str) -> datetime:
    moment = datetime.fromisoformat(_check_text(value, name))  # ValueError when malformed
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} has no UTC offset")
    return moment


class _Fields:
    """One JSON object's fields, each read as the type the format says it has.

    The messages name the field, never its value (a value may be a token).
    """

    def __init__(self, body: dict[str, Any]) -> None:
        self._body = body

    def raw(self, name: str) -> object:
        return self._body.get(name)

    def _get(self, name: str) -> object:
        if name not in self._body:
            raise ValueError(f"{name} is missing")
        return self._body[name]

    def text(self, name: str) -> str:
        return _check_text(self._get(name), name)

    def optional_text(self, name: str, *, missing_ok: bool = False) -> str | None:
        value = self._body.get(name) if missing_ok else self._get(name)
        return None if value is None else _check_text(value, name)

    def integer(self, name: str, *, default: int | None = None) -> int:
        value = self._body.get(name, default) if default is not None else self._get(name)
        if not isinstance(value, int) or isinstance(value, bool):  # True is an int in Python
            raise ValueError(f"{name} is not an integer")
        return value

    def optional_integer(self, name: str) -> int | None:
        """An integer, or None when absent or null."""
        value = self._body.get(name)
        return None if value is None else self.integer(name)

    def flag(self, name: str, *, default: bool) -> bool:
        value = self._body.get(name, default)
        if not isinstance(value, bool):
            raise ValueError(f"{name} is not a boolean")
        return value

    def items(self, name: str, *, missing_ok: bool = False) -> list[object]:
        value = self._body.get(name, []) if missing_ok else self._get(name)
        if not isinstance(value, list):
            raise ValueError(f"{name} is not a list")
        return value

    def time(self, name: str) -> datetime:
        return _read_time(self._get(name), name)

    def optional_time(self, name: str, *, missing_ok: bool = False) -> datetime | None:
        value = self._body.get(name) if missing_ok else self._get(name)
        return None if value is None else _read_time(value, name)

    def optional_obj(self, name: str, *, missing_ok: bool = False) -> _Fields | None:
        value = self._body.get(name) if missing_ok else self._get(name)
        return None if value is None else _Fields(_obj(value, name))
