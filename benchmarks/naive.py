"""The naive baseline beside ours: a tutorial's amoCRM handler on authlib's httpx client.

The naive handler exchanges the code on every callback and refreshes on every read of an
expired token, keeping the token in a dict, as a typical tutorial does
(``authlib.integrations.httpx_client.OAuth2Client``, ``client_secret_post``). Ours is
``AmoOAuth`` on a ``MemoryStore``. Both talk to one in-process ``FakeAmoCRM`` each, with the
same latency, in two scenarios:

- ``duplicates``: the seed (the callback, then the app's own replay of it), then N concurrent
  duplicates of the same redirect;
- ``storm``: N concurrent reads of an expired access token.

Printed per handler: its token calls, what the callers got (tallied), and whether the token
stored afterwards still works (``GET /api/v4/account`` with it).

    python benchmarks/naive.py [--callers 100] [--latency 0.02]

A figure, not a test: the threads race, so the naive tallies differ from run to run.
"""

from __future__ import annotations

import argparse
import enum
import threading
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import authlib.deprecate  # type: ignore[import-untyped]  # noqa: F401  (its filter first)
import httpx

with warnings.catch_warnings():  # authlib 1.9 warns about its own httpx module on import
    warnings.simplefilter("ignore")
    from authlib.integrations.httpx_client import OAuth2Client  # type: ignore[import-untyped]

from amo_oauth import AmoOAuth, Config, MemoryStore
from amo_oauth.testing import FakeAmoCRM, FakeClock

USER = "naive-user"
#: How far the clock moves for the storm: past the access token's 24 h.
EXPIRED = timedelta(hours=25)


@attrs.frozen
class Outcome:
    """What one scenario left: token calls of its grant, what the callers got (an answer's
    kind, or an error's class and first words), and whether the stored token still opens
    ``/api/v4/account``."""

    token_calls: int
    answers: dict[str, int]
    token_works: bool

    @property
    def errors(self) -> int:
        return sum(n for kind, n in self.answers.items() if kind.startswith("error"))

    def line(self) -> str:
        tally = ", ".join(f"{kind} x{n}" for kind, n in sorted(self.answers.items()))
        works = "works" if self.token_works else "BROKEN"
        return f"token calls {self.token_calls:4}  stored token {works:6}  callers: {tally}"


class NaiveHandler:
    """The tutorial's handler: one dict of tokens, authlib for the token calls, no lock and
    no bookkeeping beyond what authlib returns. Expiry is read from ``clock`` (the fake's).

    authlib raises only for an answer with an ``error`` member, which amoCRM's refusals lack
    (``hint``, ``title``, ``status``: protocol notes §4), so the plain handler saves a
    refusal as if it were a token. ``checked=True`` is the careful tutorial: a compliance hook
    raises for any status of 400 and above, and nothing is saved then."""

    def __init__(self, fake: FakeAmoCRM, clock: FakeClock, *, checked: bool = False) -> None:
        self.fake, self.clock, self.checked = fake, clock, checked
        self.tokens: dict[str, dict[str, Any]] = {}

    def _client(self) -> OAuth2Client:
        client = OAuth2Client(
            client_id=self.fake.client_id,
            client_secret=self.fake.client_secret,
            token_endpoint_auth_method="client_secret_post",
            redirect_uri=self.fake.redirect_uri,
            transport=self.fake.transport(),
        )
        if self.checked:
            for hook in ("access_token_response", "refresh_token_response"):
                client.register_compliance_hook(hook, _raise_for_status)
        return client

    def _save(self, host: str, token: dict[str, Any]) -> None:
        saved = dict(token, host=host)
        saved["expires_at"] = self.clock().timestamp() + float(token.get("expires_in", 0))
        self.tokens[USER] = saved

    def callback(self, query: dict[str, str]) -> str:
        """Exchange the redirect's code and save what comes back."""
        host = query["referer"]
        with self._client() as client:
            token = client.fetch_token(f"https://{host}/oauth2/access_token", code=query["code"])
        self._save(host, token)
        return "connected"

    def access_token(self) -> str:
        """The saved access token, refreshed first when expired."""
        token = self.tokens[USER]
        if token["expires_at"] <= self.clock().timestamp():
            with self._client() as client:
                fresh = client.refresh_token(
                    f"https://{token['host']}/oauth2/access_token",
                    refresh_token=token["refresh_token"],
                    redirect_uri=self.fake.redirect_uri,
                )
            self._save(token["host"], fresh)
            token = self.tokens[USER]
        return str(token["access_token"])

    def stored_token(self) -> str | None:
        token = self.tokens.get(USER, {}).get("access_token")
        return token if isinstance(token, str) else None


def _raise_for_status(response: httpx.Response) -> httpx.Response:
    return response.raise_for_status()


def kind_of(answer: object) -> str:
    """A caller's answer as a tally key: no token or code in it (only an error's first words)."""
    if isinstance(answer, BaseException):
        words = " ".join(str(answer).split()[:4])[:40]
        return f"error {type(answer).__name__}" + (f": {words}" if words else "")
    if isinstance(answer, enum.Enum):
        return str(answer.value)
    if isinstance(answer, str) and answer not in ("connected",):
        return "a token"
    return str(answer)


