"""int8 frozen weights: frozen layers store their weight as int8 + a float scale per output channel.

A frozen weight is a constant of the training program, so storing it in int8 shrinks the program file
(ExecuTorch ``.pte``) or checkpoint (ONNX Runtime) about 4x for those layers: MobileNetV2 x1.0 8.8 -> 2.6 MB.
The weight is dequantized in the graph with plain ops (cast, multiply): ExecuTorch's portable kernels run
them, whereas ``quantized_decomposed::dequantize_per_channel`` needs an extra kernel library loaded into the
app, and torchao's ``Int8WeightOnlyConfig`` rejects 4-D conv weights. Planned memory does not shrink: the
float weight is rebuilt every step, and where backward runs through the layer (e.g. bias-only training),
the rebuilt weight is kept for it, so the arena grows by the size of those weights.

Math: symmetric, ``scale = max|w| / 127`` per output channel (or per tensor), ``q = round(w / scale)``, so
each weight moves by at most ``scale / 2``. Trainable parameters are never quantized: the layers' biases
keep their ``requires_grad`` and train in float. ``quantization_report`` measures what quantization did to
the model's outputs, for showing to the user before they ship the smaller bundle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from exporters.modules import describe_module, replace_module, select_modules
from exporters.technique import ModelContext, Stage, Technique, register_technique

_LEVELS = 127  # symmetric: -127..127, so the scale maps max|w| exactly and negation is exact


@dataclass(frozen=True)
class Int8WeightsConfig:
    """Store the weights of frozen layers whose module name matches one of ``targets`` (fnmatch) as int8.

    Layers: ``nn.Linear`` and ``nn.Conv2d`` (any kernel and groups, zero padding) whose weight has
    ``requires_grad=False``; the default ``*`` quantizes all of them. A pattern that selects none (only
    trainable or other layers) is an error. ``per_channel``: one scale per output channel (default), else
    one per tensor.
    """

    targets: tuple[str, ...] = ("*",)
    per_channel: bool = True

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("int8 weights need at least one target pattern, e.g. '*' for every frozen layer")

    def to_json(self) -> dict[str, Any]:
        return {"targets": list(self.targets), "per_channel": self.per_channel}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Int8WeightsConfig:
        return cls(targets=tuple(data["targets"]), per_channel=data["per_channel"])


class _Int8Weight(nn.Module):
    """Holds ``weight_int8`` and ``weight_scale`` (broadcastable to the weight) and the layer's ``bias``."""

    weight_int8: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(self, layer: nn.Linear | nn.Conv2d, per_channel: bool) -> None:
        super().__init__()
        quantized, scale = quantize_weight(layer.weight.detach(), per_channel)
        self.register_buffer("weight_int8", quantized)
        self.register_buffer("weight_scale", scale)
        self.bias = layer.bias

    def extra_repr(self) -> str:
        return f"int8 weight {list(self.weight_int8.shape)}, {self.weight_scale.numel()} scales"

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_int8.to(self.weight_scale.dtype) * self.weight_scale


class Int8Linear(_Int8Weight):
    def __init__(self, layer: nn.Linear, per_channel: bool) -> None:
        super().__init__(layer, per_channel)
        self.in_features = layer.in_features
        self.out_features = layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(), self.bias)

    def dequantized(self) -> nn.Linear:
        layer = torch.nn.utils.skip_init(nn.Linear, self.in_features, self.out_features, bias=self.bias is not None)
        return _load(layer, self)


class Int8Conv2d(_Int8Weight):
    def __init__(self, layer: nn.Conv2d, per_channel: bool) -> None:
        super().__init__(layer, per_channel)
        self.in_channels = layer.in_channels
        self.out_channels = layer.out_channels
        self.kernel_size = layer.kernel_size
        self.stride = layer.stride
        self.padding = layer.padding
        self.dilation = layer.dilation
        self.groups = layer.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dequantized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def dequantized(self) -> nn.Conv2d:
        layer = torch.nn.utils.skip_init(
            nn.Conv2d,
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
        )
        return _load(layer, self)


Int8Module = Int8Linear | Int8Conv2d


def _load(layer: nn.Linear | nn.Conv2d, quantized: Int8Module) -> nn.Linear | nn.Conv2d:
    layer.weight = nn.Parameter(quantized.dequantized_weight().detach(), requires_grad=False)
    layer.bias = quantized.bias
    return layer


def quantize_weight(weight: torch.Tensor, per_channel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)``: int8 ``q`` with ``q * scale ~= weight``; ``scale`` has the weight's dtype and rank."""
    magnitude = weight.abs()
    if per_channel:
        amax = magnitude.flatten(1).amax(dim=1).view(-1, *([1] * (weight.dim() - 1)))
    else:
        amax = magnitude.amax().view([1] * weight.dim())
    # An all-zero channel has no range: any positive scale stores it exactly as zeros.
    scale = torch.where(amax > 0, amax / _LEVELS, torch.ones_like(amax))
    quantized = torch.round(weight / scale).clamp(-_LEVELS, _LEVELS).to(torch.int8)
    return quantized, scale


