"""Merge native datasets collected separately (on several machines, say) into one.

The inputs are only read, through the store's reader (``Dataset``): an index entry outside
episodes/ or a link leading out of it is refused as for any reader, and every input is verified
(``Dataset.check``) before anything is written. The output is written by the store's writer
(``DatasetWriter``), so it has the writer's lock, atomic files and commit log: an interrupted
merge leaves a valid dataset of the episodes merged so far.

Episodes are re-encoded: each is read whole and committed by ``DatasetWriter.add``. The writer
has no way to commit an episode file as it is, and placing files beside it by hand would bypass
its lock, its numbering and the checksums it records; re-encoding also re-blocks the frames of
an input stored with another ``frames_per_block``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.data.format import _shown, refuse_foreign_folder
from envs.data.store import Dataset, DatasetError, DatasetWriter
from envs.data.writer import hold_interrupts

# What makes episodes one dataset: the same env, frames of the same shape and actions of the
# same space. frames_per_block is how frames are stored, not what they are: the output takes
# the first dataset's and re-blocks the others.
MATCHING_FIELDS = ("env_id", "image_shape", "action_space")


# Settings in metadata.json's free-form "info" that change what the episodes mean: the env's
# keyword arguments at collection (a different world size or step limit is another env; replay
# makes the env from them) and an importer's action layout (what each action component is).
MATCHING_INFO = {"env_kwargs": {}, "actions": None}  # name -> the value when a dataset has none


SHOWN_SEEDS = 5  # duplicate seeds named in a refusal; the count covers the rest


Progress = Callable[[str, int, int], None]  # (phase "check" | "merge", done, total) in episodes


@dataclass
class _Source:
    """A dataset taking part in a merge, by the name the user gave it."""

    name: str
    dataset: Dataset

    @property
    def info(self) -> dict[str, Any]:
        info = self.dataset.metadata.get("info")
        return info if isinstance(info, dict) else {}

    def setting(self, key: str) -> Any:
        if key in MATCHING_FIELDS:
            return self.dataset.metadata[key]
        value = self.info.get(key)
        return MATCHING_INFO[key] if value is None else value


def merge_datasets(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    allow_duplicate_seeds: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write every episode of ``inputs``, in order, to the dataset at ``out``; returns a summary.

    ``out`` is a new or empty folder, or an existing dataset, which is appended to (as ``collect``
    does). Refused before anything is written, naming the datasets: inputs whose env id, image
    shape, action space or env settings differ (``MATCHING_FIELDS``, ``MATCHING_INFO``), an
    episode seed recorded more than once across inputs and ``out`` unless
    ``allow_duplicate_seeds``, an input that ``data check`` finds problems in, and an ``out``
    that is an input or inside one. The inputs are never written. Ctrl-C (KeyboardInterrupt)
    waits for the episode being committed, so ``out`` keeps whole episodes only.
    """
    if not inputs:
        raise DatasetError("nothing to merge: name at least one dataset")
    root = Path(out)
    _refuse_overlapping_paths(inputs, root)
    sources: list[_Source] = []
    try:
        sources = [_Source(str(path), Dataset(path)) for path in inputs]
        existing = None
        if (root / "metadata.json").exists():
            existing = _Source(str(root), Dataset(root))
        else:
            refuse_foreign_folder(root)
        _refuse_mismatch(sources, existing)
        duplicates = _duplicate_seeds(([existing] if existing else []) + sources)
        if duplicates and not allow_duplicate_seeds:
            raise DatasetError(_duplicates_message(duplicates))
        total = sum(len(source.dataset) for source in sources)
        _check_inputs(sources, total, progress)
        before = len(existing.dataset) if existing else 0
        if existing is not None:
            existing.dataset.close()
        first = existing or sources[0]
        metadata = first.dataset.metadata
        written = steps = 0
        with contextlib.ExitStack() as stack:
            with hold_interrupts():  # a Ctrl-C held here still closes the writer on its way out
                writer = stack.enter_context(
                    DatasetWriter(
                        root,
                        env_id=metadata["env_id"],
                        image_shape=tuple(metadata["image_shape"]),
                        action_space=metadata["action_space"],
                        frames_per_block=int(metadata["frames_per_block"]),
                        info=_merged_info(sources),
                    )
                )
            for source in sources:
                for number in range(len(source.dataset)):
                    episode = source.dataset.episode(number)
                    writer.add(episode)  # holds a Ctrl-C until the episode is committed
                    written += 1
                    steps += episode.length
                    if progress is not None:
                        progress("merge", written, total)
            after = len(writer)
    finally:
        for source in sources:
            source.dataset.close()
    return {
        "out": str(root),
        "episodes": written,
        "steps": steps,
        "appended_to": before,
        "total_episodes": after,
        "inputs": [
            {"path": source.name, "episodes": len(source.dataset), "steps": source.dataset.num_steps}
            for source in sources
        ],
        "duplicate_seeds": len(duplicates),
        "episode_files": "re-encoded by the dataset writer",
    }


