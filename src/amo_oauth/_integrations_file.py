"""Several integrations' settings from one TOML file, for the ``amo-oauth`` command.

The file holds what is not secret: a table per integration (``[integrations.NAME]``) with
``Config``'s fields (durations as seconds) and the store, and the NAMES of the environment
variables that hold the secrets (``client_secret_env``, ``state_secret_env``,
``previous_state_secrets_env``; ``store_env`` for a store URL with a password). A secret
written into the file is refused, naming the key and never the value; the library never
writes the file. ``parse_integrations`` checks everything the file alone decides, so a bad
file fails before any store is opened. Each integration's settings are checked by ``Config``
itself, with stand-in secrets; what it refuses is that integration's ``problem`` (not the
file's), so a command can report it and go on with the others (``doctor``, ``status``);
``Integration.config`` raises it, or reads the secrets from the environment. Pure: the caller
reads the file and hands in the environment.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Final
from urllib.parse import urlsplit

import attrs

from ._config import Config
from ._setting_errors import setting_error

__all__ = ["Integration", "IntegrationsFile", "parse_integrations"]

#: The ``Config`` fields that hold secrets, by the key that names their environment variable.
SECRET_ENV_KEYS: Final = {
    "client_secret_env": "client_secret",
    "state_secret_env": "state_secret",
    "previous_state_secrets_env": "previous_state_secrets",
}
#: The keys whose variable may be unset or empty: then there is no such secret (after a
#: rotation, docs/operations.md, the previous secrets are dropped by unsetting it).
OPTIONAL_ENV_KEYS: Final = frozenset({"previous_state_secrets_env"})
#: Words that make an unknown key look like a secret written into the file.
_SECRET_WORDS: Final = ("secret", "password", "passwd", "token", "key")
#: An environment variable's name as operators write them. Anything else may be the secret
#: itself pasted into the wrong key, so it is never repeated in a message.
_ENV_NAME: Final = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
_INTEGRATION_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Stand-ins for the secrets while the file alone is checked: long enough, never equal.
_STAND_IN_SECRETS: Final = {"client_secret": "c" * 40, "state_secret": "s" * 40}
_STORE_KEYS: Final = ("store", "store_env")
_TOP_KEYS: Final = ("integrations", *_STORE_KEYS)


def _seconds(where: str, key: str, value: object) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            setting_error(
                "integrations_type", **_wrong_type(where, key, "a number of seconds", value)
            )
        )
    if not math.isfinite(value) or abs(value) > timedelta.max.total_seconds():
        raise ValueError(setting_error("integrations_seconds", where=where, setting=key))
    return timedelta(seconds=value)


def _checker(
    wanted: str, test: Callable[[object], bool], convert: Callable[[Any], object] = lambda v: v
) -> Callable[[str, str, object], object]:
    def check(where: str, key: str, value: object) -> object:
        if not test(value):
            raise TypeError(
                setting_error("integrations_type", **_wrong_type(where, key, wanted, value))
            )
        return convert(value)

    return check


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


#: How a TOML value becomes a ``Config`` field's, by the field's declared type.
_BY_TYPE: Final[Mapping[str, Callable[[str, str, object], object]]] = {
    "str": _checker("text", lambda v: isinstance(v, str)),
    "str | None": _checker("text", lambda v: isinstance(v, str)),
    "bool": _checker("true or false", lambda v: isinstance(v, bool)),
    "int": _checker("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": _checker("a number", _is_number, float),
    "float | None": _checker("a number", _is_number, float),
    "timedelta": _seconds,
    "tuple[str, ...]": _checker(
        "a list of text",
        lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
        tuple,
    ),
}
#: Every ``Config`` field the file may set, with its conversion (not the secrets). A field of
#: a type TOML cannot spell is left out (a test says so, rather than the import failing).
FIELDS: Final = {
    field.name: _BY_TYPE[str(field.type)]
    for field in attrs.fields(Config)
    if field.name not in SECRET_ENV_KEYS.values() and str(field.type) in _BY_TYPE
}


def _wrong_type(where: str, key: str, wanted: str, value: object) -> dict[str, str]:
    """The placeholders of ``integrations_type``: the key and the value's type, never it."""
    return {"where": where, "setting": key, "wanted": wanted, "type": type(value).__name__}


