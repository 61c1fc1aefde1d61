"""What a DAgger run promises its user: the aggregate is the demonstrations plus each round's
rollouts, labelled by the expert (never by what the learner did); each round rolls out with its
own seeds and beta; each round fine-tunes the previous round's policy; the summary counts what
the aggregate holds.

Runs in-process (one worker) on the two-row corridor of tests/support/slip_env.py with a tiny
policy, so a changed line in the DAgger code is seen by these tests.
"""

from __future__ import annotations

import dataclasses
import json
import signal
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from helpers import tiny_run_config
from safetensors.torch import load_file
from slip_env import DOWN, INSTRUCTION, RIGHT, SLIP_ID, UP, CorridorExpert, SlipCorridorEnv

from envs.data.collect import run_episode
from envs.data.store import Dataset, DatasetError, DatasetWriter
from train.config import ConfigError, DaggerConfig, load_run_config
from train.dagger import _Rounds, run_dagger
from train.dagger_rollout import RolloutJob, round_entries, round_jobs, round_statistics, run_dagger_episode
from train.dagger_settings import load_state
from train.errors import TrainingInterrupted

TINY = tiny_run_config(instruction_dropout=0.0)
DEMOS = 3


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three expert corridor episodes recorded without slips (seeds 0-2)."""
    path = tmp_path_factory.mktemp("corridor") / "demos"
    env = gym.make(SLIP_ID, slip=0.0)
    with DatasetWriter(
        path, env_id=SLIP_ID, image_shape=(16, 16, 3), action_space=env.action_space
    ) as writer:
        for seed in range(DEMOS):
            writer.add(run_episode(env, CorridorExpert(), seed, None, SLIP_ID))
    return str(path)


def dagger_run(demos: str, out: Path, **dagger: object) -> dict:
    run = load_run_config(
        None,
        [
            *("train.steps=3", "train.batch_size=2", "train.chunk_length=8", "train.val_fraction=0.0"),
            *("train.device=cpu", "train.amp=false", "train.log_every=100", "train.checkpoint_every=100"),
        ],
        base=TINY,
    )
    settings = {
        "rounds": 1,
        "episodes": 3,
        "steps": 2,
        "beta": 0.0,
        "eval_episodes": 0,
        "workers": 1,
        **dagger,
    }
    return run_dagger(
        dataclasses.replace(run, dagger=DaggerConfig(**settings)),  # type: ignore[arg-type]
        demos,
        str(out),
        SLIP_ID,
        CorridorExpert,
        progress=False,
    )


def expert_label(image: np.ndarray) -> int:
    """What the corridor expert says in the state ``image`` shows: up from the ditch (the bottom
    row, drawn with a blue left edge), else right."""
    in_ditch = tuple(image[10, 0]) == (0, 0, 255)
    return UP if in_ditch else RIGHT


@pytest.fixture(scope="module")
def learner_run(demos: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Two rounds where the learner executes every step (beta 0), three rollouts a round."""
    out = tmp_path_factory.mktemp("dagger") / "run"
    return out, dagger_run(demos, out, rounds=2, beta=0.0)


def test_the_aggregate_is_the_demonstrations_then_each_round_s_rollouts(
    demos: str, learner_run: tuple[Path, dict]
) -> None:
    """OUT/data starts with an exact copy of every demonstration, then round 1's rollouts, then
    round 2's, each episode tagged with its round and beta."""
    out, _ = learner_run
    source, aggregate = Dataset(demos), Dataset(out / "data")
    assert len(aggregate) == DEMOS + 2 * 3
    for number in range(DEMOS):
        copied, original = aggregate.episode(number), source.episode(number)
        assert np.array_equal(copied.images, original.images)
        assert np.array_equal(copied.actions, original.actions)
        assert copied.instruction == original.instruction and copied.seed == original.seed
    rounds = [entry.get("extra", {}).get("dagger_round") for entry in aggregate.episodes]
    assert rounds == [None] * DEMOS + [1] * 3 + [2] * 3
    assert all(entry["extra"]["beta"] == 0.0 for entry in aggregate.episodes[DEMOS:])


def test_rollouts_hold_the_expert_s_labels_not_the_learner_s_actions(learner_run: tuple[Path, dict]) -> None:
    """DAgger's point: every visited state is labelled with what the expert would do there; what
    the learner executed is kept apart (``executed_actions``) and counted (``learner_steps``)."""
    out, _ = learner_run
    aggregate = Dataset(out / "data")
    differ = 0
    for number in range(DEMOS, len(aggregate)):
        episode = aggregate.episode(number)
        labels = [expert_label(image) for image in episode.images[:-1]]
        assert episode.actions.tolist() == labels, number
        executed = episode.extra["executed_actions"]
        assert len(executed) == episode.length
        mismatches = sum(int(a != b) for a, b in zip(executed, labels, strict=True))
        assert episode.extra["learner_steps"] == mismatches
        differ += mismatches
    assert differ > 0  # the untrained learner does not act like the expert


def test_with_beta_one_the_expert_executes_every_step(demos: str, tmp_path: Path) -> None:
    """``dagger.beta=1``: the expert's action runs at every step, so executed actions are the
    labels and no step is the learner's."""
    state = dagger_run(demos, tmp_path / "run", beta=1.0, episodes=2)
    aggregate = Dataset(tmp_path / "run" / "data")
    for number in range(DEMOS, len(aggregate)):
        episode = aggregate.episode(number)
        assert episode.extra["executed_actions"] == episode.actions.tolist()
        assert episode.extra["learner_steps"] == 0
    assert state["rounds"][1]["learner_step_fraction"] == 0.0


def test_each_round_rolls_out_its_own_seeds(learner_run: tuple[Path, dict]) -> None:
    """Round r's episode i runs on seed ``first_seed + (r - 1) * episodes + i``, where the first
    seed follows the demonstrations' seeds; no seed repeats."""
    out, state = learner_run
    assert state["first_seed"] == DEMOS
    seeds = [entry["seed"] for entry in Dataset(out / "data").episodes]
    assert seeds == list(range(DEMOS + 2 * 3))


