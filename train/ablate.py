"""Fusion ablation: the same data, budget and seeds for each fusion type; BC (optionally then
PPO), evaluated with correct / swapped / blank instructions. Writes ``ablation.md`` (a
markdown table), ``ablation.json`` and ``ablation.png`` (bars per fusion type)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from agent import Agent
from agent.evaluate import sensitivity
from envs.data.store import Dataset, action_space_spec
from envs.workers import make_env
from train.bc import train_bc
from train.config import load_run_config
from train.errors import SettingError
from train.report import write_json
from train.rl import train_rl


def act_latency_ms(checkpoint: Path, steps: int = 64) -> float:
    """Median ms per ``Agent.act`` over a ``steps``-long episode of blank frames (one thread)."""
    agent = Agent.from_pretrained(checkpoint)
    size = tuple(agent.policy.config.vision.image_size)
    frame = {"image": np.zeros((*size, 3), np.uint8)}
    agent.reset("collect wood")
    agent.act(frame)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        agent.act(frame)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def trainable_parameters(checkpoint: Path) -> int:
    """Parameters the checkpoint trains (the frozen text encoder is not counted)."""
    from policies import InstructionPolicy

    policy = InstructionPolicy.from_pretrained(checkpoint)
    return sum(p.numel() for p in policy.parameters() if p.requires_grad)


def check_dataset_fits_env(dataset: Dataset, env_id: str, tasks: list[str] | None = None) -> None:
    """Before any training: the policies trained on ``dataset`` must be able to act in
    ``env_id`` (same action space and frame size), else the evaluation would fail at the end."""
    env = make_env(env_id, tasks)
    actual = {
        "action_space": action_space_spec(env.action_space),
        "image_shape": list(env.observation_space["image"].shape),
    }
    env.close()
    for key, value in actual.items():
        if dataset.metadata[key] != value:
            raise SettingError(
                f"{dataset.root} has {key} {dataset.metadata[key]} but the eval env {env_id} has {value}: "
                "evaluate on the env the data comes from (drop --env) or use data from this env"
            )


def ablate(
    fusions: list[str],
    data: str,
    out: str,
    *,
    config: str | None = None,
    overrides: list[str] | None = None,
    seeds: list[int] | None = None,
    episodes: int = 20,
    eval_env: str | None = None,
    tasks: list[str] | None = None,
    rl_steps: int = 0,
    workers: int = 1,
    log: Any = print,
) -> dict[str, Any]:
    seeds = seeds or [0]
    dataset = Dataset(data)
    env_id = eval_env or dataset.metadata["env_id"]
    check_dataset_fits_env(dataset, env_id, tasks)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for fusion in fusions:
        per_seed = []
        for seed in seeds:
            run_dir = out_dir / fusion / f"seed{seed}"
            run = load_run_config(
                config,
                [
                    *(overrides or []),
                    f"policy.fusion_kwargs.fusion_type={fusion}",
                    f"train.seed={seed}",
                    f"rl.seed={seed}",
                ],
            )
            torch.manual_seed(seed)
            started = time.perf_counter()
            train_bc(run, data, str(run_dir / "bc"), progress=False)
            checkpoint = run_dir / "bc" / "checkpoint"
            if rl_steps:
                train_rl(
                    run,
                    env_id,
                    rl_steps,
                    str(run_dir / "rl"),
                    init=str(checkpoint),
                    env_kwargs={"task": tasks} if tasks else None,
                )
                checkpoint = run_dir / "rl" / "checkpoint"
            train_minutes = (time.perf_counter() - started) / 60
            result = sensitivity(
                env_id, episodes, checkpoint=str(checkpoint), tasks=tasks, workers=workers, seed=100_000
            )
            runs = result["runs"]
            per_seed.append(
                {
                    "correct": runs["correct"]["success_rate"],
                    "swapped": runs["swapped"]["success_rate"],
                    "blank": runs["blank"]["success_rate"],
                    "sensitivity": result["mean_correct_minus_swapped"],
                    "train_minutes": train_minutes,
                }
            )
            log(
                f"{fusion} seed {seed}: success {per_seed[-1]['correct']:.3f}, gap {per_seed[-1]['sensitivity']:.3f}"
            )
        row = {"fusion": fusion, "seeds": len(seeds)}
        for key in per_seed[0]:
            values = [r[key] for r in per_seed]
            row[key] = float(np.mean(values))
            row[f"{key}_std"] = float(np.std(values))
        row["act_ms"] = act_latency_ms(checkpoint)
        row["parameters"] = trainable_parameters(checkpoint)
        rows.append(row)
    summary = {
        "data": str(data),
        "env_id": env_id,
        "episodes_per_mode": episodes,
        "seeds": seeds,
        "rl_steps": rl_steps,
        "rows": rows,
    }
    write_json(out_dir / "ablation.json", summary)
    (out_dir / "ablation.md").write_text(markdown_table(summary))
    bar_chart(rows, out_dir / "ablation.png")
    return summary


def markdown_table(summary: dict[str, Any]) -> str:
    lines = [
        f"Fusion ablation on `{summary['data']}`, eval on `{summary['env_id']}`: "
        f"{summary['episodes_per_mode']} episodes per instruction mode, seeds {summary['seeds']}"
        + (f", BC then {summary['rl_steps']} PPO steps" if summary["rl_steps"] else ", BC only")
        + ".",
        "",
        "| fusion | success (correct) | swapped | blank | sensitivity (correct - swapped) | act ms | trainable params |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        spread = f" ± {row['correct_std']:.3f}" if row["seeds"] > 1 else ""
        lines.append(
            f"| {row['fusion']} | {row['correct']:.3f}{spread} | {row['swapped']:.3f} | {row['blank']:.3f} | "
            f"{row['sensitivity']:.3f} | {row['act_ms']:.2f} | {row['parameters']:,} |"
        )
    return "\n".join(lines) + "\n"


BAR_COLORS = {"correct": (52, 120, 200), "sensitivity": (230, 140, 40), "act_ms": (120, 120, 120)}
LEGEND = {
    "correct": "success (correct instruction)",
    "sensitivity": "correct - swapped",
    "act_ms": "act latency (relative to the slowest)",
}
ZERO_BAR = 5  # pixels: a bar at 0 (or below) still shows, as a stub on the axis


def bar_chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars per fusion: success, sensitivity (0..1) and act latency (scaled to the max),
    each labelled with its value; a zero (or negative) value is a stub on the axis, not nothing.
    The image is sized to hold the legend, whatever the number of fusion types."""
    from agent.rollout import caption_font

    font = caption_font()
    line, margin, plot_height, group = 16, 40, 240, 120
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend_width = 24 + max(measure.textlength(text, font=font) for text in LEGEND.values())
    width = int(max(group * len(rows) + 2 * margin, legend_width + 2 * margin))
    legend_bottom = 10 + line * len(LEGEND)
    base = legend_bottom + line + plot_height  # the axis; a value label fits above a full bar
    image = Image.new("RGB", (width, base + 2 * line + 10), "white")
    draw = ImageDraw.Draw(image)
    for k, (key, text) in enumerate(LEGEND.items()):
        y = 10 + line * k
        draw.rectangle((margin, y + 2, margin + 12, y + 12), fill=BAR_COLORS[key])
        draw.text((margin + 18, y), text, fill="black", font=font)
    top_latency = max((r["act_ms"] for r in rows), default=1.0) or 1.0
    draw.line((margin, base, width - margin, base), fill="black")
    for i, row in enumerate(rows):
        x0 = margin + 10 + i * group
        for j, (key, color) in enumerate(BAR_COLORS.items()):
            value = row[key] / top_latency if key == "act_ms" else row[key]
            bar = max(int(plot_height * min(value, 1.0)), ZERO_BAR)
            left = x0 + j * 34
            draw.rectangle((left, base - bar, left + 28, base - 1), fill=color, outline=(0, 0, 0))
            label = f"{row[key]:.1f}ms" if key == "act_ms" else f"{row[key]:.2f}"
            draw.text((left, base - bar - line + 2), label, fill="black", font=font)
        draw.text((x0, base + 6), row["fusion"][:16], fill="black", font=font)
    image.save(path)
