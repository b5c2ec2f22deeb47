"""Training checkpoints: trained parameters + optimizer state + progress, one safetensors file.

safetensors is a plain format (8-byte header length, JSON header, raw tensors) that the Android and iOS
apps can read and write without a library. Saving is atomic: a crash mid-save leaves the previous
checkpoint intact. A checkpoint records the manifest hash of its bundle and refuses to load into another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from exporters.bundle import Bundle, atomic_write
from sdk_tools.runner.session import TORCH_DTYPES

CHECKPOINT_NAME = "checkpoint.safetensors"


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class Checkpoint:
    steps: int  # optimizer steps taken
    data_position: int  # batches consumed, so a resumed run continues the same batch stream
    tensors: dict[str, torch.Tensor]
    manifest_sha256: str


def default_checkpoint_path(bundle: Bundle) -> Path:
    return bundle.directory / CHECKPOINT_NAME


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    metadata = {
        "format": "memwall.checkpoint",
        "version": "1",
        "steps": str(checkpoint.steps),
        "data_position": str(checkpoint.data_position),
        "manifest_sha256": checkpoint.manifest_sha256,
    }
    atomic_write(path, lambda fh: write_safetensors(fh, checkpoint.tensors, metadata))


SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def write_safetensors(fh: BinaryIO, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Stream ``tensors`` into a safetensors file one by one.

    ``safetensors.torch.save`` builds the whole file in memory (plus our clone for it): at the end of
    training that doubled or tripled the state's footprint and was the process's peak (measured +22 MiB on
    the demo bundle, more than the training step's own peak over its arena).
    """
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    names = sorted(tensors)
    for name in names:
        t = tensors[name]
        if t.dtype not in SAFETENSORS_DTYPES:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which checkpoints do not store")
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, size + offset],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data section to 8 bytes
    fh.write(len(encoded).to_bytes(8, "little"))
    fh.write(encoded)
    for name in names:
        t = tensors[name].detach()
        if not t.is_contiguous():
            t = t.contiguous()  # a copy of this one tensor only
        fh.write(memoryview(t.view(torch.uint8).reshape(-1).numpy()) if t.numel() else b"")


def load_checkpoint(path: Path, bundle: Bundle) -> Checkpoint:
    """Read a checkpoint and check it against ``bundle`` before anything is copied: its manifest hash, its
    progress counters, every trainable tensor by name, shape and dtype, and that every float tensor is finite.
    A checkpoint comes back from a device: it is untrusted input like the bundle (docs/security.md)."""
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: train the bundle first (memwall train, without --resume) or pass --checkpoint"
        )
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        tensors = load_file(path)
    except (SafetensorError, ValueError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt ({exc}); delete it and train again") from exc
    if metadata.get("format") != "memwall.checkpoint":
        raise CheckpointError(f"{path} is not a memwall checkpoint")
    if metadata.get("manifest_sha256") != bundle.manifest_sha256:
        raise CheckpointError(
            f"checkpoint {path} was saved for another bundle (manifest {metadata.get('manifest_sha256', '?')[:12]}..., "
            f"this bundle is {bundle.manifest_sha256[:12]}...); pass the right --checkpoint or start fresh"
        )
    counters = {}
    for key in ("steps", "data_position"):
        value = metadata.get(key, "")
        if not (value.isascii() and value.isdigit() and len(value) < 19):
            raise CheckpointError(f"checkpoint {path}: metadata {key!r} is {value!r}, not a step count; delete it")
        counters[key] = int(value)
    check_tensors(tensors, bundle, path)
    return Checkpoint(counters["steps"], counters["data_position"], tensors, bundle.manifest_sha256)


def check_tensors(tensors: dict[str, torch.Tensor], bundle: Bundle, path: Path) -> None:
    for spec in bundle.manifest.trainable:
        tensor = tensors.get(spec.name)
        if tensor is None:
            raise CheckpointError(f"checkpoint {path} lacks trainable {spec.name!r}: not this bundle's; delete it")
        if list(tensor.shape) != spec.shape or tensor.dtype != TORCH_DTYPES[spec.dtype]:
            raise CheckpointError(
                f"checkpoint {path}: {spec.name!r} is {_describe(tensor)}, the bundle's is {spec.dtype} {spec.shape}; "
                "it is not this bundle's, delete it"
            )
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"checkpoint {path}: {name!r} holds NaN or infinity (a diverged run saved it, or it was altered); "
                "delete it and train again"
            )


def _describe(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)}"


def copy_checked(destinations: dict[str, torch.Tensor], sources: dict[str, torch.Tensor]) -> None:
    """``destinations[name].copy_(sources[name])`` for every name, once every pair is checked: present, same shape,
    same dtype. ``copy_`` alone would broadcast a [1] tensor over a whole weight or cast silently, and a check
    failing halfway would leave a half-restored session."""
    for name, dst in destinations.items():
        src = sources.get(name)
        if src is None:
            raise CheckpointError(
                f"checkpoint lacks {name!r}: it belongs to another bundle or optimizer; pass the right --checkpoint "
                "or train without --resume"
            )
        if src.shape != dst.shape or src.dtype != dst.dtype:
            raise CheckpointError(
                f"checkpoint tensor {name!r} is {_describe(src)}, the session's is {_describe(dst)}: it belongs to "
                "another bundle; pass the right --checkpoint or train without --resume"
            )
    with torch.no_grad():
        for name, dst in destinations.items():
            dst.copy_(sources[name])


def all_finite(tensors: dict[str, torch.Tensor]) -> bool:
    """Whether every float tensor is free of NaN and infinity (what a checkpoint may hold)."""
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())
