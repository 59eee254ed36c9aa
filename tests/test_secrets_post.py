"""The site button's metadata mode (issue 22, items 1 and 2): a state that carries its connection
encrypted, and amoCRM's post of a new integration's credentials to ``secrets_uri``.

amoCRM posts ``client_id``, ``client_secret`` and ``state`` server to server (protocol notes
§7): the signed state is the only authority. The credentials wait in the connection's record
(encrypted at rest where the store has a key) until the consent's code is claimed; the same
post again, and any post after the claim, changes nothing; refusals write nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from _backends import Backend
from _pg_server import postgres_url  # noqa: F401
from _redis_server import redis_url  # noqa: F401
from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    ButtonMetadata,
    CallbackRejected,
    ConnectionStatus,
    SecretsResult,
    SiteButton,
    Store,
    Widget,
)
from amo_oauth._events import CredentialsReceived
from amo_oauth._lifecycle import NoOp, step
from amo_oauth._records import (
    MAX_PENDING_CREDENTIALS,
    ClientCredentials,
    ConnectionRecord,
    PendingCredentials,
    code_digest,
    record_key,
)
from amo_oauth._state_token import (
    MAX_CLOCK_SKEW,
    StateClaims,
    issue_state,
    read_state,
    seal_connection,
)
from amo_oauth.testing import FakeAmoCRM, FakeClock
from test_duplicate_commits import Commits

from helpers import config_for
from strategies import T0

#: The button a metadata-mode consent starts from (begin() has no consent URL there).
META = ButtonMetadata("Shop sync", "Syncs orders")
USER = "user-1"
SECRETS_URI = "https://app.example.com/amo/secrets"
METADATA = {"client_secret": None, "secrets_uri": SECRETS_URI}
#: What amoCRM posts for a new integration (its ids are UUIDs, its secrets 64 characters).
FIRST = ClientCredentials("3f1a9c0e-0000-4000-8000-000000000001", "S3CRET-first-" + "a" * 51)
SECOND = ClientCredentials("3f1a9c0e-0000-4000-8000-000000000002", "S3CRET-second-" + "b" * 50)
SECRET_MARK = "S3CRET"


def form(credentials: ClientCredentials, state: str, **extra: object) -> dict[str, object]:
    return {
        "client_id": credentials.client_id,
        "client_secret": credentials.client_secret,
        "state": state,
        **extra,
    }


def claims_of(oauth: Any, state: str) -> StateClaims:
    return read_state(oauth.config.accepted_state_secrets, state)


def stored(oauth: Any, connection_id: str = USER) -> ConnectionRecord:
    record = oauth.store.load(record_key(oauth.config.client_id, connection_id)).record
    assert record is not None
    return record


def version(oauth: Any, connection_id: str = USER) -> int:
    found = oauth.store.load(record_key(oauth.config.client_id, connection_id)).record
    return 0 if found is None else found.version


@pytest.fixture
def metadata_oauth(
    backend: Backend, make_oauth: Callable[..., AmoOAuth]
) -> tuple[AmoOAuth, Commits]:
    """A metadata-mode service on each store, and the store's commits counted."""
    store = backend.open()
    commits = Commits(store)
    return make_oauth(store=store, **METADATA), commits


# -- the state carries the connection, encrypted ------------------------------------------------

KEY = b"k" * 32


def test_a_metadata_state_carries_its_connection_unreadable(make_oauth) -> None:
    oauth = make_oauth(**METADATA)
    state = oauth.site_button("alice@example.com", metadata=META).state
    claims = claims_of(oauth, state)
    assert claims.connection() == "alice@example.com"
    assert "sealed_connection" not in repr(claims) and "alice" not in repr(claims)
    payload = state.split(".")[1]
    body = json.loads(_unb64(payload))
    assert set(body) == {"h", "b", "n", "i", "e", "v", "c", "k"}  # k: its integration, keyed
    assert "alice" not in json.dumps(body) and "alice" not in _unb64(body["c"]).decode("latin-1")


