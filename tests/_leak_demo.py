"""``amo-oauth demo`` for tests/test_leak_canaries.py, with everything logged: every logger at
level 1 to stderr (DEBUG and uvicorn's trace), uvicorn at ``trace`` with its access log on.

The demo's own players' HTTP clients are not logged (``_not_the_players``). Run as
``python _leak_demo.py OUT``: the demo prints as it always does; the run's canaries
(the client and state secrets, the codes and tokens the fake issued, the ticket and the binding
its players were handed) and whether each was used
go to the JSON file OUT, never to the output the test searches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
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
    setattr(uvicorn, "Config", _TracedConfig)  # noqa: B010  (what serve_asgi builds)
    configs: list[Config] = []
    handed_out: list[tuple[str, str]] = []
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
    setattr(_demo, "load_example", _players_noted(_demo.load_example, handed_out))  # noqa: B010
    setattr(_demo, "Config", recorded_config)  # noqa: B010
    setattr(_demo, "_stack", recorded_stack)  # noqa: B010
    code = _demo.run_demo()
    report = _report(configs, stacks)
    report["canaries"] += handed_out
    report["used"]["a ticket and a binding handed out"] = {k for k, _ in handed_out} == {
        "ticket",
        "binding",
    }
    out.write_text(json.dumps(report))
    return code


def _players_noted(
    load_example: Callable[[str], ModuleType], noted: list[tuple[str, str]]
) -> Callable[[str], ModuleType]:
    """``load_example`` whose mobile client notes the ticket the backend hands the app and the
    binding cookie it sets in the browser (the demo's own players: their place)."""

    def load(name: str) -> ModuleType:
        module = load_example(name)
        if name == "mobile_client":
            connect_link, open_connect = module.connect_link, module.open_connect

            def noted_link(backend: str, token: str) -> str:
                link = str(connect_link(backend, token))
                noted.append(("ticket", dict(parse_qsl(urlsplit(link).query))["ticket"]))
                return link

            def noted_open(browser: httpx.Client, backend: str, token: str) -> str:
                consent = str(open_connect(browser, backend, token))
                noted.extend(
                    ("binding", cookie.value or "")
                    for cookie in browser.cookies.jar
                    if cookie.name.endswith("amo_oauth_binding")
                )
                return consent

            setattr(module, "connect_link", noted_link)  # noqa: B010  (open_connect reads it)
            setattr(module, "open_connect", noted_open)  # noqa: B010
        return module

    return load


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
