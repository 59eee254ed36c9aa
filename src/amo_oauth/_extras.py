"""What an optional import needs, said where it fails: ``pip install 'amo_oauth[redis]'``
rather than a bare ``No module named 'redis'``, which names a module but not the extra that
brings it (nor, for ``starlette`` or ``psycopg_pool``, anything the user ever asked for)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["needs_extra"]


@contextlib.contextmanager
def needs_extra(extra: str, what: str) -> Iterator[None]:
    """Around the imports ``what`` needs from ``extra``: a missing module raises
    ``ModuleNotFoundError`` (still an ``ImportError``) naming the extra and how to install it.
    A missing module of this package is a broken install, not a missing extra: left alone."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] == "amo_oauth":
            raise
        raise ModuleNotFoundError(
            f"{what} needs the {extra} extra: pip install 'amo_oauth[{extra}]' "
            f"(no module named {exc.name!r})",
            name=exc.name,
        ) from exc
