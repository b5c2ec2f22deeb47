"""The app-side optimizer against torch.optim: same updates, with its one scratch buffer instead of temporaries."""

from __future__ import annotations

import pytest
import torch

from exporters.config import OptimizerConfig
from sdk_tools.runner.optim import Optimizer

CONFIGS = {
    "sgd": OptimizerConfig("sgd", lr=0.1),
    "sgd weight decay": OptimizerConfig("sgd", lr=0.1, weight_decay=0.01),
    "momentum dampening": OptimizerConfig("sgd", lr=0.1, momentum=0.9, dampening=0.1),
    "nesterov weight decay": OptimizerConfig("sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adamw": OptimizerConfig("adamw", lr=1e-2, weight_decay=0.05, betas=(0.8, 0.99), eps=1e-6),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_updates_equal_torch_optim(name: str) -> None:
    config = CONFIGS[name]
    gen = torch.Generator().manual_seed(0)
    shapes = {"conv.weight": (8, 4, 3, 3), "conv.bias": (8,), "fc.weight": (10, 32)}
    ours = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    reference = [p.clone().requires_grad_() for p in ours.values()]
    optimizer, torch_optimizer = Optimizer(config, ours), config.torch_optimizer(reference)
    for _ in range(5):
        grads = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
        for p, g in zip(reference, grads.values(), strict=True):
            p.grad = g.clone()
        torch_optimizer.step()
        optimizer.step(grads)
    for p, expected in zip(ours.values(), reference, strict=True):
        torch.testing.assert_close(p, expected.detach(), rtol=1e-6, atol=1e-7)


def test_workspace_is_one_tensor_of_the_largest_parameter_and_only_where_needed() -> None:
    params = {"a": torch.zeros(3, 4), "b": torch.zeros(50)}
    assert Optimizer(CONFIGS["adamw"], params).workspace.numel() == 50
    assert Optimizer(CONFIGS["nesterov weight decay"], params).workspace.numel() == 50
    assert Optimizer(CONFIGS["momentum dampening"], params).workspace.numel() == 0
