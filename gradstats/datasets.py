"""Real data, offline: scikit-learn's handwritten digits (bundled with scikit-learn) and MNIST from its IDX files.

Every loader returns a :class:`Split`: fixed train / validation / test tensors, inputs scaled to
``[0, 1]`` (float64, one row per image) and integer labels. The split is a pure function of its seed,
so a result names the data it used exactly. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import struct
import zlib
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
    (``TT`` the element type, ``DD`` the number of dimensions), ``DD`` sizes, then the data. A file that is
    missing, unreadable, not gzip where it says so, truncated or not IDX is a ValueError naming it."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as err:
        raise ValueError(f"{path}: no such file") from err
    except (OSError, EOFError, zlib.error) as err:   # gzip.BadGzipFile is an OSError; a truncated gzip an EOFError
        kind = "a damaged or truncated gzip file" if path.suffix == ".gz" else "unreadable"
        raise ValueError(f"{path}: {kind} ({type(err).__name__}: {err})") from err
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
    raise ValueError(f"{directory} has no {stem} (or {stem}.gz): MNIST's four IDX files are "
                     "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte")


MNIST_IMAGE_SHAPE = (28, 28)
MNIST_CLASSES = 10


def _pixels(x: np.ndarray, path: Path) -> np.ndarray:
    """Images as float64 in ``[0, 1]``: unsigned bytes divided by 255; floating point taken as it is, where it is
    finite and already in ``[0, 1]``; any other element type refused."""
    if x.dtype == np.uint8:
        return x.astype(np.float64) / 255.0
    if x.dtype.kind == "f":
        values = x.astype(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(f"{path}: {int(bad.sum())} pixel(s) are not finite (NaN or infinity), the first in image "
                             f"{int(np.argwhere(bad)[0][0])}")
        if values.min() < 0 or values.max() > 1:
            raise ValueError(f"{path}: floating-point pixels must lie in [0, 1], found {values.min():g} to {values.max():g}")
        return values
    raise ValueError(f"{path}: pixels must be unsigned bytes (IDX type 0x08) or floats in [0, 1], got {x.dtype}")


def _labels(y: np.ndarray, path: Path, classes: int) -> np.ndarray:
    if y.dtype.kind not in "iu":
        raise ValueError(f"{path}: labels must be integers, got {y.dtype}")
    bad = (y < 0) | (y >= classes)
    if bad.any():
        first = int(np.argwhere(bad)[0][0])
        raise ValueError(f"{path}: labels must lie in 0..{classes - 1}; label {int(y[first])} at position {first} "
                         f"({int(bad.sum())} out of range)")
    return y.astype(np.int64)


def mnist(directory: str | Path, seed: int = 0, validation: float = 1 / 6, *,
          image_shape: tuple[int, int] = MNIST_IMAGE_SHAPE, num_classes: int = MNIST_CLASSES) -> Split:
    """MNIST from its four IDX files in ``directory`` (as distributed, gzipped or not): byte pixels / 255 (float
    pixels must already lie in ``[0, 1]``); its own test set; ``validation`` of the training set held out at
    random (``seed``). Every file is checked: images of ``image_shape`` (28 x 28), labels in
    ``0..num_classes - 1``, as many labels as images, finite pixels; a ValueError names the file and what was
    expected."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory}: not a directory (MNIST's four IDX files are read from one)")
    if not (isinstance(validation, (int, float)) and 0 < validation < 1):
        raise ValueError(f"validation must be a fraction in (0, 1), got {validation!r}")
    image_shape = tuple(image_shape)

    def load(images: str, labels: str) -> tuple[Tensor, Tensor]:
        x_path, y_path = _find(directory, images), _find(directory, labels)
        x, y = read_idx(x_path), read_idx(y_path)
        if x.ndim != 3 or x.shape[1:] != image_shape:
            raise ValueError(f"{x_path}: expected images of {image_shape[0]} x {image_shape[1]} pixels (shape "
                             f"[n, {image_shape[0]}, {image_shape[1]}]), got shape {x.shape}")
        if y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{y_path}: expected {len(x)} labels (one per image of {x_path.name}), got shape {y.shape}")
        return (torch.from_numpy(_pixels(x, x_path).reshape(len(x), -1)),
                torch.from_numpy(_labels(y, y_path, num_classes)))

    x, y = load("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    test_set = load("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    order = torch.from_numpy(np.random.default_rng(seed_value("seed", seed)).permutation(len(y)))
    n_val = round(validation * len(y))
    return Split("mnist", (x[order[n_val:]], y[order[n_val:]]), (x[order[:n_val]], y[order[:n_val]]), test_set)
