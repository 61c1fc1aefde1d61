"""Rollouts of the sequence PPO: the policy steps incrementally, one frame per env per step, with
a K/V cache per env (``InstructionPolicy.step``); envs that finish restart their row with
``reset_rows``. At the start of each rollout the cache is rebuilt from the running episodes'
last frames under the current weights, so the log-probabilities the update recomputes equal the
rollout's. Those frames (up to ``max_history - 1`` per env) go into the buffer as the context
the update prepends to each env's first segment.

SB3 keeps this loop in ``OnPolicyAlgorithm.collect_rollouts``; here it is ``SequenceRollouts``,
mixed into ``SequencePPO`` ahead of SB3's ``PPO``.

Shape legend: N envs, H, W, 3 image.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from policies import InstructionPolicy, PolicyState
from train.rl.buffer import SequenceRolloutBuffer


class SequenceRollouts:
    """``collect_rollouts`` for a PPO whose policy reads a growing frame history, plus per-task
    success rates. The class it is mixed into is an SB3 ``PPO`` (``policy``, ``n_envs``, ...) with
    ``SB3Internals`` (``last_observation``, ...) and a ``timings`` dict; ``_init_rollouts`` sets
    this class's own state."""

    def _init_rollouts(self) -> None:
        self._episode_texts: list[str] = []
        self._contexts: list[deque] = []  # per env: (frame, time) of the running episode
        self._task_success: dict[str, deque] = defaultdict(lambda: deque(maxlen=100))

    @property
    def model(self) -> InstructionPolicy:
        return self.policy.model

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
        assert self.last_observation is not None, "no previous observation"
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        callback.on_rollout_start()
        started = time.perf_counter()
        obs = self.last_observation
        starts = np.asarray(self.last_episode_starts, dtype=bool)
        state = self._start_rollout(rollout_buffer, obs, starts)
        self.timings["inference"] += time.perf_counter() - started
        n_steps = 0
        first = True
        while n_steps < n_rollout_steps:
            began = time.perf_counter()
            actions, log_probs, values = self._act(rollout_buffer, state, obs, starts, restart=not first)
            first = False
            actions_np = actions.cpu().numpy()
            stepped = time.perf_counter()
            self.timings["inference"] += stepped - began
            new_obs, rewards, dones, infos = env.step(actions_np)
            self.timings["env"] += time.perf_counter() - stepped
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self.record_episode_infos(infos, dones)
            self._record_tasks(infos, dones)
            n_steps += 1
            began = time.perf_counter()
            self._bootstrap_truncated(state, obs, rewards, dones, infos)
            if isinstance(self.action_space, spaces.Discrete):
                actions_np = actions_np.reshape(-1, 1)
            rollout_buffer.add(obs, actions_np, rewards, self.last_episode_starts, values, log_probs)
            obs = new_obs
            self.last_observation = new_obs
            self.last_episode_starts = dones
            starts = np.asarray(dones, dtype=bool)
            self.timings["inference"] += time.perf_counter() - began
        self._finish_rollout(rollout_buffer, state, obs, starts, dones)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def _start_rollout(
        self, rollout_buffer: SequenceRolloutBuffer, obs: dict[str, np.ndarray], starts: np.ndarray
    ) -> PolicyState:
        """Hand each env's running-episode frames to the buffer as context and rebuild the
        cache from them."""
        window = self.model.config.fusion_kwargs.max_history
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
            return self._rebuild_state(self._episode_texts, starts)

    @torch.no_grad()
    def _act(
        self,
        rollout_buffer: SequenceRolloutBuffer,
        state: PolicyState,
        obs: dict[str, np.ndarray],
        starts: np.ndarray,
        restart: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One policy step of every env -> sampled actions, their log-probs and the values.
        With ``restart``, rows whose episode opens now start over first; the step's times go to
        the buffer and its frames to each env's context."""
        model = self.model
        if restart and starts.any():
            texts = self.policy.instructions(obs["instruction_ids"], obs["instruction_mask"])
            for e in np.flatnonzero(starts):
                self._contexts[e].clear()
                self._episode_texts[e] = texts[e]
            model.reset_rows(state, torch.from_numpy(starts), self._episode_texts)
        rollout_buffer.times[rollout_buffer.pos] = state.time.cpu().numpy()
        frames = self.policy.frames(obs["image"])
        out = model.step(state, frames)
        distribution = model.distribution(out.logits)
        actions = distribution.sample()
        log_probs = distribution.log_prob(actions)
        step_times = rollout_buffer.times[rollout_buffer.pos]
        for e in range(self.n_envs):
            self._contexts[e].append((frames[e].numpy(), int(step_times[e])))
        self._next_times = step_times + 1
        return actions, log_probs, out.value

    def _bootstrap_truncated(
        self,
        state: PolicyState,
        obs: dict[str, np.ndarray],
        rewards: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """Add gamma * V(last observation) to the reward of episodes cut off by a time limit
        (in place)."""
        truncated = np.array(
            [
                bool(d and info.get("terminal_observation") is not None and info.get("TimeLimit.truncated"))
                for d, info in zip(dones, infos, strict=True)
            ]
        )
        if truncated.any():
            # The value of the last observation needs that episode's history: step only those
            # rows (they restart next step).
            terminal = np.zeros_like(obs["image"])
            for e in np.flatnonzero(truncated):
                terminal[e] = infos[e]["terminal_observation"]["image"]
            with torch.no_grad():
                bootstrap = self.model.step(state, self.policy.frames(terminal), torch.from_numpy(truncated))
            for e in np.flatnonzero(truncated):
                rewards[e] += self.gamma * float(bootstrap.value[e])

    def _finish_rollout(
        self,
        rollout_buffer: SequenceRolloutBuffer,
        state: PolicyState,
        obs: dict[str, np.ndarray],
        starts: np.ndarray,
        dones: np.ndarray,
    ) -> None:
        """Returns and advantages, bootstrapped with the value of the observation after the
        rollout."""
        began = time.perf_counter()
        with torch.no_grad():
            texts = self.policy.instructions(obs["instruction_ids"], obs["instruction_mask"])
            self.model.reset_rows(state, torch.from_numpy(starts), texts)
            last_values = self.model.step(state, self.policy.frames(obs["image"])).value
        rollout_buffer.compute_returns_and_advantage(last_values=last_values, dones=dones)
        self.timings["inference"] += time.perf_counter() - began

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
