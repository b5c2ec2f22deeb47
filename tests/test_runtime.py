"""The native training runtime (runtime/): built by runtime/setup.sh, run as memwall-run against the real
ExecuTorch C++ runtime, compared with the Python host runner (sdk_tools/runner) on the same bundles and data."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from exporters import FreezeConfig, ModelSpec, OptimizerConfig, apply_freeze, export_bundle
from exporters.bundle import Bundle, BundleError, load_bundle
from exporters.techniques.fused_update import FusedUpdateConfig
from exporters.techniques.int8_weights import Int8WeightsConfig, quantize_frozen_weights
from exporters.techniques.lora import LoraConfig, apply_lora
from exporters.techniques.recompute import RecomputeConfig
from exporters.techniques.speed_routes import SpeedConfig
from sdk_tools.data.digits import DigitsSplit
from sdk_tools.lab.schema import validate_report
from sdk_tools.runner.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from sdk_tools.runner.train import evaluate, open_session
from tests.conftest import (
    NATIVE_BUILD,
    REFERENCE_CASES,
    copy_bundle,
    export_case,
    make_model,
    refusal,
    run_c_smoke,
    run_native,
)

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
STEPS = 20
SAMPLES = 40  # 10 batches of 4: the stream wraps into a second epoch within 20 steps
# SmallCNN at 8x8 has nothing whose recomputation lowers the arena ("method unchanged"); at 16x16 the sqrt cuts do.
RECOMPUTE_SHAPE = (1, 16, 16)


def _mlp(root: Path, tag: str, optimizer: OptimizerConfig, **options) -> Bundle:
    kwargs, shape = REFERENCE_CASES["mlp"]
    if "fused_update" in options:
        return export_bundle(
            make_model("mlp"),
            root / f"mlp{tag}",
            sample_shape=shape,
            batch_size=4,
            optimizer=optimizer,
            model_spec=ModelSpec("mlp", kwargs),
            **options,
        )
    return export_case(root, "mlp", optimizer, tag=tag, **options).bundle


def _freeze_first_layer(model: torch.nn.Module) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith("features.1."))


# eps well above float noise: AdamW divides by sqrt(v) + eps, which magnifies last-bit gradient differences.
ADAMW = OptimizerConfig(kind="adamw", lr=0.01, weight_decay=0.01, betas=(0.8, 0.99), eps=1e-3)
SGD_NESTEROV = OptimizerConfig(kind="sgd", lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Bundle]:
    """SGD+nesterov+weight decay with a frozen layer, AdamW over 2 micro-batches, AdamW fused into the program, an
    MLP with LoRA adapters and an int8 frozen layer, a SmallCNN whose frozen convolutions run on the XNNPACK
    delegate (speed routes), an MLP that trains its biases only (TinyTL), and a SmallCNN whose forward activations
    backward recomputes."""
    root = tmp_path_factory.mktemp("native-bundles")
    bias_only = FreezeConfig(bias_only=True)
    recompute = RecomputeConfig("sqrt")
    recomputed = export_bundle(
        make_model("small_cnn"),
        root / "cnn-recompute",
        sample_shape=RECOMPUTE_SHAPE,
        batch_size=4,
        optimizer=SGD_NESTEROV,
        model_spec=ModelSpec("small_cnn", {}),
        recompute=recompute,
    )
    assert recomputed.manifest.techniques == [{"name": "recompute", "config": recompute.to_json()}]
    lora = LoraConfig(rank=2, targets=("features.3",), trainable=("classifier.*",))
    int8 = Int8WeightsConfig(targets=("features.1",))
    adapted = quantize_frozen_weights(apply_lora(make_model("mlp"), lora), int8)
    lora_int8 = export_bundle(
        adapted,
        root / "mlp-lora-int8",
        sample_shape=REFERENCE_CASES["mlp"][1],
        batch_size=4,
        optimizer=SGD_NESTEROV,
        model_spec=ModelSpec("mlp", {}),
        techniques=[{"name": "lora", "config": lora.to_json()}, {"name": "int8_weights", "config": int8.to_json()}],
    )
    cnn = make_model("small_cnn")
    for name, p in cnn.named_parameters():
        p.requires_grad_(name.startswith("classifier."))
    xnnpack = export_bundle(
        cnn,
        root / "cnn-xnnpack",
        sample_shape=REFERENCE_CASES["small_cnn"][1],
        batch_size=4,
        optimizer=SGD_NESTEROV,
        model_spec=ModelSpec("small_cnn", {}),
        speed=SpeedConfig(),
    )
    assert xnnpack.manifest.backend_options["runtime"]["backends"] == ["XnnpackBackend"]
    return {
        "sgd": _mlp(root, "-sgd", SGD_NESTEROV, configure=_freeze_first_layer),
        "micro": _mlp(root, "-micro", ADAMW, batch=2, micro_batches=2),
        "fused": _mlp(root, "-fused", ADAMW, fused_update=FusedUpdateConfig()),
        "xnnpack": xnnpack,
        "lora-int8": lora_int8,
        "bias-only": _mlp(root, "-bias", ADAMW, configure=lambda m: apply_freeze(m, bias_only)),
        "recompute": recomputed,
    }


def write_data(path: Path, sample_shape: tuple[int, ...]) -> Path:
    gen = torch.Generator().manual_seed(7)
    x = torch.rand((SAMPLES, *sample_shape), generator=gen)
    y = torch.randint(0, 10, (SAMPLES,), generator=gen)
    np.savez(path, x=x.numpy(), y=y.numpy())
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("native-data") / "data.npz", REFERENCE_CASES["mlp"][1])


def python_run(
    bundle_dir: Path, data: Path, steps: int, *, resume: bool = False, accuracy: list[float] | None = None
) -> tuple[list[float], dict]:
    """The host runner's session fed memwall-run's batch stream (file order); saves the checkpoint as train() does.
    ``accuracy`` receives the predict method's accuracy on ``data`` before and after training."""
    bundle = load_bundle(bundle_dir)
    session = open_session(bundle)
    manifest = bundle.manifest
    arrays = np.load(data)
    x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
    size, micro = manifest.batch_size, manifest.training["micro_batches"]
    per_epoch = len(x) // size
    path = bundle_dir / "checkpoint.safetensors"
    position = 0
    if resume:
        ckpt = load_checkpoint(path, bundle)
        session.load_state_tensors(ckpt.steps, ckpt.tensors)
        position = ckpt.data_position
    if accuracy is not None:
        accuracy.append(evaluate(session, DigitsSplit(x, y)))
    losses = []
    for _ in range(steps):
        batches = []
        for _ in range(micro):
            first = (position % per_epoch) * size
            batches.append((x[first : first + size], y[first : first + size]))
            position += 1
        loss, _ = session.train_step(batches)
        losses.append(loss)
    step_count, tensors = session.state_tensors()
    save_checkpoint(path, Checkpoint(step_count, position, tensors, bundle.manifest_sha256))
    if accuracy is not None:
        accuracy.append(evaluate(session, DigitsSplit(x, y)))
    return losses, {k: v.clone() for k, v in tensors.items()}