def _unb64(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_a_fixed_mode_state_is_unchanged_and_names_no_connection(oauth: AmoOAuth) -> None:
    state = oauth.begin(USER).state
    body = json.loads(_unb64(state.split(".")[1]))
    assert set(body) == {"h", "b", "n", "i", "e", "v", "k"}  # no c (k: its integration)
    with pytest.raises(CallbackRejected, match="bad_state"):
        claims_of(oauth, state).connection()


@pytest.mark.parametrize("connection", ["u", "x" * 255, "user:with:colons", Widget("a.amocrm.ru")])
def test_the_sealed_connection_round_trips(connection: object) -> None:
    name = connection.host if isinstance(connection, Widget) else connection
    token, claims = issue_state(
        KEY, name, T0, timedelta(minutes=30), carry_connection=True, namespace="ns"
    )  # type: ignore[arg-type]
    if isinstance(connection, Widget):  # issue_state seals app users; a widget seals the same way
        sealed = seal_connection(KEY, connection, claims.nonce)
        claims = StateClaims(
            claims.id_hash,
            claims.binding_hash,
            claims.nonce,
            claims.issued_at,
            claims.expires_at,
            signed_with=KEY,
            sealed_connection=sealed,
        )
    else:
        assert read_state([KEY], token).connection() == connection
    assert claims.connection() == connection


def test_a_sealed_connection_opens_only_under_its_secret_and_its_state() -> None:
    _, claims = issue_state(
        KEY, USER, T0, timedelta(minutes=30), carry_connection=True, namespace="ns"
    )
    other_secret = StateClaims(
        claims.id_hash,
        claims.binding_hash,
        claims.nonce,
        claims.issued_at,
        claims.expires_at,
        signed_with=b"o" * 32,
        sealed_connection=claims.sealed_connection,
    )
    other_state = StateClaims(
        claims.id_hash,
        claims.binding_hash,
        "another-nonce",
        claims.issued_at,
        claims.expires_at,
        signed_with=KEY,
        sealed_connection=claims.sealed_connection,
    )
    for moved in (other_secret, other_state):
        with pytest.raises(CallbackRejected, match="bad_state"):
            moved.connection()


def test_a_connection_too_long_for_a_state_is_refused_when_issued() -> None:
    wide = "\U0001f600" * 255  # 4 bytes each in UTF-8: the sealed value outgrows a state
    with pytest.raises(ValueError, match="too long"):
        issue_state(KEY, wide, T0, timedelta(minutes=30), carry_connection=True, namespace="ns")


# -- the table ------------------------------------------------------------------------------------


def received(credentials: ClientCredentials, nonce: str = "nonce-1", holder: str | None = None):
    return CredentialsReceived(code_digest(nonce), credentials, T0, holder)


@pytest.mark.parametrize("status", list(ConnectionStatus))
def test_credentials_wait_beside_any_status(status: ConnectionStatus) -> None:
    record = ConnectionRecord(USER, status=status)
    done = step(record, received(FIRST), T0)
    assert done.changed and done.record.status is status
    assert done.record.pending_credentials == (
        PendingCredentials(code_digest("nonce-1"), FIRST, T0),
    )


@pytest.mark.parametrize("holder", ["denied", code_digest("the-code")])
def test_a_settled_consent_takes_no_credentials(holder: str) -> None:
    record = ConnectionRecord(USER)
    assert step(record, received(FIRST, holder=holder), T0).noop is NoOp.CREDENTIALS_SETTLED


def test_the_same_credentials_again_change_nothing_and_new_ones_are_kept_beside() -> None:
    record = step(ConnectionRecord(USER), received(FIRST), T0).record
    assert step(record, received(FIRST), T0).noop is NoOp.CREDENTIALS_UNCHANGED
    beside = step(record, received(SECOND), T0).record
    assert [p.credentials for p in beside.pending_credentials] == [FIRST, SECOND]


#: FIRST's client id with a secret amoCRM never gave it.
IMPOSTOR = ClientCredentials(FIRST.client_id, "S3CRET-impostor-" + "c" * 48)


@pytest.mark.parametrize("nonce", ["nonce-1", "nonce-2"], ids=["same-consent", "other-consent"])
def test_a_pending_client_id_with_another_secret_is_a_conflict(nonce: str) -> None:
    record = step(ConnectionRecord(USER), received(FIRST), T0).record
    assert step(record, received(IMPOSTOR, nonce=nonce), T0).noop is NoOp.CREDENTIALS_CONFLICT


def test_the_connections_own_client_id_with_another_secret_is_a_conflict() -> None:
    record = ConnectionRecord(USER, credentials=FIRST)
    assert step(record, received(IMPOSTOR), T0).noop is NoOp.CREDENTIALS_CONFLICT


def test_a_consent_never_evicts_its_own_first_credentials() -> None:
    """Posts under one consent are kept beside amoCRM's first, up to what a record keeps;
    then refused (credentials_crowded), never evicting it (attack review of issue 22)."""
    record = step(ConnectionRecord(USER), received(FIRST), T0).record
    for n in range(MAX_PENDING_CREDENTIALS - 1):
        junk = ClientCredentials(f"junk-{n}", "x" * 10)
        record = step(record, received(junk), T0).record
    assert step(record, received(SECOND), T0).noop is NoOp.CREDENTIALS_CROWDED
    assert record.pending_credentials[0].credentials == FIRST


def test_the_newest_consents_are_kept() -> None:
    record = ConnectionRecord(USER)
    for n in range(MAX_PENDING_CREDENTIALS + 2):
        record = step(record, received(FIRST, nonce=f"nonce-{n}"), T0).record
    kept = [p.state_digest for p in record.pending_credentials]
    assert kept == [code_digest(f"nonce-{n}") for n in range(2, MAX_PENDING_CREDENTIALS + 2)]


# -- the post, on every store --------------------------------------------------------------------


def test_the_first_post_is_stored_and_the_same_post_again_writes_nothing(metadata_oauth) -> None:
    oauth, commits = metadata_oauth
    state = oauth.site_button(USER, metadata=META).state
    first = oauth.receive_secrets(form(FIRST, state))
    assert isinstance(first, SecretsResult)
    assert (first.stored, first.connection.connection_id) == (True, USER)
    assert first.connection.status is ConnectionStatus.DISCONNECTED
    record = stored(oauth)
    nonce = claims_of(oauth, state).nonce
    assert [(p.state_digest, p.credentials) for p in record.pending_credentials] == [
        (code_digest(nonce), FIRST)
    ]
    assert record.credentials is None  # only the claim of the consent's code makes them its own
    # The post enters nothing in the ledger: only amoCRM's acceptance of a code does.
    assert oauth.store.holder_of(f"client:{FIRST.client_id}") is None
    assert commits.count == 1  # the record
    again = oauth.receive_secrets(form(FIRST, state))
    assert (again.stored, again.connection.version) == (False, record.version)
    assert commits.count == 1


def test_a_retried_install_adds_credentials_until_the_code_is_claimed(
    metadata_oauth,
) -> None:
    oauth, commits = metadata_oauth
    state = oauth.site_button(USER, metadata=META).state
    oauth.receive_secrets(form(FIRST, state))
    added = oauth.receive_secrets(form(SECOND, state))
    assert added.stored
    assert [p.credentials for p in stored(oauth).pending_credentials] == [FIRST, SECOND]
    # The consent's code is claimed: the claim holds the state's nonce in the ledger.
    claims = claims_of(oauth, state)
    assert oauth.store.consume_state(
        claims.nonce, claims.expires_at + timedelta(hours=1), code_digest("the-code")
    )
    before, count = stored(oauth), commits.count
    late = oauth.receive_secrets(form(FIRST, state))
    assert late.stored is False
    assert stored(oauth) == before and commits.count == count


def test_a_state_that_brought_a_denial_takes_no_credentials(metadata_oauth) -> None:
    oauth, commits = metadata_oauth
    begun = oauth.site_button(USER, metadata=META)
    oauth.handle_callback({"error": "access_denied", "state": begun.state}, binding=begun.binding)
    count, was = commits.count, version(oauth)
    assert oauth.receive_secrets(form(FIRST, begun.state)).stored is False
    assert (commits.count, version(oauth)) == (count, was)


def test_consents_of_one_connection_keep_their_own_credentials(metadata_oauth) -> None:
    oauth, _ = metadata_oauth
    first, second = (
        oauth.site_button(USER, metadata=META).state,
        oauth.site_button(USER, metadata=META).state,
    )
    oauth.receive_secrets(form(FIRST, first))
    oauth.receive_secrets(form(SECOND, second))
    pending = {p.state_digest: p.credentials for p in stored(oauth).pending_credentials}
    assert pending == {
        code_digest(claims_of(oauth, first).nonce): FIRST,
        code_digest(claims_of(oauth, second).nonce): SECOND,
    }


def _forged(oauth: AmoOAuth, now: datetime) -> str:
    state = oauth.site_button(USER, metadata=META).state
    prefix, payload, mac = state.split(".")
    return f"{prefix}.{payload}.{mac[:-2]}{'AA' if mac[-2:] != 'AA' else 'BB'}"


def _unsigned(oauth: AmoOAuth, now: datetime) -> str:
    token, _ = issue_state(
        b"x" * 32,
        USER,
        now,
        timedelta(minutes=5),
        carry_connection=True,
        namespace=oauth.config.client_id,
    )
    return token


def _fixed_mode(oauth: AmoOAuth, now: datetime) -> str:
    # Signed with this very secret, but by a fixed-mode begin(): it names no connection.
    token, _ = issue_state(
        oauth.config.state_secret, USER, now, timedelta(minutes=5), namespace=oauth.config.client_id
    )
    return token


def _ahead(oauth: AmoOAuth, now: datetime) -> str:
    ahead = now + MAX_CLOCK_SKEW + timedelta(minutes=1)
    secret = oauth.config.state_secret
    token, _ = issue_state(
        secret,
        USER,
        ahead,
        timedelta(minutes=30),
        carry_connection=True,
        namespace=oauth.config.client_id,
    )
    return token


@pytest.mark.parametrize(
    ("make_state", "reason"),
    [
        (_forged, "bad_state"),
        (_unsigned, "bad_state"),
        (_fixed_mode, "bad_state"),
        (lambda oauth, now: "v1.e30.abc", "bad_state"),
        (_ahead, "clock_skew"),
    ],
    ids=["forged", "unsigned", "fixed_mode", "first_format", "from_ahead"],
)
def test_a_post_without_a_valid_state_changes_nothing(
    metadata_oauth, clock: FakeClock, make_state, reason
) -> None:
    oauth, commits = metadata_oauth
    state = make_state(oauth, clock())
    with pytest.raises(CallbackRejected) as refused:
        oauth.receive_secrets(form(FIRST, state))
    assert refused.value.reason == reason
    assert commits.count == 0 and version(oauth) == 0
    assert oauth.store.holder_of(f"client:{FIRST.client_id}") is None


def test_a_fixed_mode_service_takes_no_post(
    backend: Backend, make_oauth: Callable[..., AmoOAuth], clock: FakeClock
) -> None:
    store = backend.open()
    commits = Commits(store)
    oauth = make_oauth(store=store)
    # Even a state that carries a connection under this very secret (shared with a
    # metadata-mode integration) gives a fixed-mode connection no integration of its own.
    state, _ = issue_state(
        oauth.config.state_secret,
        USER,
        clock(),
        timedelta(minutes=5),
        carry_connection=True,
        namespace=oauth.config.client_id,
    )
    with pytest.raises(CallbackRejected, match="bad_state"):
        oauth.receive_secrets(form(FIRST, state))
    assert commits.count == 0 and version(oauth) == 0


def test_an_expired_state_changes_nothing(metadata_oauth, clock: FakeClock) -> None:
    oauth, commits = metadata_oauth
    state = oauth.site_button(USER, metadata=META).state
    clock.advance(oauth.config.state_ttl + MAX_CLOCK_SKEW + timedelta(seconds=1))
    with pytest.raises(CallbackRejected, match="expired_state"):
        oauth.receive_secrets(form(FIRST, state))
    assert commits.count == 0 and version(oauth) == 0


def test_a_client_id_registered_to_another_connection_is_refused(metadata_oauth) -> None:
    oauth, commits = metadata_oauth
    # What an exchange amoCRM accepted for another connection enters (test_metadata_callback).
    other = record_key(oauth.config.client_id, "user-other")
    assert oauth.store.consume_state(
        f"client:{FIRST.client_id}", datetime(2099, 1, 1, tzinfo=UTC), other
    )
    count = commits.count
    with pytest.raises(CallbackRejected, match="client_id_mismatch"):
        oauth.receive_secrets(form(FIRST, oauth.site_button(USER, metadata=META).state))
    assert commits.count == count and version(oauth) == 0


def test_a_state_signed_before_a_rotation_is_accepted(
    backend: Backend, make_oauth: Callable[..., AmoOAuth]
) -> None:
    old_secret, new_secret = "o" * 40, "n" * 40
    before = make_oauth(store=backend.open(), state_secret=old_secret, **METADATA)
    state = before.site_button(USER, metadata=META).state
    after = make_oauth(
        store=backend.open(),
        state_secret=new_secret,
        previous_state_secrets=[old_secret],
        **METADATA,
    )
    assert after.receive_secrets(form(FIRST, state)).stored
    assert [p.credentials for p in stored(after).pending_credentials] == [FIRST]
    gone = make_oauth(store=backend.open(), state_secret=new_secret, **METADATA)
    with pytest.raises(CallbackRejected, match="bad_state"):
        gone.receive_secrets(form(SECOND, state))


# A MemoryStore keeps records in this process only: nothing is at rest.
@pytest.mark.parametrize("backend", ["sqlite", "postgres", "redis"], indirect=True)
def test_the_credentials_are_encrypted_at_rest(
    backend: Backend, make_oauth: Callable[..., AmoOAuth]
) -> None:
    key = Fernet(Fernet.generate_key())
    oauth = make_oauth(store=_encrypted(backend, key), **METADATA)
    oauth.receive_secrets(form(FIRST, oauth.site_button(USER, metadata=META).state))
    bodies = _raw_bodies(backend)
    assert bodies and all(FIRST.client_secret not in body for body in bodies)
    assert [p.credentials for p in stored(oauth).pending_credentials] == [FIRST]


def _encrypted(backend: Backend, key: Fernet) -> Store:
    """Another store object on the backend's data, with ``encryption``."""
    if backend.kind == "sqlite":
        from amo_oauth import SQLiteStore

        store: Store = SQLiteStore(backend._path, encryption=key, clock=backend._clock)
    elif backend.kind == "postgres":
        from amo_oauth.stores import PostgresStore

        url = backend._request.getfixturevalue("postgres_url")
        store = PostgresStore(url, table=f"t_{backend._name}", encryption=key)
        store.migrate()
    else:
        from amo_oauth.stores import RedisStore

        url = backend._request.getfixturevalue("redis_url")
        store = RedisStore(url, prefix=f"t-{backend._name}:", encryption=key)
        store.migrate()
    backend.opened.append(store)
    return store


def _raw_bodies(backend: Backend) -> list[str]:
    """Every record body as the backend keeps it, read around the store."""
    if backend.kind == "sqlite":
        import sqlite3

        with sqlite3.connect(backend._path) as db:
            tables = [
                name
                for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            ]
            return [str(row) for table in tables for row in db.execute(f'SELECT * FROM "{table}"')]
    if backend.kind == "postgres":
        import psycopg

        url = backend._request.getfixturevalue("postgres_url")
        with psycopg.connect(url) as conn:
            rows = conn.execute(f'SELECT * FROM "t_{backend._name}"'.encode()).fetchall()
        return [str(row) for row in rows]
    import redis

    url = backend._request.getfixturevalue("redis_url")
    client = redis.Redis.from_url(url)
    try:
        keys = client.keys(f"t-{backend._name}:*".encode())
        # Records are hashes (the body in a field); ledger entries and the rest are strings.
        return [
            str(client.hgetall(key) if client.type(key) == b"hash" else client.get(key))
            for key in keys
            if client.type(key) in (b"hash", b"string")
        ]
    finally:
        client.close()


# -- the fields -----------------------------------------------------------------------------------

GOOD = form(FIRST, "")


@pytest.mark.parametrize(
    "fields",
    [
        {"client_secret": FIRST.client_secret},
        {"client_id": FIRST.client_id},
        {"client_id": "", "client_secret": FIRST.client_secret},
        {"client_id": FIRST.client_id, "client_secret": ""},
        {"client_id": "x" * 256, "client_secret": FIRST.client_secret},
        {"client_id": "клиент", "client_secret": FIRST.client_secret},
        {"client_id": "a\tb", "client_secret": FIRST.client_secret},
        {"client_id": FIRST.client_id, "client_secret": "s" * 2049},
        {"client_id": FIRST.client_id, "client_secret": "line\nbreak"},
        {"client_id": FIRST.client_id, "client_secret": 12345},
        {"client_id": [FIRST.client_id, SECOND.client_id], "client_secret": FIRST.client_secret},
    ],
    ids=[
        "no_client_id",
        "no_client_secret",
        "empty_client_id",
        "empty_client_secret",
        "long_client_id",
        "non_ascii_client_id",
        "control_in_client_id",
        "long_client_secret",
        "control_in_client_secret",
        "secret_not_text",
        "repeated_client_id",
    ],
)
def test_malformed_fields_change_nothing(metadata_oauth, fields: dict[str, object]) -> None:
    oauth, commits = metadata_oauth
    state = oauth.site_button(USER, metadata=META).state
    with pytest.raises(CallbackRejected, match="malformed"):
        oauth.receive_secrets({**fields, "state": state})
    assert commits.count == 0 and version(oauth) == 0


def test_a_missing_or_repeated_state_is_malformed(oauth_metadata_memory) -> None:
    oauth = oauth_metadata_memory
    state = oauth.site_button(USER, metadata=META).state
    fields = [("client_id", FIRST.client_id), ("client_secret", FIRST.client_secret)]
    with pytest.raises(CallbackRejected, match="malformed"):
        oauth.receive_secrets(fields)
    with pytest.raises(CallbackRejected, match="malformed"):
        oauth.receive_secrets([*fields, ("state", state), ("state", state)])


def test_other_fields_are_ignored_in_every_form_shape(oauth_metadata_memory) -> None:
    oauth = oauth_metadata_memory
    state = oauth.site_button(USER, metadata=META).state
    pairs = [*form(FIRST, state).items(), ("platform", "1"), ("platform", "2"), ("x", 7)]
    assert oauth.receive_secrets(pairs).stored
    as_lists = {name: [value] for name, value in form(SECOND, state).items()}
    assert oauth.receive_secrets({**as_lists, "account_id": ["1", "2"]}).stored
    assert [p.credentials for p in stored(oauth).pending_credentials] == [FIRST, SECOND]


@pytest.fixture
def oauth_metadata_memory(make_oauth: Callable[..., AmoOAuth]) -> AmoOAuth:
    return make_oauth(**METADATA)


# -- no secret shown ------------------------------------------------------------------------------


def test_no_secret_in_any_repr_log_or_refusal(
    oauth_metadata_memory: AmoOAuth, caplog: pytest.LogCaptureFixture
) -> None:
    oauth = oauth_metadata_memory
    caplog.set_level(logging.DEBUG)
    state = oauth.site_button(USER, metadata=META).state
    shown: list[str] = []
    result = oauth.receive_secrets(form(FIRST, state))
    shown += [repr(result), str(result), repr(stored(oauth)), repr(claims_of(oauth, state))]
    for bad in (
        {**form(FIRST, state), "client_id": "x" * 300},
        {**form(FIRST, state), "state": state + "x"},
        {**form(FIRST, "v2.a.b")},
    ):
        with pytest.raises(CallbackRejected) as refused:
            oauth.receive_secrets(bad)
        shown += [repr(refused.value), str(refused.value), repr(refused.value.args)]
    shown += [record.getMessage() for record in caplog.records]
    everything = "\n".join(shown)
    assert SECRET_MARK not in everything and state not in everything
    assert USER in everything  # the scan sees what it scans


def test_the_new_names_are_public() -> None:
    import amo_oauth

    assert {"ButtonMetadata", "SecretsResult", "SiteButton"} <= set(amo_oauth.__all__)
    assert all(isinstance(cls, type) for cls in (ButtonMetadata, SecretsResult, SiteButton))


# -- the awaited service, and racing posts ---------------------------------------------------------


def test_the_async_service_stores_the_post_once(
    backend: Backend, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    store = backend.open()
    commits = Commits(store)

    async def main() -> None:
        http = httpx.AsyncClient(transport=fake.async_transport())
        config = config_for(fake, **METADATA)
        async with AsyncAmoOAuth(config, store=store, http=http, clock=clock) as oauth:
            state = (await oauth.site_button(USER, metadata=META)).state
            assert (await oauth.receive_secrets(form(FIRST, state))).stored
            assert not (await oauth.receive_secrets(form(FIRST, state))).stored
            assert commits.count == 1  # the record only: a post enters no client id
            with pytest.raises(CallbackRejected, match="bad_state"):
                await oauth.receive_secrets(form(SECOND, state[:-3] + "AAA"))
            assert (await oauth.receive_secrets(form(SECOND, state))).stored
            assert commits.count == 2
            with pytest.raises(CallbackRejected, match="client_id_mismatch"):
                await oauth.receive_secrets(form(IMPOSTOR, state))
            assert commits.count == 2
            loaded = await oauth.store.aload(record_key(fake.client_id, USER))
            assert loaded.record is not None
            assert [p.credentials for p in loaded.record.pending_credentials] == [FIRST, SECOND]

    asyncio.run(main())


def test_racing_posts_end_in_one_consistent_record(metadata_oauth) -> None:
    oauth, _ = metadata_oauth
    state = oauth.site_button(USER, metadata=META).state
    posts = [FIRST, SECOND] * 4
    results: list[SecretsResult] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(posts))

    def post(credentials: ClientCredentials) -> None:
        start.wait()
        try:
            results.append(oauth.receive_secrets(form(credentials, state)))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=post, args=(c,)) for c in posts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    record = stored(oauth)
    nonce_digest = code_digest(claims_of(oauth, state).nonce)
    assert [p.state_digest for p in record.pending_credentials] == [nonce_digest] * 2
    assert {p.credentials for p in record.pending_credentials} == {FIRST, SECOND}
    # Every stored post is one write (one per client id), and nothing else wrote the record.
    assert record.version == sum(result.stored for result in results) == 2


