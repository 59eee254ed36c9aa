"""Several integrations behind one set of routes: which service answers each request.

``Integrations({"amocrm": oauth_a, "kommo": oauth_b}, default="amocrm")`` goes wherever one
service goes (``Handlers``, ``AsyncHandlers``, ``amo_oauth.fastapi.router``,
``amo_oauth.flask.blueprint``, ``amo_oauth.django.urls``). Each request is given its
integration first (``Integrations.choose``); then its route runs, unchanged, on that service:

- ``GET /connect``, ``GET /status``, ``POST /disconnect``: ``?integration=NAME``, a parameter
  the app writes into its own links; without it the ``default``; else 400
  ``unknown_integration``.
- ``GET /callback`` and ``GET /disconnect-hook``: the client id amoCRM sends (``client_id``,
  ``client_uuid``; protocol notes §2, §6). A fixed one is found in memory; any other is asked
  of each metadata-mode integration's store (the ledger entry ``client:<id>`` that
  ``receive_secrets`` writes, held by the connection's record key), then, for a redirect that
  came before those credentials, the metadata-mode integration whose secret signed its state;
  none: 400 ``client_id_mismatch``. Without a client id: by the state, as below.
- ``POST /exchange-code`` (no client id in its body): the integration whose code ledger holds
  the code (a replay: answered 200 with its status), else the one whose secret signed the
  state, else the default (which refuses a new code there anyway: ``new_code_refused``).
- ``POST /secrets``: the integration whose secret signed the posted state
  (``integration_for_state``; a state names its integration, ``_state_token``'s ``k``).

With one service nothing is chosen: the routes answer exactly as they did for it alone.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator, Mapping
from typing import Any, Final, Generic, TypeVar

import attrs

from .._callback import CallbackSettings
from .._errors import CallbackRejected
from .._reasons import Reason
from .._records import code_digest
from .._setting_errors import setting_error
from .._state_token import read_state
from ._calls import LedgerHolds, ServiceCall
from ._http import Request
from ._reading import Refusal, code_fields, secrets_fields

__all__ = ["INTEGRATION_PARAM", "Ask", "Choosing", "Integrations", "UseIntegration"]

#: The query parameter that names the integration on the routes the app links to itself.
INTEGRATION_PARAM: Final = "integration"
#: An integration's name: what ``?integration=`` carries, so plain and short.
_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
#: The settings one set of routes takes from the services: they must agree.
_SHARED: Final = ("redirect_uri", "trusted_proxies", "forwarded_header")

S = TypeVar("S")
T = TypeVar("T")


@attrs.frozen
class UseIntegration:
    """From here on, the request's service calls go to integration ``name``."""

    name: str


@attrs.frozen
class Ask(Generic[T]):
    """A service call made of integration ``name`` while choosing (a ledger lookup)."""

    name: str
    call: ServiceCall[T]


Choosing = Generator[Ask[Any], Any, str]
"""Choosing a request's integration: lookups of the services, then its name."""


