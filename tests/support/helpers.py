"""Shared test helpers (tests/support is on pytest's pythonpath)."""

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from policies import FusionConfig, PolicyConfig, TextConfig, VisionConfig


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
