"""The sequence PPO: SB3's ``PPO`` with the instruction policy, whose rollouts (train/rl/rollout.py)
and updates follow episodes in time.

The update cuts each env's rollout at episode boundaries into segments, prepends the frames of
the episode before the rollout (up to ``max_history - 1``, context only, no loss), packs segments
into minibatches of about ``batch_size`` steps (train/rl/buffer.py) and runs the parallel causal
``forward``: every frame is encoded once per epoch instead of once per sample and window, and
only the rollout steps are queried (``query_mask``; the context frames are keys only).
Optional terms: a KL penalty toward a reference policy (the BC policy of ``init``) with a
decaying coefficient, and an auxiliary BC loss on demonstrations.

Shape legend: N envs, S segments in a minibatch, L steps per segment (context included),
K sum of action sizes.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import VecEnv

from policies import InstructionPolicy
from train.batch import bc_loss
from train.data import ChunkDataset, make_loader
from train.errors import SettingError, TrainingDiverged
from train.rl.buffer import (
    RolloutBatch,
    Segment,
    SequenceRolloutBuffer,
    kl_divergence,
    pack_minibatches,
    split_segments,
)
from train.rl.policy import SB3PolicyAdapter
from train.rl.rollout import SequenceRollouts
from train.rl.sb3 import SB3Internals


class SequencePPO(SequenceRollouts, SB3Internals, PPO):
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
        super().__init__(SB3PolicyAdapter, env, policy_kwargs=policy_kwargs, **ppo_kwargs)
        self.kl_coef = kl_coef
        self.kl_decay = kl_decay
        self.reference: InstructionPolicy | None = None
        reference = reference or init
        if kl_coef > 0:
            if not reference:
                raise SettingError("rl.kl_coef > 0 pulls toward the --init policy: pass --init DIR")
            self.reference = InstructionPolicy.from_pretrained(reference, map_location=self.device).eval()
            self.reference.requires_grad_(False)
        self.bc_coef = bc_coef
        self._bc_batches = None
        if bc_coef > 0:
            window = self.policy.model.config.fusion_kwargs.max_history
            chunks = ChunkDataset(bc_data, min(window, 32))
            self._bc_batches = iter(make_loader(chunks, bc_batch_size, 0, self.seed or 0, 0, False))
        self._init_rollouts()
        self.timings: dict[str, float] = defaultdict(float)
        self.after_update: Callable[[SequencePPO], None] | None = None

    def _minibatch(
        self, segments: list[Segment], context_features: dict[int, torch.Tensor] | None = None
    ) -> RolloutBatch:
        """The segments padded into (S, L) tensors (``SequenceRolloutBuffer.padded_batch``); the
        context's pixels only when the reference policy reads them (it has no cached encodings)."""
        with_reference = self.reference is not None and self.kl_coef > 0
        return self.rollout_buffer.padded_batch(
            segments, self.policy, context_features, context_frames=with_reference
        )

    def _bc_loss(self) -> torch.Tensor:
        """The BC term on the next batch of demonstrations (every instruction given)."""
        batch = next(self._bc_batches).to(self.device)
        return bc_loss(self.model, batch, keep_instructions=True).policy

    def _reference_logits(
        self, batch: RolloutBatch, segments: list[Segment], cache: dict[tuple[int, int], torch.Tensor]
    ) -> torch.Tensor:
        """The reference policy's logits at the minibatch's rollout steps, in ``logits[mask]``
        order (row by row), from ``cache`` for segments seen in an earlier epoch."""
        missing = [row for row, seg in enumerate(segments) if (seg.env, seg.start) not in cache]
        if missing:
            with torch.no_grad():
                logits = self.reference(
                    batch.frames[missing],
                    [batch.instructions[row] for row in missing],
                    times=batch.times[missing],
                    frame_mask=batch.frame_mask[missing],
                    query_mask=batch.loss_mask[missing],
                ).logits
            mask = batch.loss_mask[missing]
            for index, row in enumerate(missing):
                seg = segments[row]
                cache[(seg.env, seg.start)] = logits[index][mask[index]]
        return torch.cat([cache[(seg.env, seg.start)] for seg in segments])

    def train(self) -> None:
        began = time.perf_counter()
        self.policy.set_training_mode(True)
        self.update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self.progress_remaining)
        buffer: SequenceRolloutBuffer = self.rollout_buffer
        contexts = [len(c["frames"]) for c in buffer.context]
        segments = split_segments(buffer.episode_starts.astype(bool), contexts)
        rng = np.random.default_rng([self.seed or 0, self.updates])
        context_features = self._encode_context(buffer)
        # The reference policy is frozen: its logits at each rollout step are computed in the first
        # epoch and reused by the later ones ({(env, start): (steps, logits)}).
        reference_logits: dict[tuple[int, int], torch.Tensor] = {}
        logs: dict[str, list[float]] = defaultdict(list)
        continue_training = True
        for _epoch in range(self.n_epochs):
            approx_kls = []
            for batch_segments in pack_minibatches(segments, self.batch_size, rng):
                batch = self._minibatch(batch_segments, context_features)
                loss, approx_kl = self._minibatch_loss(
                    batch, batch_segments, clip_range, reference_logits, logs
                )
                approx_kls.append(approx_kl)
                if self.target_kl is not None and approx_kl > 1.5 * self.target_kl:
                    continue_training = False
                    break
                self._gradient_step(loss)
            logs["approx_kl"].extend(approx_kls)
            self.updates += 1
            if not continue_training:
                break
        self._record_update(buffer, logs, clip_range)
        self.kl_coef *= self.kl_decay
        self.timings["update"] += time.perf_counter() - began
        if self.after_update is not None:
            self.after_update(self)

    @torch.no_grad()
    def _encode_context(self, buffer: SequenceRolloutBuffer) -> dict[int, torch.Tensor]:
        """{env: its context frames' encodings}. The frames from before the rollout are read,
        never trained on: encode them once per update, with the weights the rollout used,
        instead of once per epoch."""
        return {
            env: self.model.frame_encoder(torch.from_numpy(np.stack(context["frames"])).to(self.device))
            for env, context in enumerate(buffer.context)
            if context["frames"]
        }

    def _minibatch_loss(
        self,
        batch: RolloutBatch,
        segments: list[Segment],
        clip_range: float,
        reference_logits: dict[tuple[int, int], torch.Tensor],
        logs: dict[str, list[float]],
    ) -> tuple[torch.Tensor, float]:
        """The clipped PPO loss of one minibatch (plus the KL and BC terms when they are on) and
        the approximate KL to the rollout policy; each term is appended to ``logs``."""
        model = self.model
        mask = batch.loss_mask
        output = model(
            batch.frames,
            batch.instructions,
            times=batch.times,
            frame_mask=batch.frame_mask,
            drop_instruction=torch.zeros(len(batch), dtype=torch.bool),
            context_mask=~mask,  # earlier frames: keys/values only, no encoder gradient
            context_features=batch.context_features,
            query_mask=mask,  # outputs at the rollout steps only, not at the context or padding
        )
        logits = output.logits[mask]
        distribution = model.distribution(logits)
        log_prob = distribution.log_prob(batch.actions[mask])
        entropy = distribution.entropy()
        values = output.value[mask]
        advantages = batch.advantages[mask]
        if self.normalize_advantage and advantages.numel() > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        log_ratio = log_prob - batch.old_log_prob[mask]
        ratio = log_ratio.exp()
        policy_loss = -torch.min(
            advantages * ratio, advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
        ).mean()
        value_loss = torch.nn.functional.mse_loss(values, batch.returns[mask])
        entropy_loss = -entropy.mean()
        loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
        if self.reference is not None and self.kl_coef > 0:
            reference = self._reference_logits(batch, segments, reference_logits)
            kl = kl_divergence(logits, reference, model.action_heads.sizes).mean()
            loss = loss + self.kl_coef * kl
            logs["kl_to_reference"].append(float(kl.detach()))
        if self._bc_batches is not None:
            bc_loss = self._bc_loss()
            loss = loss + self.bc_coef * bc_loss
            logs["bc_loss"].append(float(bc_loss.detach()))
        with torch.no_grad():
            approx_kl = float(((ratio - 1) - log_ratio).mean())
        logs["policy_gradient_loss"].append(float(policy_loss.detach()))
        logs["value_loss"].append(float(value_loss.detach()))
        logs["entropy_loss"].append(float(entropy_loss.detach()))
        logs["clip_fraction"].append(float(((ratio - 1).abs() > clip_range).float().mean()))
        return loss, approx_kl

    def _gradient_step(self, loss: torch.Tensor) -> None:
        if not math.isfinite(float(loss.detach())):
            raise TrainingDiverged(
                f"PPO loss is {float(loss.detach())} at update {self.updates}: lower rl.lr; "
                "the last checkpoint is intact"
            )
        self.policy.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        self.policy.optimizer.step()

    def _record_update(
        self, buffer: SequenceRolloutBuffer, logs: dict[str, list[float]], clip_range: float
    ) -> None:
        explained = explained_variance(buffer.values.flatten(), buffer.returns.flatten())
        for name, values in logs.items():
            self.logger.record(f"train/{name}", float(np.mean(values)))
        self.logger.record("train/explained_variance", explained)
        self.logger.record("train/clip_range", clip_range)
        self.logger.record("train/kl_coef", self.kl_coef)
        self.logger.record("train/n_updates", self.updates, exclude="tensorboard")
        # SB3 writes what was recorded at the next rollout's log, so the last update's terms (a
        # one-rollout run's only ones) would never reach TensorBoard: write them now, at the step
        # of the rollout they trained on.
        self.logger.dump(step=self.num_timesteps)
