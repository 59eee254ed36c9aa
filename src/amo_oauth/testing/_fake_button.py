"""The site button's metadata-mode install, played by a `FakeAmoCRM` (protocol notes §7).

`FakeSiteButton` is the documented public face: an install without a browser (sync and async),
the credentials post alone (a late, repeated or forged one), and the served pages' installer.
The credentials are posted outside the fake's lock: the backend answering them may call the
fake meanwhile.
"""

from __future__ import annotations

import httpx

from ._accounts import FakeAccount, FakeIntegration
from ._consent import install_url
from ._core import Core
from ._directory import AccountRef
from ._site_button import (
    SecretsPost,
    SiteButtonInstall,
    apost_secrets,
    post_secrets,
    reachable_problem,
    uri_problem,
)


class FakeSiteButton:
    """The site-button half of `FakeAmoCRM`'s public methods (see `FakeAmoCRM`)."""

    _core: Core
    secrets_transport: httpx.BaseTransport | None

    def install_site_button(
        self,
        account: AccountRef | None = None,
        *,
        redirect_uri: str,
        secrets_uri: str,
        state: str,
        transport: httpx.BaseTransport | None = None,
        attempts: int = 1,
        post_credentials: bool = True,
    ) -> SiteButtonInstall:
        """Install a product through its site button in metadata mode (§7), without a browser.

        Each attempt creates a NEW integration (a fresh client id and secret, registered with
        `redirect_uri`) and POSTs its `client_id`, `client_secret` and `state`, form-encoded
        (amoCRM documents no encoding, [I]), to `secrets_uri`. amoCRM wants exactly 200 back
        (§7): when the last post is answered otherwise (or not at all) no code is issued and
        `redirect_url` is None. Otherwise a fresh code (20 minutes, single use) for the last
        integration and `account`, redeemable only with that integration's credentials.

        Args:
            account: the installing account (default: the default account).
            redirect_uri: the button's `data-redirect_uri`: the code redirect's target.
            secrets_uri: the button's `data-secrets_uri`: where the credentials go.
            state: the button's `data-state`, posted and redirected with.
            transport: what the post travels through, e.g. `httpx.WSGITransport(app=...)`;
                None: real HTTP, to a loopback `secrets_uri` only.
            attempts: how many times the user installed (a retry: 2): each makes and posts
                its own integration under the same state; the redirect names the last.
            post_credentials: False: post nothing now; `post_site_button_secrets` posts later
                (after the redirect was delivered) or never.

        Returns:
            What the install did (its `redirect_url` is `{redirect_uri}?code=&state=&referer=
            {account host}&client_id={new}&platform=`).

        Raises:
            ValueError: a URL is neither https nor http on loopback (§7 wants https), an empty
                state, `attempts` < 1, or `secrets_uri` unreachable without a transport.
            KeyError: no such account.
        """
        handle = self._install_account(account, redirect_uri, secrets_uri, state, attempts)
        if post_credentials:
            _refuse(reachable_problem(secrets_uri, transport))
        made, posts = [], []
        for _ in range(attempts):
            made.append(self._button_integration(redirect_uri))
            if post_credentials:
                sent = post_secrets(secrets_uri, made[-1], state, transport)
                posts.append(self._noted(sent))
        return self._installed(handle, made, secrets_uri, state, posts)

    async def ainstall_site_button(
        self,
        account: AccountRef | None = None,
        *,
        redirect_uri: str,
        secrets_uri: str,
        state: str,
        transport: httpx.AsyncBaseTransport | None = None,
        attempts: int = 1,
        post_credentials: bool = True,
    ) -> SiteButtonInstall:
        """The async twin of `install_site_button`: the post travels through an async
        `transport`, e.g. `httpx.ASGITransport(app=...)`. Same arguments, result and errors."""
        handle = self._install_account(account, redirect_uri, secrets_uri, state, attempts)
        if post_credentials:
            _refuse(reachable_problem(secrets_uri, transport))
        made, posts = [], []
        for _ in range(attempts):
            made.append(self._button_integration(redirect_uri))
            if post_credentials:
                sent = await apost_secrets(secrets_uri, made[-1], state, transport)
                posts.append(self._noted(sent))
        return self._installed(handle, made, secrets_uri, state, posts)

    def post_site_button_secrets(
        self,
        install: SiteButtonInstall,
        *,
        transport: httpx.BaseTransport | None = None,
        state: str | None = None,
    ) -> tuple[SecretsPost, ...]:
        """POST the credentials of every integration `install` made to its `secrets_uri`,
        as the install does: late (after its redirect), again (a replay), or under another
        `state` (a forgery). Issues nothing; the posts join `secrets_posts`.

        Args:
            transport: as for `install_site_button`.
            state: the state to post; default: the install's own.

        Raises:
            ValueError: `secrets_uri` unreachable without a transport.
        """
        _refuse(reachable_problem(install.secrets_uri, transport))
        posted = install.state if state is None else state
        return tuple(
            self._noted(post_secrets(install.secrets_uri, made, posted, transport))
            for made in install.integrations
        )

    async def apost_site_button_secrets(
        self,
        install: SiteButtonInstall,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        state: str | None = None,
    ) -> tuple[SecretsPost, ...]:
        """The async twin of `post_site_button_secrets`."""
        _refuse(reachable_problem(install.secrets_uri, transport))
        posted = install.state if state is None else state
        return tuple(
            [
                self._noted(await apost_secrets(install.secrets_uri, made, posted, transport))
                for made in install.integrations
            ]
        )

    def _served_install(
        self, account: FakeAccount, redirect_uri: str, secrets_uri: str, state: str
    ) -> SiteButtonInstall:
        """ "Allow" on the served install page: posted through `secrets_transport`."""
        return self.install_site_button(
            account,
            redirect_uri=redirect_uri,
            secrets_uri=secrets_uri,
            state=state,
            transport=self.secrets_transport,
        )

    # -- the steps both twins share --------------------------------------------------------

    def _install_account(
        self,
        account: AccountRef | None,
        redirect_uri: str,
        secrets_uri: str,
        state: str,
        attempts: int,
    ) -> FakeAccount:
        _refuse(
            uri_problem("redirect_uri", redirect_uri) or uri_problem("secrets_uri", secrets_uri)
        )
        if not state:
            raise ValueError("a site button install carries a state")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        with self._core.lock:
            return self._core.directory.account(account)

    def _button_integration(self, redirect_uri: str) -> FakeIntegration:
        with self._core.lock:
            return self._core.directory.add_button_integration(redirect_uri)

    def _noted(self, post: SecretsPost) -> SecretsPost:
        with self._core.lock:
            self._core.tally.secrets_posts.append(post)
        return post

    def _installed(
        self,
        account: FakeAccount,
        made: list[FakeIntegration],
        secrets_uri: str,
        state: str,
        posts: list[SecretsPost],
    ) -> SiteButtonInstall:
        # §7: only a 200 to the last post lets the popup go on to the code redirect.
        url = None
        if not posts or posts[-1].accepted:
            with self._core.lock:
                code = self._core.grants.new_code(account, made[-1])
            url = install_url(code, account, made[-1], state)
        return SiteButtonInstall(account, tuple(made), secrets_uri, state, tuple(posts), url)


def _refuse(problem: str | None) -> None:
    if problem is not None:
        raise ValueError(problem)
