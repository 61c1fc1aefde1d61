"""What behavioral cloning (train/bc.py) and PPO (train/rl/) share: the device and the process
group (torchrun) a run trains on, the run's output folder (refused when it holds another run,
locked while a run writes it) and how a run stops early (``TrainingDiverged`` for NaN or inf,
``TrainingInterrupted`` for SIGINT or SIGTERM). The checkpoint itself: train/checkpoint.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from train.checkpoint import CHECKPOINT, checkpoint_dir
from train.errors import RunFolderError

# Held (flock) by the run writing the folder; the dataset store names its writer's lock the same.
RUN_LOCK = ".lock"


def refuse_existing_run(out_dir: Path, command: str, resume_flag: str, resume: str | None = None) -> None:
    """Refuse to start a ``command`` run in ``out_dir`` when the folder already holds a run's
    checkpoint that this run does not continue (``resume``: the checkpoint or run folder it
    continues). An empty folder, or one without a checkpoint, is fine to use."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFolderError(f"--out {out_dir} is a file, not a folder: pass a folder for the run's files")
    existing = out_dir / CHECKPOINT
    if not existing.exists():
        return
    if resume is not None and checkpoint_dir(resume).resolve() == existing.resolve():
        return
    continuing = f" (--resume {resume} would replace it with another run)" if resume is not None else ""
    raise RunFolderError(
        f"{out_dir} already holds a {command} run ({existing}){continuing}: pass {resume_flag} to "
        "continue it, or another --out"
    )


def _lock_file(path: Path, out_dir: Path) -> Any:
    """``path`` opened and exclusively locked. A run that ends removes its lock file; should that
    happen between our open and our lock, the file locked is no longer the one at ``path``:
    lock the one there now, so two runs never hold different files of one name."""
    while True:
        lock = open(path, "w")  # noqa: SIM115  (held for the run; closed by run_folder_lock)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise RunFolderError(
                f"{out_dir} is being written by another training run: wait for it to end, or pass another --out"
            ) from None
        try:
            if os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino:
                return lock
        except FileNotFoundError:
            pass
        lock.close()


@contextlib.contextmanager
def run_folder_lock(out_dir: Path, held: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` (created if missing) while a run writes it, so a
    second run into the same folder fails at once instead of both writing one checkpoint.
    ``held``: False on the processes that write nothing (torchrun ranks other than 0). The lock
    file goes when the run ends, and so does a folder this run created and left empty (it was
    refused before writing anything)."""
    if not held:
        yield
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFolderError(f"--out {out_dir} is a file, not a folder: pass a folder for the run's files")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir / RUN_LOCK
    lock = _lock_file(lock_path, out_dir)
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)  # still locked: a run that opened it now sees it gone
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


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


def autocast_device(device: str, amp: bool, amp_cpu: bool = False) -> str | None:
    """The device type bf16 autocast runs on for ``train.amp`` / ``train.amp_cpu`` on ``device``:
    "cuda" on a GPU with ``amp``, "cpu" on a CPU with native bf16 when ``amp_cpu`` is on too, None
    (full fp32) otherwise. A CPU defaults to fp32: bf16 autocast fit long BC runs worse there
    (docs/results.md, E26-E28)."""
    if not amp:
        return None
    if device.startswith("cuda"):
        return "cuda"
    return "cpu" if device == "cpu" and amp_cpu and cpu_has_native_bf16() else None


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
