"""What the fake counts as requests come in: the readings tests assert on.

Secrets are counted by their sha256 (`_wire.digest`), never kept. The caller holds the fake's
lock; `FakeReadings` copies what it hands out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from ._site_button import SecretsPost
from ._types import RequestRecord
from ._wire import digest

TokenCall = tuple[str, str, int | None, str | None]
"""A token call: (grant, outcome, account id or None, client id or None)."""
ApiCall = tuple[str, str, int | None]
"""An API call: (path, outcome, account id or None)."""


class Tally:
    """Every count the fake keeps, by endpoint."""

    def __init__(self) -> None:
        self.requests: list[RequestRecord] = []
        self.token_log: Counter[TokenCall] = Counter()
        # sha256 of each code / refresh token sent to the token endpoint -> how many times.
        self.presented: Counter[str] = Counter()
        # (sha256 of a refresh token sent with grant_type=refresh_token, host) -> how many times.
        self.refresh_sends: Counter[tuple[str, str]] = Counter()
        self.api_log: Counter[ApiCall] = Counter()
        self.lookup_log: Counter[tuple[str, str]] = Counter()
        self.lookup_presented: Counter[str] = Counter()
        self.lookup_authorization = 0
        # sha256 of each bearer token sent to an API path -> how many times, whatever answered.
        self.bearer_presented: Counter[str] = Counter()
        self.secrets_posts: list[SecretsPost] = []

    def note_sent(self, grant: str, secret: str, host: str) -> None:
        """A token call carried `secret` (its code or refresh token) to `host`."""
        self.presented[digest(secret)] += 1
        if grant == "refresh_token":
            self.refresh_sends[(digest(secret), host)] += 1

    def token_calls(self) -> Counter[tuple[str, str]]:
        """Token calls by (grant, outcome), over all accounts and integrations."""
        return _by_first_two(self.token_log.items())

    def token_call_count(
        self, grant: str | None, outcome: str | None, account_id: int | None, client_id: str | None
    ) -> int:
        """Token calls matching every filter given (None matches any)."""
        wanted = (grant, outcome, account_id, client_id)
        return sum(count for call, count in self.token_log.items() if _matches(wanted, call))

    def refresh_sends_of(self, refresh_token: str, host: str | None) -> int:
        """Sends of `refresh_token` with grant_type=refresh_token, to `host` (None: any)."""
        sent = digest(refresh_token)
        return sum(
            count
            for (secret, to), count in self.refresh_sends.items()
            if secret == sent and host in (None, to.lower())
        )

    def api_calls(self) -> Counter[tuple[str, str]]:
        """API calls by (path, outcome), over all accounts."""
        return _by_first_two(self.api_log.items())

    def api_call_count(self, path: str | None, outcome: str | None, account_id: int | None) -> int:
        """API calls matching every filter given (None matches any)."""
        wanted = (path, outcome, account_id)
        return sum(count for call, count in self.api_log.items() if _matches(wanted, call))


def _by_first_two(calls: Iterable[tuple[tuple[Any, ...], int]]) -> Counter[tuple[str, str]]:
    # The first two fields of a logged call are what it was and how it ended.
    rolled: Counter[tuple[str, str]] = Counter()
    for call, count in calls:
        rolled[(call[0], call[1])] += count
    return rolled


def _matches(wanted: tuple[object, ...], call: tuple[object, ...]) -> bool:
    return all(want in (None, got) for want, got in zip(wanted, call, strict=True))
