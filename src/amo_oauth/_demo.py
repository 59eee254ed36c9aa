"""``amo-oauth demo``: the seed's scenario, end to end, against FakeAmoCRM.

A user connects amoCRM from the mobile app. The backend exchanges the code on amoCRM's redirect
and renders "Return to App"; the old app version then posts the same code to the legacy
exchange-code endpoint, which is what broke the seed's app with a 403. Here that second call is
a no-op that reports "connected", the new app version just reads the status, and the leads load.
Everything runs on the embedded defaults: an SQLite file, in a temporary directory.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx

from ._config import Config
from ._service import AmoOAuth
from .stores import SQLiteStore
from .testing import FakeAmoCRM

__all__ = ["run_demo"]

USER = "user-42"


def _say(text: str) -> None:
    print(text, flush=True)


class _Transitions(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _say(f"    state: {record.getMessage()}")


def _config(fake: FakeAmoCRM) -> Config:
    return Config(
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        redirect_uri=fake.redirect_uri,
        state_secret="demo-state-secret-of-at-least-32-bytes!",
        authorize_url=f"https://{fake.consent_host}/oauth",
    )


def run_demo(*, serve: bool = False) -> int:
    """Run the scenario, print what happens; 0 when it ends as the seed expects."""
    fake = FakeAmoCRM()
    handler = _Transitions()
    logger = logging.getLogger("amo_oauth")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return _scenario(fake, Path(tmp) / "amo_oauth.db")
    finally:
        logger.removeHandler(handler)


def _scenario(fake: FakeAmoCRM, db: Path) -> int:
    http = httpx.Client(transport=fake.transport())
    with AmoOAuth(_config(fake), store=SQLiteStore(db), http=http) as oauth:
        _say("1. The app taps 'Connect amoCRM': the backend sends the user to amoCRM.")
        request = oauth.begin(USER)
        _say(f"    consent page: {urlsplit(request.url).netloc}{urlsplit(request.url).path}")
        _say("2. The user taps 'Allow': amoCRM redirects the browser to the backend.")
        redirect = fake.authorize(request.state)
        query = dict(parse_qsl(urlsplit(redirect).query))
        result = oauth.handle_callback(query)
        _say(f"    callback: {result.outcome.value}")
        _say("3. 'Return to App' opens the deep link (it carries no code).")
        _say("4. The OLD app still posts the same code to exchange-code:")
        again = oauth.exchange_code(USER, query["code"])
        _say(f"    exchange-code: {again.outcome.value} (duplicate={again.duplicate}), no 403")
        _say("5. The NEW app reads the status:")
        status = oauth.status(USER)
        _say(
            f"    status: {status.state.value}, account {status.account.subdomain if status.account else '-'}"
        )
        _say("6. The leads load through oauth.auth():")
        api = httpx.Client(transport=fake.transport(), auth=oauth.auth(USER))
        leads = api.get(f"https://{fake.account_host}/api/v4/leads").json()["_embedded"]["leads"]
        for lead in leads:
            _say(f"    - {lead['name']}")
        calls = sum(fake.token_calls.values())
        _say(f"Token-endpoint calls: {calls} (one code, exchanged once).")
    ok = status.is_connected and again.duplicate and calls == 1 and bool(leads)
    _say("Result: connected, leads listed, no 403." if ok else "Result: NOT as expected.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run_demo())
