"""Trainable 1x1 convolutions as matmuls, so the training step runs optimized kernels.

ExecuTorch's stock runtime has only the portable (naive, single-threaded) ``convolution`` and
``convolution_backward`` kernels; ``mm``/``bmm``/``linear`` have optimized ones. A 1x1 convolution with
groups 1 is a matmul over channels, computed one of two ways (ExecuTorch has no views: every permute or
expand is a copy):

- ``bmm``: ``W[out, in] @ x[n]`` over the NCHW batch, ``x[n]`` viewed as ``[in, H*W]``. No activation copy
  in the forward, but the weight expanded to the batch is a copy backward keeps: batch x weight bytes.
- ``linear``: over a channels-last view (permute, ``mm``, permute back). No weight copy, but the input
  and output are copied to and from channels-last, and backward keeps the channels-last input.

Measured on one 24->144 layer (8x24x24x24, forward + backward, inside a network, this machine): portable conv
762 ms, linear 77 ms, bmm 41 ms. ``"auto"`` picks per layer the form whose kept copy is smaller (bmm when
``out_channels <= H * W``): bmm for the large early feature maps, linear where the weight outgrows the map
(on MobileNetV2 x1.0 96x96 batch 8, bmm everywhere cost +74 MiB of planned arena over the convolutions).

Only convolutions whose weight trains are rewritten: a frozen convolution stays a convolution so that
``xnnpack_frozen`` can lower it to XNNPACK, forward and input gradient (a reshaped, expanded weight is no
longer the static parameter XNNPACK needs).

Parameters keep their names and shapes (weight ``[out, in, 1, 1]``, reshaped in ``forward``), so
checkpoints, the manifest's trainable list and eager comparisons do not change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

Layout = Literal["bmm", "linear"]
_LAYOUTS = ("auto", "bmm", "linear")


@dataclass(frozen=True)
class PointwiseLinearConfig:
    """Rewrite 1x1 ``nn.Conv2d`` layers (groups 1, no padding) into ``PointwiseLinear``.

    ``frozen``: also rewrite convolutions whose weight does not train. Off by default: frozen convolutions
    run faster lowered to XNNPACK, which needs them as convolutions. ``layout``: ``"bmm"``, ``"linear"`` or
    ``"auto"`` (per layer, the smaller kept copy; needs a sample input to know each layer's feature map).
    """

    frozen: bool = False
    layout: Literal["auto", "bmm", "linear"] = "auto"

    def __post_init__(self) -> None:
        if self.layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {_LAYOUTS}, got {self.layout!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PointwiseLinearConfig:
        return cls(**data)


class PointwiseLinear(nn.Module):
    """A 1x1 ``nn.Conv2d`` (groups 1, no padding) computed as a matmul over channels (``bmm`` or ``linear``).

    Holds the convolution's own ``weight`` and ``bias`` parameters (the same tensors), so a state dict saved
    from either module loads into the other.
    """

    def __init__(self, conv: nn.Conv2d, layout: Layout = "bmm") -> None:
        super().__init__()
        if not is_pointwise(conv):
            raise ValueError(f"{conv} is not a 1x1 convolution with groups 1 and no padding")
        if layout not in ("bmm", "linear"):
            raise ValueError(f"layout must be 'bmm' or 'linear', got {layout!r}")
        self.layout = layout
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.stride: tuple[int, int] = conv.stride  # type: ignore[assignment]
        self.weight = conv.weight
        self.bias = conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        if sh != 1 or sw != 1:
            # A 1x1 kernel with stride s reads every s-th pixel, from the first one (no padding).
            x = x[:, :, ::sh, ::sw]
        weight = self.weight.reshape(self.out_channels, self.in_channels)
        n, c, h, w = x.shape
        if self.layout == "linear":
            # A matmul, not F.linear: XNNPACK's partitioner rebuilds every ``linear`` it sees part of, and a
            # linear whose weight is a reshaped input (predict passes the trained weights in) breaks that.
            rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
            y = torch.mm(rows, weight.t()) if self.bias is None else torch.addmm(self.bias, rows, weight.t())
            return y.reshape(n, h, w, self.out_channels).permute(0, 3, 1, 2)
        # The expanded weight's gradient is summed back over the batch by autograd.
        y = torch.bmm(weight.expand(n, self.out_channels, c), x.reshape(n, c, h * w))
        y = y.reshape(n, self.out_channels, h, w)
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, bias={self.bias is not None}, "
            f"layout={self.layout}"
        )


def is_pointwise(module: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` that ``PointwiseLinear`` computes exactly."""
    return (
        isinstance(module, nn.Conv2d)
        and type(module).forward is nn.Conv2d.forward  # a subclass may compute something else
        and module.kernel_size == (1, 1)
        and module.groups == 1
        and module.padding in ((0, 0), "valid")  # a padded 1x1 convolution adds a border of bias
    )


def rewrite_pointwise_convs(
    model: nn.Module, config: PointwiseLinearConfig | None = None, sample: torch.Tensor | None = None
) -> list[str]:
    """Replace qualifying 1x1 convolutions of ``model`` in place; return the names of the replaced modules.

    ``sample``: an input batch as the model trains on it; ``layout="auto"`` runs it once to see each layer's
    feature map.
    """
    config = config or PointwiseLinearConfig()
    chosen = {
        name: module
        for name, module in model.named_modules()
        if is_pointwise(module) and (config.frozen or module.weight.requires_grad)
    }
    layouts: dict[str, Layout] = {name: config.layout for name in chosen}  # type: ignore[misc]
    if config.layout == "auto" and chosen:
        if sample is None:
            raise ValueError("layout='auto' needs a sample input batch to size each layer; pass sample=")
        layouts = _auto_layouts(model, chosen, sample)
    for name, module in chosen.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, PointwiseLinear(module, layouts[name]))
    return list(chosen)


def _auto_layouts(model: nn.Module, chosen: dict[str, nn.Conv2d], sample: torch.Tensor) -> dict[str, Layout]:
    """bmm where the batch's weight copy (out x in per sample) is no larger than the channels-last input copy
    (H x W x in per sample), i.e. ``out_channels <= H * W`` of the output; else linear."""
    sizes: dict[str, int] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: sizes.__setitem__(name, out.shape[-2:].numel()))
        for name, module in chosen.items()
    ]
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: "bmm" if conv.out_channels <= sizes[name] else "linear" for name, conv in chosen.items()}
