"""docs/configuration.md's table of ``Config`` fields is the code's: every field of
``attrs.fields(Config)``, in order, each default as the code has it.

A reviewer found the quickstart's table missing a dozen fields (``trusted_proxies``, the
exchange bounds, ``kept_pair_grace``, the back-off...): the one table is now read against the
class, so a new field fails this test until it is documented.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import attrs

from amo_oauth import Config

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
#: Defaults computed from other fields, as the table words them.
COMPUTED = {
    "kept_pair_grace": "`2 * lease_ttl`",
    "button_script_url": "amoCRM's (Kommo's for a Kommo `authorize_url`)",
}


def _rows() -> list[list[str]]:
    section = PAGE.read_text(encoding="utf-8").split("## Every `Config` field\n", 1)[1]
    table = section.split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]


def _documented_default(cell: str) -> object:
    if cell == "required":
        return attrs.NOTHING
    return eval(cell.strip("`"), {"timedelta": timedelta})  # the page's own Python literals


def test_the_table_lists_every_config_field_in_order() -> None:
    documented = [row[0].strip("`") for row in _rows()]
    assert documented == [field.name for field in attrs.fields(Config)]


def test_each_documented_default_is_the_codes() -> None:
    for field, row in zip(attrs.fields(Config), _rows(), strict=True):
        assert len(row) == 5, row  # field, type, default, unit, what it does
        if isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            assert row[2] == COMPUTED[field.name]
            continue
        assert _documented_default(row[2]) == field.default, field.name
    defaults = Config(
        client_id="c", client_secret="s", redirect_uri="https://a.test/cb", state_secret="x" * 32
    )
    assert defaults.kept_pair_grace == 2 * defaults.lease_ttl


def test_the_quickstart_links_to_the_table_and_keeps_no_copy() -> None:
    quickstart = (PAGE.parent / "quickstart.md").read_text(encoding="utf-8")
    assert "configuration.md#every-config-field" in quickstart
    assert not re.search(r"^\| `http_timeout` \|", quickstart, re.M)
