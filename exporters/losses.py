"""Training losses by name, and how each wants its labels.

A custom loss is an import path ``pkg.module:fn`` to ``fn(logits, labels) -> scalar tensor`` that uses only
ops both runtimes can differentiate; its labels are float32 shaped like the logits unless it says otherwise
through a ``label_dtype`` attribute on the function.

Only the exporter imports a loss (the user names it on the command line). A bundle's runner never does: the
loss is compiled into the program, and the labels it wants are read from the manifest's ``labels`` spec
(``sdk_tools.runner.session.label_encoding``): a manifest naming ``subprocess:run`` as its loss runs nothing
(docs/security.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: LossFn
    label_dtype: torch.dtype
    labels_like_logits: bool  # labels shaped (B, classes) rather than (B,)


BUILTIN_LOSSES: dict[str, LossSpec] = {
    "cross_entropy": LossSpec("cross_entropy", F.cross_entropy, torch.int64, False),
    "mse": LossSpec("mse", F.mse_loss, torch.float32, True),
    "bce_with_logits": LossSpec("bce_with_logits", F.binary_cross_entropy_with_logits, torch.float32, True),
}


def resolve_loss(name: str) -> LossSpec:
    if name in BUILTIN_LOSSES:
        return BUILTIN_LOSSES[name]
    if ":" not in name:
        raise ValueError(f"unknown loss {name!r}: use one of {sorted(BUILTIN_LOSSES)} or 'pkg.module:fn'")
    module_name, _, attr = name.partition(":")
    fn = getattr(importlib.import_module(module_name), attr, None)
    if not callable(fn):
        raise ValueError(f"loss {name!r}: {module_name} has no callable {attr!r}")
    return LossSpec(name, fn, getattr(fn, "label_dtype", torch.float32), True)


@dataclass(frozen=True)
class LabelEncoding:
    """How a trained program takes its labels, as the manifest's ``labels`` spec states it."""

    label_dtype: torch.dtype
    labels_like_logits: bool  # (B, classes) floats rather than (B,) class indices


def example_labels(loss: LossSpec, logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels of the right shape and dtype for ``loss`` given a batch of logits."""
    if loss.labels_like_logits:
        return torch.zeros_like(logits, dtype=loss.label_dtype)
    return torch.arange(logits.shape[0], dtype=loss.label_dtype) % num_classes


def encode_labels(loss: LossSpec | LabelEncoding, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices -> what ``loss`` takes (one-hot floats for MSE/BCE)."""
    if loss.labels_like_logits and labels.dtype == torch.int64 and labels.dim() == 1:
        return F.one_hot(labels, num_classes).to(loss.label_dtype)
    return labels.to(loss.label_dtype)
