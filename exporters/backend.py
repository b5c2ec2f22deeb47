"""What a backend exporter hands back to the bundle writer, and the registry of backends."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from exporters.config import OptimizerConfig
from exporters.losses import LossSpec
from exporters.memory_profile import MemoryProfile


@dataclass(frozen=True)
class BackendArtifacts:
    files: dict[str, str]  # role -> path relative to the bundle directory
    planned_arena_bytes: int  # the training step's workspace as the backend plans it
    trainable_names: list[str]  # parameter names as the runtime reports them, in gradient order
    methods: dict[str, dict[str, Any]]  # "train"/"predict" -> {name, inputs, outputs}
    predict_arena_bytes: int = 0  # the predict method's workspace, resident while the app evaluates
    runtime_overhead_bytes: int = 0  # the runtime's own allocations for this program, calibrated by measurement
    # State tensors the runtime keeps per trainable parameter when it differs from the optimizer's own count
    # (ONNX Runtime allocates one even for plain SGD).
    optimizer_state_tensors: int | None = None
    # Whether the training method adds micro-batch gradients into its own gradient buffers (ONNX Runtime's
    # gradient accumulators do): then no separate accumulation buffer exists.
    accumulates_gradients: bool = False
    # Whether the program applies the optimizer right after each gradient (fused update): then about one
    # gradient tensor is alive at a time, not all of them.
    consumes_gradients: bool = False
    backend_options: dict[str, Any] = field(default_factory=dict)
    # Memory a delegate (XNNPACK) holds outside the planned arena: its workspace.
    delegate_memory_bytes: int = 0
    # Techniques the backend exporter applied on its own (speed routes), for the manifest's ``techniques``.
    techniques: list[dict[str, Any]] = field(default_factory=list)
    # Tensor lifetimes of the planned training method, where the backend plans memory itself (ExecuTorch).
    memory_profile: MemoryProfile | None = None


BackendExporter = Callable[[nn.Module, LossSpec, torch.Tensor, torch.Tensor, OptimizerConfig, Path], BackendArtifacts]


# The backends by name: where each one's exporter lives, imported on use (each pulls in its own heavy runtime
# package, and the exporters import this module for BackendArtifacts: no import cycle).
BACKEND_EXPORTERS = {
    "executorch": "exporters.executorch_export:export_executorch",
    "onnxruntime": "exporters.onnxruntime_export:export_onnxruntime",
}


def backend_exporter(backend: str) -> BackendExporter:
    """The exporter of ``backend`` (``"executorch"`` or ``"onnxruntime"``), imported now."""
    if backend not in BACKEND_EXPORTERS:
        names = " or ".join(repr(name) for name in BACKEND_EXPORTERS)
        raise ValueError(f"unknown backend {backend!r}: use {names}")
    module, _, function = BACKEND_EXPORTERS[backend].partition(":")
    return getattr(importlib.import_module(module), function)
