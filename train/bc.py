"""Behavioral cloning on the native dataset, on one process or many (torchrun, DDP).

Shape legend: B chunks, L steps per chunk, K sum of action sizes.

One module for the whole loop (building the run, the step, logging, checkpoints, validation and
interruption) so a reader follows a BC step from data to checkpoint in one file; saving and
resuming live in ``train/bc_checkpoint.py``, what BC shares with RL in ``train/common.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch.utils.tensorboard import SummaryWriter

from envs.data.store import Dataset, DatasetError
from policies import ActionSpaceConfig, FactorizedCategorical, InstructionPolicy
from policies.policy import NonFiniteWeightsError
from train.batch import Batch, BCLoss, bc_loss
from train.bc_checkpoint import last_good_checkpoint, resume_training, save_checkpoint
from train.common import (
    CHECKPOINT,
    Distributed,
    StopRequest,
    TrainingDiverged,
    TrainingInterrupted,
    autocast_device,
    children_ignore_interrupts,
    refuse_existing_run,
    resolve_device,
    run_folder_lock,
    setup_distributed,
)
from train.config import RunConfig, TrainConfig
from train.data import ChunkDataset, make_loader, random_shift
from train.validation import action_names, log_validation, split_episodes, validate


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def check_dataset(dataset: Dataset, skip_bad: bool) -> list[int]:
    """Read every episode before training, so a bad one stops the run before step 1 rather than
    partway. Returns the episodes to leave out (``skip_bad``); raises otherwise."""
    problems = dataset.check()
    if not problems:
        return []
    found = [re.search(r"\(episode (\d+)\)", line) for line in problems]
    bad = sorted({int(match.group(1)) for match in found if match})
    if skip_bad and all(found):
        return bad
    listed = "\n  ".join(problems[:5]) + (
        f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
    )
    remedy = (
        f"or set train.skip_bad_episodes=true to train on the other {len(dataset) - len(bad)} episodes"
        if all(found)
        else "(these problems are not tied to one episode, so they cannot be skipped)"
    )
    raise DatasetError(
        f"{dataset.root} is corrupt or truncated: {len(problems)} problem(s) in {len(dataset)} episodes, "
        f"found before training:\n  {listed}\nRun `instructcraft data check {dataset.root}` to list them "
        f"all; repair or re-collect those episodes, {remedy}."
    )


@torch.no_grad()
def outputs_finite(policy: InstructionPolicy, batch: Batch, device: str, autocast: str | None) -> bool:
    """Whether the current weights give finite logits and values on ``batch`` (weights can be
    finite yet so large that every output overflows); ``autocast``: the device type of bf16
    autocast (``autocast_device``) or None."""
    was_training = policy.training
    policy.eval()  # no dropout, so no draw from the global RNG
    try:
        batch = batch.to(device)
        with torch.autocast(autocast or "cpu", dtype=torch.bfloat16, enabled=autocast is not None):
            output = policy(batch.frames, batch.instructions, times=batch.times, frame_mask=batch.frame_mask)
        mask = batch.frame_mask
        return bool(torch.isfinite(output.logits[mask]).all() and torch.isfinite(output.value[mask]).all())
    finally:
        policy.train(was_training)


def _accuracies(distribution: FactorizedCategorical, batch: Batch) -> list[float]:
    """Per action component: how often the most likely action is the batch's, over real steps."""
    mode, actions, mask = distribution.mode().detach(), batch.actions, batch.frame_mask
    if mode.dim() == mask.dim():
        mode, actions = mode[..., None], actions[..., None]
    hits = (mode == actions) & mask[..., None]
    return (hits.sum((0, 1)).float() / mask.sum().clamp_min(1)).tolist()


# A run from ``init`` builds the checkpoint's architecture; of the config's policy it takes only
# these fields (they change training, not the weights' shapes).
INIT_POLICY_FIELDS = ("policy.instruction_dropout",)


