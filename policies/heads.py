"""Action heads for Discrete and factorized MultiDiscrete spaces, a value head, and guidance.

Shape legend: ... any leading axes (B, or B and T), K = sum of the action sizes, A components.
"""

from __future__ import annotations

import torch
from torch import nn

from policies.config import ActionSpaceConfig


class FactorizedCategorical:
    """Independent categoricals over the components of a (Multi)Discrete action.

    logits (..., K) split by ``sizes``; actions long (..., A) (or (...) for one component).
    """

    def __init__(self, logits: torch.Tensor, sizes: tuple[int, ...]) -> None:
        self.logits = logits
        self.sizes = sizes
        self.parts = [part.log_softmax(-1) for part in logits.split(list(sizes), dim=-1)]

    def _components(self, actions: torch.Tensor) -> list[torch.Tensor]:
        if len(self.sizes) == 1 and actions.dim() == self.logits.dim() - 1:
            return [actions]
        return list(actions.unbind(-1))

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """(...) summed over components."""
        total = 0
        for part, action in zip(self.parts, self._components(actions), strict=True):
            total = total + part.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)
        return total

    def entropy(self) -> torch.Tensor:
        return sum(-(part.exp() * part).sum(-1) for part in self.parts)

    def _join(self, components: list[torch.Tensor]) -> torch.Tensor:
        return components[0] if len(self.sizes) == 1 else torch.stack(components, dim=-1)

    def mode(self) -> torch.Tensor:
        return self._join([part.argmax(-1) for part in self.parts])

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        components = []
        for part in self.parts:
            flat = part.exp().reshape(-1, part.shape[-1])
            drawn = torch.multinomial(flat, 1, generator=generator).reshape(part.shape[:-1])
            components.append(drawn)
        return self._join(components)

    def probs_of(self, actions: torch.Tensor) -> torch.Tensor:
        return self.log_prob(actions).exp()


class ActionHeads(nn.Module):
    """z (..., D) -> logits (..., K)."""

    def __init__(self, dim: int, action_space: ActionSpaceConfig) -> None:
        super().__init__()
        self.sizes = tuple(int(n) for n in action_space.sizes)
        self.linear = nn.Linear(dim, sum(self.sizes))
        nn.init.orthogonal_(self.linear.weight, gain=0.01)  # near-uniform initial policy
        nn.init.zeros_(self.linear.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z)

    def distribution(self, logits: torch.Tensor) -> FactorizedCategorical:
        return FactorizedCategorical(logits, self.sizes)


class ValueHead(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z).squeeze(-1)


def guide(
    conditional: torch.Tensor, unconditional: torch.Tensor, scale: float, sizes: tuple[int, ...]
) -> torch.Tensor:
    """Classifier-free guidance per component: (1 + s) * cond - s * uncond on log-probabilities."""
    if scale == 0:
        return conditional
    parts = []
    for cond, uncond in zip(
        conditional.split(list(sizes), -1), unconditional.split(list(sizes), -1), strict=True
    ):
        parts.append((1 + scale) * cond.log_softmax(-1) - scale * uncond.log_softmax(-1))
    return torch.cat(parts, dim=-1)
