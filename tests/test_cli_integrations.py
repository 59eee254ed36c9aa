"""Several integrations from one TOML file (``--integrations``, ``AMO_OAUTH_INTEGRATIONS``):
the file parsed and refused, and ``status`` / ``refresh-due`` per integration and across all of
them against FakeAmoCRM, two integrations sharing one SQLite store. No secret ever shows."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import attrs
import httpx
import pytest

from amo_oauth import AmoOAuth, AsyncAmoOAuth, RefreshReport, SQLiteStore, StoreError
from amo_oauth._config import Config
from amo_oauth._integrations_file import FIELDS, SECRET_ENV_KEYS, parse_integrations
from amo_oauth._records import ClientCredentials, record_key
from amo_oauth.cli import main
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import config_for, run_consent

#: Values that must never appear in any output or message.
AMO_SECRET = "amocrm-SECRET-never-shown-0123456789"
KOMMO_SECRET = "kommo-SECRET-never-shown-0123456789"
STATE_SECRET = "state-SECRET-never-shown-0123456789abcdef"
SECRETS = (AMO_SECRET, KOMMO_SECRET, STATE_SECRET)

GOOD = """
store = "sqlite:///shared.db"

[integrations.amocrm]
client_id = "amo-client"
client_secret_env = "AMO_AMOCRM_SECRET"
redirect_uri = "https://app.example/amo/callback"
state_secret_env = "AMO_STATE_SECRET"
lease_ttl = 90
extra_domains = ["fake.test"]

[integrations.kommo]
client_id = "kommo-client"
client_secret_env = "AMO_KOMMO_SECRET"
redirect_uri = "https://app.example/kommo/callback"
authorize_url = "https://www.kommo.com/oauth"
state_secret_env = "AMO_STATE_SECRET"
previous_state_secrets_env = "AMO_PREVIOUS_STATE_SECRETS"
store_env = "AMO_KOMMO_STORE"