def _fit_to_dataset(
    run: RunConfig, dataset: Dataset, data: str, init: str | None, resume: str | None, device: str
) -> tuple[RunConfig, InstructionPolicy]:
    """The run's policy config adjusted to the dataset (it decides the action space and the frame
    size) and the policy to train: fresh, or ``init``'s weights and architecture."""
    spec = dataset.metadata["action_space"]
    if ActionSpaceConfig.from_spec(spec) != run.policy.action_space:
        # The dataset decides the action space; the config's default is only a placeholder.
        action_space = dataclasses.asdict(ActionSpaceConfig.from_spec(spec))
        run = dataclasses.replace(run, policy=run.policy.replace(action_space=action_space))
    image_shape = tuple(dataset.metadata["image_shape"][:2])
    if tuple(run.policy.vision.image_size) != image_shape:
        run = dataclasses.replace(run, policy=run.policy.replace(**{"vision.image_size": list(image_shape)}))

    torch.manual_seed(run.train.seed)
    if init is None:
        return run, InstructionPolicy(run.policy).to(device)
    if resume:
        raise ValueError("pass --init (start from weights) or --resume (continue a run), not both")
    policy = InstructionPolicy.from_pretrained(init, map_location=device)
    policy.check_action_space(spec)
    if tuple(policy.config.vision.image_size) != image_shape:
        raise ValueError(
            f"{init} was trained on {tuple(policy.config.vision.image_size)} frames but {data} holds "
            f"{image_shape}: fine-tune on data of the same frame size"
        )
    kept = {"instruction_dropout": run.policy.instruction_dropout}
    run = dataclasses.replace(run, policy=policy.config.replace(**kept))
    policy.config = run.policy
    return run, policy


@dataclass
class _Data:
    chunks: ChunkDataset  # this rank's training chunks
    loader: Any
    validation_episodes: list[int]
    held_out: ChunkDataset | None  # validation chunks, on rank 0
    names: Any  # action names for the validation report


def _load_data(
    data: str,
    dataset: Dataset,
    cfg: TrainConfig,
    distributed: Distributed,
    skipped: list[int],
    start_step: int,
    device: str,
) -> _Data:
    """This rank's shard of the training episodes (no skipped or validation ones) as a loader
    that continues at ``start_step``; the validation chunks on rank 0."""
    _, validation_episodes = split_episodes(dataset, cfg.val_fraction, cfg.seed)
    shard = dataset.shard(distributed.rank, distributed.world_size)
    shard = sorted(set(shard) - set(skipped) - set(validation_episodes))
    chunks = ChunkDataset(
        data,
        cfg.chunk_length,
        episodes=shard,
        gamma=cfg.gamma,
        pack=cfg.pack,
        seed=cfg.seed,
        cache_mib=cfg.cache_mib,
    )
    held_out, names = None, None
    if validation_episodes and distributed.main:
        held_out = ChunkDataset(
            data,
            cfg.chunk_length,
            episodes=sorted(set(validation_episodes) - set(skipped)),
            gamma=cfg.gamma,
            pack=cfg.pack,
        )
        names = action_names(dataset.metadata.get("env_id", ""))
    loader = make_loader(
        chunks,
        cfg.batch_size,
        cfg.workers,
        seed=cfg.seed * 1000 + distributed.rank,
        start_sample=start_step * cfg.batch_size,
        pin_memory=device.startswith("cuda"),
    )
    return _Data(chunks, loader, validation_episodes, held_out, names)


