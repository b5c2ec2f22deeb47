"""A training plan: which techniques a bundle is exported with. The planner emits plans, ``export_plan``
applies one, and the manifest records it (``techniques``), so an app or the lab can tell what was used.

Model transforms run on a copy of the model in a fixed order: LoRA adapters, freezing (the adapters stay
trainable), int8 storage of the frozen weights. Then the exporter's graph passes (recompute) run on the
exported training graph; micro-batching and the optimizer shape the training step, and the fused update
moves the optimizer into the training program (ExecuTorch). Speed routes (ExecuTorch) rewrite trainable 1x1 and
KxK convolutions as matmuls and lower the frozen part to XNNPACK inside the exporter; the manifest lists those that
applied.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from exporters.bundle import Bundle
from exporters.config import OptimizerConfig
from exporters.export import ModelSpec, export_bundle
from exporters.techniques.freeze import FreezeConfig, apply_freeze
from exporters.techniques.fused_update import FusedUpdateConfig
from exporters.techniques.int8_weights import Int8WeightsConfig, dequantize_weights, quantize_frozen_weights
from exporters.techniques.lora import ADAPTERS, LoraConfig, apply_lora, merge_lora
from exporters.techniques.recompute import RecomputeConfig
from exporters.techniques.speed_routes import SpeedConfig


@dataclass(frozen=True)
class TrainingPlan:
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    micro_batches: int = 1
    recompute: RecomputeConfig | None = None
    lora: LoraConfig | None = None
    int8_frozen: Int8WeightsConfig | None = None
    fused_update: FusedUpdateConfig | None = None
    speed: SpeedConfig | None = None  # ExecuTorch speed routes; None: none

    def __post_init__(self) -> None:
        if self.micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {self.micro_batches}")
        if self.fused_update is not None and self.micro_batches > 1:
            raise ValueError(
                "a fused update applies the optimizer on every call of the training method, so it cannot "
                "accumulate micro-batches: drop one of them"
            )

    def describe(self) -> str:
        trains = self.freeze.describe()
        if self.lora is not None:
            trains = f"LoRA r{self.lora.rank}" + ("" if self.freeze.trains_everything else f" + {trains}")
        parts = [f"train {trains}", self.optimizer.kind + (" fused into the program" if self.fused_update else "")]
        if self.int8_frozen is not None:
            parts.append("int8 frozen weights")
        if self.recompute is not None:
            parts.append(f"recompute {self.recompute.segments}")
        if self.micro_batches > 1:
            parts.append(f"{self.micro_batches} micro-batches")
        if self.speed is not None and self.speed.enabled:
            parts.append(self.speed.describe())
        return ", ".join(parts)

    def techniques(self) -> list[dict[str, Any]]:
        """The manifest's technique list for the model transforms (the exporter adds its graph passes)."""
        techniques = []
        if self.lora is not None:
            techniques.append({"name": "lora", "config": self.lora.to_json()})
        if not self.freeze.trains_everything:
            techniques.append({"name": "freeze", "config": self.freeze.to_json()})
        if self.int8_frozen is not None:
            techniques.append({"name": "int8_weights", "config": self.int8_frozen.to_json()})
        return techniques

    @classmethod
    def model_transforms(cls, techniques: Sequence[dict[str, Any]]) -> TrainingPlan:
        """The model transforms a manifest's ``techniques`` recorded (to rebuild the trained model)."""
        configs = {t["name"]: t["config"] for t in techniques}
        return cls(
            freeze=FreezeConfig.from_json(configs["freeze"]) if "freeze" in configs else FreezeConfig(),
            lora=LoraConfig.from_json(configs["lora"]) if "lora" in configs else None,
            int8_frozen=Int8WeightsConfig.from_json(configs["int8_weights"]) if "int8_weights" in configs else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "freeze": self.freeze.to_json(),
            "optimizer": self.optimizer.to_json(),
            "micro_batches": self.micro_batches,
            "recompute": self.recompute.to_json() if self.recompute else None,
            "lora": self.lora.to_json() if self.lora else None,
            "int8_frozen": self.int8_frozen.to_json() if self.int8_frozen else None,
            "fused_update": self.fused_update.to_json() if self.fused_update else None,
            "speed": self.speed.to_json() if self.speed else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingPlan:
        return cls(
            freeze=FreezeConfig.from_json(data.get("freeze", {})),
            optimizer=OptimizerConfig.from_json(data.get("optimizer", {})),
            micro_batches=int(data.get("micro_batches", 1)),
            recompute=RecomputeConfig.from_json(data["recompute"]) if data.get("recompute") else None,
            lora=LoraConfig.from_json(data["lora"]) if data.get("lora") else None,
            int8_frozen=Int8WeightsConfig.from_json(data["int8_frozen"]) if data.get("int8_frozen") else None,
            fused_update=FusedUpdateConfig.from_json(data["fused_update"]) if data.get("fused_update") else None,
            speed=SpeedConfig.from_json(data["speed"]) if data.get("speed") else None,
        )


def apply_model_techniques(model: nn.Module, plan: TrainingPlan) -> nn.Module:
    """A copy of ``model`` with the plan's model transforms applied (the original is left as it is)."""
    model = copy.deepcopy(model)
    if plan.lora is not None:
        model = apply_lora(model, plan.lora)
        if not plan.freeze.trains_everything:
            # apply_freeze replaces the whole selection: keep the adapters in it.
            adapters = tuple(f"*.{name}" for name in ADAPTERS)
            apply_freeze(model, replace(plan.freeze, trainable=(*plan.freeze.trainable, *adapters)))
    else:
        apply_freeze(model, plan.freeze)
    if plan.int8_frozen is not None:
        model = quantize_frozen_weights(model, plan.int8_frozen)
    return model


def fold_model_techniques(model: nn.Module) -> nn.Module:
    """Back to the original architecture: adapters merged, int8 weights as the floats the device used."""
    return dequantize_weights(merge_lora(model))


def export_plan(
    model: nn.Module,
    out_dir: str | Path,
    plan: TrainingPlan,
    *,
    sample_shape: Sequence[int],
    batch_size: int,
    backend: str = "executorch",
    loss: str = "cross_entropy",
    classes: Sequence[str] | None = None,
    name: str | None = None,
    model_spec: ModelSpec | None = None,
    overwrite: bool = False,
    verify: bool = True,
) -> Bundle:
    """Export ``model`` with every technique of ``plan`` baked in (``verify``: see ``export_bundle``)."""
    return export_bundle(
        apply_model_techniques(model, plan),
        out_dir,
        sample_shape=sample_shape,
        batch_size=batch_size,
        backend=backend,
        loss=loss,
        optimizer=plan.optimizer,
        classes=classes,
        name=name,
        model_spec=model_spec,
        techniques=plan.techniques(),
        micro_batches=plan.micro_batches,
        recompute=plan.recompute,
        fused_update=plan.fused_update,
        speed=plan.speed,
        overwrite=overwrite,
        verify=verify,
    )
