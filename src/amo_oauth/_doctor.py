"""``amo-oauth doctor``: what an operator gets wrong, found and explained.

Each finding is data (``Finding``: an id from ``FINDINGS``, a level, a sentence, what to do),
so the command prints it as a table, as lines or as JSON, and a test provokes each id. The
checks reuse the library's own: the store's ``check()`` (reachable, migrated, a Redis memory
policy that may evict, ``stores/_redis_memory``), ``stores.clock_skew`` against
``MAX_CLOCK_SKEW``, ``Config``'s checks and ``check_app_scheme``; the doctor adds what they
leave to the operator: file modes, a secret's strength, the URLs' paths and origins, and
whether the store's encryption opens a sample of its records.

No finding holds a secret: messages name settings and files, never their values.
"""

from __future__ import annotations

import enum
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final, TextIO
from urllib.parse import urlsplit

import attrs

from ._config import Config
from ._errors import StoreError, UndecryptableRecord, UnreadableRecord
from ._rotation import holds_secrets, readable_page
from ._state_token import MAX_CLOCK_SKEW
from .stores._protocol import Store, StoreCheck
from .stores._skew import clock_skew
from .stores.sqlite import SQLiteStore

__all__ = [
    "FINDINGS",
    "Finding",
    "Level",
    "Report",
    "examine",
    "examine_settings",
    "examine_store",
    "file_modes",
    "weakness",
]


class Level(enum.Enum):
    """How bad a finding is: an error makes the command exit 1; a warning does not."""

    ERROR = "error"
    WARNING = "warning"


#: Every finding the doctor can report: its level and what to do (docs/operations.md lists
#: them, and tests/test_doctor.py provokes each).
FINDINGS: Final[Mapping[str, tuple[Level, str]]] = {
    "store_unopened": (Level.ERROR, "fix the store URL (--store or AMO_OAUTH_STORE)"),
    "store_unreachable": (Level.ERROR, "start the store, or fix its address and credentials"),
    "store_not_a_database": (
        Level.ERROR,
        "point --store (or AMO_OAUTH_STORE) at the store's database file; amo-oauth migrate"
        " makes a new store at a path where no file is",
    ),
    "store_not_migrated": (Level.ERROR, "run amo-oauth migrate with the same store"),
    "store_may_lose_keys": (
        Level.ERROR,
        "set the Redis server's maxmemory-policy to noeviction (or maxmemory 0)",
    ),
    "store_warning": (
        Level.WARNING,
        "make sure the Redis server keeps every key (docs/stores.md, Redis memory policy)",
    ),
    "sqlite_file_mode": (
        Level.ERROR,
        "chmod 600 the file (the store makes its files 0600; a copy or a restore may not)",
    ),
    "sqlite_directory_writable": (
        Level.ERROR,
        "chmod go-w the directory: others could replace the database or its -wal file",
    ),
    "sqlite_directory_readable": (
        Level.WARNING,
        "chmod go-rx the directory (or keep the database in one only the app can list)",
    ),
    "clock_skew": (
        Level.ERROR,
        "synchronise this machine's and the store's clocks (NTP): states and mobile tickets"
        " signed on one machine are refused on the other",
    ),
    "clock_drift": (
        Level.WARNING,
        "synchronise the clocks (NTP) before the drift reaches MAX_CLOCK_SKEW",
    ),
    "encryption_keys_invalid": (
        Level.ERROR,
        "set AMO_OAUTH_KEYS to Fernet keys, comma-separated, newest first (the crypto extra)",
    ),
    "encryption_keys_missing": (
        Level.ERROR,
        "set AMO_OAUTH_KEYS to the keys the records were sealed with",
    ),
    "encryption_key_mismatch": (
        Level.ERROR,
        "add the key the records were sealed with to AMO_OAUTH_KEYS (after the newest),"
        " then run amo-oauth rotate-key",
    ),
    "encryption_records_plain": (
        Level.WARNING,
        "run amo-oauth rotate-key with AMO_OAUTH_KEYS set: it seals every record's secrets"
        " with the newest key",
    ),
    "record_unreadable": (
        Level.WARNING,
        "find what wrote it; disconnect() on that connection overwrites it, and its user"
        " connects again",
    ),
    "settings_unchecked": (
        Level.WARNING,
        "set AMO_CLIENT_ID, AMO_CLIENT_SECRET (or AMO_SECRETS_URI), AMO_REDIRECT_URI and"
        " AMO_STATE_SECRET as the app has them, or pass --integrations FILE",
    ),
    "settings_missing": (Level.ERROR, "set the variables named (refresh-due needs them)"),
    "settings_invalid": (Level.ERROR, "fix the setting the sentence names"),
    "redirect_uri_http": (
        Level.WARNING,
        "use https in production (http is accepted on loopback, for development)",
    ),
    "redirect_uri_path": (
        Level.WARNING,
        "register the callback route's URL with amoCRM (the routes' prefix + /callback), or"
        " pass the prefix the app mounts them under with --prefix",
    ),
    "app_scheme_invalid": (Level.ERROR, "pass the app's own URL scheme, e.g. myapp"),
    "state_secret_weak": (
        Level.ERROR,
        "make a new one with python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        " and rotate to it (docs/operations.md, Rotating the state secret)",
    ),
    "secrets_uri_http": (Level.WARNING, "use https: amoCRM posts the client secret there"),
    "secrets_uri_origin": (
        Level.WARNING,
        "serve secrets_uri from the redirect_uri's origin, where the routes are mounted",
    ),
    "secrets_uri_path": (
        Level.WARNING,
        "point secrets_uri at the secrets route (the routes' prefix + /secrets)",
    ),
}

