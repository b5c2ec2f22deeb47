"""A training session: one bundle loaded into its runtime, ready to step, predict and checkpoint.

Each backend implements ``TrainingSession``; the runner, the measuring child and the demo use only this
interface, so both runtimes are driven the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

from exporters.bundle import Bundle, Manifest, TensorSpec
from exporters.losses import LabelEncoding
from sdk_tools.runner.isolation import run_forked

TORCH_DTYPES = {
    "float32": torch.float32,
    "int64": torch.int64,
    "float16": torch.float16,
    "int32": torch.int32,
}


def label_encoding(manifest: Manifest) -> LabelEncoding:
    """The labels a bundle's program takes, from its ``labels`` spec alone: the manifest's ``loss`` is compiled
    into the program and never imported (a received manifest could name any callable; docs/security.md)."""
    return LabelEncoding(TORCH_DTYPES[manifest.labels.dtype], len(manifest.labels.shape) > 1)


class InputError(ValueError):
    """A batch does not match what the bundle was exported for."""


def check_tensor(value: torch.Tensor, spec: TensorSpec, what: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{what} {spec.name!r} must be a torch.Tensor, got {type(value).__name__}")
    if list(value.shape) != spec.shape:
        raise InputError(
            f"{what} {spec.name!r} has shape {list(value.shape)}, the bundle was exported for {spec.shape}; "
            "re-export with the batch size / input size you need"
        )
    if value.dtype != TORCH_DTYPES[spec.dtype]:
        raise InputError(f"{what} {spec.name!r} has dtype {value.dtype}, the bundle expects {spec.dtype}")


class TrainingSession(ABC):
    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest

    def zero_labels(self) -> torch.Tensor:
        spec = self.manifest.labels
        return torch.zeros(spec.shape, dtype=TORCH_DTYPES[spec.dtype])

    def run_once(self) -> None:
        """One training call and one prediction on zeros: what a preflight child runs (``run_once_in_child``)."""
        inputs = torch.zeros(self.manifest.inputs[0].shape)
        self.train_step([(inputs, self.zero_labels())])
        self.predict(inputs)

    def check_batch(self, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        check_tensor(inputs, self.manifest.inputs[0], "input")
        if labels is not None:
            check_tensor(labels, self.manifest.labels, "labels")

    @abstractmethod
    def train_step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, torch.Tensor]:
        """Forward+backward over each micro-batch, accumulate, one optimizer update.

        Returns the mean loss and the logits of all micro-batches (concatenated).
        """

    @abstractmethod
    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits for one batch, computed with the current (trained) weights."""

    @abstractmethod
    def state_tensors(self) -> tuple[int, dict[str, torch.Tensor]]:
        """(optimizer steps taken, trainable parameters and optimizer state by name) for a checkpoint."""

    @abstractmethod
    def load_state_tensors(self, steps: int, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what ``state_tensors`` returned."""

    def trained_parameters(self) -> dict[str, torch.Tensor]:
        """Trainable parameters by runtime name (copies)."""
        _, tensors = self.state_tensors()
        return {spec.name: tensors[spec.name].clone() for spec in self.manifest.trainable}


def run_once_in_child(open_unchecked: Callable[[], TrainingSession], what: str) -> None:
    """Open the bundle and run it once in a forked child (``isolation.run_forked``), so a program that crashes the
    runtime ends in a ``BundleError`` naming the signal, not in a dead process. The parent's thread pools have no
    threads in the child: torch's work stays on its one thread; ExecuTorch and ORT make their pools anew."""

    def child() -> None:
        torch.set_num_threads(1)
        open_unchecked().run_once()

    run_forked(child, what)
