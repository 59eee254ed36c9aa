"""docs/django.md's runnable blocks run, as one script in a fresh Python process.

Django's settings are configured once per process, and the page's first block configures them
as a project's ``settings.py`` would, so these blocks cannot share the test process the way
``test_docs.py`` runs the other pages. They are marked ``<!-- runnable: own process -->``
instead of ``<!-- runnable -->`` (``test_docs.py`` still checks that they parse).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "django.md"
MARK = "<!-- runnable: own process -->"
_BLOCK = re.compile(rf"^{re.escape(MARK)}\n```python\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)


def test_the_pages_blocks_run_as_one_script(tmp_path: Path) -> None:
    blocks = [match.group("code") for match in _BLOCK.finditer(PAGE.read_text(encoding="utf-8"))]
    assert len(blocks) == PAGE.read_text(encoding="utf-8").count(MARK) >= 3
    script = tmp_path / "django_page.py"
    script.write_text("\n\n".join(blocks), encoding="utf-8")
    env = {name: value for name, value in os.environ.items() if name != "DJANGO_SETTINGS_MODULE"}
    completed = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,  # the sample's SQLite file goes here
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
