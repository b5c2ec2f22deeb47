"""Bundle verification, bad input, checkpoints and resume, pulling weights back into PyTorch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import torch
from safetensors.torch import load_file

from exporters import BundleError, OptimizerConfig, load_bundle
from exporters.bundle import MANIFEST_NAME, manifest_schema
from sdk_tools.runner import (
    CheckpointError,
    InputError,
    TrainConfig,
    load_trained_weights,
    open_session,
    train,
)
from sdk_tools.runner.checkpoint import default_checkpoint_path
from sdk_tools.runner.train import eval_dataset
from tests.conftest import ExportedCase, export_case


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> ExportedCase:
    return export_case(tmp_path_factory.mktemp("mlp"), "mlp", OptimizerConfig(lr=0.05, momentum=0.9))


@pytest.fixture
def bundle_copy(mlp: ExportedCase, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(mlp.bundle.directory, target)
    return target


def test_manifest_validates_against_published_schema(mlp: ExportedCase) -> None:
    data = json.loads((mlp.bundle.directory / MANIFEST_NAME).read_text())
    jsonschema.Draft202012Validator(manifest_schema()).validate(data)
    assert data["schema_version"] == 1
    assert data["backend"] == "executorch"
    assert data["memory"]["planned_arena_bytes"] > 0
    assert data["memory"]["predicted_peak_bytes"] >= data["memory"]["planned_arena_bytes"]
    assert [p["name"] for p in data["trainable"]][:2] == ["model.features.1.weight", "model.features.1.bias"]


def test_truncated_program_is_refused(bundle_copy: Path) -> None:
    program = bundle_copy / "model.pte"
    program.write_bytes(program.read_bytes()[:1000])
    with pytest.raises(BundleError, match=r"model\.pte.*truncated"):
        load_bundle(bundle_copy)


def test_wrong_hash_is_refused(bundle_copy: Path) -> None:
    program = bundle_copy / "model.pte"
    data = bytearray(program.read_bytes())
    data[len(data) // 2] ^= 0xFF
    program.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bundle_copy)


def test_unknown_schema_version_is_refused(bundle_copy: Path) -> None:
    manifest = bundle_copy / MANIFEST_NAME
    data = json.loads(manifest.read_text())
    data["schema_version"] = 99
    manifest.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="unsupported schema_version 99"):
        load_bundle(bundle_copy)


def test_invalid_manifest_field_is_named(bundle_copy: Path) -> None:
    manifest = bundle_copy / MANIFEST_NAME
    data = json.loads(manifest.read_text())
    data["inputs"][0]["shape"] = "big"
    manifest.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="inputs/0/shape"):
        load_bundle(bundle_copy)


def test_corrupt_manifest_json_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / MANIFEST_NAME).write_text('{"schema_version": 1,')
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_copy)


def test_missing_file_is_named(bundle_copy: Path) -> None:
    (bundle_copy / "model.pte").unlink()
    with pytest.raises(BundleError, match=r"'model\.pte'.*missing"):
        load_bundle(bundle_copy)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        load_bundle(tmp_path)


def test_truncated_program_in_the_runtime_raises_instead_of_crashing(bundle_copy: Path) -> None:
    # Even with hash checks skipped, the runtime must not take the interpreter down.
    program = bundle_copy / "model.pte"
    program.write_bytes(program.read_bytes()[:4096])
    code = (
        "import sys\nfrom exporters import load_bundle\nfrom sdk_tools.runner import open_session\n"
        f"b = load_bundle({str(bundle_copy)!r}, verify_files=False)\n"
        "try:\n    open_session(b)\nexcept Exception as exc:\n    print('refused:', exc); sys.exit(0)\nsys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused:" in proc.stdout


@pytest.mark.parametrize(
    ("inputs", "labels", "message"),
    [
        (torch.rand(3, 1, 8, 8), torch.zeros(3, dtype=torch.int64), r"shape \[3, 1, 8, 8\].*\[4, 1, 8, 8\]"),
        (
            torch.rand(4, 1, 8, 8, dtype=torch.float64),
            torch.zeros(4, dtype=torch.int64),
            "dtype torch.float64",
        ),
        (torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.float32), "labels 'label' has dtype"),
    ],
)
def test_wrong_batch_is_refused(mlp: ExportedCase, inputs, labels, message: str) -> None:
    session = open_session(mlp.bundle)
    with pytest.raises(InputError, match=message):
        session.train_step([(inputs, labels)])
    with pytest.raises(InputError):
        session.predict(torch.rand(2, 8, 8))


def test_resume_continues_exactly(mlp: ExportedCase, tmp_path: Path) -> None:
    straight = train(mlp.bundle, TrainConfig(steps=10, checkpoint=tmp_path / "a.safetensors", progress=False))
    train(mlp.bundle, TrainConfig(steps=6, checkpoint=tmp_path / "b.safetensors", progress=False))
    resumed = train(
        mlp.bundle, TrainConfig(steps=4, checkpoint=tmp_path / "b.safetensors", resume=True, progress=False)
    )
    assert resumed.total_steps == 10
    assert resumed.losses == pytest.approx(straight.losses[6:], rel=1e-6)
    for name, value in load_file(tmp_path / "a.safetensors").items():
        torch.testing.assert_close(value, load_file(tmp_path / "b.safetensors")[name], rtol=0, atol=1e-7)


def test_crash_mid_save_keeps_previous_checkpoint(mlp: ExportedCase, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "ckpt.safetensors"
    train(mlp.bundle, TrainConfig(steps=3, checkpoint=path, progress=False))
    before = path.read_bytes()

    def crash(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="No space left"):
        train(mlp.bundle, TrainConfig(steps=3, checkpoint=path, resume=True, progress=False))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "temporary file left behind"
    resumed = train(mlp.bundle, TrainConfig(steps=2, checkpoint=path, resume=True, progress=False))
    assert resumed.total_steps == 5


def test_evaluation_can_be_limited_to_the_first_samples(mlp: ExportedCase, tmp_path: Path) -> None:
    config = TrainConfig(steps=1, eval_samples=3, checkpoint=tmp_path / "c.safetensors", progress=False)
    limited = eval_dataset(mlp.bundle, config)
    whole = eval_dataset(mlp.bundle, TrainConfig())
    assert limited is not None and whole is not None and len(limited) == 3 < len(whole)
    assert torch.equal(limited.images, whole.images[:3])
    result = train(mlp.bundle, config)
    assert result.accuracy_before is not None and round(result.accuracy_before * 3, 6) in (0, 1, 2, 3)
    with pytest.raises(ValueError, match="eval_samples must be at least 1"):
        TrainConfig(eval_samples=0)
    with pytest.raises(ValueError, match="eval_split is empty"):
        TrainConfig(eval_split=None, eval_samples=4)


def test_checkpoint_of_another_bundle_is_refused(mlp: ExportedCase, bundle_copy: Path, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    train(mlp.bundle, TrainConfig(steps=1, checkpoint=path, progress=False))
    manifest = bundle_copy / MANIFEST_NAME
    manifest.write_text(manifest.read_text().replace('"lr": 0.05', '"lr": 0.04'))
    with pytest.raises(CheckpointError, match="another bundle"):
        train(load_bundle(bundle_copy), TrainConfig(steps=1, checkpoint=path, resume=True, progress=False))
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        train(mlp.bundle, TrainConfig(steps=1, checkpoint=path, resume=True, progress=False))


def test_trained_weights_load_back_into_pytorch(mlp: ExportedCase, bundle_copy: Path) -> None:
    bundle = load_bundle(bundle_copy)
    session = open_session(bundle)
    result = train(bundle, TrainConfig(steps=15, progress=False), session=session)
    assert Path(result.checkpoint) == default_checkpoint_path(bundle)
    model = load_trained_weights(mlp.fresh_eager(), bundle)
    x, _ = mlp.batch(seed=11)
    torch.testing.assert_close(model(x).detach(), session.predict(x), rtol=1e-4, atol=1e-5)
