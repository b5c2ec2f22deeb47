"""The bundle: a directory with ``manifest.json`` plus artifact files. The manifest is the contract with
the runner, the phone apps and the device lab; its JSON Schema is ``exporters/schemas/manifest.v1.schema.json``.

Loading verifies the schema, the schema version and every file's size and sha256, and fails with
``BundleError`` naming the problem and the fix. Writing is atomic per file (temp file + fsync + rename).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import jsonschema

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
# A manifest is a few KiB (MobileNetV2 x1.0 full fine-tune: 33 KiB); reading more would only let a hostile one
# exhaust memory before the schema refuses it.
MAX_MANIFEST_BYTES = 4 * 2**20
SCHEMA_PATH = Path(__file__).parent / "schemas" / f"manifest.v{SCHEMA_VERSION}.schema.json"


class BundleError(Exception):
    """A bundle cannot be used: the message names the problem and how to fix it."""


class UntrustedCodeError(BundleError):
    """A bundle names code to import and the user has not said they trust the bundle (docs/security.md)."""

    def __init__(self, bundle_dir: Path, what: str, code: str) -> None:
        super().__init__(
            f"bundle {bundle_dir} names {what} {code!r} to import: memwall runs a bundle's code only if you trust "
            "where the bundle came from (a manifest's sha256 proves the files are intact, not who made them); "
            "pass --trust-bundle-code (Python: trust_code=True) if you do"
        )


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


# The runtimes a bundle's memory is predicted for (``memory.by_runtime``): the Python host runner
# (``sdk_tools.runner``: the backend's Python bindings, what ``memwall train/measure`` run) and the memwall native
# runtime (``runtime/``: C++, what the phone apps and Linux boards run; ExecuTorch bundles only).
HOST_RUNTIME = "python_host"
NATIVE_RUNTIME = "memwall_native"


@dataclass(frozen=True)
class RuntimePrediction:
    """One runtime's prediction: its own overhead, and the peak = the shared components + that overhead."""

    runtime_overhead_bytes: int
    predicted_peak_bytes: int


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted training memory in bytes; components add up to ``predicted_peak_bytes``.

    ``runtime_overhead_bytes`` and ``predicted_peak_bytes`` are the Python host runner's (what every reader before
    ``by_runtime`` took them for); ``by_runtime`` names each runtime's own pair: use ``prediction_for``.
    """

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
    # The prediction per runtime (HOST_RUNTIME, NATIVE_RUNTIME): they differ only in the runtime's own overhead.
    by_runtime: dict[str, RuntimePrediction] = field(default_factory=dict)

    def prediction_for(self, runtime: str) -> RuntimePrediction:
        """The prediction for a run in ``runtime``. A manifest with none for it (one written before ``by_runtime``,
        whose overhead was calibrated on the Python host runner) gives the host runner's: all it predicts."""
        return self.by_runtime.get(runtime) or RuntimePrediction(self.runtime_overhead_bytes, self.predicted_peak_bytes)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MemoryEstimate:
        by_runtime = {name: RuntimePrediction(**entry) for name, entry in data.get("by_runtime", {}).items()}
        return cls(**{**data, "by_runtime": by_runtime})


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
                "memory": MemoryEstimate.from_json(data["memory"]),
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
        entry = self.manifest.files.get(role)
        if entry is None:
            raise BundleError(f"bundle {self.directory} lists no {role!r} file; re-export the bundle")
        return self.directory / entry.path