[integrations.button]
client_id = "button-product"
secrets_uri = "https://app.example/amo/secrets"
redirect_uri = "https://app.example/amo/callback"
state_secret_env = "AMO_STATE_SECRET"
"""

ENVIRON = {
    "AMO_AMOCRM_SECRET": AMO_SECRET,
    "AMO_KOMMO_SECRET": KOMMO_SECRET,
    "AMO_STATE_SECRET": STATE_SECRET,
    "AMO_PREVIOUS_STATE_SECRETS": "old-state-secret-0123456789abcdef-1",
    "AMO_KOMMO_STORE": "sqlite:///kommo.db",
}


# -- the file -----------------------------------------------------------------------------------


def test_the_file_gives_each_integration_its_config_with_secrets_from_the_environment() -> None:
    file = parse_integrations(GOOD)
    amocrm, kommo, button = file.integrations
    assert [i.name for i in file.integrations] == ["amocrm", "kommo", "button"]
    config = amocrm.config(ENVIRON)
    assert (config.client_id, config.client_secret) == ("amo-client", AMO_SECRET)
    assert config.state_secret == STATE_SECRET.encode()
    assert config.lease_ttl == timedelta(seconds=90)  # durations are seconds
    assert config.extra_domains == ("fake.test",) == amocrm.extra_domains
    other = kommo.config(ENVIRON)
    assert other.previous_state_secrets == (b"old-state-secret-0123456789abcdef-1",)
    assert other.button_script_url == "https://www.kommo.com/auth/button.js"
    # Metadata mode: no client secret anywhere; each connection brings its own.
    metadata = button.config({"AMO_STATE_SECRET": STATE_SECRET})
    assert metadata.metadata_mode and metadata.client_secret is None
    assert metadata.credentials is None
    # The store: the file's shared one, or the integration's own (here from the environment).
    assert file.store_of(amocrm, ENVIRON) == "sqlite:///shared.db"
    assert file.store_of(kommo, ENVIRON) == "sqlite:///kommo.db"
    assert file.names_a_store
    assert file.named("kommo") == (kommo,) and file.named(None) == file.integrations


def test_the_file_can_set_every_config_field_but_the_secrets() -> None:
    settable = set(FIELDS) | set(SECRET_ENV_KEYS.values())
    assert settable == {field.name for field in attrs.fields(Config)}


def test_a_missing_variable_is_named_and_a_refused_secret_is_never_shown() -> None:
    amocrm = parse_integrations(GOOD).integrations[0]
    with pytest.raises(ValueError, match="AMO_AMOCRM_SECRET") as missing:
        amocrm.config({"AMO_STATE_SECRET": STATE_SECRET})
    assert str(missing.value) == (
        "integration 'amocrm': client_secret_env names AMO_AMOCRM_SECRET, which is not set or"
        " empty in the environment"
    )
    with pytest.raises(ValueError, match="integration 'amocrm': state_secret") as short:
        amocrm.config({**ENVIRON, "AMO_STATE_SECRET": "short-SECRET-value"})
    assert "state_secret must be at least 32 bytes" in str(short.value)
    assert "short-SECRET" not in str(short.value)
    with pytest.raises(ValueError, match="not set or empty"):
        parse_integrations(GOOD).store_of(parse_integrations(GOOD).integrations[1], {})


def _integration(*lines: str) -> str:
    """A file of one integration: the required settings, then ``lines``."""
    return "\n".join(
        [
            "[integrations.amocrm]",
            'client_id = "amo-client"',
            'client_secret_env = "AMO_AMOCRM_SECRET"',
            'redirect_uri = "https://app.example/cb"',
            'state_secret_env = "AMO_STATE_SECRET"',
            *lines,
        ]
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("store = \n", "integrations file: not valid TOML: Invalid value (at line 1, column 9)"),
        ('store = "sqlite:///x.db"', "integrations file: no integrations: add a table"),
        ("integrations = 3", "integrations file: no integrations"),
        ("[integrations.'a b']\nclient_id = 'x'", "an integration's name is 1 to 64 letters"),
        (
            f"[integrations.'{AMO_SECRET} x']\nclient_id = 'x'",
            "table number 1 under [integrations] has another name (not repeated",
        ),
        ("[integrations]\namocrm = 3", "integration 'amocrm' must be a table of settings, not int"),
        (_integration("colour = 'blue'"), "integration 'amocrm': key number 5 names no setting"),
        (f'color = "x"\n{_integration()}', "integrations file: key number 1 names no setting"),
        # A key that names no setting is never repeated: it may be a secret pasted in.
        (_integration(f'"{AMO_SECRET}" = 1'), "integration 'amocrm': key number 5 looks like a"),
        (f'"{AMO_SECRET}" = 1\n{_integration()}', "integrations file: key number 1 looks like"),
        (
            _integration(f'client_secret = "{AMO_SECRET}"'),
            "integration 'amocrm': 'client_secret' looks like a secret, and no secret belongs",
        ),
        (
            _integration(f'api_token = "{AMO_SECRET}"'),
            "integration 'amocrm': key number 5 looks like a secret",
        ),
        (
            f'state_secret = "{STATE_SECRET}"\n{_integration()}',
            "integrations file: 'state_secret' looks like a secret",
        ),
        (_integration('lease_ttl = "60"'), "'amocrm': lease_ttl must be a number of seconds, not"),
        (_integration("lease_ttl = inf"), "'amocrm': lease_ttl must be a finite number of seconds"),
        (_integration("settle_timeout = true"), "settle_timeout must be a number, not bool"),
        (_integration("trusted_proxies = 1.5"), "trusted_proxies must be a whole number, not"),
        (_integration("extra_domains = 'fake.test'"), "extra_domains must be a list of text, not"),
        (_integration("allow_widget_installs = 1"), "allow_widget_installs must be true or false"),
        (
            _integration("secrets_uri = 'https://app.example/s'"),
            "integration 'amocrm': give exactly one of client_secret_env",
        ),
        (
            "[integrations.a]\nclient_id = 'a'\nredirect_uri = 'https://app.example/cb'\n"
            "state_secret_env = 'S'",
            "integration 'a': give exactly one of client_secret_env",
        ),
        (
            "[integrations.a]\nclient_id = 'a'\nclient_secret_env = 'X'\n"
            "redirect_uri = 'https://app.example/cb'",
            "integration 'a': state_secret_env is required",
        ),
        (
            "[integrations.a]\nclient_secret_env = 'X'\nstate_secret_env = 'S'",
            "integration 'a': client_id is required",
        ),
        (
            _integration().replace("AMO_AMOCRM_SECRET", AMO_SECRET),
            "'amocrm': client_secret_env must be the name of an environment variable",
        ),
        (_integration("store_env = 7"), "integration 'amocrm': store_env must be text, not int"),
        (
            _integration("store = 'sqlite:///a.db'", "store_env = 'A'"),
            "integration 'amocrm': give store or store_env, not both",
        ),
        (
            _integration(f"store = 'postgresql://app:{AMO_SECRET}@db.example/amo'"),
            "integration 'amocrm': store's URL holds a password: put the URL in an environment",
        ),
        (
            _integration(f"store = 'redis://:{AMO_SECRET}@[cache/0'"),
            "integration 'amocrm': store's URL does not parse, so whether it holds a password",
        ),
        (
            f"store = 'redis://:{AMO_SECRET}@[cache/0'\n{_integration()}",
            "integrations file: store's URL does not parse",
        ),
        (
            _integration() + "\n" + _integration().replace("amocrm]", "again]"),
            "integrations 'amocrm' and 'again' have the same client_id",
        ),
    ],
)
def test_a_bad_file_is_refused_naming_the_key_never_the_value(text: str, says: str) -> None:
    with pytest.raises((TypeError, ValueError)) as refused:
        parse_integrations(text)
    message = str(refused.value)
    assert says in message
    assert not any(secret in message for secret in SECRETS)
    assert refused.value.__cause__ is None


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("lease_ttl = 0", "integration 'amocrm': lease_ttl must be a positive"),
        ("mode = 'redirect'", "integration 'amocrm': mode must be one of post_message, popup"),
    ],
)
def test_settings_config_refuses_are_the_integrations_problem_not_the_files(
    line: str, says: str
) -> None:
    """So a command can report that integration and go on with the others (doctor, status)."""
    integration = parse_integrations(_integration(line)).integrations[0]
    assert integration.refusal is not None and says in integration.refusal
    with pytest.raises(ValueError, match=says):
        integration.config(ENVIRON)


@pytest.mark.parametrize("value", [None, "", " "])
def test_an_unset_or_empty_optional_variable_means_no_previous_secrets(value: str | None) -> None:
    """After a rotation the operator unsets it (docs/operations.md); the docs' file still
    gives every integration its Config."""
    file = parse_integrations(_docs_example_file())
    environ = {**ENVIRON, "AMO_KOMMO_STORE": "sqlite:///kommo.db"}
    environ.pop("AMO_PREVIOUS_STATE_SECRETS")
    if value is not None:
        environ["AMO_PREVIOUS_STATE_SECRETS"] = value
    configs = [integration.config(environ) for integration in file.integrations]
    assert [config.previous_state_secrets for config in configs] == [(), (), ()]
    with pytest.raises(ValueError, match="state_secret_env names AMO_STATE_SECRET"):
        file.integrations[0].config({**environ, "AMO_STATE_SECRET": ""})  # required stays so


def _docs_example_file() -> str:
    page = (Path(__file__).parents[1] / "docs" / "several-integrations.md").read_text("utf-8")
    section = page.split("## The CLI and the sweep", 1)[1]
    return section.split("```toml\n", 1)[1].split("```", 1)[0]


# -- the commands, against FakeAmoCRM -------------------------------------------------------------

KOMMO_ID = "kommo-client"


def _file(tmp_path: Path, fake: FakeAmoCRM, db: Path, *extra: str) -> Path:
    """Two fixed integrations of the fake sharing the SQLite store ``db``."""
    path = tmp_path / "integrations.toml"
    common = (
        f'redirect_uri = "{fake.redirect_uri}"\n'
        f'authorize_url = "https://{fake.consent_host}/oauth"\n'
        'state_secret_env = "AMO_STATE_SECRET"\n'
    )
    path.write_text(
        f'store = "sqlite:///{db}"\n'
        f'[integrations.amocrm]\nclient_id = "{fake.client_id}"\n'
        f'client_secret_env = "AMO_AMOCRM_SECRET"\n{common}'
        f'[integrations.kommo]\nclient_id = "{KOMMO_ID}"\n'
        f'client_secret_env = "AMO_KOMMO_SECRET"\n{common}' + "".join(extra),
        encoding="utf-8",
    )
    return path


@pytest.fixture
def two(
    tmp_path: Path, fake: FakeAmoCRM, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Both integrations connected in one SQLite store, 85 days idle (all due within a week):
    amocrm's ``user-0`` and ``user-1``, kommo's ``user-0`` (the same id) and ``k-1``. Their
    secrets are in the environment; the commands' AmoOAuth talk to the fake on its clock."""
    kommo = fake.add_integration(KOMMO_ID, KOMMO_SECRET, fake.redirect_uri)
    db = tmp_path / "shared.db"
    second = fake.add_account("second")
    for client_id, secret, users in (
        (fake.client_id, fake.client_secret, ("user-0", "user-1")),
        (KOMMO_ID, KOMMO_SECRET, ("user-0", "k-1")),
    ):
        config = config_for(fake, client_id=client_id, client_secret=secret)
        http = httpx.Client(transport=fake.transport())
        with AmoOAuth(config, store=SQLiteStore(db), http=http, clock=clock) as oauth:
            for user, account in zip(users, (fake.default_account, second), strict=True):
                integration = kommo if client_id == KOMMO_ID else None
                run_consent(oauth, fake, user, account=account, integration=integration)
        clock.advance(timedelta(minutes=1))  # kommo's records are due after amocrm's
    clock.advance(timedelta(days=85))
    monkeypatch.setenv("AMO_AMOCRM_SECRET", fake.client_secret)
    monkeypatch.setenv("AMO_KOMMO_SECRET", KOMMO_SECRET)
    monkeypatch.setenv("AMO_STATE_SECRET", STATE_SECRET)
    for name in ("AMO_CLIENT_ID", "AMO_CLIENT_SECRET", "AMO_OAUTH_STORE", "AMO_OAUTH_INTEGRATIONS"):
        monkeypatch.delenv(name, raising=False)
    _commands_on_the_fake(fake, clock, monkeypatch)
    return _file(tmp_path, fake, db)


