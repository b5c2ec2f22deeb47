"""The command line, end to end, as a user runs it (real subprocesses, real runtime)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from exporters import load_bundle
from sdk_tools.data import load_digits_split
from sdk_tools.models import build_model
from sdk_tools.runner import open_session
from sdk_tools.runner.checkpoint import default_checkpoint_path, load_checkpoint


def memwall(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "sdk_tools.cli", *args], capture_output=True, text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "mlp-bundle"
    proc = memwall(
        "export", "--model", "mlp", "--input-shape", "1,8,8", "--batch", "16", "--optimizer", "sgd",
        "--lr", "0.05", "--momentum", "0.9", "--out", str(out), "--json",
    )  # fmt: skip
    assert json.loads(proc.stdout)["manifest"]["backend"] == "executorch"
    return out


def test_inspect_human_and_json(exported: Path) -> None:
    text = memwall("inspect", str(exported)).stdout
    assert "planned arena" in text and "model.pte" in text
    data = json.loads(memwall("inspect", str(exported), "--json").stdout)
    assert data["manifest"]["training"]["batch_size"] == 16
    assert len(data["manifest_sha256"]) == 64


def test_train_resume_and_pull(exported: Path, tmp_path: Path) -> None:
    first = json.loads(memwall("train", str(exported), "--steps", "40", "--json").stdout)
    assert first["total_steps"] == 40
    assert first["accuracy_after"] > first["accuracy_before"] + 0.15  # learns from scratch within 40 steps
    second = json.loads(memwall("train", str(exported), "--steps", "10", "--resume", "--json").stdout)
    assert second["total_steps"] == 50
    out = tmp_path / "trained.pt"
    summary = json.loads(memwall("pull", str(exported), "--out", str(out), "--json").stdout)
    assert summary["steps"] == 50
    model = build_model("mlp")
    missing, unexpected = model.load_state_dict(torch.load(out), strict=False)
    assert not missing and not unexpected


def test_measure_reports_prediction_and_peak(exported: Path) -> None:
    proc = memwall("measure", str(exported), "--steps", "5", "--json")
    data = json.loads(proc.stdout)
    assert data["peak_delta_bytes"] > 0
    # The user's terminal: no library chatter from the measuring child (it imports torchao, whose CUDA kernels'
    # load failures and torch's pytree notice were printed in `memwall demo`).
    chatter = ("Failed to load", "_pytree", "Warning")
    assert not [line for line in proc.stderr.splitlines() if any(c in line for c in chatter)], proc.stderr[-2000:]
    assert data["predicted_peak_bytes"] > 0
    assert data["train"]["steps_run"] == 5


def test_errors_are_clear_and_exit_nonzero(exported: Path, tmp_path: Path) -> None:
    proc = memwall("inspect", str(tmp_path), ok=False)
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr and "Traceback" not in proc.stderr
    proc = memwall("export", "--model", "mlp", "--input-shape", "1,8,8", "--out", str(exported), ok=False)
    assert proc.returncode == 2 and "--force" in proc.stderr
    proc = memwall("train", str(exported), "--data", "missing.npz", ok=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = memwall("export", "--model", "mlp", "--input-shape", "a,b", "--out", str(tmp_path / "x"), ok=False)
    assert proc.returncode == 2 and "comma-separated integers" in proc.stderr


def test_onnxruntime_bundle_trains_and_exports_an_inference_model(tmp_path: Path) -> None:
    bundle_dir = tmp_path / "ort"
    memwall("export", "--model", "mlp", "--input-shape", "1,8,8", "--batch", "16", "--backend", "onnxruntime",
            "--optimizer", "adamw", "--lr", "0.003", "--out", str(bundle_dir))  # fmt: skip
    result = json.loads(memwall("train", str(bundle_dir), "--steps", "30", "--json").stdout)
    assert result["accuracy_after"] > result["accuracy_before"] + 0.15
    onnx_path = tmp_path / "inference.onnx"
    summary = json.loads(memwall("pull", str(bundle_dir), "--onnx", str(onnx_path), "--json").stdout)
    assert summary["steps"] == 30
    images = load_digits_split("personal_test").images[:16].numpy()
    inference = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (logits,) = inference.run(None, {inference.get_inputs()[0].name: images})
    # The exported model predicts what the trained bundle predicts.
    session = open_session(load_bundle(bundle_dir))
    ckpt = load_checkpoint(default_checkpoint_path(session.bundle), session.bundle)
    session.load_state_tensors(ckpt.steps, ckpt.tensors)
    np.testing.assert_allclose(logits, session.predict(torch.from_numpy(images)).numpy(), rtol=1e-5, atol=1e-5)


def test_lora_int8_bundle_pulls_a_merged_model_that_predicts_like_the_runtime(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = tmp_path / "base.pt"
    torch.save(build_model("mlp").state_dict(), base)
    out = tmp_path / "lora"
    memwall(
        "export", "--model", "mlp", "--weights", str(base), "--input-shape", "1,8,8", "--batch", "16",
        "--lr", "0.05", "--lora-rank", "2", "--lora-target", "features.3", "--trainable", "classifier.*",
        "--int8-frozen", "--int8-target", "features.1", "--out", str(out),
    )  # fmt: skip
    manifest = load_bundle(out).manifest
    # The CLI takes the ExecuTorch speed routes by default: the frozen int8 layer runs on XNNPACK.
    assert [t["name"] for t in manifest.techniques] == ["lora", "freeze", "int8_weights", "xnnpack_frozen"]
    assert {p.name.rsplit(".", 1)[-1] for p in manifest.trainable} == {"lora_A", "lora_B", "weight", "bias"}
    memwall("train", str(out), "--steps", "5", "--eval-split", "")
    proc = memwall("pull", str(out), "--out", str(tmp_path / "x.pt"), ok=False)
    assert proc.returncode == 2 and "--base" in proc.stderr
    memwall("pull", str(out), "--base", str(base), "--out", str(tmp_path / "merged.pt"))
    merged = build_model("mlp")
    merged.load_state_dict(torch.load(tmp_path / "merged.pt"))  # strict: the original architecture
    session = open_session(load_bundle(out))
    ckpt = load_checkpoint(default_checkpoint_path(session.bundle), session.bundle)
    session.load_state_tensors(ckpt.steps, ckpt.tensors)
    x = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), session.predict(x), rtol=1e-4, atol=1e-5)
