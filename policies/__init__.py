"""instructcraft policies: pure torch modules and their configs (no gymnasium, no SB3)."""

from __future__ import annotations

from policies.config import ActionSpaceConfig, FusionConfig, PolicyConfig, TextConfig, VisionConfig
from policies.errors import (
    CheckpointError,
    CheckpointWriteError,
    ConfigError,
    NonFiniteWeightsError,
    PoliciesError,
)
from policies.fusion import FUSIONS
from policies.heads import FactorizedCategorical
from policies.persist import with_legacy_defaults
from policies.policy import InstructionPolicy, PolicyOutput, PolicyState

__all__ = [
    "FUSIONS",
    "ActionSpaceConfig",
    "CheckpointError",
    "CheckpointWriteError",
    "ConfigError",
    "FactorizedCategorical",
    "FusionConfig",
    "InstructionPolicy",
    "NonFiniteWeightsError",
    "PoliciesError",
    "PolicyConfig",
    "PolicyOutput",
    "PolicyState",
    "TextConfig",
    "VisionConfig",
    "with_legacy_defaults",
]
