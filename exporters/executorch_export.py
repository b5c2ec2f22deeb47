"""ExecuTorch backend: a training program (.pte) with a joint forward/backward method and a predict method.

Pipeline: ``torch.export`` (non-strict, in strict's parameter order) -> ``_export_forward_backward`` (joint graph:
loss, logits, one gradient per trainable parameter) -> ``to_edge`` with both methods (decomposing only the predict
method: the joint graph is already core ATen; ExecuTorch's edge passes that cannot change a graph skipped) ->
memory techniques on the edge program, a ``Pipeline`` of named steps whose order is checked (recomputation, then the
fused optimizer update: ``exporters/executorch_pipeline.py``) -> ``to_executorch`` with explicitly configured memory
planning.
The planned arena (``non_const_buffer_sizes``) of each method is recorded.

Speed routes (``SpeedConfig``): trainable 1x1 and KxK (im2col) convolutions are rewritten as matmuls on a copy of
the model before ``torch.export``, and the frozen part is lowered to XNNPACK in place of ``to_edge``
(``to_edge_transform_and_lower``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from executorch.exir import EdgeProgramManager, ExecutorchBackendConfig
from executorch.exir.memory_planning import MemoryPlanningAlgorithmSuite, greedy
from executorch.exir.passes import MemoryPlanningPass
from executorch.exir.schema import Program
from torch import nn
from torch.export import ExportedProgram
from torch.export.experimental import _export_forward_backward
from torch.export.graph_signature import OutputKind

from exporters.backend import BackendArtifacts
from exporters.bundle import atomic_write_bytes
from exporters.config import OptimizerConfig
from exporters.edge_program import TracedEdge, recall, remember, to_edge_once, trace_key
from exporters.executorch_pipeline import Pipeline, Step, skip_dim_order_legalization
from exporters.losses import LossSpec
from exporters.memory_profile import profile_planned_method
from exporters.techniques.fused_update import (
    INPUT_DESCRIPTIONS,
    FusedMethod,
    FusedUpdateConfig,
    fuse_optimizer_update,
)
from exporters.techniques.im2col_matmul import rewrite_im2col_convs, sink_temporaries
from exporters.techniques.joint_graph_rewrites import rewrite_joint_graph
from exporters.techniques.pointwise_linear import rewrite_pointwise_convs
from exporters.techniques.recompute import RecomputeConfig, recompute_activations
from exporters.techniques.speed_routes import SpeedConfig
from exporters.training_graph import PredictStep, strip_prefix, trace_train_step, trainable_parameters
from exporters.verify import check_runtime

PROGRAM_FILE = "model.pte"
TRAIN_METHOD = "forward"
PREDICT_METHOD = "predict"

# Greedy is ExecuTorch's default and, measured on MobileNetV2, never beaten by the naive planner or the
# overlap options: only graph changes shrink the arena. Inputs and outputs are planned into the arena so
# the recorded size covers everything the method allocates.
# The runtime's own cost beyond the arenas and the program file: its method structures (one object per value of
# every method) and kernel code faulted in on first use. Fitted over 18 bundles (MLP, SmallCNN, MobileNetV2;
# SGD/AdamW; full, head, bias + micro-batches, recompute, fused) measured with the host code warmed, max error
# 0.92 MiB: `python benchmarks/executorch_overhead.py` (benchmarks/RESULTS-executorch-overhead.md).
RUNTIME_OVERHEAD_BASE_BYTES = 3_346_000  # 3.19 MiB
RUNTIME_OVERHEAD_PER_VALUE_BYTES = 277

PERFORMANCE_CORES = "performance_cores"
MATMUL_ROUTES = ("pointwise_linear", "im2col_matmul")  # routes whose speed needs the optimized matmul kernels
MEMORY_PLANNING = {"algorithm": "greedy", "alloc_graph_input": True, "alloc_graph_output": True}


def export_joint_graph(model: nn.Module, loss: LossSpec, inputs: torch.Tensor, labels: torch.Tensor) -> ExportedProgram:
    """The joint forward/backward program of one training step."""
    if not trainable_parameters(model):
        raise ValueError("no parameter requires grad: nothing to train; unfreeze at least one parameter")
    return _export_forward_backward(trace_train_step(model, loss.fn, inputs, labels), joint_loss_index=0)


def export_predict_graph(model: nn.Module, inputs: torch.Tensor, trainable_names: list[str]) -> ExportedProgram:
    """The predict method: inputs, then the trained parameters in ``trainable_names`` order (the joint graph's
    gradient order, which follows first use in forward, not registration order). Traced non-strict: about 4x
    faster than strict, and the program is the same (tests/test_export_time.py).
    """
    params = dict(model.named_parameters())
    step = PredictStep(model, trainable_names)
    return torch.export.export(step, (inputs, *(params[n].detach() for n in trainable_names)), strict=False)


def gradient_order(joint: ExportedProgram) -> list[str]:
    return [
        spec.target
        for spec in joint.graph_signature.output_specs
        if spec.kind == OutputKind.GRADIENT_TO_PARAMETER and spec.target is not None
    ]


def export_executorch(
    model: nn.Module,
    loss: LossSpec,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    optimizer: OptimizerConfig,
    out_dir: Path,
    recompute: RecomputeConfig | None = None,
    fused_update: FusedUpdateConfig | None = None,
    speed: SpeedConfig | None = None,
) -> BackendArtifacts:
    """Write the training program. The optimizer runs in the app (the runtime has SGD only), or with
    ``fused_update`` in the program itself. ``speed``: the speed routes to take (each only where it applies).
    """
    speed = speed or SpeedConfig.off()
    key = trace_key(model, loss.name, inputs, labels, speed)
    if (shared := recall(key)) is not None:
        return _finish_program(shared, optimizer, out_dir, recompute, fused_update)
    applied: list[dict[str, Any]] = []
    rewrites = [
        (name, config, rewrite)
        for name, config, rewrite in (
            ("pointwise_linear", speed.pointwise_linear, rewrite_pointwise_convs),
            ("im2col_matmul", speed.im2col_matmul, rewrite_im2col_convs),
        )
        if config is not None
    ]
    if rewrites:
        model = copy.deepcopy(model)  # parameter names and shapes stay: the manifest and checkpoints do not change
    for name, config, rewrite in rewrites:
        rewritten = rewrite(model, config, sample=inputs)
        if rewritten:
            applied.append({"name": name, "config": {**config.to_json(), "layers": len(rewritten)}})
    joint = export_joint_graph(model, loss, inputs, labels)
    joint, fixes = rewrite_joint_graph(joint)  # backward ops the runtime gets wrong or lacks (training rewrites)
    applied += fixes
    predict = export_predict_graph(model, inputs, [strip_prefix(n) for n in gradient_order(joint)])
    predict, _ = rewrite_joint_graph(predict)  # the same forward ops (adaptive max-pool) in the predict method
    methods = {TRAIN_METHOD: joint, PREDICT_METHOD: predict}
    delegates: dict[str, int] = {}
    delegate_bytes = 0
    if speed.xnnpack_frozen is not None and any(not p.requires_grad for p in model.parameters()):
        from exporters.techniques.xnnpack_frozen import (
            delegate_count,
            delegate_memory_bytes,
            delegated_op_count,
            lower_frozen_to_xnnpack,
        )

        edge = lower_frozen_to_xnnpack(methods, speed.xnnpack_frozen)
        delegates = delegate_count(edge)
        if any(delegates.values()):
            delegate_bytes = delegate_memory_bytes(edge)
            config = {
                **speed.xnnpack_frozen.to_json(),
                "delegates": delegates,
                "delegated_ops": delegated_op_count(edge),
            }
            applied.append({"name": "xnnpack_frozen", "config": config})
    else:
        edge = to_edge_once(methods)
    traced = remember(key, TracedEdge(edge, gradient_order(joint), applied, delegates, delegate_bytes))
    return _finish_program(traced, optimizer, out_dir, recompute, fused_update)


def _finish_program(
    traced: TracedEdge,
    optimizer: OptimizerConfig,
    out_dir: Path,
    recompute: RecomputeConfig | None,
    fused_update: FusedUpdateConfig | None,
) -> BackendArtifacts:
    """memwall's passes on the edge program, memory planning, the program file and what the manifest records."""
    edge, applied, delegates = traced.edge, traced.techniques, traced.delegates
    fused: list[FusedMethod] = []
    steps = []
    if recompute is not None:
        # Only methods with gradients are edited.
        steps.append(
            Step(
                "recompute",
                lambda edge: recompute_activations(edge, recompute, gradients_consumed=fused_update is not None),
            )
        )
    for technique in applied:
        if technique["name"] == "im2col_matmul":
            # Its backward's big temporaries (the columns' gradient) computed just before use: a smaller arena.
            steps.append(Step("sink_temporaries", lambda edge, t=technique: _sink_temporaries(edge, t)))
    if fused_update is not None:
        steps.append(
            Step(
                "fused_update",
                lambda edge: _fuse_update(edge, optimizer, fused_update, fused),
                after={
                    "recompute": "recomputation finds the forward through the gradient outputs the update removes",
                    "sink_temporaries": "the update places each weight's in-place write after its last reader in "
                    "the final order: a node moved afterwards could land behind the write and see the updated weight",
                },
            )
        )
    final = "it decides on the final graphs"
    steps.append(
        Step(
            "skip_dim_order_legalization",
            skip_dim_order_legalization,
            after={"recompute": final, "sink_temporaries": final, "fused_update": final},
        )
    )
    edge = Pipeline(steps)(edge)
    planner = MemoryPlanningPass(
        memory_planning_algo=MemoryPlanningAlgorithmSuite([greedy]),
        alloc_graph_input=MEMORY_PLANNING["alloc_graph_input"],
        alloc_graph_output=MEMORY_PLANNING["alloc_graph_output"],
    )
    program = edge.to_executorch(ExecutorchBackendConfig(memory_planning_pass=planner))
    arenas = {plan.name: sum(plan.non_const_buffer_sizes) for plan in program.executorch_program.execution_plan}
    runtime = runtime_requirements(
        xnnpack=any(delegates.values()),
        optimized=any(t["name"] in MATMUL_ROUTES for t in applied),
        operators=program_operators(program.executorch_program),
    )
    check_runtime(runtime)  # runnable in the installed runtime, or refused before any file is written
    atomic_write_bytes(out_dir / PROGRAM_FILE, program.buffer)
    trainable = traced.trainable_names
    train = {"name": TRAIN_METHOD, "inputs": ["input", "label"], "outputs": ["loss", "logits"]}
    options: dict[str, Any] = {
        "memory_planning": MEMORY_PLANNING,
        "optimizer_runs_in": "app",
        "runtime": runtime,
    }
    if fused:
        train["inputs"] += fused[0].added_inputs
        train["outputs"] += fused[0].buffers
        options["optimizer_runs_in"] = "program"
        options["train_inputs"] = {name: INPUT_DESCRIPTIONS[name] for name in fused[0].added_inputs}
    return BackendArtifacts(
        files={"program": PROGRAM_FILE},
        planned_arena_bytes=arenas[TRAIN_METHOD],
        trainable_names=trainable,
        methods={
            "train": train,
            "predict": {"name": PREDICT_METHOD, "inputs": ["input", *trainable], "outputs": ["logits"]},
        },
        predict_arena_bytes=arenas[PREDICT_METHOD],
        runtime_overhead_bytes=RUNTIME_OVERHEAD_BASE_BYTES
        + RUNTIME_OVERHEAD_PER_VALUE_BYTES * program_values(program.executorch_program),
        delegate_memory_bytes=traced.delegate_bytes,
        memory_profile=profile_planned_method(
            program.exported_program(TRAIN_METHOD), TRAIN_METHOD, arenas[TRAIN_METHOD]
        ),
        # With the update in the program, optimizer state is mutable buffers in the planned arena.
        optimizer_state_tensors=0 if fused else None,
        consumes_gradients=bool(fused),
        backend_options=options,
        techniques=applied,
    )


