"""Experts that produce demonstrations: ``make_expert(name)``."""

from __future__ import annotations

from envs.errors import EnvSettingError
from envs.experts.babyai_expert import BabyAIExpert
from envs.experts.base import Expert
from envs.experts.crafter_expert import CrafterExpert, CrafterNightExpert
from envs.experts.crafter_view_expert import CrafterViewExpert

EXPERTS: dict[str, type[Expert]] = {
    CrafterExpert.name: CrafterExpert,
    CrafterNightExpert.name: CrafterNightExpert,
    CrafterViewExpert.name: CrafterViewExpert,
    BabyAIExpert.name: BabyAIExpert,
}


def make_expert(name: str, seed: int = 0) -> Expert:
    if name not in EXPERTS:
        raise EnvSettingError(f"unknown expert {name!r}; known experts: {sorted(EXPERTS)}")
    return EXPERTS[name](seed=seed)


def default_expert_for(env_id: str) -> str:
    """The expert that solves ``env_id``'s tasks (its registered ``EnvKind``'s)."""
    from envs import env_kind

    expert = env_kind(env_id).expert
    if expert is None:
        raise EnvSettingError(
            f"no expert known for env {env_id!r}; pass --expert with one of {sorted(EXPERTS)}"
        )
    return expert


__all__ = [
    "EXPERTS",
    "BabyAIExpert",
    "CrafterExpert",
    "CrafterNightExpert",
    "CrafterViewExpert",
    "Expert",
    "default_expert_for",
    "make_expert",
]
