"""The examples' own session cookie, read exactly (issue 20 #7, a sibling of #1).

A page on a sibling subdomain can plant ``session=<its own>; Domain=<the app's domain>`` or
``\\xa0session=...``: the browser sends it beside the user's own. The examples once read their
cookie with the framework's parser (Starlette's and Django's keep the last of a repeated name
and strip U+00A0 around it; Werkzeug's keeps the first), so the planted session replaced the
user's and her consent connected the planter (login CSRF). Now each example reads it with
``web.read_cookie`` from the raw headers: a name sent twice, or under a near name, is signed
out. Here: the helper on raw bytes, each example over a real server (raw ``Cookie`` headers, as
sent), and the cookie's attributes over https. ``test_browser_sessions.py`` proves it in
Chromium.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import flask
import httpx
import pytest
from django.test import RequestFactory
from fastapi.testclient import TestClient

from amo_oauth import AmoOAuth, AsyncAmoOAuth, Config, MemoryStore, web
from amo_oauth._demo import example_path
from e2e_support import FASTAPI, FLASK, PREFIX, STACKS, Stack
from test_django_e2e import STACKS as DJANGO_STACKS

from helpers import STATE_SECRET

sys.path.insert(0, str(example_path("django_app")))  # the example's project package: backend
from backend.views import routes

#: Every byte ``str.strip()`` removes besides SP and HTAB: what a framework's parser strips
#: around a name, and a browser keeps in one (0xA0 and 0x85 among them).
PYTHON_BLANKS = [bytes([c]) for c in range(256) if chr(c).isspace() and c not in (0x20, 0x09)]


def read(*cookie_headers: bytes, name: str = "session") -> str | None:
    return web.read_cookie([(b"cookie", value) for value in cookie_headers], name)


# -- the helper, on raw header bytes ---------------------------------------------------------


def test_the_exact_name_is_read_among_others() -> None:
    assert read(b"session=v") == "v"
    assert read(b"a=1; session=v; b=2") == "v"
    assert read(b"a=1", b"session=v") == "v"
    assert read(b" \tsession\t = v ") == "v"  # RFC 6265 §5.2 trims SP and HTAB only
    assert web.read_cookie({"Cookie": "session=v"}, "session") == "v"  # a mapping too
    assert read(b"a=1") is None
    assert read(b"Session=v") is None  # names are case-sensitive
    assert read(b"session=v", name="__Host-session") is None  # another name


def test_a_name_sent_twice_reads_none() -> None:
    assert read(b"session=v; session=m") is None
    assert read(b"session=v; session=v") is None  # even the same value: which was set is unsure
    assert read(b"session=v", b"session=m") is None  # in two Cookie headers


@pytest.mark.parametrize("byte", PYTHON_BLANKS, ids=lambda byte: byte.hex())
def test_a_near_name_reads_none(byte: bytes) -> None:
    assert read(b"session=v; " + byte + b"session=m") is None
    assert read(byte + b"session=m; session=v") is None
    assert read(b"session" + byte + b"=m", b"session=v") is None
    assert read(byte + b"session=m") is None  # alone: not the app's cookie either


# -- each example over a real server: raw Cookie headers, as sent ------------------------------

ALL_STACKS: dict[str, Callable[..., Any]] = {**STACKS, **DJANGO_STACKS}


@pytest.fixture(params=sorted(ALL_STACKS))
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    with ALL_STACKS[request.param](tmp_path / "amo_oauth.db") as running:
        yield running


def signed_in_as(stack: Stack, *cookie_headers: bytes) -> tuple[int, int]:
    """What the example's own view (``/leads``) and amo_oauth's route (``/status``) answer
    to a request carrying these raw ``Cookie`` headers: 409/200 signed in, 401/401 not."""
    headers = [(b"cookie", value) for value in cookie_headers]
    with httpx.Client(base_url=stack.backend) as client:  # a fresh jar: only these headers
        leads = client.get(f"{PREFIX}/leads", headers=headers).status_code
        status = client.get(f"{PREFIX}/status", headers=headers).status_code
    return leads, status


def token_of(stack: Stack, user: str) -> bytes:
    with httpx.Client(base_url=stack.backend) as client:
        answer = client.post("/login", json={"user": user})
    assert answer.status_code == 200
    return str(answer.json()["token"]).encode()


SIGNED_IN, SIGNED_OUT = (409, 200), (401, 401)


def test_a_session_sent_twice_or_under_a_near_name_is_signed_out(stack: Stack) -> None:
    ann, mallory = token_of(stack, "ann"), token_of(stack, "mallory")
    own = b"session=" + ann
    assert signed_in_as(stack, own) == SIGNED_IN  # the control: her cookie alone signs her in
    assert signed_in_as(stack, b"a=1; " + own + b"; b=2") == SIGNED_IN
    assert signed_in_as(stack, b"session=" + mallory) == SIGNED_IN  # Mallory's own browser
    for planted in (b"session=", b"\xa0session=", b"\x85session=", b"session\xa0="):
        for sent in (
            [own + b"; " + planted + mallory],  # the planted one last (Starlette, Django)
            [planted + mallory + b"; " + own],  # or first (Werkzeug, a longer Path)
            [own, planted + mallory],  # in a Cookie header of its own
        ):
            assert signed_in_as(stack, *sent) == SIGNED_OUT, sent


# -- over https: __Host-session, Secure, HttpOnly, SameSite=Lax, Path=/, no Domain -------------

HTTPS_CONFIG = Config(
    client_id="client-id",
    client_secret="client-secret-" + "x" * 20,
    redirect_uri="https://app.test/api/amo-crm/callback",
    state_secret=STATE_SECRET,
)


def fastapi_sign_in(cookie: str | None) -> tuple[str, int]:
    app = FASTAPI.create_app(AsyncAmoOAuth(HTTPS_CONFIG, store=MemoryStore()))
    with TestClient(app, base_url="https://app.test") as client:
        answer = client.post("/login", json={"user": "ann"})
        client.cookies.clear()
        sent = cookie.replace("%s", answer.json()["token"]).encode("latin-1") if cookie else None
        headers = {"cookie": sent} if sent else {}
        leads = client.get(f"{PREFIX}/leads", headers=headers).status_code
    return answer.headers["set-cookie"], leads


def flask_sign_in(cookie: str | None) -> tuple[str, int]:
    with AmoOAuth(HTTPS_CONFIG, store=MemoryStore()) as oauth:
        app: flask.Flask = FLASK.create_app(oauth)
        client = app.test_client(use_cookies=False)
        answer = client.post("/login", json={"user": "ann"}, base_url="https://app.test")
        token = answer.get_json()["token"]
        headers = {"cookie": cookie.replace("%s", token)} if cookie else {}
        leads = client.get(f"{PREFIX}/leads", headers=headers, base_url="https://app.test")
        return answer.headers["set-cookie"], leads.status_code


def django_sign_in(cookie: str | None) -> tuple[str, int]:
    with AmoOAuth(HTTPS_CONFIG, store=MemoryStore()) as oauth, httpx.Client() as api:
        patterns = routes(oauth, api)
        login, leads_view = patterns[0].callback, patterns[1].callback  # type: ignore[union-attr]
        factory = RequestFactory()
        post = factory.post("/login", {"user": "ann"}, "application/json", secure=True)
        answer = login(post)
        token = json.loads(answer.content)["token"]
        extra = {"HTTP_COOKIE": cookie.replace("%s", token)} if cookie else {}
        leads = leads_view(factory.get(f"{PREFIX}/leads", secure=True, **extra))
        return answer.cookies.output(header="").strip(), leads.status_code


SIGN_INS = {"fastapi": fastapi_sign_in, "flask": flask_sign_in, "django": django_sign_in}


@pytest.mark.parametrize("kind", sorted(SIGN_INS))
def test_over_https_the_session_cookie_is_host_prefixed_and_read_exactly(kind: str) -> None:
    set_cookie, _ = SIGN_INS[kind](None)
    (morsel,) = SimpleCookie(set_cookie).values()
    assert morsel.key == "__Host-session"
    attributes = {key.lower() for key in set_cookie.split(";")[1:]}
    assert {"secure", "httponly", "path=/", "samesite=lax"} <= {a.strip() for a in attributes}
    assert not any(a.strip().startswith("domain") for a in attributes)
    assert SIGN_INS[kind]("__Host-session=%s")[1] == 409  # signed in, not connected
    assert SIGN_INS[kind]("session=%s")[1] == 401  # the plain name is another cookie
    assert SIGN_INS[kind]("__Host-session=%s; __Host-session=%s")[1] == 401
    # A near name (VT: Starlette's TestClient re-encodes 0xA0 as UTF-8; real servers get 0xA0
    # and 0x85 above, and Chromium's in test_browser_sessions.py).
    assert SIGN_INS[kind]("__Host-session=%s; \x0b__Host-session=x")[1] == 401
