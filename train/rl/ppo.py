"""PPO (stable-baselines3) on the instruction-conditioned policy, from scratch or from BC.

The policy reads a growing frame history, so SB3's sample-by-sample PPO does not fit it as is.
``SequencePPO`` keeps SB3's machinery (vector envs, Monitor, rollout buffer and GAE, logger,
callbacks, schedules) and replaces the two loops that touch the policy:

- rollouts step the policy incrementally (``InstructionPolicy.step``, one frame per env per
  step, a K/V cache per env; envs that finish restart their row with ``reset_rows``). At the
  start of each rollout the cache is rebuilt from the current episodes' last frames under the
  current weights, so the log-probabilities the update recomputes equal the rollout's.
- the update cuts each env's rollout at episode boundaries into segments, prepends the frames
  of the episode before the rollout (up to ``max_history - 1``, context only, no loss), packs
  segments into minibatches of about ``batch_size`` steps and runs the parallel causal
  ``forward``: every frame is encoded once per epoch instead of once per sample and window.

Options: ``init`` (a BC checkpoint: at step 0 the RL policy is exactly the BC policy), a KL
penalty toward that policy with a decaying coefficient, and an auxiliary BC loss on
demonstrations. Checkpoints use the project's format (config.json + model.safetensors).

Shape legend: N envs, S segments in a minibatch, L steps per segment (context included),
H, W, 3 image, K sum of action sizes.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import DictRolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import HumanOutputFormat, Logger, TensorBoardOutputFormat
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.utils import explained_variance, safe_mean
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
from torch.utils.tensorboard import SummaryWriter

from envs.data.store import action_space_spec
from envs.wrappers import ByteTokenizer, make_tokenized_env
from policies import ActionSpaceConfig, InstructionPolicy, PolicyConfig
from policies.persist import CheckpointWriteError, atomic_directory, describe_write_failure
from policies.policy import CONFIG_NAME, WEIGHTS_NAME, NonFiniteWeightsError, PolicyState
from train.bc import (
    StopRequest,
    TrainingDiverged,
    TrainingInterrupted,
    children_ignore_interrupts,
    resolve_device,
)
from train.config import RunConfig
from train.data import ChunkDataset, make_loader

CHECKPOINT = "checkpoint"
TRAINER_STATE = "trainer.pt"
RUN_CONFIG = "run.json"


class FusionPolicy(BasePolicy):
    """SB3's view of an ``InstructionPolicy``: observations hold ``image`` and the instruction
    as byte-token ids (``envs.wrappers.make_tokenized_env``); the text is decoded back and
    encoded by the policy's own (frozen, cached) text encoder.

    ``predict`` is stateful like a recurrent policy: pass ``episode_start`` each call.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Space,
        lr_schedule: Callable[[float], float],
        use_sde: bool = False,
        policy_config: dict[str, Any] | None = None,
        init: str | None = None,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(observation_space, action_space)
        keys = set(observation_space.spaces) if isinstance(observation_space, spaces.Dict) else set()
        missing = {"image", "instruction_ids", "instruction_mask"} - keys
        if missing:
            raise ValueError(
                f"the fusion policy needs observations with {sorted(missing)}; wrap the env with "
                "envs.wrappers.make_tokenized_env (or TokenizeInstruction)"
            )
        if not isinstance(action_space, (spaces.Discrete, spaces.MultiDiscrete)):
            raise ValueError(
                f"PPO with the fusion policy needs Discrete or MultiDiscrete actions, got {action_space}"
            )
        spec = action_space_spec(action_space)
        if init:
            self.model = InstructionPolicy.from_pretrained(init)
        else:  # from scratch: the heads follow the env's action space
            config = PolicyConfig.from_dict(policy_config or {})
            config = config.replace(action_space=dataclasses.asdict(ActionSpaceConfig.from_spec(spec)))
            self.model = InstructionPolicy(config)
        self.model.check_action_space(spec)
        image_shape = observation_space["image"].shape
        self.channels_first = image_shape[0] == 3 and image_shape[-1] != 3
        self.tokenizer = ByteTokenizer()
        self._texts: dict[bytes, str] = {}
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=lr_schedule(1), eps=1e-5, weight_decay=weight_decay)
        self._predict_state: PolicyState | None = None

    # -- observation conversions ----------------------------------------------------------
    def frames(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) or SB3's channel-first (N, 3, H, W) -> uint8 (N, H, W, 3)."""
        frames = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image)
        if frames.shape[-1] != 3 and frames.shape[1] == 3:  # SB3's VecTransposeImage layout
            frames = frames.permute(0, 2, 3, 1)
        return frames.to(torch.uint8)

    def instructions(self, ids: np.ndarray, mask: np.ndarray) -> list[str]:
        out = []
        for row, keep in zip(np.asarray(ids), np.asarray(mask), strict=True):
            real = row[keep.astype(bool)].astype(np.int64)
            key = real.tobytes()
            text = self._texts.get(key)
            if text is None:
                text = self.tokenizer.decode(real.tolist())
                if len(self._texts) > 4096:
                    self._texts.clear()
                self._texts[key] = text
            out.append(text)
        return out

    # -- SB3 interface --------------------------------------------------------------------
    def _predict(self, observation: Any, deterministic: bool = False) -> torch.Tensor:
        raise NotImplementedError("use predict(observation, episode_start=...): the policy keeps a history")

    @torch.no_grad()
    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """Batched observations (N, ...) -> actions; ``episode_start`` bool (N,) restarts rows."""
        self.model.eval()
        texts = self.instructions(observation["instruction_ids"], observation["instruction_mask"])
        count = len(texts)
        if self._predict_state is None or self._predict_state.text.shape[0] != count:
            self._predict_state = self.model.initial_state(texts)
        elif episode_start is not None:
            rows = torch.as_tensor(np.asarray(episode_start, dtype=bool))
            self.model.reset_rows(self._predict_state, rows, texts)
        out = self.model.step(self._predict_state, self.frames(observation["image"]))
        distribution = self.model.distribution(out.logits)
        actions = distribution.mode() if deterministic else distribution.sample()
        return actions.cpu().numpy(), None

    def set_training_mode(self, mode: bool) -> None:
        self.model.train(mode)
        self.training = mode


