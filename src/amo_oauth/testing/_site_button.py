"""The site button in metadata mode (protocol notes §7): what the fake's install produces, its
stand-in for amoCRM's button script, and the credentials post to ``secrets_uri``.

In metadata mode the button carries no client id: every install creates a NEW integration,
whose ``client_id``, ``client_secret`` and the button's ``state`` amoCRM POSTs to
``secrets_uri`` (it wants exactly 200 back) before the usual code redirect. amoCRM documents
neither the post's encoding nor its signing; the fake posts a form (its choice, [I]).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

import attrs
import httpx

from ._accounts import FakeAccount, FakeIntegration
from ._loopback import is_loopback

SCRIPT_PATHS: Final = ("/auth/button.min.js", "/auth/button.js")
"""Where amoCRM (``www.amocrm.ru/auth/button.min.js``) and Kommo (``www.kommo.com/auth/button.js``)
serve the button script (§7); the fake serves its stand-in at both, on its consent host."""
JAVASCRIPT: Final = "text/javascript; charset=utf-8"
"""The script's content type (RFC 9239)."""
INSTALL_PATH: Final = "/oauth/install"
"""The fake's own path for "Allow" on a metadata-mode consent page (amoCRM's is not public)."""
METADATA_FIELDS: Final = ("name", "description", "redirect_uri", "secrets_uri")
"""What a metadata-mode button must carry besides ``scopes`` (§7); ``logo`` is optional."""
SCOPES_PARAMETER: Final = "scopes[]"
"""The button sends ``data-scopes`` (comma-separated) as repeated ``scopes[]`` (§7)."""
#: How long the fake waits for ``secrets_uri`` to answer (seconds): generous, so a backend
#: under load is never cut off by the fake; a test's own failure shows long before.
POST_TIMEOUT: Final = 60.0

# The stand-in for amoCRM's button script: it reads the data-* attributes amoCRM's script
# reads (§7) from its own <script> element and renders a button that opens the consent page of
# the host the script came from. Not amoCRM's code; only what a test clicks through.
BUTTON_SCRIPT: Final = b"""\
/* FakeAmoCRM: a stand-in for amoCRM's site-button script (protocol notes, section 7). */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) { return; }
  function attr(name) {
    var value = script.getAttribute("data-" + name);
    return value === null ? "" : value;
  }
  function randomState() {
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) {
      return ("0" + b.toString(16)).slice(-2);
    }).join("");
  }
  var params = new URLSearchParams();
  var clientId = attr("client-id");
  if (clientId) {
    params.append("client_id", clientId);
  } else {
    ["name", "description", "logo", "redirect_uri", "secrets_uri"].forEach(function (key) {
      if (attr(key)) { params.append(key, attr(key)); }
    });
    attr("scopes").split(",").forEach(function (scope) {
      if (scope.trim()) { params.append("scopes[]", scope.trim()); }
    });
  }
  params.append("state", attr("state") || randomState());
  params.append("mode", attr("mode") || "popup");
  var url = new URL("/oauth?" + params.toString(), script.src).href;
  var button = document.createElement("button");
  button.type = "button";
  button.className = attr("class-name") || "amocrm_oauth";
  var compact = attr("compact") === "true";
  button.textContent = attr("title") || (compact ? "amoCRM" : "Connect amoCRM");
  ["color", "theme", "locale"].forEach(function (key) {  /* Kommo: theme, locale */
    if (attr(key)) { button.setAttribute("data-" + key, attr(key)); }
  });
  button.addEventListener("click", function () {
    var opened = window.open(url, "amocrm_oauth", "width=750,height=580");
    if (opened) { return; }
    var onError = window[attr("error-callback")];
    if (typeof onError === "function") { onError({error: "popup_blocked"}); }
    else { window.location.assign(url); }
  });
  script.parentNode.insertBefore(button, script.nextSibling);
})();
"""


