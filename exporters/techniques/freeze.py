"""Freezing / sparse update: choose which parameters train; everything else gets no gradient.

In eager PyTorch freezing saves little memory; in an exported training graph a frozen parameter gets no
gradient output, and the backward ops that only served it are pruned, so the statically planned arena
shrinks. Bias-only (TinyTL) is the extreme case: every weight is frozen, so backward no longer needs the
inputs of convolutions and linears (their weight gradients are what read them) and most saved activations
disappear from the plan.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from exporters.modules import numbered_blocks, parameter_block
from exporters.technique import ModelContext, Stage, Technique, register_technique


@dataclass(frozen=True)
class FreezeConfig:
    """Which parameters train; the union of the selections below. All empty trains everything.

    - ``trainable``: fnmatch patterns over parameter names (e.g. ``classifier.*``) or explicit names;
    - ``last_blocks``: the last k numbered blocks (``features.17``, ``features.18``...) and every parameter
      after them (the head); 0 trains the head alone;
    - ``bias_only``: every bias (TinyTL); combine with ``trainable=("classifier.*",)`` for its usual form.
    """

    trainable: tuple[str, ...] = ()
    last_blocks: int | None = None
    bias_only: bool = False

    def __post_init__(self) -> None:
        if self.last_blocks is not None and self.last_blocks < 0:
            raise ValueError(f"last_blocks must be >= 0, got {self.last_blocks}; leave it unset to train all blocks")

    @property
    def trains_everything(self) -> bool:
        return not self.trainable and self.last_blocks is None and not self.bias_only

    def describe(self) -> str:
        if self.trains_everything:
            return "full"
        parts = [*self.trainable]
        if self.last_blocks is not None:
            parts.insert(0, f"last {self.last_blocks} blocks + head" if self.last_blocks else "head")
        if self.bias_only:
            parts.insert(0, "biases")
        return " + ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"trainable": list(self.trainable), "last_blocks": self.last_blocks, "bias_only": self.bias_only}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FreezeConfig:
        return cls(tuple(data.get("trainable", ())), data.get("last_blocks"), bool(data.get("bias_only", False)))

    def select(self, names: list[str]) -> set[str]:
        """The names of ``names`` that train; raise if a selection matches nothing."""
        if self.trains_everything:
            return set(names)
        chosen: set[str] = set()
        for pattern in self.trainable:
            matched = fnmatch.filter(names, pattern)
            if not matched:
                raise ValueError(
                    f"trainable pattern {pattern!r} matches no parameter; parameter names look like {names[:3]}"
                )
            chosen.update(matched)
        if self.bias_only:
            biases = [n for n in names if n.endswith(".bias") or n == "bias"]
            if not biases:
                raise ValueError("bias_only: the model has no bias parameters; train a head or last blocks instead")
            chosen.update(biases)
        if self.last_blocks is not None:
            blocks = numbered_blocks(names)
            if not blocks:
                raise ValueError(
                    "last_blocks: parameter names show no numbered blocks (like features.3.weight); "
                    "use trainable patterns instead"
                )
            owners = [(parameter_block(n) or ("", False))[0] for n in names]
            if self.last_blocks:
                first = blocks[-min(self.last_blocks, len(blocks))]
                start = owners.index(first)
            else:
                start = max(i for i, owner in enumerate(owners) if owner == blocks[-1]) + 1
                if start == len(names):
                    raise ValueError("last_blocks=0 trains the head, but no parameter follows the last block")
            chosen.update(names[start:])
        return chosen


def apply_freeze(model: nn.Module, config: FreezeConfig) -> nn.Module:
    """Set ``requires_grad`` per ``config`` in place; raise if a selection matches nothing or nothing trains."""
    names = [name for name, _ in model.named_parameters()]
    chosen = config.select(names)
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    return model


def _apply(model: nn.Module, config: FreezeConfig, context: ModelContext) -> nn.Module:
    if context.kept_trainable:  # an earlier transform (LoRA) chose what trains: keep it, add this selection
        if config.trains_everything:
            return model
        config = replace(config, trainable=(*config.trainable, *context.kept_trainable))
    return apply_freeze(model, config)


register_technique(
    Technique(
        "freeze",
        FreezeConfig,
        Stage.MODEL_TRANSFORM,
        order=20,
        default=FreezeConfig(),
        describe=FreezeConfig.describe,
        slot="trains",
        apply=_apply,
    )
)
