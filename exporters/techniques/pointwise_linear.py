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
LAYOUTS = ("auto", "bmm", "linear")


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
        check_layout(self.layout)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PointwiseLinearConfig:
        return cls(**data)


class MatmulConv(nn.Module):
    """An ``nn.Conv2d`` computed with a matmul in ``layout`` (``bmm`` or ``linear``).

    Holds the convolution's own ``weight`` and ``bias`` parameters (the same tensors), so a state dict saved
    from either module loads into the other.
    """

    def __init__(self, conv: nn.Conv2d, layout: Layout) -> None:
        super().__init__()
        if layout not in ("bmm", "linear"):
            raise ValueError(f"layout must be 'bmm' or 'linear', got {layout!r}")
        self.layout = layout
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.stride: tuple[int, int] = conv.stride  # type: ignore[assignment]
        self.weight = conv.weight
        self.bias = conv.bias


class PointwiseLinear(MatmulConv):
    """A 1x1 ``nn.Conv2d`` (groups 1, no padding) computed as a matmul over channels (``bmm`` or ``linear``)."""

    def __init__(self, conv: nn.Conv2d, layout: Layout = "bmm") -> None:
        if not is_pointwise(conv):
            raise ValueError(f"{conv} is not a 1x1 convolution with groups 1 and no padding")
        super().__init__(conv, layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        if sh != 1 or sw != 1:
            # A 1x1 kernel with stride s reads every s-th pixel, from the first one (no padding).
            x = x[:, :, ::sh, ::sw]
        weight = self.weight.reshape(self.out_channels, self.in_channels)
        if self.layout == "linear":
            return linear_matmul(x.permute(0, 2, 3, 1), weight, self.bias)
        return bmm_matmul(x, weight, self.bias)

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


def bmm_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``weight [out, k] @ x[n]`` for an NCHW ``x [n, k, h, w]``, as one ``bmm`` over the batch: NCHW out."""
    n, k, h, w = x.shape
    # The expanded weight's gradient is summed back over the batch by autograd.
    y = torch.bmm(weight.expand(n, weight.shape[0], k), x.reshape(n, k, h * w)).reshape(n, -1, h, w)
    return y if bias is None else y + bias.reshape(1, -1, 1, 1)


def linear_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The same product for a channels-last ``x [n, h, w, k]``, as one ``mm``/``addmm`` over all pixels: NCHW out.

    A matmul, not F.linear: XNNPACK's partitioner rebuilds every ``linear`` it sees part of, and a linear whose
    weight is a reshaped input (predict passes the trained weights in) breaks that.
    """
    n, h, w, k = x.shape
    rows = x.reshape(n * h * w, k)
    y = torch.mm(rows, weight.t()) if bias is None else torch.addmm(bias, rows, weight.t())
    return y.reshape(n, h, w, weight.shape[0]).permute(0, 3, 1, 2)


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


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
    shapes = output_shapes(model, chosen, sample) if config.layout == "auto" else {}
    replace_modules(
        model,
        {
            name: PointwiseLinear(conv, pick_layout(config.layout, conv, shapes.get(name)))
            for name, conv in chosen.items()
        },
    )
    return list(chosen)


def pick_layout(layout: str, conv: nn.Conv2d, out_shape: torch.Size | None) -> Layout:
    """``layout``, or for ``"auto"`` (``out_shape``: the layer's output) bmm where the batch's weight copy (out x in
    per sample) is no larger than the channels-last input copy (H x W x in per sample), i.e.
    ``out_channels <= H * W`` of the output; else linear."""
    if layout != "auto":
        return layout  # type: ignore[return-value]
    if out_shape is None:
        raise ValueError("layout 'auto' picks by the layer's feature map: give the rewrite a sample input")
    return "bmm" if conv.out_channels <= out_shape[-2:].numel() else "linear"


def output_shapes(
    model: nn.Module, modules: dict[str, nn.Module], sample: torch.Tensor | None
) -> dict[str, torch.Size]:
    """The output shape of each of ``modules`` (by name) when ``model`` runs ``sample`` once (no grad)."""
    if not modules:
        return {}
    if sample is None:
        raise ValueError("layout='auto' needs a sample input batch to size each layer; pass sample=")
    shapes: dict[str, torch.Size] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, out.shape))
        for name, module in modules.items()
    ]
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def replace_modules(model: nn.Module, replacements: dict[str, nn.Module]) -> None:
    """Put each module of ``replacements`` in ``model`` in place of the submodule of that name."""
    for name, module in replacements.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module)