class SequenceRolloutBuffer(DictRolloutBuffer):
    """SB3's Dict rollout buffer plus each step's absolute time in its episode and, per env,
    the frames of the running episode from before the rollout (context for the update)."""

    def reset(self) -> None:
        super().reset()
        self.times = np.zeros((self.buffer_size, self.n_envs), np.int64)
        self.context: list[dict[str, Any]] = [{"frames": [], "times": []} for _ in range(self.n_envs)]


@dataclasses.dataclass
class Segment:
    env: int
    start: int  # first rollout step
    stop: int  # one past the last rollout step
    context: int  # context frames before ``start``

    @property
    def steps(self) -> int:
        return self.stop - self.start


def split_segments(episode_starts: np.ndarray, context_lengths: list[int]) -> list[Segment]:
    """episode_starts (n_steps, N) (SB3: True = the step's observation opens an episode) ->
    one segment per (env, episode piece); only a piece that continues an episode from before
    the rollout gets context."""
    n_steps, n_envs = episode_starts.shape
    segments = []
    for env in range(n_envs):
        cuts = [0, *[t for t in range(1, n_steps) if episode_starts[t, env]], n_steps]
        for index, (start, stop) in enumerate(itertools.pairwise(cuts)):
            continues = index == 0 and not episode_starts[0, env]
            segments.append(Segment(env, start, stop, context_lengths[env] if continues else 0))
    return segments


def pack_minibatches(
    segments: list[Segment], batch_size: int, rng: np.random.Generator
) -> list[list[Segment]]:
    """Shuffle segments and fill minibatches up to ``batch_size`` loss steps each."""
    order = rng.permutation(len(segments))
    batches: list[list[Segment]] = [[]]
    filled = 0
    for index in order:
        segment = segments[index]
        if filled and filled + segment.steps > batch_size:
            batches.append([])
            filled = 0
        batches[-1].append(segment)
        filled += segment.steps
    return [batch for batch in batches if batch]