def load_bundle(directory: str | os.PathLike[str], verify_files: bool = True) -> Bundle:
    """Read and verify a bundle; raise ``BundleError`` with a clear message on any problem.

    A bundle is untrusted input (docs/security.md): the manifest is read with a size limit and strict JSON,
    checked against the schema and for consistency, and every file the runtimes will open must be a regular
    file inside the directory (no symlink, no ``..``) whose size and sha256 match; ONNX models must carry all
    their tensors inside themselves (external data could name any file on disk).
    """
    bundle_dir = Path(directory)
    manifest_path = bundle_dir / MANIFEST_NAME
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir} is not a directory; pass the bundle directory made by 'memwall export'")
    if manifest_path.is_symlink() or not manifest_path.is_file():
        raise BundleError(f"{bundle_dir} has no {MANIFEST_NAME} file: not a memwall bundle (run 'memwall export')")
    with manifest_path.open("rb") as fh:
        raw = fh.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleError(
            f"{manifest_path} is larger than {MAX_MANIFEST_BYTES // 2**20} MiB, far more than any export writes: "
            "not a memwall manifest; re-export the bundle"
        )
    data = parse_strict_json(raw, str(manifest_path))
    validate_manifest_json(data, str(manifest_path))
    try:
        manifest = Manifest.from_json(data)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{manifest_path}: {exc}; re-export the bundle") from exc
    check_manifest_consistency(manifest, str(manifest_path))
    if verify_files:
        for role, entry in manifest.files.items():
            verify_file(bundle_dir, role, entry)
        if manifest.backend == "onnxruntime":
            for role, entry in manifest.files.items():
                if entry.path.endswith(".onnx"):
                    check_onnx_self_contained(bundle_dir / entry.path, role)
            # ONNX Runtime 1.19 reads a checkpoint's external data from "<checkpoint>.data" beside it (its
            # "Failed to open checkpoint's external data file"): such a file would be read unhashed.
            external = manifest.files["checkpoint"].path + ".data"
            listed = {entry.path for entry in manifest.files.values()}
            if external not in listed and (bundle_dir / external).exists():
                raise BundleError(
                    f"{bundle_dir} holds {external!r}, which ONNX Runtime would read as the checkpoint's external "
                    "data, but the manifest does not list it: refused; remove it or re-export the bundle"
                )
    return Bundle(bundle_dir, manifest, hashlib.sha256(raw).hexdigest())


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} appears twice in one object")
        result[key] = value
    return result


