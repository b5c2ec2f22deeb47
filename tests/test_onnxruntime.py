"""ONNX Runtime backend against eager PyTorch and the ExecuTorch backend, in the real runtime (no mocks).

Each bundle is exported once per module. Reference models are small (MobileNetV2 at width 0.25, 32x32) so
the module runs in about a minute on two cores.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from exporters import BundleError, OptimizerConfig, export_bundle, load_bundle
from exporters.bundle import Bundle
from exporters.losses import encode_labels, resolve_loss
from exporters.techniques.onnx_recompute import SESSION_CONFIG
from exporters.techniques.recompute import RecomputeConfig
from exporters.training_graph import prepare_for_training_export, strip_prefix
from sdk_tools.models import MLP, MobileNetV2, SmallCNN
from sdk_tools.runner import InputError, TrainConfig, open_session, train
from sdk_tools.runner.onnxruntime_session import OnnxRuntimeSession, export_inference_model

BATCH = 4
MOMENTUM = OptimizerConfig(lr=0.05, momentum=0.9)
ADAMW = OptimizerConfig("adamw", lr=1e-3, weight_decay=0.01)


@dataclasses.dataclass(frozen=True)
class Reference:
    """A reference model with some parameters frozen, and the shape of one sample."""

    factory: Callable[[], nn.Module]
    sample_shape: tuple[int, ...]
    frozen_prefix: str

    def build(self) -> nn.Module:
        torch.manual_seed(0)
        model = self.factory()
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):  # non-trivial statistics, so freezing them matters
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        for name, param in model.named_parameters():
            param.requires_grad_(not name.startswith(self.frozen_prefix))
        return model


REFERENCES = {
    "mlp": Reference(MLP, (1, 8, 8), "features.1."),
    "small_cnn": Reference(SmallCNN, (1, 8, 8), "features.0."),
    "mobilenet_v2": Reference(lambda: MobileNetV2(width_mult=0.25), (3, 32, 32), "features.0."),
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    # Eager steps interleaved with ORT steps on two cores: torch's OpenMP workers busy-wait against ORT's
    # thread pool and a MobileNetV2 eager step takes seconds instead of ~40 ms (measured).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def custom_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A loss given as ``pkg.module:fn``: mean absolute error plus a smooth term."""
    return (logits - labels).abs().mean() + 0.1 * (logits * logits).mean()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Bundle]:
    """Export on first use, once per module: ``bundles(model, optimizer, **export_kwargs)``."""
    root = tmp_path_factory.mktemp("onnxruntime")
    cache: dict[str, Bundle] = {}

    def get(model: str, optimizer: OptimizerConfig = MOMENTUM, **kwargs: object) -> Bundle:
        key = repr((model, optimizer, sorted(kwargs.items())))
        if key not in cache:
            reference = REFERENCES[model]
            cache[key] = export_bundle(
                reference.build(),
                root / f"bundle{len(cache)}",
                sample_shape=reference.sample_shape,
                batch_size=kwargs.pop("batch_size", BATCH),  # type: ignore[arg-type]
                backend=kwargs.pop("backend", "onnxruntime"),  # type: ignore[arg-type]
                optimizer=optimizer,
                **kwargs,  # type: ignore[arg-type]
            )
        return cache[key]

    return get


def batches(bundle: Bundle, count: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    manifest = bundle.manifest
    gen = torch.Generator().manual_seed(seed)
    loss = resolve_loss(manifest.loss)
    classes = len(manifest.classes)
    return [
        (
            torch.rand(manifest.inputs[0].shape, generator=gen),
            encode_labels(loss, torch.randint(0, classes, (manifest.inputs[0].shape[0],), generator=gen), classes),
        )
        for _ in range(count)
    ]


def eager_model(model: str) -> nn.Module:
    return prepare_for_training_export(REFERENCES[model].build())


def eager_optimizer(model: nn.Module, config: OptimizerConfig) -> torch.optim.Optimizer:
    return config.torch_optimizer([p for p in model.parameters() if p.requires_grad])


def eager_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_name: str, inputs, labels) -> float:
    optimizer.zero_grad()
    loss = resolve_loss(loss_name).fn(model(inputs), labels)
    loss.backward()
    optimizer.step()
    return float(loss)


