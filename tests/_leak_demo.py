"""``amo-oauth demo`` for tests/test_leak_canaries.py, with everything logged: every logger at
level 1 to stderr (DEBUG and uvicorn's trace), uvicorn at ``trace`` with its access log on.

The demo's own players' HTTP clients are not logged (``_not_the_players``). Run as
``python _leak_demo.py OUT``: the demo prints as it always does; the run's canaries
(the client and state secrets, the codes and tokens the fake issued) and whether each was used
go to the JSON file OUT, never to the output the test searches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from amo_oauth import Config, _demo


class _TracedConfig(uvicorn.Config):
    """uvicorn's configuration as the demo makes it, at ``trace`` with the access log on."""

    def __init__(self, app: Any, **options: Any) -> None:
        options.update(log_level="trace", access_log=True)
        super().__init__(app, **options)


def _not_the_players(record: logging.LogRecord) -> bool:
    """The demo plays the browser and the app on its main thread: their own HTTP clients' log
    lines (the URL a browser opens holds the code; a real browser's is not the backend's log)
    are dropped. The backend runs on uvicorn's thread: everything it logs is kept."""
    players = threading.main_thread().ident
    return not (record.thread == players and record.name.startswith(("httpx", "httpcore")))


def main(out: Path) -> int:
    logging.basicConfig(
        level=1, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s", force=True
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_not_the_players)
    uvicorn.Config = _TracedConfig  # type: ignore[misc]  # what serve_asgi builds
    configs: list[Config] = []
    stacks: list[_demo.Stack] = []
    make_stack = _demo._stack

    def recorded_config(*args: Any, **kwargs: Any) -> Config:
        configs.append(Config(*args, **kwargs))
        return configs[-1]

    @contextlib.contextmanager
    def recorded_stack(db: Path) -> Iterator[_demo.Stack]:
        with make_stack(db) as stack:
            stacks.append(stack)
            yield stack

    printed = _demo._transitions_printed

    @contextlib.contextmanager
    def printed_at_every_level() -> Iterator[None]:
        with printed():  # it sets "amo_oauth" to INFO: below that too
            logging.getLogger("amo_oauth").setLevel(1)
            yield

    _demo._transitions_printed = printed_at_every_level
    _demo.Config = recorded_config  # type: ignore[assignment,misc]
    _demo._stack = recorded_stack  # type: ignore[assignment]
    code = _demo.run_demo()
    out.write_text(json.dumps(_report(configs, stacks)))
    return code


def _report(configs: list[Config], stacks: list[_demo.Stack]) -> dict[str, Any]:
    (stack,) = stacks
    fake, issued = stack.fake, stack.fake.issued
    config = configs[0]
    state_secret = config.state_secret
    raw = state_secret if isinstance(state_secret, bytes) else state_secret.encode()
    canaries = [
        ("client_secret", config.client_secret),
        *(("code", code) for code in issued.codes),
        *(("access_token", token) for token in issued.access_tokens),
        *(("refresh_token", token) for token in issued.refresh_tokens),
    ]
    used = {
        "client_secret (the fake accepted a token call)": fake.codes_exchanged >= 1,
        "every code sent": all(fake.token_calls_for(code) >= 1 for code in issued.codes),
        "every access token used": all(fake.api_calls_with(t) >= 1 for t in issued.access_tokens),
        "state secret (a state it signed was accepted)": fake.codes_exchanged >= 1,
    }
    return {"canaries": canaries, "state_secret_hex": raw.hex(), "used": used}


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
