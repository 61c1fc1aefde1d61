"""Behavioral cloning on the native dataset, on one process or many (torchrun, DDP).

Shape legend: B chunks, L steps per chunk, K sum of action sizes.

``BCTrainer``'s constructor builds a run (process group, checked dataset, policy, optimizer,
schedule, this rank's data, logs); ``BCTrainer.fit`` is the loop, on one screen: batch -> loss
-> step -> log -> checkpoint / validate / evaluate. The loss and the batch are train/batch.py's,
the checkpoint train/checkpoint.py's, what BC shares with RL train/common.py's.

Length (about 480 lines): set-up, the loop and the pre-flight checks of one BC run, read top
to bottom like a single training script.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch.utils.tensorboard import SummaryWriter

from envs.data.store import Dataset, DatasetError
from policies import ActionSpaceConfig, FactorizedCategorical, InstructionPolicy, NonFiniteWeightsError
from train.batch import Batch, BCLoss, bc_loss
from train.checkpoint import (
    CHECKPOINT,
    FinishedRun,
    checkpoint_dir,
    finished_run,
    last_good_checkpoint,
    resume_training,
    save_bc_checkpoint,
)
from train.common import (
    StopRequest,
    autocast_device,
    children_ignore_interrupts,
    refuse_existing_run,
    resolve_device,
    run_folder_lock,
    setup_distributed,
)
from train.config import RunConfig
from train.data import ChunkDataset, make_loader, random_shift
from train.errors import SettingError, TrainingDiverged, TrainingInterrupted
from train.report import write_json, write_text
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
    per_episode = all(problem.episode is not None for problem in problems)
    bad = sorted({problem.episode for problem in problems if problem.episode is not None})
    if skip_bad and per_episode:
        return bad
    listed = "\n  ".join(str(problem) for problem in problems[:5]) + (
        f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
    )
    remedy = (
        f"or set train.skip_bad_episodes=true to train on the other {len(dataset) - len(bad)} episodes"
        if per_episode
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


def fit_to_dataset(
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
        raise SettingError("pass --init (start from weights) or --resume (continue a run), not both")
    policy = InstructionPolicy.from_pretrained(init, map_location=device)
    policy.check_action_space(spec)
    if tuple(policy.config.vision.image_size) != image_shape:
        raise SettingError(
            f"{init} was trained on {tuple(policy.config.vision.image_size)} frames but {data} holds "
            f"{image_shape}: fine-tune on data of the same frame size"
        )
    kept = {"instruction_dropout": run.policy.instruction_dropout}
    run = dataclasses.replace(run, policy=policy.config.replace(**kept))
    policy.config = run.policy
    return run, policy


class BCTrainer:
    """A BC run: the constructor sets it up (fresh, from ``init``'s weights, or resumed from
    ``resume``); ``fit()`` trains it to ``run.train.steps`` and returns the summary.
    ``evaluate_fn(policy, step, writer) -> dict`` runs the periodic evaluation on rank 0."""

    def __init__(
        self,
        run: RunConfig,
        data: str,
        out_dir: Path,
        *,
        resume: str | None = None,
        init: str | None = None,
        progress: bool = True,
        evaluate_fn: Any = None,
    ) -> None:
        cfg = run.train
        self.distributed = setup_distributed(resolve_device(cfg.device))
        self.device = resolve_device(cfg.device, self.distributed.local_rank)
        self.data, self.out_dir, self.evaluate_fn = data, out_dir, evaluate_fn
        self.checkpoint_dir = out_dir / CHECKPOINT
        dataset = Dataset(data)
        skipped = check_dataset(dataset, cfg.skip_bad_episodes)
        self.run, self.policy = fit_to_dataset(run, dataset, data, init, resume, self.device)
        self.autocast = autocast_device(self.device, cfg.amp, cfg.amp_cpu)
        self.trainable = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
        )
        self.step, changed = (
            resume_training(resume, self.run, self.policy, self.optimizer, self.scheduler, self.device)
            if resume
            else (0, {})
        )
        self.model: torch.nn.Module = self.policy
        if self.distributed.world_size > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.policy,
                device_ids=[self.distributed.local_rank] if self.device.startswith("cuda") else None,
                find_unused_parameters=True,
            )
        self._load_data(dataset, skipped)
        self.writer: SummaryWriter | None = None
        self.bar: Any = None  # a tqdm progress bar on rank 0
        if self.distributed.main:
            self.writer = self._open_logs(skipped, changed, bool(resume))
            if progress:
                from tqdm import tqdm

                self.bar = tqdm(
                    total=cfg.steps, initial=self.step, unit="step", desc="bc", dynamic_ncols=True
                )
        self.summary: dict[str, Any] = {
            "evaluations": [],
            "skipped_episodes": skipped,
            "validation_episodes": len(self.validation_episodes),
            "real_fraction": self.chunks.real_fraction,
        }
        self.last_good = ""  # ``last_good_checkpoint``'s phrase, for the errors that stop a run
        self.loss_value = float("nan")
        self.samples_since_log, self.last_log = 0, time.perf_counter()

    def fit(self) -> dict[str, Any]:
        """Train to ``run.train.steps``; SIGINT or SIGTERM finishes the step, writes the checkpoint
        and raises ``TrainingInterrupted``."""
        cfg, main = self.run.train, self.distributed.main
        self.policy.train()
        self.last_good = last_good_checkpoint(self.checkpoint_dir)
        real_steps, train_seconds = 0, 0.0
        with children_ignore_interrupts():  # DataLoader workers start here
            batches = iter(self.loader)
        stop = StopRequest()
        try:
            with stop.catching():
                while self.step < cfg.steps:
                    began = time.perf_counter()
                    batch = next(batches)
                    on_device = self._augment(batch).to(self.device, non_blocking=True)
                    terms = bc_loss(self.model, on_device, autocast=self.autocast)
                    grad_norm = self._gradient_step(terms.policy + cfg.value_coef * terms.value)
                    self.step += 1
                    samples = int(on_device.frame_mask.sum()) * self.distributed.world_size
                    real_steps += samples
                    self.samples_since_log += samples
                    train_seconds += time.perf_counter() - began
                    self._log(terms, on_device, grad_norm)
                    # Every rank stops at the same step, after rank 0 wrote a checkpoint of it.
                    stopping = stop.agreed(self.distributed, self.device) and self.step < cfg.steps
                    due = self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps or stopping
                    if main and due:
                        self._save(batch)
                    validation_due = (self.step % cfg.val_every == 0) if cfg.val_every else due
                    if self.held_out is not None and (validation_due or self.step == cfg.steps):
                        self._validate()
                    if stopping:
                        self._stop(stop)
                    periodic = cfg.eval_every and self.step % cfg.eval_every == 0
                    if main and cfg.eval_episodes > 0 and (periodic or self.step == cfg.steps):
                        self._evaluate()
        finally:
            if self.bar:
                self.bar.close()
            if self.writer is not None:
                self.writer.close()
        return self._finish(real_steps / max(train_seconds, 1e-9))

    # -- the parts of a step ------------------------------------------------------------
    def _augment(self, batch: Batch) -> Batch:
        """One random shift a row, drawn from the step (a resumed run draws the same)."""
        cfg = self.run.train
        seed = cfg.seed * 1_000_003 + self.step * 7919 + self.distributed.rank
        frames = random_shift(batch.frames, cfg.augment_shift, torch.Generator().manual_seed(seed))
        return dataclasses.replace(batch, frames=frames)

    def _gradient_step(self, loss: torch.Tensor) -> torch.Tensor:
        """Backward, clip, step; returns the gradient norm before clipping. A NaN or inf loss
        stops the run (``TrainingDiverged``) before it touches the weights."""
        cfg, trainable = self.run.train, self.trainable
        self.loss_value = float(loss.detach())
        if not math.isfinite(self.loss_value):
            raise TrainingDiverged(
                f"loss is {self.loss_value} at step {self.step}: training stopped; {self.last_good}. "
                "Lower train.lr or check the data."
            )
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

    def _log(self, terms: BCLoss, batch: Batch, grad_norm: torch.Tensor) -> None:
        """TensorBoard scalars every ``log_every`` steps and at the last; the progress bar."""
        step, writer, cfg = self.step, self.writer, self.run.train
        if writer is not None and (step % cfg.log_every == 0 or step == cfg.steps):
            elapsed = time.perf_counter() - self.last_log
            writer.add_scalar("train/loss", self.loss_value, step)
            writer.add_scalar("train/policy_loss", float(terms.policy.detach()), step)
            writer.add_scalar("train/value_loss", float(terms.value.detach()), step)
            for head, accuracy in enumerate(_accuracies(terms.distribution, batch)):
                writer.add_scalar(f"train/accuracy_head{head}", accuracy, step)
            writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], step)
            writer.add_scalar("train/grad_norm", float(grad_norm), step)
            writer.add_scalar("train/samples_per_s", self.samples_since_log / max(elapsed, 1e-9), step)
            if self.bar:
                self.bar.set_postfix(
                    loss=f"{self.loss_value:.3f}",
                    samples_s=f"{self.samples_since_log / max(elapsed, 1e-9):.0f}",
                )
            self.last_log, self.samples_since_log = time.perf_counter(), 0
        if self.bar:
            self.bar.update(1)

    def _save(self, batch: Batch) -> None:
        """Write the checkpoint (rank 0), after checking the weights give finite outputs on ``batch``."""
        step = self.step
        if not outputs_finite(self.policy, batch, self.device, self.autocast):
            raise TrainingDiverged(
                f"the weights after step {step} give NaN or inf outputs and were not saved: "
                f"training stopped; {self.last_good}. "
                "Lower train.lr or check the data."
            )
        try:
            save_bc_checkpoint(
                self.checkpoint_dir, self.policy, self.optimizer, self.scheduler, step, self.run, self.data
            )
        except NonFiniteWeightsError as error:
            raise TrainingDiverged(f"step {step}: {error}; training stopped; {self.last_good}") from None
        self.last_good = last_good_checkpoint(self.checkpoint_dir)

    def _validate(self) -> None:
        assert self.held_out is not None
        result = validate(
            self.policy, self.held_out, self.run.train.batch_size, self.device, self.action_names
        )
        self.summary["validation"] = {"step": self.step, **result}
        if self.writer is not None:
            log_validation(self.writer, result, self.step)

    def _stop(self, stop: StopRequest) -> None:
        """End an interrupted run, saying how to resume it (the checkpoint is written)."""
        if self.distributed.world_size > 1:
            dist.barrier()  # every rank waits until rank 0 has written the checkpoint
        assert stop.signal_number is not None
        out_dir = self.out_dir
        raise TrainingInterrupted(
            f"interrupted at step {self.step} of {self.run.train.steps}: checkpoint written to "
            f"{self.checkpoint_dir}; resume with `instructcraft bc --data {self.data} --out {out_dir} "
            f"--resume {out_dir}` (it continues with the settings {out_dir / 'config.resolved.yaml'} holds)",
            stop.signal_number,
        )

    def _evaluate(self) -> None:
        if self.evaluate_fn is None:
            return
        self.policy.eval()
        result = self.evaluate_fn(self.policy, self.step, self.writer)
        self.policy.train()
        self.summary["evaluations"].append({"step": self.step, **result})

    def _finish(self, real_steps_per_s: float) -> dict[str, Any]:
        """The summary (``summary.json`` on rank 0), once every rank is done."""
        if self.distributed.world_size > 1:
            dist.barrier()
        self.summary.update(
            {
                "steps": self.step,
                "final_loss": self.loss_value,
                "checkpoint": str(self.checkpoint_dir),
                "out": str(self.out_dir),
                # Real (unpadded) steps per second of training, loading included.
                "real_steps_per_s": real_steps_per_s,
            }
        )
        if self.distributed.main:
            write_json(self.out_dir / "summary.json", self.summary)
        return self.summary

    # -- set-up -------------------------------------------------------------------------
    def _load_data(self, dataset: Dataset, skipped: list[int]) -> None:
        """This rank's shard of the training episodes (no skipped or validation ones) as a
        loader that continues at the current step; the validation chunks on rank 0."""
        cfg, distributed = self.run.train, self.distributed
        _, self.validation_episodes = split_episodes(dataset, cfg.val_fraction, cfg.seed)
        shard = dataset.shard(distributed.rank, distributed.world_size)
        shard = sorted(set(shard) - set(skipped) - set(self.validation_episodes))
        self.chunks = ChunkDataset(
            self.data,
            cfg.chunk_length,
            episodes=shard,
            gamma=cfg.gamma,
            pack=cfg.pack,
            seed=cfg.seed,
            cache_mib=cfg.cache_mib,
        )
        self.held_out: ChunkDataset | None = None
        self.action_names: list[str] | None = None
        if self.validation_episodes and distributed.main:
            self.held_out = ChunkDataset(
                self.data,
                cfg.chunk_length,
                episodes=sorted(set(self.validation_episodes) - set(skipped)),
                gamma=cfg.gamma,
                pack=cfg.pack,
            )
            self.action_names = action_names(dataset.metadata.get("env_id", ""))
        self.loader = make_loader(
            self.chunks,
            cfg.batch_size,
            cfg.workers,
            seed=cfg.seed * 1000 + distributed.rank,
            start_sample=self.step * cfg.batch_size,
            pin_memory=self.device.startswith("cuda"),
        )

    def _open_logs(
        self, skipped: list[int], changed: dict[str, tuple[Any, Any]], resume: bool
    ) -> SummaryWriter:
        """Rank 0's notes on stderr, ``config.resolved.yaml`` and the TensorBoard writer."""
        if skipped:
            print(
                f"note: skipping {len(skipped)} unreadable episode(s) of {self.data} "
                f"(train.skip_bad_episodes): {skipped[:20]}{' ...' if len(skipped) > 20 else ''}",
                file=sys.stderr,
            )
        if changed:
            listed = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
            print(f"note: resuming at step {self.step} with changed settings: {listed}", file=sys.stderr)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.out_dir / "config.resolved.yaml", yaml.safe_dump(self.run.to_dict(), sort_keys=False))
        # Purge only what a crashed run logged after its checkpoint: the checkpoint's own step
        # stays, and the resumed run logs from the step after it.
        return SummaryWriter(str(self.out_dir / "tb"), purge_step=self.step + 1 if resume else None)