def test_round_jobs_cycle_tasks_and_carry_the_round_s_beta() -> None:
    """Round 2 of 4 episodes with beta 0.8 decaying by 0.5: seeds continue after round 1, tasks
    cycle in order, beta is 0.4."""
    dagger = DaggerConfig(rounds=3, episodes=4, beta=0.8, beta_decay=0.5)
    state = {"first_seed": 10, "tasks": ["a", "b", "c"]}
    assert round_jobs(state, dagger, 2) == [
        RolloutJob(14, "a", 2, 0.4),
        RolloutJob(15, "b", 2, 0.4),
        RolloutJob(16, "c", 2, 0.4),
        RolloutJob(17, "a", 2, 0.4),
    ]
    assert [job.task for job in round_jobs({"first_seed": 0}, dagger, 1)] == [None] * 4


def test_beta_decays_geometrically_from_round_one() -> None:
    """``beta_r = beta * beta_decay ** (r - 1)``: round 1 uses beta itself."""
    dagger = DaggerConfig(beta=0.8, beta_decay=0.5)
    assert [dagger.beta_for(r) for r in (1, 2, 3)] == pytest.approx([0.8, 0.4, 0.2])


def test_round_statistics_are_over_all_of_a_round_s_episodes() -> None:
    """``rollout_success``: the fraction of the round's episodes that succeeded;
    ``learner_step_fraction``: learner steps over all steps; an empty round gives zeros."""
    entries = [
        {"length": 10, "success": True, "extra": {"learner_steps": 4}},
        {"length": 30, "success": False, "extra": {"learner_steps": 6}},
        {"length": 20, "success": None, "extra": {}},
    ]
    assert round_statistics(entries) == pytest.approx(
        {"rollout_success": 1 / 3, "learner_step_fraction": 10 / 60}
    )
    assert round_statistics([]) == {"rollout_success": 0.0, "learner_step_fraction": 0.0}


def test_round_statistics_of_a_single_one_step_episode_are_not_diluted() -> None:
    """The smallest round (``dagger.episodes=1``, an episode ended at its first step): its
    success and learner fraction are that episode's own, 1.0 each."""
    entries = [{"length": 1, "success": True, "extra": {"learner_steps": 1}}]
    assert round_statistics(entries) == {"rollout_success": 1.0, "learner_step_fraction": 1.0}


def test_round_entries_are_the_round_s_own_rollouts(learner_run: tuple[Path, dict]) -> None:
    """A resumed round finds the episodes of that round and those seeds only."""
    out, state = learner_run
    dagger = DaggerConfig(**state["dagger"])
    one, two = round_jobs(state, dagger, 1), round_jobs(state, dagger, 2)
    assert [entry["seed"] for entry in round_entries(out / "data", one, 1)] == [3, 4, 5]
    assert [entry["seed"] for entry in round_entries(out / "data", two, 2)] == [6, 7, 8]
    assert round_entries(out / "data", one, 2) == []
    assert [entry["seed"] for entry in round_entries(out / "data", one[:2], 1)] == [3, 4]