def parse_strict_json(raw: bytes, where: str) -> Any:
    """JSON as every reader of the contract parses it alike: UTF-8, no ``NaN``/``Infinity`` (not JSON; Kotlin's
    and Swift's parsers refuse them), no duplicate keys (readers would disagree on which one wins)."""
    try:
        return json.loads(raw, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # JSONDecodeError is a ValueError; a deeply nested document exhausts the parser's recursion.
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise BundleError(f"{where} is not valid JSON ({detail}); the bundle is corrupt, re-export it") from exc


# The backend's runner opens these roles; a bundle without one cannot train.
REQUIRED_ROLES = {
    "executorch": ("program",),
    "onnxruntime": ("training_model", "eval_model", "checkpoint"),
}


def check_manifest_consistency(manifest: Manifest, where: str) -> None:
    """What the schema cannot say: the figures a runner sizes tensors and loops from agree with each other."""
    from exporters.config import OptimizerConfig

    problems = []
    missing = [role for role in REQUIRED_ROLES[manifest.backend] if role not in manifest.files]
    if missing:
        problems.append(f"files lacks the {', '.join(missing)} role(s) a {manifest.backend} bundle needs")
    first = manifest.inputs[0].shape
    if not first:
        problems.append("inputs[0] has no batch dimension")
    elif manifest.labels.shape[:1] != first[:1]:
        problems.append(f"labels {manifest.labels.shape} and inputs {first} differ in batch size")
    for i, tensor in enumerate(manifest.inputs[1:], start=1):
        if tensor.shape and first and tensor.shape[0] != first[0]:
            problems.append(f"inputs[{i}] and inputs[0] differ in batch size")
        elif not tensor.shape:
            problems.append(f"inputs[{i}] has no batch dimension")
    if first and manifest.training["batch_size"] != manifest.batch_size * manifest.training["micro_batches"]:
        problems.append("training.batch_size is not the input batch times micro_batches")
    if len(manifest.labels.shape) == 1 and not manifest.labels.dtype.startswith("int"):
        problems.append(f"labels {manifest.labels.shape} are class indices but have dtype {manifest.labels.dtype}")
    if not manifest.classes:
        problems.append("classes is empty")
    for param in manifest.trainable:
        if math.prod(param.shape) != param.numel:
            problems.append(f"trainable {param.name!r} has shape {param.shape} but numel {param.numel}")
            break
    if len({p.name for p in manifest.trainable}) != len(manifest.trainable):
        problems.append("trainable names a parameter twice")
    problems += _runtime_prediction_problems(manifest.memory)
    try:
        OptimizerConfig.from_json(manifest.optimizer)
    except (TypeError, ValueError) as exc:
        problems.append(f"optimizer: {exc}")
    if problems:
        raise BundleError(f"{where}: {problems[0]} ({len(problems)} problem(s)); re-export the bundle")


def _runtime_prediction_problems(memory: MemoryEstimate) -> list[str]:
    """``memory.by_runtime`` agrees with the rest: the host's entry is the top-level pair (what older readers use),
    and every runtime's peak is the same shared components plus its own overhead."""
    if not memory.by_runtime:
        return []
    shared = memory.predicted_peak_bytes - memory.runtime_overhead_bytes
    host = memory.by_runtime.get(HOST_RUNTIME)
    if host != RuntimePrediction(memory.runtime_overhead_bytes, memory.predicted_peak_bytes):
        return [f"memory.by_runtime.{HOST_RUNTIME} is missing or differs from memory's predicted_peak_bytes"]
    return [
        f"memory.by_runtime.{name}: predicted_peak_bytes is not the shared components ({shared}) plus its overhead"
        for name, entry in memory.by_runtime.items()
        if entry.predicted_peak_bytes - entry.runtime_overhead_bytes != shared
    ]


def check_onnx_self_contained(path: Path, role: str) -> None:
    """Refuse an ONNX model with a tensor stored outside it: ONNX Runtime resolves external data paths itself
    (relative ones against the model's directory, but ``../``-style and absolute locations were honored too),
    so a received model could read any file the user can read into its weights."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: the model is unreadable, whatever the cause
        raise BundleError(f"bundle file {path.name!r} ({role}) is no readable ONNX model ({exc}); re-export") from exc
    for tensor in _onnx_tensors(model.graph, [f.node for f in model.functions]):
        if uses_external_data(tensor):
            raise BundleError(
                f"bundle file {path.name!r} ({role}) keeps tensor {tensor.name!r} in external data, outside the "
                "bundle's hashed files: refused (it could read any file); re-export the bundle"
            )


def _onnx_tensors(graph: Any, function_nodes: list[Any]) -> Iterator[Any]:
    """Every TensorProto a model holds: initializers, sparse initializers and node attributes, in subgraphs too."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for nodes in [graph.node, *function_nodes]:
        for node in nodes:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("sparse_tensor"):
                    yield attr.sparse_tensor.values
                    yield attr.sparse_tensor.indices
                for sub in [attr.g] if attr.HasField("g") else []:
                    yield from _onnx_tensors(sub, [])
                for sub in attr.graphs:
                    yield from _onnx_tensors(sub, [])


def verify_file(bundle_dir: Path, role: str, entry: FileEntry) -> None:
    path = bundle_dir / entry.path
    if not path.exists() and not path.is_symlink():
        raise BundleError(f"bundle file {entry.path!r} ({role}) is missing from {bundle_dir}; re-export the bundle")
    # Refused rather than followed: a symlink (of the file or of a directory on its path) could point anywhere.
    if os.path.realpath(path) != os.path.join(os.path.realpath(bundle_dir), os.path.normpath(entry.path)):
        raise BundleError(
            f"bundle file {entry.path!r} ({role}) is a symbolic link or lies outside {bundle_dir}: a bundle's "
            "files must be regular files inside it; copy the bundle without links (cp -rL) or re-export it"
        )
    if not path.is_file():
        raise BundleError(f"bundle file {entry.path!r} ({role}) in {bundle_dir} is not a regular file; re-export it")
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
