"""Minari <-> the native dataset (the ``minari`` extra: ``pip install "instructcraft[minari]"``).

Export writes a Minari dataset (hdf5 storage, images stored raw so frames stay lossless) with
observations ``Dict(image=Box, instruction=Text)``: T+1 images and the instruction repeated;
``infos`` carry ``success`` per step. Import reads any Minari dataset whose observations are
an image Box or a Dict with ``image`` (and optionally ``instruction`` / ``mission``) and whose
actions are Discrete or MultiDiscrete. Minari keeps datasets under ``MINARI_DATASETS_PATH``
(default ``~/.minari/datasets``).

What a native episode records beyond the arrays travels in Minari's per-episode metadata: the
seed as the episode's ``seed``, the task as its reset ``options["task"]``, and the rest (env id,
expert, success, extras such as the DART label noise) as JSON in ``options["instructcraft"]``,
so export then import gives back the same episodes field by field.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.data.store import Dataset, DatasetError, DatasetWriter, Episode
from envs.spaces import action_space_from_spec, action_space_spec, instruction_space


def _minari() -> Any:
    try:
        import minari
    except ImportError:
        raise ImportError(
            'Minari is not installed: pip install "instructcraft[minari]" (minari with its hdf5 storage)'
        ) from None
    return minari


CARRIED = "instructcraft"  # the options key holding the episode fields Minari has no place for


def _carried_options(episode: Episode) -> dict[str, str]:
    fields = {
        "env_id": episode.env_id,
        "expert": episode.expert,
        "success": bool(episode.success),
        "extra": episode.extra,
    }
    return {"task": episode.task, CARRIED: json.dumps(fields)}


def export_minari(data: str | Path, dataset_id: str, *, description: str | None = None) -> dict[str, Any]:
    """Native dataset -> Minari dataset ``dataset_id`` (``namespace/name-v0``)."""
    minari = _minari()
    from minari.data_collector import EpisodeBuffer

    source = Dataset(data)
    meta = source.metadata
    observation_space = spaces.Dict(
        {
            "image": spaces.Box(0, 255, tuple(meta["image_shape"]), np.uint8),
            "instruction": instruction_space(),
        }
    )
    buffers = []
    for number in range(len(source)):
        episode = source.episode(number)
        steps = episode.length
        buffers.append(
            EpisodeBuffer(
                id=number,
                seed=episode.seed,
                options=_carried_options(episode),
                observations={"image": episode.images, "instruction": [episode.instruction] * (steps + 1)},
                actions=episode.actions,
                rewards=list(episode.rewards.astype(np.float64)),
                terminations=list(episode.terminated),
                truncations=list(episode.truncated),
                infos={"success": np.array([episode.success] * (steps + 1))},
            )
        )
    import gymnasium as gym

    # The env spec travels with the dataset when the env can be made here (Minari makes it).
    env_spec = None
    if meta["env_id"] in gym.registry:
        try:
            gym.make(meta["env_id"]).close()
            env_spec = gym.spec(meta["env_id"])
        except ImportError:  # e.g. MineRL ids without minerl
            env_spec = None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(code_permalink|author|eval_env|env_spec).*")
        minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            env=env_spec,
            observation_space=observation_space,
            action_space=action_space_from_spec(meta["action_space"]),
            algorithm_name=str(meta.get("info", {}).get("expert") or "demonstrations"),
            description=description or f"instructcraft dataset from {meta['env_id']}",
            data_format="hdf5",
            jpeg_encoding=False,
        )
    path = minari.storage.get_dataset_path(dataset_id)
    return {"dataset_id": dataset_id, "episodes": len(buffers), "steps": source.num_steps, "path": str(path)}


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _read_carried(meta: dict[str, Any]) -> dict[str, Any]:
    """The fields an instructcraft export carried in the episode's options ({} for others)."""
    text = (meta.get("options") or {}).get(CARRIED)
    if text is None:
        return {}
    try:
        fields = json.loads(_text(text))
    except json.JSONDecodeError:
        return {}
    return fields if isinstance(fields, dict) else {}


def import_minari(
    dataset_id: str, out: str | Path, *, instruction: str | None = None, env_id: str | None = None
) -> dict[str, Any]:
    """Minari dataset -> native dataset. ``instruction`` is used when the observations carry none."""
    minari = _minari()
    try:
        dataset = minari.load_dataset(dataset_id)
    except Exception as error:  # minari raises several types for unknown ids
        raise DatasetError(f"cannot load Minari dataset {dataset_id!r}: {error}") from None
    observation_space = dataset.observation_space
    image_key = None
    text_key = None
    if isinstance(observation_space, spaces.Dict):
        image_key = "image" if "image" in observation_space.spaces else None
        text_key = next((k for k in ("instruction", "mission") if k in observation_space.spaces), None)
        image_space = observation_space.spaces.get("image")
    else:
        image_space = observation_space
    if not (
        isinstance(image_space, spaces.Box) and len(image_space.shape) == 3 and image_space.shape[-1] == 3
    ):
        raise DatasetError(
            f"Minari dataset {dataset_id!r} has observations {observation_space}: import needs an (H, W, 3) image "
            "(alone or as 'image' in a Dict)"
        )
    if text_key is None and instruction is None:
        raise DatasetError(
            f"Minari dataset {dataset_id!r} has no instruction in its observations: pass --instruction"
        )
    action_space = dataset.action_space
    if not isinstance(action_space, (spaces.Discrete, spaces.MultiDiscrete)):
        raise DatasetError(
            f"Minari dataset {dataset_id!r} has {action_space} actions: only Discrete/MultiDiscrete"
        )
    metadata = {int(m["id"]): m for m in dataset.storage.get_episode_metadata(dataset.episode_indices)}
    carried = {number: _read_carried(meta) for number, meta in metadata.items()}
    first = carried[min(carried)] if carried else {}
    target_env = (
        env_id
        or first.get("env_id")
        or (dataset.spec.env_spec.id if dataset.spec.env_spec is not None else f"minari/{dataset_id}")
    )
    count = steps = 0
    with DatasetWriter(
        out,
        env_id=target_env,
        image_shape=tuple(image_space.shape),
        action_space=action_space_spec(action_space),
        info={"source": "minari", "dataset_id": dataset_id},
    ) as writer:
        for episode in dataset.iterate_episodes():
            observations = episode.observations
            images = np.asarray(observations[image_key] if image_key else observations, np.uint8)
            text = instruction
            if text_key is not None:
                text = _text(observations[text_key][0])
            infos = episode.infos or {}
            success = (
                bool(np.any(infos["success"])) if "success" in infos else bool(np.any(episode.terminations))
            )
            meta = metadata.get(int(episode.id), {})
            fields = carried.get(int(episode.id), {})
            options = meta.get("options") or {}
            seed = meta.get("seed")
            writer.add(
                Episode(
                    images=images,
                    actions=np.asarray(episode.actions, np.int64),
                    rewards=np.asarray(episode.rewards, np.float32),
                    terminated=np.asarray(episode.terminations, bool),
                    truncated=np.asarray(episode.truncations, bool),
                    instruction=text,
                    task=str(options.get("task", dataset_id)),
                    env_id=str(fields.get("env_id", target_env)),
                    expert=str(fields.get("expert", "minari")),
                    seed=int(seed) if isinstance(seed, (int, np.integer)) else None,
                    success=bool(fields.get("success", success)),
                    extra=fields["extra"] if "extra" in fields else {"minari_episode": int(episode.id)},
                )
            )
            count += 1
            steps += len(episode.actions)
    return {"episodes": count, "steps": steps, "env_id": target_env}
