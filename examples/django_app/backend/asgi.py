"""The ASGI entry point: async views over ``AsyncAmoOAuth``.

    cd examples/django_app && ../../.venv/bin/uvicorn backend.asgi:application

With several worker processes, give them one ``AMO_DB`` file (or Postgres/Redis): the store is
what makes a code exchanged once across processes.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

from .amo import aclose, with_lifespan

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.settings")
os.environ.setdefault("AMO_ASYNC", "1")
application = with_lifespan(get_asgi_application(), on_shutdown=aclose)