def assert_params_match(session: OnnxRuntimeSession, model: nn.Module, atol: float) -> None:
    trained = {strip_prefix(k): v for k, v in session.trained_parameters().items()}
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(trained[name], param.detach(), rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("model", list(REFERENCES))
def test_first_step_matches_eager(bundles, model: str) -> None:
    bundle = bundles(model)
    session = OnnxRuntimeSession(bundle)
    eager = eager_model(model)
    optimizer = eager_optimizer(eager, MOMENTUM)
    ((inputs, labels),) = batches(bundle, 1)
    loss, logits = session.train_step([(inputs, labels)])
    with torch.no_grad():
        torch.testing.assert_close(logits, eager(inputs), rtol=1e-5, atol=1e-6)
    eager_loss = eager_step(eager, optimizer, bundle.manifest.loss, inputs, labels)
    assert loss == pytest.approx(eager_loss, rel=1e-6, abs=1e-6)
    # The first momentum step is plain SGD: buffer = gradient.
    assert_params_match(session, eager, atol=1e-6)


@pytest.mark.parametrize("model", list(REFERENCES))
def test_twenty_momentum_steps_track_eager_and_frozen_stay(bundles, model: str) -> None:
    bundle = bundles(model)
    session = OnnxRuntimeSession(bundle)
    eager = eager_model(model)
    frozen_before = {n: p.detach().clone() for n, p in eager.named_parameters() if not p.requires_grad}
    optimizer = eager_optimizer(eager, MOMENTUM)
    for inputs, labels in batches(bundle, 20):
        loss, _ = session.train_step([(inputs, labels)])
        assert loss == pytest.approx(eager_step(eager, optimizer, bundle.manifest.loss, inputs, labels), abs=1e-4)
    assert_params_match(session, eager, atol=2e-5)
    assert frozen_before, "the reference freezes some parameters"
    assert not any(strip_prefix(p.name) in frozen_before for p in bundle.manifest.trainable)
    exported = session.state.parameters
    for name, before in frozen_before.items():
        assert torch.equal(torch.from_numpy(exported[f"model.{name}"].data), before), name


@pytest.mark.parametrize("model", list(REFERENCES))
def test_adamw_matches_torch_over_five_steps(bundles, model: str) -> None:
    bundle = bundles(model, ADAMW)
    assert bundle.manifest.backend_options["optimizer_runs_in"] == "onnxruntime"
    session = OnnxRuntimeSession(bundle)
    eager = eager_model(model)
    optimizer = eager_optimizer(eager, ADAMW)
    for inputs, labels in batches(bundle, 5):
        session.train_step([(inputs, labels)])
        eager_step(eager, optimizer, bundle.manifest.loss, inputs, labels)
    assert_params_match(session, eager, atol=5e-6)


def test_plain_sgd_runs_in_onnxruntime(bundles) -> None:
    config = OptimizerConfig(lr=0.1)
    bundle = bundles("mlp", config)
    assert bundle.manifest.backend_options["optimizer_runs_in"] == "onnxruntime"
    assert "optimizer_model" in bundle.manifest.files
    session = OnnxRuntimeSession(bundle)
    eager = eager_model("mlp")
    optimizer = eager_optimizer(eager, config)
    for inputs, labels in batches(bundle, 5):
        session.train_step([(inputs, labels)])
        eager_step(eager, optimizer, bundle.manifest.loss, inputs, labels)
    assert_params_match(session, eager, atol=1e-6)


@pytest.mark.parametrize("config", [ADAMW, MOMENTUM], ids=["adamw", "momentum"])
def test_micro_batches_equal_the_full_batch(bundles, config: OptimizerConfig) -> None:
    full = OnnxRuntimeSession(bundles("small_cnn", config, batch_size=8))
    micro = OnnxRuntimeSession(bundles("small_cnn", config, batch_size=8, micro_batches=4))
    assert micro.manifest.inputs[0].shape[0] == 2
    for inputs, labels in batches(full.bundle, 3):
        full_loss, full_logits = full.train_step([(inputs, labels)])
        parts = [(inputs[i : i + 2], labels[i : i + 2]) for i in range(0, 8, 2)]
        micro_loss, micro_logits = micro.train_step(parts)
        assert micro_loss == pytest.approx(full_loss, abs=1e-6)
        torch.testing.assert_close(micro_logits, full_logits, rtol=1e-5, atol=1e-6)
    for name, value in full.trained_parameters().items():
        torch.testing.assert_close(micro.trained_parameters()[name], value, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("config", [MOMENTUM, ADAMW], ids=["momentum", "adamw"])
def test_executorch_and_onnxruntime_end_with_the_same_weights(bundles, tmp_path: Path, config) -> None:
    results = {}
    for backend in ("executorch", "onnxruntime"):
        bundle = bundles("mlp", config, backend=backend)
        cfg = TrainConfig(steps=15, checkpoint=tmp_path / f"{backend}.safetensors", progress=False)
        session = open_session(bundle)
        result = train(bundle, cfg, session)
        results[backend] = (result, session.trained_parameters())
    (et_result, et_params), (ort_result, ort_params) = results["executorch"], results["onnxruntime"]
    assert ort_result.losses == pytest.approx(et_result.losses, abs=1e-5)
    assert ort_result.accuracy_after == pytest.approx(et_result.accuracy_after, abs=0.01)
    assert et_params.keys() == ort_params.keys()
    for name, value in et_params.items():
        torch.testing.assert_close(ort_params[name], value, rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("config", [ADAMW, MOMENTUM], ids=["adamw-in-ort", "momentum-in-app"])
def test_resume_after_crash_mid_save_loses_nothing(bundles, tmp_path: Path, monkeypatch, config) -> None:
    bundle = bundles("mlp", config)
    base = TrainConfig(steps=6, checkpoint_every=3, eval_split=None, progress=False)
    uninterrupted = OnnxRuntimeSession(bundle)
    train(bundle, dataclasses.replace(base, checkpoint=tmp_path / "straight.safetensors"), uninterrupted)

    checkpoint = tmp_path / "crashed.safetensors"
    real_replace = os.replace
    renames: list[str] = []

    def crash_on_second_save(src: str, dst: str) -> None:
        renames.append(dst)
        if len(renames) == 2:
            raise OSError("simulated power loss while saving")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second_save)
    with pytest.raises(OSError, match="simulated"):
        train(bundle, dataclasses.replace(base, checkpoint=checkpoint))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".crashed")] == [], "temp file left"

    resumed = OnnxRuntimeSession(bundle)
    result = train(bundle, dataclasses.replace(base, steps=3, resume=True, checkpoint=checkpoint), resumed)
    assert result.total_steps == 6
    for name, value in uninterrupted.trained_parameters().items():
        torch.testing.assert_close(resumed.trained_parameters()[name], value, rtol=0, atol=1e-7, msg=name)


