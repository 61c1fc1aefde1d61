"""Fusion registry: ``fusion_type`` -> class. Adding a fusion is one file, one line here and its
name in ``policies.config.FUSION_TYPES`` (config checks names without importing the fusions,
which import config)."""

from __future__ import annotations

from policies.fusion.base import Fusion, FusionOutput, HistoryRing, visibility
from policies.fusion.cross_attention import CrossAttentionFusion
from policies.fusion.film import FiLMFusion
from policies.fusion.gmu import GMUFusion
from policies.fusion.late import LateFusion
from policies.fusion.operators import AddFusion, BilinearFusion, ConcatFusion, MulFusion
from policies.fusion.pooling import PoolingFusion
from policies.fusion.self_attention import SelfAttentionFusion

FUSIONS: dict[str, type[Fusion]] = {
    "cross_attention": CrossAttentionFusion,
    "self_attention": SelfAttentionFusion,
    "pooling": PoolingFusion,
    "gmu": GMUFusion,
    "concat": ConcatFusion,
    "add": AddFusion,
    "mul": MulFusion,
    "bilinear": BilinearFusion,
    "film": FiLMFusion,
    "late": LateFusion,
}

__all__ = ["FUSIONS", "Fusion", "FusionOutput", "HistoryRing", "visibility"]