def _int8_kind(module: nn.Module) -> type[Int8Module] | None:
    # Exact types: a subclass's own forward would be replaced by the plain layer's.
    if type(module) is nn.Linear:
        return Int8Linear
    if type(module) is nn.Conv2d and module.padding_mode == "zeros":
        return Int8Conv2d
    return None


def quantize_frozen_weights(model: nn.Module, config: Int8WeightsConfig) -> nn.Module:
    """Replace the targeted frozen layers of ``model`` (in place) by int8-weight layers; return the model.

    Freeze first (``apply_freeze``/``apply_lora``): only layers whose weight has ``requires_grad=False`` are
    quantized; a pattern may also match trainable layers, which stay as they are, but each pattern must
    select at least one frozen layer. Returns the quantized layer itself where ``model`` is one.
    """
    selected = select_modules(
        model,
        config.targets,
        _frozen_kind,
        what="int8",
        lacks="selects no frozen nn.Linear or nn.Conv2d",
        fix="only frozen weights are stored as int8: freeze the layer first (requires_grad=False, e.g. with "
        "apply_freeze) or target frozen layers",
        explain=_why_not,
    )
    for name, kind in selected.items():
        layer = model.get_submodule(name)
        model = replace_module(model, name, kind(layer, config.per_channel))  # type: ignore[arg-type]
    return model


def _frozen_kind(module: nn.Module) -> type[Int8Module] | None:
    kind = _int8_kind(module)
    return kind if kind is not None and not module.weight.requires_grad else None


def _why_not(module: nn.Module) -> str:
    if _int8_kind(module) is not None:
        return f"{describe_module(module)}, weight trainable"
    return describe_module(module)


def dequantize_weights(model: nn.Module) -> nn.Module:
    """Turn every int8-weight layer back into a plain layer holding the dequantized float weight (in place).

    The result computes what the quantized model computes, for inference export and for pulling the trained
    model: its weights are the ones the device trained against.
    """
    for name in [name for name, m in model.named_modules() if isinstance(m, Int8Module)]:
        module = model.get_submodule(name)
        assert isinstance(module, Int8Module)
        model = replace_module(model, name, module.dequantized())
    return model


@dataclass(frozen=True)
class QuantizationReport:
    """How far the quantized model's outputs are from the float model's, over the given inputs."""

    samples: int
    max_abs_error: float  # largest |logit difference|
    mean_abs_error: float
    relative_error: float  # mean |difference| / mean |float logit|
    top1_agreement: float  # fraction of samples whose arg-max class is unchanged
    state_bytes_before: int  # parameters + buffers
    state_bytes_after: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def quantization_report(
    model_before: nn.Module, model_after: nn.Module, batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...]]
) -> QuantizationReport:
    """Compare the float and the quantized model on ``batches`` (inputs, or tuples whose first item is).

    Both models run in eval mode (restored afterwards) without gradients. Quantize a copy:
    ``quantize_frozen_weights(copy.deepcopy(model), config)`` leaves ``model`` as the float reference.
    """
    modes = [(m, m.training) for m in (*model_before.modules(), *model_after.modules())]
    model_before.eval()
    model_after.eval()
    errors: list[torch.Tensor] = []
    magnitudes: list[torch.Tensor] = []
    agree = 0
    try:
        with torch.no_grad():
            for batch in batches:
                inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
                before, after = model_before(inputs), model_after(inputs)
                if before.shape != after.shape:
                    raise ValueError(
                        f"the models disagree on output shape: {list(before.shape)} vs {list(after.shape)}"
                    )
                errors.append((after - before).abs().flatten(1))
                magnitudes.append(before.abs().flatten(1))
                agree += int((before.flatten(1).argmax(1) == after.flatten(1).argmax(1)).sum())
    finally:
        for module, training in modes:
            module.train(training)
    if not errors:
        raise ValueError("quantization_report needs at least one batch of inputs")
    error, magnitude = torch.cat(errors), torch.cat(magnitudes)
    return QuantizationReport(
        samples=error.shape[0],
        max_abs_error=float(error.max()),
        mean_abs_error=float(error.mean()),
        relative_error=float(error.mean() / magnitude.mean().clamp_min(torch.finfo(magnitude.dtype).tiny)),
        top1_agreement=agree / error.shape[0],
        state_bytes_before=_state_bytes(model_before),
        state_bytes_after=_state_bytes(model_after),
    )


def _state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def _apply(model: nn.Module, config: Int8WeightsConfig, context: ModelContext) -> nn.Module:
    return quantize_frozen_weights(model, config)


register_technique(
    Technique(
        "int8_weights",
        Int8WeightsConfig,
        Stage.MODEL_TRANSFORM,
        order=30,
        aliases=("int8_frozen",),  # the plan's field and the CLI flag before the registry
        describe=lambda config: "int8 frozen weights",
        apply=_apply,
        fold=dequantize_weights,
        present=lambda model: any(isinstance(m, Int8Module) for m in model.modules()),
    )
)
