"""Every Python snippet in the README runs against what `make demo` writes, so the README cannot
drift from the demo: a tiny demo (few episodes, a few BC steps on configs/tiny.yaml) stands in
for outputs/demo."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from train.demo import run_demo

REPO = Path(__file__).resolve().parents[1]
DEMO_ROOT = "outputs/demo"  # where `make demo` writes (see the Makefile)


def readme_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.DOTALL)


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


def test_the_makefile_demo_writes_where_the_readme_reads() -> None:
    assert f"demo --out {DEMO_ROOT}" in (REPO / "Makefile").read_text()
    assert any(DEMO_ROOT in snippet for snippet in readme_snippets())


@pytest.mark.slow
def test_every_readme_snippet_runs_after_the_demo(
    tiny_demo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snippets = readme_snippets()
    assert len(snippets) >= 3
    namespace: dict[str, object] = {"__name__": "readme"}
    # One namespace, in reading order: later snippets use names earlier ones define (env).
    for number, snippet in enumerate(snippets, start=1):
        code = snippet.replace(DEMO_ROOT, str(tiny_demo))
        try:
            exec(compile(code, f"README.md python snippet {number}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"README python snippet {number} failed: {error!r}\n{snippet}") from error