#: Beyond this skew (in either direction) the doctor warns; ``MAX_CLOCK_SKEW`` is an error.
DRIFT_WARNING: Final = MAX_CLOCK_SKEW / 10
#: Records the encryption check decodes, the first by key.
SAMPLE: Final = 20
#: A generated secret of 32 characters or more has more different characters than this.
MIN_DISTINCT: Final = 8
#: Words a made-up secret holds (any case); a generated one holds none of them but by a
#: chance smaller than one in ten thousand.
PLACEHOLDER_WORDS: Final = (
    "secret",
    "password",
    "passwd",
    "changeme",
    "example",
    "default",
    "amocrm",
    "kommo",
    "qwerty",
    "letmein",
    "admin",
    "state",
    "test",
)
#: Permission bits for group and others.
_OTHERS: Final = stat.S_IRWXG | stat.S_IRWXO
_OTHERS_WRITE: Final = stat.S_IWGRP | stat.S_IWOTH


@attrs.frozen
class Finding:
    """One thing found: ``id`` (a key of ``FINDINGS``), its level, a sentence that holds no
    secret, and what to do."""

    id: str
    message: str

    @property
    def level(self) -> Level:
        """``FINDINGS``' level for this id."""
        return FINDINGS[self.id][0]

    @property
    def action(self) -> str:
        """What to do about it."""
        return FINDINGS[self.id][1]

    def as_json(self) -> dict[str, str]:
        return {
            "id": self.id,
            "level": self.level.value,
            "message": self.message,
            "action": self.action,
        }


@attrs.frozen
class Report:
    """What the doctor found for one integration (or the environment's)."""

    findings: tuple[Finding, ...]

    @property
    def healthy(self) -> bool:
        """No error (warnings allowed)."""
        return all(finding.level is not Level.ERROR for finding in self.findings)

    def as_json(self) -> dict[str, object]:
        return {
            "healthy": self.healthy,
            "findings": [finding.as_json() for finding in self.findings],
        }


# -- the store ---------------------------------------------------------------------------


