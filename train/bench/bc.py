"""``bench bc``: the data loader against batches already in memory, and the current default model
and batching against the previous default, on `make demo`-like data."""

from __future__ import annotations

import itertools
import tempfile
import time
from functools import partial
from typing import Any

import envs
from envs.data.collect import collect
from envs.experts import default_expert_for
from train.bench.timing import interleaved, timed

# The frame encoder and batching that were the default before `vision.encoder` and `train.pack`
# existed (every vision field it differs in, spelled out): `bench bc` measures the current
# default against it.
PREVIOUS_BC_DEFAULT = {
    "vision": {
        "encoder": "impala",
        "channels": (16, 32, 32),
        "frame_tokens": 16,
        "position_embedding": False,
        "token_pooling": "average",
    },
    "pack": False,
}

TASKS = ["collect_wood", "collect_drink", "eat_cow", "place_table"]


def bench_bc(quick: bool = False, workers: int = 0) -> dict[str, Any]:
    """Two measurements on `make demo`-like data (4 tasks, DART noise 0.25):

    - one BC step fed by the real loader (decoding chunks with the default episode cache, in
      ``workers`` processes; the CLI uses none) over one fed by the same batches already in
      memory; same model, same run, interleaved blocks; from a cold cache (the first pass
      decodes each episode, about a fifth of the timed steps here), ``_warm`` after one
      untimed pass over the data (a long run's steady state), and ``_1_worker`` cold with one
      loader worker process;
    - real (unpadded) training steps per second of the current default (frame encoder + packed
      rows) over the previous default (IMPALA encoder, one padded episode piece per row), both
      from memory, interleaved blocks.
    """
    import torch

    from policies import ActionSpaceConfig, PolicyConfig
    from train.common import cpu_has_native_bf16
    from train.config import TrainConfig

    steps = 5 if quick else 30
    action_space = ActionSpaceConfig("Discrete", (17,))
    pack_now = TrainConfig().pack
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/data"
        collect(
            path,
            envs.CRAFTER_ID,
            default_expert_for(envs.CRAFTER_ID),
            20 if quick else 200,
            tasks=TASKS,
            workers=2,
            seed=0,
            noise=0.25,
        )
        torch.manual_seed(0)
        config = PolicyConfig(action_space=action_space)
        seconds = _loader_over_memory(path, config, pack_now, steps, workers)
        warm = _loader_over_memory(path, config, pack_now, steps, workers, warm=True)
        # The same with one loader worker process (what the shipped configs used before), cold.
        process = _loader_over_memory(path, config, pack_now, steps, 1)
        runs = _previous_and_default(path, action_space, config, pack_now, steps)
        precision = _bf16_and_fp32(path, config, pack_now, steps)
    real_sps = {name: run["real"] / run["seconds"] for name, run in runs.items()}
    return {
        "loader_step_ms": 1000 * seconds["loader"] / steps,
        "inmemory_step_ms": 1000 * seconds["memory"] / steps,
        "loader_over_inmemory_step_time": seconds["loader"] / seconds["memory"],
        # After one pass over the data (every episode in the loader's cache): a long run's steady state.
        "loader_over_inmemory_step_time_warm": warm["loader"] / warm["memory"],
        "loader_over_inmemory_step_time_1_worker": process["loader"] / process["memory"],
        # What `train.amp_cpu` does on a CPU with native bf16: the same steps under bf16 autocast.
        "fp32_over_bf16_autocast_step_time": precision["fp32"] / precision["bf16"],
        "cpu_native_bf16": cpu_has_native_bf16(),
        "previous_default_real_steps_per_s": real_sps["previous"],
        "default_real_steps_per_s": real_sps["default"],
        "previous_default_real_fraction": runs["previous"]["real"] / runs["previous"]["padded"],
        "default_real_fraction": runs["default"]["real"] / runs["default"]["padded"],
        "real_steps_per_s_default_over_previous": real_sps["default"] / real_sps["previous"],
        "batch": f"16 rows x 32 steps, {workers} loader workers; default: {config.vision.encoder} encoder, "
        f"{config.vision.frame_tokens} tokens, pack={pack_now}; previous: {PREVIOUS_BC_DEFAULT}",
        "goals": {
            "loader_over_inmemory_step_time": "<= 1.1",
            "real_steps_per_s_default_over_previous": ">= 2.0",
        },
    }


