"""The docs site as a reader meets it: the navigation leads with the quickstart and the framework
guides, every page's table of contents lists its sections, and code blocks show 100 columns
(the project's line length) without hiding any behind a scrollbar."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: A page may open with this many lines before its first section (lifecycle.md's diagram).
OPENING = 50


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(built)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        check=True,
        timeout=120,
    )
    return built


def _html(site: Path, page: str) -> str:
    name = page.removesuffix(".md")
    path = site / "index.html" if name == "index" else site / name / "index.html"
    return path.read_text(encoding="utf-8")


def test_the_quickstart_and_the_framework_guides_come_first(site: Path) -> None:
    home = _html(site, "index.md")
    primary = home[home.index("md-nav--primary") :]
    order = re.findall(r'<a href="(?:\./)?([\w-]+)/" class="md-nav__link', primary)
    first = ["quickstart", "fastapi", "flask", "django", "any-framework"]
    assert order[: len(first)] == first
    assert order.index("seed") > order.index("any-framework")


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_every_section_is_in_the_pages_table_of_contents(site: Path, page: str) -> None:
    html = _html(site, page)
    article = html[html.index("<article") : html.index("</article>")]
    sections = re.findall(r'<h[23] id="([^"]+)"', article)
    listed = set(re.findall(r'<a href="#([^"]+)" class="md-nav__link"', html))
    assert sections, f"docs/{page} has no section for its table of contents"
    assert [s for s in sections if s not in listed] == []


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_no_page_opens_with_a_long_stretch_before_its_first_section(page: str) -> None:
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    fenced, opening = False, len(lines)
    for number, line in enumerate(lines):
        fenced = fenced != line.lstrip().startswith("```")
        if not fenced and re.match(r"#{2,3} ", line):
            opening = number
            break
    assert opening <= OPENING, f"docs/{page}: {opening} lines before its first section"


def test_code_blocks_hold_100_columns_or_wrap(site: Path) -> None:
    css = (site / "stylesheets" / "extra.css").read_text(encoding="utf-8")
    rules = re.sub(r"/\*.*?\*/", "", css, flags=re.DOTALL)
    assert re.search(r"\.md-grid\s*{[^}]*max-width:\s*76rem", rules)
    code = re.search(r"\.md-typeset pre > code\s*{([^}]*)}", rules)
    assert code is not None
    assert "white-space: pre-wrap" in code[1] and "font-size: 0.8em" in code[1]
    for page in ("index.md", "quickstart.md", "testing.md"):
        assert 'href="' in _html(site, page) and "stylesheets/extra.css" in _html(site, page)


#: In the browser: the inner width of the first code block, and the width of 100 columns of
#: its font; then whether any code block on the page hides part of a line.
_MEASURE = """() => {
  const code = document.querySelector(".md-typeset pre > code");
  const probe = document.createElement("span");
  probe.textContent = "x".repeat(100);
  probe.style.whiteSpace = "pre";
  code.appendChild(probe);
  const columns = probe.getBoundingClientRect().width;
  probe.remove();
  const style = getComputedStyle(code);
  const inner = code.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  const hidden = [...document.querySelectorAll(".md-typeset pre > code")].filter(
    (block) => block.scrollWidth > block.clientWidth + 1
  ).length;
  return {columns, inner, hidden};
}"""


@pytest.mark.browser
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("width", "fits"), [(1920, True), (1366, True), (1280, False)])
def test_in_a_browser_100_columns_show_whole_or_wrap(site: Path, width: int, fits: bool) -> None:
    from test_browser import ARGS, CHROMIUM, _missing

    if not CHROMIUM.is_file():
        _missing(f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto((site / "testing" / "index.html").as_uri())
            seen = page.evaluate(_MEASURE)
        finally:
            browser.close()
    assert (seen["columns"] <= seen["inner"]) is fits, seen
    assert seen["hidden"] == 0, seen  # a line too long for the screen wraps: nothing cut off
