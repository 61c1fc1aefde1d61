"""viewer.html embeds its data so that no string (an instruction, a dataset path) can close the
script element: checked in the file and in headless Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from agent.attention import AttentionRecording, StepAttention, script_json, viewer_html

CHROMIUM = "/usr/bin/chromium"
HOSTILE = "</script><script>document.title='pwned'</script><!-- & \u2028\u2029 ]]>"


def hostile_recording() -> AttentionRecording:
    rng = np.random.default_rng(0)
    recording = AttentionRecording(HOSTILE, "cross_attention", tokens_per_frame=4, source=HOSTILE)
    for t in range(3):
        times = np.arange(t + 1)
        weights = rng.random((1, 2, t + 1)).astype(np.float32)
        recording.frames.append(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        recording.steps.append(
            StepAttention(times, weights, times[:2], rng.random((1, 2, min(2, t + 1), 4)).astype(np.float32))
        )
        recording.actions.append("</script>noop")
        recording.probabilities.append(0.5)
        recording.rewards.append(0.0)
    return recording


def test_script_json_reads_back_the_same_value() -> None:
    data = {"instruction": HOSTILE, "n": [1, 2.5]}
    text = script_json(data)
    assert not re.search(r"[<>&\u2028\u2029]", text)
    assert json.loads(text) == data


def test_the_page_holds_one_script_element(tmp_path: Path) -> None:
    html = viewer_html(hostile_recording(), tmp_path / "viewer.html").read_text()
    assert html.lower().count("</script") == 1 and "pwned'</script>" not in html


@pytest.mark.slow
def test_a_hostile_instruction_runs_nothing_in_a_browser(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), (
        "Debian's chromium is needed: `apt-get install chromium` (make test does it)"
    )
    path = viewer_html(hostile_recording(), tmp_path / "viewer.html")
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-ready='1']", timeout=20_000)
        assert page.title() != "pwned"
        assert page.text_content("#instruction") == f'"{HOSTILE}"'  # shown as text, intact
        assert page.evaluate("() => document.scripts.length") == 1
        browser.close()
    assert errors == []
