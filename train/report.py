"""Plain-text tables for evaluation results."""

from __future__ import annotations

from typing import Any


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
        print(
            f"{task:22s} {row['correct']:8.3f} {row['swapped']:8.3f} {row['blank']:8.3f} "
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
