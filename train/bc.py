"""Behavioral cloning on the native dataset, on one process or many (torchrun, DDP).

Shape legend: B chunks, L steps per chunk, K sum of action sizes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch.utils.tensorboard import SummaryWriter

from envs.dataset import Dataset
from policies import ActionSpaceConfig, InstructionPolicy
from policies.persist import atomic_directory
from train.config import RunConfig
from train.data import ChunkDataset, make_loader, random_shift

CHECKPOINT = "checkpoint"
TRAINER_STATE = "trainer.pt"
RUN_CONFIG = "run.json"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is left as it was."""


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


def resolve_device(name: str, local_rank: int = 0) -> str:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    return name


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
    """config.json + model.safetensors (what the agent loads) + trainer state, written atomically."""
    with atomic_directory(directory) as staging:
        policy.write_files(staging, extra={"trained_steps": step, "data": data})
        torch.save(
            {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(),
            },
            staging / TRAINER_STATE,
        )
        (staging / RUN_CONFIG).write_text(json.dumps(run.to_dict(), indent=2))


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
) -> tuple[InstructionPolicy, dict[str, Any]]:
    """Train; returns the policy and a summary. ``evaluate_fn(policy, step, writer) -> dict`` runs
    periodic evaluation on rank 0 (the CLI passes it down from train/evaluation.py)."""
    cfg = run.train
    device = resolve_device(cfg.device)
    distributed = setup_distributed(device)
    device = resolve_device(cfg.device, distributed.local_rank)
    out_dir = Path(out)
    checkpoint_dir = out_dir / CHECKPOINT

    dataset_info = Dataset(data)
    spec = dataset_info.metadata["action_space"]
    if ActionSpaceConfig.from_spec(spec) != run.policy.action_space:
        # The dataset decides the action space; the config's default is only a placeholder.
        run = RunConfig(
            run.policy.replace(action_space=dataclasses.asdict(ActionSpaceConfig.from_spec(spec))), run.train
        )
    image_shape = tuple(dataset_info.metadata["image_shape"][:2])
    if tuple(run.policy.vision.image_size) != image_shape:
        run = RunConfig(run.policy.replace(**{"vision.image_size": list(image_shape)}), run.train)

    torch.manual_seed(cfg.seed)
    policy = InstructionPolicy(run.policy).to(device)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    )
    start_step = 0
    if resume:
        resume_dir = Path(resume)
        resume_dir = resume_dir / CHECKPOINT if (resume_dir / CHECKPOINT).is_dir() else resume_dir
        if not (resume_dir / TRAINER_STATE).exists():
            raise ValueError(
                f"{resume_dir} has no {TRAINER_STATE}: it is not a training checkpoint written by "
                "`instructcraft bc`, so it cannot be resumed (start a new run instead)"
            )
        loaded = InstructionPolicy.from_pretrained(resume_dir, map_location=device)
        policy.load_state_dict(loaded.state_dict())
        state = torch.load(resume_dir / TRAINER_STATE, map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start_step = int(state["step"])
    model: torch.nn.Module = policy
    if distributed.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            policy,
            device_ids=[distributed.local_rank] if device.startswith("cuda") else None,
            find_unused_parameters=True,
        )

    shard = dataset_info.shard(distributed.rank, distributed.world_size)
    chunks = ChunkDataset(data, cfg.chunk_length, episodes=shard, gamma=cfg.gamma)
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
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.resolved.yaml").write_text(yaml.safe_dump(run.to_dict(), sort_keys=False))
        writer = SummaryWriter(str(out_dir / "tb"), purge_step=start_step if resume else None)
    bar = None
    if progress and distributed.main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start_step, unit="step", desc="bc", dynamic_ncols=True)

    autocast = device.startswith("cuda") and cfg.amp
    policy.train()
    step = start_step
    last_log = time.perf_counter()
    samples_since_log = 0
    summary: dict[str, Any] = {"evaluations": []}
    batches = iter(loader)
    loss_value = float("nan")
    while step < cfg.steps:
        batch = next(batches)
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 7919 + distributed.rank)
        frames = random_shift(batch["frames"], cfg.augment_shift, generator)
        frames = frames.to(device, non_blocking=True)
        actions = batch["actions"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True)
        times = batch["times"].to(device, non_blocking=True)
        returns = batch["returns"].to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            output = model(frames, list(batch["instruction"]), times=times, frame_mask=mask)
        logits = output.logits.float()
        log_prob = policy.distribution(logits).log_prob(actions)
        steps_real = mask.sum().clamp_min(1)
        policy_loss = -(log_prob * mask).sum() / steps_real
        # The value term also keeps every output in the graph, as DDP requires.
        value_loss = ((output.value.float() - returns).square() * mask).sum() / steps_real
        loss = policy_loss + cfg.value_coef * value_loss
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            if bar:
                bar.close()
            raise TrainingDiverged(
                f"loss is {loss_value} at step {step}: training stopped; the last good checkpoint "
                f"({checkpoint_dir if checkpoint_dir.exists() else 'none yet'}) is intact. Lower train.lr or check the data."
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
                    loss=f"{loss_value:.3f}", samples_s=f"{samples_since_log / max(elapsed, 1e-9):.0f}"
                )
            last_log, samples_since_log = time.perf_counter(), 0
        if bar:
            bar.update(1)
        if distributed.main and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            save_checkpoint(checkpoint_dir, policy, optimizer, scheduler, step, run, data)
        periodic = cfg.eval_every and step % cfg.eval_every == 0
        final = step == cfg.steps and cfg.eval_episodes > 0
        if distributed.main and evaluate_fn is not None and cfg.eval_episodes > 0 and (periodic or final):
            policy.eval()
            result = evaluate_fn(policy, step, writer)
            policy.train()
            summary["evaluations"].append({"step": step, **result})
    if bar:
        bar.close()
    if writer is not None:
        writer.close()
    if distributed.world_size > 1:
        dist.barrier()
    summary.update(
        {"steps": step, "final_loss": loss_value, "checkpoint": str(checkpoint_dir), "out": str(out_dir)}
    )
    return policy, summary


def train_bc(
    run: RunConfig,
    data: str,
    out: str,
    resume: str | None = None,
    progress: bool = True,
    evaluate_fn: Any = None,
) -> dict[str, Any]:
    """Train; returns a JSON-able summary (``train_bc_policy`` also returns the policy)."""
    return train_bc_policy(run, data, out, resume, progress, evaluate_fn)[1]