class Integrations(Mapping[str, S]):
    """Several services (``AmoOAuth``, or ``AsyncAmoOAuth``) behind one set of routes, by name.

    Args:
        services: name -> service; a name is 1 to 64 of ``a-z``, ``0-9``, ``-``, ``_``
            (starting with a letter or digit): what ``?integration=NAME`` carries.
        default: the integration of a connect, status or disconnect request that names none
            (None: such a request is refused, 400 ``unknown_integration``).

    Raises:
        TypeError: ``services`` is not a mapping.
        ValueError: no service, a bad name, a ``default`` that is none of them, two services
            of one namespace (``Config.client_id``: they would share records), or services
            whose ``redirect_uri``, ``trusted_proxies`` or ``forwarded_header`` differ (one
            set of routes has one of each).
    """

    def __init__(self, services: Mapping[str, S], *, default: str | None = None) -> None:
        if not isinstance(services, Mapping):
            raise TypeError(setting_error("web_integrations_type", type=type(services).__name__))
        if not services:
            raise ValueError(setting_error("web_integrations_empty"))
        for name in services:
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise ValueError(setting_error("web_integration_name", name=repr(name)))
        if default is not None and default not in services:
            names = ", ".join(services)
            raise ValueError(
                setting_error("web_integration_default", name=repr(default), names=names)
            )
        self._services = dict(services)
        self.default = default
        configs = {name: _config(service) for name, service in self._services.items()}
        known = {name: config for name, config in configs.items() if config is not None}
        _check_shared(known)
        # amoCRM sends a fixed-mode integration's client id; a metadata-mode one's is only a
        # namespace in the store, never sent: its connections' ids are looked up.
        self._fixed = {c.client_id: n for n, c in known.items() if not _metadata_mode(c)}
        self._metadata = tuple(n for n, c in known.items() if _metadata_mode(c))

    @classmethod
    def of(cls, oauth: S | Integrations[S]) -> Integrations[S]:
        """``oauth`` as it is when several, else one service as the only (default) one.

        Raises:
            TypeError: a plain mapping of services (it must be named ``Integrations``, which
                checks it).
        """
        if isinstance(oauth, Integrations):
            return oauth
        if isinstance(oauth, Mapping):
            raise TypeError(setting_error("web_integrations_plain", type=type(oauth).__name__))
        return cls({"default": oauth}, default="default")

    def __getitem__(self, name: str) -> S:
        return self._services[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._services)

    def __len__(self) -> int:
        return len(self._services)

    def __repr__(self) -> str:
        return f"Integrations({', '.join(self._services)}; default={self.default})"

    @property
    def metadata_mode(self) -> bool:
        """Whether any integration is in the site button's metadata mode (``POST /secrets``)."""
        return bool(self._metadata)

    @property
    def primary(self) -> S:
        """The default integration's service, else the first one's."""
        return self._services[self._fallback()]

    def integration_for_state(self, state: str | None) -> str | None:
        """The one integration whose secrets signed ``state`` for its namespace; None when
        none did, or more than one (a state from before states named their integration,
        under a shared secret). Expiry and use are the service's to check, not this.

        The hook for ``POST /secrets`` (amoCRM posts only ``client_id``, ``client_secret`` and
        ``state``; protocol notes §7): its state is what names the integration.
        """
        if not state:
            return None
        signers = [name for name, service in self._services.items() if _signed(service, state)]
        return signers[0] if len(signers) == 1 else None

    def choose(self, route: str, request: Request) -> Choosing:
        """The name of the integration that answers ``request`` on ``route`` (a route name).

        Raises:
            Refusal: 400 ``unknown_integration`` (connect, status, disconnect).
            CallbackRejected: ``client_id_mismatch`` (callback, hook: no integration knows the
                client id).
            StoreError: a lookup could not read a store.
        """
        if len(self._services) == 1:
            return self._fallback()
        if route == "callback":
            state = request.param("state")
            return (yield from self._by_client_id(request.param("client_id"), state))
        if route == "disconnect_hook":
            return (yield from self._by_client_id(request.param("client_uuid"), None))
        if route == "exchange_code":
            return (yield from self._by_code(request))
        if route == "secrets":
            return self._by_posted_state(request)
        return self._by_parameter(request)

    # -- the ways of choosing ------------------------------------------------------------------

    def _fallback(self) -> str:
        return self.default if self.default is not None else next(iter(self._services))

    def _by_parameter(self, request: Request) -> str:
        name = request.param(INTEGRATION_PARAM)
        chosen = self.default if name is None else name
        if chosen is None or chosen not in self._services:
            raise Refusal(400, Reason.UNKNOWN_INTEGRATION)
        return chosen

    def _by_state(self, state: str | None) -> str:
        """The state's signer; else the default (or first), which answers it as if alone."""
        return self.integration_for_state(state) or self._fallback()

    def _by_client_id(self, client_id: str | None, state: str | None) -> Choosing:
        if client_id is None:  # amoCRM always sends one; the service refuses what is wrong
            return self._by_state(state)
        fixed = self._fixed.get(client_id)
        if fixed is not None:
            return fixed
        entry = f"client:{client_id}"
        for name in self._metadata:
            if (yield Ask(name, LedgerHolds(entry))):
                return name
        # The redirect may come before amoCRM's post of the new integration's credentials (no
        # ledger entry yet): a metadata-mode integration's own state names it, and its callback
        # waits for them, then checks the client id against what was posted.
        signer = self.integration_for_state(state)
        if signer in self._metadata:
            return signer
        raise CallbackRejected(Reason.CLIENT_ID_MISMATCH)

    def _by_code(self, request: Request) -> Choosing:
        """A code the ledger holds is its holder's integration's (a replay is answered with
        that connection's status, never refused for want of a client id); else the state."""
        try:
            code, state, _ = code_fields(request)
        except Refusal:  # the route refuses the body itself, after its own checks
            return self._fallback()
        entry = f"code:{code_digest(code)}"
        for name in self._services:
            if (yield Ask(name, LedgerHolds(entry))):
                return name
        return self._by_state(state)

    def _by_posted_state(self, request: Request) -> str:
        try:
            state = secrets_fields(request).get("state")
        except Refusal:  # the route refuses the body itself
            return self._fallback()
        return self._by_state(state if isinstance(state, str) else None)


def _config(service: object) -> CallbackSettings | None:
    """A service's ``Config`` (None for a stand-in without one)."""
    config = getattr(service, "config", None)
    return config if hasattr(config, "accepted_state_secrets") else None


def _metadata_mode(config: CallbackSettings) -> bool:
    return bool(getattr(config, "metadata_mode", False))


def _signed(service: object, state: str) -> bool:
    """Whether ``service``'s secrets signed ``state`` for its own namespace."""
    config = _config(service)
    if config is None:
        return False
    try:
        read_state(config.accepted_state_secrets, state, config.client_id)
    except CallbackRejected:  # unsigned, another namespace's, or not a state at all
        return False
    return True


def _check_shared(configs: Mapping[str, CallbackSettings]) -> None:
    """One namespace per integration, and one redirect URI, proxy count and forwarded header
    for the one set of routes."""
    owners: dict[str, str] = {}
    for name, config in configs.items():
        first = owners.setdefault(config.client_id, name)
        if first != name:
            raise ValueError(setting_error("web_integration_namespace", first=first, second=name))
    if not configs:
        return
    first_name, first_config = next(iter(configs.items()))
    for name, config in configs.items():
        for field in _SHARED:
            if getattr(config, field, None) != getattr(first_config, field, None):
                raise ValueError(
                    setting_error(
                        "web_integration_shared", first=first_name, second=name, field=field
                    )
                )
