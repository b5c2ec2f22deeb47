"""memwall exporters: PyTorch model -> on-device training bundle (ExecuTorch or ONNX Runtime)."""

from exporters.bundle import Bundle, BundleError, Manifest, load_bundle
from exporters.config import OptimizerConfig
from exporters.export import ModelSpec, export_bundle
from exporters.techniques import FreezeConfig, apply_freeze

__all__ = [
    "Bundle",
    "BundleError",
    "FreezeConfig",
    "Manifest",
    "ModelSpec",
    "OptimizerConfig",
    "apply_freeze",
    "export_bundle",
    "load_bundle",
]
