"""Secrets out of web servers' access logs: a ``logging.Filter`` for the loggers that print
request lines.

amoCRM's redirect back is ``GET /callback?code=...&state=...`` (protocol notes §2): uvicorn,
gunicorn, hypercorn, werkzeug and Django's runserver log that line, and a code nobody has spent
yet can still be exchanged. ``RedactingFilter`` rewrites each record it sees, its arguments
included (formatters such as uvicorn's read them one by one), so that every value of a name in
``REDACTED_NAMES`` reads ``[redacted]``; the rest of the line is kept.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Final, cast

from ..stores._forks import reset_in_child
from ._catalogue import BINDING_COOKIE

__all__ = [
    "ACCESS_LOGGERS",
    "REDACTED",
    "REDACTED_NAMES",
    "RedactingFilter",
    "install_access_log_redaction",
    "redact",
]

#: What a secret's value reads after redaction.
REDACTED: Final = "[redacted]"

#: Names whose values are secret wherever they appear as ``name=value`` (a query, a URL in a
#: ``Referer``, a ``Cookie`` header): the callback's code and state, a mobile ticket, the
#: uninstall hook's signature (a replayed hook spends API calls), tokens and the client secret
#: (should a caller ever put them in a URL), and the browser-binding cookie.
REDACTED_NAMES: Final = (
    "access_token",
    "client_secret",
    "code",
    "refresh_token",
    "signature",
    "state",
    "ticket",
    BINDING_COOKIE,
    f"__Host-{BINDING_COOKIE}",
)

#: The loggers that print request lines: uvicorn's access log, its error log and its ASGI
#: message log (both at ``trace``), gunicorn's and hypercorn's access and error logs,
#: werkzeug's (Flask's development server) and Django's runserver (``django.server``).
ACCESS_LOGGERS: Final = (
    "django.server",
    "granian.access",
    "gunicorn.access",
    "gunicorn.error",
    "hypercorn.access",
    "hypercorn.error",
    "uvicorn.access",
    "uvicorn.asgi",
    "uvicorn.error",
    "werkzeug",
)

#: What a record reads when even its redaction failed: the line is kept, its content is not.
WITHHELD: Final = "[amo_oauth: a log line that could not be redacted was withheld]"

_KEY_CHARACTERS = "A-Za-z0-9_.~%-"  # a name's own characters: none of them ends the previous one
_MAX_DEPTH = 4  # nested arguments (uvicorn's ASGI scope is a dict in a tuple)
_SECRET_KEYS = frozenset(name.lower() for name in REDACTED_NAMES)
_NUMBERS = (int, float)  # a status, a size, a duration: nothing to redact
_TRACEBACKS = logging.Formatter()


class _InstallLock:
    """The lock that installs the filters once per logger; a forked child gets a fresh one
    (a thread of the parent may have held it at the fork, and would never release it there)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        reset_in_child(self)

    def after_fork(self) -> None:
        self.lock = threading.Lock()


_INSTALLING = _InstallLock()


def _spelled(name: str) -> str:
    """``name`` as a pattern that also matches any of its characters percent-encoded
    (``%63ode``: servers log the raw request line, and a query parser decodes names)."""
    return "".join(f"(?:{re.escape(char)}|%{ord(char):02x})" for char in name)


# Each ``name=value`` of a secret name: at the start, after any character that cannot be part
# of a name (``?``, ``&``, ``;``, a space, a quote), or after an encoded ``?``, ``&``, ``;`` or
# space (a URL carried inside another parameter). The value runs to the next ``&``, ``;`` or
# whitespace: a quote or ``#`` in it is redacted along with it rather than ending it early.
_NAMES = "|".join(_spelled(name) for name in sorted(REDACTED_NAMES, key=len, reverse=True))
_SECRET = re.compile(
    rf"(?P<lead>^|[^{_KEY_CHARACTERS}]|%(?:3f|26|3b|20))(?P<name>{_NAMES})"
    r"(?P<equals>=|%3d)(?P<value>[^&;\s]+)",
    re.IGNORECASE,
)
_REPLACEMENT = rf"\g<lead>\g<name>\g<equals>{REDACTED}"


#: A bearer credential written as text (an ``Authorization: Bearer <token>`` header logged as a
#: line, a trace record's headers): RFC 6750 §2.1's b64token after the scheme, which is
#: case-insensitive. At least 16 characters, so prose ("a bearer link") is left alone; an
#: amoCRM access token is a JWT of hundreds.
_BEARER = re.compile(r"(?P<scheme>\bbearer)(?P<gap>\s+|%20|\+)[A-Za-z0-9\-._~+/]{16,}=*", re.I)


def _without_bearer(text: str) -> str:
    """``text`` with every bearer credential's value ``[redacted]``; the same object when it
    holds none."""
    if "bearer" not in text.lower():
        return text
    redacted, found = _BEARER.subn(rf"\g<scheme>\g<gap>{REDACTED}", text)
    return redacted if found else text


def redact(text: str) -> str:
    """``text`` with the value of every ``name=value`` whose name is in ``REDACTED_NAMES``
    replaced by ``[redacted]``, and every ``Bearer <token>``'s token: names in any case and
    percent-encoded, ``&`` and ``;`` separators, repeated names, bare queries and whole URLs.
    Idempotent; never raises on a ``str``.

    Args:
        text: a request line, a URL, a query or a header value.

    Returns:
        The text redacted; the same object when it holds no secret.
    """
    text = _without_bearer(text)  # ``Bearer <token>``: a secret with no name=value
    if "=" not in text and "%3" not in text:
        return text  # the cheap common case: nothing that could be a value
    if "%" not in text:  # no name can be encoded: skip the regex unless one appears plainly
        lowered = text.lower()
        if not any(name in lowered for name in _SECRET_KEYS):
            return text
    redacted, found = _SECRET.subn(_REPLACEMENT, text)
    return redacted if found else text


