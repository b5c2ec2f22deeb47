"""Freezing / sparse update: choose which parameters train; everything else gets no gradient.

In eager PyTorch freezing saves little memory; in an exported training graph a frozen parameter gets no
gradient output, and the backward ops that only served it are pruned, so the statically planned arena
shrinks.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class FreezeConfig:
    """Train only parameters whose name matches one of ``trainable`` (fnmatch patterns, e.g. ``classifier.*``).

    An empty tuple trains everything.
    """

    trainable: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "trainable": list(self.trainable)}


def apply_freeze(model: nn.Module, config: FreezeConfig) -> nn.Module:
    """Set ``requires_grad`` per ``config`` in place; raise if a pattern matches nothing or nothing trains."""
    if not config.trainable:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    names = [name for name, _ in model.named_parameters()]
    for pattern in config.trainable:
        if not fnmatch.filter(names, pattern):
            raise ValueError(
                f"trainable pattern {pattern!r} matches no parameter; parameter names look like {names[:3]}"
            )
    for name, p in model.named_parameters():
        p.requires_grad_(any(fnmatch.fnmatchcase(name, pat) for pat in config.trainable))
    return model
