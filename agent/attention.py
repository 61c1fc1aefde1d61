"""Attention over frames: capture during a rollout (or a replayed demonstration) and views of it:
a timeline heatmap PNG, spatial overlays PNG, a self-contained interactive HTML viewer, and
images for TensorBoard.

Per step the capture keeps, for every block and head, the weight on each visible frame (summed
over its tokens) and, for the k most attended frames, the weight on each token: enough for
every view, and small enough for long rollouts.
"""

from __future__ import annotations

import base64
import io
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from PIL import Image, ImageDraw

import envs  # noqa: F401  (registers the instructcraft ids)
from agent.agent import Agent
from agent.errors import AgentSettingError, AgentWriteError
from agent.plan import Plan
from agent.rollout import action_name, caption_font
from envs.data.format import atomic_write_bytes
from envs.episodes import Step, play_episode
from envs.video import upscale
from policies.files import describe_write_failure

if TYPE_CHECKING:
    from envs.data.store import Dataset

TOP_K = 4


@dataclass
class StepAttention:
    frame_times: np.ndarray  # long (F,) visible history, oldest first
    frame_weights: np.ndarray  # float (blocks, heads, F), each (block, head) row sums to ~1
    top_times: np.ndarray  # long (k,) the most attended frames (head and block average)
    top_tokens: np.ndarray  # float (blocks, heads, k, P) their per-token weights
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # gate, text weights, ...


@dataclass
class AttentionRecording:
    instruction: str
    fusion_type: str
    frames: list[np.ndarray] = field(default_factory=list)  # the observation each step acted on
    actions: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    steps: list[StepAttention] = field(default_factory=list)
    tokens_per_frame: int = 1
    source: str = "rollout"
    success: bool = False
    # With a plan: (first step, instruction) each time the instruction in effect changed.
    instruction_changes: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.steps)

    def timeline(self, block: int | str = "mean") -> np.ndarray:
        """(T, T): row t = weight on each frame time at step t (0 where not visible).

        ``block``: an index, "mean" (over blocks) or "rollout" (attention rollout across blocks:
        each block keeps half of what came before through its residual, c_n = (c_{n-1} + A_n) / 2,
        c_1 = A_1)."""
        steps = len(self.steps)
        matrix = np.zeros((steps, steps), np.float32)
        for t, step in enumerate(self.steps):
            per_block = step.frame_weights.mean(1)  # (blocks, F)
            if block == "mean":
                row = per_block.mean(0)
            elif block == "rollout":
                row = per_block[0]
                for later in per_block[1:]:
                    row = 0.5 * row + 0.5 * later
            else:
                row = per_block[int(block)]
            matrix[t, step.frame_times] = row
        return matrix


def capture_step(agent: Agent, k: int = TOP_K) -> StepAttention:
    """The last step's attention, reduced to what the views need (frame weights, top-k tokens)."""
    raw = agent.attention()
    times = raw["frame_times"].astype(np.int64)
    if "weights" in raw:
        tokens = raw["weights"]  # (blocks, heads, F, P)
        frame_weights = tokens.sum(-1)
    else:  # vector fusions: one weight per frame
        history = raw["history_weights"]
        frame_weights = history[None, None, :]
        tokens = history[None, None, :, None]
    order = np.argsort(-frame_weights.mean((0, 1)), kind="stable")[:k]
    extras = {
        name: np.asarray(value)
        for name, value in raw.items()
        if name not in ("weights", "frame_times", "history_weights")
    }
    return StepAttention(
        times, frame_weights.astype(np.float32), times[order], tokens[:, :, order].astype(np.float32), extras
    )


