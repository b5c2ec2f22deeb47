"""Fused optimizer update: SGD/AdamW applied inside the ExecuTorch training program, in the real runtime.

Each program is checked against ``torch.optim`` on the eager model over several steps; the runner's session
interface (train_step, predict, checkpoint and resume, trained parameters) works on fused bundles unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from exporters import ModelSpec, OptimizerConfig, export_bundle
from exporters.bundle import MANIFEST_NAME, manifest_schema
from exporters.techniques.fused_update import FusedUpdateConfig
from exporters.techniques.recompute import RecomputeConfig
from exporters.training_graph import prepare_for_training_export
from sdk_tools.runner import TrainConfig, open_session, train
from sdk_tools.runner.executorch_session import ExecuTorchSession, FusedExecuTorchSession
from tests.conftest import BATCH, REFERENCE_CASES, ExportedCase, make_model

SGD_DAMPENED = OptimizerConfig(kind="sgd", lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)
SGD_NESTEROV = OptimizerConfig(kind="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)
# eps well above the gradients' float noise: AdamW divides by |grad| + eps, which magnifies the last-bit
# differences between the runtime's and eager's gradients where a gradient is near zero.
ADAMW = OptimizerConfig(kind="adamw", lr=0.01, weight_decay=0.01, betas=(0.8, 0.99), eps=1e-3)


def export_fused(
    root: Path,
    name: str,
    optimizer: OptimizerConfig,
    config: FusedUpdateConfig | None = None,
    recompute: RecomputeConfig | None = None,
    frozen: str | None = None,
) -> ExportedCase:
    kwargs, shape = REFERENCE_CASES[name]
    model = make_model(name)
    for param_name, p in model.named_parameters():
        p.requires_grad_(frozen is None or not param_name.startswith(frozen))
    bundle = export_bundle(
        model,
        root / name,
        sample_shape=shape,
        batch_size=BATCH,
        optimizer=optimizer,
        model_spec=ModelSpec(name, kwargs),
        recompute=recompute,
        fused_update=config or FusedUpdateConfig(),
    )
    return ExportedCase(name, prepare_for_training_export(model), shape, bundle)


def track_eager(case: ExportedCase, session: ExecuTorchSession, steps: int, *, lr_at: dict[int, float] | None = None):
    """Train the session and eager PyTorch with torch.optim side by side; returns the eager model."""
    eager = case.fresh_eager()
    optimizer = OptimizerConfig.from_json(case.bundle.manifest.optimizer).torch_optimizer(eager.parameters())
    for step in range(steps):
        if lr_at and step in lr_at:
            session.lr = lr_at[step]
            for group in optimizer.param_groups:
                group["lr"] = lr_at[step]
        x, y = case.batch(seed=step)
        loss, _ = session.train_step([(x, y)])
        optimizer.zero_grad()
        eager_loss = F.cross_entropy(eager(x), y)
        eager_loss.backward()
        optimizer.step()
        assert loss == pytest.approx(float(eager_loss), rel=1e-5), f"step {step}"
    return eager


def assert_weights_equal(session: ExecuTorchSession, eager: torch.nn.Module, rtol: float, atol: float) -> None:
    trained = session.trained_parameters()
    assert set(trained) == {f"model.{name}" for name, p in eager.named_parameters() if p.requires_grad}
    for name, p in eager.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(trained[f"model.{name}"], p.detach(), rtol=rtol, atol=atol, msg=name)


@pytest.fixture(scope="module")
def adamw(tmp_path_factory: pytest.TempPathFactory) -> ExportedCase:
    return export_fused(tmp_path_factory.mktemp("fused"), "small_cnn", ADAMW)


def test_sgd_with_dampening_and_a_learning_rate_schedule_matches_torch(tmp_path: Path) -> None:
    case = export_fused(tmp_path, "small_cnn", SGD_DAMPENED)
    session = ExecuTorchSession(case.bundle)
    assert isinstance(session, FusedExecuTorchSession)
    eager = track_eager(case, session, steps=6, lr_at={3: 0.02})
    assert_weights_equal(session, eager, rtol=1e-5, atol=1e-6)


def test_nesterov_with_a_constant_learning_rate_and_a_frozen_layer_matches_torch(tmp_path: Path) -> None:
    case = export_fused(
        tmp_path, "mlp", SGD_NESTEROV, FusedUpdateConfig(learning_rate="constant"), frozen="features.1."
    )
    train_method = case.bundle.manifest.methods["train"]
    assert train_method["inputs"] == ["input", "label", "step"]
    session = ExecuTorchSession(case.bundle)
    with pytest.raises(ValueError, match="constant of the program"):
        session.lr = 0.1
    eager = track_eager(case, session, steps=5)
    assert_weights_equal(session, eager, rtol=1e-5, atol=1e-6)
    # The frozen layer stays a constant of both methods: predictions match a model whose first layer never moved.
    x, _ = case.batch(seed=7)
    torch.testing.assert_close(session.predict(x), eager(x).detach(), rtol=1e-5, atol=1e-6)


def test_adamw_matches_torch_and_predict_uses_the_trained_weights(adamw: ExportedCase) -> None:
    session = ExecuTorchSession(adamw.bundle)
    x, _ = adamw.batch(seed=99)
    # Before any step the session reads the weights through a dry run (step 0), which must not move them.
    torch.testing.assert_close(session.predict(x), adamw.eager(x).detach(), rtol=1e-4, atol=1e-5)
    for name, p in adamw.eager.named_parameters():
        assert torch.equal(session.parameters()[f"model.{name}"], p.detach()), name
    eager = track_eager(adamw, session, steps=6)
    assert_weights_equal(session, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(session.predict(x), eager(x).detach(), rtol=1e-5, atol=1e-6)


def test_checkpoint_and_resume_continue_exactly(adamw: ExportedCase, tmp_path: Path) -> None:
    def config(steps: int, name: str, resume: bool = False) -> TrainConfig:
        return TrainConfig(
            steps=steps, data="random", eval_split=None, checkpoint=tmp_path / name, resume=resume, progress=False
        )

    straight = train(adamw.bundle, config(5, "a.safetensors"))
    train(adamw.bundle, config(3, "b.safetensors"))
    resumed = train(adamw.bundle, config(2, "b.safetensors", resume=True))
    assert resumed.total_steps == 5
    assert resumed.losses == pytest.approx(straight.losses[3:], rel=1e-6)
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    names = adamw.bundle.manifest.methods["train"]["outputs"][2:]
    assert sorted(a) == sorted(b) == sorted(names)
    assert any(name.startswith("optimizer/exp_avg_sq/") for name in names)
    for name, value in a.items():
        assert torch.equal(value, b[name]), name
    # trained_parameters hands out copies: changing them leaves the program's weights alone.
    session = open_session(adamw.bundle)
    before = {k: v.clone() for k, v in session.trained_parameters().items()}
    for value in session.trained_parameters().values():
        value.add_(1.0)
    assert all(torch.equal(v, before[k]) for k, v in session.trained_parameters().items())


def test_fresh_state_is_zero_and_bad_calls_are_refused(adamw: ExportedCase) -> None:
    session = ExecuTorchSession(adamw.bundle)
    steps, tensors = session.state_tensors()
    assert steps == 0
    assert all(not v.any() for k, v in tensors.items() if k.startswith("optimizer/"))
    x, y = adamw.batch(seed=0)
    with pytest.raises(ValueError, match="exactly one batch per step"):
        session.train_step([(x, y), (x, y)])
    with pytest.raises(NotImplementedError, match="returns no gradients"):
        session.forward_backward(x, y)
    with pytest.raises(ValueError, match="checkpoint lacks"):
        session.load_state_tensors(1, {k: v for k, v in tensors.items() if "exp_avg_sq" not in k})


def test_manifest_records_the_fused_update(adamw: ExportedCase) -> None:
    data = json.loads((adamw.bundle.directory / MANIFEST_NAME).read_text())
    jsonschema.Draft202012Validator(manifest_schema()).validate(data)
    assert data["techniques"] == [{"name": "fused_update", "config": {"learning_rate": "input"}}]
    assert data["backend_options"]["optimizer_runs_in"] == "program"
    assert set(data["backend_options"]["train_inputs"]) == {"lr", "step"}
    train_method = data["methods"]["train"]
    trainable = [p["name"] for p in data["trainable"]]
    assert train_method["inputs"] == ["input", "label", "lr", "step"]
    assert train_method["outputs"] == [
        "loss",
        "logits",
        *trainable,
        *(f"optimizer/{state}/{name}" for name in trainable for state in ("exp_avg", "exp_avg_sq")),
    ]
    # Optimizer state lives in the planned arena now, not beside it.
    assert data["memory"]["optimizer_state_bytes"] == 0


class Blocks(nn.Module):
    """Numbered blocks whose activations outweigh their weights, so recomputation has something to release."""

    def __init__(self, depth: int = 4, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.Sequential(
            *(
                nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU6())
                for _ in range(depth)
            )
        )
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(F.relu(self.stem(x))).mean(dim=(2, 3)))


def test_recompute_then_fused_update_matches_torch_in_a_smaller_arena(tmp_path: Path) -> None:
    # Recomputation runs first: it finds the forward through the gradient outputs that the fused update removes.
    optimizer = OptimizerConfig(kind="sgd", lr=0.05, momentum=0.9)
    shape = (3, 32, 32)
    cases = {}
    for recompute in (None, RecomputeConfig("auto")):
        torch.manual_seed(0)
        model = Blocks()
        bundle = export_bundle(
            model,
            tmp_path / str(recompute is not None),
            sample_shape=shape,
            batch_size=BATCH,
            optimizer=optimizer,
            recompute=recompute,
            fused_update=FusedUpdateConfig(),
        )
        cases[recompute is not None] = ExportedCase("blocks", prepare_for_training_export(model), shape, bundle)
    both = cases[True].bundle.manifest
    assert [t["name"] for t in both.techniques] == ["recompute", "fused_update"]
    assert both.memory.planned_arena_bytes < cases[False].bundle.manifest.memory.planned_arena_bytes
    session = ExecuTorchSession(cases[True].bundle)
    eager = track_eager(cases[True], session, steps=5)
    assert_weights_equal(session, eager, rtol=1e-5, atol=1e-6)


def test_config_round_trips_and_rejects_unknown_values() -> None:
    config = FusedUpdateConfig(learning_rate="constant")
    assert FusedUpdateConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    with pytest.raises(ValueError, match="learning_rate"):
        FusedUpdateConfig(learning_rate="scheduled")  # type: ignore[arg-type]


FUSED_KWARGS = {"sample_shape": (1, 8, 8), "optimizer": OptimizerConfig(), "fused_update": FusedUpdateConfig()}


def test_micro_batches_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="micro_batches=1 with a smaller batch_size"):
        export_bundle(make_model("mlp"), tmp_path, batch_size=8, micro_batches=2, **FUSED_KWARGS)


def test_onnxruntime_refuses_the_fused_update(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"fused_update.*executorch"):
        export_bundle(make_model("mlp"), tmp_path, batch_size=4, backend="onnxruntime", **FUSED_KWARGS)
