"""Reference models and the digits splits."""

from __future__ import annotations

import json

import pytest
import torch

from exporters import FreezeConfig, apply_freeze
from sdk_tools.data import load_dataset, load_digits_split
from sdk_tools.data.loading import Batches
from sdk_tools.models import FrozenBatchNorm2d, MobileNetV2, build_model, freeze_batchnorm


def test_digits_splits_are_deterministic_disjoint_and_stratified() -> None:
    sizes = {}
    for split in ("pretrain", "pretrain_test", "personal", "personal_test"):
        a, b = load_digits_split(split), load_digits_split(split)  # type: ignore[arg-type]
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert set(a.labels.tolist()) == set(range(10))
        sizes[split] = len(a)
    assert sum(sizes.values()) == 1797
    plain = load_digits_split("pretrain")
    user = load_digits_split("personal")
    # The user's handwriting differs from the plain digits (that is what personalization must learn).
    assert (user.images.mean() - plain.images.mean()).abs() > 0.02


def test_digits_resize_and_channels() -> None:
    data = load_digits_split("personal_test", (32, 24), 3)
    assert data.images.shape[1:] == (3, 32, 24)
    assert float(data.images.min()) >= 0.0 and float(data.images.max()) <= 1.0


def test_unknown_split_and_dataset_are_clear() -> None:
    with pytest.raises(ValueError, match="unknown digits split"):
        load_digits_split("train")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet", "personal", (1, 8, 8), 10)


def test_batches_are_reproducible_from_any_position() -> None:
    batches = Batches(load_digits_split("personal"), 8, seed=3)
    stream = batches.from_position(0)
    first = [next(stream) for _ in range(60)]
    x, y = batches.batch(57)
    assert torch.equal(first[57][0], x) and torch.equal(first[57][1], y)


@pytest.mark.parametrize("size", [(3, 32, 32), (3, 96, 96), (3, 50, 70)])
def test_mobilenet_v2_any_input_size(size: tuple[int, int, int]) -> None:
    model = MobileNetV2(width_mult=0.35).eval()
    assert model(torch.rand(2, *size)).shape == (2, 10)


def test_full_width_mobilenet_v2_matches_the_paper() -> None:
    assert sum(p.numel() for p in MobileNetV2(num_classes=1000).parameters()) == 3_504_872


def test_frozen_batchnorm_equals_batchnorm_in_eval_mode() -> None:
    model = build_model("mobilenet_v2", width_mult=0.25)
    model.train()
    for _ in range(3):
        model(torch.rand(8, 3, 32, 32))  # non-trivial running statistics
    model.eval()
    x = torch.rand(4, 3, 32, 32)
    expected = model(x)
    frozen = freeze_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules())
    torch.testing.assert_close(frozen(x), expected, rtol=1e-5, atol=1e-5)


def test_model_spec_import_path_and_errors() -> None:
    assert isinstance(build_model("sdk_tools.models.small_cnn:SmallCNN", channels=(4, 8)), torch.nn.Module)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet50")
    with pytest.raises(ValueError, match="cannot import"):
        build_model("no_such_pkg.mod:make")


def test_freeze_by_pattern() -> None:
    model = build_model("mlp")
    apply_freeze(model, FreezeConfig(("classifier.*",)))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "classifier.weight",
        "classifier.bias",
    ]
    with pytest.raises(ValueError, match="matches no parameter"):
        apply_freeze(model, FreezeConfig(("head.*",)))


def _trained(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def test_freeze_presets_last_blocks_bias_only_head() -> None:
    model = build_model("mobilenet_v2", width_mult=0.25)
    apply_freeze(model, FreezeConfig(last_blocks=2))
    trained = _trained(model)
    assert trained[0].startswith("features.17.") and trained[-1] == "classifier.bias"
    assert not any(n.startswith("features.16.") for n in trained)
    apply_freeze(model, FreezeConfig(last_blocks=0))
    assert _trained(model) == ["classifier.weight", "classifier.bias"]
    apply_freeze(model, FreezeConfig(("classifier.*",), bias_only=True))
    trained = _trained(model)
    assert "classifier.weight" in trained and all(n.endswith(".bias") for n in trained if n != "classifier.weight")
    assert len(trained) > 30
    apply_freeze(model, FreezeConfig())
    assert len(_trained(model)) == len(list(model.parameters()))
    config = FreezeConfig(("classifier.*",), last_blocks=3, bias_only=True)
    assert FreezeConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


def test_freeze_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="no numbered blocks"):
        FreezeConfig(last_blocks=1).select(["weight", "bias"])
    with pytest.raises(ValueError, match=">= 0"):
        FreezeConfig(last_blocks=-1)
    with pytest.raises(ValueError, match="no bias"):
        FreezeConfig(bias_only=True).select(["features.0.weight"])
