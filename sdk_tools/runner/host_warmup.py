"""Run the host runner's own tensor work once, without the runtime, before the measuring child's baseline.

The host runner does in torch what an app does in a few lines of Kotlin or Swift: batching, label encoding,
the app-side optimizer, gradient accumulation, logits, argmax, the checkpoint writer. The first call of each
torch kernel faults in its code pages, and the first parallel one starts OpenMP's worker threads (their stacks
and malloc arenas). Inside the measured window that is 2-4 MiB that grows with the number of distinct host
kernels (AdamW touches more than SGD), not with the model: it belongs to the host runner, which no phone
runs, and calibrating the runtime's overhead on top of it made every AdamW row under-predicted.

``warm_host_code`` runs that work on the bundle's real shapes (a kernel can take another code path for a larger
tensor) and frees it; the runtime's own first-call cost stays inside the measured window, where it belongs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from exporters.bundle import Bundle
from exporters.config import OptimizerConfig
from exporters.losses import encode_labels
from sdk_tools.data.loading import Batches, eval_batches
from sdk_tools.runner.checkpoint import Checkpoint, save_checkpoint
from sdk_tools.runner.optim import Optimizer
from sdk_tools.runner.session import label_encoding
from sdk_tools.runner.train import TrainConfig, dataset_for, eval_dataset

WARMUP_STEPS = 2  # the second step takes the paths the first skips (momentum buffers, bias correction)


def warm_host_code(bundle: Bundle, config: TrainConfig) -> None:
    """One pass of ``train``'s host-side work on ``bundle``'s shapes, with zeros for what the runtime returns."""
    manifest = bundle.manifest
    micro = manifest.training["micro_batches"]
    loss = label_encoding(manifest)
    batches = Batches(dataset_for(bundle, config.data, config.split), manifest.batch_size, seed=config.seed)
    labels = [encode_labels(loss, batches.batch(i)[1], len(manifest.classes)) for i in range(micro)]
    logits = torch.zeros(manifest.outputs[1].shape)
    torch.cat([logits.clone() for _ in labels])
    params = {spec.name: torch.zeros(spec.shape) for spec in manifest.trainable}
    grads = {name: torch.ones_like(p) for name, p in params.items()}
    optimizer = Optimizer(OptimizerConfig.from_json(manifest.optimizer), params)
    if manifest.backend_options.get("optimizer_runs_in") == "app":
        if micro > 1:
            accumulated = {name: g.clone() for name, g in grads.items()}
            for name, g in grads.items():
                accumulated[name].add_(g).div_(micro)
        for _ in range(WARMUP_STEPS):
            optimizer.step(grads)
    eval_data = eval_dataset(bundle, config)
    if eval_data is not None:
        for _, batch_labels, real in eval_batches(eval_data, logits.shape[0]):
            int((logits.argmax(dim=-1)[:real] == batch_labels[:real]).sum())
    with tempfile.TemporaryDirectory(prefix="memwall-warmup-") as tmp:
        tensors = {**params, **{f"optimizer/{k}": v for k, v in optimizer.state.items()}}
        save_checkpoint(Path(tmp, "checkpoint.safetensors"), Checkpoint(0, 0, tensors, bundle.manifest_sha256))