class RedactingFilter(logging.Filter):
    """Redacts each record of the logger it is added to (see ``redact``), and passes it on.

    The message, each argument (strings, bytes, and inside tuples, lists and dicts: a dict
    subclass such as gunicorn's or hypercorn's access-log atoms keeps its class, and a string
    value under a secret name is redacted whole), any other argument whose text shows a secret
    (replaced by that text, redacted), the traceback and the stack. A template is never
    redacted apart from its arguments: when a secret shows only once they are put in (an
    app's ``logger.info("code=%s", code)``), the record becomes its formatted line, redacted,
    without arguments. It never drops a record and never raises: a record it cannot redact is
    passed on as a note that it was withheld, plus its message (or its template) redacted.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; always True (the line is kept)."""
        try:
            if record.args:
                _redact_templated(record)
            else:
                record.msg = _redacted(record.msg, 0)
        except Exception:
            _withhold(record)
        try:
            _redact_traceback(record)
        except Exception:
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def install_access_log_redaction(logger_names: Iterable[str] = ACCESS_LOGGERS) -> None:
    """Add a ``RedactingFilter`` to each named logger that has none yet (idempotent: a second
    call adds nothing). The FastAPI, Flask and Django adapters call it unless told not to
    (``redact_access_logs=False``).

    A logger's filters see only the records logged on that logger itself, which is how the
    servers in ``ACCESS_LOGGERS`` log their lines; ``logging.config.dictConfig`` keeps them.

    Args:
        logger_names: the loggers, by name (default: ``ACCESS_LOGGERS``).
    """
    with _INSTALLING.lock:
        for name in logger_names:
            logger = logging.getLogger(name)
            if not any(isinstance(present, RedactingFilter) for present in logger.filters):
                logger.addFilter(RedactingFilter())


def _redact_templated(record: logging.LogRecord) -> None:
    """Redact a record whose message is a template and its arguments.

    The arguments are redacted one by one, keeping their shape (a tuple stays a tuple, a
    mapping a mapping of its own class): uvicorn's access formatter reads them as a 5-tuple,
    gunicorn's and hypercorn's as atoms. The template is never rewritten on its own: ``code=%s``
    made ``code=[redacted]`` would leave an argument over, and logging would drop the line and
    print the raw arguments to stderr. When a secret still shows once the line is formatted
    (the template names it, an argument holds it: an app's own ``"code=%s", code``), the
    record becomes its formatted line, redacted, with no arguments.
    """
    template = str(record.msg)
    args = cast("tuple[object, ...] | Mapping[str, object]", _redacted(record.args, 0))
    line = template % args  # what getMessage() would show; raises as it would
    if redact(template) == template and not _shows_secret(line):
        record.args = args
    else:
        record.msg, record.args = redact(line), ()


def _shows_secret(text: str) -> bool:
    """Whether a secret name in ``text`` has a value other than one already redacted (a
    redacted value may be followed by what closed it: a quote of a repr, a brace)."""
    return any(not found["value"].startswith(REDACTED) for found in _SECRET.finditer(text))


def _redacted(value: object, depth: int) -> object:
    """``value`` redacted, of the same type where that type can hold the redaction; ``value``
    itself when nothing in it changed (so most records allocate nothing)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        text = value.decode("latin-1")  # decoding latin-1 never fails, and round-trips
        red = redact(text)
        return value if red is text else red.encode("latin-1")
    if value is None or isinstance(value, _NUMBERS):
        return value
    if depth < _MAX_DEPTH:
        if isinstance(value, Mapping):
            return _redacted_mapping(value, depth)
        if type(value) is tuple or type(value) is list:  # not a named tuple: it has fields
            new = [_redacted(item, depth + 1) for item in value]
            if all(a is b for a, b in zip(new, value, strict=True)):
                return value
            return tuple(new) if isinstance(value, tuple) else new
    text = str(value)  # what a "%s" would show; a "%r" shows no more of a URL
    red = redact(text)
    return value if red is text else red


def _redacted_mapping(mapping: Mapping[object, object], depth: int) -> object:
    changes: dict[object, object] = {}
    for key, value in mapping.items():
        if isinstance(key, str) and key.lower() in _SECRET_KEYS and isinstance(value, str | bytes):
            new: object = REDACTED if value else value
        else:
            new = _redacted(value, depth + 1)
        if new is not value:
            changes[key] = new
    if not changes:
        return mapping
    if isinstance(mapping, dict):
        # copy.copy keeps a dict subclass's class without calling its __init__ (gunicorn's
        # SafeAtoms answers "-" for a missing atom; a plain dict would raise KeyError).
        copied = copy.copy(mapping)
        for key, value in changes.items():
            dict.__setitem__(copied, key, value)
        return copied
    return {**mapping, **changes}


def _redact_traceback(record: logging.LogRecord) -> None:
    # A formatter renders exc_info into exc_text only when exc_text is empty: render it here,
    # redacted, so an exception's message (a URL in it) is redacted too.
    if record.exc_info and not record.exc_text:
        record.exc_text = _TRACEBACKS.formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def _withhold(record: logging.LogRecord) -> None:
    try:
        text = f"{WITHHELD} {redact(record.getMessage())}"
    except Exception:
        try:  # the template alone, redacted: which line it was, without its arguments
            text = f"{WITHHELD} {redact(str(record.msg))}"
        except Exception:
            text = WITHHELD
    record.msg, record.args = text, ()
