"""Django's settings for the tests, configured once per test process by ``setup()``.

Django's CSRF middleware is on (the seed's 403 came from it), and so are ``CommonMiddleware``
and ``APPEND_SLASH`` (a slash redirect would turn the old app's POST into a GET). Each test
points ``ROOT_URLCONF`` at its own patterns with ``override_settings``.

No database: sessions live in signed cookies, and ``KnownUsers`` answers for the signed-in
user, so ``request.user`` and ``request.auser()`` work without a user table.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import attrs
import django
from django.conf import settings

SECRET_KEY = "django-tests-only-not-a-secret-0123456789abcdefghijklmnop"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1"]
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.sessions"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
APPEND_SLASH = True
ROOT_URLCONF = "django_settings"  # no routes here: each test overrides it
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
AUTHENTICATION_BACKENDS = ["django_settings.KnownUsers"]
DATABASES: dict[str, Any] = {}
USE_TZ = True
LOGGING_CONFIG = None  # leave the test process's logging alone

urlpatterns: list[Any] = []


@attrs.frozen
class KnownUser:
    """A signed-in user, as far as amo_oauth looks: a ``pk`` and ``is_authenticated``."""

    pk: int
    is_authenticated: bool = True


class KnownUsers:
    """An authentication backend without a table: every user id in a session is a user."""

    def get_user(self, user_id: Any) -> KnownUser:
        return KnownUser(int(user_id))

    async def aget_user(self, user_id: Any) -> KnownUser:
        return self.get_user(user_id)


def setup() -> None:
    """Configure Django from this module's settings, once per process."""
    if not settings.configured:
        settings.configure(**{name: value for name, value in globals().items() if name.isupper()})
        django.setup()


def urlconf(*patterns: Any) -> ModuleType:
    """A URLconf holding ``patterns``, for ``override_settings(ROOT_URLCONF=...)`` (a module:
    Django caches resolvers by URLconf, so it must be hashable)."""
    module = ModuleType("django_test_urls")
    module.urlpatterns = list(patterns)  # type: ignore[attr-defined]
    return module