def kl_divergence(logits: torch.Tensor, reference: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """KL(policy || reference) per step, summed over the action components: (..., K) -> (...)."""
    total = 0
    for part, ref in zip(logits.split(list(sizes), -1), reference.split(list(sizes), -1), strict=True):
        log_p, log_q = part.log_softmax(-1), ref.log_softmax(-1)
        total = total + (log_p.exp() * (log_p - log_q)).sum(-1)
    return total


class SequencePPO(PPO):
    """PPO whose rollouts and updates follow episodes in time (see the module docstring)."""

    def __init__(
        self,
        env: VecEnv,
        *,
        policy_config: dict[str, Any] | None = None,
        init: str | None = None,
        reference: str | None = None,
        kl_coef: float = 0.0,
        kl_decay: float = 1.0,
        bc_coef: float = 0.0,
        bc_data: str = "",
        bc_batch_size: int = 4,
        **ppo_kwargs: Any,
    ) -> None:
        policy_kwargs = {"policy_config": policy_config, "init": init}
        ppo_kwargs.setdefault("rollout_buffer_class", SequenceRolloutBuffer)
        super().__init__(FusionPolicy, env, policy_kwargs=policy_kwargs, **ppo_kwargs)
        self.kl_coef = kl_coef
        self.kl_decay = kl_decay
        self.reference: InstructionPolicy | None = None
        reference = reference or init
        if kl_coef > 0:
            if not reference:
                raise ValueError("rl.kl_coef > 0 pulls toward the --init policy: pass --init DIR")
            self.reference = InstructionPolicy.from_pretrained(reference, map_location=self.device).eval()
            self.reference.requires_grad_(False)
        self.bc_coef = bc_coef
        self._bc_batches = None
        if bc_coef > 0:
            window = self.policy.model.config.fusion_kwargs.max_history
            chunks = ChunkDataset(bc_data, min(window, 32))
            self._bc_batches = iter(make_loader(chunks, bc_batch_size, 0, self.seed or 0, 0, False))
        self._episode_texts: list[str] = []
        self._contexts: list[deque] = []
        self._task_success: dict[str, deque] = defaultdict(lambda: deque(maxlen=100))
        self.timings: dict[str, float] = defaultdict(float)
        self.after_update: Callable[[SequencePPO], None] | None = None

    @property
    def model(self) -> InstructionPolicy:
        return self.policy.model

    # -- rollouts -------------------------------------------------------------------------
    def _rebuild_state(self, texts: list[str], starts: np.ndarray) -> PolicyState:
        """A fresh cache per env from its running episode's recent frames, under the current
        weights (envs that open an episode now start empty at time 0)."""
        model = self.model
        state = model.initial_state(texts)
        next_times = np.where(starts, 0, self._next_times)
        lengths = [0 if starts[e] else len(self._contexts[e]) for e in range(self.n_envs)]
        longest = max(lengths, default=0)
        state.time = torch.tensor(next_times - np.asarray(lengths), dtype=torch.long, device=self.device)
        if longest:
            shape = self.observation_space["image"].shape
            height, width = (shape[1], shape[2]) if self.policy.channels_first else (shape[0], shape[1])
            frames = torch.zeros(self.n_envs, longest, height, width, 3, dtype=torch.uint8)
            valid = torch.zeros(self.n_envs, longest, dtype=torch.bool)
            for e in range(self.n_envs):
                if lengths[e]:  # right-aligned: every row ends together
                    stacked = np.stack([frame for frame, _ in self._contexts[e]][-lengths[e] :])
                    frames[e, longest - lengths[e] :] = torch.from_numpy(stacked)
                    valid[e, longest - lengths[e] :] = True
            model.prefill(state, frames, valid)  # the frame encoder runs once over all of them
        assert state.time.tolist() == next_times.tolist(), "context frames and step times disagree"
        return state

    def collect_rollouts(self, env, callback, rollout_buffer, n_rollout_steps: int) -> bool:
        assert self._last_obs is not None, "no previous observation"
        self.policy.set_training_mode(False)
        model = self.model
        window = model.config.fusion_kwargs.max_history
        rollout_buffer.reset()
        callback.on_rollout_start()
        started = time.perf_counter()
        obs = self._last_obs
        starts = np.asarray(self._last_episode_starts, dtype=bool)
        texts = self.policy.instructions(obs["instruction_ids"], obs["instruction_mask"])
        if not self._contexts:
            self._contexts = [deque(maxlen=window - 1) for _ in range(self.n_envs)]
            self._episode_texts = list(texts)
            self._next_times = np.zeros(self.n_envs, np.int64)
        for e in range(self.n_envs):
            if starts[e]:
                self._contexts[e].clear()
                self._episode_texts[e] = texts[e]
            rollout_buffer.context[e] = {
                "frames": [frame for frame, _ in self._contexts[e]],
                "times": [t for _, t in self._contexts[e]],
            }
        with torch.no_grad():
            state = self._rebuild_state(self._episode_texts, starts)
        self.timings["inference"] += time.perf_counter() - started
        n_steps = 0
        first = True
        while n_steps < n_rollout_steps:
            began = time.perf_counter()
            with torch.no_grad():
                if not first and starts.any():
                    texts = self.policy.instructions(obs["instruction_ids"], obs["instruction_mask"])
                    for e in np.flatnonzero(starts):
                        self._contexts[e].clear()
                        self._episode_texts[e] = texts[e]
                    model.reset_rows(state, torch.from_numpy(starts), self._episode_texts)
                first = False
                rollout_buffer.times[rollout_buffer.pos] = state.time.cpu().numpy()
                frames = self.policy.frames(obs["image"])
                out = model.step(state, frames)
                distribution = model.distribution(out.logits)
                actions = distribution.sample()
                log_probs = distribution.log_prob(actions)
                values = out.value
            step_times = rollout_buffer.times[rollout_buffer.pos]
            for e in range(self.n_envs):
                self._contexts[e].append((frames[e].numpy(), int(step_times[e])))
            self._next_times = step_times + 1
            actions_np = actions.cpu().numpy()
            stepped = time.perf_counter()
            self.timings["inference"] += stepped - began
            new_obs, rewards, dones, infos = env.step(actions_np)
            self.timings["env"] += time.perf_counter() - stepped
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            self._record_tasks(infos, dones)
            n_steps += 1
            began = time.perf_counter()
            truncated = np.array(
                [
                    bool(
                        d and info.get("terminal_observation") is not None and info.get("TimeLimit.truncated")
                    )
                    for d, info in zip(dones, infos, strict=True)
                ]
            )
            if truncated.any():
                # Bootstrap cut-off episodes with the value of their last observation, which
                # needs that episode's history: step only those rows (they restart next step).
                terminal = np.zeros_like(obs["image"])
                for e in np.flatnonzero(truncated):
                    terminal[e] = infos[e]["terminal_observation"]["image"]
                with torch.no_grad():
                    bootstrap = model.step(state, self.policy.frames(terminal), torch.from_numpy(truncated))
                for e in np.flatnonzero(truncated):
                    rewards[e] += self.gamma * float(bootstrap.value[e])
            if isinstance(self.action_space, spaces.Discrete):
                actions_np = actions_np.reshape(-1, 1)
            rollout_buffer.add(obs, actions_np, rewards, self._last_episode_starts, values, log_probs)
            obs = new_obs
            self._last_obs = new_obs
            self._last_episode_starts = dones
            starts = np.asarray(dones, dtype=bool)
            self.timings["inference"] += time.perf_counter() - began
        began = time.perf_counter()
        with torch.no_grad():
            texts = self.policy.instructions(obs["instruction_ids"], obs["instruction_mask"])
            model.reset_rows(state, torch.from_numpy(starts), texts)
            last_values = model.step(state, self.policy.frames(obs["image"])).value
        rollout_buffer.compute_returns_and_advantage(last_values=last_values, dones=dones)
        self.timings["inference"] += time.perf_counter() - began
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def _record_tasks(self, infos: list[dict[str, Any]], dones: np.ndarray) -> None:
        for info, done in zip(infos, dones, strict=True):
            if done and "success" in info:
                self._task_success[str(info.get("task", "all"))].append(float(bool(info["success"])))

    def task_success(self) -> dict[str, float]:
        return {task: float(np.mean(v)) for task, v in sorted(self._task_success.items()) if v}

    def dump_logs(self, iteration: int = 0) -> None:
        per_task = self.task_success()
        if per_task:
            episodes = [x for v in self._task_success.values() for x in v]
            self.logger.record("rollout/success_rate", float(np.mean(episodes)))
            for task, rate in per_task.items():
                self.logger.record(f"rollout/success_rate/{task}", rate)
        super().dump_logs(iteration)

    # -- the update -----------------------------------------------------------------------
    def _minibatch(
        self, segments: list[Segment], context_features: dict[int, torch.Tensor] | None = None
    ) -> dict[str, Any]:
        """Pad the segments (context + rollout steps) into (S, L) tensors; with
        ``context_features`` ({env: (C_env, P, C)}), also the context frames' encodings."""
        buffer: SequenceRolloutBuffer = self.rollout_buffer
        images = buffer.observations["image"]
        length = max(s.context + s.steps for s in segments)
        count = len(segments)
        first = self.policy.frames(images[0, :1])
        frames = torch.zeros(count, length, *first.shape[1:], dtype=torch.uint8)
        times = torch.zeros(count, length, dtype=torch.long)
        frame_mask = torch.zeros(count, length, dtype=torch.bool)
        loss_mask = torch.zeros(count, length, dtype=torch.bool)
        action_shape = buffer.actions.shape[2:]
        actions = torch.zeros(count, length, *action_shape, dtype=torch.long)
        fields = {name: torch.zeros(count, length) for name in ("log_prob", "advantages", "returns")}
        texts = []
        features = None
        if context_features:
            shape = next(iter(context_features.values())).shape[1:]
            features = torch.zeros(count, length, *shape, device=self.device)
        for row, seg in enumerate(segments):
            ctx = seg.context  # all the context frames of that env, or none
            if ctx:
                context = buffer.context[seg.env]
                frames[row, :ctx] = torch.from_numpy(np.stack(context["frames"]))
                times[row, :ctx] = torch.tensor(context["times"])
                if features is not None:
                    features[row, :ctx] = context_features[seg.env]
            span = slice(ctx, ctx + seg.steps)
            frames[row, span] = self.policy.frames(images[seg.start : seg.stop, seg.env])
            times[row, span] = torch.from_numpy(buffer.times[seg.start : seg.stop, seg.env])
            frame_mask[row, : ctx + seg.steps] = True
            loss_mask[row, span] = True
            actions[row, span] = torch.from_numpy(buffer.actions[seg.start : seg.stop, seg.env]).long()
            fields["log_prob"][row, span] = torch.from_numpy(buffer.log_probs[seg.start : seg.stop, seg.env])
            fields["advantages"][row, span] = torch.from_numpy(
                buffer.advantages[seg.start : seg.stop, seg.env]
            )
            fields["returns"][row, span] = torch.from_numpy(buffer.returns[seg.start : seg.stop, seg.env])
            ids = buffer.observations["instruction_ids"][seg.start, seg.env][None]
            mask = buffer.observations["instruction_mask"][seg.start, seg.env][None]
            texts.append(self.policy.instructions(ids, mask)[0])
        if isinstance(self.action_space, spaces.Discrete):
            actions = actions[..., 0]
        device = self.device
        return {
            "frames": frames.to(device),
            "times": times.to(device),
            "frame_mask": frame_mask.to(device),
            "loss_mask": loss_mask.to(device),
            "actions": actions.to(device),
            "texts": texts,
            "context_features": features,
            **{name: value.to(device) for name, value in fields.items()},
        }

    def _bc_loss(self) -> torch.Tensor:
        batch = next(self._bc_batches)
        mask = batch["mask"].to(self.device)
        output = self.model(
            batch["frames"].to(self.device),
            list(batch["instruction"]),
            times=batch["times"].to(self.device),
            frame_mask=mask,
            drop_instruction=torch.zeros(mask.shape[0], dtype=torch.bool),
        )
        log_prob = self.model.distribution(output.logits).log_prob(batch["actions"].to(self.device))
        return -(log_prob * mask).sum() / mask.sum().clamp_min(1)

    def _reference_logits(
        self, batch: dict[str, Any], segments: list[Segment], cache: dict[tuple[int, int], torch.Tensor]
    ) -> torch.Tensor:
        """The reference policy's logits at the minibatch's rollout steps, in ``logits[mask]``
        order (row by row), from ``cache`` for segments seen in an earlier epoch."""
        missing = [row for row, seg in enumerate(segments) if (seg.env, seg.start) not in cache]
        if missing:
            with torch.no_grad():
                logits = self.reference(
                    batch["frames"][missing],
                    [batch["texts"][row] for row in missing],
                    times=batch["times"][missing],
                    frame_mask=batch["frame_mask"][missing],
                ).logits
            mask = batch["loss_mask"][missing]
            for index, row in enumerate(missing):
                seg = segments[row]
                cache[(seg.env, seg.start)] = logits[index][mask[index]]
        return torch.cat([cache[(seg.env, seg.start)] for seg in segments])

    def train(self) -> None:
        began = time.perf_counter()
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)
        buffer: SequenceRolloutBuffer = self.rollout_buffer
        contexts = [len(c["frames"]) for c in buffer.context]
        segments = split_segments(buffer.episode_starts.astype(bool), contexts)
        rng = np.random.default_rng([self.seed or 0, self._n_updates])
        model = self.model
        # The frames from before the rollout are read, never trained on: encode them once per
        # update, with the weights the rollout used, instead of once per epoch.
        with torch.no_grad():
            context_features = {
                env: model.frame_encoder(torch.from_numpy(np.stack(context["frames"])).to(self.device))
                for env, context in enumerate(buffer.context)
                if context["frames"]
            }
        # The reference policy is frozen: its logits at each rollout step are computed in the first
        # epoch and reused by the later ones ({(env, start): (steps, logits)}).
        reference_logits: dict[tuple[int, int], torch.Tensor] = {}
        logs: dict[str, list[float]] = defaultdict(list)
        continue_training = True
        for _epoch in range(self.n_epochs):
            approx_kls = []
            for batch_segments in pack_minibatches(segments, self.batch_size, rng):
                batch = self._minibatch(batch_segments, context_features)
                mask = batch["loss_mask"]
                output = model(
                    batch["frames"],
                    batch["texts"],
                    times=batch["times"],
                    frame_mask=batch["frame_mask"],
                    drop_instruction=torch.zeros(len(batch["texts"]), dtype=torch.bool),
                    context_mask=~mask,  # earlier frames: keys/values only, no encoder gradient
                    context_features=batch["context_features"],
                )
                logits = output.logits[mask]
                distribution = model.distribution(logits)
                log_prob = distribution.log_prob(batch["actions"][mask])
                entropy = distribution.entropy()
                values = output.value[mask]
                advantages = batch["advantages"][mask]
                if self.normalize_advantage and advantages.numel() > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                log_ratio = log_prob - batch["log_prob"][mask]
                ratio = log_ratio.exp()
                policy_loss = -torch.min(
                    advantages * ratio, advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
                ).mean()
                value_loss = torch.nn.functional.mse_loss(values, batch["returns"][mask])
                entropy_loss = -entropy.mean()
                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
                if self.reference is not None and self.kl_coef > 0:
                    reference = self._reference_logits(batch, batch_segments, reference_logits)
                    kl = kl_divergence(logits, reference, model.action_heads.sizes).mean()
                    loss = loss + self.kl_coef * kl
                    logs["kl_to_reference"].append(float(kl.detach()))
                if self._bc_batches is not None:
                    bc_loss = self._bc_loss()
                    loss = loss + self.bc_coef * bc_loss
                    logs["bc_loss"].append(float(bc_loss.detach()))
                with torch.no_grad():
                    approx_kl = float(((ratio - 1) - log_ratio).mean())
                approx_kls.append(approx_kl)
                logs["policy_gradient_loss"].append(float(policy_loss.detach()))
                logs["value_loss"].append(float(value_loss.detach()))
                logs["entropy_loss"].append(float(entropy_loss.detach()))
                logs["clip_fraction"].append(float(((ratio - 1).abs() > clip_range).float().mean()))
                if self.target_kl is not None and approx_kl > 1.5 * self.target_kl:
                    continue_training = False
                    break
                if not math.isfinite(float(loss.detach())):
                    raise TrainingDiverged(
                        f"PPO loss is {float(loss.detach())} at update {self._n_updates}: lower rl.lr; "
                        "the last checkpoint is intact"
                    )
                self.policy.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
            logs["approx_kl"].extend(approx_kls)
            self._n_updates += 1
            if not continue_training:
                break
        explained = explained_variance(buffer.values.flatten(), buffer.returns.flatten())
        for name, values in logs.items():
            self.logger.record(f"train/{name}", float(np.mean(values)))
        self.logger.record("train/explained_variance", explained)
        self.logger.record("train/clip_range", clip_range)
        self.logger.record("train/kl_coef", self.kl_coef)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.kl_coef *= self.kl_decay
        self.timings["update"] += time.perf_counter() - began
        if self.after_update is not None:
            self.after_update(self)


