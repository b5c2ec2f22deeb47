"""Training rewrites: layers whose backward a runtime computes wrong or lacks train like eager PyTorch after
memwall's rewrite. Each case exports a tiny model (a trainable stem, the layer, a classifier), runs one step in the
real runtime and compares loss, logits and every gradient with eager (``sdk_tools.coverage.check_cell``); the
manifest names the rewrite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sdk_tools.coverage import ROWS_BY_NAME, Cell, check_cell

CASES = [
    # ExecuTorch 1.5.1's max-pool backward does not zero its output: conv gradients were 4x-220x off.
    ("MaxPool2d 2x2", "executorch", "maxpool_backward_scatter"),
    ("MaxPool2d 3x3 stride 2 pad 1", "executorch", "maxpool_backward_scatter"),  # overlapping windows, padding
    # No avg_pool2d_backward / _adaptive_avg_pool2d_backward kernels: the step failed with "Missing operator".
    ("AvgPool2d 2x2", "executorch", "avgpool_backward_conv"),
    ("AvgPool2d 3x3 stride 1 pad 1", "executorch", "avgpool_backward_conv"),
    ("AdaptiveAvgPool2d 2x2", "executorch", "adaptive_avgpool_backward_conv"),
    # ONNX Runtime 1.19.2 has no gradient for InstanceNormalization, which both export as: the export was refused.
    ("GroupNorm (2 groups)", "onnxruntime", "groupnorm_primitives"),
    ("InstanceNorm2d (affine)", "onnxruntime", "instancenorm_primitives"),
    # ONNX Runtime 1.19.2's AveragePoolGrad killed the process (SIGFPE) at the first step.
    ("AvgPool2d 3x3 stride 1 pad 1", "onnxruntime", "avgpool_conv"),
    ("AdaptiveAvgPool2d 2x2", "onnxruntime", "adaptive_avgpool_conv"),
]


@pytest.mark.parametrize(("row", "backend", "rewrite"), CASES, ids=[f"{r}-{b}" for r, b, _ in CASES])
def test_rewritten_layer_trains_like_eager(tmp_path: Path, row: str, backend: str, rewrite: str) -> None:
    assert check_cell(ROWS_BY_NAME[row], backend, tmp_path) == Cell("trains", rewrite)
