"""``to_edge`` without decomposing a graph twice.

``executorch.exir.to_edge`` starts every method with ``run_decompositions`` over the default (core ATen + edge)
table, which re-traces the whole program even when nothing in it would decompose. The joint training graph comes
out of ``_export_forward_backward`` already decomposed to core ATen, so that re-trace changes nothing and costs
about 7.6 s CPU for MobileNetV2 x1.0 at 96x96, batch 8 (stage ``edge`` 30.2 -> 22.6 s:
`python benchmarks/export_time.py`, benchmarks/RESULTS-export-time.md).
``to_edge_once`` runs the decompositions only on methods that hold an op the table (or a CompositeImplicitAutograd
kernel) would rewrite, then the same edge passes ``to_edge`` runs, less those that cannot change the graph
(``exporters.executorch_pipeline``): the program is the same, byte for byte (tests/test_export_time.py).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from executorch.exir import EdgeCompileConfig, EdgeProgramManager
from executorch.exir.tracer import _default_decomposition_table
from torch import nn
from torch.export import ExportedProgram

from exporters.executorch_pipeline import generate_edge_program

# ``to_edge`` verifies the ATen and edge dialects only with ``_check_ir_validity``; the exporter's programs are
# checked by running them (tests), and the training graph's backward ops fail the ATen verifier's allow-list.
EDGE_CONFIG = EdgeCompileConfig(_check_ir_validity=False)


def needs_decomposition(program: ExportedProgram, table: dict[torch._ops.OpOverload, object]) -> bool:
    """Whether ``run_decompositions(table)`` could change ``program``: an op in the table, a composite op, or any
    call that is not a plain ATen operator overload (higher-order ops, packets)."""
    for node in program.graph_module.graph.nodes:
        if node.op != "call_function" or node.target.__module__ == "_operator":
            continue
        target = node.target
        if not isinstance(target, torch._ops.OpOverload) or target in table:
            return True
        if torch._C._dispatch_has_kernel_for_dispatch_key(target.name(), "CompositeImplicitAutograd"):
            return True
    return False


def to_edge_once(programs: dict[str, ExportedProgram]) -> EdgeProgramManager:
    """``to_edge(programs, compile_config=EDGE_CONFIG)``, skipping decompositions and edge passes that would change
    nothing."""
    table = _default_decomposition_table()
    for op in EDGE_CONFIG.preserve_ops:
        table.pop(op, None)
    edge = {}
    for name, program in programs.items():
        if needs_decomposition(program, table):
            program = program.run_decompositions(table)
        edge[name] = generate_edge_program(EDGE_CONFIG, program, preserve_ops=EDGE_CONFIG.preserve_ops)
    return EdgeProgramManager(edge, None, EDGE_CONFIG)


@dataclass(frozen=True)
class TracedEdge:
    """What every variant of one model, loss and batch shares: the edge program before memwall's graph passes."""

    edge: EdgeProgramManager
    trainable_names: list[str]  # gradient order
    techniques: list[dict[str, Any]]  # speed routes applied on the way
    delegates: dict[str, int]
    delegate_bytes: int


_SHARED: dict[str, TracedEdge] | None = None
SHARED_LIMIT = 4  # a planner search alternates between at most 2-3 batch shapes of one trainable set


@contextlib.contextmanager
def shared_traces() -> Iterator[None]:
    """Within this block, exports of the same model (weights, trainable set), loss, batch and speed routes reuse one
    trace, joint graph and edge program: the planner's variants of a trainable set (plain, fused update,
    recomputation) differ only in the passes after ``to_edge``. Off outside it, so an export never depends on what
    an earlier one in the process did."""
    global _SHARED
    outer, _SHARED = _SHARED, {} if _SHARED is None else _SHARED
    try:
        yield
    finally:
        _SHARED = outer


def open_shared_traces() -> None:
    """``shared_traces`` for the rest of this process: a planner's export worker, which only exports candidates."""
    global _SHARED
    _SHARED = {} if _SHARED is None else _SHARED


def trace_key(model: nn.Module, loss_name: str, inputs: torch.Tensor, labels: torch.Tensor, speed: Any) -> str | None:
    """Everything the edge program depends on, hashed; None outside ``shared_traces``."""
    if _SHARED is None:
        return None
    digest = hashlib.sha256(repr(model).encode())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        flag = getattr(tensor, "requires_grad", False)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:{flag}".encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    digest.update(json.dumps([loss_name, list(inputs.shape), str(inputs.dtype), speed.to_json()]).encode())
    digest.update(labels.contiguous().numpy().tobytes())
    return digest.hexdigest()


def recall(key: str | None) -> TracedEdge | None:
    """A copy of the shared edge program under ``key`` (the caller's passes edit it in place)."""
    found = _SHARED.get(key) if _SHARED is not None and key is not None else None
    return copy.deepcopy(found) if found is not None else None


def remember(key: str | None, traced: TracedEdge) -> TracedEdge:
    """Share ``traced`` under ``key`` (a copy: the caller goes on editing its own)."""
    if _SHARED is not None and key is not None:
        while len(_SHARED) >= SHARED_LIMIT:
            _SHARED.pop(next(iter(_SHARED)))
        _SHARED[key] = copy.deepcopy(traced)
    return traced
