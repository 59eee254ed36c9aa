"""The example's URLconf: the views of ``views.py`` over the service of ``amo.py``."""

from __future__ import annotations

from django.conf import settings

from . import amo
from .views import routes

if settings.AMO_ASYNC:
    urlpatterns = routes(*amo.awaited(), app_scheme=settings.AMO_APP_SCHEME)
else:
    urlpatterns = routes(*amo.blocking(), app_scheme=settings.AMO_APP_SCHEME)