def finished_bc_run(resume: str, run: RunConfig) -> FinishedRun | None:
    """The run ``resume`` names when its checkpoint is at ``run.train.steps`` or past it."""
    return finished_run(resume, "trained_steps", run.train.steps)


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

    ``resume`` of a run whose checkpoint already reached ``run.train.steps`` trains and writes
    nothing: it returns that checkpoint's policy and the summary the run wrote.

    SIGINT or SIGTERM finishes the step, writes the checkpoint and raises ``TrainingInterrupted``
    (its message says how to resume)."""
    out_dir = Path(out)
    if refuse_existing:  # every rank, before any writes: all refuse alike
        refuse_existing_run(out_dir, "bc", f"--resume {out_dir}", resume)
    finished = finished_bc_run(resume, run) if resume and not init else None
    if finished is not None:  # nothing to train: its files stay as the run left them
        policy = InstructionPolicy.from_pretrained(checkpoint_dir(resume), map_location="cpu")
        stored = finished.stored_summary() or {"steps": finished.done, "out": str(finished.folder)}
        return policy, stored
    distributed = setup_distributed(resolve_device(run.train.device))
    with run_folder_lock(out_dir, held=distributed.main):
        trainer = BCTrainer(
            run, data, out_dir, resume=resume, init=init, progress=progress, evaluate_fn=evaluate_fn
        )
        return trainer.policy, trainer.fit()


def train_bc(run: RunConfig, data: str, out: str, **options: Any) -> dict[str, Any]:
    """``train_bc_policy`` (the same arguments) returning only its JSON-able summary."""
    return train_bc_policy(run, data, out, **options)[1]
