"""``amo-oauth fake``: FakeAmoCRM served on loopback for a person's own backend, until Ctrl-C.

It prints what to configure, as a Python snippet and as environment lines: the consent page
(``authorize_url``, on loopback, for the browser), the fake integration's client id and secret,
and the served URL for `amo_oauth.testing.LoopbackTransport`. The token endpoint and the API
keep amoCRM's account hosts (``https://test.amocrm.ru``), which the library allow-lists before
it sends the secret; the transport carries those hosts to the fake on this machine. Then it
prints each request the fake answers (method, host, path, status: never a query or a body).

With ``--site-button`` it prints the site button's metadata mode instead (protocol notes §7):
no client id or secret of the fake's, as each install makes a new integration whose
credentials the fake posts to ``secrets_uri``; ``button_script_url`` is the fake's stand-in
for amoCRM's button script.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import time
from typing import TYPE_CHECKING, NoReturn, TextIO
from urllib.parse import urlsplit, urlunsplit

import attrs

from ._config import Config

if TYPE_CHECKING:  # the command line reads the defaults without loading the fake
    from .testing import FakeAmoCRM

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_REDIRECT_URI",
    "MAX_ACCOUNTS",
    "SITE_BUTTON_CLIENT_ID",
    "Served",
    "build_fake",
    "env_lines",
    "run_fake",
    "snippet",
]

DEFAULT_PORT = 8765
"""Fixed by default, so the printed configuration stays right across restarts of the fake."""
DEFAULT_REDIRECT_URI = "http://127.0.0.1:8000/api/amo-crm/callback"
"""uvicorn's default address with the web layer's callback path."""
MAX_ACCOUNTS = 20
SITE_BUTTON_CLIENT_ID = "my-product"
"""The printed metadata-mode ``client_id``: only the product's namespace in the store, never
sent to amoCRM (nor to the fake); yours to choose."""
POLL_SECONDS = 0.2
# A state secret is the backend's own, never the fake's: the environment lines generate one.
STATE_SECRET_LINE = (
    "export AMO_STATE_SECRET=\"$(python3 -c 'import secrets; print(secrets.token_hex(32))')\""
)


@attrs.frozen
class Served:
    """What a backend needs to know about a served fake.

    Attributes:
        url: the fake's loopback URL, e.g. "http://127.0.0.1:8765".
        domain: the base domain of its accounts, which the transport routes ("amocrm.ru").
        client_id: the fake integration's client id.
        client_secret: the fake integration's secret (a fake's: printed on purpose).
        redirect_uri: the backend's callback URL, as registered with the fake.
        site_button: print the site button's metadata mode rather than the fixed client id.
    """

    url: str
    domain: str
    client_id: str
    client_secret: str = attrs.field(repr=False)
    redirect_uri: str
    site_button: bool = False

    @property
    def authorize_url(self) -> str:
        """The consent page, where the backend sends the browser (``Config.authorize_url``)."""
        return f"{self.url}/oauth"

    @property
    def button_script_url(self) -> str:
        """The fake's stand-in for amoCRM's button script (``Config.button_script_url``)."""
        return f"{self.url}/auth/button.min.js"

    @property
    def secrets_uri(self) -> str:
        """The backend's secrets route beside its callback (the routes' prefix +
        ``/secrets``), where the fake posts each install's credentials."""
        return secrets_uri_beside(self.redirect_uri)


def secrets_uri_beside(redirect_uri: str) -> str:
    """``redirect_uri`` with its last path segment (``callback``) replaced by ``secrets``."""
    parts = urlsplit(redirect_uri)
    path = parts.path.rsplit("/", 1)[0] + "/secrets"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def build_fake(redirect_uri: str, accounts: int, *, site_button: bool = False) -> FakeAmoCRM:
    """A fake with ``accounts`` accounts on amocrm.ru (test, test2, ...), whose integration
    sends the browser back to ``redirect_uri``.

    Raises:
        ValueError: ``redirect_uri`` (with ``site_button``: or the ``secrets_uri`` beside it)
            is not one a ``Config`` accepts, ``site_button`` without the ``crypto`` extra, or
            ``accounts`` is out of range (1 to `MAX_ACCOUNTS`).
    """
    from .testing import FakeAmoCRM

    if not 1 <= accounts <= MAX_ACCOUNTS:
        raise ValueError(f"--accounts must be 1 to {MAX_ACCOUNTS}, not {accounts}")
    # The same checks the backend's Config will make, now, rather than at its first request.
    Config(
        client_id="check",
        client_secret=None if site_button else "check-secret",
        redirect_uri=redirect_uri,
        state_secret=b"\0" * 32,
        secrets_uri=secrets_uri_beside(redirect_uri) if site_button else None,
    )
    fake = FakeAmoCRM(redirect_uri=redirect_uri)
    for number in range(2, accounts + 1):
        fake.add_account(f"test{number}", name=f"Test account {number}")
    return fake


