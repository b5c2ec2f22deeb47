"""GroupNorm and InstanceNorm for ONNX Runtime training, as primitive ops whose gradients ORT has.

torch.onnx exports ``group_norm`` and ``instance_norm`` (with batch statistics, PyTorch's default for
``nn.InstanceNorm2d``) as ``InstanceNormalization``, which has no gradient builder in ONNX Runtime 1.19.2: the
export was refused ("no gradient for op InstanceNormalization"). These symbolics, registered only while memwall
exports a training graph, write the same normalization as ``Reshape -> ReduceMean -> Sub -> Mul -> ReduceMean ->
Add(eps) -> Sqrt -> Div -> Reshape``, then the per-channel affine ``Mul``/``Add``: every op has a gradient in ORT.
The variance is the biased one (mean of squared deviations), as PyTorch normalizes. Instance norm is group norm
with one channel per group. Instance norm with running statistics (``track_running_stats`` in eval mode) keeps
torch.onnx's own export (a per-channel affine map, differentiable).

``onnx_training_symbolics(opset)`` registers them for the duration of an export and yields the list of rewrites
that fired, for the manifest's ``techniques``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.onnx import symbolic_helper
from torch.onnx import symbolic_opset9 as opset9

GROUP_NORM = "groupnorm_primitives"
INSTANCE_NORM = "instancenorm_primitives"
WHY = "ONNX Runtime 1.19.2 has no gradient for InstanceNormalization (the export was refused)"


def _normalized(g: Any, x: Any, groups: int, weight: Any, bias: Any, eps: float) -> Any:
    """``x`` [N, C, *] normalized over each group of C/``groups`` channels and the spatial dims, then affine."""
    rank = symbolic_helper._get_tensor_rank(x)
    channels = symbolic_helper._get_tensor_dim_size(x, 1)
    if rank is None or channels is None:
        raise ValueError("GroupNorm/InstanceNorm for ONNX Runtime training needs a known rank and channel count")
    # 0 copies the (symbolic) batch dimension.
    grouped = g.op("Reshape", x, g.op("Constant", value_t=torch.tensor([0, groups, -1])))
    mean = g.op("ReduceMean", grouped, axes_i=[2], keepdims_i=1)
    centered = g.op("Sub", grouped, mean)
    variance = g.op("ReduceMean", g.op("Mul", centered, centered), axes_i=[2], keepdims_i=1)
    std = g.op("Sqrt", g.op("Add", variance, g.op("Constant", value_t=torch.tensor(eps, dtype=torch.float32))))
    y = g.op("Reshape", g.op("Div", centered, std), g.op("Shape", x))
    per_channel = g.op("Constant", value_t=torch.tensor([channels] + [1] * (rank - 2)))
    if not symbolic_helper._is_none(weight):
        y = g.op("Mul", y, g.op("Reshape", weight, per_channel))
    if not symbolic_helper._is_none(bias):
        y = g.op("Add", y, g.op("Reshape", bias, per_channel))
    return y


@contextlib.contextmanager
def onnx_training_symbolics(opset: int) -> Iterator[list[dict[str, Any]]]:
    """Register the symbolics for one export; yields the techniques entries of the rewrites that fired."""
    fired: dict[str, int] = {}

    @symbolic_helper.parse_args("v", "i", "v", "v", "f", "b")
    def group_norm(g: Any, x: Any, groups: int, weight: Any, bias: Any, eps: float, _cudnn: bool) -> Any:
        fired[GROUP_NORM] = fired.get(GROUP_NORM, 0) + 1
        return _normalized(g, x, groups, weight, bias, eps)

    @symbolic_helper.parse_args("v", "v", "v", "v", "v", "b", "f", "f", "b")
    def instance_norm(
        g: Any,
        x: Any,
        weight: Any,
        bias: Any,
        mean: Any,
        var: Any,
        batch_stats: bool,
        momentum: float,
        eps: float,
        cudnn: bool,
    ) -> Any:
        if not symbolic_helper._is_none(mean):  # running statistics: torch.onnx's affine export is differentiable
            return opset9.instance_norm(g, x, weight, bias, mean, var, batch_stats, momentum, eps, cudnn)
        fired[INSTANCE_NORM] = fired.get(INSTANCE_NORM, 0) + 1
        return _normalized(g, x, symbolic_helper._get_tensor_dim_size(x, 1), weight, bias, eps)

    symbolics = {"aten::group_norm": group_norm, "aten::instance_norm": instance_norm}
    for name, fn in symbolics.items():
        torch.onnx.register_custom_op_symbolic(name, fn, opset)
    applied: list[dict[str, Any]] = []
    try:
        yield applied
    finally:
        for name in symbolics:
            torch.onnx.unregister_custom_op_symbolic(name, opset)
        applied += [{"name": name, "config": {"nodes": count, "why": WHY}} for name, count in fired.items()]
