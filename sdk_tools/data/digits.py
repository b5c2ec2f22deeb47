"""scikit-learn's handwritten digits, split into a pretraining part and a personalization part.

The 1,797 8x8 digits carry no writer ids, so the "new user" is simulated: the personalization half is
re-drawn in a fixed handwriting style (slanted, rotated, heavier strokes, shifted). A model pretrained on the
plain half does poorly on that style, and training on the user's own few samples recovers it: exactly what
on-device personalization is for. Every split is deterministic (fixed seed, stratified).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

DIGIT_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
SplitName = Literal["pretrain", "pretrain_test", "personal", "personal_test"]
SPLITS: tuple[str, ...] = ("pretrain", "pretrain_test", "personal", "personal_test")
_SEED = 20261125


@dataclass(frozen=True)
class DigitsSplit:
    images: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


def _stratified_halves(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    first, second = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        cut = round(len(idx) * fraction)
        first.append(idx[:cut])
        second.append(idx[cut:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def user_style(images: torch.Tensor) -> torch.Tensor:
    """Redraw (N, 1, 8, 8) digits in the simulated user's handwriting: slant + rotation, thick strokes."""
    angle = math.radians(-30.0)
    shear = 0.35
    theta = torch.tensor(
        [[math.cos(angle), -math.sin(angle) + shear, 0.12], [math.sin(angle), math.cos(angle), -0.1]],
        dtype=images.dtype,
    ).expand(len(images), 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
    thick = F.max_pool2d(warped, kernel_size=2, stride=1, padding=1)[..., :8, :8]
    return (0.5 * warped + 0.7 * thick).clamp(0.0, 1.0)


def _resize(images: torch.Tensor, image_size: tuple[int, int], channels: int) -> torch.Tensor:
    if tuple(images.shape[-2:]) != image_size:
        images = F.interpolate(images, size=image_size, mode="bilinear", align_corners=False)
    return images.expand(-1, channels, -1, -1).contiguous()


def load_digits_split(split: SplitName, image_size: tuple[int, int] = (8, 8), channels: int = 1) -> DigitsSplit:
    """One of the four deterministic splits, resized to ``image_size`` and repeated to ``channels``.

    ``pretrain``/``pretrain_test``: plain digits (80/20 of one half). ``personal``/``personal_test``: the
    other half in the user's style (50/50: the user trains on ~450 samples, is tested on the rest).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; choose one of {SPLITS}")
    digits = load_digits()
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(_SEED)
    pre_idx, pers_idx = _stratified_halves(labels, 0.5, rng)
    pre_train, pre_test = (pre_idx[i] for i in _stratified_halves(labels[pre_idx], 0.8, rng))
    pers_train, pers_test = (pers_idx[i] for i in _stratified_halves(labels[pers_idx], 0.5, rng))
    index = {
        "pretrain": pre_train,
        "pretrain_test": pre_test,
        "personal": pers_train,
        "personal_test": pers_test,
    }
    idx = index[split]
    images = torch.from_numpy(digits.images[idx].astype(np.float32) / 16.0).unsqueeze(1)
    if split.startswith("personal"):
        images = user_style(images)
    return DigitsSplit(_resize(images, image_size, channels), torch.from_numpy(labels[idx]))
