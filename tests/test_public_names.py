"""Public classes report the module users import them from, and the API reference shows no
private base class (issue 16, item 4)."""

from __future__ import annotations

import html
import importlib
import os
import pickle
import re
import subprocess
import sys
import traceback
import typing
from pathlib import Path

import pytest

import amo_oauth
from amo_oauth import CallbackRejected, Config, ReauthorizationRequired, web

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("amo_oauth", "amo_oauth.web")


def public_classes() -> list[tuple[str, str, type]]:
    """(module, name, class) for every class a public module exports."""
    found = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, type):
                found.append((module_name, name, value))
    return found


@pytest.mark.parametrize(("module", "name", "cls"), public_classes())
def test_a_public_class_reports_a_path_users_import(module: str, name: str, cls: type) -> None:
    home = cls.__module__
    assert not any(part.startswith("_") for part in home.split(".")), repr(cls)
    assert getattr(importlib.import_module(home), cls.__qualname__) is cls
    typing.get_type_hints(cls)  # its annotations still resolve (they are read in ``home``)


def test_the_reprs_say_amo_oauth() -> None:
    assert repr(CallbackRejected) == "<class 'amo_oauth.CallbackRejected'>"
    assert repr(Config) == "<class 'amo_oauth.Config'>"
    assert repr(amo_oauth.ConnectionStatus) == "<enum 'ConnectionStatus'>"
    assert amo_oauth.ConnectionStatus.__module__ == "amo_oauth"
    assert repr(amo_oauth.Store) == "<class 'amo_oauth.Store'>"
    assert repr(web.Request) == "<class 'amo_oauth.web.Request'>"
    assert repr(web.Handlers) == "<class 'amo_oauth.web.Handlers'>"


def test_a_traceback_names_the_public_class() -> None:
    try:
        raise ReauthorizationRequired("user-1", "disconnected")
    except ReauthorizationRequired:
        last = traceback.format_exc().splitlines()[-1]
    assert last == (
        "amo_oauth.ReauthorizationRequired: connection 'user-1' needs re-authorization: "
        "disconnected"
    )
    only = traceback.format_exception_only(CallbackRejected("bad_state"))
    assert only == ["amo_oauth.CallbackRejected: bad_state\n"]


def test_the_public_classes_still_pickle() -> None:
    config = Config(
        client_id="c",
        client_secret="s",
        redirect_uri="https://app.example.com/cb",
        state_secret="x" * 32,
    )
    assert pickle.loads(pickle.dumps(config)) == config
    rejected = pickle.loads(pickle.dumps(CallbackRejected("bad_state")))
    assert (type(rejected), rejected.reason) == (CallbackRejected, "bad_state")
    request = web.Request("GET", "/x", "a=1")
    assert pickle.loads(pickle.dumps(request)) == request


def _bases_shown(page: str) -> list[str]:
    """Each "Bases:" entry of a built page, as its raw HTML."""
    return [
        base
        for bases in re.findall(r"Bases:(.*?)</p>", page, re.DOTALL)
        for base in re.findall(r"<code>(.*?)</code>", bases, re.DOTALL)
    ]


def test_the_reference_shows_no_private_base_class(tmp_path: Path) -> None:
    """A base is fine when it links to its own entry in the reference (public, documented)
    or comes from another library (httpx.Auth, enum.StrEnum, Exception)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
        check=True,
    )
    page = (site / "reference" / "index.html").read_text(encoding="utf-8")
    bases = _bases_shown(page)
    assert len(bases) > 10  # the scan finds the entries at all
    private = [
        html.unescape(re.sub(r"<[^>]+>", "", base))
        for base in bases
        if "autorefs-internal" not in base and 'title="amo_oauth' in base
    ]
    assert private == []
