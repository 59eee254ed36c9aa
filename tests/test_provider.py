"""amoCRM's answers: the meaning table, the bounds on every field, and the whole-call deadline."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amo_oauth._answers import (
    GRANTS,
    ROWS,
    TOKEN_GRANTS,
    Answer,
    Meaning,
    classify,
    clean_hint,
    describe,
    markdown_rows,
)
from amo_oauth._config import Config
from amo_oauth._errors import ProviderError
from amo_oauth._hosts import AccountHost
from amo_oauth._provider import (
    account_request,
    asend_within,
    code_request,
    error_from_exception,
    lookup_request,
    refresh_request,
    send_within,
)
from amo_oauth._provider_calls import code_call, lookup_call
from amo_oauth._provider_reads import (
    MAX_ACCOUNT_ID,
    MAX_EXPIRES_IN,
    MAX_TOKEN_LENGTH,
    MIN_EXPIRES_IN,
    meaning_of,
    read_account,
    read_tokens,
    reason_of,
)
from amo_oauth._records import ClientCredentials
from amo_oauth.testing import FakeAmoCRM
from amo_oauth.testing._protocol import TOKEN_PROBLEMS

from helpers import config_for

NOW = datetime(2030, 1, 1, tzinfo=UTC)
ACCESS = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJjbGllbnQifQ.c2lnbmF0dXJlLXNlY3JldA"
REFRESH = "def50200a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccdd"
PROBLEM = "application/problem+json"


def answer(status: int, body: Any = None, *, raw: bytes | None = None, ctype: str = PROBLEM):
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.Response(status, content=content, headers={"content-type": ctype})


def tokens_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "token_type": "Bearer",
        "expires_in": 86400,
        "access_token": ACCESS,
        "refresh_token": REFRESH,
    }
    body.update(changes)
    return {key: value for key, value in body.items() if value is not DROP}


DROP = object()


def failure(call, *args: Any, **kwargs: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        call(*args, **kwargs)
    return info.value


# -- the table ---------------------------------------------------------------------------------

# The hints of amocrm-protocol.md §4 (and the title of its hint-less 401), as listed there.
PROTOCOL_S4_HINTS = (
    "Authorization code has been revoked",
    "Authorization code has expired",
    "Cannot decrypt the authorization code",
    "Check the `client_id` parameter",
    "Check the `client_secret` parameter",
    "Redirect URI is not associated with client",
    "Invalid account",
    "Token has been revoked",
)
GENERIC = {"rejected", "unavailable", "bad_client"}


@pytest.mark.parametrize("hint", PROTOCOL_S4_HINTS)
@pytest.mark.parametrize("status", [400, 401])
@pytest.mark.parametrize("grant", [*sorted(TOKEN_GRANTS), None])
def test_every_protocol_hint_has_its_own_row(grant, status, hint):
    assert classify(grant, status, hint).reason not in GENERIC
    # matched case-insensitively, ignoring spaces and a final period
    assert classify(grant, status, f" {hint.upper()}. ") == classify(grant, status, hint)


def section_4_hints(text: str) -> set[str]:
    """The hints quoted in §4 of the protocol notes: ``"hint":"..."`` in bodies, and the
    backquoted phrases (double backquotes for those containing a backquote)."""
    section = text.split("## 4.", 1)[1].split("## 5.", 1)[0]
    hints = set(re.findall(r'"hint":"([^"]+)"', section))
    doubled = re.findall(r"``(.+?)``", section)
    hints.update(doubled)
    for phrase in re.findall(r"`([^`]+)`", re.sub(r"``(.+?)``", "", section)):
        if " " in phrase and not phrase.startswith(("{", "http")):
            hints.add(phrase)
    return hints


def test_the_hint_list_is_the_protocol_notes_list():
    notes = Path("/work/shared/design/amocrm-protocol.md")
    sample = '## 4. E\n- `{"hint":"A b","x":1}` hint `C d`, ``E `f` g``, `type`\n## 5.'
    assert section_4_hints(sample) == {"A b", "C d", "E `f` g"}
    if not notes.exists():
        pytest.skip("the shared protocol notes are not on this machine")
    assert section_4_hints(notes.read_text(encoding="utf-8")) == set(PROTOCOL_S4_HINTS)


# Legacy reason_of(error) (no grant) must keep the slugs it always gave.
LEGACY = {
    "Authorization code has been revoked": "code_revoked",
    "Authorization code has expired": "code_expired",
    "Cannot decrypt the authorization code": "code_invalid",
    "Check the `client_id` parameter": "bad_client_id",
    "Check the `client_secret` parameter": "bad_client_secret",
    "Redirect URI is not associated with client": "bad_redirect_uri",
    "Invalid account": "invalid_account",
    "Token has been revoked": "token_revoked",
}


@pytest.mark.parametrize(("hint", "slug"), LEGACY.items())
def test_legacy_slugs_are_kept(hint, slug):
    assert reason_of(ProviderError(400, hint)) == slug
    assert reason_of(ProviderError(400, hint, transient=True)) == "unavailable"
    assert reason_of(ProviderError(401, "Некорректный клиент")) == "bad_client"
    assert reason_of(ProviderError(400, "Something else")) == "rejected"
    assert reason_of(ProviderError(None, "ReadTimeout", transient=True)) == "unavailable"


# The fake's every token-endpoint problem, as the library must read it.
FAKE_PROBLEMS = {
    "invalid_account": (Meaning.ACCOUNT_MOVED, "invalid_account"),
    "bad_grant_type": (Meaning.REJECTED, "rejected"),
    "missing_client_id": (Meaning.CLIENT_MISCONFIGURED, "bad_client_id"),
    "bad_client_id": (Meaning.CLIENT_MISCONFIGURED, "bad_client_id"),
    "missing_client_secret": (Meaning.CLIENT_MISCONFIGURED, "bad_client_secret"),
    "bad_secret": (Meaning.CLIENT_MISCONFIGURED, "bad_client"),
    "missing_redirect_uri": (Meaning.REJECTED, "rejected"),
    "bad_redirect_uri": (Meaning.CLIENT_MISCONFIGURED, "bad_redirect_uri"),
    "missing_code": (Meaning.REJECTED, "rejected"),
    "code_garbage": (Meaning.CODE_SPENT, "code_invalid"),
    "code_expired": (Meaning.CODE_SPENT, "code_expired"),
    "code_revoked": (Meaning.CODE_SPENT, "code_revoked"),
    "missing_refresh_token": (Meaning.REJECTED, "rejected"),
    "refresh_garbage": (Meaning.REFRESH_REFUSED, "token_invalid"),
    "token_revoked": (Meaning.REFRESH_REFUSED, "token_revoked"),
    "code_wrong_client": (Meaning.CODE_SPENT, "code_wrong_client"),
    "refresh_wrong_client": (Meaning.REFRESH_REFUSED, "token_wrong_client"),
}


def test_every_problem_of_the_fake_is_classified():
    assert set(FAKE_PROBLEMS) == set(TOKEN_PROBLEMS)
    for outcome, problem in TOKEN_PROBLEMS.items():
        grant = "refresh_token" if "refresh" in outcome or "token" in outcome else None
        error = failure(read_tokens, answer(problem.status, problem.body()), NOW, grant=grant)
        assert not error.transient
        assert meaning_of(error, grant) == Answer(*FAKE_PROBLEMS[outcome]), outcome


CASES = [
    # (grant, status, body or None for an HTML page, meaning, reason)
    ("refresh_token", 400, {"error": "invalid_grant"}, Meaning.REFRESH_REFUSED, "token_invalid"),
    ("authorization_code", 400, {"error": "invalid_grant"}, Meaning.CODE_SPENT, "code_invalid"),
    ("refresh_token", 401, {"hint": "Token has been revoked"}, Meaning.REFRESH_REFUSED, None),
    ("refresh_token", 400, {"hint": "Invalid account"}, Meaning.ACCOUNT_MOVED, "invalid_account"),
    ("refresh_token", 404, None, Meaning.ACCOUNT_MOVED, "account_not_found"),
    ("account", 404, None, Meaning.ACCOUNT_MOVED, "account_not_found"),
    ("authorization_code", 401, {"hint": "Authorization code has expired"}, Meaning.CODE_SPENT, 0),
    ("refresh_token", 403, None, Meaning.ACCOUNT_BLOCKED, "account_blocked"),
    ("authorization_code", 403, {"title": "x"}, Meaning.ACCOUNT_BLOCKED, "account_blocked"),
    ("account", 403, None, Meaning.ACCOUNT_BLOCKED, "account_blocked"),
    ("api", 403, {"title": "Forbidden"}, Meaning.ACCOUNT_BLOCKED, "account_blocked"),
    ("account", 402, None, Meaning.PAYMENT_REQUIRED, "payment_required"),
    ("api", 401, {"title": "Unauthorized"}, Meaning.TOKEN_REJECTED, "token_rejected"),
    ("account", 401, {"hint": "Token has been revoked"}, Meaning.TOKEN_REJECTED, 0),
    ("authorization_code", 400, None, Meaning.TRANSIENT, "unavailable"),
    ("authorization_code", 502, {"hint": "Invalid account"}, Meaning.TRANSIENT, "unavailable"),
    ("refresh_token", 429, {"title": "Too Many Requests"}, Meaning.TRANSIENT, "unavailable"),
    ("subdomain_lookup", 401, None, Meaning.REFRESH_REFUSED, "token_invalid"),
    ("subdomain_lookup", 400, {"title": "x"}, Meaning.REJECTED, "lookup_failed"),
    ("api", 400, {"title": "Bad Request"}, Meaning.REJECTED, "rejected"),
]


@pytest.mark.parametrize(("grant", "status", "body", "meaning", "reason"), CASES)
def test_what_answers_mean(grant, status, body, meaning, reason):
    hint = clean_hint((body or {}).get("hint") or (body or {}).get("error")) or (
        (body or {}).get("title")
    )
    got = classify(grant, status, hint)
    assert got.meaning is meaning
    if isinstance(reason, str):
        assert got.reason == reason


@pytest.mark.parametrize(("grant", "status", "body", "meaning", "reason"), CASES)
def test_an_error_carries_its_classification(grant, status, body, meaning, reason):
    response = answer(status, raw=b"<html>no</html>", ctype="text/html") if body is None else None
    response = response or answer(status, body)
    if grant == "account":
        error = failure(read_account, response)
    else:
        error = failure(read_tokens, response, NOW, grant=grant)
    assert error.transient is meaning.transient
    assert meaning_of(error, grant).meaning is meaning


def test_no_answer_and_unreadable_answers_are_transient():
    for grant in GRANTS:
        assert classify(grant, None, None) == Answer(Meaning.TRANSIENT, "unavailable")
        assert meaning_of(error_from_exception(httpx.ReadTimeout("t")), grant).meaning is (
            Meaning.TRANSIENT
        )
    unreadable = failure(read_tokens, answer(200, raw=b"<html>", ctype="text/html"), NOW)
    assert unreadable.transient and reason_of(unreadable) == "unavailable"


def test_the_table_is_well_formed():
    assert {row.meaning for row in ROWS} == set(Meaning)
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", row.reason) for row in ROWS)
    assert all(row.source for row in ROWS)
    last = ROWS[-1]
    assert last.grants == frozenset(GRANTS) and last.statuses.every


def test_the_table_renders_as_markdown():
    lines = markdown_rows()
    header = "| grant | status | hint | meaning | reason | next connection status | source |"
    assert lines[0] == header
    assert len(lines) == len(ROWS) + 2
    cells = {len(re.split(r"(?<!\\)\|", line)) for line in lines}
    assert cells == {9}  # seven columns between eight bars
    assert "| authorization_code, refresh_token | 400/401 | `Invalid account` |" in "\n".join(lines)
    assert markdown_rows(header=False) == lines[2:]


@given(
    st.sampled_from([*GRANTS, None]),
    st.one_of(st.none(), st.integers(100, 599), st.integers()),
    st.one_of(st.none(), st.text()),
)
def test_classify_answers_everything(grant, status, hint):
    assert isinstance(classify(grant, status, hint), Answer)


# -- expires_in: clamped, never a reason to throw a pair away ----------------------------------


@pytest.mark.parametrize(
    ("raw", "seconds", "warned"),
    [
        ("86400", 86400, False),
        ("86400.9", 86400, False),
        ("1", 1, False),
        (str(MAX_EXPIRES_IN), MAX_EXPIRES_IN, False),
        ("1e13", MAX_EXPIRES_IN, True),
        ("1000000000000000000", MAX_EXPIRES_IN, True),
        ("1e400", MAX_EXPIRES_IN, True),  # json reads inf
        ("9" * 4000, MAX_EXPIRES_IN, True),
        ("0", MIN_EXPIRES_IN, True),
        ("0.5", MIN_EXPIRES_IN, True),
        ("-86400", MIN_EXPIRES_IN, True),
        ("-1e400", MIN_EXPIRES_IN, True),
        ("NaN", MIN_EXPIRES_IN, True),
        ('"86400"', 86400, True),
        ('" 1e99 "', MAX_EXPIRES_IN, True),
    ],
)
def test_expires_in_is_clamped_into_bounds(raw, seconds, warned, caplog):
    body = json.dumps(tokens_body(expires_in=0)).replace('"expires_in": 0', f'"expires_in": {raw}')
    with caplog.at_level(logging.WARNING, logger="amo_oauth"):
        tokens = read_tokens(answer(200, raw=body.encode(), ctype="application/json"), NOW)
    assert tokens.expires_at == NOW + timedelta(seconds=seconds)
    assert (tokens.access_token, tokens.refresh_token) == (ACCESS, REFRESH)
    warnings = [r for r in caplog.records if r.name == "amo_oauth" and r.levelno >= logging.WARNING]
    assert len(warnings) == (1 if warned else 0)
    for record in warnings:
        message = record.getMessage()
        assert "expires_in" in message
        assert f"{MIN_EXPIRES_IN}..{MAX_EXPIRES_IN}" in message
        assert ACCESS not in message and REFRESH not in message and "9999" not in message


@pytest.mark.parametrize("value", [True, False, [], {}, "soon", "1e", "0x10", "", "∞"])
def test_a_non_number_expires_in_makes_the_answer_unusable(value):
    error = failure(read_tokens, answer(200, tokens_body(expires_in=value)), NOW)
    assert error.hint == "unusable token answer: expires_in"
    assert not error.transient
    assert meaning_of(error, "authorization_code") == Answer(Meaning.UNUSABLE, "unusable_answer")


# -- tokens: what a header can carry -----------------------------------------------------------

BAD_TOKENS = [
    "",
    "ключ-" + ACCESS,
    ACCESS + "\n",
    ACCESS + "\x00",
    "with space",
    "x" * (MAX_TOKEN_LENGTH + 1),
    12345,
    None,
    ["a"],
]


@pytest.mark.parametrize("field", ["access_token", "refresh_token"])
@pytest.mark.parametrize("value", BAD_TOKENS)
def test_a_token_a_header_cannot_carry_makes_the_answer_unusable(field, value):
    if field == "refresh_token" and value is None:
        return  # RFC 6749 §5.1: a null refresh token is an absent one (test_token_answers.py)
    error = failure(read_tokens, answer(200, tokens_body(**{field: value})), NOW)
    assert error.hint == f"unusable token answer: {field}"
    assert not error.transient
    assert reason_of(error, "refresh_token") == "unusable_answer"
    assert ACCESS not in str(error) and REFRESH not in str(error)


def test_token_bounds_are_inclusive():
    longest = "x" * MAX_TOKEN_LENGTH
    tokens = read_tokens(answer(200, tokens_body(access_token=longest, refresh_token="~")), NOW)
    assert (tokens.access_token, tokens.refresh_token) == (longest, "~")


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "BEARER", None, DROP])
def test_token_type_bearer_or_absent(token_type):
    tokens = read_tokens(answer(200, tokens_body(token_type=token_type)), NOW)
    assert tokens.token_type == "Bearer"


@pytest.mark.parametrize("token_type", ["mac", "", 1, ["Bearer"]])
def test_any_other_token_type_is_unusable(token_type):
    error = failure(read_tokens, answer(200, tokens_body(token_type=token_type)), NOW)
    assert error.hint == "unusable token answer: token_type"


def test_a_missing_access_token_is_an_unreadable_transient_answer():
    error = failure(read_tokens, answer(200, tokens_body(access_token=DROP)), NOW)
    assert error.transient and reason_of(error) == "unavailable"


@pytest.mark.parametrize("field", ["refresh_token", "expires_in"])
def test_a_field_the_spec_makes_optional_may_be_missing(field):
    # RFC 6749 §5.1 (issue 18, item 4): the token is kept, never thrown away.
    tokens = read_tokens(answer(200, tokens_body(**{field: DROP})), NOW)
    assert tokens.access_token == ACCESS


# -- the account -------------------------------------------------------------------------------


def account_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": 31000001, "name": "Acme", "subdomain": "acme-shop1"}
    body.update(changes)
    return {key: value for key, value in body.items() if value is not DROP}


def test_a_good_account_is_read():
    account = read_account(answer(200, account_body(), ctype="application/hal+json"))
    assert (account.id, account.subdomain, account.name) == (31000001, "acme-shop1", "Acme")
    longest = read_account(answer(200, account_body(id=MAX_ACCOUNT_ID, subdomain="a" * 63)))
    assert (longest.id, longest.subdomain) == (MAX_ACCOUNT_ID, "a" * 63)


@pytest.mark.parametrize(
    "raw_id", ["1e400", str(2**70), "0", "-1", '"7"', "true", "7.0", "null", "[7]", "9" * 5000]
)
def test_an_account_id_out_of_bounds_is_unusable(raw_id):
    body = json.dumps(account_body(id=0)).replace('"id": 0', f'"id": {raw_id}')
    error = failure(read_account, answer(200, raw=body.encode(), ctype="application/json"))
    if raw_id == "9" * 5000:  # more digits than Python parses: not JSON to us at all
        assert error.hint == "not an account answer" and error.transient
        return
    assert error.hint == "unusable account answer: id"
    assert meaning_of(error, "account") == Answer(Meaning.UNUSABLE, "unusable_account")


@pytest.mark.parametrize(
    "subdomain", ["", "Acme", "-acme", "acme-", "a" * 64, "a.b", "a_b", "ак", 7, None]
)
def test_a_subdomain_that_is_no_dns_label_is_unusable(subdomain):
    error = failure(read_account, answer(200, account_body(subdomain=subdomain)))
    assert error.hint == "unusable account answer: subdomain"


def test_account_names_are_cut_or_defaulted():
    assert read_account(answer(200, account_body(name="n" * 300))).name == "n" * 255
    assert read_account(answer(200, account_body(name=None))).name == ""
    assert read_account(answer(200, account_body(name=DROP))).name == ""
    error = failure(read_account, answer(200, account_body(name=5)))
    assert error.hint == "unusable account answer: name"


# -- no exception but ProviderError, for any body ----------------------------------------------

NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([2**63, 2**63 - 1, 2**64, 10**18, 1e13, 1e308, -0.0, 0]),
)
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, st.text()),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["access_token", "refresh_token", "expires_in", "token_type", "id", "subdomain", "name"]
OBJECTS = st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES) | JSON_VALUES
CTYPES = st.sampled_from(["application/json", PROBLEM, "application/hal+json", "text/html", ""])


def only_provider_errors(response: httpx.Response) -> None:
    for read in (lambda: read_tokens(response, NOW), lambda: read_account(response)):
        error: ProviderError | None = None
        try:
            read()
        except ProviderError as raised:
            error = raised
        assert error is None or isinstance(meaning_of(error), Answer)


@settings(max_examples=300, deadline=None)
@given(OBJECTS, st.sampled_from([200, 200, 400, 401, 403, 404, 429, 500]), CTYPES)
def test_any_json_body_raises_only_provider_error(body, status, ctype):
    only_provider_errors(answer(status, raw=json.dumps(body).encode(), ctype=ctype))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), NUMBERS | st.text(max_size=3), min_size=3))
def test_any_numbers_in_the_fields_raise_only_provider_error(body):
    good = tokens_body() | account_body()
    only_provider_errors(answer(200, {**good, **body}, ctype="application/json"))


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=300)
    | st.sampled_from([b"[" * 100_000, b"1" * 10_000, b'{"id":' + b"9" * 5000 + b"}"]),
    st.integers(100, 599),
    CTYPES,
)
def test_any_bytes_body_raises_only_provider_error(raw, status, ctype):
    only_provider_errors(answer(status, raw=raw, ctype=ctype))


# -- describe(): the flows' log line -----------------------------------------------------------


def test_describe_names_the_reason_and_quotes_the_hint():
    line = describe(
        classify("authorization_code", 400, "Authorization code has been revoked"),
        ("Authorization code has been revoked"),
        status=400,
    )
    assert line == (
        'code_revoked (code_spent, HTTP 400): amoCRM says "Authorization code has been revoked"'
    )
    assert describe(Answer(Meaning.TRANSIENT, "unavailable"), None) == (
        "unavailable (transient, no answer)"
    )
    # No answer: the hint is the transport's, and the line does not put it in amoCRM's mouth.
    assert describe(Answer(Meaning.TRANSIENT, "unavailable"), "ConnectError") == (
        'unavailable (transient, no answer): the transport says "ConnectError"'
    )


def test_describe_never_shows_a_secret():
    secret = "client-secret-Zx"
    hint = f"bad code {REFRESH} for token {ACCESS} with secret {secret}\nFAKE: log line " + (
        "x " * 200
    )
    line = describe(Answer(Meaning.REJECTED, "rejected"), hint, status=400, redact=[secret])
    assert REFRESH not in line and ACCESS not in line and secret not in line
    assert "\n" not in line and len(line) < 200


TOKENISH = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+/=",
    min_size=32,
    max_size=2000,
)


@given(TOKENISH, st.text(max_size=50), st.text(max_size=50), st.text(min_size=16, max_size=40))
def test_no_token_or_code_can_appear_in_describe(token, before, after, secret):
    line = describe(
        Answer(Meaning.REJECTED, "rejected"), before + token + after + secret, redact=[secret]
    )
    assert token not in line
    assert secret not in line.replace("[redacted]", "")


# -- the whole call within the deadline --------------------------------------------------------


class Trickle:
    """A loopback HTTP server answering 200 with a JSON body sent one chunk at a time."""

    def __init__(self, chunks: int, interval: float, head_delay: float = 0.0) -> None:
        self.chunks, self.interval, self.head_delay = chunks, interval, head_delay
        self.sent = 0
        self.headers_sent = False
        self.stop = threading.Event()
        trickle = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                if trickle.stop.wait(trickle.head_delay):
                    return
                body = ('{"pad": "' + "x" * (trickle.chunks - 11) + '"}').encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.flush()
                trickle.headers_sent = True
                try:
                    for index in range(len(body)):  # one byte per chunk
                        # Counted before the write: the client may read the last byte and
                        # the test look at the count before this thread runs again.
                        trickle.sent += 1
                        self.wfile.write(body[index : index + 1])
                        self.wfile.flush()
                        if trickle.stop.wait(trickle.interval):
                            return
                except OSError:
                    return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/oauth2/access_token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Trickle:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()

    def request(self) -> httpx.Request:
        return httpx.Request("POST", self.url, json={"client_secret": "s3cr3t", "code": "c0de"})


def assert_clean_deadline_error(error: ProviderError) -> None:
    assert error.transient and error.status is None
    assert error.__cause__ is None and error.__context__ is None
    assert "s3cr3t" not in str(error) and "c0de" not in str(error)
    assert meaning_of(error, "authorization_code").meaning is Meaning.TRANSIENT


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client() as made:
        yield made


def test_httpx_timeouts_alone_do_not_bound_a_trickle(client):
    # The control: each read waits 0.3 s, far below the per-operation timeout of 3 s (room for
    # a loaded machine's stalls), yet the whole answer takes longer than 3 s. (The body is at
    # least 11 bytes, one a chunk.)
    with Trickle(chunks=12, interval=0.3) as server:
        request = server.request()
        request.extensions["timeout"] = httpx.Timeout(3.0).as_dict()
        response = client.send(request)
        assert response.status_code == 200 and len(response.content) == server.sent == 12


def test_send_within_bounds_the_whole_call(client):
    with Trickle(chunks=20, interval=0.2) as server:
        error = failure(send_within, client, server.request(), 1.0)
        sent = server.sent
    assert server.headers_sent and 0 < sent < 20
    assert_clean_deadline_error(error)
    assert error.hint == "no complete answer within 1 s"


def test_send_within_bounds_the_wait_for_headers(client):
    with Trickle(chunks=2, interval=0.0, head_delay=5.0) as server:
        error = failure(send_within, client, server.request(), 0.5)
        assert not server.headers_sent
    assert_clean_deadline_error(error)


def test_send_within_returns_a_prompt_answer_in_full(client):
    with Trickle(chunks=12, interval=0.0) as server:
        response = send_within(client, server.request(), 5.0)
    assert response.status_code == 200 and server.sent == 12
    assert response.json() == {"pad": "x"}


def test_asend_within_bounds_the_whole_call():
    async def call(server: Trickle) -> ProviderError:
        async with httpx.AsyncClient() as client:
            with pytest.raises(ProviderError) as info:
                await asend_within(client, server.request(), 1.0)
            return info.value

    with Trickle(chunks=20, interval=0.2) as server:
        error = asyncio.run(call(server))
        sent = server.sent
    assert 0 < sent < 20
    assert_clean_deadline_error(error)


def test_asend_within_returns_a_prompt_answer():
    async def call(server: Trickle) -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await asend_within(client, server.request(), 5.0)

    with Trickle(chunks=12, interval=0.0) as server:
        response = asyncio.run(call(server))
    assert response.json() == {"pad": "x"}


def test_a_transport_failure_is_transient_and_chainless(client):
    with Trickle(chunks=1, interval=0.0) as server:
        url = server.url
    request = httpx.Request("POST", url, json={"client_secret": "s3cr3t", "code": "c0de"})
    error = failure(send_within, client, request, 2.0)
    assert error.hint == "ConnectError"
    assert_clean_deadline_error(error)


def test_the_deadline_must_be_positive(client):
    with pytest.raises(ValueError, match="positive"):
        send_within(client, httpx.Request("GET", "http://127.0.0.1:9/"), 0)


def test_the_committed_answers_page_is_current():
    from pathlib import Path

    from amo_oauth._answers import markdown_rows

    page = Path(__file__).resolve().parents[1] / "docs" / "answers.md"
    assert "\n".join(markdown_rows()) + "\n" in page.read_text(encoding="utf-8"), (
        "paste markdown_rows() into docs/answers.md again"
    )


# -- the requests, as data and as httpx requests ----------------------------------------------


def test_the_token_calls_post_json_with_the_client_credentials():
    config = config_for(FakeAmoCRM())
    host = AccountHost("test.amocrm.ru")
    # A site-button install's own integration (metadata mode) travels the same way.
    own = ClientCredentials("the-connections-own-client-id", "its-own-secret")
    assert config.credentials is not None
    for credentials in (config.credentials, own):
        _posts_json_with(config, credentials, host)


def _posts_json_with(config: Config, credentials: ClientCredentials, host: AccountHost) -> None:
    code = code_request(config, credentials, host, "the-code")
    refresh = refresh_request(config, credentials, host, "the-refresh-token")
    for request, grant in (
        (code, {"code": "the-code"}),
        (refresh, {"refresh_token": "the-refresh-token"}),
    ):
        assert (request.method, str(request.url)) == (
            "POST",
            "https://test.amocrm.ru/oauth2/access_token",
        )
        assert request.headers["accept"] == "application/json"
        assert request.headers["content-type"] == "application/json"
        body = json.loads(request.content)
        assert body == {
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret,
            "redirect_uri": config.redirect_uri,
            "grant_type": "authorization_code" if "code" in grant else "refresh_token",
            **grant,
        }
        assert request.extensions["timeout"] == httpx.Timeout(config.http_timeout).as_dict()


def test_the_account_check_and_the_lookup_send_one_secret_header_each():
    config = config_for(FakeAmoCRM())
    account = account_request(config, AccountHost("test.amocrm.ru"), "the-access-token")
    lookup = lookup_request(config, AccountHost("api-b.amocrm.ru"), "the-refresh-token")
    assert (account.method, str(account.url)) == ("GET", "https://test.amocrm.ru/api/v4/account")
    assert account.headers["authorization"] == "Bearer the-access-token"
    assert (lookup.method, str(lookup.url)) == (
        "GET",
        "https://api-b.amocrm.ru/oauth2/account/current/subdomain",
    )
    assert lookup.headers["x-refresh-token"] == "the-refresh-token"
    assert "authorization" not in lookup.headers
    assert account.content == lookup.content == b""


def test_a_call_as_data_keeps_its_secrets_out_of_its_repr():
    config = config_for(FakeAmoCRM())
    assert config.credentials is not None
    calls = (
        code_call(config, config.credentials, AccountHost("test.amocrm.ru"), "the-code"),
        lookup_call(config, AccountHost("api-b.amocrm.ru"), "the-refresh-token"),
    )
    for call in calls:
        shown = repr(call)
        assert call.url in shown
        for secret in ("the-code", "the-refresh-token", config.client_secret):
            assert secret not in shown
