"""memwall exporters: PyTorch model -> on-device training bundle (ExecuTorch or ONNX Runtime)."""

from exporters.bundle import Bundle, BundleError, Manifest, load_bundle
from exporters.config import OptimizerConfig
from exporters.export import ModelSpec, export_bundle
from exporters.plan import TrainingPlan, export_plan
from exporters.technique import ModelContext, Stage, Technique, register_technique
from exporters.techniques import FreezeConfig, apply_freeze

__all__ = [
    "Bundle",
    "BundleError",
    "FreezeConfig",
    "Manifest",
    "ModelContext",
    "ModelSpec",
    "OptimizerConfig",
    "Stage",
    "Technique",
    "TrainingPlan",
    "apply_freeze",
    "export_bundle",
    "export_plan",
    "load_bundle",
    "register_technique",
]
