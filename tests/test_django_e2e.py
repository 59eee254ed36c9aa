"""The seed's scenario end to end over real HTTP, against the Django example backend.

Every test of ``test_e2e.py`` runs here again, on two stacks of ``examples/django_app``'s views
(``backend.views.routes``) with Django's CSRF middleware on (``django_settings.py``): the ASGI
app under uvicorn (async views over ``AsyncAmoOAuth``) and the WSGI app under werkzeug's
threaded server (sync views over ``AmoOAuth``), each against FakeAmoCRM served on 127.0.0.1.
The seed's test among them: one token call, no 403, the leads listed.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.test import override_settings

import django_settings
from amo_oauth import AmoOAuth, AsyncAmoOAuth, SQLiteStore
from amo_oauth._demo import example_path, listening_socket, serve_asgi
from amo_oauth.testing import FakeAmoCRM
from e2e_support import PREFIX, Stack, _config, _url, serve_wsgi

# pytest collects test_e2e's tests here too, on this module's stacks (``make_stack`` below);
# its fixtures come along.
from test_e2e import (  # noqa: F401
    app,
    browser,
    seen,
    stack,
    test_a_browser_signs_in_by_cookie,
    test_a_forged_state_is_refused,
    test_a_replayed_callback_shows_the_same_page,
    test_a_sign_in_link_signs_nobody_in,
    test_an_account_without_leads,
    test_another_sites_sign_in_form_signs_nobody_in,
    test_deny_shows_try_again,
    test_leads_answer_503_with_retry_after_while_amocrm_pushes_back,
    test_leads_need_a_connection,
    test_the_mobile_client_as_a_script,
    test_the_seeds_scenario,
    test_the_sites_own_sign_in_form_signs_in,
)

django_settings.setup()
sys.path.insert(0, str(example_path("django_app")))  # the example's project package: backend
from backend.amo import with_lifespan  # noqa: E402
from backend.views import routes  # noqa: E402

pytestmark = pytest.mark.timeout(60)


@contextlib.contextmanager
def asgi_stack(db: Path, **fake_options: Any) -> Iterator[Stack]:
    """The example's async views under uvicorn; the app closes its clients at shutdown."""
    sock = listening_socket()
    fake = FakeAmoCRM(redirect_uri=f"{_url(sock)}{PREFIX}/callback", **fake_options)
    with fake.serve() as served:
        http = httpx.AsyncClient(transport=served.async_transport())
        oauth = AsyncAmoOAuth(_config(fake, served), store=SQLiteStore(db), http=http)

        async def close() -> None:  # in uvicorn's event loop, the one that used them
            await oauth.aclose()
            await http.aclose()

        app = with_lifespan(ASGIHandler(), on_shutdown=close)
        urlconf = django_settings.urlconf(*routes(oauth, http))
        with override_settings(ROOT_URLCONF=urlconf), serve_asgi(app, sock) as backend:
            yield Stack("django-asgi", fake, served.url, backend)


@contextlib.contextmanager
def wsgi_stack(db: Path, **fake_options: Any) -> Iterator[Stack]:
    """The example's sync views under werkzeug's threaded WSGI server."""
    sock = listening_socket()
    fake = FakeAmoCRM(redirect_uri=f"{_url(sock)}{PREFIX}/callback", **fake_options)
    with (
        fake.serve() as served,
        httpx.Client(transport=served.transport()) as http,
        AmoOAuth(_config(fake, served), store=SQLiteStore(db), http=http) as oauth,
        override_settings(ROOT_URLCONF=django_settings.urlconf(*routes(oauth, http))),
        serve_wsgi(WSGIHandler(), sock) as backend,
    ):
        yield Stack("django-wsgi", fake, served.url, backend)


STACKS: dict[str, Callable[..., contextlib.AbstractContextManager[Stack]]] = {
    "django-asgi": asgi_stack,
    "django-wsgi": wsgi_stack,
}


@pytest.fixture(params=sorted(STACKS))
def make_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Start Django stacks of the parametrized kind (FakeAmoCRM options as keywords)."""
    numbers = itertools.count()
    with contextlib.ExitStack() as running:

        def make(**fake_options: object) -> Stack:
            db = tmp_path / f"amo_oauth-{next(numbers)}.db"
            return running.enter_context(STACKS[request.param](db, **fake_options))

        yield make


def test_the_stacks_enforce_csrf_like_production(make_stack: Callable[..., Stack]) -> None:
    """What makes the scenarios above mean something: Django's CSRF middleware refuses a POST
    without a token to a view of the app's own, and never reaches amo_oauth's."""
    running = make_stack()
    with httpx.Client(base_url=running.backend) as client:
        refused = client.post(f"{PREFIX}/leads", content=b"x")
        assert (refused.status_code, "CSRF verification failed" in refused.text) == (403, True)
        replay = client.post(f"{PREFIX}/exchange-code", json={"code": "def502"})
        assert (replay.status_code, replay.json()["error"]) == (401, "unauthenticated")