def snippet(served: Served) -> str:
    """Python that configures a blocking backend for ``served`` (the async names in a comment)."""
    if served.site_button:
        return _site_button_snippet(served)
    return f"""\
import secrets

import httpx

from amo_oauth import AmoOAuth, Config
from amo_oauth.testing import LoopbackTransport

config = Config(
    client_id={_py(served.client_id)},
    client_secret={_py(served.client_secret)},
    redirect_uri={_py(served.redirect_uri)},
    state_secret=secrets.token_bytes(32),  # yours: 32+ random bytes, the same in every worker
    authorize_url={_py(served.authorize_url)},
)
# The token endpoint and the API keep amoCRM's hosts (*.{served.domain}): this transport
# carries them to the fake on this machine.
transport = LoopbackTransport.to({_py(served.url)}, domain={_py(served.domain)})
http = httpx.Client(transport=transport)  # for your API calls too, with auth=oauth.auth(id)
oauth = AmoOAuth(config, http=http)
# asyncio: AsyncAmoOAuth, httpx.AsyncClient and AsyncLoopbackTransport, the same arguments.
"""


def _site_button_snippet(served: Served) -> str:
    """``snippet`` in the site button's metadata mode: no client secret, the fake's script."""
    return f"""\
import secrets

import httpx

from amo_oauth import AmoOAuth, Config
from amo_oauth.testing import LoopbackTransport

# client_id: your product's namespace in the store, never sent to amoCRM; no client secret:
# each install makes a new integration, whose credentials the fake posts to secrets_uri.
config = Config(
    client_id={_py(SITE_BUTTON_CLIENT_ID)},
    secrets_uri={_py(served.secrets_uri)},
    redirect_uri={_py(served.redirect_uri)},
    state_secret=secrets.token_bytes(32),  # yours: 32+ random bytes, the same in every worker
    button_script_url={_py(served.button_script_url)},  # the fake's stand-in for amoCRM's
)
# Your connect page shows oauth.site_button(id, metadata=ButtonMetadata(...)).html (the
# routes do, given button=ButtonMetadata(...)).
# The token endpoint and the API keep amoCRM's hosts (*.{served.domain}): this transport
# carries them to the fake on this machine.
transport = LoopbackTransport.to({_py(served.url)}, domain={_py(served.domain)})
http = httpx.Client(transport=transport)  # for your API calls too, with auth=oauth.auth(id)
oauth = AmoOAuth(config, http=http)
# asyncio: AsyncAmoOAuth, httpx.AsyncClient and AsyncLoopbackTransport, the same arguments.
"""


def _py(text: str) -> str:
    # A JSON string is a Python string literal too, in the double quotes ruff formats to.
    return json.dumps(text)


def env_lines(served: Served) -> list[str]:
    """Shell lines exporting the same configuration (``AMO_FAKE_URL``: for the transport).
    In metadata mode: ``AMO_SECRETS_URI`` and ``AMO_BUTTON_SCRIPT_URL``, no client secret
    (``amo-oauth refresh-due`` refuses one beside ``AMO_SECRETS_URI``)."""
    values = (
        {
            "AMO_CLIENT_ID": SITE_BUTTON_CLIENT_ID,
            "AMO_SECRETS_URI": served.secrets_uri,
            "AMO_REDIRECT_URI": served.redirect_uri,
            "AMO_BUTTON_SCRIPT_URL": served.button_script_url,
        }
        if served.site_button
        else {
            "AMO_CLIENT_ID": served.client_id,
            "AMO_CLIENT_SECRET": served.client_secret,
            "AMO_REDIRECT_URI": served.redirect_uri,
            "AMO_AUTHORIZE_URL": served.authorize_url,
        }
    )
    values["AMO_FAKE_URL"] = served.url
    lines = [f"export {name}={shlex.quote(value)}" for name, value in values.items()]
    return [*lines, STATE_SECRET_LINE]


