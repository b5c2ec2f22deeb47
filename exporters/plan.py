"""A training plan: which techniques a bundle is exported with. The planner emits plans, ``export_plan``
applies one, and the manifest records it (``techniques``), so an app or the lab can tell what was used.

Model transforms run on a copy of the model in a fixed order (freeze), then the exporter's graph passes
(recompute) run on the exported training graph; micro-batching and the optimizer shape the training step.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from exporters.bundle import Bundle
from exporters.config import OptimizerConfig
from exporters.export import ModelSpec, export_bundle
from exporters.techniques.freeze import FreezeConfig, apply_freeze
from exporters.techniques.recompute import RecomputeConfig


@dataclass(frozen=True)
class TrainingPlan:
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    micro_batches: int = 1
    recompute: RecomputeConfig | None = None

    def __post_init__(self) -> None:
        if self.micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {self.micro_batches}")

    def describe(self) -> str:
        parts = [f"train {self.freeze.describe()}", self.optimizer.kind]
        if self.recompute is not None:
            parts.append(f"recompute {self.recompute.segments}")
        if self.micro_batches > 1:
            parts.append(f"{self.micro_batches} micro-batches")
        return ", ".join(parts)

    def techniques(self) -> list[dict[str, Any]]:
        """The manifest's technique list for the model transforms (the exporter adds its graph passes)."""
        if self.freeze.trains_everything:
            return []
        return [{"name": "freeze", "config": self.freeze.to_json()}]

    def to_json(self) -> dict[str, Any]:
        return {
            "freeze": self.freeze.to_json(),
            "optimizer": self.optimizer.to_json(),
            "micro_batches": self.micro_batches,
            "recompute": self.recompute.to_json() if self.recompute else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingPlan:
        return cls(
            freeze=FreezeConfig.from_json(data.get("freeze", {})),
            optimizer=OptimizerConfig.from_json(data.get("optimizer", {})),
            micro_batches=int(data.get("micro_batches", 1)),
            recompute=RecomputeConfig.from_json(data["recompute"]) if data.get("recompute") else None,
        )


def apply_model_techniques(model: nn.Module, plan: TrainingPlan) -> nn.Module:
    """A copy of ``model`` with the plan's model transforms applied (the original is left as it is)."""
    model = copy.deepcopy(model)
    apply_freeze(model, plan.freeze)
    return model


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
) -> Bundle:
    """Export ``model`` with every technique of ``plan`` baked in."""
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
        overwrite=overwrite,
    )
