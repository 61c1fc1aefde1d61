"""Minari <-> the native dataset (the ``minari`` extra: ``pip install "instructcraft[minari]"``).

Export writes a Minari dataset (hdf5 storage, frames deflated so they stay lossless and about
the native size) with observations ``Dict(image=Box, instruction=Text)``: T+1 images and the
instruction repeated. ``actions`` are the actions the env executed, so observation -> action ->
next observation replays from the episode's seed; where they differ from the expert's labels
(DART noise, DAgger) the labels travel as ``infos["expert_action"]``, one per observation (the
label for the observation at the same index, -1 for the final one, which has none).
``infos["success"]`` is what the env reported: True only on the step the task completes.

Import reads any Minari dataset whose observations are an image Box or a Dict with ``image``
(and optionally ``instruction`` / ``mission``) and whose actions are Discrete or MultiDiscrete.
Minari keeps datasets under ``MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``).

What a native episode records beyond the arrays travels in Minari's per-episode metadata: the
seed as the episode's ``seed``, the task as its reset ``options["task"]``, and the rest (env id,
expert, success, extras such as the DART label noise) as JSON in ``options["instructcraft"]``,
so export then import gives back the same episodes field by field.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.data.format import atomic_write_bytes, disk_full_error
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
LABELS = "expert_action"  # the info key holding the expert's label for each observation
NO_LABEL = -1  # the label of the final observation: the episode ended, nobody chose an action
# In the carried extras, ``executed_actions`` says where the list went instead of repeating it:
# the executed actions are the Minari episode's ``actions``.
EXECUTED_IN_ACTIONS = "minari actions"
FRAMES_PER_CHUNK = 32  # hdf5 chunk of frames: a chunk read inflates about what the native store's blocks do


def _executed(episode: Episode) -> np.ndarray:
    """The actions the env ran: the labels unless noise or DAgger replaced some (kept in extra)."""
    executed = episode.extra.get("executed_actions")
    if executed is None:
        return episode.actions
    executed = np.asarray(executed, np.int64)
    if executed.shape != episode.actions.shape:
        raise DatasetError(
            f"episode with seed {episode.seed}: executed_actions has shape {executed.shape}, "
            f"expected {episode.actions.shape} like its actions"
        )
    return executed


def _labels(episode: Episode) -> np.ndarray:
    """One label per observation: the expert's label, then ``NO_LABEL`` for the final one."""
    final = np.full((1, *episode.actions.shape[1:]), NO_LABEL, np.int64)
    return np.concatenate([episode.actions.astype(np.int64), final])


def _reported_success(episode: Episode) -> np.ndarray:
    """Per observation, the ``success`` the env's info said: our envs report it on the step the
    task completes, which ends the episode, so only the final observation can carry it."""
    success = np.zeros(episode.length + 1, bool)
    success[-1] = bool(episode.success)
    return success


def _carried_options(episode: Episode) -> dict[str, str]:
    extra = dict(episode.extra)
    if "executed_actions" in extra:
        extra["executed_actions"] = EXECUTED_IN_ACTIONS
    fields = {
        "env_id": episode.env_id,
        "expert": episode.expert,
        "success": None if episode.success is None else bool(episode.success),
        "extra": extra,
    }
    return {"task": episode.task, CARRIED: json.dumps(fields)}


