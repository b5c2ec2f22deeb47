"""ONNX Runtime training session: a bundle's ORT artifacts, stepped through ``onnxruntime.training.api``.

The calls are the ones the mobile packages make: ``lazy_reset_grad``, ``train_step`` per micro-batch (ORT
adds up the gradients), ``optimizer_step``, and ``eval_step`` for predictions. Where ORT's optimizer cannot
do what the manifest asks (SGD with momentum or weight decay), ``sdk_tools.runner.optim`` applies the
update to the runtime's own buffers: ``Parameter.data`` and ``.grad`` are numpy views of ORT's memory, so
the update is in place, as in the ExecuTorch runner.

Checkpoints: ORT keeps its optimizer state (AdamW moments, step count) where only its own checkpoint format
reaches it, so when ORT runs the optimizer, ``state_tensors`` carries that checkpoint's bytes as a uint8
tensor: the shared safetensors checkpoint stays one atomically written file.

Session options come from the manifest: ``cpu_mem_arena`` and every ``session_config`` entry (a recomputed
training graph needs CommonSubexpressionElimination disabled, or ORT merges the recomputed copies back).
"""

from __future__ import annotations

import ctypes
import functools
import tempfile
from pathlib import Path

import numpy as np
import torch

from exporters.bundle import Bundle, BundleError, atomic_write_bytes
from exporters.config import OptimizerConfig
from sdk_tools.runner.checkpoint import CheckpointError, copy_checked
from sdk_tools.runner.optim import Optimizer
from sdk_tools.runner.session import InputError, TrainingSession, run_once_in_child

ORT_CHECKPOINT_KEY = "optimizer/onnxruntime_checkpoint"
OPTIMIZER_PREFIX = "optimizer/"
_M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc malloc.h)
_PHONE_MMAP_THRESHOLD = 128 * 1024


@functools.cache
def _return_large_frees_to_the_system() -> None:
    """Make glibc unmap large blocks on free, as phone allocators (scudo, iOS libmalloc) do.

    With the CPU arena off, ORT allocates every tensor with malloc. glibc raises its mmap threshold after large
    frees and then keeps freed activations in a fragmented heap: measured +10 to +30 MiB on the demo bundle,
    growing with the number of steps, memory no phone holds. A fixed threshold keeps glibc's default for
    blocks up to 128 KiB. The price is the phones' too: large buffers are mapped afresh every step (measured
    about +15% step time on MobileNetV2 x1.0 128x128 here). Process-wide, set once; no-op where the C library
    has no ``mallopt`` (not glibc).
    """
    try:
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, _PHONE_MMAP_THRESHOLD)
    except (OSError, AttributeError):
        return