def assert_same_state(native: dict[str, torch.Tensor], python: dict[str, torch.Tensor], atol: float) -> None:
    assert sorted(native) == sorted(python)
    for name, value in python.items():
        torch.testing.assert_close(native[name], value, rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("kind", ["sgd", "micro", "fused", "xnnpack", "lora-int8", "bias-only", "recompute"])
def test_native_trains_like_the_python_runner(
    kind: str, native: Path, bundles: dict[str, Bundle], data: Path, tmp_path: Path
) -> None:
    if bundles[kind].manifest.sample_shape != REFERENCE_CASES["mlp"][1]:
        data = write_data(tmp_path / "data.npz", bundles[kind].manifest.sample_shape)
    native_dir = copy_bundle(bundles[kind], tmp_path / "native")
    python_dir = copy_bundle(bundles[kind], tmp_path / "python")
    native_losses, out = run_native(native, native_dir, data, STEPS, "--eval-data", str(data))
    python_accuracy: list[float] = []
    python_losses, python_state = python_run(python_dir, data, STEPS, accuracy=python_accuracy)
    # Predict with the live parameters: before and after training, over every sample (the last batch padded).
    native_accuracy = [float(line.split()[1]) for line in out.splitlines() if line.startswith("accuracy_")]
    assert native_accuracy == pytest.approx(python_accuracy, abs=1e-9)
    assert len(native_losses) == STEPS
    assert len(set(native_losses)) > 1  # the weights change step to step (random labels: no trend to assert)
    np.testing.assert_allclose(native_losses, python_losses, rtol=1e-6, atol=1e-6)
    native_state = load_file(native_dir / "checkpoint.safetensors")
    # SGD is PyTorch's rule bit for bit; AdamW's addcmul is not fused in torch's vector path (16+ elements).
    exact = kind in ("sgd", "xnnpack", "lora-int8", "recompute")
    assert_same_state(native_state, python_state, atol=0 if exact else 1e-6)
    with safe_open(str(native_dir / "checkpoint.safetensors"), framework="pt") as fh:
        metadata = fh.metadata()
    assert metadata == {
        "format": "memwall.checkpoint",
        "version": "1",
        "steps": str(STEPS),
        "data_position": str(STEPS * bundles[kind].manifest.training["micro_batches"]),
        "manifest_sha256": bundles[kind].manifest_sha256,
    }


@pytest.mark.parametrize("kind", ["micro", "fused"])
def test_checkpoints_move_between_native_and_python(
    kind: str, native: Path, bundles: dict[str, Bundle], data: Path, tmp_path: Path
) -> None:
    half = STEPS // 2
    straight = copy_bundle(bundles[kind], tmp_path / "straight")
    run_native(native, straight, data, STEPS)
    expected = load_file(straight / "checkpoint.safetensors")

    native_first = copy_bundle(bundles[kind], tmp_path / "native-first")
    run_native(native, native_first, data, half)
    _, resumed_in_python = python_run(native_first, data, half, resume=True)
    assert_same_state(resumed_in_python, expected, atol=1e-6)
    assert load_checkpoint(native_first / "checkpoint.safetensors", load_bundle(native_first)).steps == STEPS

    python_first = copy_bundle(bundles[kind], tmp_path / "python-first")
    python_run(python_first, data, half)
    run_native(native, python_first, data, half, "--resume")
    assert_same_state(load_file(python_first / "checkpoint.safetensors"), expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["micro", "fused"])
def test_the_c_api_from_plain_c(kind: str, native: Path, bundles: dict[str, Bundle], tmp_path: Path) -> None:
    """memwall.h from plain C99 on accumulating and fused-update bundles."""
    run_c_smoke(copy_bundle(bundles[kind], tmp_path), tmp_path / "c.safetensors")
    assert load_checkpoint(tmp_path / "c.safetensors", bundles[kind]).data_position == 7


def _corrupt_program(d: Path) -> None:
    path = d / "model.pte"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _truncate_program(d: Path) -> None:
    path = d / "model.pte"
    path.write_bytes(path.read_bytes()[:-10])


def _link_program(d: Path) -> None:
    outside = d.parent / "elsewhere.pte"
    (d / "model.pte").rename(outside)
    (d / "model.pte").symlink_to(outside)


def _edit_manifest(change) -> object:
    def edit(d: Path) -> None:
        manifest = json.loads((d / "manifest.json").read_text())
        change(manifest)
        (d / "manifest.json").write_text(json.dumps(manifest))

    return edit


HOSTILE = {
    "bad hash": (_corrupt_program, "has sha256"),
    "truncated file": (_truncate_program, "bytes, the manifest says"),
    "missing file": (lambda d: (d / "model.pte").unlink(), "is missing from"),
    "bad schema version": (_edit_manifest(lambda m: m.update(schema_version=2)), "unsupported schema_version 2"),
    "not JSON": (lambda d: (d / "manifest.json").write_text("{"), "is not valid JSON"),
    "no manifest": (lambda d: (d / "manifest.json").unlink(), "has no manifest.json"),
    "path outside": (
        _edit_manifest(lambda m: m["files"]["program"].update(path="../model.pte")),
        "invalid manifest at files/program/path",
    ),
    "missing field": (_edit_manifest(lambda m: m.pop("methods")), "'methods' is a required property"),
    "duplicate key": (
        lambda d: (d / "manifest.json").write_text('{"name": "a", ' + (d / "manifest.json").read_text()[1:]),
        "appears twice in one object",
    ),
    "symbolic link": (_link_program, "is a symbolic link or lies outside"),
    "inconsistent batch": (
        _edit_manifest(lambda m: m["training"].update(batch_size=999)),
        "training.batch_size is not the input batch times micro_batches",
    ),
}


def test_onnxruntime_bundles_are_refused_with_the_reason(native: Path, data: Path, tmp_path: Path) -> None:
    bundle = export_bundle(
        torch.nn.Linear(4, 2), tmp_path / "ort", sample_shape=(4,), batch_size=2, backend="onnxruntime"
    )
    assert "this native runtime runs ExecuTorch bundles only" in refusal(native, bundle.directory, data)


def test_a_kill_during_checkpointing_keeps_a_valid_checkpoint(
    native: Path, bundles: dict[str, Bundle], data: Path, tmp_path: Path
) -> None:
    """SIGKILL at random moments of a run that saves after every step: the checkpoint always loads."""
    bundle_dir = copy_bundle(bundles["micro"], tmp_path)
    path = bundle_dir / "checkpoint.safetensors"
    run_native(native, bundle_dir, data, 1)
    bundle = load_bundle(bundle_dir)
    steps = load_checkpoint(path, bundle).steps
    rng = np.random.default_rng(0)
    for _ in range(12):
        proc = subprocess.Popen(
            [
                str(native),
                str(bundle_dir),
                "--data",
                str(data),
                "--steps",
                "100000",
                "--resume",
                "--checkpoint-every",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(float(rng.uniform(0.05, 0.4)))
        proc.kill()
        proc.wait()
        ckpt = load_checkpoint(path, bundle)  # never torn
        assert ckpt.steps >= steps
        assert ckpt.data_position == 2 * ckpt.steps
        steps = ckpt.steps
    assert steps > 1


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_bundles_are_refused_in_one_line(
    case: str, native: Path, bundles: dict[str, Bundle], data: Path, tmp_path: Path
) -> None:
    damage, expected = HOSTILE[case]
    bundle_dir = copy_bundle(bundles["sgd"], tmp_path)
    damage(bundle_dir)
    with pytest.raises(BundleError):
        load_bundle(bundle_dir)  # the Python loader refuses it too
    assert expected in refusal(native, bundle_dir, data)


def test_golden_vectors_optimizers_accumulation_and_checkpoint(native: Path, tmp_path: Path) -> None:
    checkpoint = json.loads((GOLDEN / "checkpoint.json").read_text())
    written = tmp_path / "checkpoint.safetensors"
    command = [str(NATIVE_BUILD / "memwall-golden"), str(GOLDEN / "optimizer.json"), str(GOLDEN / "accumulation.json")]
    sha = checkpoint["metadata"]["manifest_sha256"]
    out = json.loads(subprocess.check_output([*command, str(GOLDEN / "checkpoint.safetensors"), sha, str(written)]))
    golden = json.loads((GOLDEN / "optimizer.json").read_text())
    tol = golden["tolerance"]
    for case in golden["cases"]:
        for expected, got in zip(case["steps"], out["optimizer"][case["name"]], strict=True):
            for section in ("params", "state"):
                for name, tensor in expected[section].items():
                    if case["optimizer"]["kind"] == "sgd":
                        assert got[section][name] == tensor["values"], (case["name"], name)
                    else:  # bit for bit on this machine too; the tolerance covers another CPU's sqrt and fma paths
                        np.testing.assert_allclose(
                            got[section][name], tensor["values"], rtol=tol["rel"], atol=tol["abs"]
                        )
    acc = json.loads((GOLDEN / "accumulation.json").read_text())
    for section in ("accumulated_grads", "params_after"):
        for name, tensor in acc[section].items():
            assert out["accumulation"][section][name] == tensor["values"], (section, name)
    assert out["accumulation"]["loss"] == pytest.approx(acc["loss"], rel=1e-12)
    # The Python runner's checkpoint read natively, and written back natively byte for byte.
    read = out["checkpoint"]
    assert (str(read["steps"]), str(read["data_position"])) == (
        checkpoint["metadata"]["steps"],
        checkpoint["metadata"]["data_position"],
    )
    assert {k: v["values"] for k, v in read["tensors"].items()} == {
        k: v["values"] for k, v in checkpoint["tensors"].items()
    }
    assert written.read_bytes() == (GOLDEN / "checkpoint.safetensors").read_bytes()


def test_report_validates_against_the_lab_schema(
    native: Path, bundles: dict[str, Bundle], data: Path, tmp_path: Path
) -> None:
    bundle_dir = copy_bundle(bundles["micro"], tmp_path)
    report_path = tmp_path / "report.json"
    losses, _ = run_native(native, bundle_dir, data, 3, "--report", str(report_path))
    report = validate_report(json.loads(report_path.read_text()))
    assert report["status"] == "ok"
    assert report["bundle"]["manifest_sha256"] == bundles["micro"].manifest_sha256
    assert report["run"]["loss_curve"] == pytest.approx(losses, rel=1e-6)
    training = bundles["micro"].manifest.training
    assert (report["run"]["micro_batches"], report["run"]["batch_size"]) == (2, training["batch_size"])
    memory = report["memory"]
    assert memory["peak_delta_bytes"] == memory["peak_rss_bytes"] - memory["baseline_bytes"] > 0


def test_bad_data_and_checkpoints_are_refused(
    native: Path, bundles: dict[str, Bundle], data: Path, tmp_path: Path
) -> None:
    bundle_dir = copy_bundle(bundles["sgd"], tmp_path)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((8, 3, 8, 8), np.float32), y=np.zeros(8, np.int64))
    assert "samples have shape (3, 8, 8), the bundle expects (1, 8, 8)" in refusal(native, bundle_dir, wrong)
    done = subprocess.run(
        [str(native), str(bundle_dir), "--data", str(data), "--steps", "1", "--resume"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "no checkpoint at" in done.stderr and len(done.stderr.splitlines()) == 1
    other = copy_bundle(bundles["micro"], tmp_path / "other")
    run_native(native, other, data, 1)
    done = subprocess.run(
        [
            str(native),
            str(bundle_dir),
            "--data",
            str(data),
            "--steps",
            "1",
            "--resume",
            "--checkpoint",
            str(other / "checkpoint.safetensors"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "was saved for another bundle" in done.stderr
    saved = other / "checkpoint.safetensors"
    raw = saved.read_bytes()
    header = raw[8 : 8 + int.from_bytes(raw[:8], "little")]
    hostile = {
        "truncated": raw[:-5],
        "header length past the end": (1 << 40).to_bytes(8, "little") + raw[8:],
        "format of another type": raw[:8]
        + header.replace(b'"memwall.checkpoint"', b'["memwall.x"]       ')
        + raw[8 + len(header) :],
    }
    for case, content in hostile.items():
        saved.write_bytes(content)
        done = subprocess.run(
            [str(native), str(other), "--data", str(data), "--steps", "1", "--resume"], capture_output=True, text=True
        )
        assert done.returncode == 2, (case, done.stderr)
        assert len(done.stderr.splitlines()) == 1 and ("is corrupt" in done.stderr or "not a memwall" in done.stderr)


def _parent(manifest: dict, path: str) -> tuple[dict | list, str | int]:
    """The container holding the value at a "/"-separated path (list indices as numbers), and its key there."""
    *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
    target = manifest
    for key in parents:
        target = target[key]
    return target, last


def _set(path: str, value: object) -> Callable[[dict], None]:
    """A manifest edit: the value at ``path`` set to ``value``."""

    def change(manifest: dict) -> None:
        target, key = _parent(manifest, path)
        target[key] = value

    return change


def _drop(path: str) -> Callable[[dict], None]:
    def change(manifest: dict) -> None:
        target, key = _parent(manifest, path)
        del target[key]

    return change


def _rename_role(manifest: dict) -> None:
    manifest["files"]["weights"] = manifest["files"].pop("program")


# Manifests the Python loader refuses (schema, consistency), one problem each. The schema is checked natively from
# the same file (runtime/src/manifest_schema.cpp), so those refusals read the same, word for word.
BAD_MANIFESTS: dict[str, Callable[[dict], None]] = {
    "an unknown top-level key": _set("extra", 1),
    "an empty name": _set("name", ""),
    "a number as name": _set("name", 5),
    "an unknown backend": _set("backend", "tflite"),
    "created_by not a string": _set("created_by", 3),
    "schema version 1.5": _set("schema_version", 1.5),
    "no files": _set("files", {}),
    "an unknown key in a file entry": _set("files/program/extra", 1),
    "a file entry without sha256": _drop("files/program/sha256"),
    "an uppercase sha256": lambda m: m["files"]["program"].update(sha256=m["files"]["program"]["sha256"].upper()),
    "negative bytes": _set("files/program/bytes", -1),
    "an absolute path": _set("files/program/path", "/etc/passwd"),
    "a backslash path": _set("files/program/path", "a\\model.pte"),
    "a dot-dot path": _set("files/program/path", "a/../model.pte"),
    "an empty path": _set("files/program/path", ""),
    "no program role": _rename_role,
    "no inputs": _set("inputs", []),
    "an unknown key in an input": _set("inputs/0/extra", 1),
    "a zero dimension": _set("inputs/0/shape", [0, 1, 8, 8]),
    "a fractional dimension": _set("inputs/0/shape", [4.5, 1, 8, 8]),
    "an unknown dtype": _set("inputs/0/dtype", "complex64"),
    "an empty input name": _set("inputs/0/name", ""),
    "labels of another batch": _set("labels/shape", [3]),
    "float class indices": _set("labels/dtype", "float32"),
    "no outputs": _set("outputs", []),
    "an output without dtype": _drop("outputs/1/dtype"),
    "no classes": _set("classes", []),
    "numbers as classes": _set("classes", [1, 2]),
    "an empty loss": _set("loss", ""),
    "a wrong numel": _set("trainable/0/numel", 7),
    "a parameter twice": lambda m: m["trainable"].append(m["trainable"][0]),
    "an unknown key in a parameter": _set("trainable/0/extra", 1),
    "a negative parameter dimension": _set("trainable/0/shape", [-1, 64]),
    "a negative frozen count": _set("frozen_parameter_count", -1),
    "an unknown optimizer": _set("optimizer/kind", "adam"),
    "a zero learning rate": _set("optimizer/lr", 0),
    "momentum 1": _set("optimizer/momentum", 1.0),
    "negative momentum": _set("optimizer/momentum", -0.1),
    "negative dampening": _set("optimizer/dampening", -1),
    "negative weight decay": _set("optimizer/weight_decay", -1),
    "zero eps": _set("optimizer/eps", 0),
    "one beta": _set("optimizer/betas", [0.9]),
    "nesterov as a string": _set("optimizer/nesterov", "yes"),
    "an unknown optimizer setting": _set("optimizer/foo", 1),
    "nesterov without momentum": lambda m: m["optimizer"].update(nesterov=True, momentum=0.0),
    "no learning rate": _drop("optimizer/lr"),
    "a zero batch size": _set("training/batch_size", 0),
    "micro-batches as a string": _set("training/micro_batches", "2"),
    "no micro-batches": _drop("training/micro_batches"),
    "no predict method": _drop("methods/predict"),
    "an empty method name": _set("methods/train/name", ""),
    "a number as method input": _set("methods/train/inputs", [1]),
    "no planned arena": _drop("memory/planned_arena_bytes"),
    "an unknown memory figure": _set("memory/extra_bytes", 1),
    "negative program bytes": _set("memory/program_bytes", -5),
    "memory notes not a string": _set("memory/notes", 5),
    "a runtime name that is no identifier": _set(
        "memory/by_runtime/Phone-1", {"runtime_overhead_bytes": 1, "predicted_peak_bytes": 2}
    ),
    "an unknown figure of a runtime": _set("memory/by_runtime/python_host/extra_bytes", 1),
    "a host prediction unlike the top-level one": lambda m: m["memory"]["by_runtime"]["python_host"].update(
        predicted_peak_bytes=m["memory"]["predicted_peak_bytes"] + 1
    ),
    "a native prediction off its components": lambda m: m["memory"]["by_runtime"]["memwall_native"].update(
        runtime_overhead_bytes=m["memory"]["by_runtime"]["memwall_native"]["runtime_overhead_bytes"] + 1
    ),
    "a number as model spec": _set("model/spec", 5),
    "model kwargs a list": _set("model/kwargs", []),
    "negative model parameters": _set("model/parameters", -1),
    "a technique without config": _set("techniques", [{"name": "x"}]),
    "a number as technique": _set("techniques", [5]),
    "backend options a list": _set("backend_options", []),
    "verified as a string": _set("verification", {"verified": "yes"}),
    "verification without verified": _set("verification", {}),
    "a negative tolerance": _set("verification", {"verified": True, "tolerance": {"abs": -1, "rel": 0}}),
    "verification a number": _set("verification", 5),
}


def _write_manifest_text(text: bytes) -> Callable[[Path], None]:
    return lambda d: (d / "manifest.json").write_bytes(text)


def _manifest_symlink(d: Path) -> None:
    (d / "manifest.json").rename(d / "real.json")
    (d / "manifest.json").symlink_to(d / "real.json")


def _program_directory(d: Path) -> None:
    (d / "model.pte").unlink()
    (d / "model.pte").mkdir()


def _padded(d: Path) -> None:
    text = (d / "manifest.json").read_bytes()
    (d / "manifest.json").write_bytes(text[:-2] + b" " * (4 << 20) + text[-2:])


# Bundles refused before or after the schema: the file itself, the JSON, the directory.
BAD_FILES: dict[str, Callable[[Path], None]] = {
    "NaN in the manifest": lambda d: (d / "manifest.json").write_text(
        (d / "manifest.json").read_text().replace('"lr": 0.05', '"lr": NaN')
    ),
    "a manifest that is a list": _write_manifest_text(b"[]"),
    "a manifest not UTF-8": lambda d: (d / "manifest.json").write_bytes(
        (d / "manifest.json").read_bytes().replace(b'"loss": "', b'"loss": "\xff')
    ),
    "a manifest that is a symbolic link": _manifest_symlink,
    "a manifest over 4 MiB": _padded,
    "a program that is a directory": _program_directory,
    "nesting deeper than JSON parsers go": lambda d: (d / "manifest.json").write_text(
        (d / "manifest.json").read_text().replace('"kwargs": {}', '"kwargs": ' + '{"a": ' * 5000 + "{}" + "}" * 5000)
    ),
}


# Refused by both in one line, worded apart: the JSON parsers' own details, and Python's TypeError text.
WORDED_APART = {
    "an unknown optimizer setting",
    "NaN in the manifest",
    "a manifest that is a list",
    "a manifest not UTF-8",
}


def test_the_native_reader_refuses_what_the_python_loader_refuses(
    native: Path, bundles: dict[str, Bundle], data: Path, tmp_path: Path
) -> None:
    """Each case: the Python loader refuses it, memwall-run refuses it in one line (exit 2) with nothing written,
    and but for WORDED_APART the two lines are the same, word for word."""
    cases: list[tuple[str, Callable[[Path], None]]] = [
        (name, _edit_manifest(change)) for name, change in BAD_MANIFESTS.items()
    ] + list(BAD_FILES.items())
    mismatched = []
    for index, (case, damage) in enumerate(cases):
        bundle_dir = copy_bundle(bundles["sgd"], tmp_path / str(index))
        damage(bundle_dir)
        with pytest.raises(BundleError) as refused:
            load_bundle(bundle_dir)
        line = refusal(native, bundle_dir, data)
        if case not in WORDED_APART and line != f"memwall-run: error: {refused.value}":
            mismatched.append((case, str(refused.value), line))
    assert not mismatched, mismatched
    file_bundle = tmp_path / "a-file"
    file_bundle.write_text("not a bundle")
    assert "is not a directory" in refusal(native, file_bundle, data)
    bundle_dir = copy_bundle(bundles["sgd"], tmp_path / "unbatched")
    _edit_manifest(_set("inputs/0/shape", []))(bundle_dir)
    with pytest.raises(BundleError, match="inputs\\[0\\] has no batch dimension"):
        load_bundle(bundle_dir)
    assert "inputs[0] has no batch dimension" in refusal(native, bundle_dir, data)


def test_optimizer_settings_left_out_take_the_defaults(
    native: Path, bundles: dict[str, Bundle], data: Path, tmp_path: Path
) -> None:
    """The schema requires only kind and lr; both runners fill the rest from OptimizerConfig's defaults (plain SGD)."""
    trimmed = {"kind": "sgd", "lr": 0.05}
    runs = []
    for name in ("native", "python"):
        bundle_dir = copy_bundle(bundles["sgd"], tmp_path / name)
        _edit_manifest(_set("optimizer", trimmed))(bundle_dir)
        runs.append(bundle_dir)
    native_losses, _ = run_native(native, runs[0], data, 3)
    python_losses, python_state = python_run(runs[1], data, 3)
    np.testing.assert_array_equal(np.float32(native_losses), np.float32(python_losses))  # printed with 9 digits
    assert_same_state(load_file(runs[0] / "checkpoint.safetensors"), python_state, atol=0)
