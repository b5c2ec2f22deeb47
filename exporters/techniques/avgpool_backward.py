"""Average-pool backward as a depthwise convolution's input gradient, for ExecuTorch.

ExecuTorch 1.5.1 has no kernel for ``aten::avg_pool2d_backward.grad_input`` nor for
``_adaptive_avg_pool2d_backward``: a bundle with ``nn.AvgPool2d`` exported, then failed at its first step
("Missing operator"). Average pooling over a zero-padded input (``count_include_pad``, PyTorch's default) is a
depthwise convolution with every weight ``1 / (kh * kw)`` (or ``1 / divisor_override``), so its input gradient is
that convolution's: ``convolution_backward`` with only the input gradient asked for, which has a portable kernel
(the one depthwise layers train with). The weight is a ``full`` of C x 1 x kh x kw values made in the graph.

Adaptive average pooling whose output divides its input (the usual 1x1 global pool, or 8x8 -> 2x2) is average
pooling with kernel = stride = input / output. Not rewritten (stays as it was): ``ceil_mode``, padding with
``count_include_pad=False`` (a per-position divisor), adaptive pooling that does not divide evenly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.fx import Node

from exporters.techniques.joint_graph_rewrites import JointGraphRewrite, static_shape

aten = torch.ops.aten


def depthwise_mean_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    scale: float,
) -> torch.Tensor:
    """The input gradient of a depthwise convolution whose weights are all ``scale``."""
    channels = x.shape[1]
    weight = grad.new_full((channels, 1, *kernel), scale)
    return aten.convolution_backward.default(
        grad, x, weight, None, list(stride), list(padding), [1, 1], False, [0, 0], channels, [True, False, False]
    )[0]


def _pair(values: Sequence[int]) -> list[int]:
    return list(values) * (2 // len(values))


def _pool_args(
    args: Sequence[object],
) -> tuple[list[int], list[int], list[int], bool, bool, int | None]:
    """kernel, stride, padding (pairs), ceil_mode, count_include_pad, divisor_override of avg_pool2d_backward."""
    given = list(args[2:])
    defaults: list[object] = [[], [0], False, True, None]  # the schema's defaults after kernel_size
    kernel, stride, padding, ceil_mode, count_include_pad, divisor = given + defaults[len(given) - 1 :]
    kernel = _pair(kernel)  # type: ignore[arg-type]
    stride = _pair(stride or kernel)  # type: ignore[arg-type]
    return kernel, stride, _pair(padding), bool(ceil_mode), bool(count_include_pad), divisor  # type: ignore[arg-type,return-value]


def _exact(rank: int, args: Sequence[object]) -> bool:
    _, _, padding, ceil_mode, count_include_pad, _ = _pool_args(args)
    return rank == 4 and not ceil_mode and (count_include_pad or not any(padding))


def _avgpool_exact(node: Node) -> bool:
    return _exact(len(static_shape(node.args[1])), node.args)


def avgpool_backward(grad: torch.Tensor, x: torch.Tensor, *args: object) -> torch.Tensor | object:
    if not _exact(x.dim(), (grad, x, *args)):
        return NotImplemented
    kernel, stride, padding, _, _, divisor = _pool_args((grad, x, *args))
    return depthwise_mean_backward(grad, x, kernel, stride, padding, 1.0 / (divisor or kernel[0] * kernel[1]))


def _even(grad: Sequence[int], x: Sequence[int]) -> bool:
    return len(x) == 4 and x[2] % grad[2] == 0 and x[3] % grad[3] == 0


def _adaptive_even(node: Node) -> bool:
    return _even(*(static_shape(a) for a in node.args[:2]))


def adaptive_avgpool_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor | object:
    if not _even(grad.shape, x.shape):
        return NotImplemented
    kernel = [x.shape[2] // grad.shape[2], x.shape[3] // grad.shape[3]]
    return depthwise_mean_backward(grad, x, kernel, kernel, [0, 0], 1.0 / (kernel[0] * kernel[1]))


AVGPOOL_BACKWARD = JointGraphRewrite(
    name="avgpool_backward_conv",
    op=aten.avg_pool2d_backward.default,
    why="ExecuTorch 1.5.1 has no avg_pool2d_backward kernel (Missing operator at the first step)",
    applies=_avgpool_exact,
    decompose=avgpool_backward,
)
ADAPTIVE_AVGPOOL_BACKWARD = JointGraphRewrite(
    name="adaptive_avgpool_backward_conv",
    op=aten._adaptive_avg_pool2d_backward.default,
    why="ExecuTorch 1.5.1 has no _adaptive_avg_pool2d_backward kernel (Missing operator at the first step)",
    applies=_adaptive_even,
    decompose=adaptive_avgpool_backward,
)