def examine_store(
    store: Store,
    *,
    keys_given: bool,
    clock: Callable[[], datetime] | None = None,
    unsealed: Store | None = None,
) -> list[Finding]:
    """The store's findings: its ``check()``, an SQLite store's file modes, the clock skew
    (``clock_skew``; ``clock`` is this machine's, for tests), and a sample of records decoded
    with the store's encryption (``keys_given``: AMO_OAUTH_KEYS was set). ``unsealed`` is the
    same store opened without encryption: records it reads whole hold their secrets
    unencrypted, which is worth a warning when keys are given."""
    # The files as they are, before this check's own connection may make a -wal or -shm.
    found = file_modes(Path(store.path)) if isinstance(store, SQLiteStore) else []
    checked = store.check()
    if not checked.reachable:
        found.append(_unreachable(store, checked))
        return found
    found += _judged(checked)
    found += _skew(store, clock)
    if checked.ok:
        found += _sample(store, keys_given)
        found += _plain(unsealed) if keys_given and unsealed is not None else []
    return found


#: The first bytes of every non-empty SQLite 3 database (its file format's header string).
SQLITE_HEADER: Final = b"SQLite format 3\x00"


def _unreachable(store: Store, checked: StoreCheck) -> Finding:
    """Why the store does not answer: an SQLite path holding some other file is no server
    to start, so it has its own finding."""
    if isinstance(store, SQLiteStore) and _foreign_file(Path(store.path)):
        return Finding("store_not_a_database", f"{store.path} is not an SQLite database")
    return Finding("store_unreachable", f"the store does not answer: {checked.detail}")


def _foreign_file(path: Path) -> bool:
    """A file at ``path`` that is not empty and does not begin as an SQLite database does."""
    try:
        with path.open("rb") as file:
            head = file.read(len(SQLITE_HEADER))
    except OSError:  # not there, or not ours to read: the store's own detail says which
        return False
    return bool(head) and head != SQLITE_HEADER


def _plain(unsealed: Store) -> list[Finding]:
    """The sampled records (the first ``SAMPLE`` by key) that a store without keys reads
    whole although they hold secrets: sealed ones are skipped (``readable_page``)."""
    plain, seen, after = 0, 0, None
    try:
        while seen < SAMPLE:
            records, sealed = readable_page(unsealed, after, SAMPLE - seen)
            plain += sum(holds_secrets(record) for record in records)
            seen += len(records) + (sealed is not None)
            if sealed is None:
                break
            after = sealed
    except StoreError:  # a corrupt record, or the store gone: said by the sample above
        return []
    if not plain:
        return []
    said = f"AMO_OAUTH_KEYS is set, but {plain} of the first {seen} records hold their secrets"
    return [Finding("encryption_records_plain", f"{said} unencrypted")]


def _judged(checked: StoreCheck) -> Iterable[Finding]:
    """The schema and the memory policy, each finding saying only its own part."""
    if not checked.schema_ready:
        said = checked.schema_detail
        yield Finding("store_not_migrated", f"the store's schema is not in place: {said}")
    if not checked.safe:
        yield Finding("store_may_lose_keys", checked.memory_detail or checked.detail)
    elif checked.memory_detail:  # told to allow eviction, or a server that would not say
        yield Finding("store_warning", checked.memory_detail)
    elif checked.schema_ready and checked.detail:  # a store of one's own said something
        yield Finding("store_warning", checked.detail)


def file_modes(path: Path) -> list[Finding]:
    """An SQLite store's files (the database, its -wal and -shm) open to group or others, and
    its directory open to them."""
    found = []
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        mode = _mode(file)
        if mode is not None and mode & _OTHERS:
            found.append(
                Finding(
                    "sqlite_file_mode",
                    f"{file} has mode {mode:04o}: group or others may read or write the tokens",
                )
            )
    directory = path.absolute().parent
    mode = _mode(directory)
    if mode is not None and mode & _OTHERS_WRITE:
        found.append(
            Finding(
                "sqlite_directory_writable",
                f"the store's directory {directory} has mode {mode:04o}: writable by others",
            )
        )
    elif mode is not None and mode & _OTHERS:
        found.append(
            Finding(
                "sqlite_directory_readable",
                f"the store's directory {directory} has mode {mode:04o}: others may list it",
            )
        )
    return found


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:  # not there (no -wal yet), or not ours to read: nothing to judge
        return None


