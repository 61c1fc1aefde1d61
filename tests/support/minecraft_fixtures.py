"""Small recordings in the exact MineRL v0.4 and VPT on-disk formats, for importer tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from envs.minecraft.actions import KEYBOARD_BUTTONS
from envs.minecraft.tasks import task_for_env_name
from envs.video import write_video


def write_minerl_stream(
    root: Path,
    env_name: str,
    stream: str,
    steps: int,
    seed: int = 0,
    lead_frames: int = 3,
    enums_as: str = "str",
) -> dict[str, np.ndarray]:
    """ROOT/<env_name>/<stream>/{recording.mp4, rendered.npz, metadata.json}: T = steps + 1
    states after ``lead_frames`` frames from before the experiment. Returns what was written."""
    rng = np.random.default_rng(seed)
    task = task_for_env_name(env_name)
    directory = root / env_name / stream
    directory.mkdir(parents=True)
    states = steps + 1
    frames = rng.integers(0, 256, (lead_frames + states, 64, 64, 3), dtype=np.uint8)
    write_video(directory / "recording.mp4", frames, fps=20, lossless=True)
    arrays: dict[str, np.ndarray] = {"reward": rng.integers(0, 2, steps).astype(np.float32)}
    for name in KEYBOARD_BUTTONS:
        arrays[f"action${name}"] = rng.integers(0, 2, steps).astype(np.int64)
    arrays["action$camera"] = rng.uniform(-15, 15, (steps, 2)).astype(np.float32)
    for name, values in task.enums:
        chosen = np.array(values)[rng.integers(0, len(values), steps)]
        # minerl's Enum space sorts its values: index i stands for sorted(values)[i]
        arrays[f"action${name}"] = chosen if enums_as == "str" else np.searchsorted(sorted(values), chosen)
    for item in task.inventory:
        arrays[f"observation$inventory${item}"] = rng.integers(0, 5, states)
    np.savez_compressed(directory / "rendered.npz", **arrays)
    meta = {"true_video_frame_count": lead_frames + states, "success": True, "duration_steps": states}
    (directory / "metadata.json").write_text(json.dumps(meta))
    return {"frames": frames[lead_frames:], **arrays}


def vpt_tick(
    keys: list[str] | None = None,
    dx: float = 0.0,
    dy: float = 0.0,
    buttons: list[int] | None = None,
    new_buttons: list[int] | None = None,
    hotbar: int = 0,
) -> dict:
    """One recorder tick as in the VPT contractor .jsonl files (v7.x fields)."""
    return {
        "mouse": {"x": 320.0, "y": 180.0, "dx": dx, "dy": dy, "scaledX": 0.0, "scaledY": 0.0, "dwheel": 0.0,
                  "buttons": buttons or [], "newButtons": new_buttons or []},
        "keyboard": {"keys": keys or [], "newKeys": [], "chars": ""},
        "isGuiOpen": False, "isGuiInventory": False, "hotbar": hotbar,
        "yaw": 0.0, "pitch": 0.0, "xpos": 0.0, "ypos": 63.0, "zpos": 0.0, "tick": 0, "milli": 0,
        "inventory": [], "serverTick": 0, "serverTickDurationMs": 50.0, "stats": {},
    }  # fmt: skip


def write_vpt_recording(
    directory: Path, name: str, ticks: list[dict], seed: int = 0, size=(72, 128)
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    frames = rng.integers(0, 256, (len(ticks), *size, 3), dtype=np.uint8)
    write_video(directory / f"{name}.mp4", frames, fps=20, lossless=True)
    (directory / f"{name}.jsonl").write_text("\n".join(json.dumps(t) for t in ticks) + "\n")
    return frames