def _refuse_overlapping_paths(inputs: Sequence[str | Path], out: Path) -> None:
    """An input named twice would double its episodes; an output inside an input (or the
    reverse) would write into a folder the merge promised to leave untouched."""
    seen: dict[Path, str] = {}
    for given in inputs:
        path, resolved = str(given), Path(given).resolve()
        if resolved in seen:
            spellings = f" (as {seen[resolved]} and {path})" if seen[resolved] != path else ""
            raise DatasetError(f"{path} is given twice{spellings}: name each dataset once")
        seen[resolved] = path
    target = out.resolve()
    for resolved, path in seen.items():
        if target == resolved:
            raise DatasetError(f"--out {out} is the input {path}: merge into a new folder")
        if target.is_relative_to(resolved) or resolved.is_relative_to(target):
            raise DatasetError(
                f"--out {out} and the input {path} are inside one another: merge into a folder "
                "outside every input"
            )


def _refuse_mismatch(sources: list[_Source], existing: _Source | None) -> None:
    """Refuse, before anything is written, datasets whose episodes cannot be one dataset."""
    reference = existing or sources[0]
    verb = f"append to {reference.name}" if existing else f"merge with {reference.name}"
    for source in sources:
        if source is reference:
            continue
        for key in (*MATCHING_FIELDS, *MATCHING_INFO):
            ours, theirs = reference.setting(key), source.setting(key)
            if ours != theirs:
                where = key if key in MATCHING_FIELDS else f"info.{key}"
                raise DatasetError(
                    f"cannot {verb}: {where} is {_shown(theirs)} in {source.name} but {_shown(ours)} in "
                    f"{reference.name} (metadata.json); only datasets of the same env and settings merge"
                )
    if existing is not None and existing.info.get("tasks"):
        # Replay resets an episode with its task when info names tasks: right only for episodes
        # whose collection named theirs (a sampled task draws the instruction differently).
        unnamed = [source.name for source in sources if not source.info.get("tasks")]
        if unnamed:
            raise DatasetError(
                f"cannot append to {reference.name}: it was collected with named tasks (info.tasks) "
                f"but {', '.join(unnamed)} was not, so its episodes would not replay there; "
                "merge them all into a new folder instead"
            )


def _duplicate_seeds(sources: list[_Source]) -> dict[int, list[str]]:
    """Each seed recorded more than once -> the datasets recording it (a name per episode)."""
    where: dict[int, list[str]] = {}
    for source in sources:
        for entry in source.dataset.episodes:
            seed = entry.get("seed")
            if seed is not None:
                where.setdefault(seed, []).append(source.name)
    return {seed: names for seed, names in sorted(where.items()) if len(names) > 1}


def _duplicates_message(duplicates: dict[int, list[str]]) -> str:
    def place(seed: int, names: list[str]) -> str:
        distinct = list(dict.fromkeys(names))
        if len(distinct) == 1:
            return f"seed {seed} {len(names)} times in {distinct[0]}"
        return f"seed {seed} in {' and '.join(distinct)}"

    shown = "; ".join(place(seed, names) for seed, names in list(duplicates.items())[:SHOWN_SEEDS])
    more = f"; and {len(duplicates) - SHOWN_SEEDS} more" if len(duplicates) > SHOWN_SEEDS else ""
    datasets = list(dict.fromkeys(name for names in duplicates.values() for name in names))
    return (
        f"{len(duplicates)} episode seed(s) recorded more than once across {', '.join(datasets)}: "
        f"{shown}{more}. Merged, those episodes would repeat (collect each machine's share with its "
        "own --seed); pass --allow-duplicate-seeds to merge them anyway"
    )


def _check_inputs(sources: list[_Source], total: int, progress: Progress | None) -> None:
    """Every byte of every input verified (checksums, shapes, actions, rewards) before the first
    episode is written, so a bad input stops the merge with nothing half done."""
    done = 0
    for source in sources:
        problems = source.dataset.check()
        if problems:
            raise DatasetError(
                f"{source.name} has {len(problems)} bad episode(s), the first: {problems[0]}. Run "
                f"`instructcraft data check {source.name}` to list them; nothing was merged"
            )
        done += len(source.dataset)
        if progress is not None:
            progress("check", done, total)


def _merged_info(sources: list[_Source]) -> dict[str, Any]:
    """A new output's info: the settings every input agrees on, the tasks replay must reset
    with, and each input's own info under ``merged_from``."""
    infos = [source.info for source in sources]
    common = {
        key: value for key, value in infos[0].items() if all(info.get(key, ...) == value for info in infos)
    }
    named = [info.get("tasks") for info in infos]
    if all(isinstance(tasks, list) and tasks for tasks in named):
        common["tasks"] = list(dict.fromkeys(task for tasks in named for task in tasks))
    else:
        # Replay then resets with a sampled task and retries an episode with its own task when
        # the instruction differs: right for both kinds of episode.
        common["tasks"] = None
    common["merged_from"] = [
        {"path": str(source.dataset.root.resolve()), "episodes": len(source.dataset), "info": source.info}
        for source in sources
    ]
    return common
