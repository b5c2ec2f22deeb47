"""``export_bundle``: model + loss + batch shape -> a verified bundle directory for one backend."""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from exporters.backend import BackendArtifacts, backend_exporter
from exporters.bundle import (
    MANIFEST_NAME,
    Bundle,
    Manifest,
    MemoryEstimate,
    ParameterSpec,
    TensorSpec,
    atomic_write_bytes,
    file_entry,
    load_bundle,
    write_manifest,
)
from exporters.config import OptimizerConfig
from exporters.losses import encode_labels, resolve_loss
from exporters.memory_profile import PROFILE_FILE
from exporters.native_runtime_memory import runtime_predictions
from exporters.technique import Stage, check_recorded, check_techniques, in_order
from exporters.techniques.fused_update import FusedUpdateConfig
from exporters.techniques.recompute import RecomputeConfig
from exporters.techniques.speed_routes import SpeedConfig
from exporters.training_graph import MODEL_PREFIX, prepare_for_training_export
from exporters.verify import SKIPPED, Tolerance, verify_training

DTYPE_NAMES = {torch.float32: "float32", torch.int64: "int64", torch.float16: "float16", torch.int32: "int32"}


@dataclass(frozen=True)
class ModelSpec:
    """How the model can be rebuilt: a registered name or ``pkg.module:factory``, and its kwargs."""

    spec: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


def _tensor_bytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def estimate_memory(
    artifacts: BackendArtifacts,
    model: nn.Module,
    optimizer: OptimizerConfig,
    program_bytes: int,
    micro_batches: int,
    backend: str,
) -> MemoryEstimate:
    """Predicted peak of the training process over its idle baseline, by component.

    Gradients live in the backend's planned workspace; a separate accumulation buffer exists only when
    micro-batches are summed before the optimizer step.
    """
    params = dict(model.named_parameters())
    trainable = [params[name.removeprefix(MODEL_PREFIX)] for name in artifacts.trainable_names]
    trainable_bytes = _tensor_bytes(trainable)
    state_tensors = artifacts.optimizer_state_tensors
    if state_tensors is None:
        state_tensors = optimizer.state_tensors_per_parameter
    optimizer_bytes = trainable_bytes * state_tensors
    accumulation_bytes = trainable_bytes if micro_batches > 1 and not artifacts.accumulates_gradients else 0
    largest = max((_tensor_bytes([t]) for t in trainable), default=0)
    gradient_bytes = largest if artifacts.consumes_gradients else trainable_bytes
    # The app's update computes AdamW's denominator (SGD's decayed / Nesterov gradient) into one scratch tensor.
    runs_in_app = artifacts.backend_options.get("optimizer_runs_in") == "app"
    workspace_bytes = largest if runs_in_app and optimizer.update_needs_workspace else 0
    peak = (
        artifacts.planned_arena_bytes
        + artifacts.predict_arena_bytes
        + program_bytes
        + optimizer_bytes
        + workspace_bytes
        + accumulation_bytes
        + artifacts.runtime_overhead_bytes
        + artifacts.delegate_memory_bytes
    )
    return MemoryEstimate(
        planned_arena_bytes=artifacts.planned_arena_bytes,
        parameter_bytes=_tensor_bytes([*model.parameters(), *model.buffers()]),
        trainable_parameter_bytes=trainable_bytes,
        gradient_bytes=gradient_bytes,
        optimizer_state_bytes=optimizer_bytes,
        program_bytes=program_bytes,
        runtime_overhead_bytes=artifacts.runtime_overhead_bytes,
        predicted_peak_bytes=peak,
        notes=(
            "peak = planned arena (incl. trainable weights and gradients) + evaluation arena + program files "
            "+ optimizer state + optimizer workspace + gradient accumulation + runtime overhead "
            "+ delegate (XNNPACK) memory"
        ),
        frozen_parameter_bytes=_tensor_bytes([p for p in model.parameters() if not p.requires_grad]),
        evaluation_arena_bytes=artifacts.predict_arena_bytes,
        gradient_accumulation_bytes=accumulation_bytes,
        delegate_bytes=artifacts.delegate_memory_bytes,
        optimizer_workspace_bytes=workspace_bytes,
        by_runtime=runtime_predictions(
            backend, artifacts.backend_options, artifacts.techniques, artifacts.runtime_overhead_bytes, peak
        ),
    )


