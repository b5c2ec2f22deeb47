"""``empty_permuted`` as ``empty``, for ExecuTorch.

PyTorch's decompositions of some activation backwards (SiLU, Mish: ``1 - sigmoid(x)`` as
``full_like(empty_permuted(shape, layout), 1) - sigmoid``) leave an ``empty_permuted`` in the joint graph, which
ExecuTorch 1.5.1 has no kernel for: the first training step failed ("Missing operator:
aten::empty_permuted.out"). With the identity layout (the only one a contiguous NCHW graph produces) it is a plain
``empty`` of that shape and dtype, which has a kernel; its values are never read (``full_like`` overwrites them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.fx import Node

from exporters.techniques.joint_graph_rewrites import JointGraphRewrite


def _identity(layout: Sequence[int]) -> bool:
    return list(layout) == list(range(len(layout)))


def _identity_layout(node: Node) -> bool:
    return _identity(node.args[1])  # type: ignore[arg-type]


def empty(size: Sequence[int], physical_layout: Sequence[int], **kwargs: object) -> torch.Tensor | object:
    if not _identity(physical_layout):
        return NotImplemented
    return torch.empty(list(size), dtype=kwargs.get("dtype"))  # type: ignore[arg-type]


EMPTY_PERMUTED = JointGraphRewrite(
    name="empty_permuted_as_empty",
    op=torch.ops.aten.empty_permuted.default,
    why="ExecuTorch 1.5.1 has no empty_permuted kernel (SiLU/Mish backward: Missing operator at the first step)",
    applies=_identity_layout,
    decompose=empty,
)
