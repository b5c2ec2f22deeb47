"""The host training loop: batches -> session steps -> checkpoints, with progress and evaluation."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from exporters.bundle import Bundle, UntrustedCodeError
from exporters.losses import encode_labels
from sdk_tools.data.digits import DigitsSplit
from sdk_tools.data.loading import Batches, eval_batches, load_dataset
from sdk_tools.runner.checkpoint import (
    Checkpoint,
    all_finite,
    default_checkpoint_path,
    load_checkpoint,
    save_checkpoint,
)
from sdk_tools.runner.session import TrainingSession, label_encoding


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 100
    data: str = "digits"
    split: str = "personal"
    eval_split: str | None = "personal_test"
    # Evaluate on the first N samples only: a memory measurement needs the predict method run, not the whole split.
    eval_samples: int | None = None
    seed: int = 0
    resume: bool = False
    checkpoint: Path | None = None  # default: <bundle>/checkpoint.safetensors
    checkpoint_every: int = 50
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.checkpoint_every < 0:
            raise ValueError(
                f"steps must be at least 1 and checkpoint_every at least 0 (0: at the end only), got {self.steps} "
                f"and {self.checkpoint_every}"
            )
        if self.eval_samples is not None and self.eval_samples < 1:
            raise ValueError(f"eval_samples must be at least 1, got {self.eval_samples} (or None: the whole split)")
        if self.eval_samples is not None and not self.eval_split:
            raise ValueError("eval_samples limits the evaluation, but eval_split is empty: give a split or drop it")


@dataclass
class TrainResult:
    steps_run: int
    total_steps: int
    losses: list[float | None] = field(default_factory=list)  # None: the loss was not finite (the report's null)
    step_times_s: list[float] = field(default_factory=list)
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    checkpoint: str | None = None
    # The step whose loss or weights stopped being finite: training stopped there and the checkpoint on disk is
    # the last one saved before it (never overwritten with NaN weights).
    diverged_at_step: int | None = None

    @property
    def steps_per_second(self) -> float:
        timed = self.step_times_s[1:] or self.step_times_s  # the first step pays one-time setup
        return len(timed) / sum(timed) if timed else 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "steps_per_second": self.steps_per_second}


def open_session(bundle: Bundle, threads: int | None = None, preflight: bool = True) -> TrainingSession:
    """Load ``bundle`` into the runtime its manifest names. ``threads``: ExecuTorch's thread pool size (default:
    the manifest's ``backend_options.runtime.threads``), settable only before the process loads its first program.
    ``preflight``: the program runs once in a forked child first, where a crash of the runtime becomes a
    ``BundleError`` (sdk_tools/runner/isolation.py).
    """
    backend = bundle.manifest.backend
    if backend == "executorch":
        from sdk_tools.runner.executorch_session import ExecuTorchSession

        return ExecuTorchSession(bundle, threads, preflight)
    if backend == "onnxruntime":
        from sdk_tools.runner.onnxruntime_session import OnnxRuntimeSession

        return OnnxRuntimeSession(bundle, preflight=preflight)
    raise ValueError(f"bundle backend {backend!r} has no runner in this memwall")


def dataset_for(bundle: Bundle, name: str, split: str) -> DigitsSplit:
    return load_dataset(name, split, tuple(bundle.manifest.sample_shape), len(bundle.manifest.classes))


def eval_dataset(bundle: Bundle, config: TrainConfig) -> DigitsSplit | None:
    """The evaluation samples ``config`` asks for (``None``: no evaluation)."""
    if not config.eval_split:
        return None
    data = dataset_for(bundle, config.data, config.eval_split)
    if config.eval_samples is None:
        return data
    return DigitsSplit(data.images[: config.eval_samples], data.labels[: config.eval_samples])


def evaluate(session: TrainingSession, data: DigitsSplit) -> float:
    """Top-1 accuracy of the predict method over every sample of ``data``."""
    correct = 0
    for inputs, labels, real in eval_batches(data, session.manifest.batch_size):
        predicted = session.predict(inputs).argmax(dim=-1)
        correct += int((predicted[:real] == labels[:real]).sum())
    return correct / len(data)


PhaseHook = Callable[[str], None]


def train(
    bundle: Bundle,
    config: TrainConfig,
    session: TrainingSession | None = None,
    on_phase: PhaseHook | None = None,
) -> TrainResult:
    """Train ``config.steps`` steps; ``on_phase(name)`` is called as each phase starts (the measuring child
    resets its peak there): "evaluate_before", "train", "checkpoint", "evaluate_after"."""
    phase = on_phase or (lambda _name: None)
    session = session or open_session(bundle)
    manifest = bundle.manifest
    loss = label_encoding(manifest)
    num_classes = len(manifest.classes)
    micro = manifest.training["micro_batches"]
    micro_size = manifest.batch_size
    checkpoint_path = config.checkpoint or default_checkpoint_path(bundle)
    start_step, position = 0, 0
    if config.resume:
        ckpt = load_checkpoint(checkpoint_path, bundle)
        session.load_state_tensors(ckpt.steps, ckpt.tensors)
        start_step, position = ckpt.steps, ckpt.data_position
    eval_data = eval_dataset(bundle, config)
    result = TrainResult(steps_run=0, total_steps=start_step)
    if eval_data is not None:
        phase("evaluate_before")
        result.accuracy_before = evaluate(session, eval_data)
    phase("train")
    batches = Batches(dataset_for(bundle, config.data, config.split), micro_size, seed=config.seed)
    stream = batches.from_position(position)
    bar = tqdm(range(config.steps), desc="training", unit="step", disable=not config.progress, file=sys.stderr)
    for i in bar:
        micro_batches = []
        for _ in range(micro):
            inputs, labels = next(stream)
            micro_batches.append((inputs, encode_labels(loss, labels, num_classes)))
        started = time.perf_counter()
        step_loss, _ = session.train_step(micro_batches)
        result.step_times_s.append(time.perf_counter() - started)
        finite = math.isfinite(step_loss)
        result.losses.append(step_loss if finite else None)
        position += micro
        result.steps_run += 1
        result.total_steps = start_step + i + 1
        if not finite:
            result.diverged_at_step = result.total_steps
            break
        bar.set_postfix(loss=f"{step_loss:.4f}")
        if config.checkpoint_every and result.total_steps % config.checkpoint_every == 0:
            phase("checkpoint")
            if not _save(session, bundle, checkpoint_path, position):
                result.diverged_at_step = result.total_steps
                break
            phase("train")
    bar.close()
    if result.diverged_at_step is None:
        phase("checkpoint")
        if not _save(session, bundle, checkpoint_path, position):
            result.diverged_at_step = result.total_steps
    result.checkpoint = str(checkpoint_path) if checkpoint_path.is_file() else None
    if eval_data is not None and result.diverged_at_step is None:
        phase("evaluate_after")
        result.accuracy_after = evaluate(session, eval_data)
    return result


def _save(session: TrainingSession, bundle: Bundle, path: Path, position: int) -> bool:
    """Save unless a weight or optimizer state is not finite (a non-finite gradient got through the update):
    then the checkpoint on disk stays the last good one. Returns whether it saved."""
    steps, tensors = session.state_tensors()
    if not all_finite(tensors):
        return False
    save_checkpoint(path, Checkpoint(steps, position, tensors, bundle.manifest_sha256))
    return True


def load_trained_weights(model: torch.nn.Module, bundle: Bundle, checkpoint: Path | None = None) -> torch.nn.Module:
    """Copy the trained parameters of ``bundle``'s checkpoint into ``model`` (in place) and return it."""
    from exporters.training_graph import strip_prefix

    ckpt = load_checkpoint(checkpoint or default_checkpoint_path(bundle), bundle)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for spec in bundle.manifest.trainable:
            name = strip_prefix(spec.name)
            if name not in params:
                raise KeyError(f"model has no parameter {name!r} (trained in bundle {bundle.manifest.name})")
            params[name].copy_(ckpt.tensors[spec.name])
    return model


