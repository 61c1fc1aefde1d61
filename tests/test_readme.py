"""The README and the guides under docs/ cannot drift from the code: every Python snippet in them
runs on its own, in a fresh interpreter, against what `make demo` writes (a tiny demo, few episodes and a few BC steps on
configs/tiny.yaml, stands in for outputs/demo), every relative link leads to a file that exists
(and to a heading that exists, where it names one), and the README stays an entry point."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from train.demo import run_demo

REPO = Path(__file__).resolve().parents[1]
DEMO_ROOT = "outputs/demo"  # where `make demo` writes (see the Makefile)
README_MAX_LINES = 350

# Reading order: the README, then the guides by file name.
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", flags=re.DOTALL | re.MULTILINE)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def page_name(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


def snippets() -> list[tuple[str, int, str]]:
    """(page, number within the page, code) of every ```python block, in reading order."""
    found = []
    for page in PAGES:
        blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)
        found += [(page_name(page), number, code) for number, code in enumerate(blocks, start=1)]
    return found


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    prose = FENCE.sub("", page.read_text())
    seen: dict[str, int] = {}
    names = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose, flags=re.MULTILINE):
        name = slug(heading)
        names.add(f"{name}-{seen[name]}" if name in seen else name)  # GitHub numbers repeats
        seen[name] = seen.get(name, 0) + 1
    return names


def relative_links(page: Path) -> list[str]:
    prose = FENCE.sub("", page.read_text())
    prose = re.sub(r"`[^`\n]*`", "", prose)  # code spans are not links
    return [target for target in LINK.findall(prose) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("readme") / "demo"
    code = run_demo(
        str(out),
        episodes=8,
        workers=1,
        bc_steps=2,
        eval_episodes=1,
        config=REPO / "configs" / "tiny.yaml",
        dagger_episodes=2,
        dagger_steps=2,
    )
    assert code == 0
    return out


def test_the_makefile_demo_writes_where_the_snippets_read() -> None:
    assert f"demo --out {DEMO_ROOT}" in (REPO / "Makefile").read_text()
    assert any(DEMO_ROOT in code for _, _, code in snippets())


def test_the_readme_stays_an_entry_point() -> None:
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines, expected at most {README_MAX_LINES}: move the detail to a page in docs/"
    )


@pytest.mark.parametrize("page", PAGES, ids=page_name)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target} (no heading #{anchor} in {page_name(destination)})")
    assert not broken, f"{page_name(page)}: broken links: {', '.join(broken)}"


@pytest.mark.slow
def test_every_snippet_runs_alone_after_the_demo(tiny_demo: Path) -> None:
    """Each snippet in a fresh interpreter, as a reader who copies just that one runs it: a
    snippet that needs a name another one defines fails here."""
    found = snippets()
    assert len(found) >= 3
    failures = []
    for page, number, snippet in found:
        code = snippet.replace(DEMO_ROOT, str(tiny_demo))
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO
        )
        if result.returncode != 0:
            failures.append(f"{page} python snippet {number}:\n{snippet}\n{result.stderr[-2000:]}")
    assert not failures, "\n\n".join(failures)
