"""Metadata mode through the web layer: a code redirect that comes before amoCRM's post to
``secrets_uri`` (issue 22, part 1). The callback page answers 503 with ``Retry-After`` and asks
to reload; the code is not spent, so the reload connects once the post landed. The seed's
mobile app's replay on the legacy route answers 200 with the status."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import flask
import httpx
import pytest

from amo_oauth import AmoOAuth, ButtonMetadata, MemoryStore
from amo_oauth.flask import blueprint
from amo_oauth.testing import FakeAmoCRM, FakeClock
from test_flask_adapter import sender as flask_sender
from test_web import AS_USER, PREFIX, USER, deep_link, post_code, user_from_header

from helpers import config_for

SECRETS_URI = "https://backend.example/api/amo-crm/secrets"
BUTTON = ButtonMetadata("Our product", "Leads in one place")


@pytest.fixture
def site(fake: FakeAmoCRM, clock: FakeClock) -> Iterator[tuple[AmoOAuth, flask.Flask]]:
    config = config_for(
        fake, client_id="site", client_secret=None, secrets_uri=SECRETS_URI, secrets_wait=0.05
    )
    http = httpx.Client(transport=fake.transport())
    oauth = AmoOAuth(config, store=MemoryStore(clock=clock), http=http, clock=clock)
    app = flask.Flask(__name__)
    app.register_blueprint(
        blueprint(oauth, connection_id=user_from_header, app_scheme="app", button=BUTTON)
    )
    yield oauth, app
    oauth.close()


def test_a_redirect_before_the_keys_asks_to_reload_and_the_reload_connects(
    fake: FakeAmoCRM, site: tuple[AmoOAuth, flask.Flask]
) -> None:
    oauth, app = site
    send = flask_sender(app.test_client())  # one browser: it keeps the binding cookie
    page = send("GET", f"{PREFIX}/connect", headers=AS_USER)
    state = re.search(r'data-state="([^"]+)"', page.text)
    assert page.status == 200 and state is not None
    transport = httpx.WSGITransport(app=app)
    install = fake.install_site_button(
        redirect_uri=fake.redirect_uri,
        secrets_uri=SECRETS_URI,
        state=state.group(1),
        transport=transport,
        post_credentials=False,  # amoCRM's post is late
    )
    assert install.redirect_url is not None
    query = urlsplit(install.redirect_url).query

    early = send("GET", f"{PREFIX}/callback", query=query)
    assert (early.status, early.headers["retry-after"]) == (503, "5")
    assert "Finishing the installation" in early.text
    assert deep_link(early)[1]["error"] == "credentials_missing"
    assert fake.token_call_count() == 0  # the code is not spent
    assert not oauth.status(USER).is_connected

    posts = fake.post_site_button_secrets(install, transport=transport)
    assert [post.status for post in posts] == [200]
    reload = send("GET", f"{PREFIX}/callback", query=query)
    assert deep_link(reload)[1]["success"] == "true", reload.text
    assert oauth.status(USER).is_connected
    assert fake.token_call_count("authorization_code", "ok", integration=install.integration) == 1


def test_the_seeds_replay_on_the_legacy_route_in_metadata_mode(
    fake: FakeAmoCRM, site: tuple[AmoOAuth, flask.Flask]
) -> None:
    """The mobile app posts the code it got: refused (never sent) while the code is new, since
    that route exchanges known codes only; 200 with the status once the callback used it."""
    _, app = site
    send = flask_sender(app.test_client())
    page = send("GET", f"{PREFIX}/connect", headers=AS_USER)
    state = re.search(r'data-state="([^"]+)"', page.text)
    assert state is not None
    install = fake.install_site_button(
        redirect_uri=fake.redirect_uri,
        secrets_uri=SECRETS_URI,
        state=state.group(1),
        transport=httpx.WSGITransport(app=app),
    )
    assert install.redirect_url is not None
    query = urlsplit(install.redirect_url).query
    params = dict(parse_qsl(query))
    fields = {key: params[key] for key in ("code", "state", "referer")}
    early = post_code(send, fields)
    assert (early.status, json.loads(early.text)["error"]) == (400, "new_code_refused")
    assert fake.token_call_count() == 0
    assert deep_link(send("GET", f"{PREFIX}/callback", query=query))[1]["success"] == "true"
    replay = post_code(send, fields)
    assert (replay.status, json.loads(replay.text)["connected"]) == (200, True)
    assert fake.token_call_count() == 1