def _indented(text: str) -> str:
    return "\n".join(f"    {line}" if line else "" for line in text.splitlines())


def _banner(fake: FakeAmoCRM, served: Served) -> str:
    accounts = "\n".join(
        f"    {account.host}  {account.name!r} (id {account.id})" for account in fake.accounts
    )
    integration = (
        f"  site button   {served.button_script_url} (metadata mode: each install makes a new\n"
        f"                integration and posts its credentials to {served.secrets_uri})"
        if served.site_button
        else f"  integration   client id {served.client_id}, redirect URI {served.redirect_uri}"
    )
    consent = (
        '(the button opens it; "Allow")'
        if served.site_button
        else '(the browser\'s; "Allow" or "Deny")'
    )
    return f"""\
FakeAmoCRM on {served.url} until Ctrl-C (in memory: a restart forgets every code and token)
  consent page  {served.authorize_url}  {consent}
{integration}
  accounts (token endpoint and API at https://<host>, carried here by the transport below):
{accounts}

Configure your backend in Python:

{_indented(snippet(served))}

or with these environment lines (your code builds the transport from AMO_FAKE_URL):

{_indented(chr(10).join(env_lines(served)))}

Requests answered (method, host, path, status; never a query or a body):"""


def _watch(fake: FakeAmoCRM, out: TextIO) -> NoReturn:
    """Print each request the fake answers, as it comes, until an exception (Ctrl-C) ends it;
    then the requests answered since the last look, so none goes unprinted."""
    shown = 0
    try:
        while True:
            time.sleep(POLL_SECONDS)
            shown = _print_new(fake, shown, out)
    finally:
        _print_new(fake, shown, out)


def _print_new(fake: FakeAmoCRM, shown: int, out: TextIO) -> int:
    """Print the requests after the first ``shown``; returns how many are shown now."""
    seen = fake.requests
    for record in seen[shown:]:
        status = record.status if record.status is not None else "no answer"
        line = f"{record.method} {record.host}{record.path}"
        print(f"  {_printable(line)}: {status}", file=out, flush=True)
    return len(seen)


def _printable(text: str) -> str:
    """``text`` with every character a terminal would act on escaped (``\\x1b``): the method
    and the Host header are the client's, and an escape sequence in them must not reach the
    operator's terminal."""
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)


def run_fake(
    *,
    port: int = DEFAULT_PORT,
    redirect_uri: str = DEFAULT_REDIRECT_URI,
    accounts: int = 1,
    site_button: bool = False,
    out: TextIO | None = None,
) -> int:
    """Serve a fake on 127.0.0.1:``port`` and print its configuration (with ``site_button``:
    the metadata mode's), until interrupted.

    Ctrl-C (KeyboardInterrupt) propagates: the command line turns it into exit status 130.

    Returns:
        2 when it cannot start (a bad argument, or the port is taken); once serving, it ends
        only by an exception.
    """
    out = out or sys.stdout
    try:
        fake = build_fake(redirect_uri, accounts, site_button=site_button)
    except ValueError as error:
        print(f"amo-oauth fake: {error}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        try:
            served = stack.enter_context(fake.serve(port=port))
        except OSError as error:
            print(
                f"amo-oauth fake: cannot listen on 127.0.0.1:{port} ({error.strerror}): "
                "pass another --port (0: any free one)",
                file=sys.stderr,
            )
            return 2
        shown = attrs.evolve(_served(fake, served.url), site_button=site_button)
        print(_banner(fake, shown), file=out, flush=True)
        _watch(fake, out)


def _served(fake: FakeAmoCRM, url: str) -> Served:
    return Served(
        url=url,
        domain=fake.domain,
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        redirect_uri=fake.redirect_uri,
    )
