"""The example backend's Django settings.

Django's CSRF middleware stays on, with ``CommonMiddleware`` and ``APPEND_SLASH``: amo_oauth's
views are exempt from the first on their own (they check ``Origin`` / ``Sec-Fetch-Site``, and
exchange no code they have not seen) and end in no slash, so the second never redirects the old
app's POST. amoCRM's settings are read from ``AMO_*`` environment variables by ``amo.py``.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

# A fresh key per run unless given: the toy sign-in keeps nothing signed across restarts.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50)
DEBUG = False
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")
INSTALLED_APPS: list[str] = []
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
APPEND_SLASH = True
ROOT_URLCONF = "backend.urls"
WSGI_APPLICATION = "backend.wsgi.application"
DATABASES: dict[str, Any] = {}  # the toy sign-in keeps its sessions in memory
USE_TZ = True
# The access logs (runserver's "django.server", uvicorn's) stay on: amo_oauth.django.urls()
# installs a filter that prints the callback's code and state, and a ticket, as [redacted].

#: AsyncAmoOAuth and async views (``asgi.py`` sets AMO_ASYNC=1), else AmoOAuth and sync views.
AMO_ASYNC = os.environ.get("AMO_ASYNC") == "1"
#: The mobile app's URL scheme, for the "Return to App" deep link.
AMO_APP_SCHEME = os.environ.get("AMO_APP_SCHEME", "foryoure")