def _skew(store: Store, clock: Callable[[], datetime] | None) -> list[Finding]:
    try:
        skew = clock_skew(store, clock=clock)
    except StoreError:  # the store stopped answering since its check: said above
        return []
    size = abs(skew)
    way = "ahead of" if skew > timedelta(0) else "behind"
    said = f"the store's clock is {size.total_seconds():.1f} s {way} this machine's"
    if size > MAX_CLOCK_SKEW:
        limit = MAX_CLOCK_SKEW.total_seconds()
        return [Finding("clock_skew", f"{said}, beyond MAX_CLOCK_SKEW ({limit:.0f} s)")]
    if size > DRIFT_WARNING:
        return [Finding("clock_drift", f"{said} (warned beyond {DRIFT_WARNING.seconds} s)")]
    return []


def _sample(store: Store, keys_given: bool) -> list[Finding]:
    """The first ``SAMPLE`` records by key, decoded with the store's encryption."""
    try:
        store.scan(None, SAMPLE)
    except UndecryptableRecord as error:
        which = f" (record {error.key})" if error.key else ""
        if keys_given:
            return [
                Finding(
                    "encryption_key_mismatch",
                    f"none of AMO_OAUTH_KEYS opens a stored record's secrets{which}",
                )
            ]
        return [
            Finding(
                "encryption_keys_missing",
                f"the store's records are encrypted and AMO_OAUTH_KEYS is not set{which}",
            )
        ]
    except UnreadableRecord:
        return [Finding("record_unreadable", "the store holds a record this library cannot read")]
    except StoreError as error:
        return [Finding("store_unreachable", f"reading records failed: {error}")]
    return []


# -- the settings ------------------------------------------------------------------------


def examine_settings(config: Config, *, app_scheme: str | None, prefix: str) -> list[Finding]:
    """What ``Config`` accepts and an operator should still change: the URLs (scheme, the
    routes' ``prefix``, the origin), ``app_scheme`` (None: not given), the secrets' strength."""
    prefix = prefix.rstrip("/")
    found = _url_findings("redirect_uri", config.redirect_uri, prefix + "/callback")
    if config.secrets_uri is not None:
        found += _url_findings("secrets_uri", config.secrets_uri, prefix + "/secrets")
        if _origin(config.secrets_uri) != _origin(config.redirect_uri):
            found.append(
                Finding("secrets_uri_origin", "secrets_uri and redirect_uri differ in origin")
            )
    if app_scheme is not None:
        found += _app_scheme(app_scheme)
    found += _secret_findings(config)
    return found


def _url_findings(field: str, url: str, route: str) -> list[Finding]:
    parts = urlsplit(url)
    found = []
    if parts.scheme == "http":
        found.append(Finding(f"{field}_http", f"{field} is http ({parts.hostname})"))
    if not parts.path.endswith(route):
        found.append(
            Finding(f"{field}_path", f"{field}'s path does not end in {route}, where the route is")
        )
    return found


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


def _app_scheme(scheme: str) -> list[Finding]:
    from .web._page import check_app_scheme

    try:
        check_app_scheme(scheme)
    except ValueError as error:  # the message names the scheme, which is no secret
        return [Finding("app_scheme_invalid", str(error))]
    return []


def _secret_findings(config: Config) -> list[Finding]:
    named = [("state_secret", config.state_secret)]
    count = len(config.previous_state_secrets)
    named += [
        (f"previous state secret {number} of {count}", secret)
        for number, secret in enumerate(config.previous_state_secrets, start=1)
    ]
    found = []
    for name, secret in named:
        why = weakness(secret)
        if why is not None:
            found.append(Finding("state_secret_weak", f"{name} {why}"))
    return found


