"""What is wrong with a store URL the driver refused, said without the URL.

libpq's and redis-py's parse errors quote the string they refused, password and all. The stores
raise their own ``ValueError`` instead, outside the ``except`` block that caught the driver's
(so neither ``__cause__`` nor ``__context__`` holds it), with the sentence from here: which part
of the URL is wrong (the scheme, the user name or password, the host, the database, the
parameters) and how to write it, never its value. Pure text work: no driver imported.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final
from urllib.parse import SplitResult, urlsplit

__all__ = ["postgres_fault", "redis_fault"]

_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_POSTGRES_FORM: Final = "postgresql://user:password@host:5432/db or key=value pairs"


def postgres_fault(conninfo: str, libpq_says: str) -> str:
    """The sentence for a conninfo that libpq's parser refused with ``libpq_says``.

    ``libpq_says`` is only matched against, never repeated (it quotes the conninfo)."""
    if 'missing "=" after' in libpq_says and "://" in conninfo:
        return (
            "conninfo is not a valid PostgreSQL URL: its scheme must be postgresql:// or "
            "postgres://, in lowercase"
        )
    if "IPv6 host address" in libpq_says:
        return "conninfo is not a valid PostgreSQL URL: its host has a '[' without its ']'"
    if "unexpected spaces" in libpq_says:
        where = _part_with(conninfo, lambda text: " " in text)
        return f"conninfo is not a valid PostgreSQL URL: a space in {where}: write it as %20"
    if "percent-encoded" in libpq_says:
        where = _part_with(conninfo, lambda text: _BAD_ESCAPE.search(text) is not None)
        return (
            f"conninfo is not a valid PostgreSQL URL: a '%' in {where} that is not an escape "
            "(two hex digits); write '%' itself as %25"
        )
    return f"conninfo is not a valid PostgreSQL connection string ({_POSTGRES_FORM})"


def redis_fault(url: str) -> str:
    """The sentence for a URL redis-py's parser refused."""
    rest = url.split("://", 1)[-1]
    userinfo = rest.rpartition("@")[0]
    if userinfo and any(char in userinfo for char in "#?/"):
        # urlsplit ends the host at '#', '?' or '/': the rest of the password became the port.
        return (
            "not a Redis URL: percent-encode '#', '?' and '/' in its user name and password "
            "(e.g. '#' as %23)"
        )
    return (
        "not a Redis URL: expected redis://[[user]:password@]host[:port][/db],"
        " rediss://... or unix://path[?db=N]"
    )


def _part_with(conninfo: str, test: Callable[[str], bool]) -> str:
    """The name of the first part of a URL that passes ``test``; "the connection string"
    when it is not a URL or no part does."""
    if "://" not in conninfo:
        return "the connection string"
    parts = _split(conninfo)
    if parts is None:
        return "the URL"
    userinfo, _, hostport = parts.netloc.rpartition("@")
    named = (
        ("the user name or password", userinfo),
        ("the host or port", hostport),
        ("the database name", parts.path),
        ("the parameters", parts.query + parts.fragment),
    )
    return next((name for name, text in named if test(text)), "the URL")


def _split(url: str) -> SplitResult | None:
    try:
        return urlsplit(url)
    except ValueError:
        return None
