"""BatchNorm for on-device training: statistics frozen, affine scale/shift trainable.

Why frozen: a phone trains on batches of 4-16 samples of one user's data. Batch statistics at that size are
noisy and biased toward the user's few classes, and updating running statistics needs extra mutable state in
the training program. Freezing the statistics (eval-mode BN, as in TinyTL and detectron's FrozenBatchNorm2d)
keeps the pretrained normalisation, makes the layer a per-channel affine map that exports to plain mul/add,
and keeps gamma/beta trainable (bias-only training relies on them). GroupNorm would be the alternative
for training from scratch; for personalising a BN-pretrained model, frozen BN is what works.
"""

from __future__ import annotations

import torch
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` with fixed statistics.

    Parameter and buffer names equal ``nn.BatchNorm2d``'s, so state dicts load both ways.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        frozen = cls(bn.num_features, bn.eps)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
        frozen.weight.requires_grad_(bn.affine and bn.weight.requires_grad)
        frozen.bias.requires_grad_(bn.affine and bn.bias.requires_grad)
        return frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``model`` (in place) by ``FrozenBatchNorm2d``; return ``model``."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, FrozenBatchNorm2d.from_batchnorm(child))
        else:
            freeze_batchnorm(child)
    return model
