"""Benchmarks: ratios measured side by side in one run (``instructcraft bench``).

One benchmark a module, each ``bench_<name>(quick) -> dict`` of measurements and the goals they
are held to; timing.py holds how they time (medians, interleaved blocks). A new benchmark: a
module here and its entry in BENCHES (and in the ``bench`` command's choices, train/cli/misc.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from train.bench.attention import bench_attention, viewer_size_for
from train.bench.bc import PREVIOUS_BC_DEFAULT, bench_bc
from train.bench.data import bench_data
from train.bench.env import bench_babyai, bench_collect, bench_crafter, bench_env
from train.bench.policy import bench_policy
from train.bench.rl import bench_rl

__all__ = [
    "BENCHES",
    "PREVIOUS_BC_DEFAULT",
    "bench_attention",
    "bench_babyai",
    "bench_bc",
    "bench_collect",
    "bench_crafter",
    "bench_data",
    "bench_env",
    "bench_policy",
    "bench_rl",
    "viewer_size_for",
]

BENCHES: dict[str, Callable[[bool], dict[str, Any]]] = {
    "env": bench_env,
    "policy": bench_policy,
    "bc": bench_bc,
    "attention": bench_attention,
    "rl": bench_rl,
    "data": bench_data,
}
