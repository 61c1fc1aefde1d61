"""What training and evaluation write for people and programs: strict JSON, and plain-text tables
for evaluation results."""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any


def finite(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by None (JSON's null): a value that was
    never measured (a loss before the first step) is absent, not a number strict readers refuse."""
    if isinstance(data, numbers.Real) and not isinstance(data, numbers.Integral):
        data = float(data)  # numpy's float32 too, which json cannot write
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [finite(value) for value in data]
    return data


def strict_json(data: Any, indent: int | None = 2) -> str:
    """``data`` as strict JSON (RFC 8259: no NaN or Infinity, ``finite``); anything else JSON has no
    type for (a path) as its ``str``. Every summary, state file and ``--json`` output goes through it."""
    return json.dumps(finite(data), indent=indent, allow_nan=False, default=str)


def write_text(path: Path, text: str) -> None:
    """``text`` written to ``path`` atomically and synced (a crash leaves the old file or the new
    one, never half of it); a failed write is an ``OutputWriteError`` naming the file."""
    from envs.data.format import atomic_write_bytes
    from policies.files import describe_write_failure
    from train.errors import OutputWriteError

    try:
        atomic_write_bytes(path, text.encode())
    except OSError as error:
        intact = f"{path.name} was left as it was" if path.exists() else "nothing was written"
        raise OutputWriteError(describe_write_failure(error, path, intact)) from None


def write_json(path: Path, data: Any) -> None:
    """``strict_json(data)`` written to ``path`` (``write_text``)."""
    write_text(path, strict_json(data))


def print_json(data: Any) -> None:
    """``strict_json(data)`` on stdout (a command's ``--json`` output)."""
    print(strict_json(data))


def print_eval(result: dict[str, Any]) -> None:
    print(
        f"{result['env_id']}  mode={result['mode']}  cfg_scale={result['cfg_scale']}  episodes={result['episodes']}"
    )
    print(f"{'task':22s} {'episodes':>8s} {'success':>8s} {'95% interval':>15s} {'mean len':>9s}")
    for task, row in result["tasks"].items():
        low, high = row["ci95"]
        print(
            f"{task:22s} {row['episodes']:8d} {row['success_rate']:8.3f} {f'[{low:.2f}, {high:.2f}]':>15s} {row['mean_length']:9.1f}"
        )
    low, high = result["ci95"]
    print(
        f"{'all':22s} {result['episodes']:8d} {result['success_rate']:8.3f} {f'[{low:.2f}, {high:.2f}]':>15s} {result['mean_length']:9.1f}"
    )
    if "crafter_score" in result:
        rates = result["achievement_rates_percent"]
        print(f"Crafter score {result['crafter_score']:.2f} (mean return {result['mean_return']:.2f})")
        print("  " + ", ".join(f"{name} {rate:.0f}%" for name, rate in rates.items() if rate > 0))
    for video in result.get("videos", []):
        print(f"video: {video}")


def print_sensitivity(result: dict[str, Any]) -> None:
    print(f"{'task':22s} {'correct':>8s} {'swapped':>8s} {'blank':>8s} {'gap':>8s}")
    for task, row in result["tasks"].items():
        blank = f"{row['blank']:8.3f}" if "blank" in row else f"{'-':>8s}"  # an expert has no blank run
        print(
            f"{task:22s} {row['correct']:8.3f} {row['swapped']:8.3f} {blank} "
            f"{row['correct_minus_swapped']:8.3f}"
        )
    print(f"mean success(correct) - success(swapped): {result['mean_correct_minus_swapped']:.3f}")


def print_phrasings(result: dict[str, Any]) -> None:
    episodes = result["episodes_per_task"]
    print(f"{episodes} episodes per phrasing, the same seeds for trained and new phrasings of a task")
    print(f"{'task':18s} {'instruction':42s} {'success':>8s} {'95% CI':>14s}")
    for task, entry in result["tasks"].items():
        print(f"{task:18s} {'(trained phrasings)':42s} {entry['trained']:8.3f}")
        for text, row in entry["phrasings"].items():
            low, high = row["ci95"]
            print(f"{'':18s} {text[:42]:42s} {row['success_rate']:8.3f} {f'[{low:.2f}, {high:.2f}]':>14s}")
    ratio = result["ratio"]
    shown = f"{ratio:.2f}" if ratio is not None else "n/a (no success on trained phrasings)"
    print(
        f"mean success: trained phrasings {result['trained_mean']:.3f}, new phrasings {result['new_mean']:.3f}; "
        f"new / trained = {shown}"
    )