@pytest.mark.parametrize("loss", ["mse", "bce_with_logits", f"{__name__}:custom_loss"], ids=["mse", "bce", "custom"])
def test_losses_match_eager(bundles, loss: str) -> None:
    bundle = bundles("mlp", OptimizerConfig(lr=0.5), loss=loss)
    session = OnnxRuntimeSession(bundle)
    eager = eager_model("mlp")
    optimizer = eager_optimizer(eager, OptimizerConfig(lr=0.5))
    for inputs, labels in batches(bundle, 3):
        loss_value, _ = session.train_step([(inputs, labels)])
        assert loss_value == pytest.approx(eager_step(eager, optimizer, loss, inputs, labels), rel=1e-5)
    assert_params_match(session, eager, atol=1e-6)


def test_relu6_gradient_at_zero_matches_eager(tmp_path: Path) -> None:
    # ORT's Clip gradient passes at the lower bound, PyTorch's ReLU6 gradient does not; zero inputs to
    # ReLU6 are common (a zero activation times anything plus a zero shift).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU6(), nn.Linear(32, 10))
    with torch.no_grad():
        model[1].weight[:16] = 0
        model[1].bias[:16] = 0
    bundle = export_bundle(model, tmp_path / "relu6", sample_shape=(1, 8, 8), batch_size=BATCH, backend="onnxruntime")
    session = OnnxRuntimeSession(bundle)
    eager = prepare_for_training_export(model)
    optimizer = eager_optimizer(eager, OptimizerConfig())
    inputs, labels = batches(bundle, 1)[0]
    session.train_step([(inputs, labels)])
    eager_step(eager, optimizer, "cross_entropy", inputs, labels)
    assert_params_match(session, eager, atol=1e-7)