def _open_logs(
    run: RunConfig,
    data: str,
    out_dir: Path,
    skipped: list[int],
    changed: dict[str, tuple[Any, Any]],
    start_step: int,
    resume: bool,
) -> SummaryWriter:
    """Rank 0's notes on stderr, ``config.resolved.yaml`` and the TensorBoard writer."""
    if skipped:
        print(
            f"note: skipping {len(skipped)} unreadable episode(s) of {data} "
            f"(train.skip_bad_episodes): {skipped[:20]}{' ...' if len(skipped) > 20 else ''}",
            file=sys.stderr,
        )
    if changed:
        listed = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
        print(f"note: resuming at step {start_step} with changed settings: {listed}", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.resolved.yaml").write_text(yaml.safe_dump(run.to_dict(), sort_keys=False))
    # Purge only what a crashed run logged after its checkpoint: the checkpoint's own step
    # stays, and the resumed run logs from the step after it.
    return SummaryWriter(str(out_dir / "tb"), purge_step=start_step + 1 if resume else None)


@dataclass
class _StepResult:
    samples: int  # real (unpadded) steps of the batch, all ranks together
    terms: BCLoss
    batch: Batch  # on the device
    grad_norm: torch.Tensor


@dataclass
class _Trainer:
    """A BC run in progress: the model and its optimizer, and what the steps log to."""

    run: RunConfig
    data: str
    policy: InstructionPolicy
    model: torch.nn.Module  # ``policy``, or its DDP wrapper
    trainable: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: str
    distributed: Distributed
    checkpoint_dir: Path
    writer: SummaryWriter | None
    bar: Any  # a tqdm progress bar or None
    step: int
    last_good: str = ""  # ``last_good_checkpoint``'s phrase
    loss_value: float = float("nan")
    samples_since_log: int = 0
    last_log: float = dataclasses.field(default_factory=time.perf_counter)

    @property
    def autocast(self) -> str | None:
        return autocast_device(self.device, self.run.train.amp)

    def train_step(self, batch: Batch) -> _StepResult:
        """One optimizer step on ``batch`` (augmented, then moved to the device)."""
        cfg = self.run.train
        generator = torch.Generator().manual_seed(
            cfg.seed * 1_000_003 + self.step * 7919 + self.distributed.rank
        )
        batch = dataclasses.replace(batch, frames=random_shift(batch.frames, cfg.augment_shift, generator))
        batch = batch.to(self.device, non_blocking=True)
        terms = bc_loss(self.model, batch, autocast=self.autocast)
        loss = terms.policy + cfg.value_coef * terms.value
        self.loss_value = float(loss.detach())
        if not math.isfinite(self.loss_value):
            raise TrainingDiverged(
                f"loss is {self.loss_value} at step {self.step}: training stopped; {self.last_good}. "
                "Lower train.lr or check the data."
            )
        grad_norm = self._gradient_step(loss)
        self.step += 1
        samples = int(batch.frame_mask.sum()) * self.distributed.world_size
        self.samples_since_log += samples
        return _StepResult(samples, terms, batch, grad_norm)

    def _gradient_step(self, loss: torch.Tensor) -> torch.Tensor:
        """Backward, clip, step; returns the gradient norm before clipping."""
        cfg, trainable = self.run.train, self.trainable
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            if cfg.grad_clip > 0
            else torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in trainable if p.grad is not None])
            )
        )
        self.optimizer.step()
        self.scheduler.step()
        return grad_norm

    def log(self, result: _StepResult) -> None:
        """TensorBoard scalars every ``log_every`` steps and at the last; the progress bar."""
        step, writer, cfg = self.step, self.writer, self.run.train
        if writer is not None and (step % cfg.log_every == 0 or step == cfg.steps):
            elapsed = time.perf_counter() - self.last_log
            writer.add_scalar("train/loss", self.loss_value, step)
            writer.add_scalar("train/policy_loss", float(result.terms.policy.detach()), step)
            writer.add_scalar("train/value_loss", float(result.terms.value.detach()), step)
            accuracies = _accuracies(result.terms.distribution, result.batch)
            for head, accuracy in enumerate(accuracies):
                writer.add_scalar(f"train/accuracy_head{head}", accuracy, step)
            writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], step)
            writer.add_scalar("train/grad_norm", float(result.grad_norm), step)
            writer.add_scalar("train/samples_per_s", self.samples_since_log / max(elapsed, 1e-9), step)
            if self.bar:
                self.bar.set_postfix(
                    loss=f"{self.loss_value:.3f}",
                    samples_s=f"{self.samples_since_log / max(elapsed, 1e-9):.0f}",
                )
            self.last_log, self.samples_since_log = time.perf_counter(), 0
        if self.bar:
            self.bar.update(1)

    def save(self, batch: Batch) -> None:
        """Write the checkpoint (rank 0), after checking the weights give finite outputs on ``batch``."""
        step = self.step
        if not outputs_finite(self.policy, batch, self.device, self.autocast):
            raise TrainingDiverged(
                f"the weights after step {step} give NaN or inf outputs and were not saved: "
                f"training stopped; {self.last_good}. "
                "Lower train.lr or check the data."
            )
        try:
            save_checkpoint(
                self.checkpoint_dir, self.policy, self.optimizer, self.scheduler, step, self.run, self.data
            )
        except NonFiniteWeightsError as error:
            raise TrainingDiverged(f"step {step}: {error}; training stopped; {self.last_good}") from None
        self.last_good = last_good_checkpoint(self.checkpoint_dir)


