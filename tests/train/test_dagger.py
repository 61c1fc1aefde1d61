"""DAgger against behavioral cloning on a corridor where BC provably compounds its errors
(tests/support/slip_env.py): demonstrations without slips never show the ditch, so the cloned
policy cannot climb out of it; DAgger's rollouts visit the ditch and the expert labels it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import gymnasium as gym
import pytest
from slip_env import SLIP_ID, UP, CorridorExpert

from envs.data.collect import run_episode
from envs.data.store import Dataset, DatasetWriter
from train.config import load_run_config
from train.dagger import DaggerConfig, run_dagger

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clean_demos(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Expert demonstrations recorded without slips: only the top row, always "right"."""
    path = tmp_path_factory.mktemp("corridor") / "demos"
    env = gym.make(SLIP_ID, slip=0.0)
    with DatasetWriter(
        path, env_id=SLIP_ID, image_shape=(16, 16, 3), action_space=env.action_space
    ) as writer:
        for seed in range(8):
            writer.add(run_episode(env, CorridorExpert(), seed, None, SLIP_ID))
    return str(path)


def corridor_run(tmp_path: Path, clean_demos: str, resume: bool = False, **dagger: object) -> dict:
    run = load_run_config(
        REPO / "configs" / "tiny.yaml",
        ["train.steps=60", "train.batch_size=8", "train.lr=3e-3", "policy.instruction_dropout=0.0"],
    )
    config = DaggerConfig(
        **{"rounds": 2, "episodes": 24, "steps": 80, "eval_episodes": 40, "workers": 1, **dagger}
    )
    return run_dagger(
        dataclasses.replace(run, dagger=config),
        clean_demos,
        str(tmp_path / "dagger"),
        SLIP_ID,
        CorridorExpert,
        resume=resume,
        progress=False,
    )


@pytest.mark.slow
def test_dagger_learns_what_behavioral_cloning_cannot(tmp_path: Path, clean_demos: str) -> None:
    state = corridor_run(tmp_path, clean_demos)
    rounds = state["rounds"]
    bc, final = rounds[0]["success"], rounds[-1]["success"]
    # BC walks right whatever happens: it succeeds only when no slip occurs (0.7**5 = 0.17).
    assert bc <= 0.45, rounds
    assert final >= 0.85 and final - bc >= 0.4, rounds
    # Every visited state was labelled by the expert: in the ditch the label is "up", whatever ran.
    data = Dataset(str(tmp_path / "dagger" / "data"))
    relabelled = [e for e in data.episodes if "dagger_round" in e.get("extra", {})]
    assert len(relabelled) == 2 * 24 and rounds[-1]["dataset_episodes"] == 8 + 2 * 24
    ditch_labels = 0
    for entry in relabelled:
        episode = data.episode(entry["episode"])
        executed = entry["extra"]["executed_actions"]
        assert len(executed) == episode.length
        env = gym.make(SLIP_ID).unwrapped
        env.reset(seed=entry["seed"])
        for label, action in zip(episode.actions.tolist(), executed, strict=True):
            assert label == (UP if env.row == 1 else 0)
            ditch_labels += env.row == 1
            env.step(action)
    assert ditch_labels > 0
    assert json.loads((tmp_path / "dagger" / "dagger.json").read_text())["checkpoint"]
    assert (tmp_path / "dagger" / "checkpoint" / "model.safetensors").exists()


@pytest.mark.slow
def test_dagger_resumes_an_interrupted_round(tmp_path: Path, clean_demos: str, monkeypatch) -> None:
    import train.dagger as dagger

    real = dagger.train_bc_policy
    calls = {"n": 0}

    def stop_in_round_one(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the round-1 fine-tune: its rollouts are already written
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(dagger, "train_bc_policy", stop_in_round_one)
    with pytest.raises(KeyboardInterrupt):
        corridor_run(tmp_path, clean_demos, rounds=1, eval_episodes=0)
    monkeypatch.setattr(dagger, "train_bc_policy", real)
    written = len(Dataset(str(tmp_path / "dagger" / "data")))
    assert written == 8 + 24
    with pytest.raises(ValueError, match="pass --resume"):
        corridor_run(tmp_path, clean_demos, rounds=1, eval_episodes=0)
    state = corridor_run(tmp_path, clean_demos, resume=True, rounds=1, eval_episodes=0)
    assert [r["round"] for r in state["rounds"]] == [0, 1]
    assert len(Dataset(str(tmp_path / "dagger" / "data"))) == 8 + 24  # nothing written twice
