"""Dataset lookup by name and fixed-size batching for programs with a static batch dimension."""

from __future__ import annotations

import functools
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from sdk_tools.data.digits import DigitsSplit, load_digits_split


@functools.lru_cache(maxsize=4)
def load_dataset(
    name: str, split: str, sample_shape: tuple[int, ...], num_classes: int, random_size: int = 256
) -> DigitsSplit:
    """Resolve ``digits``, ``random`` or a ``.npz`` path (arrays ``x`` and ``y``) to images and labels.

    ``sample_shape`` is one sample's shape as the program expects it (no batch dimension). Cached: the
    measuring child loads its splits before its idle baseline, and the training loop must find them there,
    not load a second copy inside the measured window (at 3x128x128 one split is ~90 MB).
    """
    if name == "digits":
        if len(sample_shape) != 3:
            raise ValueError(f"digits needs an image input (C, H, W); the bundle's input sample is {sample_shape}")
        channels, height, width = sample_shape
        return load_digits_split(split, (height, width), channels)  # type: ignore[arg-type]
    if name == "random":
        # Separate, fixed streams per split so "test" never overlaps "train".
        gen = torch.Generator().manual_seed(zlib.crc32(split.encode()))
        x = torch.rand((random_size, *sample_shape), generator=gen)
        y = torch.randint(0, num_classes, (random_size,), generator=gen)
        return DigitsSplit(x, y)
    path = Path(name)
    if path.suffix != ".npz":
        raise ValueError(f"unknown dataset {name!r}: use 'digits', 'random' or a .npz file with arrays x and y")
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    return load_npz(path, tuple(sample_shape), num_classes)


class DataError(ValueError):
    """A data file cannot be trained on; the message names the problem and the fix."""


def load_npz(path: Path, sample_shape: tuple[int, ...], num_classes: int) -> DigitsSplit:
    """Samples ``x`` and class labels ``y`` from a user's .npz, checked once here so that no batch later can hold
    a NaN, an out-of-range class or a ragged length: float samples of ``sample_shape``, integer labels in
    ``[0, num_classes)``, one label per sample, at least one sample. Pickled objects are never loaded."""
    fix = "write it with numpy.savez(path, x=float32 samples, y=int64 class indices)"
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "x" not in arrays or "y" not in arrays:
                raise DataError(f"{path} must hold arrays named 'x' and 'y' (found {sorted(arrays.files)}); {fix}")
            x, y = arrays["x"], arrays["y"]
    except DataError:
        raise
    except Exception as exc:
        # Whatever numpy's and zipfile's parsers raise on a hostile file means the same: ValueError for pickled
        # (object) arrays, OSError/BadZipFile for what is no zip, and (found by benchmarks/fuzz_readers.py)
        # NotImplementedError for zip features zipfile lacks, zlib.error, struct.error, EOFError...
        raise DataError(f"{path} is not a readable .npz of plain arrays ({type(exc).__name__}: {exc}); {fix}") from exc
    if x.dtype.kind not in "fiub" or y.dtype.kind not in "iub":
        raise DataError(f"{path}: x is {x.dtype} and y is {y.dtype}; x must be numbers and y integers; {fix}")
    if x.ndim < 1 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise DataError(f"{path}: x has shape {x.shape}, y {y.shape}: need one label per sample, at least one; {fix}")
    if tuple(x.shape[1:]) != sample_shape:
        raise DataError(f"{path}: samples have shape {tuple(x.shape[1:])}, the bundle expects {sample_shape}")
    with np.errstate(over="ignore"):  # a value beyond float32 becomes infinity, refused just below
        images = torch.from_numpy(x.astype(np.float32))
    if not bool(torch.isfinite(images).all()):
        raise DataError(f"{path}: x holds NaN or infinity (or values beyond float32); clean the data")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= num_classes:
        raise DataError(f"{path}: labels span [{low}, {high}], the bundle has classes 0..{num_classes - 1}")
    return DigitsSplit(images, torch.from_numpy(y.astype(np.int64)))


class Batches:
    """Endless shuffled batches of exactly ``batch_size`` samples; epoch ``e`` uses seed ``seed + e``.

    Deterministic from ``(seed, position)``, so a resumed run sees the same batches it would have seen.
    """

    def __init__(self, data: DigitsSplit, batch_size: int, seed: int = 0) -> None:
        if len(data) < batch_size:
            raise ValueError(f"dataset has {len(data)} samples, fewer than one batch of {batch_size}")
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.per_epoch = len(data) // batch_size

    def batch(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = divmod(position, self.per_epoch)
        order = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(self.seed + epoch))
        idx = order[index * self.batch_size : (index + 1) * self.batch_size]
        return self.data.images[idx], self.data.labels[idx]

    def from_position(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        position = start
        while True:
            yield self.batch(position)
            position += 1


def eval_batches(data: DigitsSplit, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Fixed-size batches covering every sample once; the last batch is padded, yielding its real length."""
    for start in range(0, len(data), batch_size):
        x = data.images[start : start + batch_size]
        y = data.labels[start : start + batch_size]
        real = len(y)
        if real < batch_size:
            pad = batch_size - real
            x = torch.cat([x, x[:1].expand(pad, *x.shape[1:])])
            y = torch.cat([y, y[:1].expand(pad)])
        yield x, y, real