def test_bce_stays_finite_for_confident_logits(bundles) -> None:
    session = OnnxRuntimeSession(bundles("mlp", OptimizerConfig(lr=0.5), loss="bce_with_logits"))
    inputs, labels = batches(session.bundle, 1)[0]
    session.state.parameters["model.classifier.bias"].data[:] = [40.0, -40.0] * 5
    eager = eager_model("mlp")
    with torch.no_grad():
        eager.classifier.bias.copy_(torch.tensor([40.0, -40.0] * 5))
        expected = F.binary_cross_entropy_with_logits(eager(inputs), labels)
    loss, _ = session.train_step([(inputs, labels)])
    assert loss == pytest.approx(float(expected), rel=1e-5)


def test_manifest_names_match_the_runtime(bundles) -> None:
    bundle = bundles("mobilenet_v2")
    manifest = bundle.manifest
    assert set(manifest.files) == {"training_model", "eval_model", "checkpoint", "memory_profile"}  # app optimizer
    assert all(not entry.path.endswith(".ort") for entry in manifest.files.values())
    assert manifest.backend_options["cpu_mem_arena"] is False
    assert manifest.methods["train"]["inputs"] == ["input", "label", "loss_scale"]
    session = OnnxRuntimeSession(bundle)
    trainable = [name for name, param in session.state.parameters if param.requires_grad]
    assert sorted(p.name for p in manifest.trainable) == sorted(trainable)
    eager = dict(eager_model("mobilenet_v2").named_parameters())
    assert all(eager[strip_prefix(p.name)].requires_grad for p in manifest.trainable)
    assert manifest.memory.planned_arena_bytes > 0


def test_inference_model_export_gives_the_trained_predictions(bundles, tmp_path: Path) -> None:
    bundle = bundles("small_cnn", ADAMW)
    session = OnnxRuntimeSession(bundle)
    for inputs, labels in batches(bundle, 3):
        session.train_step([(inputs, labels)])
    inputs, _ = batches(bundle, 1, seed=7)[0]
    path = export_inference_model(session, tmp_path / "model.onnx")
    inference = onnxruntime.InferenceSession(str(path))
    assert [i.name for i in inference.get_inputs()] == ["input"]
    (logits,) = inference.run(["logits"], {"input": inputs.numpy()})
    torch.testing.assert_close(torch.from_numpy(logits), session.predict(inputs), rtol=1e-5, atol=1e-6)


def test_op_without_gradient_is_named_at_export(tmp_path: Path) -> None:
    # SELU: ORT 1.19.2 has no gradient for Selu, and memwall has no training rewrite for it (HardSwish has one).
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.SELU(), nn.Linear(16, 10))
    with pytest.raises(ValueError, match=r"no gradient for op Selu .*Freeze the parameters before it"):
        export_bundle(model, tmp_path / "hs", sample_shape=(1, 8, 8), batch_size=BATCH, backend="onnxruntime")
    # The suggested fix works: nothing trainable before SELU, so no gradient has to pass it.
    model[1].requires_grad_(False)
    bundle = export_bundle(
        model, tmp_path / "hs-frozen", sample_shape=(1, 8, 8), batch_size=BATCH, backend="onnxruntime"
    )
    OnnxRuntimeSession(bundle).train_step(batches(bundle, 1))