def rebuild_trained_model(
    bundle: Bundle, base: dict[str, torch.Tensor], checkpoint: Path | None = None, trust_code: bool = False
) -> torch.nn.Module:
    """The bundle's model in its original architecture with the trained weights: rebuilt from the manifest's
    model spec, ``base`` (the weights it was exported from) loaded, the recorded model transforms (LoRA, int8)
    applied, the checkpoint loaded, then folded back (adapters merged, int8 weights as the floats trained
    against).

    A registered model (``mlp``, ``mobilenet_v2``...) is memwall's own code; a ``pkg.module:factory`` spec is
    imported only with ``trust_code`` (else ``UntrustedCodeError``): the manifest is as untrusted as its sender.
    """
    from exporters.plan import TrainingPlan, apply_model_techniques, fold_model_techniques
    from sdk_tools.models import REFERENCE_MODELS, build_model

    spec = bundle.manifest.model.get("spec")
    if not spec:
        raise ValueError("the manifest names no model spec; export with --model (or ModelSpec) to pull a merged model")
    if spec not in REFERENCE_MODELS and not trust_code:
        raise UntrustedCodeError(bundle.directory, "the model factory", spec)
    model = build_model(spec, **bundle.manifest.model.get("kwargs", {}))
    model.load_state_dict(base)
    transformed = apply_model_techniques(model, TrainingPlan.model_transforms(bundle.manifest.techniques))
    load_trained_weights(transformed, bundle, checkpoint)
    return fold_model_techniques(transformed)