def _bc_step(policy: Any, optimizer: Any, batch: Any, packed: bool, bf16: bool = False) -> None:
    """One BC step on ``batch`` (a ``train.batch.Batch``); ``packed``: rows hold several pieces."""
    import dataclasses

    from train.batch import bc_loss

    if not packed:  # one piece a row: no block-causal mask, as training an unpacked run does
        batch = dataclasses.replace(batch, segments=None)
    loss = bc_loss(policy, batch, autocast="cpu" if bf16 else None).policy
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def _model(policy_config: Any) -> tuple[Any, Any]:
    """A fresh policy in training mode and its AdamW optimizer."""
    import torch

    from policies import InstructionPolicy

    policy = InstructionPolicy(policy_config).train()
    return policy, torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)


def _loader_over_memory(
    path: str, config: Any, pack: bool, steps: int, workers: int, warm: bool = False
) -> dict[str, float]:
    """Seconds of ``steps`` BC steps fed by the loader and of the same batches again from memory:
    in each of two rounds, half the steps from the loader, then those batches once more. With
    ``warm``, one untimed pass over the data fills the loader's episode cache first."""
    from train.config import TrainConfig
    from train.data import ChunkDataset, make_loader

    policy, optimizer = _model(config)
    chunks = ChunkDataset(path, 32, pack=pack, cache_mib=TrainConfig().cache_mib)
    loader = make_loader(chunks, 16, workers=workers, seed=0, start_sample=0, pin_memory=False)
    batches = iter(loader)
    _bc_step(policy, optimizer, next(batches), pack)  # warm-up (workers started, text cached)
    if warm:
        for _ in range(-(-len(chunks) // 16)):
            next(batches)
    held: list[Any] = []

    def from_loader() -> float:
        held.clear()  # the last round's batches are let go before the clock starts
        start = time.perf_counter()
        for _ in range(steps // 2):
            batch = next(batches)
            _bc_step(policy, optimizer, batch, pack)
            held.append(batch)
        return time.perf_counter() - start

    def from_memory() -> None:
        for batch in held:
            _bc_step(policy, optimizer, batch, pack)

    return interleaved({"loader": from_loader, "memory": timed(from_memory)}, 2)


def _bf16_and_fp32(path: str, config: Any, pack: bool, steps: int) -> dict[str, float]:
    """Seconds of the same BC steps (the default model, same initial weights, same batches from
    memory) in fp32 and under CPU bf16 autocast, interleaved blocks over two rounds."""
    import torch

    from train.data import ChunkDataset, make_loader

    rows = make_loader(
        ChunkDataset(path, 32, pack=pack), 16, workers=0, seed=0, start_sample=0, pin_memory=False
    )
    held = list(itertools.islice(rows, steps // 2 + 1))
    models = {}
    for name in ("fp32", "bf16"):
        torch.manual_seed(0)
        models[name] = _model(config)
        _bc_step(*models[name], held[0], pack, bf16=name == "bf16")  # warm-up

    def train_on(name: str) -> None:
        for batch in held[1:]:
            _bc_step(*models[name], batch, pack, bf16=name == "bf16")

    return interleaved({name: timed(partial(train_on, name)) for name in models}, 2)


def _previous_and_default(
    path: str, action_space: Any, config: Any, pack: bool, steps: int
) -> dict[str, dict[str, Any]]:
    """Previous default vs current default, both from memory: each run's seconds over two rounds
    and its real (unpadded) and padded step counts."""
    import dataclasses

    import torch

    from policies import PolicyConfig, VisionConfig
    from train.data import ChunkDataset, make_loader

    previous_vision = dataclasses.replace(VisionConfig(), **PREVIOUS_BC_DEFAULT["vision"])
    setups = {
        "previous": (
            PolicyConfig(action_space=action_space, vision=previous_vision),
            PREVIOUS_BC_DEFAULT["pack"],
        ),
        "default": (config, pack),
    }
    runs = {}
    for name, (policy_config, packed) in setups.items():
        torch.manual_seed(0)
        model, optimizer = _model(policy_config)
        rows = make_loader(
            ChunkDataset(path, 32, pack=packed), 16, workers=0, seed=0, start_sample=0, pin_memory=False
        )
        held = list(itertools.islice(rows, steps // 2 + 1))
        _bc_step(model, optimizer, held[0], packed)  # warm-up
        runs[name] = {"model": model, "optimizer": optimizer, "batches": held[1:], "packed": packed}

    def train_on(run: dict[str, Any]) -> None:
        for batch in run["batches"]:
            _bc_step(run["model"], run["optimizer"], batch, run["packed"])

    rounds = 2
    seconds = interleaved({name: timed(partial(train_on, run)) for name, run in runs.items()}, rounds)
    for name, run in runs.items():
        run["seconds"] = seconds[name]
        run["real"] = rounds * int(sum(batch.frame_mask.sum() for batch in run["batches"]))
        run["padded"] = rounds * sum(batch.frame_mask.numel() for batch in run["batches"])
    return runs