def test_loss_torch_onnx_cannot_export_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="aten::l1_loss"):
        export_bundle(
            MLP(),
            tmp_path / "l1",
            sample_shape=(1, 8, 8),
            batch_size=BATCH,
            backend="onnxruntime",
            loss="torch.nn.functional:l1_loss",
        )


@pytest.fixture
def bundle_copy(bundles, tmp_path: Path) -> Path:
    copied = tmp_path / "bundle"
    shutil.copytree(bundles("mlp").directory, copied)
    return copied


def test_truncated_model_file_is_a_bundle_error(bundle_copy: Path) -> None:
    model = bundle_copy / "training_model.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(BundleError, match="truncated"):
        load_bundle(bundle_copy)
    # Skipping verification leaves it to the runtime, which must still fail cleanly.
    with pytest.raises(BundleError, match="ONNX Runtime cannot load"):
        OnnxRuntimeSession(load_bundle(bundle_copy, verify_files=False))


def test_wrong_hash_is_a_bundle_error(bundle_copy: Path) -> None:
    model = bundle_copy / "eval_model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bundle_copy)


def test_unknown_schema_version_is_a_bundle_error(bundle_copy: Path) -> None:
    manifest = bundle_copy / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "schema_version": 99}))
    with pytest.raises(BundleError, match="unsupported schema_version 99"):
        load_bundle(bundle_copy)


def test_missing_file_is_a_bundle_error(bundle_copy: Path) -> None:
    (bundle_copy / "checkpoint").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(bundle_copy)


def test_bad_batches_are_input_errors(bundles) -> None:
    bundle = bundles("mlp")
    session = OnnxRuntimeSession(bundle)
    inputs, labels = batches(bundle, 1)[0]
    with pytest.raises(InputError, match="shape"):
        session.train_step([(inputs[:3], labels[:3])])
    with pytest.raises(InputError, match="dtype"):
        session.train_step([(inputs.double(), labels)])
    with pytest.raises(InputError, match="dtype"):
        session.train_step([(inputs, labels.float())])
    with pytest.raises(InputError, match="class indices"):
        session.train_step([(inputs, labels + 10)])
    with pytest.raises(InputError, match="shape"):
        session.predict(inputs.reshape(BATCH, 64))
    before = session.trained_parameters()
    session.train_step([(inputs, labels)])  # still usable, and no bad batch was applied
    assert session.steps == 1
    assert not torch.equal(before["model.classifier.weight"], session.trained_parameters()["model.classifier.weight"])


def test_state_tensors_round_trip(bundles) -> None:
    session = OnnxRuntimeSession(bundles("mlp", ADAMW))
    session.train_step(batches(session.bundle, 1))
    steps, tensors = session.state_tensors()
    restored = OnnxRuntimeSession(session.bundle)
    restored.load_state_tensors(steps, copy.deepcopy(tensors))
    batch = batches(session.bundle, 1, seed=3)
    assert restored.train_step(batch)[0] == session.train_step(batch)[0]
    with pytest.raises(ValueError, match="checkpoint lacks"):
        restored.load_state_tensors(steps, {})


def test_recomputed_bundle_resumes_with_its_session_config(bundles) -> None:
    bundle = bundles("mobilenet_v2", ADAMW, recompute=RecomputeConfig("blocks"))
    assert bundle.manifest.backend_options["session_config"] == SESSION_CONFIG
    session = OnnxRuntimeSession(bundle)
    session.train_step(batches(bundle, 1))
    steps, tensors = session.state_tensors()
    restored = OnnxRuntimeSession(bundle)
    # Restoring ORT's optimizer state recreates the sessions: they must get the entries again.
    restored.load_state_tensors(steps, copy.deepcopy(tensors))
    for key, value in SESSION_CONFIG.items():
        assert restored.session_options.get_session_config_entry(key) == value
    batch = batches(bundle, 1, seed=3)
    assert restored.train_step(batch)[0] == session.train_step(batch)[0]
    torch.testing.assert_close(restored.trained_parameters(), session.trained_parameters(), rtol=0, atol=0)