def weakness(secret: bytes) -> str | None:
    """Why ``secret`` looks made by hand rather than generated (a phrase that names no part
    of it), or None. ``Config`` already refuses one shorter than 32 bytes."""
    if len(set(secret)) == 1:
        return "is one character repeated"
    if (secret + secret).find(secret, 1) < len(secret):
        return "is a short pattern repeated"
    if len(set(secret)) < MIN_DISTINCT:
        return f"has fewer than {MIN_DISTINCT} different characters"
    lowered = secret.lower()
    if any(word.encode() in lowered for word in PLACEHOLDER_WORDS):
        return "holds a common word (such as 'secret' or 'password')"
    return None


# -- what the command gathers ------------------------------------------------------------


def settings_unchecked(names: Sequence[str]) -> Finding:
    """None of the environment's settings is set: nothing to check them against."""
    return Finding("settings_unchecked", f"the settings were not checked: {', '.join(names)} unset")


def settings_missing(names: Sequence[str]) -> Finding:
    """Some of the environment's settings are set, these are not."""
    return Finding("settings_missing", f"{', '.join(names)} unset")


def settings_invalid(message: str) -> Finding:
    """``Config`` (or the integrations file) refused the settings; its messages hold no
    secret."""
    return Finding("settings_invalid", message)


def store_unopened(message: str) -> Finding:
    """``store_from_url`` refused the URL (its messages never repeat it)."""
    return Finding("store_unopened", message)


def keys_invalid(message: str) -> Finding:
    """AMO_OAUTH_KEYS holds something that is not a Fernet key, or cryptography is missing."""
    return Finding("encryption_keys_invalid", message)


def examine(
    settings: Config | Finding,
    store: Store | Finding,
    *,
    keys: Finding | None = None,
    keys_given: bool = False,
    app_scheme: str | None = None,
    prefix: str,
    clock: Callable[[], datetime] | None = None,
    unsealed: Store | None = None,
) -> Report:
    """Every check for one integration: its settings (or why they could not be read), its
    store (or why it could not be opened), and AMO_OAUTH_KEYS (``keys``: why they are
    refused; ``unsealed``: the store opened without them, see ``examine_store``). The stores
    are left open; the caller closes them."""
    found = [settings] if isinstance(settings, Finding) else []
    if isinstance(settings, Config):
        found += examine_settings(settings, app_scheme=app_scheme, prefix=prefix)
    if keys is not None:
        found.append(keys)
    if isinstance(store, Finding):
        found.append(store)
    else:
        found += examine_store(store, keys_given=keys_given, clock=clock, unsealed=unsealed)
    return Report(tuple(found))


# -- showing it --------------------------------------------------------------------------


def render_lines(reports: Mapping[str | None, Report], stream: TextIO) -> None:
    """A line per finding, ``LEVEL id [integration]: message; do: action``, then a summary."""
    for name, report in reports.items():
        where = f" [{name}]" if name is not None else ""
        for finding in report.findings:
            print(
                f"{finding.level.value} {finding.id}{where}: {finding.message};"
                f" do: {finding.action}",
                file=stream,
            )
    print(_summary(reports), file=stream)


def render_table(reports: Mapping[str | None, Report], stream: TextIO) -> bool:
    """A rich table of the findings; False (nothing printed) without rich."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        return False
    several = any(name is not None for name in reports)
    table = Table(title="amo-oauth doctor")
    table.add_column("level")
    if several:
        table.add_column("integration")
    for column in ("finding", "what was found", "what to do"):
        table.add_column(column, overflow="fold")
    for name, report in reports.items():
        for finding in report.findings:
            style = "red" if finding.level is Level.ERROR else "yellow"
            cells = [f"[{style}]{finding.level.value}[/{style}]"]
            cells += [name or ""] if several else []
            table.add_row(*cells, finding.id, finding.message, finding.action)
    console = Console(file=stream)
    if any(report.findings for report in reports.values()):
        console.print(table)
    console.print(_summary(reports), markup=False)
    return True


def _summary(reports: Mapping[str | None, Report]) -> str:
    findings = [finding for report in reports.values() for finding in report.findings]
    errors = sum(finding.level is Level.ERROR for finding in findings)
    warnings = len(findings) - errors
    if not findings:
        return "doctor: nothing found"
    return f"doctor: {errors} error(s), {warnings} warning(s)"
