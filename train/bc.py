"""Behavioral cloning on the native dataset, on one process or many (torchrun, DDP).

Shape legend: B chunks, L steps per chunk, K sum of action sizes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
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
from policies import ActionSpaceConfig, InstructionPolicy
from policies.policy import CONFIG_NAME, NonFiniteWeightsError
from train.common import (
    CHECKPOINT,
    RUN_CONFIG,
    TRAINER_STATE,
    StopRequest,
    TrainingDiverged,
    TrainingInterrupted,
    children_ignore_interrupts,
    resolve_device,
    write_checkpoint,
)
from train.config import RunConfig
from train.data import ChunkDataset, make_loader, random_shift
from train.validation import action_names, log_validation, split_episodes, validate


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Distributed:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    directory: Path, policy: InstructionPolicy, optimizer, scheduler, step: int, run: RunConfig, data: str
) -> None:
    """config.json + model.safetensors (what the agent loads) + trainer state, written atomically
    (``write_checkpoint``: NaN or inf weights and failed writes leave the previous one as it was)."""
    write_checkpoint(
        directory,
        policy,
        extra={"trained_steps": step, "data": data},
        trainer_state={
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
        },
        run_record=run.to_dict(),
    )


def last_good_checkpoint(directory: Path) -> str:
    """A phrase naming the checkpoint a stopped run leaves behind (its step), or saying none."""
    try:
        step = json.loads((directory / CONFIG_NAME).read_text())["trained_steps"]
    except (OSError, ValueError, KeyError):
        return "the last good checkpoint: none was written"
    return f"the last good checkpoint ({directory}, step {step}) is intact"


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


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


# A resumed run builds its policy from the config it is given: these fields change training
# only, so they may differ from the checkpoint's; any other policy field is the architecture.
RESUMABLE_POLICY_FIELDS = ("policy.instruction_dropout", "policy.fusion_kwargs.dropout")


def settings_changed_on_resume(resume_dir: Path, run: RunConfig) -> dict[str, tuple[Any, Any]]:
    """``{field: (checkpoint's value, value now)}``; raises for a change of architecture."""
    try:
        before = json.loads((resume_dir / RUN_CONFIG).read_text())
    except (OSError, ValueError):
        before = {"policy": json.loads((resume_dir / CONFIG_NAME).read_text())["policy"]}
    old, new = _flatten({key: before.get(key, {}) for key in ("policy", "train")}), _flatten(run.to_dict())
    changed = {key: (old[key], new[key]) for key in old if key in new and old[key] != new[key]}
    architecture = [
        key for key in changed if key.startswith("policy.") and key not in RESUMABLE_POLICY_FIELDS
    ]
    if architecture:
        listed = ", ".join(f"{key}: {changed[key][0]!r} -> {changed[key][1]!r}" for key in architecture)
        raise ValueError(
            f"--resume {resume_dir}: the checkpoint's policy differs from the config ({listed}); "
            "a resumed run keeps the architecture: drop those overrides (the checkpoint's run.json "
            "holds its config) or start a new run without --resume"
        )
    return changed


def apply_resumed_settings(optimizer, scheduler, cfg) -> None:
    """The restored optimizer and schedule keep the checkpoint's lr and weight decay; set the
    config's, so a changed ``train.lr`` is the one that trains (and the one recorded)."""
    scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
    factor = lr_lambda(scheduler.last_epoch, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    for group in optimizer.param_groups:
        group["initial_lr"] = cfg.lr
        group["weight_decay"] = cfg.weight_decay
        group["lr"] = cfg.lr * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


@torch.no_grad()
def outputs_finite(policy: InstructionPolicy, batch: dict[str, Any], device: str, autocast: bool) -> bool:
    """Whether the current weights give finite logits and values on ``batch`` (weights can be
    finite yet so large that every output overflows)."""
    was_training = policy.training
    policy.eval()  # no dropout, so no draw from the global RNG
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            output = policy(
                batch["frames"].to(device),
                list(batch["instruction"]),
                times=batch["times"].to(device),
                frame_mask=batch["mask"].to(device),
            )
        mask = batch["mask"].to(device)
        return bool(torch.isfinite(output.logits[mask]).all() and torch.isfinite(output.value[mask]).all())
    finally:
        policy.train(was_training)


def _accuracies(
    policy: InstructionPolicy, logits: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor
) -> list[float]:
    distribution = policy.distribution(logits)
    mode = distribution.mode()
    if mode.dim() == mask.dim():
        mode, actions = mode[..., None], actions[..., None]
    hits = (mode == actions) & mask[..., None]
    return (hits.sum((0, 1)).float() / mask.sum().clamp_min(1)).tolist()


def train_bc_policy(
    run: RunConfig,
    data: str,
    out: str,
    resume: str | None = None,
    progress: bool = True,
    evaluate_fn: Any = None,
    init: str | None = None,
) -> tuple[InstructionPolicy, dict[str, Any]]:
    """Train; returns the policy and a summary. ``evaluate_fn(policy, step, writer) -> dict`` runs
    periodic evaluation on rank 0 (the CLI passes it down from train/periodic_eval.py). ``init``
    starts from a checkpoint's weights and architecture (fine-tuning, DAgger rounds) with a
    fresh optimizer and schedule.

    SIGINT or SIGTERM finishes the step, writes the checkpoint and raises ``TrainingInterrupted``
    (its message says how to resume)."""
    cfg = run.train
    device = resolve_device(cfg.device)
    distributed = setup_distributed(device)
    device = resolve_device(cfg.device, distributed.local_rank)
    out_dir = Path(out)
    checkpoint_dir = out_dir / CHECKPOINT

    dataset_info = Dataset(data)
    skipped = check_dataset(dataset_info, cfg.skip_bad_episodes)
    spec = dataset_info.metadata["action_space"]
    if ActionSpaceConfig.from_spec(spec) != run.policy.action_space:
        # The dataset decides the action space; the config's default is only a placeholder.
        action_space = dataclasses.asdict(ActionSpaceConfig.from_spec(spec))
        run = dataclasses.replace(run, policy=run.policy.replace(action_space=action_space))
    image_shape = tuple(dataset_info.metadata["image_shape"][:2])
    if tuple(run.policy.vision.image_size) != image_shape:
        run = dataclasses.replace(run, policy=run.policy.replace(**{"vision.image_size": list(image_shape)}))

    torch.manual_seed(cfg.seed)
    if init is not None:
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
    else:
        policy = InstructionPolicy(run.policy).to(device)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    )
    start_step = 0
    changed: dict[str, tuple[Any, Any]] = {}
    if resume:
        resume_dir = Path(resume)
        resume_dir = resume_dir / CHECKPOINT if (resume_dir / CHECKPOINT).is_dir() else resume_dir
        if not (resume_dir / TRAINER_STATE).exists():
            raise ValueError(
                f"{resume_dir} has no {TRAINER_STATE}: it is not a training checkpoint written by "
                "`instructcraft bc`, so it cannot be resumed (start a new run instead)"
            )
        changed = settings_changed_on_resume(resume_dir, run)
        loaded = InstructionPolicy.from_pretrained(resume_dir, map_location=device)
        policy.load_state_dict(loaded.state_dict())
        state = torch.load(resume_dir / TRAINER_STATE, map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        apply_resumed_settings(optimizer, scheduler, cfg)
        _set_rng_state(state["rng"])
        start_step = int(state["step"])
    model: torch.nn.Module = policy
    if distributed.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            policy,
            device_ids=[distributed.local_rank] if device.startswith("cuda") else None,
            find_unused_parameters=True,
        )

    _, validation_episodes = split_episodes(dataset_info, cfg.val_fraction, cfg.seed)
    shard = dataset_info.shard(distributed.rank, distributed.world_size)
    shard = sorted(set(shard) - set(skipped) - set(validation_episodes))
    chunks = ChunkDataset(
        data, cfg.chunk_length, episodes=shard, gamma=cfg.gamma, pack=cfg.pack, seed=cfg.seed
    )
    held_out, names = None, None
    if validation_episodes and distributed.main:
        held_out = ChunkDataset(
            data, cfg.chunk_length, episodes=sorted(set(validation_episodes) - set(skipped)), pack=cfg.pack
        )
        names = action_names(dataset_info.metadata.get("env_id", ""))
    loader = make_loader(
        chunks,
        cfg.batch_size,
        cfg.workers,
        seed=cfg.seed * 1000 + distributed.rank,
        start_sample=start_step * cfg.batch_size,
        pin_memory=device.startswith("cuda"),
    )
    writer = None
    if distributed.main:
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
        writer = SummaryWriter(str(out_dir / "tb"), purge_step=start_step + 1 if resume else None)
    bar = None
    if progress and distributed.main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start_step, unit="step", desc="bc", dynamic_ncols=True)

    autocast = device.startswith("cuda") and cfg.amp
    policy.train()
    step = start_step
    last_log = time.perf_counter()
    samples_since_log = 0
    summary: dict[str, Any] = {
        "evaluations": [],
        "skipped_episodes": skipped,
        "validation_episodes": len(validation_episodes),
        "real_fraction": chunks.real_fraction,
    }
    real_steps, train_seconds = 0, 0.0
    last_good = last_good_checkpoint(checkpoint_dir)
    with children_ignore_interrupts():  # DataLoader workers start here
        batches = iter(loader)
    loss_value = float("nan")
    stop = StopRequest()
    try:
        with stop.catching():
            while step < cfg.steps:
                began = time.perf_counter()
                batch = next(batches)
                generator = torch.Generator().manual_seed(
                    cfg.seed * 1_000_003 + step * 7919 + distributed.rank
                )
                frames = random_shift(batch["frames"], cfg.augment_shift, generator)
                frames = frames.to(device, non_blocking=True)
                actions = batch["actions"].to(device, non_blocking=True)
                mask = batch["mask"].to(device, non_blocking=True)
                times = batch["times"].to(device, non_blocking=True)
                returns = batch["returns"].to(device, non_blocking=True)
                segments = batch["segments"].to(device, non_blocking=True) if cfg.pack else None
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                    output = model(
                        frames, list(batch["instruction"]), times=times, frame_mask=mask, segments=segments
                    )
                logits = output.logits.float()
                log_prob = policy.distribution(logits).log_prob(actions)
                steps_real = mask.sum().clamp_min(1)
                policy_loss = -(log_prob * mask).sum() / steps_real
                # The value term also keeps every output in the graph, as DDP requires.
                value_loss = ((output.value.float() - returns).square() * mask).sum() / steps_real
                loss = policy_loss + cfg.value_coef * value_loss
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(
                        f"loss is {loss_value} at step {step}: training stopped; {last_good}. "
                        "Lower train.lr or check the data."
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = (
                    torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
                    if cfg.grad_clip > 0
                    else torch.linalg.vector_norm(
                        torch.stack([p.grad.norm() for p in trainable if p.grad is not None])
                    )
                )
                optimizer.step()
                scheduler.step()
                step += 1
                samples_since_log += int(mask.sum()) * distributed.world_size
                real_steps += int(mask.sum()) * distributed.world_size
                train_seconds += time.perf_counter() - began
                if writer is not None and (step % cfg.log_every == 0 or step == cfg.steps):
                    elapsed = time.perf_counter() - last_log
                    writer.add_scalar("train/loss", loss_value, step)
                    writer.add_scalar("train/policy_loss", float(policy_loss.detach()), step)
                    writer.add_scalar("train/value_loss", float(value_loss.detach()), step)
                    for head, accuracy in enumerate(_accuracies(policy, logits.detach(), actions, mask)):
                        writer.add_scalar(f"train/accuracy_head{head}", accuracy, step)
                    writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
                    writer.add_scalar("train/grad_norm", float(grad_norm), step)
                    writer.add_scalar("train/samples_per_s", samples_since_log / max(elapsed, 1e-9), step)
                    if bar:
                        bar.set_postfix(
                            loss=f"{loss_value:.3f}",
                            samples_s=f"{samples_since_log / max(elapsed, 1e-9):.0f}",
                        )
                    last_log, samples_since_log = time.perf_counter(), 0
                if bar:
                    bar.update(1)
                stopping = stop.agreed(distributed.world_size, device) and step < cfg.steps
                due = step % cfg.checkpoint_every == 0 or step == cfg.steps or stopping
                if distributed.main and due:
                    if not outputs_finite(policy, batch, device, autocast):
                        raise TrainingDiverged(
                            f"the weights after step {step} give NaN or inf outputs: training stopped "
                            f"without saving them; {last_good}. "
                            "Lower train.lr or check the data."
                        )
                    try:
                        save_checkpoint(checkpoint_dir, policy, optimizer, scheduler, step, run, data)
                    except NonFiniteWeightsError as error:
                        raise TrainingDiverged(
                            f"step {step}: {error}; training stopped; {last_good}"
                        ) from None
                    last_good = last_good_checkpoint(checkpoint_dir)
                validation_due = (step % cfg.val_every == 0) if cfg.val_every else due
                if held_out is not None and (validation_due or step == cfg.steps):
                    result = validate(policy, held_out, cfg.batch_size, device, names)
                    summary["validation"] = {"step": step, **result}
                    if writer is not None:
                        log_validation(writer, result, step)
                if stopping:
                    if distributed.world_size > 1:
                        dist.barrier()  # every rank waits until rank 0 has written the checkpoint
                    assert stop.signal_number is not None
                    raise TrainingInterrupted(
                        f"interrupted at step {step} of {cfg.steps}: checkpoint written to {checkpoint_dir}; "
                        f"resume with `instructcraft bc --config {out_dir / 'config.resolved.yaml'} "
                        f"--data {data} --out {out_dir} --resume {out_dir}`",
                        stop.signal_number,
                    )
                periodic = cfg.eval_every and step % cfg.eval_every == 0
                final = step == cfg.steps and cfg.eval_episodes > 0
                if (
                    distributed.main
                    and evaluate_fn is not None
                    and cfg.eval_episodes > 0
                    and (periodic or final)
                ):
                    policy.eval()
                    result = evaluate_fn(policy, step, writer)
                    policy.train()
                    summary["evaluations"].append({"step": step, **result})
    finally:
        if bar:
            bar.close()
        if writer is not None:
            writer.close()
    if distributed.world_size > 1:
        dist.barrier()
    summary.update(
        {
            "steps": step,
            "final_loss": loss_value,
            "checkpoint": str(checkpoint_dir),
            "out": str(out_dir),
            # Real (unpadded) steps per second of training, loading included.
            "real_steps_per_s": real_steps / max(train_seconds, 1e-9),
        }
    )
    if distributed.main:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return policy, summary


def train_bc(
    run: RunConfig,
    data: str,
    out: str,
    resume: str | None = None,
    progress: bool = True,
    evaluate_fn: Any = None,
    init: str | None = None,
) -> dict[str, Any]:
    """Train; returns a JSON-able summary (``train_bc_policy`` also returns the policy)."""
    return train_bc_policy(run, data, out, resume, progress, evaluate_fn, init)[1]
