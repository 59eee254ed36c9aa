"""Services in the site button's metadata mode whose ``receive_secrets`` and ``site_button``
record what the web layer hands them (tests/test_secrets_route.py), and a FastAPI app over one
for ``uvicorn --factory _secrets_apps:fastapi_app`` (its logs read back by the live test).

The web layer is tested here, not the flows: the stand-ins answer by the ``state`` they are
given (``REFUSALS``), and a post is ``stored`` unless the same three fields came before.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import fastapi
import httpx

from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    ButtonMetadata,
    CallbackRejected,
    Config,
    Connection,
    ConnectionStatus,
    MemoryStore,
)
from amo_oauth._callback import QueryLike
from amo_oauth._results import SecretsResult, SiteButton

ORIGIN = "https://app.example.com"
SECRETS_PATH = "/api/amo-crm/secrets"
GOOD_STATE = "good-state-from-begin"
#: States the stand-in refuses, and why (the service's refusals of a post to secrets_uri).
REFUSALS = {
    "forged-state": "bad_state",
    "expired-state": "expired_state",
    "skewed-state": "clock_skew",
}
BUTTON = ButtonMetadata("Shop sync", "Syncs the shop's orders into amoCRM")
BINDING = "binding-made-for-the-button"
BUTTON_HTML = (
    '<script class="amocrm_oauth" charset="utf-8" data-name="Shop sync" '
    'data-state="state-of-the-button" src="https://www.amocrm.ru/auth/button.min.js"></script>'
)
NAMES = ("client_id", "client_secret", "state")


def metadata_config(origin: str = ORIGIN, **changes: Any) -> Config:
    settings: dict[str, Any] = {
        "client_id": "shop-namespace",
        "client_secret": None,
        "secrets_uri": origin + SECRETS_PATH,
        "redirect_uri": origin + "/api/amo-crm/callback",
        "state_secret": "secrets-route-tests-state-secret-0123",
    }
    return Config(**{**settings, **changes})


def _no_network(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no request may leave the tests: {request.url.host}")


class Recorder:
    """What the service was handed, and the stand-in answers."""

    def __init__(self) -> None:
        self.forms: list[dict[str, object]] = []
        self.buttons: list[dict[str, object]] = []
        self._kept: set[tuple[object, ...]] = set()

    def secrets(self, form: QueryLike) -> SecretsResult:
        pairs: Iterable[tuple[str, object]] = (
            form.items() if isinstance(form, dict) else form  # type: ignore[assignment]
        )
        fields = dict(pairs)
        self.forms.append(fields)
        reason = REFUSALS.get(str(fields.get("state")))
        if reason is not None:
            raise CallbackRejected(reason)
        if not all(isinstance(fields.get(name), str) and fields[name] for name in NAMES):
            raise CallbackRejected("malformed")
        key = tuple(fields[name] for name in NAMES)
        stored = key not in self._kept
        self._kept.add(key)
        return SecretsResult(Connection("user-42", ConnectionStatus.DISCONNECTED), stored)

    def button(self, connection_id: str, **options: object) -> SiteButton:
        self.buttons.append({"connection_id": connection_id, **options})
        expires = datetime(2030, 1, 1, tzinfo=UTC)
        return SiteButton(BUTTON_HTML, "state-of-the-button", expires, BINDING)


class RecordingService(AmoOAuth):
    def __init__(self, config: Config) -> None:
        http = httpx.Client(transport=httpx.MockTransport(_no_network))
        super().__init__(config, store=MemoryStore(), http=http)
        self.recorder = Recorder()

    def receive_secrets(self, form: QueryLike) -> SecretsResult:
        return self.recorder.secrets(form)

    def site_button(self, connection_id: str, **options: Any) -> SiteButton:
        return self.recorder.button(connection_id, **options)


class AsyncRecordingService(AsyncAmoOAuth):
    def __init__(self, config: Config) -> None:
        http = httpx.AsyncClient(transport=httpx.MockTransport(_no_network))
        super().__init__(config, store=MemoryStore(), http=http)
        self.recorder = Recorder()

    async def receive_secrets(self, form: QueryLike) -> SecretsResult:
        return self.recorder.secrets(form)

    async def site_button(self, connection_id: str, **options: Any) -> SiteButton:
        return self.recorder.button(connection_id, **options)


def fastapi_app() -> fastapi.FastAPI:
    """For ``uvicorn --factory``: the router over a recording service, on loopback."""
    from amo_oauth.fastapi import router

    app = fastapi.FastAPI()
    service = AsyncRecordingService(metadata_config("http://127.0.0.1"))
    app.include_router(
        router(service, connection_id=lambda request: None, app_scheme="myapp", button=BUTTON)
    )
    return app