def test_rotate_key_re_encrypts_a_record_holding_only_credentials(
    tmp_path, make_oauth: Callable[..., AmoOAuth], clock: FakeClock
) -> None:
    from cryptography.fernet import MultiFernet

    from amo_oauth import SQLiteStore
    from amo_oauth._errors import UndecryptableRecord
    from amo_oauth._rotation import rotate_keys

    db = tmp_path / "rotate.db"
    old, new = Fernet(Fernet.generate_key()), Fernet(Fernet.generate_key())
    oauth = make_oauth(store=SQLiteStore(db, encryption=old, clock=clock), **METADATA)
    oauth.receive_secrets(form(FIRST, oauth.site_button(USER, metadata=META).state))
    key = record_key(oauth.config.client_id, USER)
    with pytest.raises(UndecryptableRecord):
        SQLiteStore(db, encryption=new).load(key)
    report = rotate_keys(SQLiteStore(db, encryption=MultiFernet([new, old])))
    assert (report.rewritten, report.without_tokens) == (1, 0)
    record = SQLiteStore(db, encryption=new).load(key).record
    assert record is not None
    assert [p.credentials for p in record.pending_credentials] == [FIRST]


def test_a_post_never_enters_a_client_id_in_the_ledger(metadata_oauth) -> None:
    """Posts under one's own state (any signed-in user has one) leave no ledger entry: made-up
    client ids are neither kept ten years nor registered to the poster (attack review of
    issue 22: 2000 posts made 2000 entries)."""
    oauth, _ = metadata_oauth
    state = oauth.site_button(USER, metadata=META).state
    for n in range(20):
        with contextlib.suppress(CallbackRejected):  # rate_limited once the record is full
            oauth.receive_secrets(form(ClientCredentials(f"made-up-{n}", "x" * 10), state))
    for n in range(20):
        assert oauth.store.holder_of(f"client:made-up-{n}") is None
    assert len(stored(oauth).pending_credentials) <= MAX_PENDING_CREDENTIALS


def test_a_post_under_a_victims_state_neither_evicts_nor_replaces_amocrms(metadata_oauth) -> None:
    """amoCRM's post stays pending whatever is posted after it under the same state: more
    client ids are kept beside it, then refused; its client id with another secret is refused
    ``client_id_mismatch`` (amoCRM makes a new integration per install)."""
    oauth, commits = metadata_oauth
    state = oauth.site_button(USER, metadata=META).state
    assert oauth.receive_secrets(form(FIRST, state)).stored
    refusals = []
    for n in range(MAX_PENDING_CREDENTIALS + 1):
        try:
            oauth.receive_secrets(form(ClientCredentials(f"attacker-{n}", "x" * 10), state))
        except CallbackRejected as refused:
            refusals.append(refused.reason)
    assert refusals == ["rate_limited"] * 2
    count = commits.count
    with pytest.raises(CallbackRejected, match="client_id_mismatch"):
        oauth.receive_secrets(form(IMPOSTOR, state))
    assert commits.count == count
    assert stored(oauth).pending_credentials[0].credentials == FIRST