def record_rollout(
    agent: Agent,
    env_id: str,
    instruction: str | None = None,
    seed: int = 0,
    max_steps: int | None = None,
    cfg_scale: float = 0.0,
    env_kwargs: dict[str, Any] | None = None,
    task: str | None = None,
    plan: Plan | None = None,
) -> AttentionRecording:
    """Roll one episode with attention captured at every step (``task``: the task that judges
    success, for envs with a task choice). With a ``plan`` the agent follows it and the
    recording keeps when each instruction took effect (the viewer shows the one of each step)."""
    if not agent.capture_attention:
        raise ValueError("the agent must be created with capture_attention=True")
    env = gym.make(env_id, **(env_kwargs or {}))
    agent.check_env(env)
    recording = AttentionRecording(
        "",
        agent.policy.config.fusion_kwargs.fusion_type,
        tokens_per_frame=agent.policy.config.vision.frame_tokens,
    )

    def start(observation: dict[str, Any], info: dict[str, Any]) -> None:
        if plan is not None:
            agent.reset(plan=plan, info=info)
            recording.instruction = agent.instruction or ""
            recording.instruction_changes.append((0, recording.instruction))
            return
        recording.instruction = instruction if instruction is not None else info["instruction"]
        agent.reset(recording.instruction or None)

    def record(step: Step) -> None:
        recording.frames.append(step.observation["image"])
        recording.steps.append(capture_step(agent))
        recording.actions.append(action_name(env, step.action))
        recording.probabilities.append(agent.last_action_probability())
        recording.rewards.append(float(step.reward))
        recording.success = step.success
        if plan is not None:
            before = agent.instruction
            if agent.observe(step.info) != before:  # in effect from the next step
                recording.instruction_changes.append((step.index, agent.instruction or ""))

    play_episode(
        env,
        agent.acting(deterministic=True, cfg_scale=cfg_scale),
        seed=seed,
        task=task,
        on_reset=start,
        on_step=record,
        max_steps=max_steps,
    )
    return recording


def open_dataset_episode(path: str, episode: int) -> Dataset:
    """The dataset at ``path``, checked to hold episode number ``episode`` (0-based)."""
    from envs.data.store import Dataset

    data = Dataset(path)
    count = len(data)
    if not 0 <= episode < count:
        numbers = f"numbered 0..{count - 1}" if count else "none to replay"
        raise AgentSettingError(
            f"{path} has {count} episode(s) ({numbers}): there is no episode {episode}; pick --episode "
            "from that range (`instructcraft data info` lists the dataset)"
        )
    return data


def record_dataset_episode(
    agent: Agent, path: str, episode: int, action_names: list[str] | None = None
) -> AttentionRecording:
    """Replay a recorded demonstration's frames through the policy; the actions shown are the
    expert's, with the probability the policy gives them."""
    import torch

    if not agent.capture_attention:
        raise ValueError("the agent must be created with capture_attention=True")
    data = open_dataset_episode(path, episode)
    entry = data.episodes[episode]
    item = data.episode(episode)
    agent.reset(item.instruction or None)
    recording = AttentionRecording(
        item.instruction,
        agent.policy.config.fusion_kwargs.fusion_type,
        tokens_per_frame=agent.policy.config.vision.frame_tokens,
        source=f"{path} episode {episode}",
        success=bool(entry.get("success", False)),
    )
    for t in range(item.length):
        agent.act({"image": item.images[t]}, deterministic=True)
        expert = torch.as_tensor(item.actions[t]).to(agent.device)[None]
        recording.probabilities.append(
            float(agent.policy.distribution(agent.last_logits).probs_of(expert)[0])
        )
        recording.frames.append(item.images[t])
        recording.steps.append(capture_step(agent))
        name = (
            action_names[int(item.actions[t])]
            if action_names and np.ndim(item.actions[t]) == 0
            else str(np.asarray(item.actions[t]).tolist())
        )
        recording.actions.append(name)
        recording.rewards.append(float(item.rewards[t]))
    return recording


# -- colour ----------------------------------------------------------------------------------
_STOPS = np.array([[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]], np.float32)


