"""How many of the library's files one duplicate code runs through: a figure of the layout.

    .venv/bin/python benchmarks/path.py [--list]

The seed's replay (the same code arriving a second time) is answered twice, each under a
profiler that records which of ``src/amo_oauth``'s files execute: once through the service
(``AmoOAuth.handle_callback``, the core answer) and once from a FastAPI route
(``GET /api/amo-crm/callback``) down to an SQLite file. Fewer files means a newcomer opens
fewer to follow the answer. Files run only at import time are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient

import amo_oauth
from amo_oauth import AmoOAuth, AsyncAmoOAuth, Config, SQLiteStore
from amo_oauth.fastapi import router
from amo_oauth.testing import FakeAmoCRM
from amo_oauth.web import Request

SOURCE = Path(amo_oauth.__file__).resolve().parent
USER = "path-user"


@contextmanager
def files_run() -> Iterator[set[str]]:
    """The library's files that execute inside the block, relative to the package."""
    seen: set[str] = set()
    root = str(SOURCE)

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        filename = frame.f_code.co_filename
        if event == "call" and filename.startswith(root):
            seen.add(str(Path(filename).relative_to(SOURCE)))

    # Threads too: the async service and the test client run work in other threads.
    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        yield seen
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type,unused-ignore]  # None unsets it


def config(fake: FakeAmoCRM) -> Config:
    return Config(
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        redirect_uri=fake.redirect_uri,
        state_secret="path-state-secret-0123456789abcdef",
    )


def through_the_service(folder: Path) -> set[str]:
    fake = FakeAmoCRM(rate_limit=None)
    http = httpx.Client(transport=fake.transport())
    oauth = AmoOAuth(config(fake), store=SQLiteStore(folder / "service.db"), http=http)
    begun = oauth.begin(USER)
    query = dict(parse_qsl(urlsplit(fake.authorize(begun.state)).query))
    oauth.handle_callback(query, binding=begun.binding)
    with files_run() as seen:
        oauth.handle_callback(query, binding=begun.binding)
    oauth.close()
    return seen


def through_fastapi(folder: Path) -> set[str]:
    fake = FakeAmoCRM(rate_limit=None)
    http = httpx.AsyncClient(transport=fake.async_transport())
    oauth = AsyncAmoOAuth(config(fake), store=SQLiteStore(folder / "web.db"), http=http)

    def signed_in(request: Request) -> str | None:
        return USER

    app = FastAPI()
    app.include_router(router(oauth, connection_id=signed_in, app_scheme="example"))
    browser = {"base_url": "https://testserver", "follow_redirects": False}
    with TestClient(app, **browser) as client:  # type: ignore[arg-type]
        consent = client.get("/api/amo-crm/connect").headers["location"]
        state = dict(parse_qsl(urlsplit(consent).query))["state"]
        query = urlsplit(fake.authorize(state)).query
        assert client.get(f"/api/amo-crm/callback?{query}").status_code == 200
        cookies = client.cookies
    # A second client, made under the profiler: its portal thread is then a profiled one.
    with files_run() as seen, TestClient(app, cookies=cookies, **browser) as client:  # type: ignore[arg-type]
        assert client.get(f"/api/amo-crm/callback?{query}").status_code == 200
    asyncio.run(oauth.aclose())
    return seen


def report(name: str, measure: Callable[[Path], set[str]], listed: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        seen = measure(Path(folder))
    print(f"{name:<44} {len(seen):3d} files")
    if listed:
        for file in sorted(seen):
            print(f"    {file}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="name the files")
    listed = parser.parse_args().list
    report("a duplicate code, the core answer (service)", through_the_service, listed)
    report("a duplicate code, FastAPI route to SQLite", through_fastapi, listed)


if __name__ == "__main__":
    main()
