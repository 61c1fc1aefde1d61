"""What a Minari user gets from an export (transitions that replay, the env's own success flags,
compressed frames) and what import makes of another project's Minari dataset (its success)."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from helpers import run_cli

import envs
from envs.data.collect import collect
from envs.data.store import Dataset, DatasetWriter, Episode

minari = pytest.importorskip("minari")
from minari.data_collector import EpisodeBuffer  # noqa: E402

from envs.data.minari import export_minari, import_minari  # noqa: E402

NOISY_ID = "instructcraft/noisy-v0"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A DART collection (noise 0.3: executed actions differ from the labels) exported once."""
    root = tmp_path_factory.mktemp("interop")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root / "minari"))
        collect(
            str(root / "demos"),
            envs.CRAFTER_ID,
            "crafter_planner",
            3,
            tasks=["collect_wood"],
            seed=4,
            noise=0.3,
        )
        export_minari(root / "demos", NOISY_ID)
        yield root


def _metadata(dataset: Any) -> dict[int, dict[str, Any]]:
    return {int(m["id"]): m for m in dataset.storage.get_episode_metadata(dataset.episode_indices)}


def test_exported_actions_replay_and_success_is_what_the_env_reported(exported: Path) -> None:
    dataset = minari.load_dataset(NOISY_ID)
    metadata = _metadata(dataset)
    env = gym.make(dataset.spec.env_spec)
    relabelled = 0
    for episode in dataset.iterate_episodes():
        meta = metadata[int(episode.id)]
        observation, info = env.reset(seed=int(meta["seed"]), options={"task": meta["options"]["task"]})
        frames, reported = [observation["image"]], [info["success"]]
        for action in episode.actions:
            observation, _, _, _, info = env.step(int(action))
            frames.append(observation["image"])
            reported.append(info["success"])
        np.testing.assert_array_equal(
            np.stack(frames), episode.observations["image"], err_msg=str(episode.id)
        )
        assert episode.infos["success"].tolist() == reported
        labels = episode.infos["expert_action"]
        assert labels.shape == (len(episode.actions) + 1,) and labels[-1] == -1  # the last frame has no label
        relabelled += int(np.any(labels[:-1] != episode.actions))
    env.close()
    assert relabelled > 0, "noise 0.3 should have replaced some expert actions"


def test_import_restores_labels_as_actions_and_the_executed_ones_beside(exported: Path) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(exported / "minari"))
        import_minari(NOISY_ID, exported / "back")
    original, back = Dataset(exported / "demos"), Dataset(exported / "back")
    for a, b in zip(original, back, strict=True):
        np.testing.assert_array_equal(a.actions, b.actions)
        assert a.extra == b.extra and "executed_actions" in b.extra
        assert list(b.extra) == list(a.extra)  # same order: the index line reads the same


def test_dagger_episode_exports_what_ran_and_imports_back_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    labels = np.array([[0, 1], [2, 3], [1, 1]])
    ran = [[0, 1], [4, 0], [1, 1]]  # the learner chose the second step
    extra = {"dagger_round": 1, "beta": 0.5, "executed_actions": ran, "learner_steps": 1}
    with DatasetWriter(
        tmp_path / "native",
        env_id="test/none-v0",
        image_shape=(8, 8, 3),
        action_space=spaces.MultiDiscrete([5, 4]),
    ) as writer:
        writer.add(
            Episode(
                images=np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3),
                actions=labels,
                rewards=np.zeros(3, np.float32),
                terminated=np.array([False, False, True]),
                truncated=np.zeros(3, bool),
                instruction="chop a tree",
                task="chop",
                env_id="test/none-v0",
                seed=7,
                extra=extra,
            )
        )
    export_minari(tmp_path / "native", "instructcraft/dagger-v0")
    episode = next(minari.load_dataset("instructcraft/dagger-v0").iterate_episodes())
    np.testing.assert_array_equal(episode.actions, ran)
    np.testing.assert_array_equal(episode.infos["expert_action"], [*labels.tolist(), [-1, -1]])
    import_minari("instructcraft/dagger-v0", tmp_path / "back")
    back = Dataset(tmp_path / "back").episode(0)
    np.testing.assert_array_equal(back.actions, labels)
    assert back.extra == extra and list(back.extra) == list(extra)


