"""Memory techniques: each a small frozen config and a function that applies it."""

from exporters.techniques.freeze import FreezeConfig, apply_freeze
from exporters.techniques.recompute import RecomputeConfig, plan_recomputation, recompute_activations

__all__ = ["FreezeConfig", "RecomputeConfig", "apply_freeze", "plan_recomputation", "recompute_activations"]
