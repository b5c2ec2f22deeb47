"""GroupNorm and InstanceNorm for ONNX Runtime training, as primitive ops whose gradients ORT has.

torch.onnx exports ``group_norm`` and ``instance_norm`` (with batch statistics, PyTorch's default for
``nn.InstanceNorm2d``) as ``InstanceNormalization``, which has no gradient builder in ONNX Runtime 1.19.2: the
export was refused ("no gradient for op InstanceNormalization"). These symbolics write the same normalization as
``Reshape -> ReduceMean -> Sub -> Mul -> ReduceMean -> Add(eps) -> Sqrt -> Div -> Reshape``, then the
per-channel affine ``Mul``/``Add``: every op has a gradient in ORT. The variance is the biased one (mean of
squared deviations), as PyTorch normalizes. Instance norm is group norm with one channel per group. Instance norm
with running statistics (``track_running_stats`` in eval mode) keeps torch.onnx's own export (a per-channel affine
map, differentiable).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.onnx import symbolic_helper
from torch.onnx import symbolic_opset9 as opset9

from exporters.techniques.onnx_symbolics import OnnxSymbolicRewrite, constant

WHY = "ONNX Runtime 1.19.2 has no gradient for InstanceNormalization (the export was refused)"


def normalized(g: Any, x: Any, groups: int, weight: Any, bias: Any, eps: float) -> Any:
    """``x`` [N, C, *] normalized over each group of C/``groups`` channels and the spatial dims, then affine."""
    rank = symbolic_helper._get_tensor_rank(x)
    channels = symbolic_helper._get_tensor_dim_size(x, 1)
    if rank is None or channels is None:
        raise ValueError("GroupNorm/InstanceNorm for ONNX Runtime training needs a known rank and channel count")
    grouped = g.op("Reshape", x, constant(g, [0, groups, -1]))  # 0 copies the (symbolic) batch dimension
    mean = g.op("ReduceMean", grouped, axes_i=[2], keepdims_i=1)
    centered = g.op("Sub", grouped, mean)
    variance = g.op("ReduceMean", g.op("Mul", centered, centered), axes_i=[2], keepdims_i=1)
    std = g.op("Sqrt", g.op("Add", variance, g.op("Constant", value_t=torch.tensor(eps, dtype=torch.float32))))
    y = g.op("Reshape", g.op("Div", centered, std), g.op("Shape", x))
    per_channel = constant(g, [channels] + [1] * (rank - 2))
    if not symbolic_helper._is_none(weight):
        y = g.op("Mul", y, g.op("Reshape", weight, per_channel))
    if not symbolic_helper._is_none(bias):
        y = g.op("Add", y, g.op("Reshape", bias, per_channel))
    return y


@symbolic_helper.parse_args("v", "i", "v", "v", "f", "b")
def group_norm(g: Any, x: Any, groups: int, weight: Any, bias: Any, eps: float, _cudnn: bool) -> Any:
    return normalized(g, x, groups, weight, bias, eps)


@symbolic_helper.parse_args("v", "v", "v", "v", "v", "b", "f", "f", "b")
def instance_norm(
    g: Any, x: Any, weight: Any, bias: Any, mean: Any, var: Any, stats: bool, momentum: float, eps: float, cudnn: bool
) -> Any:
    if not symbolic_helper._is_none(mean):
        return None  # running statistics: torch.onnx's export is a differentiable affine map
    return normalized(g, x, symbolic_helper._get_tensor_dim_size(x, 1), weight, bias, eps)


GROUP_NORM = OnnxSymbolicRewrite("groupnorm_primitives", "aten::group_norm", WHY, group_norm, opset9.group_norm)
INSTANCE_NORM = OnnxSymbolicRewrite(
    "instancenorm_primitives", "aten::instance_norm", WHY, instance_norm, opset9.instance_norm
)
