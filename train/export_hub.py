"""``instructcraft export hub``: a checkpoint as a folder to upload to the Hugging Face Hub.

The folder holds what an agent is made of (``config.json``, ``model.safetensors``, a
``card.json`` with the measured results when there are any) and a ``README.md`` model card; no
trainer state (optimizer, RNG), which only a run that continues needs. Uploaded as ``user/name``,
it loads with ``Agent.from_pretrained("user/name")``.

Everything the card says comes from the run's files, which are input from anyone: table cells
cannot break the table, and no path of the machine that trained it is written out (a path shows
as its last part).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from agent.pretrained import is_hub_id, resolve_checkpoint
from policies import InstructionPolicy
from policies.files import atomic_directory, describe_write_failure
from policies.persist import CONFIG_NAME, WEIGHTS_NAME
from train.checkpoint import RUN_CONFIG, checkpoint_dir
from train.errors import OutputWriteError, SettingError

CARD_NAME = "card.json"
README_NAME = "README.md"
TAGS = ["reinforcement-learning", "imitation-learning", "instruction-following", "gymnasium", "instructcraft"]
# A path of the machine that wrote a run: POSIX absolute, home-relative or a Windows drive, not
# preceded by a word character or ':' (so "env/id" and "https://..." are left alone).
_LOCAL_PATH = re.compile(r"(?<![\w:/.~<])(?:/|~/|[A-Za-z]:\\)[^\s`'\"<>|,;)\]]*")
# Fields of a run's files that name a dataset or checkpoint: only their last part is shown.
PATH_FIELDS = {"data", "init", "bc_data", "path", "checkpoint", "out"}


def scrub_text(text: str) -> str:
    """``text`` with each absolute path replaced by its last part (``/home/a/demos`` -> ``demos``)."""
    return _LOCAL_PATH.sub(lambda match: _last_part(match.group(0)), text)


def _last_part(path: str) -> str:
    parts = [
        part for part in re.split(r"[/\\]", path) if part and part not in ("~",) and not part.endswith(":")
    ]
    return parts[-1] if parts else ""


def scrub(value: Any, key: str = "") -> Any:
    """A JSON value from a run's files with no local path left in it (``scrub_text`` on every
    string; the fields in PATH_FIELDS keep only their last part, relative or not)."""
    if isinstance(value, dict):
        return {str(k): scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(item, key) for item in value]
    if isinstance(value, str):
        if key in PATH_FIELDS and ("/" in value or "\\" in value) and not value.startswith("pretrained:"):
            return _last_part(value) if not _is_hub_like(value) else value
        return scrub_text(value)
    return value


def _is_hub_like(value: str) -> bool:
    return is_hub_id(value) and not os.path.exists(value)


def _stride_note(fusion: dict) -> str:
    """How a strided window is read (nothing for the default stride of 1)."""
    stride = fusion.get("history_stride", 1)
    return f", read every {_cell(stride)} steps" if stride != 1 else ""


def _cell(value: Any) -> str:
    """One markdown table cell: no line breaks, no '|' that would end it early, no HTML tag."""
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(scrub_text(text).split())
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _rate(value: Any) -> str:
    """A measured value: rates to three places, intervals as [low, high]."""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.3f}" for v in value) + "]"
    return _cell(value)


def _results_section(evaluation: dict[str, Any] | None) -> list[str]:
    """The measured results: an ``eval.json`` (``instructcraft eval --out``) or a shipped card's
    ``evaluation``; says so when there are none."""
    lines = ["## Results", ""]
    if not evaluation:
        return [
            *lines,
            "No evaluation was given with this checkpoint: measure it with `instructcraft eval`.",
            "",
        ]
    runs = evaluation.get("runs")
    if isinstance(runs, dict):  # a sensitivity run: one evaluation per instruction mode
        lines += [
            "| instruction mode | episodes | success rate | 95% interval |",
            "| --- | --- | --- | --- |",
        ]
        for mode, run in runs.items():
            if isinstance(run, dict):
                lines.append(
                    f"| {_cell(mode)} | {_cell(run.get('episodes', ''))} | {_rate(run.get('success_rate'))} "
                    f"| {_cell(run.get('ci95', ''))} |"
                )
        return [*lines, ""]
    scalars = {k: v for k, v in evaluation.items() if not isinstance(v, dict | list) or "ci95" in k}
    if scalars:
        lines += ["| measure | value |", "| --- | --- |"]
        lines += [f"| {_cell(k)} | {_rate(v)} |" for k, v in scalars.items()]
        lines.append("")
    tasks = evaluation.get("tasks") or evaluation.get("per_task")
    if isinstance(tasks, dict) and tasks:
        lines += ["| task | success rate | episodes |", "| --- | --- | --- |"]
        for task, row in tasks.items():
            rate = row.get("success_rate", row.get("correct")) if isinstance(row, dict) else row
            episodes = row.get("episodes", "") if isinstance(row, dict) else ""
            lines.append(f"| {_cell(task)} | {_rate(rate)} | {_cell(episodes)} |")
        lines.append("")
    return lines


def _training_section(config: dict[str, Any], run: dict[str, Any] | None, card: dict[str, Any]) -> list[str]:
    lines = ["## How it was trained", ""]
    trained_with = card.get("trained_with")
    if isinstance(trained_with, dict):
        lines += [f"- {_cell(key)}: {_cell(value)}" for key, value in trained_with.items()]
    if "rl_timesteps" in config:
        lines.append(
            f"- RL ({_cell(config.get('algorithm', 'ppo')).upper()}) on `{_cell(config.get('env_id', '?'))}` "
            f"for {_cell(config['rl_timesteps'])} env steps"
            + (f", starting from `{_cell(config['init'])}`" if config.get("init") else "")
        )
    if "trained_steps" in config:
        lines.append(
            f"- Behavioral cloning for {_cell(config['trained_steps'])} steps"
            + (f" on the dataset `{_cell(config['data'])}`" if config.get("data") else "")
        )
    train = (run or {}).get("train")
    if isinstance(train, dict) and "trained_steps" in config:
        picked = {
            k: train[k] for k in ("batch_size", "chunk_length", "lr", "weight_decay", "seed") if k in train
        }
        lines.append("- BC settings: " + ", ".join(f"{_cell(k)} = {_cell(v)}" for k, v in picked.items()))
    rl = (run or {}).get("rl")
    if isinstance(rl, dict) and "rl_timesteps" in config:
        picked = {k: rl[k] for k in ("n_envs", "n_steps", "batch_size", "lr", "ent_coef", "seed") if k in rl}
        lines.append("- RL settings: " + ", ".join(f"{_cell(k)} = {_cell(v)}" for k, v in picked.items()))
    if len(lines) == 2:
        lines.append("- The checkpoint records no training (an untrained or hand-made policy).")
    if run:
        lines.append(f"- The full training config is in the run's `{RUN_CONFIG}` (not uploaded).")
    return [*lines, ""]


def model_card(config: dict[str, Any], run: dict[str, Any] | None, card: dict[str, Any] | None) -> str:
    """README.md for the hub: YAML front matter, what the policy is, how it was trained, what it
    measured and how to load it. Every input is scrubbed (``scrub``) before this is called."""
    policy = config["policy"]
    fusion = policy.get("fusion_kwargs", {})
    text, vision = policy.get("text", {}), policy.get("vision", {})
    evaluation = (card or {}).get("evaluation")
    evaluation = evaluation if isinstance(evaluation, dict) else None
    env_id = config.get("env_id") or (card or {}).get("env") or (evaluation or {}).get("env_id")
    front = ["---", "library_name: instructcraft", "tags:"] + [f"- {tag}" for tag in TAGS]
    if env_id:
        front.append(f"- {json.dumps(str(env_id))}")  # JSON strings are YAML strings: nothing escapes
    front.append("---")
    lines = [*front, "", "# An instruction-following agent (instructcraft)", ""]
    lines += [
        "A policy that reads a text instruction and a history of 64x64 RGB frames and picks the next "
        "action. The instruction's tokens attend to the frames' tokens "
        f"(fusion `{_cell(fusion.get('fusion_type', '?'))}`, {_cell(fusion.get('num_blocks', '?'))} block(s), "
        f"{_cell(fusion.get('num_heads', '?'))} heads, width {_cell(fusion.get('projection_dim', '?'))}, "
        f"history up to {_cell(fusion.get('max_history', '?'))} frames{_stride_note(fusion)}).",
        "",
        f"- text encoder: `{_cell(text.get('encoder', '?'))}`",
        f"- vision encoder: `{_cell(vision.get('encoder', '?'))}`, frames {_cell(vision.get('image_size', '?'))}",
        f"- actions: {_cell(policy.get('action_space', '?'))}",
    ]
    if env_id:
        lines.append(f"- environment: `{_cell(env_id)}`")
    lines.append("")
    lines += _training_section(config, run, card or {})
    lines += _results_section(evaluation)
    lines += [
        "## Use",
        "",
        "```python",
        "from agent import Agent",
        "",
        'agent = Agent.from_pretrained("user/name")  # this repository\'s id; needs huggingface_hub',
        "agent.reset(instruction)",
        "action = agent.act(observation)",
        "```",
        "",
        "or from the command line: `instructcraft eval --checkpoint user/name --env ENV_ID`.",
        "",
    ]
    return "\n".join(lines)


def _trimmed_eval(path: Path) -> dict[str, Any]:
    """An ``eval.json`` without its per-episode rows (the card keeps the rates)."""
    problem = None
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        loaded, problem = None, f"{type(error).__name__}: {error}"
    if not isinstance(loaded, dict):
        raise SettingError(
            f"--eval {path}: {problem or 'not a JSON object'}; pass the eval.json `instructcraft eval --out` writes"
        )

    def trim(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: trim(v) for k, v in value.items() if k not in ("per_episode", "videos")}
        return value

    return trim(loaded)


def export_hub(source: str, out: str | os.PathLike[str], evaluation: str | None = None) -> dict[str, Any]:
    """Write ``out``, a folder to upload as a hub model, from the checkpoint (or run folder, or
    ``pretrained:<name>``) ``source``; ``evaluation``: an ``eval.json`` to report. Refuses an
    ``out`` that holds anything. Returns what it wrote."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SettingError(
            f"--out {out} exists and is not an empty folder: pass a new folder to write the export"
        )
    resolved = resolve_checkpoint(source)
    directory = checkpoint_dir(resolved)
    InstructionPolicy.from_pretrained(directory)  # a checkpoint that loads, or its own error says why
    recorded = json.loads((directory / CONFIG_NAME).read_text())
    # The policy section is what loading builds: kept as it is (it names no dataset).
    config = {"policy": recorded["policy"], **scrub({k: v for k, v in recorded.items() if k != "policy"})}
    run = _read_json(directory / RUN_CONFIG)
    run = scrub(run) if isinstance(run, dict) else None
    card = _read_json(directory / CARD_NAME)
    card = scrub(card) if isinstance(card, dict) else {}
    if evaluation is not None:
        card = {**card, "evaluation": scrub(_trimmed_eval(Path(evaluation)))}
    texts = {CONFIG_NAME: json.dumps(config, indent=2)}
    if card:
        texts[CARD_NAME] = json.dumps(card, indent=2)
    texts[README_NAME] = model_card(config, run, card or None)
    _write_folder(out, directory / WEIGHTS_NAME, texts)
    files = sorted(path.name for path in out.iterdir())
    return {"out": str(out), "files": files, "evaluation": bool(card.get("evaluation"))}


def _write_folder(out: Path, weights: Path, texts: dict[str, str]) -> None:
    """``out`` written whole or not at all (``atomic_directory``: every file synced, the folder
    renamed into place), with the umask's permissions: a failed export (a full disk) leaves
    ``out`` as it was, so the same command can run again. A failed write is an
    ``OutputWriteError`` naming the file."""
    writing = out / WEIGHTS_NAME
    try:
        with atomic_directory(out) as staging:
            shutil.copyfile(weights, staging / WEIGHTS_NAME)
            for name, text in texts.items():
                writing = out / name
                (staging / name).write_text(text, encoding="utf-8")
            writing = out  # what is left: syncing the folder and renaming it into place
    except OSError as error:
        raise OutputWriteError(
            describe_write_failure(error, writing, f"nothing was written to {out}")
        ) from None
