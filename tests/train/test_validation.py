"""Held-out validation in BC: whole episodes, never trained on, with loss and accuracies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import envs
from envs.data.collect import collect
from envs.data.store import Dataset
from train.bc import train_bc
from train.config import load_run_config
from train.validation import split_episodes, swapped_instructions

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("data") / "demos"
    collect(str(path), envs.CRAFTER_ID, "crafter_planner", 10, tasks=["collect_wood", "place_table"], seed=21)
    return str(path)


def test_split_holds_out_whole_episodes_by_seed(demos: str) -> None:
    dataset = Dataset(demos)
    train, held = split_episodes(dataset, 0.3, seed=0)
    assert len(held) == 3 and not set(train) & set(held) and sorted(train + held) == list(range(10))
    assert split_episodes(dataset, 0.3, seed=0) == (train, held)
    assert split_episodes(dataset, 0.3, seed=1)[1] != held
    assert split_episodes(dataset, 0.0, seed=0)[1] == []


def test_bc_reports_validation_and_never_trains_on_it(demos: str, tmp_path: Path, monkeypatch) -> None:
    import train.bc as bc

    seen: list[list[int]] = []
    real = bc.ChunkDataset

    def recording(path, chunk_length, episodes=None, **kwargs):
        seen.append(list(episodes or []))
        return real(path, chunk_length, episodes=episodes, **kwargs)

    monkeypatch.setattr(bc, "ChunkDataset", recording)
    run = load_run_config(
        REPO / "configs" / "tiny.yaml", ["train.steps=6", "train.val_fraction=0.3", "train.val_every=3"]
    )
    summary = train_bc(run, demos, str(tmp_path / "run"), progress=False)
    training, validation = seen
    _, held = split_episodes(Dataset(demos), 0.3, seed=0)
    assert validation == held and not set(training) & set(held)
    result = summary["validation"]
    assert result["step"] == 6 and result["episodes"] == 3
    assert result["steps"] == sum(Dataset(demos).episodes[i]["length"] for i in held)
    assert result["loss"] > 0.0 and 0.0 <= result["accuracy_heads"][0] <= 1.0
    actions = result["accuracy_actions"]
    assert sum(entry["steps"] for entry in actions.values()) == result["steps"]
    assert set(actions) <= set(envs.crafter_instruct.ACTION_NAMES)
    assert set(result["accuracy_tasks"]) <= {"collect_wood", "place_table"}
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [3, 6]
    assert [e.step for e in events.Scalars("val/accuracy_swapped")] == [3, 6]
    assert 0.0 <= result["accuracy_swapped"] <= 1.0 and result["loss_swapped"] > 0.0
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["validation"]["loss"] == pytest.approx(result["loss"])
    assert saved["real_steps_per_s"] > 0


def test_swapped_instructions_prefer_another_task() -> None:
    """A paraphrase of the same task is not a swap: another task's instruction is chosen when
    there is one; with one task, another instruction; with one instruction, nothing."""
    pairs = [("wood", "collect wood"), ("wood", "get some wood"), ("cow", "eat a cow")]
    swaps = swapped_instructions(pairs + pairs)
    assert swaps[("wood", "collect wood")] == "eat a cow"
    assert swaps[("wood", "get some wood")] == "eat a cow"
    assert swaps[("cow", "eat a cow")] in {"collect wood", "get some wood"}
    one_task = swapped_instructions([("go", "go to the red ball"), ("go", "go to a blue key")])
    assert one_task == {
        ("go", "go to a blue key"): "go to the red ball",
        ("go", "go to the red ball"): "go to a blue key",
    }
    assert swapped_instructions([("go", "go to the red ball")] * 3) == {}
    assert swapped_instructions(pairs) == swapped_instructions(list(reversed(pairs)))