@attrs.frozen
class SecretsPost:
    """One credentials post the fake sent to a ``secrets_uri``, and the answer it got.

    Attributes:
        url: the ``secrets_uri`` posted to.
        client_id: the posted ``client_id`` (the integration the install made).
        state: the posted ``state`` (kept out of repr).
        status: the HTTP status answered; None when no answer came (see `error`).
        body: the answer's body (kept out of repr).
        error: the httpx exception's class name when no answer came, else None.
    """

    url: str
    client_id: str
    state: str = attrs.field(repr=False)
    status: int | None
    body: bytes = attrs.field(repr=False)
    error: str | None = None

    @property
    def accepted(self) -> bool:
        """Whether the answer was exactly 200, the only answer amoCRM takes (§7)."""
        return self.status == 200


@attrs.frozen
class SiteButtonInstall:
    """What one metadata-mode install did: see `FakeAmoCRM.install_site_button`.

    Attributes:
        account: the account that installed the product.
        integrations: every integration the install made, in order; more than one when the
            user retried (``attempts``); the last one is redirected with.
        secrets_uri: where the credentials are posted.
        state: the button's state, posted and redirected with (kept out of repr).
        posts: the credentials posts sent during the install (none with
            ``post_credentials=False``; later ones are `FakeAmoCRM.secrets_posts`).
        redirect_url: ``{redirect_uri}?code=&state=&referer=&client_id=&platform=``
            (kept out of repr: it holds a code), or None when a post was not answered 200:
            amoCRM's popup stops there (§7) and no code is issued.
    """

    account: FakeAccount
    integrations: tuple[FakeIntegration, ...]
    secrets_uri: str
    state: str = attrs.field(repr=False)
    posts: tuple[SecretsPost, ...]
    redirect_url: str | None = attrs.field(repr=False)

    @property
    def integration(self) -> FakeIntegration:
        """The integration the redirect names: the last one made."""
        return self.integrations[-1]


def uri_problem(name: str, url: str) -> str | None:
    """Why `url` cannot be a button's `name` URL (§7: both must be https), or None.

    Plain http is let through to a loopback host only: a test's stand-in for a backend.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"{name} is not a URL"
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return None
    if parts.scheme == "http" and is_loopback(host):
        return None
    return f"{name} must be an https URL (plain http only to a loopback host)"


def reachable_problem(url: str, transport: object | None) -> str | None:
    """Why the fake cannot post to `url` (None: it can): without a transport it posts over
    real HTTP, and then only to a loopback host, so fake credentials never leave the machine."""
    if transport is not None or is_loopback(urlsplit(url).hostname or ""):
        return None
    return "secrets_uri is not on loopback: pass a transport that reaches it"


def secrets_form(integration: FakeIntegration, state: str) -> dict[str, str]:
    """The post's fields: exactly the three §7 calls reliable."""
    return {
        "client_id": integration.client_id,
        "client_secret": integration.client_secret,
        "state": state,
    }


def post_secrets(
    url: str, integration: FakeIntegration, state: str, transport: httpx.BaseTransport | None
) -> SecretsPost:
    """POST the credentials form to `url` through `transport` (None: real HTTP)."""
    client = httpx.Client(transport=transport, trust_env=False, timeout=POST_TIMEOUT)
    try:
        answer: httpx.Response | httpx.HTTPError = client.post(
            url, data=secrets_form(integration, state)
        )
    except httpx.HTTPError as error:
        answer = error
    finally:
        if transport is None:  # a transport handed in is its owner's to close
            client.close()
    return _recorded(url, integration, state, answer)


async def apost_secrets(
    url: str,
    integration: FakeIntegration,
    state: str,
    transport: httpx.AsyncBaseTransport | None,
) -> SecretsPost:
    """The async twin of `post_secrets`."""
    client = httpx.AsyncClient(transport=transport, trust_env=False, timeout=POST_TIMEOUT)
    try:
        answer: httpx.Response | httpx.HTTPError = await client.post(
            url, data=secrets_form(integration, state)
        )
    except httpx.HTTPError as error:
        answer = error
    finally:
        if transport is None:
            await client.aclose()
    return _recorded(url, integration, state, answer)


def _recorded(
    url: str, integration: FakeIntegration, state: str, answer: httpx.Response | httpx.HTTPError
) -> SecretsPost:
    if isinstance(answer, httpx.HTTPError):
        return SecretsPost(url, integration.client_id, state, None, b"", type(answer).__name__)
    return SecretsPost(url, integration.client_id, state, answer.status_code, answer.content)
