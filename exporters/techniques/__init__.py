"""Memory techniques: each a small frozen config and a function that applies it."""

from exporters.techniques.freeze import FreezeConfig, apply_freeze
from exporters.techniques.fused_update import FusedUpdateConfig, fuse_optimizer_update
from exporters.techniques.int8_weights import (
    Int8WeightsConfig,
    dequantize_weights,
    quantization_report,
    quantize_frozen_weights,
)
from exporters.techniques.lora import LoraConfig, apply_lora, merge_lora
from exporters.techniques.recompute import RecomputeConfig, plan_recomputation, recompute_activations

__all__ = [
    "FreezeConfig",
    "FusedUpdateConfig",
    "Int8WeightsConfig",
    "LoraConfig",
    "RecomputeConfig",
    "apply_freeze",
    "apply_lora",
    "dequantize_weights",
    "fuse_optimizer_update",
    "merge_lora",
    "plan_recomputation",
    "quantization_report",
    "quantize_frozen_weights",
    "recompute_activations",
]
