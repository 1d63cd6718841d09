"""Real data, offline: scikit-learn's handwritten digits (bundled with scikit-learn) and MNIST from its IDX files.

Every loader returns a :class:`Split`: fixed train / validation / test tensors, inputs scaled to
``[0, 1]`` (float64, one row per image) and integer labels. The split is a pure function of its seed,
so a result names the data it used exactly. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .numerics import seed_value

__all__ = ["Split", "digits", "mnist", "read_idx"]


@dataclass(frozen=True)
class Split:
    """Fixed train / validation / test sets: inputs ``[n, d]`` float64 in ``[0, 1]``, labels ``[n]`` int64."""

    name: str
    train: tuple[Tensor, Tensor]
    validation: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]

    @property
    def num_inputs(self) -> int:
        return self.train[0].shape[1]

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.train[1], self.validation[1], self.test[1]]).max()) + 1

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k} {len(v[1])}" for k, v in
                          (("train", self.train), ("validation", self.validation), ("test", self.test)))
        return f"Split({self.name!r}: {sizes}; {self.num_inputs} inputs, {self.num_classes} classes)"


def _fractions(validation: float, test: float) -> None:
    for name, value in (("validation", validation), ("test", test)):
        if not (isinstance(value, (int, float)) and 0 < value < 1):
            raise ValueError(f"{name} must be a fraction in (0, 1), got {value!r}")
    if validation + test >= 1:
        raise ValueError(f"validation + test must leave some training data, got {validation} + {test}")


def digits(seed: int = 0, validation: float = 0.2, test: float = 0.2) -> Split:
    """scikit-learn's handwritten digits (1797 8x8 images, 10 classes, bundled with scikit-learn), pixels / 16,
    split at random (``seed``) into train, validation (``validation`` of it) and test (``test``)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("the digits data set comes with scikit-learn: pip install scikit-learn") from err
    _fractions(validation, test)
    data = load_digits()
    x = torch.from_numpy(np.asarray(data.data, dtype=np.float64) / 16.0)
    y = torch.from_numpy(np.asarray(data.target, dtype=np.int64))
    order = torch.from_numpy(np.random.default_rng(seed_value("seed", seed)).permutation(len(y)))
    n_test, n_val = round(test * len(y)), round(validation * len(y))
    parts = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    test_set, val_set, train_set = ((x[i], y[i]) for i in parts)
    return Split("digits", train_set, val_set, test_set)


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (MNIST's format, optionally gzipped): a big-endian header of magic ``0x0000 TT DD``
    (``TT`` the element type, ``DD`` the number of dimensions), ``DD`` sizes, then the data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (its first two bytes must be zero)")
    types = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in types:
        raise ValueError(f"{path}: unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(types[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != expected:
        raise ValueError(f"{path}: the header promises {expected} bytes of data for shape {shape}, found {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"{directory} has no {stem} (or {stem}.gz): MNIST's four IDX files are "
                            "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte")


def mnist(directory: str | Path, seed: int = 0, validation: float = 1 / 6) -> Split:
    """MNIST from its four IDX files in ``directory`` (as distributed, gzipped or not): pixels / 255; its own
    test set; ``validation`` of the training set held out at random (``seed``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"--data {directory}: not a directory")
    if not (isinstance(validation, (int, float)) and 0 < validation < 1):
        raise ValueError(f"validation must be a fraction in (0, 1), got {validation!r}")

    def load(images: str, labels: str) -> tuple[Tensor, Tensor]:
        x, y = read_idx(_find(directory, images)), read_idx(_find(directory, labels))
        if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{directory}: {images} and {labels} do not match (shapes {x.shape} and {y.shape})")
        return (torch.from_numpy(x.reshape(len(x), -1).astype(np.float64) / 255.0),
                torch.from_numpy(y.astype(np.int64)))

    x, y = load("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    test_set = load("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    order = torch.from_numpy(np.random.default_rng(seed_value("seed", seed)).permutation(len(y)))
    n_val = round(validation * len(y))
    return Split("mnist", (x[order[n_val:]], y[order[n_val:]]), (x[order[:n_val]], y[order[:n_val]]), test_set)
