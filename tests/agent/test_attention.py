from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_tiny_config, run_cli
from PIL import Image

import envs
from agent import Agent
from agent.attention import (
    AttentionRecording,
    StepAttention,
    overlays_png,
    record_dataset_episode,
    record_rollout,
    timeline_png,
    viewer_html,
)
from envs.data.collect import collect
from policies import InstructionPolicy

CHROMIUM = "/usr/bin/chromium"


def tiny_checkpoint(tmp_path: Path, fusion_type: str = "cross_attention", max_history: int = 8) -> Path:
    config = make_tiny_config(fusion_type).replace(
        **{
            "vision.image_size": [64, 64],
            "vision.channels": [8, 16, 16],
            "fusion_kwargs.num_blocks": 2,
            "fusion_kwargs.max_history": max_history,
        }
    )
    torch.manual_seed(0)
    return InstructionPolicy(config).save_pretrained(tmp_path / f"ckpt_{fusion_type}")


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory):
    path = tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))
    agent = Agent.from_pretrained(path, capture_attention=True)
    return record_rollout(agent, envs.CRAFTER_ID, seed=0, max_steps=20, env_kwargs={"task": "place_stone"})


def test_rows_sum_to_one_over_the_visible_history(recording) -> None:
    assert len(recording) == 20 == len(recording.frames) == len(recording.actions)
    for t, step in enumerate(recording.steps):
        assert step.frame_times.tolist() == list(range(max(0, t - 7), t + 1))  # max_history = 8
        np.testing.assert_allclose(step.frame_weights.sum(-1), 1.0, atol=1e-5)
    for block in (0, 1, "mean", "rollout"):
        timeline = recording.timeline(block)
        assert timeline.shape == (20, 20)
        np.testing.assert_allclose(timeline.sum(1), 1.0, atol=1e-5)
        assert np.triu(timeline, 1).max() == 0  # nothing from the future


def test_pngs_and_viewer_match_the_rollout(recording, tmp_path: Path) -> None:
    timeline = Image.open(timeline_png(recording, tmp_path / "timeline.png"))
    assert timeline.width > 4 * 320  # two blocks, mean, rollout
    overlays = Image.open(overlays_png(recording, 19, tmp_path / "overlays.png"))
    assert overlays.width >= 5 * 256  # current frame + the top 4
    html = viewer_html(recording, tmp_path / "viewer.html").read_text()
    assert "<script src" not in html and "http" not in html.split("<script>")[1]  # self-contained
    payload = json.loads(html.split("const DATA = ")[1].split(";\nconst $")[0])
    assert payload["steps"] == 20 and len(payload["actions"]) == 20 and payload["counts"][-1] == 8


@pytest.mark.parametrize("fusion_type", ["gmu", "self_attention", "late"])
def test_other_fusions_show_what_they_have(tmp_path: Path, fusion_type: str) -> None:
    agent = Agent.from_pretrained(tiny_checkpoint(tmp_path, fusion_type), capture_attention=True)
    recording = record_rollout(agent, envs.CRAFTER_ID, seed=1, max_steps=6, env_kwargs={"task": "eat_cow"})
    extras = recording.steps[-1].extras
    expected = {"gmu": "gate", "self_attention": "text_attention", "late": "modality_weights"}[fusion_type]
    assert expected in extras
    payload_path = viewer_html(recording, tmp_path / "v.html")
    assert payload_path.stat().st_size > 0
    if fusion_type == "gmu":
        assert "gate_mean" in payload_path.read_text()


def synthetic_step(frame_weights: np.ndarray) -> StepAttention:
    """One step over frames 0..F-1 from per-block frame weights (blocks, F)."""
    count = frame_weights.shape[1]
    weights = np.repeat(frame_weights[:, None, :], 2, axis=1).astype(np.float32)  # 2 heads
    times = np.arange(count)
    return StepAttention(times, weights, times, weights[..., None])


def test_rollout_follows_the_residual_rule_and_differs_from_the_mean_with_three_blocks() -> None:
    """c_1 = A_1, c_n = (c_(n-1) + A_n) / 2: with 3 blocks that is A_1/4 + A_2/4 + A_3/2, which is
    not the mean over blocks (with 2 blocks the two coincide)."""
    steps = [
        synthetic_step(np.array([[1.0], [1.0], [1.0]])),
        synthetic_step(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])),
        synthetic_step(np.eye(3)),  # block n looks at frame n
    ]
    recording = AttentionRecording("x", "cross_attention", steps=steps)
    rollout, mean = recording.timeline("rollout"), recording.timeline("mean")
    np.testing.assert_allclose(rollout, [[1, 0, 0], [0.25, 0.75, 0], [0.25, 0.25, 0.5]], atol=1e-6)
    np.testing.assert_allclose(mean[2], [1 / 3, 1 / 3, 1 / 3], atol=1e-6)
    two_blocks = [synthetic_step(np.array([[1.0], [1.0]])), synthetic_step(np.eye(2))]
    two = AttentionRecording("x", "cross_attention", steps=two_blocks)
    np.testing.assert_allclose(two.timeline("rollout"), two.timeline("mean"), atol=1e-6)