def test_the_summary_counts_each_round_and_ends_with_the_last_round_s_policy(
    learner_run: tuple[Path, dict],
) -> None:
    """Rounds 0, 1, 2 in order: round 0 trained on the demonstrations, each later round with its
    beta, rollout statistics and the aggregate's size after it; OUT/checkpoint is the last
    round's policy, and each round fine-tuned ``dagger.steps`` steps."""
    out, state = learner_run
    rounds = state["rounds"]
    assert [entry["round"] for entry in rounds] == [0, 1, 2]
    assert rounds[0]["trained_from"] == "demonstrations"
    aggregate = Dataset(out / "data")
    steps = [entry["length"] for entry in aggregate.episodes]
    assert [entry["dataset_episodes"] for entry in rounds] == [DEMOS, DEMOS + 3, DEMOS + 6]
    assert [entry["dataset_steps"] for entry in rounds] == [
        sum(steps[:DEMOS]),
        sum(steps[: DEMOS + 3]),
        sum(steps),
    ]
    for number in (1, 2):
        entry = rounds[number]
        assert entry["beta"] == 0.0 and entry["checkpoint"] == str(out / f"round_{number:02d}" / "checkpoint")
        own = aggregate.episodes[DEMOS + 3 * (number - 1) : DEMOS + 3 * number]
        learner = sum(e["extra"]["learner_steps"] for e in own)
        assert entry["learner_step_fraction"] == pytest.approx(learner / sum(e["length"] for e in own))
        assert entry["rollout_success"] == pytest.approx(sum(bool(e["success"]) for e in own) / 3)
        config = json.loads((out / f"round_{number:02d}" / "checkpoint" / "config.json").read_text())
        assert config["trained_steps"] == 2
    assert json.loads((out / "round_00" / "checkpoint" / "config.json").read_text())["trained_steps"] == 3
    final = load_file(str(out / "checkpoint" / "model.safetensors"))
    last = load_file(str(out / "round_02" / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(final[key], last[key]) for key in last)
    assert state["checkpoint"] == str(out / "checkpoint")
    assert json.loads((out / "dagger.json").read_text())["rounds"] == json.loads(json.dumps(rounds))


def test_a_round_fine_tunes_the_previous_round_s_weights(learner_run: tuple[Path, dict]) -> None:
    """Round r starts from round r-1's weights (a fresh start would forget the earlier rounds):
    two fine-tuning steps at a small rate leave round 2 close to round 1."""
    out, _ = learner_run
    one = load_file(str(out / "round_01" / "checkpoint" / "model.safetensors"))
    two = load_file(str(out / "round_02" / "checkpoint" / "model.safetensors"))
    zero = load_file(str(out / "round_00" / "checkpoint" / "model.safetensors"))
    distance = sum(float((two[key] - one[key]).abs().sum()) for key in one)
    from_zero = sum(float((two[key] - zero[key]).abs().sum()) for key in one)
    assert 0 < distance < from_zero


def test_an_unreadable_demonstration_stops_the_copy_unless_skipped(demos: str, tmp_path: Path) -> None:
    """A damaged episode in --data stops DAgger before any training, naming the remedy; with
    ``train.skip_bad_episodes=true`` it is left out of OUT/data and the rest are copied."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(demos, broken)
    damaged = broken / Dataset(broken).episodes[1]["file"]
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(
        DatasetError, match=r"set train.skip_bad_episodes=true to leave unreadable episodes out"
    ):
        dagger_run(str(broken), tmp_path / "refused")
    assert not (tmp_path / "refused" / "round_00").exists()
    run = load_run_config(None, ["train.skip_bad_episodes=true"], base=TINY)
    from train.dagger import _copy_demonstrations

    skipped = _copy_demonstrations(str(broken), tmp_path / "copy", run.train.skip_bad_episodes)
    assert skipped == [1]
    copy = Dataset(tmp_path / "copy")
    assert [entry["seed"] for entry in copy.episodes] == [0, 2]
    assert copy.metadata["action_space"] == Dataset(demos).metadata["action_space"]


# -- one mixture episode, driven directly ------------------------------------------------------
# The tests above share one DAgger run (a module fixture), which mutation testing credits to the
# first test only; these drive ``run_dagger_episode`` on their own, with a learner that always
# says DOWN, an action the corridor expert never labels, so each step shows who acted.


class RecordingCorridor(SlipCorridorEnv):
    def __init__(self) -> None:
        super().__init__(slip=0.3)
        self.resets: list[tuple[object, object]] = []

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.resets.append((seed, options))
        return super().reset(seed=seed, options=options)


class RecordingExpert(CorridorExpert):
    def __init__(self) -> None:
        super().__init__()
        self.started: list[tuple[dict, dict]] = []
        self.ran: list[int] = []

    def reset(self, env: gym.Env, obs: dict, info: dict) -> None:
        self.started.append((obs, info))
        super().reset(env, obs, info)

    def executed(self, action: object) -> None:
        self.ran.append(int(action))  # type: ignore[call-overload]


class DownLearner:
    """Stands in for ``Agent``: the instruction it is reset with and the info of every step."""

    def __init__(self) -> None:
        self.generator = torch.Generator()
        self.instructions: list[str] = []
        self.infos: list[dict] = []

    def reset(self, instruction: str) -> None:
        self.instructions.append(instruction)

    def acting(self):
        def act(observation: dict, info: dict) -> int:
            self.infos.append(info)
            return DOWN

        return act


def mixture_episode(job: RolloutJob) -> tuple[object, RecordingCorridor, RecordingExpert, DownLearner]:
    env, expert, learner = RecordingCorridor(), RecordingExpert(), DownLearner()
    episode = run_dagger_episode(learner, env, expert, SLIP_ID, job)  # type: ignore[arg-type]
    return episode, env, expert, learner


def test_a_mixture_episode_runs_the_job_and_tells_expert_and_learner_everything() -> None:
    """The job's seed and task choose the episode (and are recorded with it, with the expert's
    name); the expert starts from the first observation and info and hears every action that
    ran; the learner is reset with the instruction, seeded with the job's seed, and asked at
    every step with that step's info (its history stays whole even where the expert acts)."""
    job = RolloutJob(seed=7, task="corridor", round=2, beta=0.5)
    episode, env, expert, learner = mixture_episode(job)
    assert env.resets == [(7, {"task": "corridor"})]
    assert (episode.seed, episode.task, episode.expert) == (7, "corridor", "corridor_expert")
    ((first, info),) = expert.started
    assert np.array_equal(first["image"], episode.images[0]) and info["instruction"] == INSTRUCTION
    assert expert.ran == episode.extra["executed_actions"]
    assert learner.instructions == [INSTRUCTION]
    assert learner.generator.initial_seed() == 7
    assert len(learner.infos) == episode.length
    assert all(step["instruction"] == INSTRUCTION for step in learner.infos)
    assert (episode.extra["dagger_round"], episode.extra["beta"]) == (2, 0.5)


@pytest.mark.parametrize(("beta", "learner_acts"), [(0.0, True), (1.0, False)])
def test_beta_zero_lets_the_learner_act_at_every_step_and_beta_one_never(
    beta: float, learner_acts: bool
) -> None:
    """Whatever runs, the labels are the expert's; beta 0 executes the learner's action at every
    step, beta 1 the expert's; ``learner_steps`` counts the steps where they differ."""
    episode, _, _, _ = mixture_episode(RolloutJob(seed=3, task=None, round=1, beta=beta))
    labels = [expert_label(image) for image in episode.images[:-1]]
    assert episode.actions.tolist() == labels
    executed = episode.extra["executed_actions"]
    assert executed == ([DOWN] * episode.length if learner_acts else labels)
    assert episode.extra["learner_steps"] == (episode.length if learner_acts else 0)


def test_the_mixture_is_drawn_again_the_same_for_the_same_seed_and_round() -> None:
    """With beta 0.5 both kinds of step occur; the same job gives the same steps (a resumed round
    rolls out what it would have), and another round of the same seed draws another mixture."""
    job = RolloutJob(seed=5, task=None, round=1, beta=0.5)
    first, _, _, _ = mixture_episode(job)
    again, _, _, _ = mixture_episode(job)
    later, _, _, _ = mixture_episode(dataclasses.replace(job, round=2))
    executed = first.extra["executed_actions"]
    assert DOWN in executed and any(action != DOWN for action in executed)
    assert again.extra["executed_actions"] == executed
    assert later.extra["executed_actions"] != executed


