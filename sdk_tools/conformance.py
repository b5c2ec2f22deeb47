"""Golden vectors of the bundle contract, for every implementation outside Python (C++ runtime, Kotlin, Swift).

The host runner is the reference: its optimizer (``sdk_tools.runner.optim``), its micro-batch accumulation, its
checkpoint writer and a report.v1 document are run on small fixed inputs and written as plain JSON (float32
values written as JSON numbers are exact: every float32 is a float64, and Python prints the shortest repr that
reads back to it) plus one real safetensors checkpoint. ``tests/golden/`` holds the committed set and
``tests/test_golden_fixtures.py`` regenerates it, so the apps test against what the Python side really does.

    python -m sdk_tools.conformance tests/golden              # rewrite the vectors, checkpoint and reports
    python -m sdk_tools.conformance tests/golden --manifests  # and re-export the manifest fixtures
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from exporters.bundle import atomic_write_bytes
from exporters.config import OptimizerConfig
from sdk_tools.lab.examples import example_report
from sdk_tools.runner.checkpoint import Checkpoint, save_checkpoint
from sdk_tools.runner.optim import Optimizer

# Float32 results of the same arithmetic in another language differ only by rounding order (FMA, vector lanes).
TOLERANCE = {"abs": 1e-6, "rel": 1e-5}
PARAMETER_SHAPES = {"model.fc.weight": (2, 3), "model.fc.bias": (2,)}
STEPS = 3
OPTIMIZERS: dict[str, OptimizerConfig] = {
    "sgd": OptimizerConfig(kind="sgd", lr=0.1),
    "sgd_momentum": OptimizerConfig(kind="sgd", lr=0.05, momentum=0.9),
    "sgd_momentum_dampening_weight_decay": OptimizerConfig(
        kind="sgd", lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01
    ),
    "sgd_nesterov_weight_decay": OptimizerConfig(kind="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
    "adamw": OptimizerConfig(kind="adamw", lr=1e-3),
    "adamw_custom": OptimizerConfig(kind="adamw", lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05),
}
# A checkpoint's manifest hash is of the manifest file's bytes; this stands for a bundle's manifest.json.
CHECKPOINT_MANIFEST = b'{"schema_version": 1, "name": "golden"}\n'


def _values(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.reshape(-1).tolist()]


def _named(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    return {name: {"shape": list(t.shape), "values": _values(t)} for name, t in tensors.items()}


def _random(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen) for name, shape in PARAMETER_SHAPES.items()}


def optimizer_vectors() -> dict[str, Any]:
    """Each optimizer from the same parameters over ``STEPS`` gradients: parameters and state after every step."""
    cases = []
    for index, (case, config) in enumerate(OPTIMIZERS.items()):
        params = _random(100 + index)
        initial = copy.deepcopy(params)
        optimizer = Optimizer(config, params)
        steps = []
        for step in range(STEPS):
            grads = _random(1000 + 10 * index + step)
            optimizer.step(grads)
            steps.append({"grads": _named(grads), "params": _named(params), "state": _named(optimizer.state)})
        cases.append({"name": case, "optimizer": config.to_json(), "params": _named(initial), "steps": steps})
    return {
        "about": "sdk_tools.runner.optim.Optimizer: parameters and state after each step (1-based step count); "
        "state names are <kind>/<parameter>, as in checkpoints under optimizer/",
        "tolerance": TOLERANCE,
        "cases": cases,
    }


def accumulation_vectors(micro_batches: int = 3) -> dict[str, Any]:
    """One optimizer step over ``micro_batches`` calls: gradients summed in call order, divided by the count."""
    config = OPTIMIZERS["sgd_momentum"]
    params = _random(7)
    initial = copy.deepcopy(params)
    gen = torch.Generator().manual_seed(8)
    calls = [{"loss": float(torch.rand((), generator=gen)), "grads": _random(20 + i)} for i in range(micro_batches)]
    accumulated = {name: g.clone() for name, g in calls[0]["grads"].items()}
    for call in calls[1:]:
        for name, g in call["grads"].items():
            accumulated[name].add_(g)
    for g in accumulated.values():
        g.div_(micro_batches)
    Optimizer(config, params).step(accumulated)
    # The reported step loss is the float64 mean of the calls' losses, as the host runner reports it.
    mean_loss = sum(call["loss"] for call in calls) / micro_batches
    return {
        "about": "host runner train_step: grads of each call summed in call order, divided by micro_batches "
        "(in float32), then one optimizer step; the step's loss is the mean of the calls' losses",
        "tolerance": TOLERANCE,
        "micro_batches": micro_batches,
        "optimizer": config.to_json(),
        "params": _named(initial),
        "calls": [{"loss": call["loss"], "grads": _named(call["grads"])} for call in calls],
        "accumulated_grads": _named(accumulated),
        "loss": mean_loss,
        "params_after": _named(params),
    }


def checkpoint_fixture(directory: Path) -> dict[str, Any]:
    """``checkpoint.safetensors`` as the host runner writes it after 3 AdamW steps, and what it must contain."""
    params = _random(9)
    optimizer = Optimizer(OPTIMIZERS["adamw"], params)
    for step in range(STEPS):
        optimizer.step(_random(30 + step))
    tensors = {**params, **{f"optimizer/{name}": t for name, t in optimizer.state.items()}}
    manifest_sha256 = hashlib.sha256(CHECKPOINT_MANIFEST).hexdigest()
    atomic_write_bytes(directory / "checkpoint-manifest.json", CHECKPOINT_MANIFEST)
    save_checkpoint(directory / "checkpoint.safetensors", Checkpoint(STEPS, 12, tensors, manifest_sha256))
    return {
        "about": "checkpoint.safetensors: tensors sorted by name, metadata strings; manifest_sha256 is the sha256 "
        "of checkpoint-manifest.json's bytes",
        "metadata": {
            "format": "memwall.checkpoint",
            "version": "1",
            "steps": str(STEPS),
            "data_position": "12",
            "manifest_sha256": manifest_sha256,
        },
        "tensors": {name: {"dtype": "F32", **entry} for name, entry in _named(tensors).items()},
    }


def reports() -> dict[str, dict[str, Any]]:
    """A completed run's report.v1 and a killed run's, fixed to the byte (seeded, fixed start time)."""
    out = {}
    for status in ("ok", "oom"):
        report = example_report("00000000-0000-4000-8000-00000000d01d", status=status, seed=42)
        report["run"]["started_at"] = "2026-12-03T12:00:00.000+00:00"
        out[f"report-{status}.json"] = report
    return out


MANIFEST_CASES: dict[str, dict[str, Any]] = {
    "executorch": {"backend": "executorch", "optimizer": OPTIMIZERS["sgd_momentum"]},
    "executorch-micro-batches": {"backend": "executorch", "optimizer": OPTIMIZERS["adamw"], "micro_batches": 2},
    "executorch-fused-update": {"backend": "executorch", "optimizer": OPTIMIZERS["adamw"], "fused_update": True},
    "onnxruntime": {"backend": "onnxruntime", "optimizer": OPTIMIZERS["adamw"]},
}


def manifests(directory: Path) -> None:
    """Real manifests of small MLP exports (one per bundle kind an app meets), and one no app may accept.

    Exports are not byte-reproducible across versions (hashes, ``created_by``), so the test validates these
    rather than regenerating them; rewrite them with ``--manifests`` when the manifest schema changes.
    """
    import tempfile

    from exporters import ModelSpec, export_bundle
    from exporters.bundle import MANIFEST_NAME
    from exporters.techniques.fused_update import FusedUpdateConfig
    from sdk_tools.models import build_model

    for case, options in MANIFEST_CASES.items():
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            bundle = export_bundle(
                build_model("mlp"),
                Path(tmp) / case,
                sample_shape=(1, 8, 8),
                batch_size=4,
                backend=options["backend"],
                optimizer=options["optimizer"],
                micro_batches=options.get("micro_batches", 1),
                fused_update=FusedUpdateConfig() if options.get("fused_update") else None,
                model_spec=ModelSpec("mlp"),
            )
            raw = (bundle.directory / MANIFEST_NAME).read_bytes()
        atomic_write_bytes(directory / f"manifest-{case}.json", raw)
    future = json.loads((directory / "manifest-executorch.json").read_text())
    future["schema_version"] = 2
    atomic_write_bytes(directory / "manifest-bad-schema-version.json", (json.dumps(future, indent=1) + "\n").encode())


def write_all(directory: Path, with_manifests: bool = False) -> list[Path]:
    """Write every golden file into ``directory``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    documents = {
        "optimizer.json": optimizer_vectors(),
        "accumulation.json": accumulation_vectors(),
        "checkpoint.json": checkpoint_fixture(directory),
        **reports(),
    }
    for name, document in documents.items():
        atomic_write_bytes(directory / name, (json.dumps(document, indent=1) + "\n").encode())
    if with_manifests:
        manifests(directory)
    return sorted(directory.iterdir())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sdk_tools.conformance", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--manifests", action="store_true", help="also export the manifest fixtures (slow)")
    args = parser.parse_args(argv)
    for path in write_all(args.directory, args.manifests):
        print(path)


if __name__ == "__main__":
    main()