def test_three_block_rollout_differs_from_the_mean_in_a_real_recording(tmp_path: Path) -> None:
    config = make_tiny_config().replace(
        **{"vision.image_size": [64, 64], "vision.channels": [8, 16, 16], "fusion_kwargs.num_blocks": 3}
    )
    torch.manual_seed(0)
    path = InstructionPolicy(config).save_pretrained(tmp_path / "three")
    agent = Agent.from_pretrained(path, capture_attention=True)
    recording = record_rollout(agent, envs.CRAFTER_ID, seed=0, max_steps=6, env_kwargs={"task": "eat_cow"})
    per_block = np.stack([recording.timeline(b) for b in range(3)])
    expected = 0.25 * per_block[0] + 0.25 * per_block[1] + 0.5 * per_block[2]
    np.testing.assert_allclose(recording.timeline("rollout"), expected, atol=1e-6)
    assert np.abs(recording.timeline("rollout") - recording.timeline("mean")).max() > 1e-4


def test_replay_of_a_recorded_demonstration(tmp_path: Path) -> None:
    data = tmp_path / "demos"
    collect(str(data), envs.CRAFTER_ID, "crafter_planner", 2, tasks=["collect_wood"], seed=3)
    agent = Agent.from_pretrained(tiny_checkpoint(tmp_path), capture_attention=True)
    from envs.crafter_instruct import ACTION_NAMES
    from envs.data.store import Dataset

    recording = record_dataset_episode(agent, str(data), 1, list(ACTION_NAMES))
    episode = Dataset(data).episode(1)
    assert len(recording) == episode.length
    assert recording.actions == [ACTION_NAMES[a] for a in episode.actions]
    # Each probability is the one the parallel path gives the expert's action after the same frames.
    with torch.no_grad():
        frames = torch.from_numpy(episode.images[: episode.length])[None]
        logits = agent.policy(frames, [episode.instruction]).logits[0]
    expected = logits.softmax(-1)[torch.arange(episode.length), torch.from_numpy(episode.actions)]
    np.testing.assert_allclose(recording.probabilities, expected.numpy(), atol=1e-5, rtol=0)


def test_rollout_and_attention_cli(tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path)
    out = tmp_path / "rollout"
    result = run_cli(
        "rollout",
        "--checkpoint",
        str(checkpoint),
        "--env",
        envs.CRAFTER_ID,
        "--episodes",
        "2",
        "--instruction",
        "collect wood",
        "--out",
        str(out),
        "--json",
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    stats = json.loads((out / "stats.json").read_text())
    assert len(stats["episodes"]) == 2 and stats["episodes"][0]["instruction"] == "collect wood"
    import imageio.v3 as iio

    video = iio.imread(out / "episode_000.mp4")
    assert video.shape[0] == stats["episodes"][0]["length"] + 1  # one frame per observation
    assert (out / "episode_000.gif").stat().st_size > 1000
    result = run_cli(
        "attention",
        "--checkpoint",
        str(checkpoint),
        "--env",
        envs.CRAFTER_ID,
        "--instruction",
        "eat a cow",
        "--max-steps",
        "12",
        "--out",
        str(tmp_path / "att"),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("timeline.png", "overlays.png", "viewer.html"):
        assert (tmp_path / "att" / name).stat().st_size > 0
    assert "12 steps of cross_attention attention" in result.stdout


@pytest.mark.slow
def test_viewer_in_a_real_browser(recording, tmp_path: Path) -> None:
    """Headless Chromium: frames render, and moving the slider changes the step shown and the
    highlighted history."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), (
        "Debian's chromium is needed: `apt-get install chromium` (make test does it)"
    )
    path = viewer_html(recording, tmp_path / "viewer.html")
    flags = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-ready='1']", timeout=20_000)
        brightness = "() => { const d = document.getElementById('frame').getContext('2d').getImageData(0, 0, 256, 256).data; let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] + d[i + 1] + d[i + 2]; return s; }"
        assert page.evaluate(brightness) > 0, "the current frame did not render"
        before = (page.text_content("#step-label"), page.get_attribute("body", "data-highlight"))
        frame_before = page.evaluate("() => document.getElementById('frame').toDataURL()")
        page.eval_on_selector("#slider", "(el) => { el.value = 15; el.dispatchEvent(new Event('input')); }")
        after = (page.text_content("#step-label"), page.get_attribute("body", "data-highlight"))
        assert before[0] == "step 0 / 19" and after[0] == "step 15 / 19"
        assert before[1] != after[1]
        assert set(int(t) for t in after[1].split(",")) <= set(range(8, 16))  # inside the window at step 15
        assert page.evaluate("() => document.getElementById('frame').toDataURL()") != frame_before
        tiles = page.eval_on_selector_all("#tiles canvas", "(cs) => cs.map((c) => Number(c.dataset.time))")
        assert tiles == [int(t) for t in after[1].split(",")]
        page.select_option("#block", "1")
        page.select_option("#head", "0")
        assert page.text_content("#step-label") == "step 15 / 19"
        page.keyboard.press("ArrowRight")
        assert page.get_attribute("body", "data-step") == "16"
        browser.close()
    assert errors == []
