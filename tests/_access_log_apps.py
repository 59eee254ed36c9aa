"""The apps that tests/test_access_log_redaction.py serves with real servers, each in a process of
its own (so what the server prints is all captured): ``fastapi_app`` for uvicorn, ``flask_app``
for gunicorn, and as a script ``werkzeug PORT`` (``werkzeug.serving.make_server``) or
``runserver PORT`` (Django's ``runserver`` command, sync views). Each mounts amo_oauth's routes
through its adapter with the defaults, so the adapter installs the access-log redaction.

No request reaches amoCRM: the canary state is refused before any exchange.
"""

from __future__ import annotations

import sys
from types import ModuleType

import fastapi
import flask

from amo_oauth import AmoOAuth, AsyncAmoOAuth, Config, MemoryStore


def _config() -> Config:
    return Config(
        client_id="access-log-test-client",
        client_secret="access-log-test-secret-0123456789",
        redirect_uri="http://127.0.0.1/api/amo-crm/callback",
        state_secret="s" * 32,
    )


def fastapi_app() -> fastapi.FastAPI:
    """For ``uvicorn --factory``."""
    from amo_oauth.fastapi import router

    app = fastapi.FastAPI()
    oauth = AsyncAmoOAuth(_config(), store=MemoryStore())
    app.include_router(router(oauth, connection_id=lambda request: None, app_scheme="myapp"))
    return app


def flask_app() -> flask.Flask:
    """For gunicorn's ``_access_log_apps:flask_app()`` and werkzeug."""
    from amo_oauth.flask import blueprint

    app = flask.Flask(__name__)
    oauth = AmoOAuth(_config(), store=MemoryStore())
    app.register_blueprint(blueprint(oauth, connection_id=lambda request: None, app_scheme="myapp"))
    return app


def _werkzeug(port: int) -> None:
    from werkzeug.serving import make_server

    make_server("127.0.0.1", port, flask_app()).serve_forever()


def _runserver(port: int) -> None:
    import django
    from django.conf import settings
    from django.core.management import call_command

    urlconf = ModuleType("access_log_urls")  # Django takes a module object as ROOT_URLCONF
    settings.configure(
        SECRET_KEY="access-log-tests-only-not-a-secret-0123456789abcdef",
        DEBUG=False,
        ALLOWED_HOSTS=["127.0.0.1"],
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
        ROOT_URLCONF=urlconf,
        DATABASES={},
    )  # Django's default logging: django.server prints each request line to stderr
    django.setup()
    from amo_oauth.django import urls

    oauth = AmoOAuth(_config(), store=MemoryStore())
    urlconf.urlpatterns = urls(oauth, connection_id=lambda request: None, app_scheme="myapp")  # type: ignore[attr-defined]
    call_command("runserver", f"127.0.0.1:{port}", use_reloader=False)


if __name__ == "__main__":
    server, port = sys.argv[1], int(sys.argv[2])
    {"werkzeug": _werkzeug, "runserver": _runserver}[server](port)