def test_from_its_takeover_step_on_the_expert_alone_acts() -> None:
    """Protects ``dagger.takeover``: beta 0 lets the learner act on steps 0 and 1, and from step
    2 every executed action is the expert's label; the episode records the step."""
    episode, _, _, _ = mixture_episode(RolloutJob(seed=3, task=None, round=1, beta=0.0, takeover=2))
    labels = [expert_label(image) for image in episode.images[:-1]]
    executed = episode.extra["executed_actions"]
    assert episode.length > 3
    assert executed[:2] == [DOWN, DOWN] and executed[2:] == labels[2:]
    assert episode.extra["takeover"] == 2 and episode.extra["learner_steps"] == 2
    assert "takeover" not in mixture_episode(RolloutJob(3, None, 1, 0.0))[0].extra


def test_round_jobs_draw_each_rollouts_takeover_step_in_range_and_again_the_same() -> None:
    """Protects: every job's takeover step lies in [first, last], they vary between rollouts,
    and the same round draws the same steps again (a resumed round rolls out what it would
    have); without the setting no job has one."""
    dagger = DaggerConfig(rounds=2, episodes=40, takeover=(130, 200))
    state = {"first_seed": 10, "tasks": ["a", "b"]}
    steps = [job.takeover for job in round_jobs(state, dagger, 1)]
    assert all(step is not None and 130 <= step <= 200 for step in steps) and len(set(steps)) > 10
    assert [job.takeover for job in round_jobs(state, dagger, 1)] == steps
    assert [job.takeover for job in round_jobs(state, dagger, 2)] != steps
    assert {job.takeover for job in round_jobs(state, DaggerConfig(episodes=4), 1)} == {None}


@pytest.mark.parametrize("value", [[0, 10], [20, 10], [5]])
def test_a_takeover_that_is_not_a_first_and_last_step_is_refused(value: list[int]) -> None:
    """Protects: a takeover range must be two steps, 1 <= first <= last; the message names it."""
    with pytest.raises(ConfigError, match=r"dagger\.takeover"):
        load_run_config(None, [f"dagger.takeover={value}"], base=TINY)


# -- the rounds' bookkeeping, driven directly --------------------------------------------------
# ``_Rounds.zero``, ``next`` and ``finish`` called on their own (not through the shared run), with
# the training and the rollouts replaced by stand-ins that record what they were asked.


class RecordingWriter:
    """Stands in for TensorBoard's SummaryWriter: every scalar logged, and the flushes."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []
        self.flushes = 0

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def flush(self) -> None:
        self.flushes += 1


def started_rounds(
    demos: str, root: Path, *, progress: bool = False, tasks: list[str] | None = None, **dagger: object
) -> _Rounds:
    """A run's rounds as ``run_dagger`` starts them: OUT/data a copy of the demonstrations, no
    round finished yet."""
    import shutil

    settings = DaggerConfig(
        **{"rounds": 2, "episodes": 3, "steps": 2, "eval_episodes": 0, "workers": 1, **dagger}
    )
    run = dataclasses.replace(load_run_config(None, ["train.device=cpu"], base=TINY), dagger=settings)
    root.mkdir(parents=True)
    shutil.copytree(demos, root / "data")
    state = {
        "data": demos,
        "env_id": SLIP_ID,
        "tasks": tasks,
        "expert": None,
        "init": None,
        "first_seed": DEMOS,
        "dagger": dataclasses.asdict(settings),
        "rounds": [],
    }
    return _Rounds(root, state, run, SLIP_ID, CorridorExpert, tasks, progress, RecordingWriter())


def demo_steps(demos: str) -> int:
    return sum(entry["length"] for entry in Dataset(demos).episodes)


@pytest.mark.parametrize("progress", [True, False])
def test_a_finished_round_is_recorded_logged_and_saved(
    demos: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], progress: bool
) -> None:
    """``dagger.json`` and TensorBoard after a round: the round, its checkpoint, what it was given
    (beta, rollout statistics) and the aggregate's size then; the same numbers logged at the
    round's step and flushed; one line printed with progress on, none with it off."""
    rounds = started_rounds(demos, tmp_path / "run", progress=progress)
    checkpoint = tmp_path / "run" / "round_02" / "checkpoint"
    extra = {"beta": 0.25, "rollout_success": 0.5, "learner_step_fraction": 0.125}
    rounds.finish(2, checkpoint, extra)
    steps = demo_steps(demos)
    entry = {
        "round": 2,
        "checkpoint": str(checkpoint),
        **extra,
        "dataset_episodes": DEMOS,
        "dataset_steps": steps,
    }
    assert rounds.state["rounds"] == [entry]
    assert load_state(tmp_path / "run")["rounds"] == [entry]
    assert rounds.writer.scalars == [
        ("dagger/dataset_episodes", DEMOS, 2),
        ("dagger/dataset_steps", steps, 2),
        ("dagger/beta", 0.25, 2),
        ("dagger/rollout_success", 0.5, 2),
        ("dagger/learner_step_fraction", 0.125, 2),
    ]
    assert rounds.writer.flushes == 1
    shown = f"round 2: dataset {DEMOS} episodes / {steps} steps\n" if progress else ""
    assert capsys.readouterr().out == shown


def test_round_zero_logs_only_the_aggregate_s_size(demos: str, tmp_path: Path) -> None:
    """Round 0 has no beta or rollouts: only the dataset's size is logged, and a second finished
    round is added after the first in the saved state."""
    rounds = started_rounds(demos, tmp_path / "run")
    rounds.finish(0, tmp_path / "zero", {"trained_from": "demonstrations"})
    rounds.finish(1, tmp_path / "one", {"beta": 0.5})
    assert [tag for tag, _, _ in rounds.writer.scalars] == [
        "dagger/dataset_episodes",
        "dagger/dataset_steps",
        "dagger/dataset_episodes",
        "dagger/dataset_steps",
        "dagger/beta",
    ]
    assert [entry["round"] for entry in load_state(tmp_path / "run")["rounds"]] == [0, 1]
    assert load_state(tmp_path / "run")["rounds"][0]["trained_from"] == "demonstrations"


