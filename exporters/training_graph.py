"""The modules both backends export: one training step (loss first) and one prediction.

The training step returns ``(loss, logits)``: loss first because ExecuTorch's joint-graph export
differentiates output 0, logits (detached) so the app can report training accuracy without a second call.
The prediction takes the trainable parameters as inputs: a separate method in the same program cannot see
the training method's updated weights (each method holds its own constants; measured on ExecuTorch 1.5.1),
so the app passes the live parameter tensors in, and predictions always use the trained weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.export import ExportedProgram
from torch.export.graph_signature import ExportGraphSignature, InputKind, InputSpec
from torch.func import functional_call

from exporters.frozen_batchnorm import freeze_batchnorm
from exporters.losses import LossFn

# Parameter names in the exported programs are the model's names under this prefix.
MODEL_PREFIX = "model."


class TrainStep(nn.Module):
    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(inputs)
        return self.loss_fn(logits, labels), logits.detach()


class PredictStep(nn.Module):
    def __init__(self, model: nn.Module, trainable_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.trainable_names = trainable_names

    def forward(self, inputs: torch.Tensor, *trainable: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, dict(zip(self.trainable_names, trainable, strict=True)), (inputs,))


def prepare_for_training_export(model: nn.Module) -> nn.Module:
    """A copy of ``model`` as it trains on device: BatchNorm frozen, eval mode (no dropout), same grads flags."""
    prepared = freeze_batchnorm(copy.deepcopy(model))
    return prepared.eval()


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def strip_prefix(name: str) -> str:
    return name.removeprefix(MODEL_PREFIX)


def trace_train_step(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, labels: torch.Tensor) -> ExportedProgram:
    """``torch.export`` of one training step, non-strict, with its parameters and buffers in the order a strict
    trace lifts them (first use in the graph): the joint graph returns gradients in that order, and the manifest
    and every app depend on it. Non-strict traces MobileNetV2 about 5x faster (test size: 4.1 -> 0.7 s CPU); the
    program is the strict trace's, byte for byte (tests/test_export_time.py)."""
    return in_first_use_order(torch.export.export(TrainStep(model, loss_fn), (inputs, labels), strict=False))


def in_first_use_order(program: ExportedProgram) -> ExportedProgram:
    """``program`` with its parameter inputs, then its buffer inputs, each sorted by their first use in the graph
    (unused ones last, as they were); user inputs and constants keep their places."""
    graph = program.graph_module.graph
    first_use: dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        for arg in node.all_input_nodes:
            first_use.setdefault(arg.name, index)
    specs = list(program.graph_signature.input_specs)
    ordered: list[InputSpec] = []
    for kind in (InputKind.PARAMETER, InputKind.BUFFER):
        group = [spec for spec in specs if spec.kind == kind]
        ordered += sorted(group, key=lambda spec: first_use.get(spec.arg.name, len(first_use)))
    ordered += [spec for spec in specs if spec.kind not in (InputKind.PARAMETER, InputKind.BUFFER)]
    lifted = [spec for spec in specs if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER)]
    if ordered == specs or specs[: len(lifted)] != lifted:  # already in order, or not the layout torch.export makes
        return program
    placeholders = {node.name: node for node in graph.nodes if node.op == "placeholder"}
    anchor = next(node for node in graph.nodes if node.op != "placeholder")
    for spec in ordered:
        anchor.prepend(placeholders[spec.arg.name])
    program.graph_module.recompile()
    return program._update(program.graph_module, ExportGraphSignature(ordered, program.graph_signature.output_specs))