def test_export_deflates_frames(exported: Path) -> None:
    native = sum(f.stat().st_size for f in (exported / "demos").rglob("*") if f.is_file())
    data = exported / "minari" / NOISY_ID / "data"
    written = (data / "main_data.hdf5").stat().st_size
    # Raw 64x64 frames made the export ~35x the native size; deflated, it stays within 2x (the
    # frames are lossless: the replay test above compares them with the env's).
    assert written < 2 * native, (written, native)
    total = sum(f.stat().st_size for f in data.iterdir())
    assert json.loads((data / "metadata.json").read_text())["dataset_size"] == pytest.approx(
        total / 1e6, abs=0.1
    )


# Another project's dataset: image observations, no instructcraft metadata.
IMAGE = spaces.Box(0, 255, (8, 8, 3), np.uint8)


def _foreign(dataset_id: str, episodes: list[dict[str, Any]]) -> None:
    buffers = []
    for number, spec in enumerate(episodes):
        rewards = list(map(float, spec["rewards"]))
        steps = len(rewards)
        ending = spec["ending"]
        buffers.append(
            EpisodeBuffer(
                id=number,
                observations=np.zeros((steps + 1, 8, 8, 3), np.uint8),
                actions=np.zeros(steps, np.int64),
                rewards=rewards,
                terminations=[False] * (steps - 1) + [ending == "terminated"],
                truncations=[False] * (steps - 1) + [ending == "truncated"],
                infos=spec.get("infos", {}),
            )
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Minari asks for an author, an eval env, ...
        minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            observation_space=IMAGE,
            action_space=spaces.Discrete(3),
            algorithm_name="test",
            description="a dataset made elsewhere",
            data_format="hdf5",
        )


def test_import_takes_success_from_rewards_not_from_terminations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    _foreign(
        "other/lavagap-v0",
        [
            {"rewards": [0, 0, 0.7], "ending": "terminated"},  # reached the goal
            {"rewards": [0, 0, 0], "ending": "terminated"},  # walked into lava
            {"rewards": [0, 0, 0, 0], "ending": "truncated"},  # ran out of time
        ],
    )
    import_minari("other/lavagap-v0", tmp_path / "back", instruction="get to the goal")
    entries = Dataset(tmp_path / "back").episodes
    assert [e["success"] for e in entries] == [True, False, False]
    assert [e["extra"]["success_from"] for e in entries] == ["rewards"] * 3


def test_import_prefers_info_success_and_marks_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    _foreign(
        "other/dense-v0",
        [
            # the dataset's own signal wins over the reward rule
            {"rewards": [0, 0, 1], "ending": "terminated", "infos": {"success": np.zeros(4, bool)}},
            {"rewards": [0, 1, 0], "ending": "terminated", "infos": {"success": np.eye(4, dtype=bool)[2]}},
        ],
    )
    _foreign("other/shaped-v0", [{"rewards": [0.1, -0.1, 1], "ending": "terminated"}])
    import_minari("other/dense-v0", tmp_path / "dense", instruction="x")
    import_minari("other/shaped-v0", tmp_path / "shaped", instruction="x")
    dense, shaped = Dataset(tmp_path / "dense").episodes, Dataset(tmp_path / "shaped").episodes
    assert [(e["success"], e["extra"]["success_from"]) for e in dense] == [(False, "info"), (True, "info")]
    # Shaped rewards say nothing about the outcome: recorded as unknown, never as a success.
    assert (shaped[0]["success"], shaped[0]["extra"]["success_from"]) == (None, "unknown")
    assert Dataset(tmp_path / "shaped").summary()["tasks"]["other/shaped-v0"]["success_rate"] is None
    info = run_cli("data", "info", str(tmp_path / "shaped"))
    assert re.search(r"other/shaped-v0\s+1\s+unknown", info.stdout), info.stdout
