"""Importers that write MineRL v0.4 and VPT demonstrations as native datasets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from envs.data.minerl import find_streams, read_stream
from envs.data.store import DatasetError, DatasetWriter, Episode
from envs.data.vpt import VPT_ENV_ID, find_recordings, read_recording
from envs.minecraft.actions import VPT_LAYOUT, ActionLayout
from envs.minecraft.env import minerl_id

Progress = Callable[[Episode], None] | None


def import_minerl(
    root: str | Path,
    out: str | Path,
    *,
    env_names: list[str] | None = None,
    camera_bins: int = 11,
    allow_pickle: bool = False,
    progress: Progress = None,
) -> dict[str, Any]:
    """ROOT/<EnvName>/<stream>/ -> one native dataset. Envs in one dataset must share their
    action layout (e.g. Navigate and NavigateDense); pick them with ``env_names``."""
    streams = find_streams(root, env_names)
    layouts = {task.enums for task, _ in streams}
    if len(layouts) > 1:
        names = sorted({task.env_name for task, _ in streams})
        raise DatasetError(
            f"{root} holds envs with different action spaces ({names}); import them one at a time with --env NAME"
        )
    first = streams[0][0]
    layout = ActionLayout(enums=first.enums, camera_bins=camera_bins)
    info = {"source": "minerl-v0.4", "root": str(Path(root).name), "actions": layout.describe()}
    count = steps = 0
    with DatasetWriter(
        out, env_id=minerl_id(first.name), image_shape=(64, 64, 3), action_space=layout.spec(), info=info
    ) as writer:
        for task, stream in streams:
            episode = read_stream(stream, task, layout, allow_pickle)
            writer.add(episode)
            count += 1
            steps += episode.length
            if progress:
                progress(episode)
    return {"episodes": count, "steps": steps, "env_id": minerl_id(first.name), "action_space": layout.spec()}


def import_vpt(
    directory: str | Path,
    out: str | Path,
    *,
    instruction: str,
    size: tuple[int, int] = (64, 64),
    camera_bins: int = 11,
    task: str = "vpt",
    progress: Progress = None,
) -> dict[str, Any]:
    layout = ActionLayout(buttons=VPT_LAYOUT.buttons, camera_bins=camera_bins)
    info = {"source": "vpt", "actions": layout.describe(), "null_actions": "skipped, as in the VPT paper"}
    count = steps = 0
    with DatasetWriter(
        out, env_id=VPT_ENV_ID, image_shape=(*size, 3), action_space=layout.spec(), info=info
    ) as writer:
        for video in find_recordings(directory):
            episode = read_recording(video, instruction=instruction, size=size, layout=layout, task=task)
            writer.add(episode)
            count += 1
            steps += episode.length
            if progress:
                progress(episode)
    return {"episodes": count, "steps": steps, "env_id": VPT_ENV_ID, "action_space": layout.spec()}
