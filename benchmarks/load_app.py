"""The FastAPI example as ``benchmarks/load.py`` serves it: uvicorn's factory in each worker.

``uvicorn --app-dir benchmarks load_app:create --factory``, with the job in the environment
(``AMO_LOAD_JOB``, JSON written by ``load.py``): the served FakeAmoCRM's URL and domain, the
``Config`` keyword arguments, and the store (``sqlite`` with a file path, or ``postgres`` with a
URL and a table ``load.py`` already migrated). The example reaches amoCRM's hosts through a
loopback transport to the fake, which runs in ``load.py``'s process and counts every token call.
The job holds the fake's client secret and, for Postgres, a password: it is never printed.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
from fastapi import FastAPI

from amo_oauth import AsyncAmoOAuth, Config, SQLiteStore
from amo_oauth._demo import load_example
from amo_oauth.stores import Store
from amo_oauth.testing import AsyncLoopbackTransport

JOB_ENV = "AMO_LOAD_JOB"


def _store(job: dict[str, Any]) -> Store:
    if job["store"] == "sqlite":
        return SQLiteStore(job["path"])
    from amo_oauth.stores.postgres import PostgresStore

    # Each worker process holds its own pool; the default (10) serves 100 concurrent clients.
    return PostgresStore(job["url"], table=job["table"])


def create() -> FastAPI:
    """The example's app on the job's store, reaching the fake over loopback.

    Raises:
        KeyError: ``AMO_LOAD_JOB`` is not set (run by ``load.py``, not by hand).
    """
    job = json.loads(os.environ[JOB_ENV])
    transport = AsyncLoopbackTransport.to(job["fake_url"], domain=job["domain"])
    # One client for the token endpoint and the API, as in the e2e tests; the app closes it.
    http = httpx.AsyncClient(transport=transport)
    oauth = AsyncAmoOAuth(Config(**job["config"]), store=_store(job), http=http)
    example = load_example("fastapi_app")
    app: FastAPI = example.create_app(oauth, api=http)
    return app
