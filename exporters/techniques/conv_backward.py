"""1-D and transposed convolution backward as 2-D forward convolutions and backward passes the runtime has.

ExecuTorch 1.5.1's portable ``convolution_backward`` takes only 2-D, non-transposed convolutions ("Only 2D
Convolution Backward supported for now", "Transposed Convolution Backward not supported yet"): a bundle with a
trainable ``nn.Conv1d`` or ``nn.ConvTranspose2d`` (or any layer before them) failed at its first step.

- 1-D: the same convolution on tensors with a unit height (``unsqueeze(2)``; stride, padding, dilation and output
  padding 1, 0, 1, 0 in that dimension), its gradients squeezed back.
- transposed, y = conv_transpose(x, W): its input gradient is the forward convolution of dL/dy with W (the
  adjoint), its weight gradient is that of ``conv(dL/dy, W)`` against x (``convolution_backward`` with the roles of
  input and output gradient exchanged; both have shapes that fit because output_padding < stride), its bias
  gradient is dL/dy summed over batch and space.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.fx import Node

from exporters.techniques.joint_graph_rewrites import JointGraphRewrite, static_shape

aten = torch.ops.aten
Grads = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def _needs_rewrite(node: Node) -> bool:
    weight, transposed = static_shape(node.args[2]), node.args[7]
    return len(weight) == 3 or (len(weight) == 4 and bool(transposed))


def convolution_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias_sizes: Sequence[int] | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
    mask: Sequence[bool],
) -> Grads | object:
    if weight.dim() == 3:
        gi, gw, gb = aten.convolution_backward.default(
            grad.unsqueeze(2),
            x.unsqueeze(2),
            weight.unsqueeze(2),
            bias_sizes,
            [1, *stride],
            [0, *padding],
            [1, *dilation],
            transposed,
            [0, *output_padding],
            groups,
            mask,
        )
        return (gi.squeeze(2) if mask[0] else None, gw.squeeze(2) if mask[1] else None, gb)
    if weight.dim() != 4 or not transposed:
        return NotImplemented  # the runtime's own kernel
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    grad_input = (
        aten.convolution.default(grad, weight, None, stride, padding, dilation, False, [0, 0], groups)
        if mask[0]
        else None
    )
    grad_weight = (
        aten.convolution_backward.default(
            x, grad, weight, None, stride, padding, dilation, False, [0, 0], groups, [False, True, False]
        )[1]
        if mask[1]
        else None
    )
    grad_bias = grad.sum([0, 2, 3]) if mask[2] else None
    return grad_input, grad_weight, grad_bias


CONV_BACKWARD = JointGraphRewrite(
    name="conv1d_transposed_backward",
    op=aten.convolution_backward.default,
    why="ExecuTorch 1.5.1's convolution_backward takes only 2-D non-transposed convolutions (the step failed)",
    applies=_needs_rewrite,
    decompose=convolution_backward,
)