class OnnxRuntimeSession(TrainingSession):
    def __init__(self, bundle: Bundle, cpu_mem_arena: bool | None = None, preflight: bool = True) -> None:
        """``preflight``: first load the bundle and run one training call and one prediction in a forked child
        (``session.run_once_in_child``): ORT 1.19.2 can kill the process on a program it accepts (AveragePoolGrad dies
        with SIGFPE, measured), and then that ends in a ``BundleError``, not a dead CLI. The measuring worker skips
        it: its parent reports a crash the same way."""
        if preflight:
            run_once_in_child(
                lambda: OnnxRuntimeSession(bundle, cpu_mem_arena, preflight=False), str(bundle.path("training_model"))
            )
        super().__init__(bundle)
        options = self.manifest.backend_options
        self.cpu_mem_arena: bool = options["cpu_mem_arena"] if cpu_mem_arena is None else cpu_mem_arena
        self.config = OptimizerConfig.from_json(self.manifest.optimizer)
        self._runtime_optimizer = options["optimizer_runs_in"] == "onnxruntime"
        self._names = [p.name for p in self.manifest.trainable]
        labels = self.manifest.labels
        self._class_labels = len(labels.shape) == 1 and not labels.dtype.startswith("float")
        self.steps = 0
        if not self.cpu_mem_arena:
            _return_large_frees_to_the_system()
        self._open(bundle.path("checkpoint"))

    def _open(self, checkpoint: Path) -> None:
        from onnxruntime import SessionOptions
        from onnxruntime.training.api import CheckpointState, Module
        from onnxruntime.training.api import Optimizer as OrtOptimizer

        options = SessionOptions()
        options.enable_cpu_mem_arena = self.cpu_mem_arena
        for key, value in self.manifest.backend_options.get("session_config", {}).items():
            options.add_session_config_entry(key, value)
        self.session_options = options  # what the sessions were created with (Module and Optimizer share them)
        # ORT warns on every load that its own SGD optimizer model declares a [1]-shaped flag as scalar.
        options.log_severity_level = 3
        try:
            self.state = CheckpointState.load_checkpoint(str(checkpoint))
            self.module = Module(
                str(self.bundle.path("training_model")),
                self.state,
                str(self.bundle.path("eval_model")),
                session_options=options,
            )
            self._ort_optimizer = (
                OrtOptimizer(str(self.bundle.path("optimizer_model")), self.module) if self._runtime_optimizer else None
            )
        except RuntimeError as exc:
            raise BundleError(
                f"ONNX Runtime cannot load bundle {self.bundle.directory}: {exc}; re-export the bundle"
            ) from exc
        inputs = self.module.input_names()
        if inputs != self.manifest.methods["train"]["inputs"]:
            raise BundleError(f"the training model takes {inputs}, not what the manifest lists; re-export")
        if self._ort_optimizer is not None:
            # The learning rate is session state in ORT (default 1e-3), not part of the optimizer model.
            self._ort_optimizer.set_learning_rate(self.config.lr)
        self._params = {name: torch.from_numpy(self.state.parameters[name].data) for name in self._names}
        shapes = {name: list(p.shape) for name, p in self._params.items()}
        if shapes != {p.name: p.shape for p in self.manifest.trainable}:
            raise BundleError("the ONNX Runtime checkpoint's parameters differ from the manifest's; re-export")
        self._grads = {name: torch.from_numpy(self.state.parameters[name].grad) for name in self._names}
        self._app_optimizer = None if self._runtime_optimizer else Optimizer(self.config, self._params)

    def check_batch(self, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        super().check_batch(inputs, labels)
        # ORT's SoftmaxCrossEntropyLoss returns a number for any index; PyTorch raises.
        if labels is not None and self._class_labels:
            classes = len(self.manifest.classes)
            if int(labels.min()) < 0 or int(labels.max()) >= classes:
                raise InputError(f"labels must be class indices in [0, {classes}), got {labels.tolist()}")

    def train_step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, torch.Tensor]:
        if not micro_batches:
            raise InputError("train_step needs at least one micro-batch")
        for inputs, labels in micro_batches:
            self.check_batch(inputs, labels)
        # Each call's loss is a micro-batch mean and ORT adds the gradients of all calls: seeding backward
        # with 1/count makes the accumulated gradient the mean over the whole batch.
        loss_scale = np.array(1.0 / len(micro_batches), dtype=np.float32)
        self.module.train()
        self.module.lazy_reset_grad()
        total_loss = 0.0
        logits: list[torch.Tensor] = []
        for inputs, labels in micro_batches:
            loss, batch_logits = self.module(inputs.numpy(), labels.numpy(), loss_scale)
            total_loss += float(loss)
            logits.append(torch.from_numpy(batch_logits))
        if self._ort_optimizer is not None:
            self._ort_optimizer.step()
        else:
            assert self._app_optimizer is not None
            self._app_optimizer.step(self._grads)
        self.steps += 1
        return total_loss / len(micro_batches), torch.cat(logits)

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        self.check_batch(inputs)
        self.module.eval()
        return torch.from_numpy(self.module(inputs.numpy()))

    def trained_parameters(self) -> dict[str, torch.Tensor]:
        # Not through state_tensors: that serializes ORT's whole checkpoint.
        return {name: param.clone() for name, param in self._params.items()}

    def state_tensors(self) -> tuple[int, dict[str, torch.Tensor]]:
        tensors = dict(self._params)
        if self._app_optimizer is not None:
            tensors |= {OPTIMIZER_PREFIX + k: v for k, v in self._app_optimizer.state.items()}
        else:
            tensors[ORT_CHECKPOINT_KEY] = self._ort_checkpoint()
        return self.steps, tensors

    def _ort_checkpoint(self) -> torch.Tensor:
        from onnxruntime.training.api import CheckpointState

        with tempfile.TemporaryDirectory(prefix="memwall-ort-") as tmp:
            path = Path(tmp, "checkpoint")
            CheckpointState.save_checkpoint(self.state, str(path), include_optimizer_state=True)
            # Read straight into the tensor: bytes then a writable copy would hold the checkpoint twice, and
            # saving is the peak of training for models with small activations (docs/onnxruntime.md).
            data = torch.empty(path.stat().st_size, dtype=torch.uint8)
            with path.open("rb") as file:
                file.readinto(data.numpy())
            return data

    def load_state_tensors(self, steps: int, tensors: dict[str, torch.Tensor]) -> None:
        if self._app_optimizer is not None:
            copy_checked(self.state_tensors()[1], tensors)
            self._app_optimizer.steps = steps
        else:
            state = tensors.get(ORT_CHECKPOINT_KEY)
            if state is None or state.dtype != torch.uint8 or state.dim() != 1:
                raise CheckpointError(f"checkpoint lacks {ORT_CHECKPOINT_KEY} as bytes: it was saved by another runner")
            # ORT restores its optimizer state only when a session is created from the checkpoint.
            with tempfile.TemporaryDirectory(prefix="memwall-ort-") as tmp:
                path = Path(tmp, "checkpoint")
                path.write_bytes(state.numpy().tobytes())
                try:
                    self._open(path)
                except (BundleError, KeyError) as exc:
                    raise CheckpointError(
                        f"the checkpoint's ONNX Runtime state is unreadable or another bundle's ({exc}); delete it"
                    ) from exc
        self.steps = steps


def export_inference_model(session: OnnxRuntimeSession, path: str | Path) -> Path:
    """Write an ONNX inference model (``input -> logits``) with the session's current weights, atomically."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="memwall-ort-") as tmp:
        exported = Path(tmp, path.name)
        session.module.export_model_for_inferencing(str(exported), ["logits"])
        atomic_write_bytes(path, exported.read_bytes())
    return path