def _compress_hdf5(path: Path) -> None:
    """Rewrite Minari's hdf5 file with its frames deflated (Minari writes every array raw and has
    no option for it; its reader, h5py, inflates transparently). Lossless, unlike Minari's JPEG.

    Per-step arrays are small and stay raw and contiguous (a chunk index would outweigh them);
    text becomes fixed-length bytes, deflated (Minari's reader decodes either kind of string).
    """
    import h5py

    def copy(source: h5py.Group, target: h5py.Group) -> None:
        target.attrs.update(source.attrs)
        for name, item in source.items():
            if isinstance(item, h5py.Group):
                copy(item, target.create_group(name))
            elif item.shape == () or item.size == 0:
                source.copy(item, target, name=name)
            elif h5py.check_string_dtype(item.dtype) is not None:  # text: a string per step
                text = np.array(item[()], dtype=bytes)
                target.create_dataset(name, data=text, chunks=text.shape, compression="gzip")
            elif item.ndim == 1:
                target.create_dataset(name, data=item[()])
            else:
                chunks = (min(FRAMES_PER_CHUNK, item.shape[0]), *item.shape[1:])
                target.create_dataset(
                    name,
                    data=item[()],
                    chunks=chunks,
                    maxshape=item.maxshape,
                    compression="gzip",
                    compression_opts=6,
                )

    # The compressed copy is built in memory (about the native dataset's size on disk) and
    # replaces Minari's file through the store's one atomic write (fsync, rename, folder fsync):
    # a crash or a full disk leaves the uncompressed file, which Minari reads as well.
    compressed = io.BytesIO()
    # The newer hdf5 layout (readers since hdf5 1.10) indexes a chunk in bytes, not kilobytes.
    with (
        h5py.File(path, "r") as source,
        h5py.File(compressed, "w", track_order=True, libver="latest") as target,
    ):
        copy(source, target)
    try:
        atomic_write_bytes(path, compressed.getvalue())
    except OSError as error:
        raise disk_full_error(path, error, f"{path.name} was left as Minari wrote it, uncompressed") from None


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
                actions=_executed(episode),
                rewards=list(episode.rewards.astype(np.float64)),
                terminations=list(episode.terminated),
                truncations=list(episode.truncated),
                infos={"success": _reported_success(episode), LABELS: _labels(episode)},
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
        dataset = minari.create_dataset_from_buffers(
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
    storage = dataset.storage
    _compress_hdf5(Path(storage.data_path) / "main_data.hdf5")
    storage.update_metadata({"dataset_size": storage.get_size()})
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


def episode_success(
    infos: dict[str, Any], rewards: np.ndarray, terminations: np.ndarray
) -> tuple[bool | None, str]:
    """An episode's success from a dataset's own signals, and which one decided it.

    ``info``: any step's ``infos["success"]``. Else ``rewards``, for sparse-reward datasets (every
    reward but the last is 0, as in MiniGrid and BabyAI): success when the episode terminated
    with a positive last reward; ending on 0 (lava, a time limit) is a failure. Any other reward
    pattern says nothing about the outcome: ``unknown`` (None). Terminating alone is never
    success: it is also how deaths end."""
    if "success" in infos:
        return bool(np.any(infos["success"])), "info"
    if len(rewards) and not np.any(rewards[:-1]):
        return bool(terminations[-1] and rewards[-1] > 0), "rewards"
    return None, "unknown"


def _native_actions(executed: np.ndarray, infos: dict[str, Any]) -> np.ndarray:
    """The native ``actions`` (the expert's labels) from an episode's infos, else what ran."""
    labels = infos.get(LABELS)
    if labels is None or np.shape(labels)[1:] != executed.shape[1:] or len(labels) != len(executed) + 1:
        return executed
    return np.asarray(labels[:-1], np.int64)


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
    deciders: dict[str, int] = {}  # which signal decided success, episodes per signal
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
            meta = metadata.get(int(episode.id), {})
            fields = carried.get(int(episode.id), {})
            options = meta.get("options") or {}
            seed = meta.get("seed")
            executed = np.asarray(episode.actions, np.int64)
            actions = _native_actions(executed, infos)
            if "extra" in fields:
                extra = dict(fields["extra"])
                if extra.get("executed_actions") == EXECUTED_IN_ACTIONS:
                    extra["executed_actions"] = executed.tolist()
                carried_success = fields.get("success", False)
                success = None if carried_success is None else bool(carried_success)
                source = "instructcraft"
            else:
                rewards = np.asarray(episode.rewards, np.float64)
                known, source = episode_success(infos, rewards, np.asarray(episode.terminations, bool))
                success = known  # None when the dataset has no signal: stored as unknown
                extra = {"minari_episode": int(episode.id), "success_from": source}
                if not np.array_equal(actions, executed):
                    extra["executed_actions"] = executed.tolist()
            writer.add(
                Episode(
                    images=images,
                    actions=actions,
                    rewards=np.asarray(episode.rewards, np.float32),
                    terminated=np.asarray(episode.terminations, bool),
                    truncated=np.asarray(episode.truncations, bool),
                    instruction=text,
                    task=str(options.get("task", dataset_id)),
                    env_id=str(fields.get("env_id", target_env)),
                    expert=str(fields.get("expert", "minari")),
                    seed=int(seed) if isinstance(seed, (int, np.integer)) else None,
                    success=success,
                    extra=extra,
                )
            )
            count += 1
            steps += len(episode.actions)
            deciders[source] = deciders.get(source, 0) + 1
    return {"episodes": count, "steps": steps, "env_id": target_env, "success_from": deciders}