def colormap(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> uint8 RGB (a plasma-like ramp)."""
    x = np.clip(values, 0, 1) * (len(_STOPS) - 1)
    low = np.floor(x).astype(int).clip(0, len(_STOPS) - 2)
    frac = (x - low)[..., None]
    return (_STOPS[low] * (1 - frac) + _STOPS[low + 1] * frac).astype(np.uint8)


def _panel(matrix: np.ndarray, title: str, size: int) -> Image.Image:
    """One heat map with step numbers down the side, frame times along the bottom and a colour
    scale from 0 to the panel's largest weight."""
    peak = max(float(matrix.max()), 1e-9)
    heat = Image.fromarray(colormap(matrix / peak)).resize((size, size), Image.NEAREST)
    left, top, bar = 34, 20, 12
    panel = Image.new("RGB", (left + size + bar + 44, top + size + 34), "white")
    panel.paste(heat, (left, top))
    draw = ImageDraw.Draw(panel)
    font = caption_font(10)
    draw.text((left, 4), title, fill="black", font=font)
    steps = len(matrix)
    for value in sorted({0, (steps - 1) // 2, steps - 1}):  # ticks: first, middle, last step
        offset = int((value + 0.5) * size / max(steps, 1))
        draw.line([(left - 3, top + offset), (left - 1, top + offset)], fill="black")
        draw.text((2, top + offset - 6), str(value), fill="black", font=font)
        draw.line([(left + offset, top + size + 1), (left + offset, top + size + 3)], fill="black")
        draw.text((left + offset - 4, top + size + 4), str(value), fill="black", font=font)
    draw.text((left, top + size + 18), "frame in history (step it was seen) ->", fill="black", font=font)
    draw.text((2, top - 12), "step", fill="black", font=font)
    scale = colormap(np.linspace(1, 0, size, dtype=np.float32)[:, None].repeat(bar, 1))
    panel.paste(Image.fromarray(scale), (left + size + 4, top))
    draw.text((left + size + bar + 6, top - 2), f"{peak:.2g}", fill="black", font=font)
    draw.text((left + size + bar + 6, top + size - 10), "0", fill="black", font=font)
    return panel


def timeline_png(recording: AttentionRecording, path: str | Path, size: int = 320) -> Path:
    """Step (rows) x frame in the history (columns): one panel per block, their mean, and the
    attention rollout across blocks."""
    blocks = recording.steps[0].frame_weights.shape[0]
    panels = [_panel(recording.timeline(b), f"block {b}", size) for b in range(blocks)]
    if blocks > 1:
        panels.append(_panel(recording.timeline("mean"), "mean over blocks", size))
        panels.append(_panel(recording.timeline("rollout"), "rollout across blocks", size))
    width = sum(p.width for p in panels)
    sheet = Image.new("RGB", (width, panels[0].height + 18), "white")
    x = 0
    for panel in panels:
        sheet.paste(panel, (x, 18))
        x += panel.width
    ImageDraw.Draw(sheet).text(
        (4, 2), f"{recording.instruction!r}  ({recording.fusion_type})", fill="black", font=caption_font(11)
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def overlay(frame: np.ndarray, token_weights: np.ndarray, scale: int = 4) -> np.ndarray:
    """Token weights (P,) on a sqrt(P) x sqrt(P) grid, upsampled and blended onto the frame."""
    side = round(len(token_weights) ** 0.5)
    spread = float(token_weights.max() - token_weights.min())
    # Relative to the frame's own range: uniform attention shows no heat.
    grid = (token_weights.reshape(side, side) - token_weights.min()) / max(spread, 1e-9)
    big = upscale(frame, scale).astype(np.float32)
    heat = np.asarray(Image.fromarray(colormap(grid)).resize(big.shape[1::-1], Image.BILINEAR), np.float32)
    alpha = (
        np.asarray(
            Image.fromarray((grid * 255).astype(np.uint8)).resize(big.shape[1::-1], Image.BILINEAR),
            np.float32,
        )[..., None]
        / 255
    )
    return (big * (1 - 0.6 * alpha) + heat * 0.6 * alpha).astype(np.uint8)


def overlays_png(recording: AttentionRecording, step: int, path: str | Path) -> Path:
    """The current frame and, for step ``step``, its most attended frames with token heat."""
    current = recording.steps[step]
    tokens = current.top_tokens.mean((0, 1))  # (k, P)
    tiles = [upscale(recording.frames[step], 4)]
    labels = [f"step {step} (now)"]
    for index, time in enumerate(current.top_times):
        weight = current.frame_weights.mean((0, 1))[list(current.frame_times).index(time)]
        tiles.append(overlay(recording.frames[int(time)], tokens[index]))
        labels.append(f"frame {int(time)}  w={weight:.2f}")
    height, width = tiles[0].shape[:2]
    sheet = Image.new("RGB", (len(tiles) * (width + 6), height + 16), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (tile, label) in enumerate(zip(tiles, labels, strict=True)):
        sheet.paste(Image.fromarray(tile), (i * (width + 6), 16))
        draw.text((i * (width + 6) + 2, 2), label, fill="black", font=caption_font(10))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


# -- the HTML viewer ---------------------------------------------------------------------------
def _b64_png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode()


def _b64_deflate(array: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(array.astype(np.uint8).tobytes(), 9)).decode()


def viewer_payload(
    recording: AttentionRecording, sprite_columns: int = 10, sprite_rows: int = 10
) -> dict[str, Any]:
    """Frames as PNG sprite sheets; weights quantized to uint8 against each step's maximum and
    deflated (the page inflates them with the browser's DecompressionStream)."""
    frames = np.stack(recording.frames)
    height, width = frames.shape[1:3]
    per_sheet = sprite_columns * sprite_rows
    sprites = []
    for start in range(0, len(frames), per_sheet):
        chunk = frames[start : start + per_sheet]
        sheet = np.zeros((sprite_rows * height, sprite_columns * width, 3), np.uint8)
        for i, frame in enumerate(chunk):
            r, c = divmod(i, sprite_columns)
            sheet[r * height : (r + 1) * height, c * width : (c + 1) * width] = frame
        sprites.append(_b64_png(sheet[: ((len(chunk) - 1) // sprite_columns + 1) * height]))
    blocks, heads = recording.steps[0].frame_weights.shape[:2]
    k = max(len(s.top_times) for s in recording.steps)
    tokens = recording.tokens_per_frame if recording.steps[0].top_tokens.shape[-1] > 1 else 1
    frame_q, top_q, scales, counts, firsts, top_times = [], [], [], [], [], []
    for step in recording.steps:
        scale = float(max(step.frame_weights.max(), 1e-9))
        scales.append(scale)
        counts.append(len(step.frame_times))
        firsts.append(int(step.frame_times[0]))
        frame_q.append(np.round(step.frame_weights / scale * 255).reshape(-1))
        padded = np.zeros((blocks, heads, k, tokens), np.float32)
        padded[:, :, : step.top_tokens.shape[2]] = step.top_tokens[..., :tokens]
        top_scale = max(float(padded.max()), 1e-9)
        top_q.append(np.round(padded / top_scale * 255).reshape(-1))
        top_times.append([int(t) for t in step.top_times] + [-1] * (k - len(step.top_times)))
    extras: dict[str, list[Any]] = {}
    for name in recording.steps[0].extras:
        values = [np.asarray(s.extras[name], np.float32) for s in recording.steps]
        if name == "gate":
            extras["gate_mean"] = [round(float(v.mean()), 4) for v in values]
        elif values[0].size <= 64:
            extras[name] = [np.round(v, 4).reshape(-1).tolist() for v in values]
    return {
        "instruction": recording.instruction,
        "instruction_changes": [[int(t), text] for t, text in recording.instruction_changes],
        "fusion_type": recording.fusion_type,
        "source": recording.source,
        "success": recording.success,
        "steps": len(recording),
        "frame_size": [int(height), int(width)],
        "sprite": {"columns": sprite_columns, "per_sheet": per_sheet, "sheets": sprites},
        "blocks": int(blocks),
        "heads": int(heads),
        "tokens": int(tokens),
        "top_k": int(k),
        "actions": recording.actions,
        "probabilities": [round(p, 4) for p in recording.probabilities],
        "rewards": recording.rewards,
        "counts": counts,
        "firsts": firsts,
        "scales": scales,
        "frame_weights": _b64_deflate(np.concatenate(frame_q)),
        "top_times": top_times,
        "top_tokens": _b64_deflate(np.concatenate(top_q)),
        "extras": extras,
    }


# Characters that could end the <script> element or open an HTML comment or CDATA section
# inside it (<, >, &), and the two line separators older JavaScript parsers reject in strings.
_SCRIPT_ESCAPES = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def script_json(data: Any) -> str:
    """JSON safe to inline in a ``<script>`` element: no string in ``data`` (an instruction,
    a dataset path) can close the element or run as code; JSON.parse reads the same value."""
    return json.dumps(data, separators=(",", ":")).translate(_SCRIPT_ESCAPES)


def viewer_html(recording: AttentionRecording, path: str | Path) -> Path:
    """One self-contained HTML file (no network): the template with the payload inlined."""
    template = (Path(__file__).parent / "viewer.html").read_text()
    html = template.replace("/*PAYLOAD*/null", script_json(viewer_payload(recording)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written atomically and synced, as every result file is: a crash or a full disk leaves the
    # previous viewer whole, and the failure is one line naming the file.
    intact = f"{path.name} was left as it was" if path.exists() else "nothing was written"
    try:
        atomic_write_bytes(path, html.encode())
    except OSError as error:
        raise AgentWriteError(describe_write_failure(error, path, intact)) from None
    return path


def timeline_image(recording: AttentionRecording) -> np.ndarray:
    """The mean-over-blocks timeline as an RGB array (for TensorBoard)."""
    matrix = recording.timeline("mean")
    return colormap(matrix / max(float(matrix.max()), 1e-9))