def at_once(callers: int, call: Callable[[], object]) -> Counter[str]:
    """``call`` from ``callers`` threads released together; their answers tallied."""
    barrier = threading.Barrier(callers)

    def one(_: int) -> str:
        barrier.wait()
        try:
            return kind_of(call())
        except Exception as exc:  # tallied: what the caller got
            return kind_of(exc)

    with ThreadPoolExecutor(max_workers=callers) as pool:
        return Counter(pool.map(one, range(callers)))


def account_opens(fake: FakeAmoCRM, token: str | None) -> bool:
    """Whether ``GET /api/v4/account`` on the account host answers 200 with ``token``."""
    if token is None:
        return False
    with httpx.Client(transport=fake.transport()) as client:
        answer = client.get(
            f"https://{fake.account_host}/api/v4/account",
            headers={"Authorization": f"Bearer {token}"},
        )
    return answer.status_code == 200


def fake_and_clock(latency: float) -> tuple[FakeAmoCRM, FakeClock]:
    clock = FakeClock()
    return FakeAmoCRM(clock=clock, rate_limit=None, latency=latency), clock


def redirect_of(fake: FakeAmoCRM, state: str | None = None) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(fake.authorize(state)).query))


# -- the naive handler ---------------------------------------------------------------------


def naive_duplicates(callers: int, latency: float, *, checked: bool = False) -> Outcome:
    fake, clock = fake_and_clock(latency)
    app = NaiveHandler(fake, clock, checked=checked)
    query = redirect_of(fake)
    seed: Counter[str] = Counter()
    for _ in range(2):  # the callback, then the app's replay of it
        try:
            seed[kind_of(app.callback(query))] += 1
        except Exception as exc:  # tallied: what the caller got
            seed[kind_of(exc)] += 1
    answers = seed + at_once(callers, lambda: app.callback(query))
    calls = fake.token_call_count("authorization_code")
    return Outcome(calls, dict(answers), account_opens(fake, app.stored_token()))


def naive_storm(callers: int, latency: float, *, checked: bool = False) -> Outcome:
    fake, clock = fake_and_clock(latency)
    app = NaiveHandler(fake, clock, checked=checked)
    app.callback(redirect_of(fake))
    clock.advance(EXPIRED)
    answers = at_once(callers, app.access_token)
    calls = fake.token_call_count("refresh_token")
    return Outcome(calls, dict(answers), account_opens(fake, app.stored_token()))


# -- ours ----------------------------------------------------------------------------------


def ours(fake: FakeAmoCRM, clock: FakeClock) -> AmoOAuth:
    config = Config(
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        redirect_uri=fake.redirect_uri,
        state_secret="naive-bench-state-secret-of-32-bytes",
        lease_ttl=timedelta(seconds=300),
    )
    http = httpx.Client(transport=fake.transport())
    return AmoOAuth(config, store=MemoryStore(clock=clock), http=http, clock=clock)


def ours_duplicates(callers: int, latency: float) -> Outcome:
    fake, clock = fake_and_clock(latency)
    with ours(fake, clock) as oauth:
        begun = oauth.begin(USER)
        query = redirect_of(fake, begun.state)

        def deliver() -> object:
            return oauth.handle_callback(query, binding=begun.binding).outcome

        seed = Counter(kind_of(deliver()) for _ in range(2))
        answers = seed + at_once(callers, deliver)
        calls = fake.token_call_count("authorization_code")
        return Outcome(calls, dict(answers), account_opens(fake, oauth.access_token(USER)))


def ours_storm(callers: int, latency: float) -> Outcome:
    fake, clock = fake_and_clock(latency)
    with ours(fake, clock) as oauth:
        begun = oauth.begin(USER)
        oauth.handle_callback(redirect_of(fake, begun.state), binding=begun.binding)
        clock.advance(EXPIRED)
        answers = at_once(callers, lambda: oauth.access_token(USER))
        calls = fake.token_call_count("refresh_token")
        return Outcome(calls, dict(answers), account_opens(fake, oauth.access_token(USER)))


Run = Callable[[int, float], Outcome]
#: Per scenario: the handlers, by the name printed.
SCENARIOS: dict[str, dict[str, Run]] = {
    "duplicates": {
        "naive": naive_duplicates,
        "naive, checked": partial(naive_duplicates, checked=True),
        "ours": ours_duplicates,
    },
    "storm": {
        "naive": naive_storm,
        "naive, checked": partial(naive_storm, checked=True),
        "ours": ours_storm,
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--callers", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.02, help="token latency, seconds")
    args = parser.parse_args()
    print(f"{args.callers} concurrent callers, token latency {args.latency}s")
    for scenario, handlers in SCENARIOS.items():
        for name, run in handlers.items():
            print(f"  {scenario:10} {name:15} {run(args.callers, args.latency).line()}")


if __name__ == "__main__":
    main()
