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
from torch.func import functional_call

from exporters.losses import LossFn
from sdk_tools.models.frozen_batchnorm import freeze_batchnorm

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