def _between_steps(
    trainer: _Trainer,
    batch: Batch,
    stop: StopRequest,
    loaded: _Data,
    summary: dict[str, Any],
    evaluate_fn: Any,
    out_dir: Path,
) -> None:
    """After a step: the checkpoint when due (or when stopping), validation, the end of an
    interrupted run (``TrainingInterrupted``) and the periodic evaluation."""
    cfg, distributed, step = trainer.run.train, trainer.distributed, trainer.step
    stopping = stop.agreed(distributed, trainer.device) and step < cfg.steps
    due = step % cfg.checkpoint_every == 0 or step == cfg.steps or stopping
    if distributed.main and due:
        trainer.save(batch)
    validation_due = (step % cfg.val_every == 0) if cfg.val_every else due
    if loaded.held_out is not None and (validation_due or step == cfg.steps):
        result = validate(trainer.policy, loaded.held_out, cfg.batch_size, trainer.device, loaded.names)
        summary["validation"] = {"step": step, **result}
        if trainer.writer is not None:
            log_validation(trainer.writer, result, step)
    if stopping:
        if distributed.world_size > 1:
            dist.barrier()  # every rank waits until rank 0 has written the checkpoint
        assert stop.signal_number is not None
        raise TrainingInterrupted(
            f"interrupted at step {step} of {cfg.steps}: checkpoint written to {trainer.checkpoint_dir}; "
            f"resume with `instructcraft bc --config {out_dir / 'config.resolved.yaml'} "
            f"--data {trainer.data} --out {out_dir} --resume {out_dir}`",
            stop.signal_number,
        )
    periodic = cfg.eval_every and step % cfg.eval_every == 0
    final = step == cfg.steps and cfg.eval_episodes > 0
    if distributed.main and evaluate_fn is not None and cfg.eval_episodes > 0 and (periodic or final):
        trainer.policy.eval()
        result = evaluate_fn(trainer.policy, step, trainer.writer)
        trainer.policy.train()
        summary["evaluations"].append({"step": step, **result})


def _start(
    run: RunConfig, data: str, out_dir: Path, resume: str | None, progress: bool, init: str | None
) -> tuple[_Trainer, _Data, list[int]]:
    """Everything a run needs before its first step: the process group and device, the checked
    dataset (and the episodes skipped), the policy, optimizer and schedule (fresh, from ``init``
    or resumed), this rank's data, and on rank 0 the logs and progress bar."""
    cfg = run.train
    device = resolve_device(cfg.device)
    distributed = setup_distributed(device)
    device = resolve_device(cfg.device, distributed.local_rank)
    dataset = Dataset(data)
    skipped = check_dataset(dataset, cfg.skip_bad_episodes)
    run, policy = _fit_to_dataset(run, dataset, data, init, resume, device)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    )
    start_step, changed = (
        resume_training(resume, run, policy, optimizer, scheduler, device) if resume else (0, {})
    )
    model: torch.nn.Module = policy
    if distributed.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            policy,
            device_ids=[distributed.local_rank] if device.startswith("cuda") else None,
            find_unused_parameters=True,
        )
    loaded = _load_data(data, dataset, cfg, distributed, skipped, start_step, device)
    writer = None
    if distributed.main:
        writer = _open_logs(run, data, out_dir, skipped, changed, start_step, bool(resume))
    bar = None
    if progress and distributed.main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start_step, unit="step", desc="bc", dynamic_ncols=True)
    trainer = _Trainer(
        run, data, policy, model, trainable, optimizer, scheduler, device, distributed,
        out_dir / CHECKPOINT, writer, bar, start_step,
    )  # fmt: skip
    return trainer, loaded, skipped