def _commands_on_the_fake(
    fake: FakeAmoCRM, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import amo_oauth._service as service

    real = service.AmoOAuth.__init__

    def on_the_fake(self: AmoOAuth, config: object, **options: object) -> None:
        options["http"] = httpx.Client(transport=fake.transport())
        options["clock"] = clock
        real(self, config, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(service.AmoOAuth, "__init__", on_the_fake)


def _output(capsys: pytest.CaptureFixture[str], fake: FakeAmoCRM) -> dict[str, object]:
    out, err = capsys.readouterr()
    secrets = (*SECRETS, fake.client_secret)
    assert not any(secret in out or secret in err for secret in secrets)
    shown: dict[str, object] = json.loads(out)
    return shown


def test_refresh_due_across_the_files_integrations_refreshes_each_once_with_its_own(
    two: Path, fake: FakeAmoCRM, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["refresh-due", "--integrations", str(two)]) == 0
    shown = _output(capsys, fake)
    integrations = shown["integrations"]
    assert isinstance(integrations, dict)
    assert integrations["amocrm"]["refreshed"] == ["user-0", "user-1"]
    assert integrations["kommo"]["refreshed"] == ["k-1", "user-0"]
    # Sharing the store, each sweep leaves the other's records alone.
    assert integrations["amocrm"]["skipped"] == integrations["kommo"]["skipped"] == 2
    assert shown["total"] == {
        "refreshed_count": 4,
        "failed_by_reason": {},
        "needs_reauthorization_count": 0,
        "expiring_long_lived_count": 0,
        "remaining": 0,
        "failed_integrations": [],
    }
    assert fake.token_call_count("refresh_token", "ok", integration=fake.client_id) == 2
    assert fake.token_call_count("refresh_token", "ok", integration=KOMMO_ID) == 2
    assert fake.token_call_count("refresh_token") == 4  # nothing refused, nothing sent twice


def test_refresh_due_reads_the_file_from_the_environment_and_exits_1_when_one_failed(
    two: Path, fake: FakeAmoCRM, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AMO_OAUTH_INTEGRATIONS", str(two))
    fake.revoke_refresh_tokens(integration=KOMMO_ID, account=fake.default_account)
    assert main(["refresh-due"]) == 1
    shown = _output(capsys, fake)
    assert shown["integrations"]["kommo"]["failed"] == {"user-0": "reauthorization_required"}
    assert shown["integrations"]["amocrm"]["refreshed"] == ["user-0", "user-1"]
    assert shown["total"]["failed_by_reason"] == {"reauthorization_required": 1}
    assert shown["total"]["needs_reauthorization_count"] == 1


def test_a_store_failing_one_integrations_sweep_ends_only_that_one(
    two: Path, fake: FakeAmoCRM, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = AmoOAuth.refresh_due

    def failing_for_kommo(self: AmoOAuth, *args: object, **options: object) -> RefreshReport:
        if self.config.client_id == KOMMO_ID:
            raise StoreError("the store could not be reached")
        return real(self, *args, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(AmoOAuth, "refresh_due", failing_for_kommo)
    assert main(["refresh-due", "--integrations", str(two)]) == 1
    shown = _output(capsys, fake)
    assert shown["integrations"]["kommo"] == {"error": "the store could not be reached"}
    assert shown["integrations"]["amocrm"]["refreshed"] == ["user-0", "user-1"]
    assert shown["total"]["failed_integrations"] == ["kommo"]
    assert shown["total"]["refreshed_count"] == 2


def test_refresh_due_for_one_integration_leaves_the_others_alone(
    two: Path, fake: FakeAmoCRM, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["refresh-due", "--integrations", str(two), "--integration", "kommo"]) == 0
    shown = _output(capsys, fake)
    assert shown["integration"] == "kommo"
    assert shown["refreshed"] == ["k-1", "user-0"] and shown["refreshed_count"] == 2
    assert fake.token_call_count("refresh_token", integration=fake.client_id) == 0


def test_a_limit_counts_only_the_integrations_own_records_in_a_shared_store(
    two: Path, fake: FakeAmoCRM, capsys: pytest.CaptureFixture[str]
) -> None:
    """amocrm's two records are due first; kommo's sweep with --limit 2 skips them without
    letting them take its two places (it used to refresh nothing, "remaining": 2)."""
    argv = ["refresh-due", "--integrations", str(two), "--integration", "kommo", "--limit", "2"]
    assert main(argv) == 0
    shown = _output(capsys, fake)
    assert shown["refreshed"] == ["k-1", "user-0"]
    assert (shown["skipped"], shown["remaining"]) == (2, 0)


def test_the_async_sweep_counts_only_its_own_records_against_the_limit(
    two: Path, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    db = two.parent / "shared.db"
    config = config_for(fake, client_id=KOMMO_ID, client_secret=KOMMO_SECRET)

    async def sweep() -> RefreshReport:
        http = httpx.AsyncClient(transport=fake.async_transport())
        async with AsyncAmoOAuth(config, store=SQLiteStore(db), http=http, clock=clock) as oauth:
            return await oauth.refresh_due(timedelta(days=7), 1)

    report = asyncio.run(sweep())
    assert (len(report.refreshed), report.skipped, report.remaining) == (1, 2, 1)


def test_status_per_integration_and_across_all(
    two: Path, fake: FakeAmoCRM, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "k-1", "--integrations", str(two), "--integration", "kommo"]) == 0
    shown = _output(capsys, fake)
    assert (shown["integration"], shown["status"], shown["host"]) == (
        "kommo",
        "connected",
        fake.accounts[1].host,
    )
    assert main(["status", "k-1", "--integrations", str(two)]) == 0
    across = _output(capsys, fake)["integrations"]
    assert across["amocrm"] == {"connection_id": "k-1", "status": "disconnected"}
    assert across["kommo"]["status"] == "connected"


def test_a_metadata_mode_integration_refreshes_each_connection_with_its_own_credentials(
    tmp_path: Path,
    fake: FakeAmoCRM,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The site button's product: no client secret in the file or the environment; each
    connection's record holds the integration amoCRM made for its account."""
    installed = fake.add_integration("per-account-1", "per-account-SECRET-1", fake.redirect_uri)
    db = tmp_path / "button.db"
    config = config_for(fake, client_id=installed.client_id, client_secret="per-account-SECRET-1")
    http = httpx.Client(transport=fake.transport())
    with AmoOAuth(config, store=SQLiteStore(db), http=http, clock=clock) as oauth:
        run_consent(oauth, fake, "shop-1", integration=installed)
    # The record as a metadata-mode install keeps it: under the product's namespace, with
    # the account's own integration.
    store = SQLiteStore(db)
    record = store.load(record_key(installed.client_id, "shop-1")).record
    assert record is not None
    credentials = ClientCredentials(installed.client_id, "per-account-SECRET-1")
    moved = attrs.evolve(record, integration="button-product", credentials=credentials, version=1)
    store.compare_and_set(moved, None)
    store.delete(record.key, record.version)
    store.close()
    clock.advance(timedelta(days=85))
    path = tmp_path / "button.toml"
    path.write_text(
        f'[integrations.button]\nclient_id = "button-product"\nstore = "sqlite:///{db}"\n'
        f'secrets_uri = "https://app.example/amo/secrets"\nredirect_uri = "{fake.redirect_uri}"\n'
        'state_secret_env = "AMO_STATE_SECRET"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("AMO_STATE_SECRET", STATE_SECRET)
    monkeypatch.delenv("AMO_CLIENT_SECRET", raising=False)
    _commands_on_the_fake(fake, clock, monkeypatch)
    assert main(["refresh-due", "--integrations", str(path)]) == 0
    out = capsys.readouterr().out
    assert "per-account-SECRET" not in out
    assert json.loads(out)["integrations"]["button"]["refreshed"] == ["shop-1"]
    assert fake.token_call_count("refresh_token", "ok", integration=installed) == 1


def test_the_environments_metadata_mode_needs_no_client_secret(
    two: Path, fake: FakeAmoCRM, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AMO_CLIENT_ID", "button-product")
    monkeypatch.setenv("AMO_REDIRECT_URI", fake.redirect_uri)
    monkeypatch.setenv("AMO_SECRETS_URI", "https://app.example/amo/secrets")
    db = two.parent / "shared.db"
    assert main(["refresh-due", "--db", str(db)]) == 0
    # Nothing of this product's is stored: the four records are the other integrations'.
    assert _output(capsys, fake)["skipped"] == 4


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--integration", "kommo"], "--integration picks one of the integrations file's"),
        (["--integrations", "FILE", "--integration", "nope"], "no integration 'nope'"),
        (["--integrations", "FILE", "--client-id", "c"], "--client-id with an integrations"),
        (["--integrations", "FILE", "--store", "sqlite:///x.db"], "--store with an integrations"),
        (["--integrations", "missing.toml"], "cannot read 'missing.toml'"),
    ],
)
def test_the_file_and_the_single_integrations_flags_do_not_mix(
    two: Path, argv: list[str], says: str
) -> None:
    argv = [str(two) if arg == "FILE" else arg for arg in argv]
    with pytest.raises(SystemExit, match=says):
        main(["status", "k-1", *argv])


def test_a_missing_secret_stops_the_sweep_before_anything_is_sent(
    two: Path, fake: FakeAmoCRM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AMO_KOMMO_SECRET")
    with pytest.raises(SystemExit, match="AMO_KOMMO_SECRET, which is not set") as stopped:
        main(["refresh-due", "--integrations", str(two)])
    assert not any(secret in str(stopped.value) for secret in SECRETS)
    assert fake.token_call_count("refresh_token") == 0


def test_the_docs_example_file_is_a_good_one() -> None:
    """docs/several-integrations.md's file: read as the command reads it."""
    file = parse_integrations(_docs_example_file())
    assert [i.name for i in file.integrations] == ["amocrm", "kommo", "button"]
    environ = {
        "AMO_AMOCRM_SECRET": AMO_SECRET,
        "AMO_KOMMO_SECRET": KOMMO_SECRET,
        "AMO_STATE_SECRET": STATE_SECRET,
        "AMO_PREVIOUS_STATE_SECRETS": "old-state-secret-0123456789abcdef-1",
        "AMO_KOMMO_STORE": "postgresql://app:pw@db.example/amo",
    }
    configs = [integration.config(environ) for integration in file.integrations]
    assert configs[2].metadata_mode and configs[2].client_secret is None
    assert file.store_of(file.integrations[1], environ) == environ["AMO_KOMMO_STORE"]


def test_refresh_due_sweeps_with_the_previous_secrets_variable_unset(
    two: Path, fake: FakeAmoCRM, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The review's case: the optional variable unset after a rotation swept nothing."""
    with two.open("a", encoding="utf-8") as file:
        file.write('previous_state_secrets_env = "AMO_PREVIOUS_STATE_SECRETS"\n')  # kommo's
    monkeypatch.delenv("AMO_PREVIOUS_STATE_SECRETS", raising=False)
    assert main(["refresh-due", "--integrations", str(two)]) == 0
    assert _output(capsys, fake)["integrations"]["kommo"]["refreshed"] == ["k-1", "user-0"]


#: An integration of the file whose settings ``Config`` refuses, as the review met them.
REFUSED = {
    "http_secrets_uri": (
        'secrets_uri = "http://b.example/api/amo-crm/secrets"',
        "secrets_uri must use https",
    ),
    "no_cryptography": (
        'secrets_uri = "https://b.example/api/amo-crm/secrets"',
        "secrets_uri needs the crypto extra",
    ),
}


@pytest.fixture(params=sorted(REFUSED))
def refused(
    request: pytest.FixtureRequest, two: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, str]:
    """``two``'s file with a third, metadata-mode integration ``button`` ``Config`` refuses;
    returns the file and what the refusal says."""
    line, says = REFUSED[request.param]
    if request.param == "no_cryptography":
        import importlib.util

        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util,
            "find_spec",
            lambda name, *a: None if name == "cryptography" else real(name, *a),
        )
    with two.open("a", encoding="utf-8") as file:
        file.write(
            '[integrations.button]\nclient_id = "button-product"\n'
            f'{line}\nredirect_uri = "https://b.example/api/amo-crm/callback"\n'
            'state_secret_env = "AMO_STATE_SECRET"\n'
        )
    return two, says


def test_doctor_makes_one_integrations_refused_settings_its_finding_and_goes_on(
    refused: tuple[Path, str], fake: FakeAmoCRM, capsys: pytest.CaptureFixture[str]
) -> None:
    path, says = refused
    assert main(["doctor", "--json", "--integrations", str(path)]) == 1
    shown = _output(capsys, fake)["integrations"]
    assert set(shown) == {"amocrm", "kommo", "button"}
    button = shown["button"]["findings"]
    assert [finding["id"] for finding in button] == ["settings_invalid"]
    assert says in button[0]["message"]
    for name in ("amocrm", "kommo"):  # examined, all of them: only the tests' state secret
        assert [finding["id"] for finding in shown[name]["findings"]] == ["state_secret_weak"]


def test_status_and_connections_report_the_refused_integration_and_go_on(
    refused: tuple[Path, str], fake: FakeAmoCRM, capsys: pytest.CaptureFixture[str]
) -> None:
    path, says = refused
    assert main(["status", "k-1", "--integrations", str(path)]) == 1
    out, err = capsys.readouterr()
    shown = json.loads(out)["integrations"]
    assert shown["kommo"]["status"] == "connected"
    assert says in shown["button"]["error"] and says in err
    assert main(["connections", "--integrations", str(path)]) == 1
    out, err = capsys.readouterr()
    summaries = [item for item in map(json.loads, out.splitlines()) if item["type"] == "summary"]
    assert [item["integration"] for item in summaries] == ["amocrm", "kommo"]
    assert [item["total"] for item in summaries] == [2, 2]
    assert "integration 'button'" in err and says in err


def test_a_store_variable_unset_is_that_integrations_finding_and_skipped_by_status(
    two: Path, fake: FakeAmoCRM, capsys: pytest.CaptureFixture[str]
) -> None:
    with two.open("a", encoding="utf-8") as file:
        file.write(
            '[integrations.other]\nclient_id = "other"\nclient_secret_env = "AMO_KOMMO_SECRET"\n'
            'redirect_uri = "https://b.example/cb"\nstate_secret_env = "AMO_STATE_SECRET"\n'
            'store_env = "AMO_OTHER_STORE"\n'
        )
    assert main(["doctor", "--json", "--integrations", str(two)]) == 1
    shown = _output(capsys, fake)["integrations"]
    store = {finding["id"]: finding for finding in shown["other"]["findings"]}["store_unopened"]
    assert "AMO_OTHER_STORE" in store["message"]
    assert [finding["id"] for finding in shown["kommo"]["findings"]] == ["state_secret_weak"]
    assert main(["status", "k-1", "--integrations", str(two)]) == 1
    assert json.loads(capsys.readouterr().out)["integrations"]["kommo"]["status"] == "connected"
    with pytest.raises(SystemExit, match="AMO_OTHER_STORE, which is not set"):
        main(["refresh-due", "--integrations", str(two)])  # a sweep acts on all or none
    assert fake.token_call_count("refresh_token") == 0


@pytest.mark.parametrize("text", [_integration('"sk-live-7f3a9c" = 1'), '"sk-live-7f3a9c" = 1'])
def test_a_key_that_names_no_setting_is_never_repeated(text: str) -> None:
    with pytest.raises(ValueError, match="names no setting") as refused:
        parse_integrations(text)
    assert "sk-live" not in str(refused.value)