# -- building and running -------------------------------------------------------------------


def make_env(env_id: str, n_envs: int, vec_env: str, seed: int, max_tokens: int, **env_kwargs: Any) -> VecEnv:
    """A Monitor-wrapped SB3 vector env of ``make_tokenized_env(env_id)``."""
    gym.spec(env_id)  # a clear error for an unknown id, before any subprocess starts
    factory = partial(make_tokenized_env, env_id, max_tokens=max_tokens, **env_kwargs)
    cls = SubprocVecEnv if vec_env == "subproc" and n_envs > 1 else DummyVecEnv
    kwargs = {"start_method": "spawn"} if cls is SubprocVecEnv else None
    return make_vec_env(factory, n_envs=n_envs, seed=seed, vec_env_cls=cls, vec_env_kwargs=kwargs)


def build_ppo(
    run: RunConfig,
    env: VecEnv,
    init: str | None = None,
    reference: str | None = None,
    tensorboard: str | None = None,
    verbose: int = 0,
) -> SequencePPO:
    """``init``: weights to start from (else ``run.policy`` from scratch); ``reference``: the
    KL target (default ``init``)."""
    cfg = run.rl
    return SequencePPO(
        env,
        policy_config=run.policy.to_dict(),
        init=init,
        reference=reference,
        kl_coef=cfg.kl_coef,
        kl_decay=cfg.kl_decay,
        bc_coef=cfg.bc_coef,
        bc_data=cfg.bc_data,
        bc_batch_size=cfg.bc_batch_size,
        learning_rate=cfg.lr,
        n_steps=cfg.n_steps,
        batch_size=cfg.batch_size,
        n_epochs=cfg.n_epochs,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        clip_range=cfg.clip_range,
        ent_coef=cfg.ent_coef,
        vf_coef=cfg.vf_coef,
        max_grad_norm=cfg.max_grad_norm,
        target_kl=cfg.target_kl or None,
        tensorboard_log=tensorboard,
        seed=cfg.seed,
        device=resolve_device(cfg.device),
        verbose=verbose,
    )


