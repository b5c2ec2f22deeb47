"""Eager PyTorch pretraining on the digits pretraining split: the "server-side" model a phone personalizes."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from sdk_tools.data.digits import DigitsSplit
from sdk_tools.data.loading import Batches


def pretrain(
    model: nn.Module,
    data: DigitsSplit,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
) -> nn.Module:
    """Train ``model`` in place with AdamW (BatchNorm in training mode) and return it in eval mode."""
    torch.manual_seed(seed)
    batches = Batches(data, batch_size, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    steps = epochs * batches.per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    stream = batches.from_position(0)
    for _ in tqdm(range(steps), desc="pretraining (eager PyTorch)", unit="step", file=sys.stderr):
        inputs, labels = next(stream)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, data: DigitsSplit, batch_size: int = 256) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        logits = model(data.images[start : start + batch_size])
        correct += int((logits.argmax(-1) == data.labels[start : start + batch_size]).sum())
    return correct / len(data)
