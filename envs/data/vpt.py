"""Read OpenAI VPT contractor recordings (``<name>.mp4`` + ``<name>.jsonl``) into native episodes.

Each jsonl line is one recorder tick aligned with one video frame: ``keyboard.keys`` (e.g.
"key.keyboard.w"), ``mouse.dx`` / ``mouse.dy`` (pixels), ``mouse.buttons`` (0 attack, 1 use,
2 pickItem), ``mouse.newButtons``, ``hotbar``, ``isGuiOpen``. The conversion follows
openai/Video-Pre-Training (``data_loader.py``, ``run_inverse_dynamics_model.py``):

- keys map through ``KEYBOARD_BUTTON_MAPPING``; camera = [dy, dx] x 360 / 2400 degrees
  (pitch, yaw), then mu-law binned like VPT (11 bins, maxval 10, mu 10 by default);
- "attack stuck" fix: when the first tick's ``newButtons`` is [0], attack is dropped until the
  player presses it again;
- hotbar changes (scroll wheel, not recorded as keys) become ``hotbar.N`` presses; as in VPT
  the null test runs before this fix, so a tick that only scrolls is dropped;
- null actions (no key, no mouse movement, no button) are skipped with their frames, as in
  the VPT paper.

Not reproduced: the mouse cursor VPT draws onto frames while a GUI is open (its image is not
shipped here). Frames are resized to ``size`` as VPT's cv2 ``INTER_LINEAR`` does it
(``video.resize``). The native format keeps T+1 observations for T actions, so the last kept
tick's action is dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from envs.data.store import DatasetError, Episode
from envs.data.video import read_frames, resize
from envs.minecraft.actions import VPT_LAYOUT, ActionLayout

KEYBOARD_BUTTON_MAPPING = {
    "key.keyboard.escape": "ESC",
    "key.keyboard.s": "back",
    "key.keyboard.q": "drop",
    "key.keyboard.w": "forward",
    **{f"key.keyboard.{i}": f"hotbar.{i}" for i in range(1, 10)},
    "key.keyboard.e": "inventory",
    "key.keyboard.space": "jump",
    "key.keyboard.a": "left",
    "key.keyboard.d": "right",
    "key.keyboard.left.shift": "sneak",
    "key.keyboard.left.control": "sprint",
    "key.keyboard.f": "swapHands",
}
MOUSE_BUTTONS = {0: "attack", 1: "use", 2: "pickItem"}
CAMERA_SCALER = 360.0 / 2400.0
VPT_ENV_ID = "instructcraft/MineRL-VPT-v0"


def json_action_to_env_action(step: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """One recorder tick -> (MineRL 1.0 Dict action, is_null_action), as VPT converts it."""
    action: dict[str, Any] = {}
    is_null = True
    for key in step["keyboard"]["keys"]:
        if key in KEYBOARD_BUTTON_MAPPING:
            action[KEYBOARD_BUTTON_MAPPING[key]] = 1
            is_null = False
    mouse = step["mouse"]
    camera = np.array([mouse["dy"] * CAMERA_SCALER, mouse["dx"] * CAMERA_SCALER], np.float64)
    if mouse["dx"] != 0 or mouse["dy"] != 0:
        is_null = False
    else:
        camera[np.abs(camera) > 180] = 0
    action["camera"] = camera
    for button, name in MOUSE_BUTTONS.items():
        if button in mouse["buttons"]:
            action[name] = 1
            is_null = False
    return action, is_null


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DatasetError(f"{path} is missing (each VPT .mp4 needs its .jsonl actions file)")
    steps = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            step = json.loads(line)
            step["keyboard"]["keys"], step["mouse"]["dx"], step["mouse"]["buttons"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise DatasetError(f"{path} line {number} is not a VPT action record: {error!r}") from None
        steps.append(step)
    return steps


def read_recording(
    video: Path,
    *,
    instruction: str,
    size: tuple[int, int] = (64, 64),
    layout: ActionLayout = VPT_LAYOUT,
    task: str = "vpt",
) -> Episode:
    """``name.mp4`` + ``name.jsonl`` -> a native Episode of the non-null ticks."""
    video = Path(video)
    steps = _read_jsonl(video.with_suffix(".jsonl"))
    frames = read_frames(video)
    if len(frames) != len(steps):
        raise DatasetError(
            f"{video} has {len(frames)} frames but {video.with_suffix('.jsonl')} has {len(steps)} actions; "
            "each recorder tick needs one frame"
        )
    attack_stuck = False
    last_hotbar = 0
    kept_frames, kept_actions = [], []
    for index, step in enumerate(steps):
        mouse = step["mouse"]
        if index == 0:
            attack_stuck = mouse.get("newButtons") == [0]
        elif attack_stuck and 0 in mouse.get("newButtons", []):
            attack_stuck = False
        if attack_stuck:
            mouse = {**mouse, "buttons": [b for b in mouse["buttons"] if b != 0]}
            step = {**step, "mouse": mouse}
        action, is_null = json_action_to_env_action(step)
        hotbar = int(step.get("hotbar", last_hotbar))
        if hotbar != last_hotbar:
            action[f"hotbar.{hotbar + 1}"] = 1
        last_hotbar = hotbar
        if is_null:
            continue
        kept_frames.append(resize(frames[index], size))
        kept_actions.append(layout.encode(action))
    if len(kept_frames) < 2:
        raise DatasetError(f"{video}: fewer than 2 non-null ticks, nothing to learn from")
    actions = np.stack(kept_actions[:-1])
    count = len(actions)
    return Episode(
        images=np.stack(kept_frames),
        actions=actions,
        rewards=np.zeros(count, np.float32),
        terminated=np.zeros(count, bool),
        truncated=np.eye(1, count, count - 1, dtype=bool)[0],
        instruction=instruction,
        task=task,
        env_id=VPT_ENV_ID,
        expert="human",
        success=True,
        extra={
            "recording": video.stem,
            "source": "vpt",
            "ticks": len(steps),
            "null_ticks": len(steps) - count - 1,
        },
    )


def find_recordings(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"{directory} is not a directory of VPT recordings (<name>.mp4 + <name>.jsonl)")
    videos = sorted(directory.glob("*.mp4"))
    if not videos:
        raise DatasetError(f"no .mp4 recordings in {directory} (expected <name>.mp4 + <name>.jsonl pairs)")
    return videos
