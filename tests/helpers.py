"""Helpers shared by the service tests (importable as ``helpers``: tests/ is on sys.path)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from amo_oauth import Config, ConnectionRecord
from amo_oauth._records import record_key
from amo_oauth.testing import FakeAmoCRM

STATE_SECRET = "test-state-secret-0123456789abcdef"


def config_for(fake: FakeAmoCRM, **overrides: object) -> Config:
    """A Config matching the fake's integration."""
    settings: dict[str, object] = {
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "redirect_uri": fake.redirect_uri,
        "state_secret": STATE_SECRET,
        "authorize_url": f"https://{fake.consent_host}/oauth",
        "settle_timeout": 5.0,
    }
    settings.update(overrides)
    return Config(**settings)  # type: ignore[arg-type]


def query_of(url: str) -> dict[str, str]:
    """The query of a redirect URL, one value per name."""
    return dict(parse_qsl(urlsplit(url).query))


def stored(oauth: Any, connection_id: str) -> ConnectionRecord | None:
    """The record ``oauth`` keeps for ``connection_id``, read straight from its store."""
    return oauth.store.load(record_key(oauth.config.client_id, connection_id))
