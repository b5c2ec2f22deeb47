"""A training plan: the optimizer, the micro-batches and the techniques a bundle is exported with.

The planner emits plans, ``export_plan`` applies one, and the manifest records it (``techniques``), so an app or
the lab can tell what was used. Each technique is a config class registered in ``exporters.technique``; the plan
only loops over them in the registry's order. Model transforms run on a copy of the model (LoRA adapters, then
freezing, which keeps the adapters trainable, then int8 storage of the frozen weights); the exporter runs the
graph passes on the training graph (recompute, then the fused update, which moves the optimizer into the training
program) and the speed routes (ExecuTorch), and the manifest lists the routes that applied.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from exporters.bundle import Bundle
from exporters.config import OptimizerConfig
from exporters.export import ModelSpec, export_bundle
from exporters.technique import (
    ModelContext,
    Stage,
    check_techniques,
    find_technique,
    fold_techniques,
    from_record,
    in_order,
    technique,
    technique_of,
    techniques,
)

Config = TypeVar("Config")
_FIELDS = ("optimizer", "micro_batches", "techniques")


@dataclass(frozen=True, init=False)
class TrainingPlan:
    """The optimizer, the micro-batches per step and one config per technique (in the registry's order).

    ``TrainingPlan(LoraConfig(4), FreezeConfig(("classifier.*",)), optimizer=OptimizerConfig("adamw"))``.
    Plans written before the registry read as they were: an ``OptimizerConfig`` and an int among the positional
    arguments are the optimizer and the micro-batches, and a technique's name (or old name) as a keyword gives its
    config (``int8_frozen=Int8WeightsConfig()``, ``speed=SpeedConfig()``; None leaves the technique out), so
    ``dataclasses.replace(plan, recompute=RecomputeConfig())`` works. Reading ``plan.<name>`` gives the config of
    that technique, its default (freeze: everything trains) or None.
    """

    optimizer: OptimizerConfig
    micro_batches: int
    techniques: tuple[Any, ...]

    def __init__(
        self,
        *configs: Any,
        optimizer: OptimizerConfig | None = None,
        micro_batches: int = 1,
        techniques: Sequence[Any] = (),
        **named: Any,
    ) -> None:
        chosen = {technique_of(c).name: c for c in techniques}
        given: list[Any] = []
        for value in configs:
            if isinstance(value, OptimizerConfig):
                optimizer = value
            elif type(value) is int:
                micro_batches = value
            elif value is not None:
                given.append(value)
        chosen.update((found.name, config) for found, config in in_order(given))
        for name, config in named.items():
            found = technique(name)
            if config is None:
                chosen.pop(found.name, None)
            elif not isinstance(config, found.config):
                raise TypeError(f"{name}= takes a {found.config.__name__}, got {type(config).__name__}")
            else:
                chosen[found.name] = config
        for found in _with_defaults():
            chosen.setdefault(found.name, found.default)
        object.__setattr__(self, "optimizer", optimizer or OptimizerConfig())
        object.__setattr__(self, "micro_batches", micro_batches)
        object.__setattr__(self, "techniques", tuple(config for _, config in in_order(chosen.values())))
        if self.micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {self.micro_batches}")
        check_techniques(self.techniques, micro_batches=self.micro_batches)

    def __getattr__(self, name: str) -> Any:
        # Only called where no field or method has the name: a technique's name reads its config.
        found = None if name.startswith("_") else find_technique(name)
        if found is None:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r} (and no technique of that name)")
        return self.config(found.config)

    def config(self, kind: type[Config]) -> Config | None:
        """The plan's config of type ``kind`` (e.g. ``LoraConfig``), else None."""
        return next((c for c in self.techniques if type(c) is kind), None)

    def describe(self) -> str:
        """One line: what trains, the optimizer, then the step's techniques (``train LoRA r4 + head, sgd``)."""
        slots: dict[str, list[str]] = {"trains": [], "optimizer": [], "step": [], "routes": []}
        for found, config in in_order(self.techniques):
            if found.describe is not None and found.active(config):
                slots["routes" if found.stage is Stage.SPEED_ROUTE else found.slot].append(found.describe(config))
        micro = [f"{self.micro_batches} micro-batches"] if self.micro_batches > 1 else []
        trains = " + ".join(slots["trains"]) or "full"
        optimizer = " ".join([self.optimizer.kind, *slots["optimizer"]])
        return ", ".join([f"train {trains}", optimizer, *slots["step"], *micro, *slots["routes"]])

    def records(self) -> list[dict[str, Any]]:
        """The manifest's records of the model transforms (the exporter adds its graph passes and routes)."""
        return [
            found.record(config)
            for found, config in in_order(self.techniques)
            if found.stage is Stage.MODEL_TRANSFORM and found.active(config)
        ]

    def passes(self) -> list[Any]:
        """The configs the backend exporter applies: graph passes and speed routes."""
        return [config for found, config in in_order(self.techniques) if found.stage is not Stage.MODEL_TRANSFORM]

    @classmethod
    def model_transforms(cls, records: Sequence[dict[str, Any]]) -> TrainingPlan:
        """The model transforms a manifest's ``techniques`` recorded (to rebuild the trained model)."""
        configs = []
        for record in records:
            found = find_technique(record["name"])  # the speed routes record each route by its own name
            if found is not None and found.stage is Stage.MODEL_TRANSFORM:
                configs.append(from_record(record["name"], record["config"]))
        return cls(*configs)

    def to_json(self) -> dict[str, Any]:
        entries = []
        for found, config in in_order(self.techniques):
            if config != found.default:
                entries.append({"name": found.name, "version": found.version, "config": config.to_json()})
        return {"optimizer": self.optimizer.to_json(), "micro_batches": self.micro_batches, "techniques": entries}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingPlan:
        """A plan from ``to_json``, or from the JSON written before the registry (a key per technique)."""
        configs = [from_record(t["name"], t["config"], t.get("version", 1)) for t in data.get("techniques", [])]
        named = {key: from_record(key, value) for key, value in data.items() if key not in _FIELDS and value}
        return cls(
            *configs,
            optimizer=OptimizerConfig.from_json(data.get("optimizer", {})),
            micro_batches=int(data.get("micro_batches", 1)),
            **named,
        )


def _with_defaults() -> list[Any]:
    return [found for found in techniques() if found.default is not None]


def apply_model_techniques(model: nn.Module, plan: TrainingPlan) -> nn.Module:
    """A copy of ``model`` with the plan's model transforms applied (the original is left as it is)."""
    model = copy.deepcopy(model)
    context = ModelContext()
    for found, config in in_order(plan.techniques):
        if found.apply is not None:
            model = found.apply(model, config, context)
    return model


def fold_model_techniques(model: nn.Module) -> nn.Module:
    """Back to the original architecture: adapters merged, int8 weights as the floats the device used."""
    return fold_techniques(model)


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
    """Export ``model`` with every technique of ``plan`` baked in and recorded (``verify``: see ``export_bundle``).

    Example::

        plan = TrainingPlan(LoraConfig(4), FreezeConfig(("classifier.*",)), optimizer=OptimizerConfig("adamw"))
        bundle = export_plan(model, "bundle", plan, sample_shape=(3, 32, 32), batch_size=8)
        [t["name"] for t in bundle.manifest.techniques]  # ['lora', 'freeze']
    """
    check_techniques(plan.techniques, micro_batches=plan.micro_batches, backend=backend)
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
        techniques=plan.records(),
        micro_batches=plan.micro_batches,
        passes=plan.passes(),
        overwrite=overwrite,
        verify=verify,
    )
