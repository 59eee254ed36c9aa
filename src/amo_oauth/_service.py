"""``AmoOAuth``: the flows of ``_flows.py`` driven over a blocking store and ``httpx.Client``."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from ._auth import ConnectionAuth
from ._callback import QueryLike
from ._config import Config
from ._connection_id import ConnectionId
from ._driving import drive
from ._kept import KeptRetry
from ._lifecycle_events import LifecycleEvent
from ._ops import Emit, Op, Send, StoreOp
from ._provider import send_within
from ._reasons import Reason
from ._record_view import RecordView
from ._records import Connection, ConnectionRecord
from ._results import (
    AuthorizationRequest,
    ButtonMetadata,
    CallbackResult,
    HookResult,
    RefreshReport,
    SecretsResult,
    SiteButton,
    SweepProgress,
)
from ._service_core import ServiceCore, Turn, default_store, with_stored
from ._subscribers import is_async_callable
from ._sweep import Done, SweepPlan, sweep
from .stores import Store
from .stores._protocol import DueCursor

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

__all__ = ["AmoOAuth"]

T = TypeVar("T")
E = TypeVar("E", bound=LifecycleEvent)


class AmoOAuth(ServiceCore[httpx.Client]):
    """The OAuth connection lifecycle for a blocking backend (Flask, Django, scripts).

    Args:
        config: the integration's settings.
        store: where connections live; ``SQLiteStore("amo_oauth.db")`` when omitted.
        http: the client used to reach amoCRM; its redirects are never followed. Tests pass
            one whose transport is ``FakeAmoCRM().transport()``.
        clock: returns the current aware UTC time; for tests.
        meter_provider: the OpenTelemetry ``MeterProvider`` the metrics are made with
            (docs/metrics.md); None: OpenTelemetry's global one. Without the ``otel`` extra
            installed, no metrics at all.
    """

    _http_class = httpx.Client

    def __init__(
        self,
        config: Config,
        *,
        store: Store | None = None,
        http: httpx.Client | None = None,
        clock: Callable[[], datetime] | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        super().__init__(config, clock, meter_provider)
        self._check_store(store, Store)
        if http is not None and not isinstance(http, httpx.Client):
            raise TypeError(
                "AmoOAuth needs an httpx.Client; use AsyncAmoOAuth for httpx.AsyncClient"
            )
        self._store: Store = store if store is not None else default_store()
        self.store = self._store  # the core's attribute, typed for either service
        self._take_http(http)
        records = self._flows.records
        self._kept_retry = KeptRetry(
            lambda: drive(records.store_kept(), self._perform), records.kept_pairs
        )
        records.on_kept = self._kept_retry.start

    def begin(
        self, connection_id: str, *, binding: str | None = None, browser_binding: bool = True
    ) -> AuthorizationRequest:
        """Start connecting: the consent-page URL with a fresh signed ``state``, bound to the
        browser that will go there. Reads the connection's record once (its version orders a
        re-authorization after the connection it replaces; the store's clock dates the state)
        and writes nothing.

        Args:
            connection_id: the application's key for this connection (a user or tenant id);
                never a ``Widget``: amoCRM's install makes a widget connection.
            binding: the browser's current binding (e.g. from its cookie), reused when it was
                made for this connection; otherwise a fresh one is made.
            browser_binding: False to opt out of the browser binding: the state is then bound
                to the app's session instead, and ``handle_callback`` exchanges a new code only
                with ``connection_id=`` (the signed-in user) matching. Signed into the state.

        Returns:
            ``AuthorizationRequest(url, state, expires_at, binding)``: keep ``binding`` in the
            browser (an ``HttpOnly`` cookie) and redirect it to ``url``.

        Raises:
            ValueError: ``connection_id`` is empty, over 255 characters, unprintable or a
                ``Widget``; or the site button's metadata mode (``Config.secrets_uri`` set),
                where amoCRM's consent needs the button's metadata and no client id: use
                ``site_button()`` there.
        """
        return self._run(self._flows.codes.begin(connection_id, binding, browser_binding))

    def site_button(
        self,
        connection_id: str,
        *,
        binding: str | None = None,
        browser_binding: bool = True,
        metadata: ButtonMetadata | None = None,
        title: str | None = None,
        compact: bool = False,
        class_name: str | None = None,
        color: str | None = None,
        theme: str | None = None,
        locale: str | None = None,
        error_callback: str | None = None,
    ) -> SiteButton:
        """amoCRM's site button for ``connection_id``: the ``<script>`` element to put on a
        page, whose ``data-*`` attributes amoCRM's button script reads (protocol notes §7),
        every value checked and HTML-escaped, carrying a fresh ``state`` made as ``begin()``
        makes it (one read of the record, nothing written; the same binding rules). The
        script is ``Config.button_script_url``; a Kommo ``authorize_url``
        (``https://www.kommo.com/oauth``) makes it Kommo's button (class ``kommo_oauth``).

        With a fixed client id the button names ``Config.client_id`` (``data-client-id``). In
        metadata mode (``Config.secrets_uri`` set) it carries ``metadata`` instead, with
        ``Config.redirect_uri`` and ``Config.secrets_uri``: amoCRM makes a new integration for
        each installing account and posts its credentials to ``secrets_uri``
        (``receive_secrets``) before the code redirect.

        Args:
            connection_id: as for ``begin()``.
            binding, browser_binding: as for ``begin()``.
            metadata: the integration amoCRM makes (name, description, scopes, logo);
                required in metadata mode, refused without it.
            title: the button's text (amoCRM's default when None); no ``<``.
            compact: True for the logo alone, without the text.
            class_name: the class the script gives the button it draws.
            color: amoCRM's button color: ``default``, ``blue``, ``violet``, ``green``,
                ``orange`` or ``red``.
            theme, locale: Kommo's button only (e.g. ``dark``, ``en``).
            error_callback: the name (or dotted path) of the page's JavaScript function the
                script calls when the user refuses access, e.g. ``handleOauthError``.

        Returns:
            ``SiteButton(html, state, expires_at, binding)``: keep ``binding`` in the browser
            (an ``HttpOnly`` cookie), as for ``begin()``, and put ``html`` on the page.

        Raises:
            ValueError: ``connection_id`` as for ``begin()``; ``metadata`` missing in
                metadata mode or given without it; an empty metadata name or description;
                scopes not names of ``[a-z_]`` (or one string instead of a tuple); a logo that
                is not an https URL; a value the script sends in the consent URL (name,
                description, the two URIs, the client id) holding ``&``, ``#``, ``%``, ``+``
                or a control character, as the script sends it unencoded; a title with ``<``,
                which the script writes as markup; a color amoCRM has not; ``theme`` or
                ``locale`` for amoCRM's button; an ``error_callback`` that is not a JavaScript
                name or dotted path, as the script evaluates it. Each is checked before the
                store is read.
        """
        flow = self._flows.codes.site_button(
            connection_id,
            binding=binding,
            browser_binding=browser_binding,
            metadata=metadata,
            title=title,
            compact=compact,
            class_name=class_name,
            color=color,
            theme=theme,
            locale=locale,
            error_callback=error_callback,
        )
        return self._run(flow)

    def receive_secrets(self, form: QueryLike) -> SecretsResult:
        """Metadata mode (``Config.secrets_uri``): keep the ``client_id`` and ``client_secret``
        amoCRM posted to ``secrets_uri`` with the consent's ``state`` (protocol notes §7: a
        new integration per installing account, posted server to server before the code
        redirect), with the connection that state names, until that consent's code is claimed.

        Only ``client_id``, ``client_secret`` and ``state`` are read (any other field is
        ignored). amoCRM signs nothing of this post: the state, signed by ``begin()`` or
        ``site_button()`` under ``Config.state_secret`` (or one of ``previous_state_secrets``)
        and carrying its connection encrypted, is the only authority. The credentials go into
        the connection's record in one compare-and-set write (encrypted at rest with the
        store's ``encryption``), kept per (state, client id): a retried install's new
        integration, posted under the same state, is kept beside the first (the code redirect
        names its client id and takes its own), up to ``MAX_PENDING_CREDENTIALS`` (4) per
        record, never evicting the consent's own; once the code is claimed, and for the same
        post again, nothing changes. The post only reads the store's ledger
        (``client:<client_id>``): the entry that routes a redirect or a hook bringing that id is
        written once amoCRM accepted a code exchanged with these credentials.

        Args:
            form: the post's fields: a mapping (of ``str``, or of one-item lists), a
                multi-dict, or (name, value) pairs, as the web layer read them from a form or
                JSON body.

        Returns:
            ``SecretsResult``: the connection (no secret) and ``stored``, True when this call
            wrote the credentials, False when nothing changed.

        Raises:
            CallbackRejected: nothing changed: ``malformed`` (a field missing, repeated, not
                text, too long; a client id that is not printable ASCII of at most 255
                characters; a secret not printable or over 2048), ``bad_state`` (forged,
                unsigned, a fixed-mode state without a connection, or any post to a service
                without ``secrets_uri``), ``expired_state``,
                ``clock_skew`` (signed more than ``MAX_CLOCK_SKEW`` ahead of the store's
                clock), ``client_id_mismatch`` (the ledger names another connection for that
                client id, or the record holds it with another secret: amoCRM makes a new
                integration per install), ``rate_limited`` (the consent's four places are
                taken: an install retried more than three times needs a fresh button).
            StoreError: the store failed; the post may be retried.
        """
        return self._run(self._flows.codes.receive_secrets(form))

    def issue_ticket(self, connection_id: str) -> str:
        """A single-use ticket (``Config.ticket_ttl``, a minute) for a mobile app to open
        ``/connect?ticket=...`` in its in-app browser, which has no app session. Opaque and
        secret; writes nothing."""
        return self._flows.codes.issue_ticket(connection_id)

    def redeem_ticket(self, ticket: str, *, connection_id: str | None = None) -> str:
        """The connection id of a ticket, which is used up.

        Args:
            ticket: from ``issue_ticket()``, as the in-app browser brought it.
            connection_id: who is signed in on that browser, if anyone: a ticket of another
                connection is then refused (a forwarded ticket must not win over a session).

        Raises:
            CallbackRejected: ``bad_ticket``, ``expired_ticket``, ``used_ticket``, or
                ``wrong_browser`` (another user signed in; the ticket stays unused).
        """
        return self._run(self._flows.codes.redeem_ticket(ticket, connection_id))

    def ledger_holds(self, entry: str) -> bool:
        """Whether the store's single-use ledger holds ``entry`` for a connection of this
        integration (its namespace, ``Config.client_id``): what the web layer routes a request
        of several integrations by (``amo_oauth.web.Integrations``). One store read; writes
        nothing.

        Args:
            entry: a ledger key: ``code:<sha256 hex of a code>`` (a code claimed here, kept a
                day: ``CODE_MEMORY``), or ``client:<client id>`` (a per-connection client id
                of metadata mode, written by ``receive_secrets``; protocol notes §7).

        Returns:
            True when the entry's holder is a record key of this integration; False when it is
            absent, expired, or held for another integration.

        Raises:
            StoreError: the store could not be read.
        """
        return self._run(self._ledger_holds(entry))

    def handle_callback(
        self,
        query: QueryLike,
        *,
        connection_id: str | None = None,
        binding: str | None = None,
        source: str | None = None,
    ) -> CallbackResult:
        """Handle amoCRM's redirect back (``code``, ``state``, ``referer``; or ``error``).

        The code is exchanged at most once, whatever arrives twice and however many workers
        race; a code seen before is a no-op that reports the current status.

        A NEW code is exchanged only in the browser that started the consent: with the
        ``binding`` that ``begin()`` returned (or, for a state begun with
        ``browser_binding=False``, with ``connection_id`` of the signed-in user matching).
        Otherwise it is refused (``wrong_browser``) and nothing is written. A code seen before
        is still answered without either (a reload of the page, a replay).

        Args:
            query: the redirect's query parameters.
            connection_id: who is signed in on the browser that brought the redirect, when the
                app knows: a state issued to another connection is then refused
                (``bad_state``).
            binding: the browser's binding (its cookie), as ``begin()`` returned it.
            source: who sent the redirect, for the per-source bound on code exchanges
                (``Config.max_exchanges_per_source``): the web layer passes ``user:<id>`` of
                the signed-in user, else ``addr:<client network>``. A callback whose binding
                (or session) the state names counts as ``user:<its connection id>`` whatever
                is passed; None elsewhere (a widget install): a suspect source, held to half
                of the shared bounds.

        Returns:
            ``CallbackResult(outcome, connection, duplicate)``.

        Raises:
            CallbackRejected: ``bad_state``, ``expired_state``, ``reused_state``,
                ``wrong_browser``, ``missing_code``, ``missing_referer``, ``foreign_host``,
                ``widget_installs_disabled``, ``rate_limited`` or ``malformed``. Nothing
                changed.
        """
        return self._run(self._flows.codes.handle_callback(query, connection_id, binding, source))

    def exchange_code(
        self,
        connection_id: str,
        code: str,
        *,
        referer: str | None = None,
        state: str | None = None,
        exchange_new: bool = True,
        binding: str | None = None,
        source: str | None = None,
    ) -> CallbackResult:
        """The legacy path: an app posts the code it got. Same rules, idempotent.

        A code already exchanged returns the current status (``ALREADY_CONNECTED``,
        ``duplicate=True``), never an error. A new code is exchanged only with the ``state`` of
        its consent, issued to this connection (amoCRM has no PKCE: the state is all that ties a
        code to a user); without one it is refused (``new_code_refused``), since whoever holds
        a code of someone else's consent could otherwise bind that account here. With a state
        bound to a browser, a new code also needs that browser's ``binding`` (else
        ``wrong_browser``). Refusals write nothing and send nothing; a connected connection
        stays as it is.

        Args:
            connection_id: the application's key for the connection.
            code: the authorization code.
            referer: the account host; needed for a new code unless the connection has one.
            state: the state that came with the code, if the app has it.
            exchange_new: False to answer known codes only and refuse every new one (what the
                web layer's ``POST /exchange-code`` does: no browser is bound to it).
            binding: the binding ``begin()`` returned, for a state bound to a browser.
            source: as ``handle_callback``'s.

        Raises:
            CallbackRejected: as ``handle_callback``, and ``new_code_refused``.
            ValueError: ``connection_id`` is empty, over 255 characters, unprintable or a
                ``Widget``.
        """
        flow = self._flows.codes.exchange_code(
            connection_id, code, referer, state, exchange_new, binding, source
        )
        return self._run(flow)

    def connect_with_code(
        self, connection_id: ConnectionId, code: str, host: str
    ) -> CallbackResult:
        """Connect with an authorization code an admin copied from the integration's "Keys and
        scopes" tab in amoCRM (valid 20 minutes, single use; protocol notes §3, §8).

        A server-side call for a code your admin pastes into your backend: never expose it on a
        web route (anyone who can post a code to it binds that account to the connection).
        The code is exchanged like a callback's, with the integration's ``redirect_uri``:
        claimed once in the store's code ledger, sent to amoCRM at most once across every
        thread, process and machine sharing the store, the pair verified with
        ``GET /api/v4/account`` (in its slot of the API's pace; during a pause amoCRM asked
        for, the verification is deferred, as after a transient failure: docs/api-pace.md).
        The same code again answers the connection's status
        (``ALREADY_CONNECTED``, ``duplicate=True``) and sends nothing; a new code for a
        connected connection re-authorizes it.

        Args:
            connection_id: the application's key for the connection, or ``Widget(host)``.
            code: the code as the tab shows it.
            host: the account host (``example.amocrm.ru``, ``example.kommo.com``): where the
                code is sent, through the allowlist (``Config.extra_domains``); any case, an
                ``https://`` prefix and a trailing ``/`` are accepted, a path, port or
                userinfo is not.

        Returns:
            The ``CallbackResult``: ``CONNECTED``; ``FAILED`` with ``refused`` naming why
            (``code_rejected`` for a mistyped, spent or expired code; ``exchange_interrupted``
            for a 5xx or a timeout: its fate unknown, it is never sent again). A connection
            that was connected stays connected with its tokens (served meanwhile too);
            another gets the same reason as its error. A report of the connection for a code
            seen before.

        Raises:
            CallbackRejected: ``foreign_host`` / ``missing_referer`` (no allowed host),
                ``missing_code`` / ``malformed``, ``code_used_elsewhere`` (the ledger holds
                the code for another connection, also when that one won a race for it: this
                connection unchanged), ``rate_limited``; nothing written or sent.
            ValueError: not a valid connection id (see ``status``).
            StoreError: the store failed.
        """
        return self._run(self._flows.codes.connect_with_code(connection_id, code, host))

    def connect_long_lived(self, connection_id: ConnectionId, token: str, host: str) -> Connection:
        """Connect with a long-lived token an admin issued in the integration's "Keys and
        scopes" tab (a JWT valid 1 day to 5 years, no refresh token; protocol notes §8).

        The token is checked with ``GET /api/v4/account`` on ``host`` before anything is
        written (that check waits for its slot of the API's pace, docs/api-pace.md); then it is
        stored (encrypted at rest where the store was given ``encryption=``) in one versioned
        write that replaces what the connection held, and the connection is ``connected``.
        ``host`` may be typed as a person writes it (any case, ``https://``, a trailing ``/``);
        a path, port or userinfo is refused ``foreign_host``. Its expiry
        is the JWT's ``exp`` claim, read without verifying the signature (a client cannot): it
        only schedules, amoCRM's 401 decides. ``access_token`` and ``auth`` serve it like any
        token until then; nothing ever refreshes it. A 401 from amoCRM, or reaching ``exp``,
        moves the connection to ``error`` (``long_lived_token_revoked`` /
        ``long_lived_token_expired``, hint "ask your amoCRM admin for a new token");
        ``refresh_due`` lists those expiring inside its window in ``expiring_long_lived``.
        The token never appears in a log, a repr or an error.

        Args:
            connection_id: the application's key for the connection, or ``Widget(host)``.
            token: the long-lived token.
            host: the account host the token belongs to, through the allowlist.

        Returns:
            The connection, ``connected``, with the verified account; ``expires_at`` is the
            token's ``exp`` (UTC).

        Raises:
            CallbackRejected: ``foreign_host``; ``malformed`` (not a JWT with a numeric
                ``exp``: nothing sent); ``long_lived_token_expired`` (its ``exp`` has passed:
                nothing sent); ``token_refused`` (amoCRM answered 401, or for another
                account). Nothing is written.
            TryAgainLater: ``exchange_in_progress``: a code exchange of this connection is
                still in flight after ``settle_timeout``; nothing written. ``api_paused``
                (with ``retry_after``, seconds): amoCRM paused the host's requests (a 429 or
                403, docs/api-pace.md); nothing sent, nothing written.
            ProviderError: amoCRM did not answer, or refused otherwise (a blocked or unpaid
                account, 5xx: ``transient``); nothing written.
            ValueError: not a valid connection id (see ``status``).
            StoreError: the store failed.
        """
        return self._run(self._flows.tokens.connect_long_lived(connection_id, token, host))

    def status(self, connection_id: ConnectionId) -> Connection:
        """The connection as stored now (``disconnected`` when unknown).

        A long-lived token past its ``exp`` (UTC, the store's clock; protocol notes §8) is
        reported ended: this read writes ``error(long_lived_token_expired)``, as
        ``access_token`` would, once; otherwise a pending verification, when due, is the only
        thing a status read may write.

        Args:
            connection_id: an app user's id, or ``Widget(account_host)`` for a widget install
                (``CallbackResult.connection.widget``); the two never name the same record.

        Raises:
            ValueError: a ``str`` that is empty, over 255 characters or unprintable, or a
                ``Widget`` of a host outside the allowlist (``Config.extra_domains``).
            StoreError: the store could not be read, or refused the write that ends a
                long-lived token past its ``exp`` (or a due verification's).
        """
        return self._run(self._flows.connections.status(connection_id))

    def access_token(self, connection_id: ConnectionId) -> str:
        """A valid access token, refreshed first when it is about to expire.

        At most one refresh runs per connection across every thread and process sharing the
        store; the others wait for it and use its token.

        Args:
            connection_id: an app user's id, or ``Widget(account_host)`` (see ``status``).

        Raises:
            ValueError: not a valid connection id (see ``status``).
            ReauthorizationRequired: the connection has no usable tokens.
            TryAgainLater: another worker's refresh outlasted ``settle_timeout``
                (``refresh_in_progress``), a pair another process keeps in memory is awaited
                (``kept_pair_pending``), or a new connection's verification was deferred.
            ProviderError: amoCRM could not be reached (``transient``), or refused the refresh.
            StoreError: the store failed (a rotated pair it refused is kept and lands later).
        """
        return self._run(self._flows.tokens.access_token(connection_id))

    def auth(self, connection_id: ConnectionId) -> ConnectionAuth:
        """An ``httpx.Auth`` sending this connection's bearer token, only to ``https`` requests
        to the connection's own account host (else ``TokenScopeError``, nothing sent); on a 401
        from that host it refreshes once and retries once.

        Paced (``Config.api_rate``, 7 requests per second per account host in this process; a
        request waits at most ``Config.api_max_wait``, 2 s): a 429 pauses the host for its
        ``retry_after`` and is resent once when the pause ends within ``api_max_wait``; until
        the pause ends, requests to the host raise ``TryAgainLater`` (``api_paused``) without
        being sent (docs/api-pace.md).

        Args:
            connection_id: an app user's id, or ``Widget(account_host)`` (see ``status``).

        Raises:
            ValueError: not a valid connection id (see ``status``), raised here, not at the
                first request.
        """
        self._flows.records.fresh(connection_id)  # a bad id fails here, not at the first request
        return ConnectionAuth(
            token=lambda stale: self._run(self._flows.tokens.api_token(connection_id, stale)),
            pace=self._pace,
        )

    def disconnect(self, connection_id: ConnectionId) -> Connection:
        """Forget the connection's tokens and account: it becomes ``disconnected``.

        Args:
            connection_id: an app user's id, or ``Widget(account_host)`` (see ``status``).

        Raises:
            ValueError: not a valid connection id (see ``status``).
        """
        return self._run(self._flows.connections.disconnect(connection_id))

    def handle_disconnect_hook(self, query: QueryLike) -> HookResult:
        """amoCRM's uninstall hook: every connection of that account loses its tokens.

        A connection is disconnected only when amoCRM refuses its tokens (a hook URL never
        expires, so a replayed one must change nothing), and amoCRM is asked at most once per
        account in each ``Config.hook_check_interval`` (60 s), across every process sharing
        the store: replays in between are answered without an API call (``hook_paced``).
        Its checks take their slots of the API's pace as ``auth()``'s requests do; a paused or
        busy host changes nothing (``provider_unavailable``).

        Returns:
            A ``HookResult``: the tuple of the account's connections as they now are, with
            ``disconnected`` (those this call disconnected), ``checked`` (amoCRM was asked) and
            ``reason`` (why nothing was disconnected). Idempotent: a repeated hook changes
            nothing more.

        Raises:
            CallbackRejected: ``bad_signature`` or ``malformed``; nothing changed.
        """
        flow = self._flows.connections.handle_disconnect_hook(query)
        return drive(
            self._flows.records.landing(flow), lambda op: self._perform(op, self._hook_turn)
        )

    def on(self, kind: type[E], callback: Callable[[E], object]) -> Callable[[], None]:
        """Call ``callback(event)`` for every lifecycle event of class ``kind`` (or a subclass:
        ``LifecycleEvent`` hears them all) that a write of this service makes (docs/events.md).

        The callback runs in the thread that made the write, right after the store took it,
        before the call that wrote returns; never for a write that lost its compare-and-set or
        for a duplicate that wrote nothing. That thread may be any of the app's and, during
        ``refresh_due``, one of the sweep's workers, several at once: the callback must be
        thread-safe. An exception it raises is logged (ERROR, logger
        ``amo_oauth``) and never fails the call. Delivery is at most once per write: a process
        that dies between the write and the callback loses the event; ``status()`` and
        ``refresh_due`` are how an application catches up.

        Args:
            kind: ``Connected``, ``ReauthorizationNeeded``, ``DisconnectedByProvider``,
                ``AccountHostChanged``, ``LongLivedTokenExpiring`` or ``LifecycleEvent``.
            callback: a plain function taking the event; keep it short (it holds up the call
                that wrote: hand slow work, such as sending an email, to a queue).

        Returns:
            A function that unregisters the callback.

        Raises:
            TypeError: ``kind`` is not a lifecycle event class, ``callback`` is not callable,
                or it is an ``async def`` function (a blocking service cannot await it: use
                ``AsyncAmoOAuth``).
        """
        if is_async_callable(callback):
            raise TypeError(
                "AmoOAuth cannot await an async callback; pass a plain function, or use"
                " AsyncAmoOAuth.on()"
            )
        return self._subscribers.add(kind, callback)

    def refresh_due(
        self,
        within: timedelta = timedelta(days=7),
        limit: int | None = None,
        *,
        concurrency: int = 16,
        per_host_rate: float | None = None,
        progress: Callable[[SweepProgress], None] | None = None,
    ) -> RefreshReport:
        """The keep-alive sweep: refresh every connection whose REFRESH token expires within
        ``within`` from now.

        amoCRM revokes a refresh token three months (90 days) after it was issued or last
        used, so an idle connection dies unless it is refreshed; run this daily (``amo-oauth
        refresh-due``). Access tokens are not the criterion: ``access_token()`` refreshes
        those when they are used.

        The due records are read page by page (a keyset cursor on the refresh-token expiry
        and key), so memory stays flat however many connections there are, and each record
        due when the run starts is handled at most once. Refreshes run in up to
        ``concurrency`` worker threads; requests to one account host are spaced so that at
        most ``per_host_rate`` go out per second, on the host's one schedule that ``auth()``
        and the hook use too (process-local; a host whose API amoCRM paused with a 429 is left
        for a later run: its connections are reported ``api_paused``, nothing sent).
        Each refresh is the usual single-flight one: several machines may sweep at once.

        Args:
            within: the window (a ``timedelta``); records expiring before now + ``within`` are
                due. Over 90 days every pair is due, even one refreshed by this very run: the
                run then keeps the keys it refreshed in memory to refresh each once.
            limit: at most this many due records are handled (the soonest); None (the
                default): every due record. The report counts those left (``remaining``).
                Another integration's records in a shared store count in neither: they are
                skipped (``skipped``), nothing sent.
            concurrency: refreshes in flight at once, >= 1.
            per_host_rate: requests per second to one account host, > 0; None (the default):
                ``Config.api_rate`` (amoCRM allows 7; 7 when the pace is off).
            progress: called in this thread after each connection with a ``SweepProgress``.

        Returns:
            A ``RefreshReport``: refreshed, failed (with reasons, ``refresh_backoff`` for a
            connection amoCRM pushed back on: nothing is sent for it before its back-off
            lapses), needing re-authorization, and how many due records a ``limit`` left.

        Raises:
            TypeError: ``within`` is not a ``timedelta``, or ``limit`` is not an int or None.
            ValueError: ``limit`` < 0, ``concurrency`` < 1, or ``per_host_rate`` <= 0.
            StoreError: a page of due records could not be read (after the refreshes in
                flight finish). A refresh that fails is reported, not raised.
        """
        rate = self._sweep_rate(per_host_rate)
        now = self._flows.records.now()
        plan = SweepPlan.make(now, within, limit, concurrency, rate, self.config.client_id)

        turn = self._sweep_turn(plan.per_host_rate)

        def paced(op: Op) -> Any:
            return self._perform(op, turn)

        def read(after: DueCursor | None, size: int) -> list[ConnectionRecord]:
            return self._run(self._flows.records.due_page(plan.before, size, after))

        def refresh(record: ConnectionRecord) -> Done:
            if self._sweep_skips(record):
                return Done(record.name, Reason.API_PAUSED)
            flow = self._flows.tokens.refresh_one(RecordView(record), plan.before)
            return drive(self._flows.records.landing(flow), paced)

        mark = self._flows.records.landings()
        try:
            report = sweep(plan, read, refresh, progress)
        except BaseException:
            self._run(self._flows.records.store_kept_patiently())
            raise
        self._run(self._flows.records.store_kept_patiently())
        # Pairs refused during the sweep land by any call or the background retry: each counts.
        return with_stored(report, self._flows.records.landed_after(mark))

    def close(self) -> None:
        """Stop the background retry of kept pairs, store the pairs the store refused earlier
        if it takes them now (else say which are lost), then close the http client if this
        object made it, and the store."""
        # A try in flight ends with its store call: bounded by the store's timeout, and a
        # lease (no pair is worth more waiting: its grace is two).
        self._kept_retry.stop(self.config.lease_ttl.total_seconds())
        self._run(self._flows.records.store_kept_at_close())
        if self._owns_http:
            self.http.close()
        self._store.close()

    def __enter__(self) -> AmoOAuth:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, flow: Generator[Op, Any, T]) -> T:
        return drive(self._flows.records.landing(flow), self._perform)

    def _perform(self, op: Op, turn: Turn | None = None) -> Any:
        """Run one operation of a flow. A ``Send`` first takes its slot of the API's pace by
        ``turn`` (else ``_check_turn``: only requests to an account host's API are paced),
        waits for it and looks at the pause again; a 429 or 403 to a paced one pauses the host.
        """
        if isinstance(op, StoreOp):
            with self._metrics.store_call(op):
                return op.run(self._store)
        if isinstance(op, Emit):
            self._subscribers.deliver(op.event)
            return None
        if isinstance(op, Send):
            slot = (turn or self._check_turn)(op.request)
            sending = self._pace.pacer.wait_for(slot)  # TryAgainLater into the flow: not sent
            sent_at = self._pace.pacer.clock()
            try:
                with self._metrics.token_call(op.request) as answered:
                    # http_timeout bounds the whole call, connect to last byte
                    response = send_within(self.http, op.request, self.config.http_timeout)
                    answered(response)
            finally:  # answered or failed: its place in the host's window ages from now
                self._pace.pacer.leave(sending)
            if slot is not None:
                self._note(op.request, response, sent_at)
            return response
        time.sleep(op.seconds)
        return None