def export_bundle(
    model: nn.Module,
    out_dir: str | Path,
    *,
    sample_shape: Sequence[int],
    batch_size: int,
    backend: str = "executorch",
    loss: str = "cross_entropy",
    optimizer: OptimizerConfig | None = None,
    classes: Sequence[str] | None = None,
    name: str | None = None,
    model_spec: ModelSpec | None = None,
    techniques: Sequence[dict[str, Any]] = (),
    micro_batches: int = 1,
    passes: Sequence[Any] = (),
    recompute: RecomputeConfig | None = None,
    fused_update: FusedUpdateConfig | None = None,
    speed: SpeedConfig | None = None,
    overwrite: bool = False,
    verify: bool = True,
    tolerance: Tolerance | None = None,
) -> Bundle:
    """Export ``model`` for on-device training; parameters with ``requires_grad=False`` stay frozen.

    The model is copied and prepared as it trains on device (BatchNorm frozen, eval mode); the original is
    not modified. ``techniques``: the manifest's records of the model transforms already applied to ``model``
    (a model holding LoRA adapters or int8 layers without their record is refused: use ``export_plan`` or
    ``sdk_tools.api.export``, which apply and record them). ``passes``: configs of graph passes and speed routes
    (``RecomputeConfig()``, ``FusedUpdateConfig()``, ``SpeedConfig()``), which the backend's exporter applies;
    ``recompute``, ``fused_update`` and ``speed`` are the same, by name. The speed routes are off unless given
    (``SpeedConfig()`` takes each where it applies; the manifest's ``techniques`` lists those that did).

    The bundle is written into a staging directory beside ``out_dir``. With ``verify`` (default) its training
    method then runs once in the real runtime against eager PyTorch (``exporters.verify``): a mismatch beyond
    ``tolerance`` raises ``VerificationError`` and nothing is kept. Only a complete bundle moves to ``out_dir``;
    ``overwrite`` replaces an existing bundle there (never a directory that is not one) once the new one is done.

    Example::

        bundle = export_bundle(model, "bundle", sample_shape=(1, 8, 8), batch_size=16, passes=[RecomputeConfig()])
        bundle.manifest.memory.predicted_peak_bytes
    """
    optimizer = optimizer or OptimizerConfig()
    out = Path(out_dir)
    check_destination(out, overwrite)
    if batch_size < 1 or batch_size % micro_batches:
        raise ValueError(f"batch size {batch_size} must be a positive multiple of micro_batches {micro_batches}")
    # The graph passes and speed routes the backend exporter applies (the model transforms are applied already).
    passes = [*passes, *(config for config in (recompute, fused_update, speed) if config is not None)]
    check_techniques(passes, micro_batches=micro_batches, backend=backend)
    check_recorded(model, techniques)
    loss_spec = resolve_loss(loss)
    prepared = prepare_for_training_export(model)
    step_batch = batch_size // micro_batches
    inputs = torch.zeros((step_batch, *sample_shape))
    with torch.no_grad():
        num_classes = prepared(inputs).shape[-1]
    classes = list(classes) if classes is not None else [str(i) for i in range(num_classes)]
    if len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names given, the model outputs {num_classes} logits")
    labels = encode_labels(loss_spec, torch.arange(step_batch) % num_classes, num_classes)
    _log(f"exporting {type(model).__name__} for {backend} (batch {step_batch} x {micro_batches} micro-batches)")
    exporter = backend_exporter(backend)
    techniques = list(techniques)
    for found, config in in_order(passes):
        if found.active(config):
            exporter = functools.partial(exporter, **{found.keyword: config})
            if found.stage is Stage.GRAPH_PASS:  # the speed routes: the backend records those that applied
                techniques.append(found.record(config))
    spec = model_spec or ModelSpec()
    reference = copy.deepcopy(prepared) if verify else prepared  # exporters may not leave the model as it was
    with staged(out) as stage:  # the bundle moves to ``out`` only once complete (and verified)
        artifacts = exporter(prepared, loss_spec, inputs, labels, optimizer, stage)
        techniques += artifacts.techniques
        roles = dict(artifacts.files)
        if artifacts.memory_profile is not None:
            profile = json.dumps(artifacts.memory_profile.to_json(), separators=(",", ":")).encode()
            atomic_write_bytes(stage / PROFILE_FILE, profile)
            roles["memory_profile"] = PROFILE_FILE
        files = {role: file_entry(stage, path) for role, path in roles.items()}
        params = dict(prepared.named_parameters())
        trainable_specs = []
        for runtime_name in artifacts.trainable_names:
            p = params[runtime_name.removeprefix(MODEL_PREFIX)]
            trainable_specs.append(ParameterSpec(runtime_name, list(p.shape), DTYPE_NAMES[p.dtype], p.numel()))
        manifest = Manifest(
            name=name or f"{spec.spec or type(model).__name__}-{backend}",
            backend=backend,
            created_by=f"memwall {_version()}",
            files=files,
            inputs=[TensorSpec("input", [step_batch, *sample_shape], "float32")],
            labels=TensorSpec("label", list(labels.shape), DTYPE_NAMES[labels.dtype]),
            outputs=[
                TensorSpec("loss", [], "float32"),
                TensorSpec("logits", [step_batch, num_classes], "float32"),
            ],
            classes=classes,
            loss=loss_spec.name,
            trainable=trainable_specs,
            frozen_parameter_count=sum(p.numel() for p in prepared.parameters() if not p.requires_grad),
            optimizer=optimizer.to_json(),
            training={"batch_size": batch_size, "micro_batches": micro_batches},
            methods=artifacts.methods,
            memory=estimate_memory(
                artifacts,
                prepared,
                optimizer,
                sum(files[role].bytes for role in artifacts.files),
                micro_batches,
                backend,
            ),
            model={
                "spec": spec.spec,
                "kwargs": spec.kwargs,
                "parameters": sum(p.numel() for p in prepared.parameters()),
                "trainable_parameters": sum(s.numel for s in trainable_specs),
            },
            techniques=techniques,
            backend_options=artifacts.backend_options,
        )
        verification = SKIPPED
        if verify:
            _log("verifying: one training step in the runtime against eager PyTorch")
            result = verify_training(Bundle(stage, manifest, ""), reference, loss_spec, optimizer, tolerance=tolerance)
            verification = result.to_json()
            worst = result.largest
            _log(f"verified in {result.seconds:.1f} s (largest error {worst.relative:.2g} of {worst.name}'s scale)")
        write_manifest(stage, replace(manifest, verification=verification))
    _log(f"wrote {out} (planned arena {manifest.memory.planned_arena_bytes / 2**20:.1f} MiB)")
    return load_bundle(out)


