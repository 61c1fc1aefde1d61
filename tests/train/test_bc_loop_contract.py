"""What a BC run promises its user: the loss counts real steps only, each step trains at the
scheduled rate, checkpoints land where the settings say, and a run stopped and resumed ends
exactly where an uninterrupted one does.

Runs in-process on a small synthetic dataset (16x16 frames, a run takes about a second), so a
changed line in the loop is seen by these tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces
from helpers import tiny_run_config
from safetensors.torch import load_file

import train.bc as bc
from envs.data.format import Episode
from envs.data.store import DatasetError, Problem
from envs.data.writer import DatasetWriter
from policies import CheckpointError, InstructionPolicy
from train.batch import Batch, bc_loss
from train.bc import lr_lambda, train_bc, train_bc_policy
from train.checkpoint import (
    TRAINER_STATE,
    checkpoint_step,
    finished_run,
    last_good_checkpoint,
    recorded_count,
    resume_training,
)
from train.config import load_run_config
from train.data import ChunkDataset, ResumableSampler
from train.errors import SettingError, TrainingDiverged

TINY = tiny_run_config(instruction_dropout=0.1)
LENGTHS = (5, 9, 12, 7, 11, 6)
INSTRUCTIONS = ("go left", "go right", "pick it up")


def write_dataset(root: Path, action_space: spaces.Space, lengths: tuple[int, ...] = LENGTHS) -> str:
    """Episodes of random 16x16 frames and actions, rewards at the end, three instructions."""
    rng = np.random.default_rng(0)
    with DatasetWriter(root, env_id="test-env", image_shape=(16, 16, 3), action_space=action_space) as writer:
        for number, length in enumerate(lengths):
            if isinstance(action_space, spaces.MultiDiscrete):
                actions = np.stack([rng.integers(0, n, length) for n in action_space.nvec], -1)
            else:
                actions = rng.integers(0, action_space.n, length)
            rewards = np.zeros(length, np.float32)
            rewards[-1] = 1.0
            done = np.zeros(length, bool)
            done[-1] = True
            writer.add(
                Episode(
                    images=rng.integers(0, 256, (length + 1, 16, 16, 3), dtype=np.uint8),
                    actions=actions.astype(np.int64),
                    rewards=rewards,
                    terminated=done,
                    truncated=np.zeros(length, bool),
                    instruction=INSTRUCTIONS[number % 3],
                    task=f"task{number % 3}",
                    env_id="test-env",
                    success=True,
                )
            )
    return str(root)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_dataset(tmp_path_factory.mktemp("bc") / "demos", spaces.Discrete(5))


def config(*overrides: str):
    """The tiny config, a few steps, no validation, CPU, fp32."""
    base = [
        "train.steps=6",
        "train.batch_size=2",
        "train.chunk_length=8",
        "train.warmup_steps=2",
        "train.checkpoint_every=3",
        "train.log_every=100",
        "train.val_fraction=0.0",
        "train.device=cpu",
        "train.amp=false",
        "train.cache_mib=0",
    ]
    return load_run_config(None, [*base, *overrides], base=TINY)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoint" / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def trainer_state(out: Path) -> dict:
    return torch.load(out / "checkpoint" / TRAINER_STATE, weights_only=True)


class Stop(Exception):
    """Raised by a patched checkpoint writer to stop a run right after a checkpoint."""


def stop_after_checkpoint(monkeypatch: pytest.MonkeyPatch, at: int) -> list[int]:
    """``train.bc.save_bc_checkpoint`` records each step it writes and stops the run after ``at``."""
    original, saved = bc.save_bc_checkpoint, []

    def save(directory, policy, optimizer, scheduler, step, run, data):
        original(directory, policy, optimizer, scheduler, step, run, data)
        saved.append(step)
        if step == at:
            raise Stop

    monkeypatch.setattr(bc, "save_bc_checkpoint", save)
    return saved


def record_rates(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, float]]:
    """(lr, weight decay) of every optimizer step, in order."""
    rates: list[tuple[float, float]] = []
    step = torch.optim.AdamW.step

    def recording(self, *args, **kwargs):
        group = self.param_groups[0]
        rates.append((group["lr"], group["weight_decay"]))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    return rates


# -- the loss and its masks -------------------------------------------------------------------


def padded_batch(data: str) -> Batch:
    """Unpacked rows of 8 steps: the 5- and 7-step episodes and the 12-step one's 4-step tail
    are right-padded."""
    chunks = ChunkDataset(data, 8, pack=False)
    batch = Batch.collate([chunks[i] for i in range(len(chunks))])
    assert not batch.frame_mask.all() and batch.frame_mask.any()
    return batch


def eval_policy(data: str, dropout: float = 0.0) -> InstructionPolicy:
    run = config(f"policy.instruction_dropout={dropout}")
    torch.manual_seed(0)
    policy = InstructionPolicy(run.policy.replace(action_space={"type": "Discrete", "sizes": [5]}))
    return policy.eval()


def test_the_loss_is_the_mean_over_real_steps_only(data: str) -> None:
    """The BC loss is the negative log-likelihood of the recorded actions averaged over real steps
    (not rows, not padded steps); the value term is the squared error to the reward-to-go over
    the same steps; the log-likelihood is their sum (validation totals it)."""
    policy, batch = eval_policy(data), padded_batch(data)
    terms = bc_loss(policy, batch)
    with torch.no_grad():
        output = policy(
            batch.frames,
            batch.instructions,
            times=batch.times,
            frame_mask=batch.frame_mask,
            segments=batch.segments,
        )
    mask = batch.frame_mask
    log_prob = policy.distribution(output.logits).log_prob(batch.actions)[mask]
    torch.testing.assert_close(terms.log_likelihood.detach(), log_prob.sum())
    torch.testing.assert_close(terms.policy.detach(), -log_prob.mean())
    value_error = (output.value[mask] - batch.returns[mask]).square().mean()
    torch.testing.assert_close(terms.value.detach(), value_error)
    assert terms.distribution.logits.shape[:2] == mask.shape


def test_padded_steps_do_not_count_in_the_loss(data: str) -> None:
    """Whatever a padded step holds (action, return), the loss terms stay the same."""
    policy, batch = eval_policy(data), padded_batch(data)
    before = bc_loss(policy, batch)
    padding = ~batch.frame_mask
    changed = Batch(
        frames=batch.frames,
        instructions=batch.instructions,
        times=batch.times,
        frame_mask=batch.frame_mask,
        actions=torch.where(padding, 4 - batch.actions, batch.actions),
        returns=torch.where(padding, batch.returns + 100.0, batch.returns),
        segments=batch.segments,
    )
    after = bc_loss(policy, changed)
    for name in ("policy", "value", "log_likelihood"):
        torch.testing.assert_close(getattr(after, name).detach(), getattr(before, name).detach(), msg=name)


def test_keep_instructions_never_drops_the_instruction_while_training(data: str) -> None:
    """``keep_instructions`` (validation, PPO's BC term): in training mode with instruction
    dropout the loss is the one the policy gives with every instruction; without it rows lose
    their instruction as ``policy.instruction_dropout`` says."""
    policy, batch = eval_policy(data, dropout=0.99), padded_batch(data)
    full = bc_loss(policy, batch).policy.detach()  # eval mode: nothing dropped
    policy.train()
    torch.manual_seed(1)
    kept = bc_loss(policy, batch, keep_instructions=True).policy.detach()
    torch.manual_seed(1)
    dropped = bc_loss(policy, batch).policy.detach()
    torch.testing.assert_close(kept, full)
    assert not torch.allclose(dropped, full)


def test_autocast_runs_the_forward_in_bf16_only_when_asked(
    data: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``autocast="cpu"`` runs the forward under bf16 autocast; None runs it in fp32, and the loss
    is computed in fp32 either way."""
    policy, batch = eval_policy(data), padded_batch(data)
    seen: list[tuple[bool, torch.dtype]] = []
    forward = InstructionPolicy.forward

    def recording(self, *args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(InstructionPolicy, "forward", recording)
    plain = bc_loss(policy, batch)
    mixed = bc_loss(policy, batch, autocast="cpu")
    assert seen == [(False, seen[0][1]), (True, torch.bfloat16)]
    assert plain.policy.dtype == mixed.policy.dtype == torch.float32
    assert mixed.distribution.logits.dtype == torch.float32


def test_training_accuracy_counts_real_steps_only(data: str) -> None:
    """``train/accuracy_head*``: how often the most likely action is the recorded one, over real
    steps; padded steps count neither as hits nor in the total."""
    logits = torch.full((1, 4, 5), -5.0)
    logits[0, :, 2] = 5.0  # the mode is action 2 everywhere
    distribution = InstructionPolicy.distribution(eval_policy(data), logits)
    batch = padded_batch(data)
    batch.actions = torch.tensor([[2, 2, 0, 2]])
    batch.frame_mask = torch.tensor([[True, True, True, False]])
    assert bc._accuracies(distribution, batch) == pytest.approx([2 / 3])
    batch.frame_mask = torch.tensor([[False, True, False, False]])
    assert bc._accuracies(distribution, batch) == [1.0]  # one real step, a hit
    batch.frame_mask = torch.zeros(1, 4, dtype=torch.bool)
    assert bc._accuracies(distribution, batch) == [0.0]  # no real step: no division by zero


def test_training_accuracy_is_per_component_of_a_multi_discrete_action(tmp_path: Path, data: str) -> None:
    """A MultiDiscrete space reports one accuracy per component."""
    sizes = (3, 4)
    logits = torch.full((1, 3, 7), -5.0)
    logits[0, :, 1] = 5.0  # component 0: mode 1
    logits[0, :, 3 + 2] = 5.0  # component 1: mode 2
    from policies.heads import FactorizedCategorical

    distribution = FactorizedCategorical(logits, sizes)
    batch = padded_batch(data)
    batch.actions = torch.tensor([[[1, 2], [1, 0], [0, 0]]])
    batch.frame_mask = torch.tensor([[True, True, True]])
    assert bc._accuracies(distribution, batch) == pytest.approx([2 / 3, 1 / 3])


# -- the schedule in a run --------------------------------------------------------------------


def test_each_step_trains_at_the_scheduled_rate(
    data: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step k (from 0) updates the weights at ``train.lr * lr_lambda(k)``: warm-up, then the
    cosine to ``train.min_lr_ratio`` at ``train.steps``, with ``train.weight_decay``."""
    rates = record_rates(monkeypatch)
    run = config("train.steps=7", "train.lr=0.002", "train.min_lr_ratio=0.25", "train.weight_decay=0.03")
    train_bc(run, data, str(tmp_path / "o"), progress=False)
    expected = [0.002 * lr_lambda(k, 2, 7, 0.25) for k in range(7)]
    assert [lr for lr, _ in rates] == pytest.approx(expected)
    assert {decay for _, decay in rates} == {0.03}


def test_a_resumed_run_continues_the_schedule_and_takes_a_changed_rate(
    data: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Resumed after step 3 with ``train.lr`` and ``train.weight_decay`` changed: steps 3.. train
    at the new rate times the schedule where it left off, with the new decay, and the run says
    which settings changed."""
    out = tmp_path / "o"
    stop_after_checkpoint(monkeypatch, at=3)
    with pytest.raises(Stop):
        train_bc(config("train.lr=0.001"), data, str(out), progress=False)
    monkeypatch.undo()
    rates = record_rates(monkeypatch)
    capsys.readouterr()
    resumed = config("train.lr=0.004", "train.weight_decay=0.05")
    summary = train_bc(resumed, data, str(out), resume=str(out), progress=False)
    assert summary["steps"] == 6
    assert [lr for lr, _ in rates] == pytest.approx([0.004 * lr_lambda(k, 2, 6, 0.05) for k in (3, 4, 5)])
    assert {decay for _, decay in rates} == {0.05}
    note = capsys.readouterr().err
    assert "resuming at step 3 with changed settings: " in note
    assert "train.lr 0.001 -> 0.004" in note and "train.weight_decay 0.01 -> 0.05" in note


# -- checkpoints and resuming -----------------------------------------------------------------


def test_checkpoints_land_every_checkpoint_every_steps_and_at_the_last(
    data: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train.checkpoint_every=3`` of 7 steps writes after steps 3, 6 and 7; the checkpoint says
    its step (config.json and trainer state, the schedule's position included) and the data it
    was trained on, relative to the run folder."""
    saved = stop_after_checkpoint(monkeypatch, at=-1)
    out = tmp_path / "run"
    summary = train_bc(config("train.steps=7"), data, str(out), progress=False)
    assert saved == [3, 6, 7]
    assert summary["steps"] == 7 and summary["checkpoint"] == str(out / "checkpoint")
    recorded = json.loads((out / "checkpoint" / "config.json").read_text())
    assert recorded["trained_steps"] == 7
    assert Path(out, recorded["data"]).resolve() == Path(data).resolve()
    state = trainer_state(out)
    assert state["step"] == 7 and state["scheduler"]["last_epoch"] == 7
    assert "torch" in state["rng"]
    assert checkpoint_step(out / "checkpoint") == 7 == recorded_count(out / "checkpoint", "trained_steps")
    assert last_good_checkpoint(out / "checkpoint") == (
        f"the last good checkpoint ({out / 'checkpoint'}, step 7) is intact"
    )
    assert last_good_checkpoint(tmp_path / "none") == "the last good checkpoint: none was written"
    assert json.loads((out / "summary.json").read_text())["steps"] == 7


def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(
    data: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped right after its step-3 checkpoint and resumed, a run with augmentation and
    instruction dropout (both random) reads the same batches, draws the same randomness and
    ends with the same weights and optimizer state as the run that was never stopped."""
    run = config("train.augment_shift=2", "policy.instruction_dropout=0.5")
    train_bc(run, data, str(tmp_path / "straight"), progress=False)
    stop_after_checkpoint(monkeypatch, at=3)
    with pytest.raises(Stop):
        train_bc(run, data, str(tmp_path / "stopped"), progress=False)
    monkeypatch.undo()
    assert checkpoint_step(tmp_path / "stopped" / "checkpoint") == 3
    summary = train_bc(run, data, str(tmp_path / "stopped"), resume=str(tmp_path / "stopped"), progress=False)
    assert summary["steps"] == 6
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "stopped"))
    a, b = trainer_state(tmp_path / "straight"), trainer_state(tmp_path / "stopped")
    assert a["step"] == b["step"] == 6
    for key, value in a["optimizer"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(tensor, b["optimizer"]["state"][key][name]), (key, name)
    assert a["scheduler"] == b["scheduler"]


def test_resuming_a_finished_run_trains_and_writes_nothing(data: str, tmp_path: Path) -> None:
    """A checkpoint at ``train.steps`` already: resuming returns its policy and the stored
    summary without touching a file; asking for more steps trains the rest."""
    out = tmp_path / "run"
    first = train_bc(config("train.steps=3"), data, str(out), progress=False)
    files = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    finished = finished_run(out, "trained_steps", 3)
    assert finished is not None and (finished.folder, finished.done) == (out, 3)
    # A checkpoint folder named otherwise is its own run folder.
    shutil.copytree(out / "checkpoint", tmp_path / "kept")
    kept = finished_run(tmp_path / "kept", "trained_steps", 2)
    assert kept is not None and kept.folder == tmp_path / "kept"
    assert finished_run(out, "trained_steps", 4) is None
    policy, summary = train_bc_policy(
        config("train.steps=3"), data, str(out), resume=str(out), progress=False
    )
    assert summary == json.loads(json.dumps(first))
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == files
    assert_same_weights(policy.state_dict(), weights(out))
    more = train_bc(config("train.steps=5"), data, str(out), resume=str(out), progress=False)
    assert more["steps"] == 5 and checkpoint_step(out / "checkpoint") == 5


def test_a_resume_keeps_the_architecture_and_refuses_a_folder_without_trainer_state(
    data: str, tmp_path: Path
) -> None:
    """A resumed run may change training settings (instruction dropout included) but not the
    policy's shape: that is refused, naming the field; a folder that holds only a policy (no
    trainer state) cannot be resumed."""
    out = tmp_path / "run"
    train_bc(config("train.steps=2"), data, str(out), progress=False)
    with pytest.raises(SettingError, match=r"policy.fusion_kwargs.num_heads: 2 -> 4"):
        train_bc(config("train.steps=3", "policy.fusion_kwargs.num_heads=4"), data, str(out), resume=str(out))
    summary = train_bc(
        config("train.steps=3", "policy.instruction_dropout=0.3"),
        data,
        str(out),
        resume=str(out),
        progress=False,
    )
    assert summary["steps"] == 3
    bare = tmp_path / "bare"
    InstructionPolicy.from_pretrained(out / "checkpoint").save_pretrained(bare)
    with pytest.raises(SettingError) as refused:
        train_bc(config("train.steps=4"), data, str(tmp_path / "again"), resume=str(bare))
    assert str(refused.value) == (
        f"{bare} has no trainer.pt: it is not a training checkpoint written by `instructcraft bc`, "
        "so it cannot be resumed (start a new run instead)"
    )
    # A trainer state that is a named pipe is refused by name, never opened (it would block).
    piped = tmp_path / "piped"
    shutil.copytree(out / "checkpoint", piped)
    (piped / TRAINER_STATE).unlink()
    os.mkfifo(piped / TRAINER_STATE)
    with pytest.raises(
        CheckpointError, match=rf"{re.escape(str(piped / TRAINER_STATE))} is a named pipe, not a regular file"
    ):
        train_bc(config("train.steps=4"), data, str(tmp_path / "again"), resume=str(piped))
    assert finished_run(bare, "trained_steps", 1) is None  # no trainer state: never "finished"


def test_resume_training_restores_weights_optimizer_schedule_and_randomness(
    data: str, tmp_path: Path
) -> None:
    """``resume_training`` loads the checkpoint into a fresh policy, optimizer and schedule and
    puts back the random state the run had when it wrote the checkpoint."""
    out = tmp_path / "run"
    train_bc(config("train.steps=3"), data, str(out), progress=False)
    run = config("train.steps=6", "train.lr=0.003")
    run = run.__class__(
        **{**run.__dict__, "policy": InstructionPolicy.from_pretrained(out / "checkpoint").config}
    )
    policy = InstructionPolicy(run.policy)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=run.train.lr, weight_decay=run.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, 2, 6, 0.05))
    torch.manual_seed(123)
    step, changed = resume_training(str(out), run, policy, optimizer, scheduler, "cpu")
    assert step == 3 and changed == {"train.steps": (3, 6), "train.lr": (0.001, 0.003)}
    assert_same_weights(policy.state_dict(), weights(out))
    saved = trainer_state(out)
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    assert scheduler.last_epoch == 3
    # The changed rate is the one that trains, the one the schedule reports and the one a later
    # checkpoint records (the optimizer's initial_lr, the schedule's base rates).
    rate = 0.003 * lr_lambda(3, 2, 6, 0.05)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(rate)
    assert scheduler.get_last_lr() == pytest.approx([rate])
    assert optimizer.state_dict()["param_groups"][0]["initial_lr"] == 0.003
    assert scheduler.state_dict()["base_lrs"] == [0.003]
    assert optimizer.state_dict()["state"].keys() == saved["optimizer"]["state"].keys()
    first = next(iter(saved["optimizer"]["state"]))
    assert torch.equal(
        optimizer.state_dict()["state"][first]["exp_avg"], saved["optimizer"]["state"][first]["exp_avg"]
    )


def test_the_sampler_resumed_at_sample_k_reads_what_the_uninterrupted_one_reads() -> None:
    """The training order is an endless series of shuffled epochs; started at sample k it yields
    exactly the samples an uninterrupted sampler yields from k on, epoch boundaries included."""
    size = 5
    straight = ResumableSampler(size, seed=3)
    stream = [index for _, index in zip(range(4 * size), straight, strict=False)]
    for epoch in range(4):
        assert sorted(stream[epoch * size : (epoch + 1) * size]) == list(range(size))
    assert stream[:size] != stream[size : 2 * size]  # each epoch its own order
    for start in range(3 * size):
        resumed = ResumableSampler(size, seed=3, start=start)
        assert [index for _, index in zip(range(size), resumed, strict=False)] == stream[start : start + size]
    other = ResumableSampler(size, seed=4)
    assert [index for _, index in zip(range(4 * size), other, strict=False)] != stream


# -- what a step does ---------------------------------------------------------------------------


def test_a_nan_loss_stops_the_run_before_it_touches_the_weights(
    data: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NaN loss at step 4 (after the step-3 checkpoint) stops the run with ``TrainingDiverged``
    naming the step and the last good checkpoint; the weights are left as step 3 made them."""
    original = bc.bc_loss
    calls = []

    def loss(model, batch, **options):
        terms = original(model, batch, **options)
        calls.append(model)
        if len(calls) == 4:
            terms.policy = terms.policy * float("nan")
        return terms

    monkeypatch.setattr(bc, "bc_loss", loss)
    out = tmp_path / "run"
    trainer = bc.BCTrainer(config(), data, out, progress=False)
    with pytest.raises(TrainingDiverged) as raised:
        trainer.fit()
    message = str(raised.value)
    assert message.startswith("loss is nan at step 3: training stopped; ")
    assert f"the last good checkpoint ({out / 'checkpoint'}, step 3) is intact" in message
    assert message.endswith(" is intact. Lower train.lr or check the data.")
    assert_same_weights(trainer.policy.state_dict(), weights(out))


def test_grad_clip_zero_turns_clipping_off_and_a_small_clip_limits_the_update(
    data: str, tmp_path: Path
) -> None:
    """``train.grad_clip=0`` trains as if there were no limit; a small positive clip changes the
    updates (the gradient norm is cut to it)."""
    off = train_bc_policy(config("train.grad_clip=0"), data, str(tmp_path / "off"), progress=False)[0]
    huge = train_bc_policy(config("train.grad_clip=1e9"), data, str(tmp_path / "huge"), progress=False)[0]
    small = train_bc_policy(config("train.grad_clip=1e-4"), data, str(tmp_path / "small"), progress=False)[0]
    for (name, a), b in zip(off.state_dict().items(), huge.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert any(not torch.allclose(a, c) for a, c in zip(off.parameters(), small.parameters(), strict=True))


def test_the_value_term_trains_with_value_coef(
    data: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step minimises the policy term plus ``train.value_coef`` times the value term: with
    ``value_coef=0`` (and no weight decay) the value head never moves."""
    run = config("train.value_coef=0", "train.weight_decay=0")
    policy = train_bc_policy(run, data, str(tmp_path / "o"), progress=False)[0]
    torch.manual_seed(0)
    fresh = InstructionPolicy(policy.config)
    for (name, trained), initial in zip(
        policy.value_head.state_dict().items(), fresh.value_head.state_dict().values(), strict=True
    ):
        assert torch.equal(trained, initial), name


def test_evaluation_and_validation_run_at_their_steps_and_at_the_end(
    data: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train.eval_every=2`` of 5 steps evaluates after steps 2, 4 and 5, in eval mode, and the
    summary lists each; ``train.val_every=2`` validates after 2, 4 and 5; with ``val_every=0``
    validation follows the checkpoints (3, 5)."""
    evaluated: list[tuple[int, bool]] = []

    def evaluate(policy, step, writer):
        evaluated.append((step, policy.training))
        return {"success": step / 10}

    validated: list[int] = []
    validate = bc.validate
    monkeypatch.setattr(
        bc, "validate", lambda policy, *args: validated.append(trainer_step[0]) or validate(policy, *args)
    )
    trainer_step = [0]
    gradient_step = bc.BCTrainer._gradient_step

    def counting(self, loss):
        trainer_step[0] = self.step + 1
        return gradient_step(self, loss)

    monkeypatch.setattr(bc.BCTrainer, "_gradient_step", counting)
    run = config(
        "train.steps=5",
        "train.eval_every=2",
        "train.eval_episodes=1",
        "train.val_fraction=0.3",
        "train.val_every=2",
    )
    summary = train_bc(run, data, str(tmp_path / "a"), progress=False, evaluate_fn=evaluate)
    assert evaluated == [(2, False), (4, False), (5, False)]
    assert summary["evaluations"] == [{"step": s, "success": s / 10} for s in (2, 4, 5)]
    assert validated == [2, 4, 5] and summary["validation"]["step"] == 5
    validated.clear()
    run = config("train.steps=5", "train.val_fraction=0.3", "train.val_every=0")
    summary = train_bc(run, data, str(tmp_path / "b"), progress=False, evaluate_fn=evaluate)
    assert validated == [3, 5] and len(evaluated) == 3  # eval_episodes=0: no evaluation


# -- the dataset check before step 1 ------------------------------------------------------------


class _Checked:
    """A dataset of ``episodes`` episodes whose `data check` finds ``problems``."""

    def __init__(self, problems: list[Problem], episodes: int = 10) -> None:
        self.problems, self.episodes, self.root = problems, episodes, Path("demos")

    def check(self) -> list[Problem]:
        return self.problems

    def __len__(self) -> int:
        return self.episodes


@pytest.mark.parametrize("count", [5, 6])
def test_the_refusal_lists_five_problems_and_counts_the_rest(count: int) -> None:
    """BC refuses a dataset with bad episodes in one message: the first five problems, a count
    of any more, where to see them all and what skipping would keep."""
    problems = [Problem(n, f"demos/episodes/{n}.npz (episode {n}) is missing") for n in range(count)]
    with pytest.raises(DatasetError) as refused:
        bc.check_dataset(_Checked(problems), skip_bad=False)  # type: ignore[arg-type]
    listed = "".join(f"\n  {problem}" for problem in problems[:5])
    more = "\n  ... and 1 more" if count == 6 else ""
    assert str(refused.value) == (
        f"demos is corrupt or truncated: {count} problem(s) in 10 episodes, found before training:{listed}{more}"
        "\nRun `instructcraft data check demos` to list them all; repair or re-collect those episodes, "
        f"or set train.skip_bad_episodes=true to train on the other {10 - count} episodes."
    )


def test_a_problem_of_the_whole_dataset_cannot_be_skipped() -> None:
    """A problem tied to no episode stops BC even with ``train.skip_bad_episodes``; the message
    says why skipping cannot help."""
    problems = [Problem(None, "demos/index.jsonl line 3 is corrupt")]
    with pytest.raises(DatasetError) as refused:
        bc.check_dataset(_Checked(problems), skip_bad=True)  # type: ignore[arg-type]
    assert str(refused.value).endswith(
        "repair or re-collect those episodes, (these problems are not tied to one episode, so they "
        "cannot be skipped)."
    )


def test_a_one_step_warm_up_trains_its_step_at_the_full_rate() -> None:
    """``train.warmup_steps=1``: step 0 is the whole warm-up and trains at exactly ``train.lr``;
    the decay starts at step 1."""
    assert lr_lambda(0, 1, 100, 0.1) == 1.0
    assert lr_lambda(1, 1, 100, 0.1) == pytest.approx(1.0)
    assert lr_lambda(2, 1, 100, 0.1) < 1.0


# -- the loss: packed rows, a single real step, the DDP wrapper --------------------------------


def test_each_episode_of_a_packed_row_is_scored_as_if_it_ran_alone(data: str) -> None:
    """Packed rows (``train.pack``) hold several episodes one after another: each episode's
    action distributions, and so the loss's log-likelihood, are those of the policy run on that
    episode alone, never on frames of the episode before it in the row."""
    chunks = ChunkDataset(data, 16, pack=True, seed=0)
    batch = Batch.collate([chunks[i] for i in range(len(chunks))])
    assert batch.segments is not None and int(batch.segments.max()) >= 1  # some row holds two
    policy = eval_policy(data)
    terms = bc_loss(policy, batch, keep_instructions=True)
    expected = torch.zeros(())
    with torch.no_grad():
        for row in range(len(batch)):
            for piece in batch.segments[row].unique():
                steps = (batch.segments[row] == piece) & batch.frame_mask[row]
                if not steps.any():
                    continue
                alone = policy(
                    batch.frames[row : row + 1, steps],
                    [batch.instructions[row]],
                    times=batch.times[row : row + 1, steps],
                ).logits
                torch.testing.assert_close(
                    terms.distribution.logits[row : row + 1, steps].detach(), alone, atol=1e-5, rtol=0
                )
                actions = batch.actions[row : row + 1, steps]
                expected += policy.distribution(alone).log_prob(actions).sum()
    torch.testing.assert_close(terms.log_likelihood.detach(), expected, atol=1e-4, rtol=1e-6)


def test_a_batch_with_a_single_real_step_averages_over_that_one_step(data: str) -> None:
    """The mean is over real steps, also when there is one: the loss is that step's negative
    log-likelihood and the value term its squared error (the last row of a small dataset)."""
    policy, batch = eval_policy(data), padded_batch(data)
    mask = torch.zeros_like(batch.frame_mask)
    mask[0, 0] = True
    one = Batch(
        frames=batch.frames,
        instructions=batch.instructions,
        times=batch.times,
        frame_mask=mask,
        actions=batch.actions,
        returns=batch.returns,
        segments=batch.segments,
    )
    terms = bc_loss(policy, one)
    with torch.no_grad():
        output = policy(batch.frames, batch.instructions, times=batch.times, frame_mask=mask)
    log_prob = policy.distribution(output.logits).log_prob(batch.actions)[0, 0]
    torch.testing.assert_close(terms.policy.detach(), -log_prob)
    torch.testing.assert_close(terms.value.detach(), (output.value[0, 0] - batch.returns[0, 0]).square())


def test_the_loss_of_a_ddp_wrapped_policy_is_the_policy_s_own(data: str, tmp_path: Path) -> None:
    """Multi-GPU runs hand ``bc_loss`` the DistributedDataParallel wrapper: the forward goes
    through it and the loss is the same as the bare policy's (a one-process gloo group)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    policy, batch = eval_policy(data), padded_batch(data)
    bare = bc_loss(policy, batch)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        wrapped = bc_loss(DistributedDataParallel(policy), batch)
    finally:
        dist.destroy_process_group()
    for name in ("policy", "value", "log_likelihood"):
        torch.testing.assert_close(getattr(wrapped, name).detach(), getattr(bare, name).detach(), msg=name)
