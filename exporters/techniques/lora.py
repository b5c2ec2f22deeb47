"""LoRA (low-rank adaptation): frozen layers plus small trainable low-rank updates.

``apply_lora`` replaces each targeted ``nn.Linear`` and 1x1 ``nn.Conv2d`` (groups 1) by a module that keeps
the layer's own ``weight`` and ``bias`` (same tensors, same names, frozen) and adds ``lora_A`` (rank x in)
and ``lora_B`` (out x rank, zero at the start, so the model's output is unchanged until it trains):
``y = layer(x) + (alpha / rank) * B(A(x))``. In an exported training graph only the adapters get gradients:
a frozen layer's weight gradient and its backward ops are pruned, and the optimizer state covers only the
adapters (MobileNetV2 x1.0, rank 4 on every 1x1 conv and the classifier: 79K of 2.24M parameters train).

What trains: ``apply_lora`` sets ``requires_grad`` on every parameter of the model: the adapters, plus the
parameters matching ``LoraConfig.trainable`` (e.g. ``classifier.*`` or ``*.bias``); everything else is
frozen. ``apply_freeze`` also sets ``requires_grad`` on every parameter, so calling it after ``apply_lora``
replaces this selection: its patterns must then include the adapters (``*.lora_A``, ``*.lora_B``).
``LoraConfig.trainable`` is the one place to say it, and it is recorded in the bundle with the adapters.

Names are stable: the adapters of module ``m`` are ``m.lora_A`` and ``m.lora_B`` and the layer keeps
``m.weight``/``m.bias``, so a trained checkpoint loads onto ``apply_lora(fresh_model, same_config)``, a
pretrained state dict loads onto the adapted model (``strict=False``), and ``merge_lora`` folds the adapters
back into plain layers for inference export and for pulling the trained model.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from exporters.modules import replace_module, select_modules
from exporters.technique import ModelContext, Stage, Technique, register_technique

ADAPTERS = ("lora_A", "lora_B")


@dataclass(frozen=True)
class LoraConfig:
    """Adapters of ``rank`` on the modules whose name matches one of ``targets`` (fnmatch patterns).

    ``targets`` select among ``nn.Linear`` and 1x1 ``nn.Conv2d`` layers with groups 1: the default ``*``
    adapts every such layer (in MobileNetV2: every 1x1 conv and the classifier, not the stem or the
    depthwise convs). Each pattern must select at least one such layer. ``alpha / rank`` scales the update.
    ``trainable``: fnmatch patterns over parameter names that train besides the adapters (e.g.
    ``classifier.*``); the adapted layers' own weights stay frozen.
    """

    rank: int = 4
    alpha: float = 8.0
    targets: tuple[str, ...] = ("*",)
    trainable: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if type(self.rank) is not int or self.rank < 1:
            raise ValueError(f"LoRA rank must be an int >= 1, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha!r}")
        if not self.targets:
            raise ValueError("LoRA needs at least one target pattern, e.g. '*' for every Linear and 1x1 Conv2d")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "targets": list(self.targets),
            "trainable": list(self.trainable),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoraConfig:
        return cls(
            rank=data["rank"],
            alpha=data["alpha"],
            targets=tuple(data["targets"]),
            trainable=tuple(data.get("trainable", ())),
        )


class _Adapted(nn.Module):
    """What every adapted layer holds: the layer's own weight and bias (same tensors), then the adapters.

    Registered in this order, which is the order the exported gradients follow.
    """

    def __init__(self, layer: nn.Linear | nn.Conv2d, rank: int, scaling: float) -> None:
        super().__init__()
        self.scaling = scaling
        self.weight = layer.weight
        self.bias = layer.bias
        self.lora_A, self.lora_B = _adapters(layer.weight, rank)

    def _holding_merged(self, layer: nn.Linear | nn.Conv2d) -> Any:
        """``layer`` (uninitialized, of this one's shape) given the merged weight and this bias."""
        layer.weight = _merged_weight(self)  # type: ignore[arg-type]
        layer.bias = self.bias
        return layer


class LoraLinear(_Adapted):
    """``nn.Linear`` with a low-rank update: ``x W^T + b + scaling * (x A^T) B^T``."""

    def __init__(self, layer: nn.Linear, rank: int, scaling: float) -> None:
        super().__init__(layer, rank, scaling)
        self.in_features = layer.in_features
        self.out_features = layer.out_features

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rank={self.lora_A.shape[0]}, scaling={self.scaling}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The layer first, so parameters are used in the order they are registered (weight, bias, adapters):
        # the exported gradient order follows first use. Scaling the rank-sized intermediate, not the
        # output: a multiply over r instead of out channels.
        out = F.linear(x, self.weight, self.bias)
        return out + F.linear(F.linear(x, self.lora_A) * self.scaling, self.lora_B)

    def merged(self) -> nn.Linear:
        return self._holding_merged(
            torch.nn.utils.skip_init(
                nn.Linear,
                self.in_features,
                self.out_features,
                bias=self.bias is not None,
                device=self.weight.device,
                dtype=self.weight.dtype,
            )
        )


class LoraConv2d(_Adapted):
    """1x1 ``nn.Conv2d`` (groups 1) with a low-rank update: two convolutions through ``rank`` channels."""

    def __init__(self, layer: nn.Conv2d, rank: int, scaling: float) -> None:
        super().__init__(layer, rank, scaling)
        self.in_channels = layer.in_channels
        self.out_channels = layer.out_channels
        self.stride = layer.stride
        self.padding = layer.padding
        self.dilation = layer.dilation

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, rank={self.lora_A.shape[0]}, "
            f"scaling={self.scaling}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As in LoraLinear: the layer first. A takes the layer's stride and padding, so B(A(x)) lines up with
        # the layer's output; a padded position is zero in A's output and stays zero through B, as it is in
        # conv(x, B @ A).
        out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        low = F.conv2d(x, self.lora_A, None, self.stride, self.padding, self.dilation)
        return out + F.conv2d(low * self.scaling, self.lora_B)

    def merged(self) -> nn.Conv2d:
        return self._holding_merged(
            torch.nn.utils.skip_init(
                nn.Conv2d,
                self.in_channels,
                self.out_channels,
                1,
                stride=self.stride,
                padding=self.padding,
                dilation=self.dilation,
                bias=self.bias is not None,
                device=self.weight.device,
                dtype=self.weight.dtype,
            )
        )


LoraModule = LoraLinear | LoraConv2d


def _adapters(weight: torch.Tensor, rank: int) -> tuple[nn.Parameter, nn.Parameter]:
    out_features, in_features = weight.shape[:2]
    kernel = weight.shape[2:]  # (1, 1) for a conv, () for a linear layer
    a = torch.empty(rank, in_features, *kernel, dtype=weight.dtype, device=weight.device)
    # As the LoRA paper and peft: A like a freshly initialized layer, B zero so training starts at the model.
    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    b = torch.zeros(out_features, rank, *kernel, dtype=weight.dtype, device=weight.device)
    return nn.Parameter(a), nn.Parameter(b)


def _merged_weight(module: LoraModule) -> nn.Parameter:
    with torch.no_grad():
        delta = module.lora_B.flatten(1) @ module.lora_A.flatten(1)
        weight = module.weight + module.scaling * delta.view_as(module.weight)
    return nn.Parameter(weight, requires_grad=module.weight.requires_grad)


def lora_kind(module: nn.Module) -> type[LoraModule] | None:
    """The adapter module for ``module``, or None where LoRA does not apply.

    Exact types: a subclass may compute something else in its own ``forward``, which the adapter would
    replace.
    """
    if type(module) is nn.Linear:
        return LoraLinear
    if (
        type(module) is nn.Conv2d
        and module.kernel_size == (1, 1)
        and module.groups == 1
        and module.padding_mode == "zeros"
    ):
        return LoraConv2d
    return None


def _select(model: nn.Module, config: LoraConfig) -> dict[str, type[LoraModule]]:
    modules = dict(model.named_modules())
    adapted = [name for name, m in modules.items() if isinstance(m, LoraModule)]
    if adapted:
        raise ValueError(
            f"the model already has LoRA adapters (e.g. {adapted[0]!r}); apply_lora once, with every target "
            "in one LoraConfig"
        )
    return select_modules(
        model,
        config.targets,
        lora_kind,
        what="LoRA",
        lacks="matches no nn.Linear or 1x1 nn.Conv2d with groups=1",
        fix="LoRA adapts only those layers: name one of them, or freeze the others and train them with "
        "LoraConfig.trainable instead",
    )


def apply_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
    """Add adapters to the targeted layers of ``model`` (in place) and set what trains; return the model.

    Returns the adapted module itself where ``model`` is a targeted layer. Raises where a target pattern
    selects no supported layer, a ``trainable`` pattern matches no parameter, a ``trainable`` pattern would
    train an adapted layer's own weight, or the model already has adapters.
    """
    selected = _select(model, config)
    for name, kind in selected.items():
        model = replace_module(model, name, kind(model.get_submodule(name), config.rank, config.scaling))
    adapters = {id(p) for m in model.modules() if isinstance(m, LoraModule) for p in (m.lora_A, m.lora_B)}
    base_weights = {f"{name}.weight".removeprefix(".") for name in selected}
    names = [name for name, _ in model.named_parameters()]
    for pattern in config.trainable:
        matched = fnmatch.filter(names, pattern)
        if not matched:
            raise ValueError(f"trainable pattern {pattern!r} matches no parameter; names look like {names[:3]}")
        if base_weights.intersection(matched):
            raise ValueError(
                f"trainable pattern {pattern!r} matches {sorted(base_weights.intersection(matched))[0]!r}, the "
                "frozen weight of a LoRA-adapted layer; narrow the pattern (e.g. to the bias) or drop the layer "
                "from the LoRA targets to train it fully"
            )
    for name, param in model.named_parameters():
        extra = any(fnmatch.fnmatchcase(name, pattern) for pattern in config.trainable)
        param.requires_grad_(id(param) in adapters or extra)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer (in place): plain ``nn.Linear``/``nn.Conv2d`` with ``W + s * B @ A``.

    The merged weight keeps the frozen weight's ``requires_grad``; biases are the same parameters. Returns
    the model (the merged layer itself where ``model`` is an adapted layer).
    """
    adapted = [name for name, m in model.named_modules() if isinstance(m, LoraModule)]
    for name in adapted:
        module = model.get_submodule(name)
        assert isinstance(module, LoraModule)
        model = replace_module(model, name, module.merged())
    return model


def _apply(model: nn.Module, config: LoraConfig, context: ModelContext) -> nn.Module:
    model = apply_lora(model, config)
    # apply_freeze replaces the whole selection of what trains: a later freeze must keep the adapters in it.
    context.kept_trainable += tuple(f"*.{name}" for name in ADAPTERS)
    return model


register_technique(
    Technique(
        "lora",
        LoraConfig,
        Stage.MODEL_TRANSFORM,
        order=10,
        describe=lambda config: f"LoRA r{config.rank}",
        slot="trains",
        apply=_apply,
        fold=merge_lora,
        present=lambda model: any(isinstance(m, LoraModule) for m in model.modules()),
    )
)