def _sink_temporaries(edge: EdgeProgramManager, technique: dict[str, Any]) -> EdgeProgramManager:
    technique["config"]["moved_nodes"] = sink_temporaries(edge.exported_program(TRAIN_METHOD).graph_module)
    return edge


def _fuse_update(
    edge: EdgeProgramManager, optimizer: OptimizerConfig, config: FusedUpdateConfig, fused: list[FusedMethod]
) -> EdgeProgramManager:
    """The optimizer update fused into the training method; its interface appended to ``fused``."""
    fused.append(fuse_optimizer_update(edge, optimizer, config)[TRAIN_METHOD])
    return edge


def program_operators(program: Program) -> list[str]:
    """Every kernel the program's methods call, as ``name.overload`` (``aten::addmm.out``), sorted."""
    return sorted({f"{op.name}.{op.overload}" for plan in program.execution_plan for op in plan.operators})


def program_values(program: Program) -> int:
    """How many values (tensors, scalars, lists) the program's methods hold: the runtime builds one object each."""
    return sum(len(plan.values) for plan in program.execution_plan)


def runtime_requirements(*, xnnpack: bool, optimized: bool, operators: list[str]) -> dict[str, Any]:
    """What the app's ExecuTorch runtime must provide (``backend_options.runtime``).

    ``backends``: delegates the program calls; a runtime without them fails to load it (the stock Android
    ``executorch-android`` AAR and the Python pybindings include XNNPACK). ``kernels``: the kernel library the
    program's speed assumes (``optimized``: ``mm``/``bmm``/``addmm`` with BLAS; the portable library computes the
    same values, slowly). ``threads``: the size to give ExecuTorch's thread pool before the first program loads
    (only XNNPACK and optimized kernels use it): one per performance core with XNNPACK delegates, else 1.
    ``operators``: the kernels the program calls outside delegates, the list a selective runtime build needs
    (``EXECUTORCH_SELECT_OPS_LIST``); a runtime missing one fails to load the method ("Missing operator").
    """
    return {
        "backends": ["XnnpackBackend"] if xnnpack else [],
        "kernels": "optimized" if optimized else "portable",
        "threads": PERFORMANCE_CORES if xnnpack else 1,
        "operators": operators,
    }
