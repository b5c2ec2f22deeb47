"""tests/golden/ is what the C++, Kotlin and Swift implementations are tested against: it must be exactly what the
Python reference writes today (regenerated here), and its manifests and reports must satisfy the contracts."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from exporters.bundle import BundleError, Manifest, ParameterSpec, validate_manifest_json
from sdk_tools.conformance import CHECKPOINT_MANIFEST, write_all
from sdk_tools.lab.schema import validate_report
from sdk_tools.runner.checkpoint import load_checkpoint

GOLDEN = Path(__file__).parent / "golden"


def test_golden_files_are_what_the_reference_writes(tmp_path: Path) -> None:
    for path in write_all(tmp_path):
        committed = GOLDEN / path.name
        assert committed.is_file(), f"{path.name} missing: run python -m sdk_tools.conformance tests/golden"
        assert committed.read_bytes() == path.read_bytes(), (
            f"{path.name} is stale: run python -m sdk_tools.conformance tests/golden"
        )


@pytest.mark.parametrize("name", sorted(p.name for p in GOLDEN.glob("manifest-*.json") if "bad" not in p.name))
def test_golden_manifests_satisfy_the_schema(name: str) -> None:
    data = json.loads((GOLDEN / name).read_text())
    validate_manifest_json(data, name)
    assert Manifest.from_json(data).backend in ("executorch", "onnxruntime")


def test_golden_bad_manifest_is_refused() -> None:
    with pytest.raises(BundleError, match="schema_version"):
        validate_manifest_json(json.loads((GOLDEN / "manifest-bad-schema-version.json").read_text()))


@pytest.mark.parametrize("name", ["report-ok.json", "report-oom.json"])
def test_golden_reports_satisfy_report_v1(name: str) -> None:
    validate_report(json.loads((GOLDEN / name).read_text()))


def test_golden_checkpoint_loads_in_the_host_runner(tmp_path: Path) -> None:
    # load_checkpoint reads the bundle's manifest hash (which names the checkpoint's manifest bytes) and its
    # trainable tensors' names, shapes and dtypes.
    expected = json.loads((GOLDEN / "checkpoint.json").read_text())
    trainable = [
        ParameterSpec(name, entry["shape"], "float32", math.prod(entry["shape"]))
        for name, entry in expected["tensors"].items()
        if not name.startswith("optimizer/")
    ]
    bundle = SimpleNamespace(
        manifest_sha256=hashlib.sha256(CHECKPOINT_MANIFEST).hexdigest(), manifest=SimpleNamespace(trainable=trainable)
    )
    ckpt = load_checkpoint(GOLDEN / "checkpoint.safetensors", bundle)  # type: ignore[arg-type]
    assert ckpt.steps == int(expected["metadata"]["steps"])
    assert {name: t.reshape(-1).tolist() for name, t in ckpt.tensors.items()} == {
        name: entry["values"] for name, entry in expected["tensors"].items()
    }
