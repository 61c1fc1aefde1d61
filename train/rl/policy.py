"""The SB3 policy adapter: stable-baselines3's ``BasePolicy`` interface around an
``InstructionPolicy``, so SB3's PPO machinery (optimizer, ``predict``, training mode) can hold
the instruction-conditioned policy.

Shape legend: N envs, H, W, 3 image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy

from envs.data.store import action_space_spec
from envs.wrappers import ByteTokenizer
from policies import ActionSpaceConfig, InstructionPolicy, PolicyConfig, PolicyState
from train.errors import SettingError


class SB3PolicyAdapter(BasePolicy):
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
            raise SettingError(
                f"the fusion policy needs observations with {sorted(missing)}; wrap the env with "
                "envs.wrappers.make_tokenized_env (or TokenizeInstruction)"
            )
        if not isinstance(action_space, (spaces.Discrete, spaces.MultiDiscrete)):
            raise SettingError(
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