@attrs.frozen
class Integration:
    """One integration of the file: its settings checked, its secrets still in the
    environment.

    Attributes:
        name: the table's name (``[integrations.NAME]``), what ``--integration`` picks.
        settings: ``Config``'s keyword arguments but the secrets, converted (durations as
            ``timedelta``).
        secret_envs: the environment variable of each secret ``Config`` field it sets.
        store: the store URL written in the file, or the variable holding it (``store_env``),
            as (``"store"`` or ``"store_env"``, text); None: the file's shared one.
        problem: what ``Config`` refuses in the settings the file gives it (its message,
            never a secret's value); None: nothing. ``refusal`` names the integration.
    """

    name: str
    settings: Mapping[str, object]
    secret_envs: Mapping[str, str]
    store: tuple[str, str] | None
    problem: str | None = None

    @property
    def where(self) -> str:
        return f"integration {self.name!r}"

    @property
    def refusal(self) -> str | None:
        """``problem`` as ``config`` raises it, naming the integration; None: nothing."""
        if self.problem is None:
            return None
        return setting_error("integrations_config", where=self.where, problem=self.problem)

    @property
    def client_id(self) -> str:
        """The client id: the namespace of its connections in the store."""
        return str(self.settings["client_id"])

    @property
    def extra_domains(self) -> tuple[str, ...]:
        """``Config.extra_domains`` as the file sets it (checked)."""
        domains = self.settings.get("extra_domains", ())
        return tuple(str(domain) for domain in domains) if isinstance(domains, tuple) else ()

    def config(self, environ: Mapping[str, str]) -> Config:
        """The ``Config``, with each secret read from the variable the file names.

        An unset or empty ``previous_state_secrets_env`` variable means no previous secrets.

        Raises:
            ValueError: ``problem`` (``Config`` refuses the file's settings); a required
                variable the file names is unset or empty (named; its value is never shown);
                or ``Config`` refuses the secrets (e.g. ``state_secret`` too short).
        """
        if self.problem is not None:
            raise ValueError(
                setting_error("integrations_config", where=self.where, problem=self.problem)
            )
        secrets: dict[str, object] = {}
        for env_key, variable in self.secret_envs.items():
            value = environ.get(variable, "")
            if not value and env_key in OPTIONAL_ENV_KEYS:
                continue
            if not value:
                raise ValueError(
                    setting_error(
                        "integrations_env_missing",
                        where=self.where,
                        setting=env_key,
                        variable=variable,
                    )
                )
            field = SECRET_ENV_KEYS[env_key]
            secrets[field] = _comma_list(value) if field == "previous_state_secrets" else value
        return _config(self.where, {**self.settings, **secrets})


def _comma_list(text: str) -> list[str]:
    # As AMO_PREVIOUS_STATE_SECRETS: comma-separated (token_urlsafe and token_hex make none).
    return [part.strip() for part in text.split(",") if part.strip()]


def _config(where: str, arguments: Mapping[str, object]) -> Config:
    try:
        return Config(**arguments)  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:  # Config's messages never hold a secret
        raise ValueError(
            setting_error("integrations_config", where=where, problem=str(error))
        ) from None


@attrs.frozen
class IntegrationsFile:
    """The file's integrations, in the file's order, and its shared store.

    Attributes:
        integrations: at least one; names and client ids are unique.
        store: the store every integration without its own uses, as ``Integration.store``;
            None: the command's (``--store``, ``AMO_OAUTH_STORE``, the default).
    """

    integrations: tuple[Integration, ...]
    store: tuple[str, str] | None

    def named(self, name: str | None) -> tuple[Integration, ...]:
        """The integration called ``name``; None: every one.

        Raises:
            ValueError: no integration has that name (the message lists the names).
        """
        if name is None:
            return self.integrations
        for integration in self.integrations:
            if integration.name == name:
                return (integration,)
        names = ", ".join(integration.name for integration in self.integrations)
        raise ValueError(setting_error("integrations_unknown", name=repr(name), names=names))

    def store_of(self, integration: Integration, environ: Mapping[str, str]) -> str | None:
        """The store URL of ``integration``: its own, else the file's shared one; None when
        the file names none.

        Raises:
            ValueError: ``store_env`` names a variable that is unset or empty.
        """
        where, store = (integration.where, integration.store)
        if store is None:
            where, store = ("integrations file", self.store)
        if store is None:
            return None
        key, text = store
        if key == "store":
            return text
        url = environ.get(text, "")
        if not url:
            raise ValueError(
                setting_error("integrations_env_missing", where=where, setting=key, variable=text)
            )
        return url

    @property
    def names_a_store(self) -> bool:
        """Whether any integration's store comes from the file."""
        return self.store is not None or any(i.store is not None for i in self.integrations)


