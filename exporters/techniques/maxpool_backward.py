"""Max-pool backward as a scatter-add into zeros, for ExecuTorch.

ExecuTorch 1.5.1's portable ``max_pool2d_with_indices_backward`` scatter-adds the output gradient into its
output buffer without zeroing it first, so the input gradient carries whatever the memory plan left in that
buffer: every parameter before a max-pool gets wrong gradients (measured on ExecuTorch's CIFAR example CNN:
convolution gradients 4x-19x off; upstream pytorch/executorch#21686, fixed after 1.5.1). A bundle must not
depend on a runtime with the fix, so the backward is written as what it computes:

    grad_input = zeros(N, C, H * W).scatter_add(-1, indices.flatten(-2), grad_output.flatten(-2))

``indices`` are the forward's own (flat positions in each input plane, as ``max_pool2d_with_indices`` returns
them), so ties, padding, dilation, ``ceil_mode`` and overlapping windows (3x3 stride 2) route gradients exactly
as PyTorch does. ``full``, ``scatter_add`` and ``view`` have correct portable kernels. Costs one zero-filled
input-sized buffer per max-pool in backward, the size of the gradient the kernel writes anyway.
"""

from __future__ import annotations

import torch
from torch.fx import Node

from exporters.techniques.joint_graph_rewrites import JointGraphRewrite, static_shape


def scatter_add_backward(grad: torch.Tensor, x: torch.Tensor, *indices_last: object) -> torch.Tensor:
    indices = indices_last[-1]
    assert isinstance(indices, torch.Tensor)
    shape = x.shape
    zeros = grad.new_zeros((*shape[:-2], shape[-2] * shape[-1]))
    return zeros.scatter_add(-1, indices.flatten(-2), grad.flatten(-2)).reshape(shape)


def _always(_node: Node) -> bool:
    return True


MAXPOOL_BACKWARD = JointGraphRewrite(
    name="maxpool_backward_scatter",
    op=torch.ops.aten.max_pool2d_with_indices_backward.default,
    why="ExecuTorch 1.5.1's max_pool2d_with_indices_backward does not zero its output (gradients 4x-19x off)",
    applies=_always,
    decompose=scatter_add_backward,
)


def _adaptive_even(node: Node) -> bool:
    x, out = static_shape(node.args[0]), list(node.args[1])  # type: ignore[arg-type]
    return len(x) == 4 and x[2] % out[0] == 0 and x[3] % out[1] == 0


def adaptive_max_pool2d(x: torch.Tensor, output_size: list[int]) -> tuple[torch.Tensor, torch.Tensor] | object:
    if x.dim() != 4 or x.shape[2] % output_size[0] or x.shape[3] % output_size[1]:
        return NotImplemented
    kernel = [x.shape[2] // output_size[0], x.shape[3] // output_size[1]]
    return torch.ops.aten.max_pool2d_with_indices.default(x, kernel, kernel)


# ExecuTorch 1.5.1 has neither adaptive_max_pool2d nor its backward. Where the output divides the input, adaptive
# max pooling is max pooling with kernel = stride = input / output, with the same flat indices (first maximum in
# scan order), so the forward becomes max_pool2d_with_indices and the backward the scatter-add above.
ADAPTIVE_MAXPOOL = JointGraphRewrite(
    name="adaptive_maxpool_as_maxpool",
    op=torch.ops.aten.adaptive_max_pool2d.default,
    why="ExecuTorch 1.5.1 has no adaptive_max_pool2d kernel (the export was refused)",
    applies=_adaptive_even,
    decompose=adaptive_max_pool2d,
)
ADAPTIVE_MAXPOOL_BACKWARD = JointGraphRewrite(
    name="adaptive_maxpool_backward_scatter",
    op=torch.ops.aten.adaptive_max_pool2d_backward.default,
    why=MAXPOOL_BACKWARD.why.replace("max_pool2d_with_indices_backward", "adaptive_max_pool2d_backward (none)"),
    applies=_always,
    decompose=scatter_add_backward,
)
