"""The ExecuTorch training program against eager PyTorch, in the real runtime."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from exporters import OptimizerConfig
from exporters.training_graph import strip_prefix
from sdk_tools.runner.executorch_session import ExecuTorchSession
from tests.conftest import BATCH, ExportedCase, export_case

RTOL, ATOL = 1e-4, 1e-5


def eager_loss_and_grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def step_both(
    session: ExecuTorchSession,
    eager: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[float, float]:
    """One training step in the runtime and the same step in eager PyTorch; returns both losses."""
    loss, _ = session.train_step([(x, y)])
    optimizer.zero_grad()
    eager_loss = F.cross_entropy(eager(x), y)
    eager_loss.backward()
    optimizer.step()
    return loss, float(eager_loss)


def test_loss_and_every_gradient_equal_eager(et_case: ExportedCase) -> None:
    session = ExecuTorchSession(et_case.bundle)
    eager = et_case.fresh_eager()
    x, y = et_case.batch(seed=1)
    loss, logits, grads = session.forward_backward(x, y)
    eager_loss, eager_grads = eager_loss_and_grads(eager, x, y)
    assert loss == pytest.approx(eager_loss, rel=1e-5)
    torch.testing.assert_close(logits, eager(x).detach(), rtol=RTOL, atol=ATOL)
    assert {strip_prefix(n) for n in grads} == set(eager_grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[strip_prefix(name)], rtol=RTOL, atol=ATOL, msg=name)


def test_twenty_sgd_momentum_steps_track_eager(et_case: ExportedCase) -> None:
    session = ExecuTorchSession(et_case.bundle)
    eager = et_case.fresh_eager()
    cfg = OptimizerConfig.from_json(et_case.bundle.manifest.optimizer)
    optimizer = torch.optim.SGD(eager.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    for step in range(20):
        loss, eager_loss = step_both(session, eager, optimizer, *et_case.batch(seed=100 + step))
        assert loss == pytest.approx(eager_loss, rel=1e-3, abs=1e-5), f"step {step}"
    trained = session.trained_parameters()
    for name, p in eager.named_parameters():
        torch.testing.assert_close(trained[f"model.{name}"], p.detach(), rtol=1e-3, atol=1e-5, msg=name)
    x, _ = et_case.batch(seed=7)
    torch.testing.assert_close(session.predict(x), eager(x).detach(), rtol=1e-3, atol=1e-4)


def test_predict_matches_eager_before_training(et_case: ExportedCase) -> None:
    session = ExecuTorchSession(et_case.bundle)
    x, _ = et_case.batch(seed=3)
    torch.testing.assert_close(session.predict(x), et_case.eager(x).detach(), rtol=RTOL, atol=ATOL)


def test_adamw_five_steps_match_torch(tmp_path) -> None:
    config = OptimizerConfig(kind="adamw", lr=1e-3, weight_decay=0.01)
    case = export_case(tmp_path, "small_cnn", config)
    session = ExecuTorchSession(case.bundle)
    eager = case.fresh_eager()
    optimizer = torch.optim.AdamW(eager.parameters(), lr=1e-3, weight_decay=0.01)
    for step in range(5):
        step_both(session, eager, optimizer, *case.batch(seed=step))
    trained = session.trained_parameters()
    for name, p in eager.named_parameters():
        torch.testing.assert_close(trained[f"model.{name}"], p.detach(), rtol=1e-5, atol=2.5e-6, msg=name)


def test_frozen_parameters_get_no_gradient_and_stay_unchanged(tmp_path) -> None:
    def freeze_all_but_classifier(model: torch.nn.Module) -> None:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("classifier."))

    case = export_case(tmp_path, "small_cnn", OptimizerConfig(lr=0.1), configure=freeze_all_but_classifier)
    manifest = case.bundle.manifest
    assert [p.name for p in manifest.trainable] == ["model.classifier.weight", "model.classifier.bias"]
    assert manifest.frozen_parameter_count == sum(
        p.numel() for n, p in case.eager.named_parameters() if not n.startswith("classifier.")
    )
    session = ExecuTorchSession(case.bundle)
    _, _, grads = session.forward_backward(*case.batch(seed=0))
    assert set(grads) == {"model.classifier.weight", "model.classifier.bias"}
    eager = case.fresh_eager()
    optimizer = torch.optim.SGD([p for p in eager.parameters() if p.requires_grad], lr=0.1)
    for step in range(5):
        step_both(session, eager, optimizer, *case.batch(seed=step))
    assert set(session.trained_parameters()) == {"model.classifier.weight", "model.classifier.bias"}
    # Both runtime methods behave like a model whose frozen part never moved and whose classifier did: predict
    # (trained classifier passed in) and the training method (which holds the frozen weights itself).
    x, y = case.batch(seed=9)
    torch.testing.assert_close(session.predict(x), eager(x).detach(), rtol=RTOL, atol=ATOL)
    loss, logits, _ = session.forward_backward(x, y)
    torch.testing.assert_close(logits, eager(x).detach(), rtol=RTOL, atol=ATOL)
    assert loss == pytest.approx(float(F.cross_entropy(eager(x), y)), rel=1e-5)


def test_micro_batch_accumulation_equals_full_batch(tmp_path) -> None:
    config = OptimizerConfig(kind="sgd", lr=0.1)
    full = export_case(tmp_path, "small_cnn", config, batch=2 * BATCH)
    micro = export_case(tmp_path, "small_cnn", config, tag="-micro", batch=2 * BATCH, micro_batches=2)
    assert micro.bundle.manifest.inputs[0].shape[0] == BATCH
    assert micro.bundle.manifest.training == {"batch_size": 2 * BATCH, "micro_batches": 2}
    x, y = full.batch(seed=5, batch=2 * BATCH)
    full_session, micro_session = ExecuTorchSession(full.bundle), ExecuTorchSession(micro.bundle)
    full_loss, _ = full_session.train_step([(x, y)])
    micro_loss, _ = micro_session.train_step([(x[:BATCH], y[:BATCH]), (x[BATCH:], y[BATCH:])])
    assert micro_loss == pytest.approx(full_loss, rel=1e-5)
    a, b = full_session.trained_parameters(), micro_session.trained_parameters()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


class DeclaredBackwards(torch.nn.Module):
    """Modules declared in the opposite order of their use: gradients come in use order, not declaration order."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(16, 10)
        self.body = torch.nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.body(x.flatten(1))))


def test_predict_takes_parameters_in_the_training_methods_order(tmp_path) -> None:
    from exporters import export_bundle

    torch.manual_seed(0)
    eager = DeclaredBackwards()
    bundle = export_bundle(eager, tmp_path, sample_shape=(1, 8, 8), batch_size=BATCH, optimizer=OptimizerConfig())
    assert bundle.manifest.methods["predict"]["inputs"][1:3] == ["model.body.weight", "model.body.bias"]
    session = ExecuTorchSession(bundle)
    x = torch.rand((BATCH, 1, 8, 8))
    torch.testing.assert_close(session.predict(x), eager(x).detach(), rtol=RTOL, atol=ATOL)
