"""The fusions, one a module. Importing a module registers its fusions (``@register_fusion`` in
``policies.config``): adding a fusion is its file plus its module's name on the import below."""

from __future__ import annotations

from policies.config import FUSIONS as _REGISTERED
from policies.fusion import cross_attention, film, gmu, late, operators, pooling, self_attention  # noqa: F401
from policies.fusion.base import Fusion, FusionOutput, HistoryRing, visibility

FUSIONS: dict[str, type[Fusion]] = _REGISTERED  # fusion_type -> class

__all__ = ["FUSIONS", "Fusion", "FusionOutput", "HistoryRing", "visibility"]
