"""What behavioral cloning (train/bc.py) and PPO (train/rl/) share: the device and the process
group (torchrun) a run trains on, the files of a training checkpoint and how they are written,
and how a run stops early (``TrainingDiverged`` for NaN or inf, ``TrainingInterrupted`` for
SIGINT or SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from policies import InstructionPolicy
from policies.persist import CheckpointWriteError, atomic_directory, describe_write_failure
from policies.policy import WEIGHTS_NAME, NonFiniteWeightsError

# A run's output folder holds CHECKPOINT/, a policy checkpoint (config.json + model.safetensors,
# what the agent loads) plus the trainer's state and the run's config, to resume from.
CHECKPOINT = "checkpoint"
TRAINER_STATE = "trainer.pt"
RUN_CONFIG = "run.json"


class TrainingDiverged(RuntimeError):
    """The loss, the outputs or the weights became NaN or inf; the last good checkpoint is left
    as it was."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped training after a finished step and a resumable checkpoint.
    ``exit_code`` is the shell's convention for the signal: 130 for Ctrl-C, 143 for SIGTERM."""

    def __init__(self, message: str, signal_number: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signal_number)


def resolve_device(name: str, local_rank: int = 0) -> str:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    return name


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 convolutions
    and matrix products run faster than fp32; elsewhere they are emulated and slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def autocast_device(device: str, amp: bool) -> str | None:
    """The device type bf16 autocast runs on for ``train.amp`` on ``device``: "cuda" on a GPU,
    "cpu" on a CPU with native bf16, None (full fp32) otherwise or when ``amp`` is off."""
    if not amp:
        return None
    if device.startswith("cuda"):
        return "cuda"
    return "cpu" if device == "cpu" and cpu_has_native_bf16() else None


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


def intact_phrase(directory: Path) -> str:
    """What a failed write leaves behind, said before writing ``directory``."""
    return "the previous checkpoint is intact" if directory.exists() else "no checkpoint was written"


def write_checkpoint(
    directory: Path,
    policy: InstructionPolicy,
    extra: dict[str, Any],
    trainer_state: dict[str, Any],
    run_record: dict[str, Any],
) -> None:
    """``directory`` (CHECKPOINT) written atomically: the policy's files with ``extra`` in its
    config, ``trainer_state`` (TRAINER_STATE) and ``run_record`` (RUN_CONFIG).

    Weights with NaN or inf raise ``NonFiniteWeightsError``; a failed write (a full disk) raises
    ``CheckpointWriteError`` naming the file. Either way the previous checkpoint is left as it was.
    """
    intact = intact_phrase(directory)
    writing = directory / WEIGHTS_NAME
    try:
        with atomic_directory(directory) as staging:
            policy.write_files(staging, extra=extra)
            writing = directory / TRAINER_STATE
            torch.save(trainer_state, staging / TRAINER_STATE)
            writing = directory / RUN_CONFIG
            (staging / RUN_CONFIG).write_text(json.dumps(run_record, indent=2))
            writing = directory
    except NonFiniteWeightsError:
        raise
    except (OSError, RuntimeError) as error:
        raise CheckpointWriteError(describe_write_failure(error, writing, intact)) from None


class StopRequest:
    """Set by SIGINT or SIGTERM while ``catching()``: the training loop finishes its step, saves
    a checkpoint and stops. A second Ctrl-C stops at once, without saving."""

    def __init__(self) -> None:
        self.signal_number: int | None = None

    def __bool__(self) -> bool:
        return self.signal_number is not None

    def _handle(self, signal_number: int, _frame: Any) -> None:
        if self.signal_number is not None and signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = signal_number
        # os.write, not print: the handler may run while stderr is in the middle of a write.
        os.write(
            2,
            f"\n{signal.Signals(signal_number).name}: finishing this step, then writing a checkpoint "
            "(Ctrl-C again to quit without saving)\n".encode(),
        )

    @contextlib.contextmanager
    def catching(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals reach the main thread only; nothing to install
            return
        previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
        for number in previous:
            signal.signal(number, self._handle)
        try:
            yield self
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def agreed(self, distributed: Distributed, device: str) -> bool:
        """Whether any process was asked to stop (all ranks must stop at the same step)."""
        if distributed.world_size == 1:
            return bool(self)
        flag = torch.tensor([self.signal_number or 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if not self and int(flag):
            self.signal_number = int(flag)
        return bool(int(flag))


@contextlib.contextmanager
def children_ignore_interrupts() -> Iterator[None]:
    """Worker processes started inside ignore SIGINT (the disposition survives their start), so
    a Ctrl-C sent to the whole process group stops only the trainer, which then stops them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
