"""Every message a configuration check raises, in one table.

``Config``'s checks and the web layer's construction checks (``app_scheme``, ``prefix``, ...)
draw their messages from ``SETTING_ERRORS`` through ``setting_error``, and docs/configuration.md
lists each one: ``tests/test_config.py`` reads the checks' source, so a message written
anywhere else, or missing from the page, fails it.

A message names the setting, what is wrong with it and what to do. It never holds a secret:
no client secret, no state secret, and no URL (a URL may carry a password); the placeholders
are field names, type names, host names, schemes and numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from types import MappingProxyType
from typing import Final

__all__ = [
    "FORWARDED_HEADERS",
    "MAX_PREVIOUS_STATE_SECRETS",
    "MAX_REFRESH_BACKOFF",
    "MAX_SECRETS_WAIT",
    "MAX_TICKET_TTL",
    "MIN_API_RATE",
    "MODES",
    "SETTING_ERRORS",
    "setting_error",
]

#: ``Config.mode``'s choices: amoCRM's consent page answers by ``postMessage`` or in a popup.
MODES: Final = ("post_message", "popup")
#: ``Config.forwarded_header``'s choices: the header a trusted proxy writes the client into.
FORWARDED_HEADERS: Final = ("x-forwarded-for", "forwarded")
#: The longest a mobile ticket may live: it is a bearer link, good for whoever opens it first.
MAX_TICKET_TTL: Final = timedelta(minutes=10)
#: The most ``Config.previous_state_secrets`` may hold: a state or ticket that none signed
#: costs one HMAC per accepted secret, and a rotation needs one (two when rotations overlap).
MAX_PREVIOUS_STATE_SECRETS: Final = 3
#: The longest ``Config.refresh_backoff_initial`` and ``_max``: a refresh token lives 90 days,
#: so a connection held back for weeks would die unrefreshed (and a far longer back-off
#: overflows a date).
MAX_REFRESH_BACKOFF: Final = timedelta(weeks=1)
#: The longest ``Config.secrets_wait`` (seconds): each callback that waits for its
#: integration's credentials holds a worker (a thread of a sync server) that long, and amoCRM
#: posts them to ``secrets_uri`` before it redirects (protocol notes §7), so a longer wait only
#: widens what a flood of redirects can pin.
MAX_SECRETS_WAIT: Final = 60.0
#: The slowest ``Config.api_rate``: one request per host a day (a slower slot would sleep past
#: what the platform's sleep accepts).
MIN_API_RATE: Final = 1 / 86400

_SECRET_RECIPE: Final = "generate one with secrets.token_urlsafe(32)"

#: Every message, by key; ``{field}`` is the setting's name, other braces are filled in where
#: the message is raised.
SETTING_ERRORS: Final[Mapping[str, str]] = MappingProxyType(
    {
        # Config: text
        "empty_text": "{field} must be a non-empty string",
        "not_utf8": (
            "{field} is not valid text (it holds an undecodable byte, e.g. from the environment): "
            "set it to the value amoCRM gave, as UTF-8"
        ),
        "secret_not_utf8": (
            "{field} is not valid text (it holds an undecodable byte, e.g. from the environment): "
            "set it to the secret you generated, as UTF-8 text, or pass it as bytes"
        ),
        # Config: URLs (redirect_uri, authorize_url)
        "url_type": "{field} must be a URL string, not {type}",
        "url_invalid": "{field} is not a valid URL (check its brackets and port)",
        "url_scheme": "{field} must start with https:// (a whole URL: scheme, host, path)",
        "url_http": (
            "{field} must use https: http is allowed only on loopback "
            "(localhost, 127.0.0.1, ::1), and {host} is not loopback"
        ),
        "url_no_host": "{field} has no host: write it as https://<host>/<path>",
        "url_userinfo": (
            "{field} must not carry a user name or password (user:pw@ before the host): "
            "remove them; credentials in a URL leak into logs and browser history"
        ),
        "url_fragment": (
            "{field} must not have a #fragment (RFC 6749 §3.1, §3.1.2): "
            "remove everything from the '#'"
        ),
        # Config: the state secret
        "state_secret_type": "state_secret must be str or bytes, not {type}",
        "state_secret_short": f"state_secret must be at least 32 bytes: {_SECRET_RECIPE}",
        "client_secret_missing": (
            "client_secret is required: set it to the secret key amoCRM shows for the "
            "integration (or set secrets_uri for the site button's metadata mode)"
        ),
        "client_secret_with_secrets_uri": (
            "client_secret must be absent with secrets_uri set: in the site button's metadata "
            "mode each connection's secret comes from amoCRM's post to secrets_uri"
        ),
        "url_unsendable": (
            "{field} must not hold {problem}: in the site button's metadata mode (secrets_uri "
            "set) amoCRM's button script puts it into the consent URL as it is; use a URL "
            "without it (a path rather than query parameters)"
        ),
        "secrets_uri_needs_crypto": (
            "secrets_uri needs the crypto extra (the site button's metadata mode encrypts the "
            "connection into each state): pip install 'amo_oauth[crypto]'"
        ),
        "state_secret_is_client_secret": (
            "state_secret must not be the client_secret: whoever holds the client secret "
            "could then sign states; generate a separate one with secrets.token_urlsafe(32)"
        ),
        # Config: the previous state secrets (a rotation)
        "previous_state_secrets_type": (
            "previous_state_secrets must be a sequence of secrets, e.g. (old_secret,), not {type}"
        ),
        "previous_state_secret_type": "previous_state_secrets must hold str or bytes, not {type}",
        "previous_state_secret_short": (
            "previous_state_secrets must hold secrets of at least 32 bytes, as state_secret: "
            "list the secret state_secret had before"
        ),
        "previous_state_secrets_many": (
            f"previous_state_secrets must hold at most {MAX_PREVIOUS_STATE_SECRETS} secrets: "
            "remove the oldest (what it signed expires state_ttl + ticket_ttl + 5 minutes of "
            "clock skew after every machine signs with its successor)"
        ),
        "previous_state_secrets_repeated": (
            "previous_state_secrets must not hold the same secret twice (as str or as bytes): "
            "list each secret state_secret replaced once"
        ),
        "previous_state_secret_is_client_secret": (
            "previous_state_secrets must not hold the client_secret: whoever holds the client "
            "secret could then sign states"
        ),
        "previous_state_secret_is_current": (
            "previous_state_secrets must not hold state_secret itself: list only the secrets "
            "it replaced"
        ),
        # Config: choices and domains
        "mode": f"mode must be one of {', '.join(MODES)}",
        "forwarded_header": (
            f"forwarded_header must be one of {', '.join(FORWARDED_HEADERS)}: the one header "
            "your trusted proxies write the client's address into"
        ),
        "trusted_proxies": (
            "trusted_proxies must be a whole number (int) of proxies, 0 or more: 0 ignores "
            "forwarded headers (a client can write any header)"
        ),
        "domains_type": "extra_domains must be a tuple of domain names, e.g. ('example.com',)",
        "domain_type": "extra_domains must hold domain names as strings, not {type}",
        "domain_not_plain": (
            "extra_domains: not a plain domain name: {domain}; write lower-case ASCII labels "
            "joined by dots, e.g. 'fake.test'"
        ),
        "domain_ip": (
            "extra_domains: an IP address is not a domain: {domain}; "
            "name the host by a domain, e.g. 'fake.test'"
        ),
        # Config: durations and bounds
        "duration_type": "{field} must be a datetime.timedelta, not {type}",
        "seconds_type": "{field} must be a number of seconds, not {type}",
        "count_type": "{field} must be a number of code exchanges, not {type}",
        "not_positive": "{field} must be a positive, finite number",
        "ticket_ttl_long": (
            f"ticket_ttl must be at most {MAX_TICKET_TTL}: a ticket is a bearer link, "
            "good for whoever opens it first"
        ),
        "secrets_wait_long": (
            f"secrets_wait must be at most {MAX_SECRETS_WAIT:g} seconds: each callback that "
            "waits for its credentials holds a worker that long"
        ),
        "lease_short": (
            "lease_ttl must be more than three http_timeouts ({seconds} s): an exchange "
            "makes two calls of up to http_timeout each; raise lease_ttl or lower http_timeout"
        ),
        "fraction_type": "{field} must be a number from 0 to 1, not {type}",
        "fraction_range": "{field} must be a number from 0 to 1 (0.1: up to a tenth longer)",
        "backoff_long": (
            f"{{field}} must be at most {MAX_REFRESH_BACKOFF}: a connection held back longer "
            "risks its refresh token (90 days) expiring unrefreshed"
        ),
        "backoff_order": (
            "refresh_backoff_max must not be shorter than refresh_backoff_initial: "
            "the back-off grows from the first to the most"
        ),
        # Config: the API's pace
        "api_rate_type": (
            "api_rate must be a number of requests per second (amoCRM allows 7), or None to "
            "turn the pace off, not {type}"
        ),
        "api_rate_range": (
            "api_rate must be a finite number of requests per second of at least one a day "
            "(1/86400), e.g. 7 (amoCRM's limit) or 7 / N for N processes; 0 or None turns "
            "the pace off"
        ),
        "api_max_wait": (
            "api_max_wait must be a finite number of seconds, 0 or more (0: a request never "
            "waits for its slot and is never resent after a 429)"
        ),
        # The web layer's handlers and adapters
        "app_scheme_type": "app_scheme must be a string such as 'myapp', not {type}",
        "app_scheme_empty": (
            "app_scheme must not be empty: pass your app's URL scheme, e.g. 'myapp'"
        ),
        "app_scheme_separator": (
            "app_scheme must be the scheme alone, without ':' or '/': 'myapp', not 'myapp://'"
        ),
        "app_scheme_syntax": (
            "app_scheme must be a URL scheme (RFC 3986 §3.1): a letter, then letters, digits, "
            "'+', '-' or '.', at most 64 characters, e.g. 'myapp'"
        ),
        "app_scheme_web": (
            "app_scheme must be your app's own scheme, not {scheme}: "
            "a deep link must open the app, not a web page"
        ),
        "app_scheme_browser": (
            "app_scheme must be your app's own scheme, not {scheme}: "
            "a browser handles {scheme} links itself instead of opening an app"
        ),
        "prefix": "prefix must be '' (the root) or a path starting with '/', e.g. '/api/amo-crm'",
        "prefix_query": "prefix must be a path alone, without '?'",
        "default_language": (
            "default_language {language} has no page texts: use one of {languages}, "
            "or add its PageText with texts="
        ),
        "limits": "max_body and max_query must be positive",
        "allowed_origin": (
            "allowed_origins takes origins, scheme://host[:port] with http or https and "
            "nothing after, e.g. 'https://app.example', not {origin}"
        ),
        "allowed_origins_type": (
            "allowed_origins takes a list of origins, e.g. ['https://app.example'], not one string"
        ),
        "sync_service": (
            "Handlers and amo_oauth.flask.blueprint serve a blocking AmoOAuth, not {type}: "
            "use AsyncHandlers (or amo_oauth.fastapi.router) for an AsyncAmoOAuth"
        ),
        "async_service": (
            "AsyncHandlers and amo_oauth.fastapi.router serve an AsyncAmoOAuth, not {type}: "
            "use Handlers (or amo_oauth.flask.blueprint) for a blocking AmoOAuth"
        ),
        "button_missing": (
            "button must be a ButtonMetadata(name=..., description=...) in the site button's "
            "metadata mode (Config.secrets_uri set), not {type}: /connect shows amoCRM's site "
            "button, which names the integration it makes for each account"
        ),
        # The integrations file (amo-oauth --integrations, AMO_OAUTH_INTEGRATIONS); {where} is
        # "integrations file" or "integration 'NAME'"; a setting is named, a value never shown
        "integrations_toml": "integrations file: not valid TOML: {problem}",
        "integrations_none": (
            "integrations file: no integrations: add a table per integration, e.g. "
            "[integrations.amocrm] with client_id, client_secret_env, redirect_uri and "
            "state_secret_env"
        ),
        "integrations_name": (
            "integrations file: an integration's name is 1 to 64 letters, digits, '-' or '_', "
            "e.g. [integrations.kommo]; table number {position} under [integrations] has "
            "another name (not repeated: it could be a secret pasted in)"
        ),
        "integrations_table": "{where} must be a table of settings, not {type}",
        "integrations_unknown_key": (
            "{where}: key number {position} names no setting (not repeated: it could be a secret "
            "pasted in): an integration takes Config's fields but its secrets "
            "(durations in seconds), client_secret_env, state_secret_env, "
            "previous_state_secrets_env, and store or store_env; the file takes "
            "[integrations.NAME] tables and a shared store or store_env"
        ),
        "integrations_secret": (
            "{where}: {setting} looks like a secret, and no secret belongs in the file: put it in "
            "an environment variable and name the variable (client_secret_env, "
            "state_secret_env, previous_state_secrets_env, store_env)"
        ),
        "integrations_type": "{where}: {setting} must be {wanted}, not {type}",
        "integrations_seconds": "{where}: {setting} must be a finite number of seconds",
        "integrations_required": "{where}: {setting} is required",
        "integrations_client_secret": (
            "{where}: give exactly one of client_secret_env (the environment variable holding "
            "the integration's secret key) and secrets_uri (the site button's metadata mode, "
            "where each connection has its own secret)"
        ),
        "integrations_env_name": (
            "{where}: {setting} must be the name of an environment variable (upper-case letters, "
            "digits and '_', e.g. AMO_KOMMO_SECRET), not a value"
        ),
        "integrations_env_missing": (
            "{where}: {setting} names {variable}, which is not set or empty in the environment"
        ),
        "integrations_store_both": "{where}: give store or store_env, not both",
        "integrations_store_password": (
            "{where}: store's URL holds a password: put the URL in an environment variable and "
            "name it with store_env"
        ),
        "integrations_store_unparseable": (
            "{where}: store's URL does not parse, so whether it holds a password cannot be "
            "told: put the URL in an environment variable and name it with store_env"
        ),
        "integrations_client_id_twice": (
            "integrations file: integrations {first} and {second} have the same client_id: "
            "connections are kept under their integration's client_id, so they would share "
            "them; list each integration once"
        ),
        "integrations_config": "{where}: {problem}",
        "integrations_unknown": "no integration {name} in the integrations file; it has {names}",
        # amo_oauth.web.Integrations: several integrations behind one set of routes
        "web_integrations_type": (
            "Integrations takes a dict of names to services, e.g. "
            "dict(amocrm=oauth_a, kommo=oauth_b), not {type}"
        ),
        "web_integrations_plain": (
            "several services go in amo_oauth.web.Integrations(...), not a plain {type}: "
            "it names each one and checks that they can share the routes"
        ),
        "web_integrations_empty": (
            "Integrations needs at least one service, e.g. dict(amocrm=oauth)"
        ),
        "web_integration_name": (
            "an integration's name is 1 to 64 of a-z, 0-9, '-' and '_', starting with a letter "
            "or digit (what ?integration= carries), e.g. 'kommo', not {name}"
        ),
        "web_integration_default": "default {name} is none of the integrations: use one of {names}",
        "web_integration_namespace": (
            "integrations {first} and {second} have the same client_id: their connections "
            "would share records; give each integration its own"
        ),
        "web_integration_shared": (
            "integrations {first} and {second} differ in {field}: one set of routes has one "
            "redirect_uri, trusted_proxies and forwarded_header; serve them on routes of their own"
        ),
    }
)


def setting_error(key: str, **values: object) -> str:
    """The message ``SETTING_ERRORS[key]`` with ``values`` filled in.

    Raises:
        KeyError: ``key`` is not in the table (a bug: the tests read every call).
    """
    return SETTING_ERRORS[key].format(**values)
