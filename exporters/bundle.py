"""The bundle: a directory with ``manifest.json`` plus artifact files. The manifest is the contract with
the runner, the phone apps and the device lab; its JSON Schema is ``exporters/schemas/manifest.v1.schema.json``.

Loading verifies the schema, the schema version and every file's size and sha256, and fails with
``BundleError`` naming the problem and the fix. Writing is atomic per file (temp file + fsync + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import jsonschema

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
SCHEMA_PATH = Path(__file__).parent / "schemas" / f"manifest.v{SCHEMA_VERSION}.schema.json"


class BundleError(Exception):
    """A bundle cannot be used: the message names the problem and how to fix it."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: list[int]
    dtype: str


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    shape: list[int]
    dtype: str
    numel: int


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted training memory in bytes; components add up to ``predicted_peak_bytes``."""

    planned_arena_bytes: int
    parameter_bytes: int
    trainable_parameter_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int
    program_bytes: int
    runtime_overhead_bytes: int
    predicted_peak_bytes: int
    notes: str = ""
    # Added within schema v1 (optional: manifests written before them read as 0).
    frozen_parameter_bytes: int = 0  # frozen weights, stored in the program files
    evaluation_arena_bytes: int = 0  # the predict method's workspace, resident while the app evaluates
    gradient_accumulation_bytes: int = 0  # the runner's sum of micro-batch gradients
    delegate_bytes: int = 0  # a delegate's (XNNPACK's) workspace, outside the planned arena
    optimizer_workspace_bytes: int = 0  # the app-side update's scratch tensor (the largest trainable parameter)


@dataclass(frozen=True)
class Manifest:
    name: str
    backend: str
    created_by: str
    files: dict[str, FileEntry]
    inputs: list[TensorSpec]
    labels: TensorSpec
    outputs: list[TensorSpec]
    classes: list[str]
    loss: str
    trainable: list[ParameterSpec]
    frozen_parameter_count: int
    optimizer: dict[str, Any]
    training: dict[str, Any]
    methods: dict[str, dict[str, Any]]
    memory: MemoryEstimate
    model: dict[str, Any] = field(default_factory=dict)
    techniques: list[dict[str, Any]] = field(default_factory=list)
    backend_options: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    # Added within schema v1 (optional: manifests written before it read as None): exporters/verify.py.
    verification: dict[str, Any] | None = None

    @property
    def batch_size(self) -> int:
        return self.inputs[0].shape[0]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.inputs[0].shape[1:])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            **{
                **data,
                "files": {role: FileEntry(**entry) for role, entry in data["files"].items()},
                "inputs": [TensorSpec(**t) for t in data["inputs"]],
                "labels": TensorSpec(**data["labels"]),
                "outputs": [TensorSpec(**t) for t in data["outputs"]],
                "trainable": [ParameterSpec(**p) for p in data["trainable"]],
                "memory": MemoryEstimate(**data["memory"]),
            }
        )


@cache
def manifest_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(bundle_dir: Path, relative: str) -> FileEntry:
    path = bundle_dir / relative
    return FileEntry(relative, sha256_file(path), path.stat().st_size)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash at any point leaves either the old or the new file."""
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Let ``write`` fill a temporary file, then move it over ``path``: a crash or a full disk at any point
    leaves either the old or the new file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def validate_manifest_json(data: Any, where: str = MANIFEST_NAME) -> None:
    if not isinstance(data, dict):
        raise BundleError(f"{where}: expected a JSON object, found {type(data).__name__}")
    version = data.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise BundleError(
            f"{where}: unsupported schema_version {version!r}; this memwall reads {SUPPORTED_SCHEMA_VERSIONS}. "
            "Re-export the bundle with this memwall version, or upgrade memwall."
        )
    errors = sorted(jsonschema.Draft202012Validator(manifest_schema()).iter_errors(data), key=str)
    if errors:
        first = errors[0]
        location = "/".join(str(p) for p in first.absolute_path) or "(root)"
        raise BundleError(
            f"{where}: invalid manifest at {location}: {first.message} "
            f"({len(errors)} problem(s)). Re-export the bundle; do not edit manifest.json by hand."
        )


def write_manifest(bundle_dir: Path, manifest: Manifest) -> Path:
    data = manifest.to_json()
    validate_manifest_json(data)
    path = bundle_dir / MANIFEST_NAME
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())
    return path


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    directory: Path
    manifest: Manifest
    manifest_sha256: str

    def path(self, role: str) -> Path:
        return self.directory / self.manifest.files[role].path


def load_bundle(directory: str | os.PathLike[str], verify_files: bool = True) -> Bundle:
    """Read and verify a bundle; raise ``BundleError`` with a clear message on any problem."""
    bundle_dir = Path(directory)
    manifest_path = bundle_dir / MANIFEST_NAME
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir} is not a directory; pass the bundle directory made by 'memwall export'")
    if not manifest_path.is_file():
        raise BundleError(f"{bundle_dir} has no {MANIFEST_NAME}: not a memwall bundle (run 'memwall export')")
    raw = manifest_path.read_bytes()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON ({exc}); the bundle is corrupt, re-export it") from exc
    validate_manifest_json(data, str(manifest_path))
    manifest = Manifest.from_json(data)
    if verify_files:
        for role, entry in manifest.files.items():
            verify_file(bundle_dir, role, entry)
    return Bundle(bundle_dir, manifest, hashlib.sha256(raw).hexdigest())


def verify_file(bundle_dir: Path, role: str, entry: FileEntry) -> None:
    path = bundle_dir / entry.path
    if not path.is_file():
        raise BundleError(f"bundle file {entry.path!r} ({role}) is missing from {bundle_dir}; re-export the bundle")
    size = path.stat().st_size
    if size != entry.bytes:
        raise BundleError(
            f"bundle file {entry.path!r} ({role}) is {size} bytes, the manifest says {entry.bytes}: "
            "it is truncated or was replaced; re-export the bundle"
        )
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise BundleError(
            f"bundle file {entry.path!r} ({role}) has sha256 {actual[:12]}..., the manifest says "
            f"{entry.sha256[:12]}...: the file is corrupt or from another export; re-export the bundle"
        )