def test_an_evaluated_round_records_its_success_per_task(
    demos: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``dagger.eval_episodes`` set, each round's checkpoint is evaluated on the run's env and
    tasks with the eval seed and workers; the mean success and each task's rate are recorded, the
    success logged and printed."""
    import train.dagger

    calls: list[tuple[tuple, dict]] = []

    def evaluate(*args: object, **kwargs: object) -> dict:
        calls.append((args, kwargs))
        return {
            "mean_task_success": 0.75,
            "tasks": {"corridor": {"success_rate": 0.75}, "other": {"success_rate": 0.5}},
        }

    monkeypatch.setattr(train.dagger, "evaluate", evaluate)
    rounds = started_rounds(
        demos, tmp_path / "run", progress=True, tasks=["corridor"], eval_episodes=4, eval_seed=123, workers=3
    )
    checkpoint = tmp_path / "round_01" / "checkpoint"
    rounds.finish(1, checkpoint, {"beta": 0.5})
    assert calls == [
        (
            (SLIP_ID, 4),
            {"checkpoint": str(checkpoint), "tasks": ["corridor"], "workers": 3, "seed": 123, "plan": None},
        )
    ]
    entry = rounds.state["rounds"][0]
    assert entry["success"] == 0.75 and entry["eval"] == {"corridor": 0.75, "other": 0.5}
    assert rounds.writer.scalars[0] == ("dagger/success", 0.75, 1)
    steps = demo_steps(demos)
    assert capsys.readouterr().out == f"round 1: success 0.75, dataset {DEMOS} episodes / {steps} steps\n"


def refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("a finished round ran again")


def test_a_finished_round_is_not_run_again(
    demos: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumed run skips the rounds its state lists: their checkpoints are returned as they
    are, nothing is trained, copied or rolled out, and the state is not touched."""
    import train.dagger

    for name in ("train_bc_policy", "copy_checkpoint", "_roll_out", "_fine_tune"):
        monkeypatch.setattr(train.dagger, name, refuse)
    rounds = started_rounds(demos, tmp_path / "run")
    rounds.state["rounds"] = [{"round": 0}]  # interrupted in round 1
    assert rounds.zero(None) == tmp_path / "run" / "round_00" / "checkpoint"
    assert rounds.zero("elsewhere") == tmp_path / "run" / "round_00" / "checkpoint"
    rounds.state["rounds"].append({"round": 1})
    assert rounds.next(1, tmp_path / "previous") == tmp_path / "run" / "round_01" / "checkpoint"
    assert rounds.state["rounds"] == [{"round": 0}, {"round": 1}]
    assert rounds.writer.scalars == []


def test_round_zero_from_a_checkpoint_copies_it_and_says_so(
    demos: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--init``: round 0 is the given checkpoint, copied into OUT/round_00/checkpoint without
    training, and recorded as trained from it."""
    import train.dagger

    copies: list[tuple[Path, Path]] = []
    monkeypatch.setattr(
        train.dagger, "copy_checkpoint", lambda source, target: copies.append((source, target))
    )
    monkeypatch.setattr(train.dagger, "train_bc_policy", refuse)
    rounds = started_rounds(demos, tmp_path / "run")
    checkpoint = tmp_path / "run" / "round_00" / "checkpoint"
    assert rounds.zero(str(tmp_path / "init")) == checkpoint
    assert copies == [(tmp_path / "init", checkpoint)]
    (entry,) = rounds.state["rounds"]
    assert (entry["round"], entry["checkpoint"], entry["trained_from"]) == (
        0,
        str(checkpoint),
        str(tmp_path / "init"),
    )


@pytest.mark.parametrize("interrupted", [False, True])
def test_round_zero_clones_the_demonstrations_and_continues_an_interrupted_clone(
    demos: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupted: bool
) -> None:
    """Without ``--init``, round 0 is behavioral cloning with the run's settings on OUT/data into
    OUT/round_00; a round 0 whose checkpoint holds the trainer's state resumes from it."""
    import train.dagger
    from train.checkpoint import TRAINER_STATE

    calls: list[tuple[tuple, dict]] = []
    monkeypatch.setattr(train.dagger, "train_bc_policy", lambda *a, **k: calls.append((a, k)))
    rounds = started_rounds(demos, tmp_path / "run", progress=True)
    round_dir = tmp_path / "run" / "round_00"
    if interrupted:
        (round_dir / "checkpoint").mkdir(parents=True)
        (round_dir / "checkpoint" / TRAINER_STATE).write_bytes(b"")
    assert rounds.zero(None) == round_dir / "checkpoint"
    resume = str(round_dir) if interrupted else None
    assert calls == [
        ((rounds.run, str(tmp_path / "run" / "data"), str(round_dir)), {"resume": resume, "progress": True})
    ]
    (entry,) = rounds.state["rounds"]
    assert (entry["round"], entry["trained_from"]) == (0, "demonstrations")


def test_an_interrupted_round_zero_says_so_and_how_to_resume(
    demos: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while round 0 trains: the error names round 0's training, no finished round, the
    round's checkpoint folder and the resume command; round 0 is not recorded as finished."""
    import train.dagger

    def stopped(*args: object, **kwargs: object) -> None:
        raise TrainingInterrupted("stopped", signal.SIGTERM)

    monkeypatch.setattr(train.dagger, "train_bc_policy", stopped)
    rounds = started_rounds(demos, tmp_path / "run")
    with pytest.raises(TrainingInterrupted) as error:
        rounds.zero(None)
    message = str(error.value)
    assert message.startswith("DAgger interrupted in round 0's training (rounds finished: none): ")
    assert f"written to {tmp_path / 'run' / 'round_00' / 'checkpoint'}" in message and "--resume" in message
    assert error.value.exit_code == 128 + signal.SIGTERM
    assert rounds.state["rounds"] == []


def write_rollouts(aggregate: Path, jobs: list[RolloutJob]) -> None:
    """What ``_roll_out`` appends: each job's mixture episode (a learner that always says DOWN)."""
    metadata = Dataset(aggregate).metadata
    with DatasetWriter(
        aggregate,
        env_id=metadata["env_id"],
        image_shape=tuple(metadata["image_shape"]),
        action_space=metadata["action_space"],
    ) as writer:
        for job in jobs:
            writer.add(
                run_dagger_episode(DownLearner(), SlipCorridorEnv(slip=0.3), CorridorExpert(), SLIP_ID, job)
            )  # type: ignore[arg-type]


@pytest.mark.parametrize("already", [0, 1, 3])
def test_a_round_rolls_out_what_is_missing_then_fine_tunes_the_previous_policy(
    demos: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, already: int
) -> None:
    """Round 2 (beta 0.8 decaying by 0.5): the rollouts not yet in OUT/data (all of them, or the
    rest of an interrupted round, or none) are rolled out from the previous checkpoint with the
    run's env, expert and settings; then the previous policy is fine-tuned on the aggregate into
    OUT/round_02; the round's record holds its beta and the statistics of all its episodes."""
    import train.dagger

    rounds = started_rounds(demos, tmp_path / "run", progress=True, beta=0.8, beta_decay=0.5)
    aggregate, previous = tmp_path / "run" / "data", tmp_path / "run" / "round_01" / "checkpoint"
    jobs = round_jobs(rounds.state, rounds.dagger, 2)
    write_rollouts(aggregate, jobs[:already])
    rolled: list[tuple] = []
    tuned: list[tuple] = []

    def roll_out(*args: object) -> None:
        rolled.append(args)
        write_rollouts(aggregate, args[4])  # type: ignore[arg-type]

    monkeypatch.setattr(train.dagger, "_roll_out", roll_out)
    monkeypatch.setattr(train.dagger, "_fine_tune", lambda *args: tuned.append(args))
    round_dir = tmp_path / "run" / "round_02"
    assert rounds.next(2, previous) == round_dir / "checkpoint"
    if already == len(jobs):
        assert rolled == []
    else:
        ((where, start, env_id, expert, missing, written, dagger, progress, interrupted, plan),) = rolled
        assert (where, start, env_id, expert, plan) == (aggregate, previous, SLIP_ID, CorridorExpert, None)
        assert (missing, written, dagger, progress) == (jobs[already:], already, rounds.dagger, True)
        message = str(interrupted("1 of 3 rollouts written", signal.SIGINT))
        assert message.startswith("DAgger interrupted in round 2's rollouts (rounds finished: 2): 1 of 3")
    assert tuned == [(rounds.run, aggregate, round_dir, previous, True)]
    entries = round_entries(aggregate, jobs, 2)
    assert [entry["seed"] for entry in entries] == [job.seed for job in jobs]
    (entry,) = rounds.state["rounds"]
    assert entry == {
        "round": 2,
        "checkpoint": str(round_dir / "checkpoint"),
        "beta": pytest.approx(0.4),
        **round_statistics(entries),
        "dataset_episodes": DEMOS + 3,
        "dataset_steps": sum(e["length"] for e in Dataset(aggregate).episodes),
    }
    assert entry["learner_step_fraction"] > 0


def test_an_interrupted_fine_tune_says_which_round(
    demos: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while round 1 fine-tunes: the error names round 1's training, the rounds finished
    (0) and OUT/round_01/checkpoint; round 1 is not recorded as finished."""
    import train.dagger

    def stopped(*args: object) -> None:
        raise TrainingInterrupted("stopped", signal.SIGINT)

    monkeypatch.setattr(
        train.dagger, "_roll_out", lambda *args: write_rollouts(tmp_path / "run" / "data", args[4])
    )
    monkeypatch.setattr(train.dagger, "_fine_tune", stopped)
    rounds = started_rounds(demos, tmp_path / "run")
    rounds.state["rounds"] = [{"round": 0}]
    with pytest.raises(TrainingInterrupted) as error:
        rounds.next(1, tmp_path / "run" / "round_00" / "checkpoint")
    message = str(error.value)
    assert message.startswith("DAgger interrupted in round 1's training (rounds finished: 0): ")
    assert f"written to {tmp_path / 'run' / 'round_01' / 'checkpoint'}" in message
    assert rounds.state["rounds"] == [{"round": 0}]


# -- the run's set-up and fine-tuning, driven directly -----------------------------------------
# ``_copy_demonstrations``, ``_start`` and ``_fine_tune`` called on their own, the training
# replaced by a stand-in that records what it was asked.


@pytest.mark.parametrize("checkpoint", ["none", "interrupted", "trainer state only"])
def test_a_round_fine_tunes_dagger_steps_from_the_previous_policy_or_continues_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpoint: str
) -> None:
    """A round trains ``dagger.steps`` steps (not ``train.steps``) on the whole aggregate into its
    own folder, from the previous round's weights, with the run's policy and settings. A round
    whose checkpoint holds the trainer's state and its run config (an interrupted fine-tune)
    continues from that checkpoint with the architecture it recorded and the run's current
    training settings; the trainer's state alone (no run config) is no such checkpoint."""
    import train.dagger
    from train.checkpoint import CHECKPOINT, RUN_CONFIG, TRAINER_STATE

    calls: list[tuple[tuple, dict]] = []
    monkeypatch.setattr(train.dagger, "train_bc_policy", lambda *a, **k: calls.append((a, k)))
    run = dataclasses.replace(
        load_run_config(None, ["train.steps=7", "train.lr=0.002", "rl.gamma=0.9"], base=TINY),
        dagger=DaggerConfig(steps=5, rounds=3),
    )
    recorded = load_run_config(None, ["policy.text.word_dim=32", "train.steps=2"], base=TINY)
    assert recorded.policy != run.policy
    aggregate, round_dir, previous = tmp_path / "data", tmp_path / "round_02", tmp_path / "round_01"
    if checkpoint != "none":
        (round_dir / CHECKPOINT).mkdir(parents=True)
        (round_dir / CHECKPOINT / TRAINER_STATE).write_bytes(b"")
    if checkpoint == "interrupted":
        (round_dir / CHECKPOINT / RUN_CONFIG).write_text(json.dumps(recorded.to_dict()))
    train.dagger._fine_tune(run, aggregate, round_dir, previous, True)
    ((args, kwargs),) = calls
    config = args[0]
    assert args[1:] == (str(aggregate), str(round_dir))
    assert config.train == dataclasses.replace(run.train, steps=5)
    assert (config.rl, config.dagger) == (run.rl, run.dagger)
    if checkpoint == "interrupted":
        assert config.policy == recorded.policy
        assert kwargs == {"resume": str(round_dir), "progress": True}
    else:
        assert config.policy == run.policy
        assert kwargs == {"progress": True, "init": str(previous)}


def corridor_demos(root: Path, **writer: object) -> Path:
    """Three small episodes (8x8 frames) in a dataset written with ``writer``'s settings."""
    from helpers import store_episode

    with DatasetWriter(
        root, env_id=SLIP_ID, image_shape=(8, 8, 3), action_space={"type": "Discrete", "n": 4}, **writer
    ) as out:
        for steps in (3, 5, 2):
            out.add(store_episode(steps))
    return root


def test_the_copy_of_the_demonstrations_keeps_their_metadata(tmp_path: Path) -> None:
    """OUT/data is a dataset of the demonstrations' kind: the same env, image shape, action
    space, frames per block and collection info, and every episode in order."""
    source = corridor_demos(tmp_path / "demos", frames_per_block=2, info={"expert": "corridor", "seed": 4})
    from train.dagger import _copy_demonstrations

    assert _copy_demonstrations(str(source), tmp_path / "copy", False) == []
    original, copy = Dataset(source), Dataset(tmp_path / "copy")
    for key in ("env_id", "image_shape", "action_space", "frames_per_block", "info"):
        assert copy.metadata[key] == original.metadata[key], key
    assert copy.metadata["frames_per_block"] == 2
    assert [entry["length"] for entry in copy.episodes] == [3, 5, 2]
    assert copy.check() == []


@pytest.mark.parametrize("linked", ["episodes", "episodes/000", "episodes/000/000001.npz"])
def test_a_symbolic_link_among_the_demonstrations_is_refused_before_anything_is_copied(
    tmp_path: Path, linked: str
) -> None:
    """A link anywhere on an episode's path (episodes/, its sub-folder, the file) could point at
    a device or a file that has no place in OUT/data: DAgger stops before writing anything,
    naming the link, the first episode behind it and the dataset, and what to do."""
    from train.dagger import _copy_demonstrations

    source = corridor_demos(tmp_path / "demos")
    target = tmp_path / "elsewhere" / Path(linked).name
    target.parent.mkdir()
    (source / linked).rename(target)
    (source / linked).symlink_to(target)
    first = 1 if linked.endswith(".npz") else 0
    message = (
        f"{source / linked} (episode {first} of {source}) is a symbolic link: DAgger copies only "
        "regular files; replace the link with what it points to"
    )
    with pytest.raises(DatasetError) as refused:
        _copy_demonstrations(str(source), tmp_path / "copy", True)
    assert str(refused.value) == message
    assert not (tmp_path / "copy").exists()


def test_demonstrations_reached_through_a_link_to_their_folder_are_copied(tmp_path: Path) -> None:
    """``--data`` may itself be a link to the dataset's folder (only what lies inside it may not
    be): every episode is copied."""
    from train.dagger import _copy_demonstrations

    source = corridor_demos(tmp_path / "demos")
    (tmp_path / "latest").symlink_to(source)
    assert _copy_demonstrations(str(tmp_path / "latest"), tmp_path / "copy", False) == []
    assert [entry["length"] for entry in Dataset(tmp_path / "copy").episodes] == [3, 5, 2]


def test_a_demonstration_that_is_not_a_regular_file_is_refused_before_anything_is_copied(
    tmp_path: Path,
) -> None:
    """An episode whose file became a folder is refused by name, even with
    ``train.skip_bad_episodes``, before OUT/data is written."""
    from train.dagger import _copy_demonstrations

    source = corridor_demos(tmp_path / "demos")
    path = source / "episodes/000/000002.npz"
    path.unlink()
    path.mkdir()
    with pytest.raises(DatasetError) as refused:
        _copy_demonstrations(str(source), tmp_path / "copy", True)
    assert str(refused.value) == f"{path} (episode 2 of {source}) is not a regular file"
    assert not (tmp_path / "copy").exists()


def start_settings(demos: str) -> dict[str, tuple[str, object]]:
    return {
        "--data": ("data", demos),
        "--env": ("env_id", SLIP_ID),
        "--tasks": ("tasks", ["corridor"]),
        "--expert": ("expert", "corridor"),
        "--init": ("init", None),
    }


def test_a_new_run_starts_from_a_fresh_copy_and_records_what_it_was_started_with(
    demos: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new run: OUT/data is a fresh copy of the demonstrations (a copy left by a run that
    stopped before its first state is replaced), the resolved run config is written where
    ``--config`` reads it back, and ``dagger.json`` holds the settings the run was started with,
    the first rollout seed (after the demonstrations' seeds) and no rounds."""
    from train.dagger import _start
    from train.dagger_settings import RUN_CONFIG_FILE, plain

    root = tmp_path / "run"
    (root / "data").mkdir(parents=True)
    (root / "data" / "left-over").write_text("from a stopped start")
    run = dataclasses.replace(
        load_run_config(None, ["train.device=cpu"], base=TINY),
        dagger=DaggerConfig(rounds=2, episodes=4, takeover=(3, 5)),
    )
    state = _start(root, run, demos, start_settings(demos))
    assert state == {
        "data": demos,
        "env_id": SLIP_ID,
        "tasks": ["corridor"],
        "expert": "corridor",
        "init": None,
        "first_seed": DEMOS,
        "dagger": dataclasses.asdict(run.dagger),
        "run": plain(run.to_dict()),
        "rounds": [],
    }
    assert load_state(root) == plain(state)
    assert not (root / "data" / "left-over").exists()
    assert [entry["seed"] for entry in Dataset(root / "data").episodes] == list(range(DEMOS))
    assert load_run_config(root / RUN_CONFIG_FILE) == run
    written = yaml.safe_load((root / RUN_CONFIG_FILE).read_text())  # in the config's own order
    assert list(written) == ["policy", "train", "rl", "dagger"]
    assert list(written["dagger"]) == [field.name for field in dataclasses.fields(DaggerConfig)]
    assert capsys.readouterr().err == ""


def test_a_new_run_says_which_unreadable_demonstrations_it_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ``train.skip_bad_episodes=true`` damaged demonstrations are left out of OUT/data and
    the run says so once on stderr: how many, the dataset, OUT/data and the first 20 of them. The
    run's folder is made with its parents; the first rollout seed still follows every
    demonstration's seed."""
    from helpers import store_episode

    from train.dagger import _start

    source = tmp_path / "demos"
    with DatasetWriter(
        source, env_id=SLIP_ID, image_shape=(8, 8, 3), action_space={"type": "Discrete", "n": 4}
    ) as out:
        for steps in range(1, 24):  # seeds 1 to 23
            out.add(store_episode(steps))
    damaged = list(range(1, 22))
    for number in damaged:
        path = source / Dataset(source).episodes[number]["file"]
        path.write_bytes(path.read_bytes()[:100])
    run = load_run_config(None, ["train.skip_bad_episodes=true"], base=TINY)
    root = tmp_path / "runs" / "dagger"
    state = _start(root, run, str(source), start_settings(str(source)))
    err = capsys.readouterr().err
    assert err == f"note: left 21 unreadable episode(s) of {source} out of {root / 'data'}: {damaged[:20]}\n"
    assert [entry["seed"] for entry in Dataset(root / "data").episodes] == [1, 23]
    assert state["first_seed"] == 24


def test_a_run_checks_its_inputs_then_runs_every_round_from_the_last_and_keeps_the_last_policy(
    demos: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run_dagger``: every input (data, env, expert, tasks, ``--init``) checked before anything
    runs; round 0 from ``--init``, then rounds 1 to ``dagger.rounds`` in order, each from the
    checkpoint the round before it gave; the last round's checkpoint copied to OUT/checkpoint and
    named in the returned and the saved state; TensorBoard logs in OUT/tb; progress shown unless
    switched off. A second call with ``resume=True`` continues the same run."""
    import train.dagger
    from train.dagger_settings import absolute, plain

    checked: list[tuple] = []
    made: list[tuple] = []
    asked: list[tuple] = []
    copies: list[tuple[Path, Path]] = []

    class Rounds:
        """Stands in for ``_Rounds``: what it was made with and each round it was asked for."""

        def __init__(self, *args: object) -> None:
            made.append(args)

        def zero(self, init: str | None) -> Path:
            asked.append((0, init))
            return tmp_path / "zero"

        def next(self, number: int, checkpoint: Path) -> Path:
            asked.append((number, checkpoint))
            return tmp_path / f"after_{number}"

    monkeypatch.setattr(train.dagger, "_check_inputs", lambda *args: checked.append(args))
    monkeypatch.setattr(train.dagger, "copy_checkpoint", lambda *args: copies.append(args))
    monkeypatch.setattr(train.dagger, "_Rounds", Rounds)
    run = dataclasses.replace(
        load_run_config(None, ["train.device=cpu"], base=TINY),
        dagger=DaggerConfig(rounds=3, episodes=2, eval_episodes=0, workers=1),
    )
    out, init = tmp_path / "run", str(tmp_path / "init")
    state = run_dagger(run, demos, str(out), SLIP_ID, CorridorExpert, tasks=["corridor"], init=init)
    assert checked == [(demos, SLIP_ID, CorridorExpert, ["corridor"], init, None, run)]
    ((root, given, rounds_run, env_id, expert, tasks, progress, writer, plan),) = made
    assert (root, rounds_run, env_id, expert, tasks, progress, plan) == (
        out,
        run,
        SLIP_ID,
        CorridorExpert,
        ["corridor"],
        True,
        None,
    )
    assert given is state
    assert writer.log_dir == str(out / "tb") and (out / "tb").is_dir()
    assert asked == [(0, init), (1, tmp_path / "zero"), (2, tmp_path / "after_1"), (3, tmp_path / "after_2")]
    assert copies == [(tmp_path / "after_3", out / "checkpoint")]
    assert state["checkpoint"] == str(out / "checkpoint")
    assert (state["data"], state["tasks"], state["init"]) == (absolute(demos), ["corridor"], absolute(init))
    assert load_state(out) == plain(state)

    made.clear()
    asked.clear()
    resumed = run_dagger(
        run,
        demos,
        str(out),
        SLIP_ID,
        CorridorExpert,
        tasks=["corridor"],
        init=init,
        resume=True,
        progress=False,
    )
    assert made[0][6] is False and asked[0] == (0, init)
    assert resumed["first_seed"] == state["first_seed"] and resumed["checkpoint"] == str(out / "checkpoint")
