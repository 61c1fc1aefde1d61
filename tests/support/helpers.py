"""Shared test helpers (tests/support is on pytest's pythonpath)."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from envs.data.store import Dataset, Episode
from policies import FusionConfig, InstructionPolicy, PolicyConfig, TextConfig, VisionConfig


def make_tiny_config(fusion_type: str = "cross_attention", **fusion: object) -> PolicyConfig:
    """D=16, one block, 16x16 frames, 4 tokens per frame, word-level text encoder."""
    return PolicyConfig(
        text=TextConfig(encoder="word", word_dim=16, word_buckets=64),
        vision=VisionConfig(image_size=(16, 16), channels=(8, 16), frame_tokens=4, token_pooling="average"),
        fusion_kwargs=FusionConfig(
            fusion_type=fusion_type, projection_dim=16, num_blocks=1, num_heads=2, **fusion
        ),
        instruction_dropout=0.0,
    )


def random_frames(batch: int, steps: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, steps, 16, 16, 3), dtype=torch.uint8, generator=generator)


SCRIPT = str(Path(sys.executable).parent / "instructcraft")


def tiny_run_config(instruction_dropout: float) -> dict:
    """configs/tiny.yaml's policy as a run-config mapping: mutation testing runs the tests from a
    copy of the packages and tests that holds no configs/ folder."""
    return {
        "policy": {
            "text": {"encoder": "word", "word_dim": 16, "word_buckets": 256},
            "vision": {
                "image_size": [16, 16],
                "channels": [8, 16, 16],
                "frame_tokens": 4,
                "token_pooling": "average",
            },
            "fusion_kwargs": {
                "fusion_type": "cross_attention",
                "projection_dim": 16,
                "num_blocks": 1,
                "num_heads": 2,
                "max_history": 64,
            },
            "instruction_dropout": instruction_dropout,
        }
    }


def run_cli(
    *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed ``instructcraft`` console script in a subprocess; ``check`` raises with its output."""
    result = subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=300, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"instructcraft {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def interrupt_when(args: list[str], ready: re.Pattern[str], signal_number: int) -> tuple[int, str]:
    """Run the CLI, send ``signal_number`` once stderr matches ``ready``; (exit code, stderr)."""
    process = subprocess.Popen([SCRIPT, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    chunks: list[bytes] = []
    seen = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        while chunk := os.read(process.stderr.fileno(), 4096):
            chunks.append(chunk)
            if ready.search(b"".join(chunks).decode(errors="replace")):
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while not seen.is_set() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen.is_set(), b"".join(chunks).decode(errors="replace")
    process.send_signal(signal_number)
    process.wait(timeout=240)
    reader.join(timeout=30)
    return process.returncode, b"".join(chunks).decode(errors="replace")


def store_episode(
    steps: int,
    *,
    actions: np.ndarray | None = None,
    rewards: np.ndarray | None = None,
    random_rewards: bool = False,
) -> Episode:
    """A small episode for the store's tests: 8x8 frames, 4 actions, seeded by its length (the
    seed it records); rewards zero, given, or drawn from the same generator."""
    rng = np.random.default_rng(steps)
    images = rng.integers(0, 256, (steps + 1, 8, 8, 3), dtype=np.uint8)
    drawn = rng.integers(0, 4, steps)
    if rewards is None:
        rewards = rng.random(steps).astype(np.float32) if random_rewards else np.zeros(steps, np.float32)
    return Episode(
        images=images,
        actions=drawn if actions is None else actions,
        rewards=rewards,
        terminated=np.arange(steps) == steps - 1,
        truncated=np.zeros(steps, bool),
        instruction="go",
        task="go",
        env_id="test-env",
        seed=steps,
        success=True,
    )


RAY_INTERNAL_ABORT = "You have likely discovered a bug in Ray"


def assert_interrupted_collect_kept(args: list[str], out: Path, episodes: int) -> None:
    """Ctrl-C to ``instructcraft collect ARGS --episodes EPISODES --out OUT`` once an episode is
    written: exit 130, no traceback, the kept episodes named and the dataset valid."""

    def interrupted(out: Path) -> tuple[int, str]:
        command = [*args, "--episodes", str(episodes), "--out", str(out)]
        return interrupt_when(command, re.compile(rf"\b([1-9]\d*)/{episodes}\b"), signal.SIGINT)

    code, stderr = interrupted(out)
    if code != 130 and RAY_INTERNAL_ABORT in stderr:
        # Ray's core process can abort on its own internal check when SIGINT lands while a task
        # completes: outside this project, so the interrupt is tried once more on a fresh folder.
        out = out.with_name(f"{out.name}-again")
        code, stderr = interrupted(out)
    assert code == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    kept = re.search(r"interrupted: kept the (\d+) episode\(s\) written before Ctrl-C", stderr)
    assert kept, stderr[-3000:]
    assert len(Dataset(out)) == int(kept.group(1)) >= 1 and Dataset(out).check() == []


def assert_parity(
    model: InstructionPolicy, frames: torch.Tensor, mask: torch.Tensor, texts: list[str]
) -> None:
    """Per-step outputs of ``step`` equal ``forward``'s at every real step (logits and value),
    and each row's time counts its real frames."""
    batch, steps = mask.shape
    times = (mask.long().cumsum(1) - 1).clamp_min(0)
    with torch.no_grad():
        parallel = model(frames, texts, times=times, frame_mask=mask)
        state = model.initial_state(texts)
        for t in range(steps):
            step = model.step(state, frames[:, t], valid=mask[:, t])
            for b in range(batch):
                if mask[b, t]:
                    torch.testing.assert_close(step.logits[b], parallel.logits[b, t], atol=1e-5, rtol=0)
                    torch.testing.assert_close(step.value[b], parallel.value[b, t], atol=1e-5, rtol=0)
    assert state.time.tolist() == mask.sum(1).tolist()