def train_bc_policy(
    run: RunConfig,
    data: str,
    out: str,
    resume: str | None = None,
    progress: bool = True,
    evaluate_fn: Any = None,
    init: str | None = None,
    refuse_existing: bool = False,
) -> tuple[InstructionPolicy, dict[str, Any]]:
    """Train; returns the policy and a summary. ``evaluate_fn(policy, step, writer) -> dict`` runs
    periodic evaluation on rank 0 (the CLI passes it down from train/periodic_eval.py). ``init``
    starts from a checkpoint's weights and architecture (fine-tuning, DAgger rounds) with a
    fresh optimizer and schedule.

    ``refuse_existing`` (what ``instructcraft bc`` does) refuses an ``out`` that already holds
    another run's checkpoint (``RunFolderError``) rather than replace it; callers that own their
    folders (a DAgger round redoing its fine-tune) leave it off. Either way rank 0 locks ``out``
    for the run, so a second run into it fails at once.

    SIGINT or SIGTERM finishes the step, writes the checkpoint and raises ``TrainingInterrupted``
    (its message says how to resume)."""
    out_dir = Path(out)
    if refuse_existing:  # every rank, before any writes: all refuse alike
        refuse_existing_run(out_dir, "bc", f"--resume {out_dir}", resume)
    distributed = setup_distributed(resolve_device(run.train.device))
    with run_folder_lock(out_dir, held=distributed.main):
        return _train(run, data, out_dir, resume, progress, evaluate_fn, init)


def _train(
    run: RunConfig,
    data: str,
    out_dir: Path,
    resume: str | None,
    progress: bool,
    evaluate_fn: Any,
    init: str | None,
) -> tuple[InstructionPolicy, dict[str, Any]]:
    """``train_bc_policy`` once ``out_dir`` is checked and locked."""
    trainer, loaded, skipped = _start(run, data, out_dir, resume, progress, init)
    trainer.policy.train()
    summary: dict[str, Any] = {
        "evaluations": [],
        "skipped_episodes": skipped,
        "validation_episodes": len(loaded.validation_episodes),
        "real_fraction": loaded.chunks.real_fraction,
    }
    real_steps, train_seconds = 0, 0.0
    trainer.last_good = last_good_checkpoint(trainer.checkpoint_dir)
    with children_ignore_interrupts():  # DataLoader workers start here
        batches = iter(loaded.loader)
    stop = StopRequest()
    try:
        with stop.catching():
            while trainer.step < run.train.steps:
                began = time.perf_counter()
                batch = next(batches)
                result = trainer.train_step(batch)
                real_steps += result.samples
                train_seconds += time.perf_counter() - began
                trainer.log(result)
                _between_steps(trainer, batch, stop, loaded, summary, evaluate_fn, out_dir)
    finally:
        if trainer.bar:
            trainer.bar.close()
        if trainer.writer is not None:
            trainer.writer.close()
    if trainer.distributed.world_size > 1:
        dist.barrier()
    summary.update(
        {
            "steps": trainer.step,
            "final_loss": trainer.loss_value,
            "checkpoint": str(trainer.checkpoint_dir),
            "out": str(out_dir),
            # Real (unpadded) steps per second of training, loading included.
            "real_steps_per_s": real_steps / max(train_seconds, 1e-9),
        }
    )
    if trainer.distributed.main:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return trainer.policy, summary


def train_bc(run: RunConfig, data: str, out: str, **options: Any) -> dict[str, Any]:
    """``train_bc_policy`` (the same arguments) returning only its JSON-able summary."""
    return train_bc_policy(run, data, out, **options)[1]
