"""The runtime agent: holds the instruction, the frame history and the policy's cache.

Every env <-> model conversion happens here (``_frame_tensor``, ``_to_env_action``).
"""

from __future__ import annotations

import os
import warnings
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from agent.errors import AgentSettingError, PlanError
from agent.plan import Plan, PlanFollower
from policies import CheckpointError, InstructionPolicy, PolicyState


class Agent:
    """Acts with an ``InstructionPolicy`` one step at a time.

    Args:
        policy: the policy (moved to ``device``, put in eval mode).
        device: "cpu", "cuda", ... ("auto" picks CUDA when available).
        seed: seeds action sampling.
        capture_attention: keep each step's attention weights for ``attention()`` (slower: the
            weights are computed explicitly instead of by the fused attention kernel).
    """

    def __init__(
        self,
        policy: InstructionPolicy,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        capture_attention: bool = False,
    ) -> None:
        if str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.policy = policy.to(self.device).eval()
        self.generator = torch.Generator(device=self.device)
        if seed is not None:
            self.generator.manual_seed(seed)
        self.capture_attention = capture_attention
        self.instruction: str | None = None
        self.history: deque[np.ndarray] = deque(maxlen=policy.config.fusion_kwargs.max_history)
        self._state: PolicyState | None = None
        self._unconditional: PolicyState | None = None
        self._last_extras: dict[str, torch.Tensor] = {}
        self._last_probs: torch.Tensor | None = None
        self._last_logits: torch.Tensor | None = None
        self._started = False
        self._truncate = False
        # Instructions cut to the text encoder's limit (only with reset(..., truncate=True)).
        self.truncated_instructions: list[str] = []
        self.plan: PlanFollower | None = None  # the plan being followed this episode, if any
        self._checked_plans: set[Plan] = set()

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        seed: int | None = None,
        capture_attention: bool = False,
    ) -> Agent:
        """Load a checkpoint directory, a shipped agent as ``"pretrained:<name>"`` or a Hugging
        Face Hub model as ``"user/name"`` when no such local path exists (``agent.pretrained``);
        any failure is a ``CheckpointError`` naming it."""
        from agent.pretrained import resolve_checkpoint

        directory = resolve_checkpoint(directory)
        try:
            policy = InstructionPolicy.from_pretrained(directory, map_location="cpu")
        except CheckpointError:
            raise
        except Exception as error:  # a corrupt or foreign model.safetensors, an unreadable file
            raise CheckpointError(
                f"cannot load the checkpoint in {directory}: {type(error).__name__}: {error}. "
                "Pass a checkpoint directory written by `instructcraft bc` or `instructcraft rl`"
            ) from None
        return cls(policy, device=device, seed=seed, capture_attention=capture_attention)

    @property
    def step_count(self) -> int:
        return 0 if self._state is None else int(self._state.time[0])

    def seed_episode(self, seed: int) -> None:
        """Seed the sampled actions of the episode about to start (reproducible per episode)."""
        self.generator.manual_seed(seed)

    def check_env(self, env: Any) -> None:
        """Raise a clear error if ``env``'s action space is not the policy's."""
        from envs.spaces import action_space_spec

        self.policy.check_action_space(action_space_spec(env.action_space))

    def check_instruction(self, instruction: str, truncate: bool = False) -> None:
        """Raise ``AgentSettingError`` (a ValueError) if the text encoder would cut ``instruction`` short (words past its
        ``max_tokens`` would be ignored); with ``truncate`` warn once and record it instead."""
        limit = self.policy.config.text.max_tokens
        tokens = self.policy.text_encoder.token_count(instruction)
        if tokens <= limit:
            return
        from envs.wrappers import quote_instruction

        quoted = quote_instruction(instruction)
        if not truncate:
            raise AgentSettingError(
                f"instruction {quoted} has {tokens} tokens, more than the text encoder's "
                f"max_tokens={limit}, so its end would be ignored: shorten it, or pass truncate=True "
                "to keep the first tokens"
            )
        if instruction not in self.truncated_instructions:
            self.truncated_instructions.append(instruction)
            warnings.warn(
                f"instruction {quoted} has {tokens} tokens; the policy reads only the first "
                f"{limit} (text max_tokens)",
                stacklevel=3,
            )

    @torch.no_grad()
    def reset(
        self,
        instruction: str | None = None,
        truncate: bool = False,
        *,
        plan: Plan | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        """Start an episode. ``instruction`` None: taken from the first observation.

        An instruction longer than the text encoder's ``max_tokens`` raises ValueError;
        ``truncate=True`` keeps its first tokens, warns once and records it in
        ``truncated_instructions``.

        With a ``plan`` (and the reset's ``info``) the agent follows the plan's instructions in
        turn instead: call ``observe(info)`` after every env step so it can move on.
        """
        self.plan = None
        if plan is not None:
            if instruction is not None:
                raise AgentSettingError("pass an instruction or a plan, not both")
            self.check_plan(plan)
            if plan.rules and "inventory" not in (info or {}):
                # A missing number would read as 0 and fire every "drink < 4" rule forever.
                raise PlanError(
                    f"{plan.source}: its rules read the status numbers crafter reports in "
                    "info['inventory'], and this env reports none: drop the rules or use a Crafter env"
                )
            self.plan = PlanFollower(plan)
            instruction = self.plan.start(info or {})
        if instruction is not None:
            self.check_instruction(instruction, truncate)
        self.instruction = instruction
        self.history.clear()
        self._state = None
        self._unconditional = None
        self._last_extras = {}
        self._started = True
        self._truncate = truncate
        if instruction is not None:
            self._state = self.policy.initial_state([instruction])

    def check_plan(self, plan: Plan) -> None:
        """Refuse a plan with an instruction the text encoder would cut short (once per plan:
        episodes that follow the same plan do not tokenize it again)."""
        if plan not in self._checked_plans:
            plan.check_lengths(self.policy.text_encoder.token_count, self.policy.config.text.max_tokens)
            self._checked_plans.add(plan)

    def observe(self, info: dict[str, Any]) -> str | None:
        """Tell a plan-following agent what the env step it just acted on reported (its info);
        the plan moves on when that step unlocked its current achievement or used up its budget,
        and the next ``act`` reads the new instruction. Without a plan nothing changes. Returns
        the instruction in effect for the next step."""
        if self.plan is not None:
            instruction = self.plan.observe(info)
            if instruction != self.instruction:
                self.switch_instruction(instruction)
        return self.instruction

    @torch.no_grad()
    def switch_instruction(self, instruction: str | None, truncate: bool | None = None) -> None:
        """Follow ``instruction`` from the next ``act`` on, keeping the episode's history (a plan
        moving to its next step). With cross-attention only the query changes; a fusion whose
        cache read the old text (FiLM, self-attention) re-encodes the held frames under the new
        one, so either way the next action is what an agent told ``instruction`` from the start
        of the same frames would choose. None means the learned null instruction."""
        if not self._started:
            raise RuntimeError("call agent.reset(instruction) at the start of each episode")
        truncate = self._truncate if truncate is None else truncate
        if instruction is not None:
            self.check_instruction(instruction, truncate)
        self.instruction = instruction
        if self._state is None or not self.history:
            self._state = self.policy.initial_state([instruction])
            return
        if self.policy.switch_instruction(self._state, [instruction]):
            return
        state = self.policy.initial_state([instruction])
        state.time[:] = self.step_count - len(self.history)
        for frame in self.history:
            self.policy.step(state, self._frame_tensor(frame))
        self._state = state

    def _frame_tensor(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, H, W, 3) uint8 on the device."""
        image = np.asarray(image)
        expected = tuple(self.policy.config.vision.image_size)
        if image.dtype != np.uint8 or image.shape != (*expected, 3):
            raise ValueError(f"expected image {(*expected, 3)} uint8, got {image.shape} {image.dtype}")
        return torch.from_numpy(np.ascontiguousarray(image)).to(self.device)[None]

    def _to_env_action(self, action: torch.Tensor) -> int | np.ndarray:
        if self.policy.config.action_space.type == "Discrete":
            return int(action.reshape(-1)[0])
        return action.reshape(-1).cpu().numpy().astype(np.int64)

    @torch.no_grad()
    def _ensure_unconditional(self) -> PolicyState:
        """The null-instruction branch for guidance, rebuilt from the held history if needed."""
        if self._unconditional is None:
            state = self.policy.initial_state([None])
            first = self.step_count - len(self.history)
            state.time[:] = first
            for frame in self.history:
                self.policy.step(state, self._frame_tensor(frame))
            self._unconditional = state
        return self._unconditional

    @torch.no_grad()
    def act(
        self, observation: dict[str, Any] | np.ndarray, deterministic: bool = False, cfg_scale: float = 0.0
    ) -> int | np.ndarray:
        """One action for one env observation (a dict with ``image``, or the image itself)."""
        if not self._started:
            raise RuntimeError("call agent.reset(instruction) at the start of each episode")
        image = observation["image"] if isinstance(observation, dict) else observation
        if self._state is None:
            text = observation.get("instruction") if isinstance(observation, dict) else None
            if text:
                self.check_instruction(text, self._truncate)
            self.instruction = text
            self._state = self.policy.initial_state([text])
        if cfg_scale:
            unconditional = self._ensure_unconditional()
        frame = self._frame_tensor(image)
        output = self.policy.step(self._state, frame, return_attention=self.capture_attention)
        logits = output.logits
        if cfg_scale:
            uncond = self.policy.step(unconditional, frame).logits
            logits = self.policy.guided(logits, uncond, cfg_scale)
        elif self._unconditional is not None:
            self.policy.step(self._unconditional, frame)  # keep the branch in step for later guidance
        self.history.append(np.array(image, copy=True))  # env buffers may be reused
        distribution = self.policy.distribution(logits)
        action = distribution.mode() if deterministic else distribution.sample(self.generator)
        self._last_extras = output.extras
        self._last_probs = distribution.probs_of(action)
        self._last_logits = logits
        self._last_value = output.value
        return self._to_env_action(action)

    def acting(
        self, deterministic: bool = False, cfg_scale: float = 0.0
    ) -> Callable[[dict[str, Any], dict[str, Any]], int | np.ndarray]:
        """``act`` as the ``act(observation, info)`` callable of ``envs.episodes.play_episode``.

        Only the image is passed on: the instruction is the one given to ``reset``, and None
        there means the learned null instruction, not the env's text."""

        def act(observation: dict[str, Any], info: dict[str, Any]) -> int | np.ndarray:
            return self.act({"image": observation["image"]}, deterministic=deterministic, cfg_scale=cfg_scale)

        return act

    @property
    def last_logits(self) -> torch.Tensor:
        """The logits the last ``act`` chose from, (1, sum of action sizes), guided when it was
        given a ``cfg_scale``; ``policy.distribution(agent.last_logits)`` scores other actions."""
        if self._last_logits is None:
            raise RuntimeError("no step taken yet: call act() first")
        return self._last_logits

    def last_action_probability(self) -> float:
        return float(self._last_probs.reshape(-1)[0]) if self._last_probs is not None else float("nan")

    def attention(self) -> dict[str, np.ndarray]:
        """What the policy looked at on the last step, in time order over the visible history.

        Attention fusions: ``weights`` (blocks, heads, F, P) over F visible frames and P tokens
        each, ``frame_times`` (F,); self-attention adds ``text_weights`` (blocks, heads).
        Vector fusions: ``history_weights`` (F,) and their own signals (``gate`` (D,), ...).
        """
        if not self.capture_attention:
            raise RuntimeError("attention is not captured: create the agent with capture_attention=True")
        extras = self._last_extras
        if not extras:
            raise RuntimeError("no step taken yet: call act() first")
        out: dict[str, np.ndarray] = {}
        if "slot_time" in extras:
            times = extras["slot_time"][0].cpu()
            visible = extras["slot_visible"][0].cpu()
            per_frame = self.policy.config.vision.frame_tokens if "attention" in extras else 1
            frame_times = times.reshape(-1, per_frame)[:, 0]
            frame_visible = visible.reshape(-1, per_frame)[:, 0]
            order = torch.argsort(frame_times[frame_visible])
            out["frame_times"] = frame_times[frame_visible][order].numpy()
            if "attention" in extras:
                weights = extras["attention"][0].float().cpu()  # (blocks, heads, S)
                weights = weights.reshape(*weights.shape[:2], -1, per_frame)[:, :, frame_visible][:, :, order]
                out["weights"] = weights.numpy()
            if "history_weights" in extras:
                history = extras["history_weights"][0].float().cpu().reshape(-1)[frame_visible][order]
                out["history_weights"] = history.numpy()
        for name, value in extras.items():
            if name not in ("attention", "slot_time", "slot_visible", "history_weights"):
                out[name] = value[0].float().cpu().numpy()
        return out

    def cache_nbytes(self) -> int:
        total = 0 if self._state is None else self.policy.cache_nbytes(self._state)
        if self._unconditional is not None:
            total += self.policy.cache_nbytes(self._unconditional)
        return total