def save_rl_checkpoint(
    directory: Path, algo: SequencePPO, run: RunConfig, env_id: str, init: str | None
) -> None:
    """config.json + model.safetensors (what eval/rollout/attention load) + trainer state.

    Diverged (NaN or inf) weights raise ``TrainingDiverged`` and a failed write (a full disk)
    ``CheckpointWriteError``; either way the previous checkpoint is left as it was."""
    intact = "the previous checkpoint is intact" if directory.exists() else "no checkpoint was written"
    writing = directory / WEIGHTS_NAME
    try:
        with atomic_directory(directory) as staging:
            algo.model.write_files(
                staging,
                extra={
                    "rl_timesteps": algo.num_timesteps,
                    "env_id": env_id,
                    "init": init,
                    "algorithm": "ppo",
                },
            )
            writing = directory / TRAINER_STATE
            torch.save(
                {
                    "num_timesteps": algo.num_timesteps,
                    "n_updates": algo._n_updates,
                    "kl_coef": algo.kl_coef,
                    "optimizer": algo.policy.optimizer.state_dict(),
                    # A resumed run samples the same actions an uninterrupted one would.
                    "rng": torch.get_rng_state(),
                    **({"cuda_rng": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
                },
                staging / TRAINER_STATE,
            )
            writing = directory / RUN_CONFIG
            (staging / RUN_CONFIG).write_text(
                json.dumps({**run.to_dict(), "env_id": env_id, "init": init}, indent=2)
            )
            writing = directory
    except NonFiniteWeightsError as error:
        raise TrainingDiverged(
            f"after {algo.num_timesteps} env steps: {error} (rl.lr); training stopped; {intact}"
        ) from None
    except (OSError, RuntimeError) as error:
        raise CheckpointWriteError(describe_write_failure(error, writing, intact)) from None


class _ResumableTensorBoard(TensorBoardOutputFormat):
    """SB3's TensorBoard output written straight into ``folder``; ``purge_step`` drops what an
    interrupted run logged after its checkpoint, so a resumed run continues the same curves."""

    def __init__(self, folder: str, purge_step: int | None = None) -> None:
        self.writer = SummaryWriter(log_dir=folder, purge_step=purge_step)
        self._is_closed = False


class _StopWhenRequested(BaseCallback):
    """Ends ``learn`` at the next env step once SIGINT or SIGTERM arrived."""

    def __init__(self, stop: StopRequest) -> None:
        super().__init__()
        self.stop = stop

    def _on_step(self) -> bool:
        return not self.stop


def check_init_matches_env(checkpoint: str, env: VecEnv, env_id: str, flag: str) -> None:
    """Refuse a checkpoint built for another action space or frame size, before any rollout."""
    path = Path(checkpoint) / CONFIG_NAME
    try:
        config = PolicyConfig.from_dict(json.loads(path.read_text())["policy"])
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"{flag} {checkpoint}: {path} is not a policy checkpoint's config ({error})"
        ) from None
    expected, actual = config.action_space.to_spec(), action_space_spec(env.action_space)
    if ActionSpaceConfig.from_spec(actual) != config.action_space:
        raise ValueError(
            f"{flag} {checkpoint}: the checkpoint acts in {expected} but {env_id} has {actual}; "
            f"use a checkpoint trained on {env_id} (or train from scratch without {flag})"
        )
    image = env.observation_space["image"].shape
    size = tuple(image[1:]) if image[0] == 3 and image[-1] != 3 else tuple(image[:2])
    if tuple(config.vision.image_size) != size:
        raise ValueError(
            f"{flag} {checkpoint}: the checkpoint reads {tuple(config.vision.image_size)} frames but "
            f"{env_id} gives {size}; use a checkpoint trained on {env_id}"
        )


def train_rl(
    run: RunConfig,
    env_id: str,
    steps: int,
    out: str,
    init: str | None = None,
    resume: bool = False,
    env_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
    verbose: int = 0,
) -> dict[str, Any]:
    """PPO for ``steps`` env steps; writes ``out/checkpoint`` (the final policy), ``out/tb``
    (SB3's scalars + per-task success) and ``out/summary.json``. ``resume`` continues from
    ``out/checkpoint`` (weights, optimizer, step count; envs restart with fresh episodes).

    SIGINT or SIGTERM ends the run at the next env step with a checkpoint of the last update
    and raises ``TrainingInterrupted`` (its message says how to resume)."""
    cfg = run.rl
    out_dir = Path(out)
    checkpoint = out_dir / CHECKPOINT
    start_from = init
    if resume:
        if not (checkpoint / TRAINER_STATE).exists():
            raise ValueError(
                f"--resume: {out_dir} holds no RL checkpoint ({checkpoint / TRAINER_STATE} does not exist), "
                "so there is nothing to continue: run without --resume to start it"
            )
        start_from = str(checkpoint)
    with children_ignore_interrupts():  # subprocess envs start here and leave Ctrl-C to us
        env = make_env(env_id, cfg.n_envs, cfg.vec_env, cfg.seed, cfg.max_tokens, **(env_kwargs or {}))
    stop = StopRequest()
    logger: Logger | None = None
    try:
        if start_from:
            check_init_matches_env(start_from, env, env_id, "--resume" if resume else "--init")
        out_dir.mkdir(parents=True, exist_ok=True)
        algo = build_ppo(run, env, init=start_from, reference=init, verbose=verbose)
        if resume:
            state = torch.load(checkpoint / TRAINER_STATE, map_location=algo.device, weights_only=True)
            algo.policy.optimizer.load_state_dict(state["optimizer"])
            algo.num_timesteps = int(state["num_timesteps"])
            algo._n_updates = int(state["n_updates"])
            algo.kl_coef = float(state["kl_coef"])
            if "rng" in state:  # building the PPO above reseeded torch
                torch.set_rng_state(state["rng"])
                if "cuda_rng" in state and torch.cuda.is_available():
                    torch.cuda.set_rng_state_all(state["cuda_rng"])
        # SB3 logs at step = num_timesteps; a resumed run keeps the checkpoint's own point.
        formats = [_ResumableTensorBoard(str(out_dir / "tb"), algo.num_timesteps + 1 if resume else None)]
        if verbose:
            formats.append(HumanOutputFormat(sys.stdout))
        logger = Logger(str(out_dir / "tb"), formats)
        algo.set_logger(logger)
        last_saved = [algo.num_timesteps]
        trained = [algo.num_timesteps]

        def after_update(current: SequencePPO) -> None:
            trained[0] = current.num_timesteps
            if current.num_timesteps - last_saved[0] >= cfg.checkpoint_every:
                save_rl_checkpoint(checkpoint, current, run, env_id, init)
                last_saved[0] = current.num_timesteps

        algo.after_update = after_update
        started = time.perf_counter()
        start_steps = algo.num_timesteps
        with stop.catching():
            # SB3 counts ``total_timesteps`` from where a continued run stands.
            algo.learn(
                total_timesteps=max(steps - algo.num_timesteps, 0) if resume else steps,
                reset_num_timesteps=not resume,
                callback=_StopWhenRequested(stop),
                progress_bar=progress,
            )
        wall = time.perf_counter() - started
        if stop:
            algo.num_timesteps = trained[0]  # the steps of an unfinished rollout trained nothing
        save_rl_checkpoint(checkpoint, algo, run, env_id, init)
    finally:
        env.close()
        if logger is not None:
            logger.close()
    if stop:
        assert stop.signal_number is not None
        command = f"instructcraft rl --env {env_id} --steps {steps} --out {out_dir} --resume"
        raise TrainingInterrupted(
            f"interrupted after {algo.num_timesteps} of {steps} env steps: checkpoint written to "
            f"{checkpoint}; resume with `{command}` (and the same --config/--set/--tasks"
            f"{f', --init {init}' if init else ''})",
            stop.signal_number,
        )
    summary = {
        "env_id": env_id,
        "init": init,
        "timesteps": algo.num_timesteps,
        "steps_per_s": (algo.num_timesteps - start_steps) / max(wall, 1e-9),
        "success_rate_per_task": algo.task_success(),
        "episode_return_mean": safe_mean([e["r"] for e in algo.ep_info_buffer])
        if algo.ep_info_buffer
        else None,
        "timings_s": dict(algo.timings),
        "checkpoint": str(checkpoint),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