def parse_integrations(text: str) -> IntegrationsFile:
    """Read the integrations file's text (TOML).

    Raises:
        ValueError: not TOML; no integration; an unknown key, a value of the wrong type, a
            secret written into the file (the key is named, never the value), an environment
            variable's name that is not one, or two integrations with one client id. Every
            message is in docs/configuration.md. (Settings ``Config`` refuses are the
            integration's ``problem``.)
        TypeError: a value of the wrong type (the key and the type are named).
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:  # its message holds a position, never the text
        raise ValueError(setting_error("integrations_toml", problem=str(error))) from None
    where = "integrations file"
    for position, key in enumerate(document, start=1):
        if key not in _TOP_KEYS:
            _refuse_key(where, key, position)
    tables = document.get("integrations")
    if not isinstance(tables, dict) or not tables:
        raise ValueError(setting_error("integrations_none"))
    integrations = tuple(
        _integration(name, table, position)
        for position, (name, table) in enumerate(tables.items(), start=1)
    )
    _check_client_ids_apart(integrations)
    return IntegrationsFile(integrations, _store(where, document))


def _integration(name: str, table: object, position: int) -> Integration:
    if not _INTEGRATION_NAME.fullmatch(name):  # named by position: it may be a secret
        raise ValueError(setting_error("integrations_name", position=position))
    where = f"integration {name!r}"
    if not isinstance(table, dict):
        raise TypeError(setting_error("integrations_table", where=where, type=type(table).__name__))
    settings: dict[str, object] = {}
    secret_envs: dict[str, str] = {}
    for position, (key, value) in enumerate(table.items(), start=1):
        if key in FIELDS:
            settings[key] = FIELDS[key](where, key, value)
        elif key in SECRET_ENV_KEYS:
            secret_envs[key] = _env_name(where, key, value)
        elif key not in _STORE_KEYS:
            _refuse_key(where, key, position)
    for key in ("client_id", "redirect_uri"):
        if key not in settings:
            raise ValueError(setting_error("integrations_required", where=where, setting=key))
    if "state_secret_env" not in secret_envs:
        raise ValueError(
            setting_error("integrations_required", where=where, setting="state_secret_env")
        )
    if ("client_secret_env" in secret_envs) == ("secrets_uri" in settings):
        raise ValueError(setting_error("integrations_client_secret", where=where))
    problem = _config_problem(settings, secret_envs)
    return Integration(name, settings, secret_envs, _store(where, table), problem)


def _refuse_key(where: str, key: str, position: int) -> None:
    """An unknown key (the ``position``-th of its table, from 1): one that looks like a secret
    says never to write one in the file. Only a setting's own name is repeated: any other key
    may be a secret pasted in as a key (``"sk-..." = 1``), so it is named by its position."""
    if key in SECRET_ENV_KEYS.values():
        raise ValueError(setting_error("integrations_secret", where=where, setting=repr(key)))
    if any(word in key.lower() for word in _SECRET_WORDS):
        shown = f"key number {position}"
        raise ValueError(setting_error("integrations_secret", where=where, setting=shown))
    raise ValueError(setting_error("integrations_unknown_key", where=where, position=position))


def _env_name(where: str, key: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(
            setting_error("integrations_type", **_wrong_type(where, key, "text", value))
        )
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(setting_error("integrations_env_name", where=where, setting=key))
    return value


def _store(where: str, table: Mapping[str, object]) -> tuple[str, str] | None:
    given = [key for key in _STORE_KEYS if key in table]
    if not given:
        return None
    if len(given) > 1:
        raise ValueError(setting_error("integrations_store_both", where=where))
    key = given[0]
    value = table[key]
    if not isinstance(value, str):
        raise TypeError(
            setting_error("integrations_type", **_wrong_type(where, key, "text", value))
        )
    if key == "store_env":
        return key, _env_name(where, key, value)
    try:
        password = urlsplit(value).password
    except ValueError:  # malformed: a password in it would pass unseen, so it is refused
        raise ValueError(setting_error("integrations_store_unparseable", where=where)) from None
    if password is not None:
        raise ValueError(setting_error("integrations_store_password", where=where))
    return key, value


def _config_problem(settings: Mapping[str, object], secret_envs: Mapping[str, str]) -> str | None:
    """What ``Config`` refuses in what the file sets, with stand-ins for the secrets it
    names; None when nothing."""
    stand_ins = {
        field: value for field, value in _STAND_IN_SECRETS.items() if f"{field}_env" in secret_envs
    }
    try:
        Config(**{**settings, **stand_ins})  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:  # Config's messages never hold a secret
        return str(error)
    return None


def _check_client_ids_apart(integrations: tuple[Integration, ...]) -> None:
    # The client id is the namespace of an integration's connections in the store: two
    # integrations under one would read and refresh each other's.
    seen: dict[str, str] = {}
    for integration in integrations:
        first = seen.setdefault(integration.client_id, integration.name)
        if first != integration.name:
            raise ValueError(
                setting_error(
                    "integrations_client_id_twice",
                    first=repr(first),
                    second=repr(integration.name),
                )
            )
