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
    ConnectionRecord,
    ConnectionState,
    ErrorInfo,
    Lease,
    SeenCode,
    TokenSet,
)

__all__ = ["FORMAT", "record_from_json", "record_to_json"]

FORMAT = 1


def _time(moment: datetime | None) -> str | None:
    # Kept in UTC: every offset round-trips, and text order is time order.
    return moment.astimezone(UTC).isoformat() if moment else None


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _tokens(tokens: TokenSet | None) -> dict[str, Any] | None:
    if tokens is None:
        return None
    return {
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token,
        "expires_at": _time(tokens.expires_at),
        "refresh_expires_at": _time(tokens.refresh_expires_at),
        "token_type": tokens.token_type,
    }


def record_to_json(record: ConnectionRecord) -> str:
    """Serialize a record, secrets included: stores must treat the text as secret."""
    body = {
        "format": FORMAT,
        "connection_id": record.connection_id,
        "state": record.state.value,
        "version": record.version,
        "host": record.host,
        "tokens": _tokens(record.tokens),
        "account": _account(record.account),
        "error": _error(record.error),
        "seen_codes": [[seen.digest, _time(seen.at)] for seen in record.seen_codes],
        "lease": _lease(record.lease),
        "connected_at": _time(record.connected_at),
        "updated_at": _time(record.updated_at),
        "integration": record.integration,
        "widget": record.widget,
        "refused_refresh": record.refused_refresh,
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


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


def record_from_json(text: str | bytes) -> ConnectionRecord:
    """Read a record written by ``record_to_json``.

    Raises:
        ValueError: the text is not a record of a known format.
    """
    body = json.loads(text)
    if body.get("format") != FORMAT:
        raise ValueError("unknown record format")
    tokens, account, error, lease = (body[key] for key in ("tokens", "account", "error", "lease"))
    return ConnectionRecord(
        connection_id=body["connection_id"],
        state=ConnectionState(body["state"]),
        version=body["version"],
        host=body["host"],
        tokens=TokenSet(
            access_token=tokens["access_token"],
            refresh_token=tokens["refresh_token"],
            expires_at=datetime.fromisoformat(tokens["expires_at"]),
            refresh_expires_at=datetime.fromisoformat(tokens["refresh_expires_at"]),
            token_type=tokens["token_type"],
        )
        if tokens
        else None,
        account=Account(account["id"], account["subdomain"], account["name"]) if account else None,
        error=ErrorInfo(error["reason"], error["hint"], datetime.fromisoformat(error["at"]))
        if error
        else None,
        seen_codes=tuple(
            SeenCode(digest, datetime.fromisoformat(at)) for digest, at in body["seen_codes"]
        ),
        lease=Lease(lease["owner"], lease["purpose"], datetime.fromisoformat(lease["expires_at"]))
        if lease
        else None,
        connected_at=_parse_time(body["connected_at"]),
        updated_at=_parse_time(body["updated_at"]),
        # Absent in records written before keys had a namespace.
        integration=body.get("integration"),
        widget=body.get("widget", False),
        refused_refresh=body.get("refused_refresh"),
    )
