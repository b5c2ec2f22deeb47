"""The technique registry (issue 14): a technique is one file, the plan a tuple of configs, old names still read.

The must-show: ``FreezeLayerNormConfig`` below is a new technique written in this file alone, registered,
exported (by the API and by the command line), recorded in the manifest and listed by ``memwall techniques``, with
no edit anywhere else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from exporters import OptimizerConfig, export_bundle, load_bundle
from exporters.plan import TrainingPlan, apply_model_techniques, export_plan
from exporters.technique import (
    ModelContext,
    Stage,
    Technique,
    backend_support,
    foldable,
    register_technique,
    technique,
)
from exporters.techniques import (
    FreezeConfig,
    FusedUpdateConfig,
    Int8WeightsConfig,
    LoraConfig,
    RecomputeConfig,
    apply_lora,
)
from exporters.techniques.speed_routes import SpeedConfig
from sdk_tools import cli
from sdk_tools.api import export

SHAPE = (8,)


@dataclass(frozen=True)
class FreezeLayerNormConfig:
    """Freeze the weight and bias of every LayerNorm (the test technique)."""

    def to_json(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FreezeLayerNormConfig:
        return cls()


def _freeze_layernorms(model: nn.Module, config: FreezeLayerNormConfig, context: ModelContext) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.requires_grad_(False)
    return model


# After ``freeze`` (order 20), which sets what trains, before int8 storage (30), which needs to know what is frozen.
register_technique(
    Technique(
        "freeze_layernorm",
        FreezeLayerNormConfig,
        Stage.MODEL_TRANSFORM,
        order=25,
        describe=lambda config: "LayerNorms frozen",
        apply=_freeze_layernorms,
    )
)


def layernorm_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 4))


def test_a_technique_from_one_file_is_exported_and_recorded(tmp_path: Path) -> None:
    bundle = export(layernorm_mlp(), tmp_path / "api", FreezeLayerNormConfig(), sample_shape=SHAPE, batch_size=4)
    assert [t["name"] for t in bundle.manifest.techniques][:1] == ["freeze_layernorm"]
    assert bundle.manifest.verification["verified"]
    assert {p.name for p in bundle.manifest.trainable} == {
        "model.0.weight",
        "model.0.bias",
        "model.3.weight",
        "model.3.bias",
    }
    plan = TrainingPlan(FreezeLayerNormConfig())
    assert plan.describe() == "train full, sgd, LayerNorms frozen"
    assert TrainingPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    assert TrainingPlan.model_transforms(bundle.manifest.techniques).techniques == plan.techniques


def test_a_technique_from_one_file_is_listed_and_exported_by_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["techniques", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["freeze_layernorm"]["stage"] == "model transform"
    assert rows["freeze_layernorm"]["summary"] == "Freeze the weight and bias of every LayerNorm (the test technique)."
    out = tmp_path / "cli"
    args = ["export", "--model", "tests.test_architecture:layernorm_mlp", "--input-shape", "8", "--batch", "4"]
    assert cli.main([*args, "--technique", "freeze_layernorm", "--no-verify", "--out", str(out)]) == 0
    assert "freeze_layernorm" in [t["name"] for t in load_bundle(out).manifest.techniques]


def test_registry_declares_backends_once_and_orders_the_stages() -> None:
    assert backend_support() == {
        "executorch": [
            "lora",
            "freeze",
            "freeze_layernorm",
            "int8_weights",
            "recompute",
            "fused_update",
            "speed_routes",
        ],
        "onnxruntime": ["lora", "freeze", "freeze_layernorm", "int8_weights", "recompute"],
    }
    with pytest.raises(ValueError, match="fused_update is not possible on the onnxruntime backend"):
        export_plan(
            layernorm_mlp(), "unused", TrainingPlan(FusedUpdateConfig()), sample_shape=SHAPE, batch_size=4,
            backend="onnxruntime",
        )  # fmt: skip
    # The micro-batch rule of the fused update is written once: plans and export_bundle both refuse.
    with pytest.raises(ValueError, match="cannot accumulate 2 micro-batches"):
        TrainingPlan(FusedUpdateConfig(), micro_batches=2)
    with pytest.raises(ValueError, match="cannot accumulate 2 micro-batches"):
        export_bundle(
            layernorm_mlp(), "unused", sample_shape=SHAPE, batch_size=4, micro_batches=2, passes=[FusedUpdateConfig()]
        )
    with pytest.raises(ValueError, match="two lora configs"):
        TrainingPlan(LoraConfig(2), LoraConfig(4))


def test_old_names_and_old_plan_json_still_read() -> None:
    assert technique("int8_frozen") is technique("int8_weights")
    assert technique("speed") is technique("speed_routes")
    old = {  # exporters/plan.py's JSON before the registry
        "freeze": {"trainable": ["classifier.*"], "last_blocks": None, "bias_only": False},
        "optimizer": OptimizerConfig("adamw").to_json(),
        "micro_batches": 2,
        "recompute": {"segments": "auto"},
        "lora": {"rank": 4, "alpha": 8.0, "targets": ["*"], "trainable": []},
        "int8_frozen": {"targets": ["*"], "per_channel": True},
        "fused_update": None,
        "speed": None,
    }
    plan = TrainingPlan.from_json(old)
    assert plan == TrainingPlan(
        FreezeConfig(("classifier.*",)), LoraConfig(4), Int8WeightsConfig(), RecomputeConfig("auto"),
        optimizer=OptimizerConfig("adamw"), micro_batches=2,
    )  # fmt: skip
    assert plan.int8_frozen == plan.int8_weights == plan.config(Int8WeightsConfig) == Int8WeightsConfig()
    assert replace(plan, int8_frozen=None).int8_weights is None
    assert replace(plan, speed=SpeedConfig()).speed_routes == SpeedConfig()
    assert (
        plan.describe() == "train LoRA r4 + classifier.*, adamw, int8 frozen weights, recompute auto, 2 micro-batches"
    )
    records = [{"name": "lora", "config": LoraConfig(4).to_json()}, {"name": "xnnpack_frozen", "config": {}}]
    assert foldable(records) == ["lora"]
    assert TrainingPlan.model_transforms(records) == TrainingPlan(LoraConfig(4))


def test_export_records_what_it_applies_and_refuses_what_it_would_hide(tmp_path: Path) -> None:
    def model() -> nn.Module:
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    with pytest.raises(ValueError, match="the model already has lora applied, but the export does not record it"):
        export_bundle(apply_lora(model(), LoraConfig(2)), tmp_path / "hidden", sample_shape=SHAPE, batch_size=4)
    adapted = apply_model_techniques(model(), TrainingPlan(LoraConfig(2)))
    assert {n for n, p in adapted.named_parameters() if p.requires_grad} == {
        "0.lora_A", "0.lora_B", "2.lora_A", "2.lora_B"
    }  # fmt: skip
