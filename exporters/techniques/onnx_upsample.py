"""Nearest-neighbour upsampling by whole factors for ONNX Runtime training, as ``Unsqueeze`` + ``Expand`` +
``Reshape``.

torch.onnx writes ``F.interpolate(mode="nearest")`` as ``Resize``; ORT 1.19.2's training build has no CPU kernel
for its gradient: the bundle was written and then failed to load ("Could not find an implementation for
ResizeGrad"). Upsampling an N x C x H x W map by whole factors (sh, sw) repeats each pixel: viewed as
N x C x H x 1 x W x 1, broadcast (``Expand``, whose gradient is a ``ReduceSum``) to N x C x H x sh x W x sw and
reshaped to N x C x (H sh) x (W sw) — the same values, and the gradient sums each block as PyTorch's does. Other
factors or output sizes keep torch.onnx's export.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.onnx import symbolic_helper
from torch.onnx._internal.torchscript_exporter import symbolic_opset11 as opset11

from exporters.techniques.onnx_symbolics import OnnxSymbolicRewrite


def _factors(x: Any, output_size: Any, scales: Any) -> list[int] | None:
    sizes = symbolic_helper._get_tensor_sizes(x)
    if sizes is None or len(sizes) != 4 or None in sizes[2:]:
        return None
    if not symbolic_helper._is_none(output_size):
        out = symbolic_helper._maybe_get_const(output_size, "is")
        if symbolic_helper._is_value(out) or any(o % s for o, s in zip(out, sizes[2:], strict=True)):
            return None
        return [o // s for o, s in zip(out, sizes[2:], strict=True)]
    values = symbolic_helper._maybe_get_const(scales, "fs")
    if symbolic_helper._is_value(values) or not values or any(v != int(v) for v in values):
        return None
    return [int(v) for v in values] * (2 // len(values))


def upsample_nearest2d(g: Any, x: Any, output_size: Any, *rest: Any) -> Any:
    factors = _factors(x, output_size, rest[-1] if rest else None)
    if factors is None:
        return None
    _, c, h, w = symbolic_helper._get_tensor_sizes(x)
    spread = g.op("Unsqueeze", x, g.op("Constant", value_t=torch.tensor([3, 5])))
    repeated = g.op("Expand", spread, g.op("Constant", value_t=torch.tensor([1, 1, 1, factors[0], 1, factors[1]])))
    if c is None:
        return None
    shape = torch.tensor([-1, c, h * factors[0], w * factors[1]])  # -1: the (symbolic) batch
    return g.op("Reshape", repeated, g.op("Constant", value_t=shape))


UPSAMPLE_NEAREST = OnnxSymbolicRewrite(
    "upsample_nearest_expand",
    "aten::upsample_nearest2d",
    "ONNX Runtime 1.19.2's training build has no CPU kernel for ResizeGrad (the bundle failed to load)",
    upsample_nearest2d,
    opset11._interpolate("upsample_nearest2d", 4, "nearest"),
)
