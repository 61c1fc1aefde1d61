"""Read MineRL v0.4 demonstrations into native episodes.

Layout (what ``minerl.data.download`` unpacks)::

    ROOT/<EnvName>/<stream>/recording.mp4    the episode's frames (RGB, 64x64)
    ROOT/<EnvName>/<stream>/rendered.npz     action$<key> (T-1, ...), reward (T-1,),
                                             observation$<path> (T, ...)
    ROOT/<EnvName>/<stream>/metadata.json    true_video_frame_count, success, duration_steps...

As in minerl's ``DataPipeline._load_data_pyfunc``: T = len(reward) + 1 states; the first
``true_video_frame_count - T`` frames of the video precede the experiment and are skipped; the
final state's frame is the previous frame repeated (the pipeline does the same). Actions are
factorized with ``ActionLayout`` (buttons, mu-law camera bins, Enum actions of the env).
Enum columns may hold strings or indices; an index means what it means to minerl's ``Enum``
space, which sorts its values (``np.array(sorted(values))``): i stands for ``sorted(values)[i]``,
not for the layout's order ("none" first). Object arrays need ``allow_pickle=True``, which runs
code from the file: only for files you trust.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from envs.data.store import DatasetError, Episode
from envs.data.video import count_frames, read_frames
from envs.minecraft.actions import ActionError, ActionLayout
from envs.minecraft.env import minerl_id
from envs.minecraft.tasks import BY_ENV_NAME, MineRLTask, task_for_env_name

STREAM_FILES = ("recording.mp4", "rendered.npz", "metadata.json")


def find_streams(root: str | Path, env_names: list[str] | None = None) -> list[tuple[MineRLTask, Path]]:
    """(task, stream directory) for every stream under ROOT/<EnvName>/, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a directory (expected ROOT/<EnvName>/<stream>/recording.mp4 ...)")
    found = []
    for env_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if env_names and env_dir.name not in env_names:
            continue
        if env_dir.name not in BY_ENV_NAME:
            continue
        task = task_for_env_name(env_dir.name)
        found.extend((task, stream) for stream in sorted(p for p in env_dir.iterdir() if p.is_dir()))
    if not found:
        raise DatasetError(
            f"no MineRL v0.4 streams under {root}: expected ROOT/<EnvName>/<stream>/ with EnvName one of "
            f"{sorted(BY_ENV_NAME)}"
        )
    return found


def _load_npz(path: Path, allow_pickle: bool) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=allow_pickle) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise DatasetError(
                f"{path} stores object arrays, which load by unpickling (that can run code): re-run with "
                "--allow-pickle only if you trust the file"
            ) from None
        raise DatasetError(f"{path} is not a readable npz: {error}") from None
    except (OSError, EOFError) as error:
        raise DatasetError(f"{path} is not a readable npz: {error}") from None


def _enum_strings(path: Path, name: str, values: tuple[str, ...], column: np.ndarray) -> np.ndarray:
    """An ``action$<name>`` column as value strings: integers index minerl's sorted values."""
    array = np.asarray(column)
    if array.dtype.kind not in "iu":
        return array
    ordered = np.array(sorted(values))
    outside = array[(array < 0) | (array >= len(ordered))]
    if outside.size:
        raise DatasetError(
            f"{path}: 'action${name}' holds index {int(outside[0])}, outside [0, {len(ordered)}) "
            f"(minerl indexes the sorted values {ordered.tolist()})"
        )
    return ordered[array]


def read_stream(stream: Path, task: MineRLTask, layout: ActionLayout, allow_pickle: bool = False) -> Episode:
    """One stream directory -> a native Episode (T-1 steps, T images)."""
    for name in STREAM_FILES:
        if not (stream / name).is_file():
            raise DatasetError(f"{stream / name} is missing (a v0.4 stream has {', '.join(STREAM_FILES)})")
    try:
        meta = json.loads((stream / "metadata.json").read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"{stream / 'metadata.json'} is not valid JSON: {error}") from None
    if "true_video_frame_count" not in meta:
        raise DatasetError(f"{stream / 'metadata.json'} has no true_video_frame_count")
    arrays = _load_npz(stream / "rendered.npz", allow_pickle)
    if "reward" not in arrays:
        raise DatasetError(f"{stream / 'rendered.npz'} has no 'reward' array")
    rewards = np.asarray(arrays["reward"], np.float32).reshape(-1)
    steps = len(rewards)
    states = steps + 1
    actions: dict[str, Any] = {}
    expected = [*layout.buttons, "camera", *(name for name, _ in layout.enums)]
    for key in expected:
        column = arrays.get(f"action${key}")
        if column is None:
            raise DatasetError(
                f"{stream / 'rendered.npz'} has no 'action${key}' ({task.env_name} actions: {expected})"
            )
        if len(column) != steps:
            raise DatasetError(
                f"{stream / 'rendered.npz'}: 'action${key}' has {len(column)} steps but 'reward' has {steps} "
                "(actions and rewards have T-1 entries)"
            )
        actions[key] = column
    for name, values in layout.enums:
        actions[name] = _enum_strings(stream / "rendered.npz", name, values, actions[name])
    for key, value in arrays.items():
        if key.startswith("observation$") and len(value) != states:
            raise DatasetError(
                f"{stream / 'rendered.npz'}: '{key}' has {len(value)} entries, expected T = {states} "
                f"(one more than the {steps} rewards)"
            )
    try:
        factorized = layout.encode_many(actions, steps)
    except ActionError as error:
        raise DatasetError(f"{stream / 'rendered.npz'}: {error}") from None
    total = int(meta["true_video_frame_count"])
    skip = total - states
    if skip < 0:
        raise DatasetError(
            f"{stream / 'metadata.json'}: true_video_frame_count {total} is less than the {states} states in "
            f"{stream / 'rendered.npz'}"
        )
    frames = read_frames(stream / "recording.mp4", start=skip, count=states - 1)
    if len(frames) != states - 1:
        raise DatasetError(
            f"{stream / 'recording.mp4'} has {count_frames(stream / 'recording.mp4')} frames, expected "
            f"true_video_frame_count = {total}"
        )
    images = np.concatenate([frames, frames[-1:]]) if len(frames) else frames
    terminated = np.zeros(steps, bool)
    if steps:
        terminated[-1] = True
    return Episode(
        images=images,
        actions=factorized,
        rewards=rewards,
        terminated=terminated,
        truncated=np.zeros(steps, bool),
        instruction=task.instruction,
        task=task.name,
        env_id=minerl_id(task.name),
        expert="human",
        success=bool(meta.get("success", False)),
        extra={"stream": stream.name, "source": "minerl-v0.4", "total_reward": float(rewards.sum())},
    )
