"""``bench data``: the dataset store at scale.

A synthetic index of 1,000,000 entries (``--quick``: 20,000), written as the writer writes its
lines, in a temporary folder (the episode files need not exist to open the index). Each open is
timed in a fresh process, whose resident memory is then read from /proc: a process that built
the index itself would hold its garbage too. Measured: opening with the snapshot the writer
saves on close (the normal case), and without one (a version-1 dataset, or a lost snapshot).
A random chunk read is measured on real episodes (10,000 tiny ones; ``--quick``: 300), each read
from a closed file, as the first read of an episode in a training epoch is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from envs.data.format import FORMAT, FORMAT_VERSION, episode_file
from envs.data.store import Dataset, DatasetWriter, Episode

ENV_ID = "instructcraft/Crafter-Instruct-v0"


SPACE = {"type": "Discrete", "n": 17}


TASKS = [f"task_{number:02d}" for number in range(22)]


# Run in a fresh interpreter: open the dataset at argv[1], print seconds and resident memory.
_OPEN = """
import json, sys, time, zlib
from pathlib import Path

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")

from envs.data.store import Dataset
from envs.data.index import save_snapshot

root = Path(sys.argv[1])
before = rss_mb()
start, cpu = time.perf_counter(), time.process_time()
dataset = Dataset(root)
seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
after = rss_mb()
steps = dataset.num_steps
if sys.argv[2] == "save":  # the snapshot the writer would save on close
    raw = (root / "index.jsonl").read_bytes()
    save_snapshot(root, dataset.episodes, len(raw), zlib.crc32(raw), raw.count(b"\\n"))
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "rss_before_mb": before, "rss_after_mb": after, "episodes": len(dataset), "steps": steps}))
"""


def write_synthetic_index(root: Path, entries: int, seed: int = 0) -> int:
    """A version-2 dataset folder whose index lists ``entries`` episodes (no episode files);
    returns the index's size in bytes."""
    root.mkdir(parents=True)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "env_id": ENV_ID,
        "image_shape": [64, 64, 3],
        "action_space": SPACE,
        "frames_per_block": 32,
        "images_per_episode": "steps + 1",
        "info": {"expert": "crafter_planner", "tasks": TASKS},
    }
    (root / "metadata.json").write_text(json.dumps(metadata, indent=2))
    rng = np.random.default_rng(seed)
    with open(root / "index.jsonl", "w") as handle:
        for first in range(0, entries, 10_000):
            count = min(10_000, entries - first)
            lengths, tasks = rng.integers(20, 400, count), rng.integers(0, len(TASKS), count)
            lines = []
            for offset in range(count):
                number, task = first + offset, TASKS[tasks[offset]]
                entry = {
                    "episode": number,
                    "file": episode_file(number),
                    "length": int(lengths[offset]),
                    "instruction": f"please {task.replace('_', ' ')}",
                    "task": task,
                    "env_id": ENV_ID,
                    "expert": "crafter_planner",
                    "seed": number,
                    "success": bool(offset % 5),
                    "return": float(lengths[offset]) / 7,
                    "bytes": 40_000 + int(lengths[offset]) * 100,
                    "sha256": f"{number:064x}",
                }
                lines.append(json.dumps(entry) + "\n")
            handle.write("".join(lines))
    return (root / "index.jsonl").stat().st_size


def open_in_fresh_process(root: Path, save_snapshot: bool = False) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _OPEN, str(root), "save" if save_snapshot else "open"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(result.stdout)


def bench_chunk_reads(root: Path, episodes: int, reads: int, seed: int = 0) -> dict[str, float]:
    """Write ``episodes`` tiny real episodes, then read random 16-step chunks, each from a
    closed file."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    with DatasetWriter(
        root, env_id=ENV_ID, image_shape=(16, 16, 3), action_space=SPACE, frames_per_block=16
    ) as writer:
        for number in range(episodes):
            steps = int(rng.integers(20, 80))
            writer.add(
                Episode(
                    images=rng.integers(0, 256, (steps + 1, 16, 16, 3), dtype=np.uint8),
                    actions=rng.integers(0, 17, steps),
                    rewards=np.zeros(steps, np.float32),
                    terminated=np.arange(steps) == steps - 1,
                    truncated=np.zeros(steps, bool),
                    instruction="collect wood",
                    task="collect_wood",
                    env_id=ENV_ID,
                    seed=number,
                )
            )
    written = time.perf_counter() - start
    dataset = Dataset(root)
    samples, cpu_samples = [], []
    for _ in range(reads):
        number = int(rng.integers(len(dataset)))
        first = int(rng.integers(dataset.episodes.lengths[number] - 16))
        dataset.close()
        t0, cpu = time.perf_counter(), time.process_time()
        dataset.chunk(number, first, first + 16)
        samples.append(time.perf_counter() - t0)
        cpu_samples.append(time.process_time() - cpu)
    dataset.close()
    return {
        "chunk_episodes": episodes,
        "chunk_episodes_written_per_s": episodes / written,
        "chunk16_read_ms_median": 1000 * float(np.median(samples)),
        "chunk16_read_ms_p95": 1000 * float(np.percentile(samples, 95)),
        # CPU time of the reading process: what the read costs when the machine is shared
        "chunk16_read_cpu_ms_median": 1000 * float(np.median(cpu_samples)),
    }


def bench_data(quick: bool = False) -> dict[str, Any]:
    entries, episodes, reads = (20_000, 300, 300) if quick else (1_000_000, 10_000, 2_000)
    # The machine's load while it ran: wall times on a shared machine include waiting for a core.
    results: dict[str, Any] = {"index_entries": entries, "load_average_at_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "index"
        results["index_mb"] = write_synthetic_index(root, entries) / 2**20
        parsed = open_in_fresh_process(root, save_snapshot=True)  # no snapshot yet: every line parsed
        snapshot = open_in_fresh_process(root)
        assert parsed["episodes"] == snapshot["episodes"] == entries and parsed["steps"] == snapshot["steps"]
        results.update(
            {
                "open_s": snapshot["seconds"],
                "open_cpu_s": snapshot["cpu_seconds"],
                "rss_after_open_mb": snapshot["rss_after_mb"],
                "rss_before_open_mb": snapshot["rss_before_mb"],
                "open_without_snapshot_s": parsed["seconds"],
                "open_without_snapshot_cpu_s": parsed["cpu_seconds"],
                "rss_after_open_without_snapshot_mb": parsed["rss_after_mb"],
                "snapshot_mb": (root / "index.snapshot.npz").stat().st_size / 2**20,
            }
        )
        results.update(bench_chunk_reads(Path(tmp) / "episodes", episodes, reads))
    results["load_average_at_end"] = os.getloadavg()[0]
    results["goals"] = {
        "open_s": "<= 2 (1,000,000 entries)",
        "rss_after_open_mb": "<= 500 (1,000,000 entries)",
    }
    return results