def check_destination(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, an ``out`` that holds something an export must not replace: anything but an
    empty directory, or with ``overwrite`` (``--force``) a memwall bundle."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise FileExistsError(f"{out} exists and is not a directory (or is a symlink); choose another output directory")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--force) to replace the bundle")
    if not is_bundle_directory(out):
        raise FileExistsError(
            f"{out} is not empty and is not a memwall bundle (no memwall {MANIFEST_NAME}): --force replaces only a "
            "bundle; choose another output directory"
        )


def is_bundle_directory(path: Path) -> bool:
    """Whether ``path`` holds a manifest memwall wrote (any schema version, valid or not)."""
    try:
        data = json.loads((path / MANIFEST_NAME).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "schema_version" in data and str(data.get("created_by", "")).startswith("memwall")


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A fresh directory beside ``out`` to build a bundle in; when the block completes it replaces ``out``
    (``replace_directory``), when it fails it is deleted and ``out`` is left as it was."""
    out = out.absolute()  # "." has no name to stage beside
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
    try:
        yield stage
        replace_directory(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone already once it became ``out``


def replace_directory(new: Path, out: Path) -> None:
    """Move the complete bundle ``new`` to ``out``: the old one is renamed away first, deleted only once the new
    one is in place (put back if the move fails). Both live in the same parent: the renames are atomic."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    _fsync_directory(out.parent)
    if old is not None:
        shutil.rmtree(old)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("memwall")
    except PackageNotFoundError:
        return "0+unknown"


def _log(message: str) -> None:
    print(f"[memwall] {message}", file=sys.stderr, flush=True)
