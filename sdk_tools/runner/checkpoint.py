"""Training checkpoints: trained parameters + optimizer state + progress, one safetensors file.

safetensors is a plain format (8-byte header length, JSON header, raw tensors) that the Android and iOS
apps can read and write without a library. Saving is atomic: a crash mid-save leaves the previous
checkpoint intact. A checkpoint records the manifest hash of its bundle and refuses to load into another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from exporters.bundle import Bundle, atomic_write_bytes

CHECKPOINT_NAME = "checkpoint.safetensors"


class CheckpointError(Exception):
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
    tensors = {k: v.detach().contiguous().clone() for k, v in checkpoint.tensors.items()}
    atomic_write_bytes(path, st_save(tensors, metadata=metadata))


def load_checkpoint(path: Path, bundle: Bundle) -> Checkpoint:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train without --resume first")
    raw = path.read_bytes()
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        metadata = json.loads(raw[8 : 8 + header_len]).get("__metadata__", {})
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt ({exc}); delete it and train again") from exc
    if metadata.get("format") != "memwall.checkpoint":
        raise CheckpointError(f"{path} is not a memwall checkpoint")
    if metadata.get("manifest_sha256") != bundle.manifest_sha256:
        raise CheckpointError(
            f"checkpoint {path} was saved for another bundle (manifest {metadata.get('manifest_sha256', '?')[:12]}..., "
            f"this bundle is {bundle.manifest_sha256[:12]}...); pass the right --checkpoint or start fresh"
        )
    return Checkpoint(int(metadata["steps"]), int(metadata["data_position"]), tensors, bundle.manifest_sha256)
