"""ONNX Runtime backend: artifacts for ``onnxruntime.training.api`` and the 1.19.2 mobile training packages.

Pipeline: ``torch.onnx.export`` (TorchScript exporter, opset 17, the loss inside the graph so built-in and
custom losses export alike, symbolic batch dimension) -> ``onnxruntime.training.artifacts.generate_artifacts``
(training model with the gradient graph, eval model, optimizer model, checkpoint) -> graph edits -> atomic
writes into the bundle.

Graph edits, each for a measured reason:
- The loss-gradient seed becomes the train-step input ``loss_scale`` instead of a constant 1: ORT adds the
  gradients of every call until ``lazy_reset_grad``, so over k micro-batches the app feeds 1/k and the
  accumulated gradient is the full-batch mean (AdamW is not scale-invariant: the learning rate cannot
  absorb the factor).
- The eval model is pruned to ``input -> logits``: it is the predict method and the source of the
  on-device inference export, neither of which should need labels.
- AdamW runs with ``adam_mode=0`` (PyTorch's AdamW); onnxblock writes 1 (Hugging Face's variant).
- With ``recompute``, backward recomputes activations from checkpoints (``techniques/onnx_recompute.py``); the
  sessions must then disable ORT's CommonSubexpressionElimination (``backend_options.session_config``).

The memory estimate models what ORT's sessions allocate (``SessionMemory``): the step's workspace from a walk
of the training graph as ORT runs it, the rest derived from the parameters or calibrated by measurement.

Files are ``.onnx``, not ``.ort``: the 1.19.2 mobile training packages are full builds that load .onnx,
and ``export_model_for_inferencing`` fails on an .ort eval model (measured: "Protobuf parsing failed").
See docs/onnxruntime.md.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import helper
from torch import nn
from torch.onnx import symbolic_helper

from exporters.backend import BackendArtifacts
from exporters.bundle import atomic_write_bytes
from exporters.config import OptimizerConfig
from exporters.losses import LossFn, LossSpec
from exporters.memory_profile import profile_onnx_training
from exporters.techniques.onnx_recompute import (
    SESSION_CONFIG,
    OrtRun,
    TrainingGraphRoles,
    allocated_bytes,
    recompute_training_graph,
)
from exporters.techniques.onnx_symbolics import onnx_training_symbolics
from exporters.techniques.recompute import RecomputeConfig
from exporters.training_graph import MODEL_PREFIX, TrainStep, trainable_parameters
from exporters.verify import UnsupportedOperatorError, runtime_version

OPSET = 17
BATCH_DIM = "batch"
TRAINING_MODEL = "training_model.onnx"
EVAL_MODEL = "eval_model.onnx"
OPTIMIZER_MODEL = "optimizer_model.onnx"
CHECKPOINT = "checkpoint"
LOSS_GRAD = "loss_grad"  # the seed as ORT names it: after the loss output
# Not "*_grad": the runtime takes inputs named so for gradient buffers.
LOSS_SCALE = "loss_scale"
TRAIN_INPUTS = ["input", "label", LOSS_SCALE]

# For phones (docs/onnxruntime.md, measured in child processes): the arena grows by doubling, so MobileNetV2
# x1.0 96x96 batch 8 peaks at 242 MiB with it and 141 MiB without; without it, large blocks go back to the
# system on free, as phone allocators do (glibc only with a fixed mmap threshold).
CPU_MEM_ARENA = False
# ORT's own memory, fitted to the phase peaks ``memwall measure`` reports for the 36 benchmark bundles (MLP /
# SmallCNN / MobileNetV2 x0.5 32x32; full / bias-only / classifier-only; SGD / AdamW; with and without
# recomputation; ``python benchmarks/onnxruntime_memory.py rows`` measures them against the prediction):
# - the three sessions' fixed cost (code pages, thread pool, kernel registry, allocators), with ORT's AdamW;
_SESSION_BYTES = 7 * 2**20 + 45 * 2**10
# - the plain-SGD optimizer session costs this much more than AdamW's;
_SGD_SESSION_BYTES = 672 * 2**10
# - per input or output of a node of the training and eval graphs as ORT runs them (graph, kernels, plan);
_GRAPH_EDGE_BYTES = 1.9 * 2**10
# - per tensor of the checkpoint: ORT loads each into its own 1 MiB arena region, whose chunk-handle table is
#   32 KiB (4096 chunks of 256 B, measured 37 KiB per tensor with the chunk records);
_CHECKPOINT_TENSOR_BYTES = 37 * 2**10
# - what the first predict and train calls allocate and keep (kernel caches, the host runner's objects);
_FIRST_CALL_BYTES = 4 * 2**20 + 150 * 2**10
# - ORT's checkpoint serializer grows a flatbuffer by 1.5x and copies on growth: measured 1.2-1.64x the
#   parameters plus optimizer state (larger checkpoints higher); the upper end, as it sets the peak only where
#   activations are small.
_CHECKPOINT_SAVE_FACTOR = 1.6

# Optional outputs that ORT's gradient builders read and torch.onnx does not emit.
_OUTPUTS_NEEDED_FOR_GRADIENT = {
    "SoftmaxCrossEntropyLoss": ("log_prob",),
    "LayerNormalization": ("mean", "inv_std"),
}


class OnnxTrainStep(TrainStep):
    """``TrainStep`` whose loss sees its own copy of the logits.

    Without the copy the TorchScript tracer records a broadcasting loss's ``expand`` (``mse_loss``) as the
    logits output, and predictions would depend on the labels input.
    """

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(inputs)
        return self.loss_fn(logits.clone(), labels), logits


def _stable_bce_with_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # torch.onnx (and ORT's BCEWithLogitsLoss block) compute log(sigmoid(x)): -inf for |x| > ~17 in
    # float32. x/2 + |x|/2 is relu(x), written so ORT's gradient is sigmoid(x) - y at x == 0 as well.
    abs_logits = logits.abs()
    return (logits * (0.5 - labels) + 0.5 * abs_logits + torch.log(1 + torch.exp(-abs_logits))).mean()


# Exported forms of built-in losses whose exporter symbolic is numerically worse than eager.
ONNX_LOSS_FORMS: dict[str, LossFn] = {"bce_with_logits": _stable_bce_with_logits}


@symbolic_helper.parse_args("v", "f", "f")
def _hardtanh_symbolic(g: Any, x: Any, min_val: float, max_val: float) -> Any:
    # ReLU6 is hardtanh(0, 6). ORT differentiates Clip where x >= min, PyTorch's hardtanh where x > min,
    # and ReLU6 inputs are exactly 0 wherever a zero activation meets a zero shift (MobileNetV2: gradients
    # off by up to 90%). ORT's Relu gradient is strict, as PyTorch's.
    if min_val == 0:
        x = g.op("Relu", x)
    bounds = [g.op("Constant", value_t=torch.tensor(v, dtype=torch.float32)) for v in (min_val, max_val)]
    return g.op("Clip", x, *bounds)


def export_forward_graph(
    model: nn.Module, loss: LossSpec, inputs: torch.Tensor, labels: torch.Tensor
) -> onnx.ModelProto:
    """The forward graph ``(input, label) -> (loss, logits)`` with a symbolic batch dimension."""
    step = OnnxTrainStep(model, ONNX_LOSS_FORMS.get(loss.name, loss.fn))
    buffer = io.BytesIO()
    batch = {0: BATCH_DIM}
    torch.onnx.register_custom_op_symbolic("aten::hardtanh", _hardtanh_symbolic, OPSET)
    try:
        # PRESERVE exports the prepared model as it is (eval: no dropout, the graph ExecuTorch trains);
        # TRAINING would switch dropout on and leave the model in train mode. Constant folding would
        # turn parameters into constants.
        torch.onnx.export(
            step,
            (inputs, labels),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
            input_names=["input", "label"],
            output_names=["loss", "logits"],
            dynamic_axes={"input": batch, "label": batch, "logits": batch},
        )
    except torch.onnx.errors.OnnxExporterError as exc:
        raise ValueError(f"torch.onnx cannot export the model and loss for ONNX Runtime: {exc}") from exc
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::hardtanh", OPSET)
    graph = onnx.load_from_string(buffer.getvalue())
    for node in graph.graph.node:
        for suffix in _OUTPUTS_NEEDED_FOR_GRADIENT.get(node.op_type, ())[len(node.output) - 1 :]:
            node.output.append(f"{node.name or node.output[0]}_{suffix}")
    return graph


def runs_in_onnxruntime(optimizer: OptimizerConfig) -> bool:
    """Whether ORT's optimizer model computes exactly ``torch.optim``'s update for this config.

    ORT 1.19 has SGDOptimizerV2 (``p -= lr * g``: no momentum, no weight decay) and AdamWOptimizer (mode 0
    is PyTorch's AdamW). Anything else is applied by the app from the accumulated gradients.
    """
    return optimizer.kind == "adamw" or (optimizer.momentum == 0 and optimizer.weight_decay == 0)


@contextlib.contextmanager
def _native_stderr_to(path: Path) -> Iterator[None]:
    # ORT's gradient builder logs every graph transformer at INFO on fd 2, whatever the logger severity.
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("wb") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _no_gradient_error(exc: RuntimeError) -> UnsupportedOperatorError | None:
    match = re.search(r"gradient builder has not been registered: (\S+) for node (\S+)", str(exc))
    if match is None:
        return None
    op, node = match.groups()
    return UnsupportedOperatorError(
        f"{runtime_version('onnxruntime')} has no gradient for op {op} (node {node}), which lies between the loss "
        f"and a trainable parameter. Freeze the parameters before it (requires_grad=False) so no gradient flows "
        f"through {op}, replace it with ops ONNX Runtime can differentiate, or use the executorch backend."
    )


def _generate_artifacts(
    graph: onnx.ModelProto, trainable: list[str], frozen: list[str], optimizer: OptimizerConfig, work: Path
) -> None:
    from onnxruntime.training import artifacts, onnxblock

    optim: Any = None
    if optimizer.kind == "adamw":
        optim = onnxblock.optim.AdamW(betas=optimizer.betas, eps=optimizer.eps, weight_decay=optimizer.weight_decay)
    elif runs_in_onnxruntime(optimizer):
        optim = artifacts.OptimType.SGD
    try:
        with _native_stderr_to(work / "ort.log"):
            artifacts.generate_artifacts(
                graph,
                requires_grad=trainable,
                frozen_params=frozen,
                loss=None,  # the loss is the graph's first output
                optimizer=optim,
                artifact_directory=work,
            )
    except RuntimeError as exc:
        raise _no_gradient_error(exc) or ValueError(f"ONNX Runtime cannot build the training graph: {exc}") from exc


def _feed_loss_scale(training: onnx.ModelProto) -> None:
    graph = training.graph
    seed = next((init for init in graph.initializer if init.name == LOSS_GRAD), None)
    if seed is None:
        raise RuntimeError(f"the training graph has no {LOSS_GRAD!r}: unsupported onnxruntime version")
    graph.initializer.remove(seed)
    for node in graph.node:
        node.input[:] = [LOSS_SCALE if name == LOSS_GRAD else name for name in node.input]
    # Right after the labels: the runtime takes positional train-step inputs in graph order.
    position = next(i for i, value in enumerate(graph.input) if value.name == "label") + 1
    graph.input.insert(position, helper.make_tensor_value_info(LOSS_SCALE, seed.data_type, list(seed.dims)))


def _prune_to_logits(eval_model: onnx.ModelProto) -> None:
    graph = eval_model.graph
    needed = {"logits"}
    kept = []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
    if "label" in needed:
        raise ValueError("the model's logits depend on the labels input; predictions must not need labels")
    del graph.node[:]
    graph.node.extend(reversed(kept))
    for field in (graph.input, graph.initializer, graph.output):
        for item in [item for item in field if item.name not in needed]:
            field.remove(item)


def _use_pytorch_adamw(optimizer_model: onnx.ModelProto) -> None:
    for node in optimizer_model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "AdamWOptimizer" and attribute.name == "adam_mode":
                attribute.i = 0


@dataclass(frozen=True)
class SessionMemory:
    """What an ORT training session holds and allocates beyond the bundle's files (loaded as they are), in bytes.

    Derived from the artifacts: gradient buffers, optimizer state, the training step's workspace and the
    predict method's (``onnx_recompute.workspace_bytes``: ORT's execution order, allocation planner and memory
    pattern), the checkpoint serialization. Calibrated by measurement (docs/onnxruntime.md "Memory"): the
    sessions' structures, the first calls' allocations, the serializer's growth factor.
    """

    gradient_buffer_bytes: int  # one per trainable parameter, where ORT accumulates gradients in place
    step_workspace_bytes: int  # the training step's intermediate tensors, allocated per call
    predict_workspace_bytes: int  # the predict method's, per call: below the step's, never at the same time
    session_bytes: int  # three sessions (train, eval, optimizer): graphs, kernels, plans, checkpoint tensors
    first_call_bytes: int  # what the first train and predict calls allocate and keep (caches, the runner's)
    checkpoint_save_bytes: int  # ORT's checkpoint serializer at its peak (parameters + optimizer state)

    @property
    def transient_bytes(self) -> int:
        """Per-call and checkpoint buffers never coexist: the peak holds the largest of them."""
        return max(self.step_workspace_bytes, self.predict_workspace_bytes, self.checkpoint_save_bytes)

    @property
    def runtime_overhead_bytes(self) -> int:
        """``MemoryEstimate.runtime_overhead_bytes``: all but the gradient buffers and the step's workspace
        (the planned arena), the optimizer state and the files, which the estimate counts on their own."""
        return self.session_bytes + self.first_call_bytes + self.transient_bytes - self.step_workspace_bytes

    def to_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def session_memory(
    training: OrtRun,
    evaluation: OrtRun,
    *,
    checkpoint_tensors: int,
    parameter_bytes: int,
    trainable_bytes: int,
    optimizer_state_bytes: int,
    optimizer_runs_in: str,
    optimizer_kind: str,
) -> SessionMemory:
    """ORT's memory for a bundle, beyond its files (``SessionMemory``), from one call of the training and the eval
    graph as ORT runs them. Where the app runs the optimizer there is no optimizer session and no ORT checkpoint to
    serialize: the app saves its own tensors."""
    in_runtime = optimizer_runs_in == "onnxruntime"
    edges = sum(len(op.inputs) + len(op.outputs) for run in (training, evaluation) for op in run.ops)
    session = (
        _SESSION_BYTES
        + (_SGD_SESSION_BYTES if in_runtime and optimizer_kind == "sgd" else 0)
        + _CHECKPOINT_TENSOR_BYTES * checkpoint_tensors
        + int(_GRAPH_EDGE_BYTES * edges)
    )
    return SessionMemory(
        gradient_buffer_bytes=trainable_bytes,
        step_workspace_bytes=allocated_bytes(training.allocation, training.infos),
        predict_workspace_bytes=allocated_bytes(evaluation.allocation, evaluation.infos),
        session_bytes=session,
        first_call_bytes=_FIRST_CALL_BYTES,
        checkpoint_save_bytes=int(_CHECKPOINT_SAVE_FACTOR * (parameter_bytes + optimizer_state_bytes))
        if in_runtime
        else 0,
    )


def export_onnxruntime(
    model: nn.Module,
    loss: LossSpec,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    optimizer: OptimizerConfig,
    out_dir: Path,
    recompute: RecomputeConfig | None = None,
) -> BackendArtifacts:
    """Write the training and eval models, the checkpoint, and the optimizer model if ORT runs it; with
    ``recompute``, the training graph recomputes activations (``exporters.techniques.onnx_recompute``)."""
    trainable = [MODEL_PREFIX + name for name in trainable_parameters(model)]
    if not trainable:
        raise ValueError("no parameter requires grad: nothing to train; unfreeze at least one parameter")
    with onnx_training_symbolics(OPSET) as rewrites:  # ops ORT has no gradient for, as primitive ops
        graph = export_forward_graph(model, loss, inputs, labels)
    initializers = [init.name for init in graph.graph.initializer]
    renamed = sorted(set(trainable) - set(initializers))
    if renamed:
        raise ValueError(f"torch.onnx renamed or dropped parameters {renamed[:3]} (tied weights?)")
    state_names = {MODEL_PREFIX + name for name, _ in [*model.named_parameters(), *model.named_buffers()]}
    frozen = [name for name in initializers if name in state_names and name not in trainable]
    in_runtime = runs_in_onnxruntime(optimizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".onnxruntime-") as tmp:
        work = Path(tmp)
        _generate_artifacts(graph, trainable, frozen, optimizer, work)
        training = onnx.load(work / TRAINING_MODEL)
        _feed_loss_scale(training)
        session_config: dict[str, str] = {}
        roles = TrainingGraphRoles(frozenset(state_names), frozenset(TRAIN_INPUTS[:2]), frozenset(("loss", "logits")))
        if recompute is not None:
            plan = recompute_training_graph(training, recompute, roles, batch=inputs.shape[0], batch_dim=BATCH_DIM)
            if plan.recomputed:
                session_config |= SESSION_CONFIG
        eval_model = onnx.load(work / EVAL_MODEL)
        _prune_to_logits(eval_model)
        models = {"training_model": (TRAINING_MODEL, training), "eval_model": (EVAL_MODEL, eval_model)}
        if in_runtime:
            optimizer_model = onnx.load(work / OPTIMIZER_MODEL)
            _use_pytorch_adamw(optimizer_model)
            models["optimizer_model"] = (OPTIMIZER_MODEL, optimizer_model)
        for filename, proto in models.values():
            atomic_write_bytes(out_dir / filename, proto.SerializeToString())
        atomic_write_bytes(out_dir / CHECKPOINT, (work / CHECKPOINT).read_bytes())
    methods: dict[str, dict[str, Any]] = {
        "train": {"name": "train_step", "inputs": TRAIN_INPUTS, "outputs": ["loss", "logits"]},
        "predict": {"name": "eval_step", "inputs": ["input"], "outputs": ["logits"]},
    }
    if in_runtime:
        methods["optimizer"] = {"name": "optimizer_step", "inputs": [], "outputs": []}
    state = {MODEL_PREFIX + name: tensor for name, tensor in [*model.named_parameters(), *model.named_buffers()]}
    checkpointed = [state[name] for name in initializers if name in state]
    trainable_bytes = sum(state[name].numel() * state[name].element_size() for name in trainable)
    state_tensors = max(1, optimizer.state_tensors_per_parameter)
    # Shape inference and the allocation plan, once per graph: the estimate and the profile both read them.
    training_run = OrtRun.of(training, inputs.shape[0], BATCH_DIM)
    memory = session_memory(
        training_run,
        OrtRun.of(eval_model, inputs.shape[0], BATCH_DIM),
        checkpoint_tensors=len(checkpointed),
        parameter_bytes=sum(t.numel() * t.element_size() for t in checkpointed),
        trainable_bytes=trainable_bytes,
        optimizer_state_bytes=state_tensors * trainable_bytes,
        optimizer_runs_in="onnxruntime" if in_runtime else "app",
        optimizer_kind=optimizer.kind,
    )
    planned_arena = memory.gradient_buffer_bytes + memory.step_workspace_bytes
    return BackendArtifacts(
        files={role: filename for role, (filename, _) in models.items()} | {"checkpoint": CHECKPOINT},
        # The gradient buffers and the step's workspace: what ORT allocates to run the training method.
        planned_arena_bytes=planned_arena,
        memory_profile=profile_onnx_training(
            training_run,
            roles=roles,
            trainable=trainable,
            arena_bytes=planned_arena,
        ),
        # The runtime's parameter order is the training graph's input order.
        trainable_names=[value.name for value in training.graph.input if value.name in trainable],
        methods=methods,
        runtime_overhead_bytes=memory.runtime_overhead_bytes,
        optimizer_state_tensors=state_tensors,
        accumulates_gradients=True,  # micro-batches add up in ORT's gradient buffers
        techniques=rewrites,
        backend_options={
            "opset": OPSET,
            "model_format": "onnx",
            "batch_dim": BATCH_DIM,
            "cpu_mem_arena": CPU_MEM_ARENA,
            "optimizer_runs_in": "onnxruntime" if in_runtime else "app",
            LOSS_SCALE: "float32 scalar input of every train_step: 1 / micro-batches per optimizer step",
            **({"session_config": session_config} if session_config else {}),
            "memory": memory.to_json(),
        },
    )
