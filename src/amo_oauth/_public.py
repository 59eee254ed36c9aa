"""Public classes report the module users import them from.

A class defined in a private module (``amo_oauth._errors``) but exported by ``amo_oauth`` would
show as ``amo_oauth._errors.CallbackRejected`` in ``repr(cls)`` and in a traceback's last line,
a path nobody should import. ``present_as`` sets ``__module__`` to the public module instead.

Two things read ``__module__`` and must keep working: ``pickle`` (it finds the class again as
``amo_oauth.CallbackRejected``, which is exported), and ``typing.get_type_hints`` (it evaluates
string annotations in the namespace of ``__module__``, where names such as ``datetime`` are not
defined). So each class's own annotations are resolved in its home module first.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterable, Mapping

__all__ = ["present_as"]


def _private(module: str) -> bool:
    """``amo_oauth._errors`` or ``amo_oauth.stores._protocol``: a private path segment."""
    return any(part.startswith("_") for part in module.split("."))


def _resolve_annotations(cls: type) -> None:
    """Replace ``cls``'s own string annotations by the objects they name, evaluated in the
    module that defines it; left as they are when one cannot be evaluated there."""
    own = inspect.get_annotations(cls)  # its own, as written
    if not own:
        return
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:
        return
    cls.__annotations__ = {name: hints.get(name, value) for name, value in own.items()}


def present_as(module: str, namespace: Mapping[str, object], names: Iterable[str]) -> None:
    """Report each class among ``names`` of ``namespace`` as ``{module}.{name}``.

    Only classes whose home module is private are changed: a class from a public module
    (``amo_oauth.stores.sqlite``) already reports a path users may import.

    Args:
        module: the public module, e.g. ``"amo_oauth"``.
        namespace: that module's ``globals()``.
        names: its ``__all__``.
    """
    for name in names:
        value = namespace.get(name)
        if not isinstance(value, type) or not value.__module__.startswith("amo_oauth."):
            continue
        if value.__name__ == name and _private(value.__module__):
            _resolve_annotations(value)
            value.__module__ = module
