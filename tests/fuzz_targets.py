"""The readers of untrusted files, each wrapped as ``target(data: bytes)``: shared by the property tests
(tests/test_reader_properties.py) and the coverage-guided fuzzer (benchmarks/fuzz_readers.py).

A target returns normally when the reader accepted the input and what it returned keeps the reader's promises,
and raises ``Refused`` when the reader refused it with its documented error (one line naming problem and fix).
Anything else that escapes (an ``IndexError``, a ``TypeError``, a crash) is a finding.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from onnx import TensorProto, helper

from exporters.bundle import MANIFEST_NAME, Bundle, BundleError, Manifest, load_bundle
from sdk_tools.data.loading import DataError, load_npz
from sdk_tools.runner.checkpoint import CheckpointError, load_checkpoint, write_safetensors

GOLDEN = Path(__file__).parent / "golden"
SAMPLE_SHAPE = (1, 8, 8)
CLASSES = 10
FAKE_SHA = "0" * 64


class Refused(Exception):
    """The reader refused the input with its documented error."""


@dataclass
class Targets:
    """The three readers over files in ``workdir``, with their seed inputs (valid files of each kind)."""

    workdir: Path
    manifest_seeds: list[bytes]
    checkpoint_seed: bytes
    npz_seed: bytes
    bundle: Bundle  # what a checkpoint is read against

    def by_name(self) -> dict[str, Callable[[bytes], None]]:
        return {"manifest": self.manifest, "checkpoint": self.checkpoint, "npz": self.npz}

    def seeds(self, name: str) -> list[bytes]:
        return {"manifest": self.manifest_seeds, "checkpoint": [self.checkpoint_seed], "npz": [self.npz_seed]}[name]

    def manifest(self, data: bytes) -> None:
        bundle_dir = self.workdir / "bundle"
        (bundle_dir / MANIFEST_NAME).write_bytes(data)
        try:
            bundle = load_bundle(bundle_dir)
        except BundleError as exc:
            raise Refused(str(exc)) from exc
        m = bundle.manifest
        assert m.batch_size * m.training["micro_batches"] == m.training["batch_size"]
        assert all(math.prod(p.shape) == p.numel for p in m.trainable)

    def checkpoint(self, data: bytes) -> None:
        path = self.workdir / "checkpoint.safetensors"
        path.write_bytes(data)
        try:
            ckpt = load_checkpoint(path, self.bundle)
        except CheckpointError as exc:
            raise Refused(str(exc)) from exc
        for spec in self.bundle.manifest.trainable:
            assert list(ckpt.tensors[spec.name].shape) == spec.shape
        assert all(bool(torch.isfinite(t).all()) for t in ckpt.tensors.values() if t.is_floating_point())
        assert ckpt.steps >= 0 and ckpt.data_position >= 0

    def npz(self, data: bytes) -> None:
        path = self.workdir / "data.npz"
        path.write_bytes(data)
        try:
            split = load_npz(path, SAMPLE_SHAPE, CLASSES)
        except DataError as exc:
            raise Refused(str(exc)) from exc
        check_split(split.images, split.labels)


def check_split(images: torch.Tensor, labels: torch.Tensor) -> None:
    """What a loaded data file promises every batch drawn from it."""
    assert images.dtype == torch.float32 and tuple(images.shape[1:]) == SAMPLE_SHAPE
    assert len(images) == len(labels) > 0 and labels.dtype == torch.int64
    assert bool(torch.isfinite(images).all())
    assert int(labels.min()) >= 0 and int(labels.max()) < CLASSES


def _tiny_onnx() -> bytes:
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])],
    )
    return helper.make_model(graph).SerializeToString()


def _seed_manifest(golden: str, bundle_dir: Path) -> bytes:
    """A golden manifest whose files exist in ``bundle_dir`` with matching sizes and hashes (placeholders: the
    reader checks files, it does not run them; .onnx placeholders are real ONNX, which it parses)."""
    data = json.loads((GOLDEN / golden).read_text())
    for entry in data["files"].values():
        content = _tiny_onnx() if entry["path"].endswith(".onnx") else entry["path"].encode()
        (bundle_dir / entry["path"]).write_bytes(content)
        entry.update(sha256=hashlib.sha256(content).hexdigest(), bytes=len(content))
    return json.dumps(data, indent=2).encode()


def make_targets(workdir: Path) -> Targets:
    bundle_dir = workdir / "bundle"
    bundle_dir.mkdir(parents=True, exist_ok=True)
    manifests = [_seed_manifest(name, bundle_dir) for name in ("manifest-executorch.json", "manifest-onnxruntime.json")]
    manifest = Manifest.from_json(json.loads(manifests[0]))
    bundle = Bundle(bundle_dir, manifest, FAKE_SHA)
    tensors = {p.name: torch.full(p.shape, 0.5) for p in manifest.trainable}
    tensors |= {f"optimizer/momentum/{p.name}": torch.zeros(p.shape) for p in manifest.trainable}
    metadata = {"format": "memwall.checkpoint", "version": "1", "steps": "3", "data_position": "3"}
    checkpoint = io.BytesIO()
    write_safetensors(checkpoint, tensors, {**metadata, "manifest_sha256": FAKE_SHA})
    npz = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(npz, x=rng.random((4, *SAMPLE_SHAPE), dtype=np.float32), y=np.arange(4))
    return Targets(workdir, manifests, checkpoint.getvalue(), npz.getvalue(), bundle)


def replay(targets: Targets, name: str, data: bytes) -> None:
    """Run one input; a refusal is a pass."""
    with contextlib.suppress(Refused):
        targets.by_name()[name](data)


__all__ = ["CLASSES", "SAMPLE_SHAPE", "Refused", "Targets", "check_split", "make_targets", "replay"]
